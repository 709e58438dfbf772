"""API calls that used to do the wrong thing quietly or end in a raw exception (issue 29, items
8-12 and 14): each now does the right thing or refuses with a UniPeltError naming the cause."""

import hashlib
import json
import re
import shutil
import tracemalloc
from pathlib import Path

import pytest
import torch
import transformers
from conftest import CONFIGS, batch, build, build_lm, randomize, write_tensors
from safetensors.torch import load_file, save_file

import unipelt
from unipelt import LoRAConfig, MultiTask, PeltConfig, UniPeltError
from unipelt.checkpoint import _sha256
from unipelt.cli import main

ADAPTERS = Path(__file__).parent / "fixtures" / "adapters"


def _logits(model):
    with torch.no_grad():
        return model(**batch()).logits


# ---- item 8: the weights checksum is computed in chunks
def test_the_checksum_reads_a_huge_file_in_chunks(tmp_path):
    sparse = tmp_path / "huge.safetensors"
    with sparse.open("wb") as f:
        f.truncate(256 << 20)  # 256 MiB of zeros, sparse on disk
    tracemalloc.start()
    try:
        digest = _sha256(sparse)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"hashing held {peak / 2**20:.0f} MiB at once"
    assert digest == hashlib.sha256(bytes(1 << 20) * 256).hexdigest()


# ---- item 9: disable() gives the base model back, or refuses
@pytest.mark.parametrize("preset", ["bitfit", "full"])
def test_disable_refuses_where_the_base_weights_train(preset):
    model = unipelt.apply(build(), preset)
    randomize(model, std=0.1)
    with pytest.raises(UniPeltError, match=f"disable\\(\\) cannot give this model's base model back: {preset} trains"):
        unipelt.disable(model)


def test_disable_refuses_a_merged_model_and_leaves_it_as_it_was():
    model = unipelt.apply(build(), "lora")
    randomize(model, std=0.1)
    unipelt.merge(model)
    before = _logits(model)
    with pytest.raises(UniPeltError, match="merge\\(\\) folded its LoRA"):
        unipelt.disable(model)
    assert torch.equal(_logits(model), before)


def test_disable_still_runs_the_base_model_where_nothing_of_it_trains():
    base = _logits(build())
    model = unipelt.apply(build(), "lora")
    randomize(model, only_pelt=True, std=0.3)
    with unipelt.disable(model):
        assert (_logits(model) - base).abs().max() < 1e-5


# ---- item 10: a merged model is not saved as if it held its LoRA
def test_save_refuses_a_merged_model(tmp_path):
    model = unipelt.apply(build(), "lora")
    randomize(model, std=0.1)
    unipelt.merge(model)
    with pytest.raises(UniPeltError, match="save\\(\\) refuses a merged model: merge\\(\\) folded its LoRA"):
        unipelt.save(model, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "unipelt.json").exists()


def test_load_refuses_a_merged_model_and_leaves_it_as_it_was(tmp_path):
    """Said as what it is, not as a checkpoint that "does not fit": the merged weights hold a LoRA."""
    trained = unipelt.apply(build(), "lora")
    randomize(trained, std=0.1)
    unipelt.save(trained, tmp_path / "lora")
    merged = unipelt.merge(trained)
    before = {n: p.clone() for n, p in merged.state_dict().items()}
    with pytest.raises(UniPeltError, match="load\\(\\) refuses a merged model: merge\\(\\) folded its LoRA"):
        unipelt.load(merged, tmp_path / "lora")
    assert all(torch.equal(p, before[n]) for n, p in merged.state_dict().items())


# ---- item 11: from_peft loads the adapter's tensors, never a frozen base weight
def _peft_checkpoint(tmp_path, modules_to_save=None) -> Path:
    cfg = PeltConfig(methods=(LoRAConfig(r=4, alpha=8.0, targets=("q", "v")),), modules_to_save=modules_to_save or ())
    ours = unipelt.apply(build(), cfg)
    randomize(ours, std=0.1)
    unipelt.to_peft(ours, tmp_path / "peft")
    return tmp_path / "peft"


def test_from_peft_refuses_a_tensor_that_would_replace_a_frozen_base_weight(tmp_path):
    directory = _peft_checkpoint(tmp_path)
    weights = directory / "adapter_model.safetensors"
    tensors = load_file(weights)
    tensors["base_model.model.bert.embeddings.word_embeddings.weight"] = torch.zeros(
        CONFIGS["bert"]().vocab_size, CONFIGS["bert"]().hidden_size
    )
    save_file(tensors, weights)
    model = build()
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(UniPeltError, match="would replace the frozen base weight 'bert.embeddings.word_embeddings"):
        unipelt.from_peft(model, directory)
    assert getattr(model, "pelt_config", None) is None
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_from_peft_refuses_a_prompt_tensor_beside_a_lora(tmp_path):
    directory = _peft_checkpoint(tmp_path)
    tensors = load_file(directory / "adapter_model.safetensors")
    save_file({**tensors, "prompt_embeddings": torch.zeros(4, 32)}, directory / "adapter_model.safetensors")
    model = build()
    with pytest.raises(UniPeltError, match="tensor 'prompt_embeddings' is a prompt's, and this config has no prompt"):
        unipelt.from_peft(model, directory)
    assert getattr(model, "pelt_config", None) is None


def test_from_peft_loads_the_modules_its_modules_to_save_declares(tmp_path):
    ours = unipelt.apply(build(), PeltConfig(methods=(LoRAConfig(r=4, alpha=8.0),), modules_to_save=("pooler",)))
    randomize(ours, std=0.1)
    unipelt.to_peft(ours, tmp_path / "peft")
    back = unipelt.from_peft(build(), tmp_path / "peft")
    assert back.pelt_config.modules_to_save == ("pooler",)
    assert back.bert.pooler.dense.weight.requires_grad
    assert (_logits(back) - _logits(ours)).abs().max() < 1e-6


# ---- item 12: MultiTask refuses a model without a task head before touching it
def test_multitask_refuses_a_bare_backbone_and_leaves_it_whole():
    torch.manual_seed(0)
    backbone = transformers.BertModel(CONFIGS["bert"]()).train()
    children = dict(backbone.named_children())
    with pytest.raises(UniPeltError, match="BertModel has no task head"):
        MultiTask(backbone)
    assert dict(backbone.named_children()) == children and backbone.training
    assert all(p.requires_grad for p in backbone.parameters())


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_multitask_refuses_a_language_model_and_leaves_it_whole(arch):
    """Said as what it is: its checkpoints' LM head is the base's, not a task's own."""
    lm = build_lm(arch).train()
    children = dict(lm.named_children())
    with pytest.raises(UniPeltError, match="is a language model: MultiTask serves classifiers"):
        MultiTask(lm)
    assert dict(lm.named_children()) == children and lm.training
    assert all(p.requires_grad for p in lm.parameters())


# ---- item 14: malformed configs and files are UniPeltErrors naming the field
@pytest.mark.parametrize(
    "field, value, message",
    [
        ("r", "8", "field 'r' must be int, got '8'"),
        ("r", None, "field 'r' is missing"),
        ("lora_alpha", [1], "field 'lora_alpha' must be int or float"),
        ("target_modules", 5, "field 'target_modules' must be str or list"),
        ("target_modules", [{"a": 1}], "field 'target_modules' must list module names"),
        ("peft_type", ["LORA"], "field 'peft_type' must be str"),
        ("modules_to_save", {"a": 1}, "field 'modules_to_save' must be a list of module names"),
        ("use_rslora", "yes", "field 'use_rslora' must be bool"),
    ],
)
def test_wrong_types_in_a_peft_config_are_named(tmp_path, field, value, message):
    directory = _peft_checkpoint(tmp_path)
    path = directory / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg[field] = value
    path.write_text(json.dumps(cfg))
    with pytest.raises(UniPeltError, match=message.replace("(", "\\(").replace("[", "\\[")):
        unipelt.from_peft(build(), directory)


def test_deeply_nested_json_is_refused(tmp_path):
    directory = _peft_checkpoint(tmp_path)
    (directory / "adapter_config.json").write_text('{"r": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(UniPeltError, match="nests its JSON too deeply"):
        unipelt.from_peft(build(), directory)


def test_deeply_nested_checkpoint_metadata_is_one_error_line_for_load_and_merge(tmp_path, capsys):
    directory = unipelt.save(unipelt.apply(build(), "lora"), tmp_path / "ckpt")
    (directory / "unipelt.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(UniPeltError, match="nests its JSON too deeply"):
        unipelt.load(build(), directory)
    assert main(["merge", str(directory), "--weights", "1", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("unipelt: error: ") and not (tmp_path / "out").exists()


def test_merge_refuses_lora_tensors_under_a_config_without_lora(tmp_path):
    directory = unipelt.save(unipelt.apply(build(), "lora"), tmp_path / "ckpt")
    meta = json.loads((directory / "unipelt.json").read_text())
    meta["config"]["methods"] = [{"method": "prefix", "length": 4}]
    (directory / "unipelt.json").write_text(json.dumps(meta))
    with pytest.raises(UniPeltError, match="hold LoRA tensors but their config has no LoRA"):
        unipelt.merge_checkpoints([directory], [1.0], tmp_path / "out")


def test_a_size_no_tensor_can_take_is_refused_by_the_config():
    with pytest.raises(UniPeltError, match="LoRAConfig.r must be a positive integer below 2\\*\\*63, got 10{30}"):
        LoRAConfig(r=10**30)


def test_an_integer_beyond_any_float_is_refused_by_the_config(tmp_path, capsys):
    """math.isfinite raised OverflowError on it, which came out of the CLI as a traceback."""
    with pytest.raises(UniPeltError, match="LoRAConfig.alpha must be a finite number, got an integer beyond"):
        LoRAConfig(alpha=10**400)
    config = tmp_path / "big.json"
    config.write_text('{"methods": [{"method": "lora", "alpha": 1' + "0" * 400 + "}]}")
    from unipelt.cli import main

    argv = ["train", "--task", "sst2", "--config", str(config), "--lr", "1e-3", "--store", str(tmp_path / "s")]
    assert main(argv) == 2
    assert "must be a finite number, got an integer beyond any float" in capsys.readouterr().err


def _adapters_copy(tmp_path, name: str = "lora") -> Path:
    directory = tmp_path / name
    shutil.copytree(ADAPTERS / "bert" / name / "adapter", directory)
    return directory


def _base():
    return transformers.AutoModelForSequenceClassification.from_pretrained(ADAPTERS / "bert" / "base").eval()


@pytest.mark.parametrize(
    "name, field, value, message",
    [
        ("lora", "r", "4", "field 'r' must be an integer, got '4'"),
        ("lora", "alpha", None, "field 'alpha' must be a number, got None"),
        ("lora", "attn_matrices", 7, "field 'attn_matrices' must be a list of names"),
        ("lora", "attn_matrices", [["q"]], "field 'attn_matrices' must be a list of names"),
        ("prefix_tuning", "prefix_length", "x", "field 'prefix_length' must be an integer"),
        ("prefix_tuning", "bottleneck_size", 8.5, "field 'bottleneck_size' must be an integer"),
        ("seq_bn", "reduction_factor", {"0": [1]}, "field 'reduction_factor' must map layers to numbers"),
        ("seq_bn", "init_weights", ["bert"], "init_weights=\\['bert'\\] is not one of"),
        ("prompt_tuning", "prompt_length", True, "field 'prompt_length' must be an integer, got True"),
    ],
)
def test_wrong_types_in_an_adapters_config_are_named(tmp_path, name, field, value, message):
    directory = _adapters_copy(tmp_path, name)
    path = directory / "adapter_config.json"
    meta = json.loads(path.read_text())
    meta["config"][field] = value
    path.write_text(json.dumps(meta))
    with pytest.raises(UniPeltError, match=message):
        unipelt.from_adapters(_base(), directory)


def test_malformed_adapters_unions_and_heads_are_named(tmp_path):
    directory = _adapters_copy(tmp_path)
    path = directory / "adapter_config.json"
    meta = json.loads(path.read_text())
    original = meta["config"]
    for configs in (5, [{"architecture": "union", "configs": [original]}]):
        meta["config"] = {"architecture": "union", "configs": configs}
        path.write_text(json.dumps(meta))
        with pytest.raises(UniPeltError, match="union's field 'configs' must list method configs"):
            unipelt.from_adapters(_base(), directory)
    meta["config"] = original
    path.write_text(json.dumps(meta))
    (directory / "head_config.json").write_text(json.dumps({"config": ["classification"]}))
    with pytest.raises(UniPeltError, match="field 'config' of head_config.json must be a JSON object"):
        unipelt.from_adapters(_base(), directory)


def test_an_empty_bin_is_refused(tmp_path):
    directory = _adapters_copy(tmp_path, "prefix_tuning")
    (directory / "pytorch_adapter.bin").write_bytes(b"")
    with pytest.raises(UniPeltError, match="pytorch_adapter.bin is not a plain tensor state dict .*EOFError"):
        unipelt.from_adapters(_base(), directory)


def test_predict_with_no_inputs_is_refused():
    mt = MultiTask(build())
    with pytest.raises(UniPeltError, match="predict\\(\\) needs at least one input"):
        mt.predict([], [], tokenizer=None)


def _fingerprint(model) -> tuple:
    """Everything apply() may change: the module tree, parameters and their flags, hooks, config."""
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    params = [(n, p.requires_grad, tuple(p.shape)) for n, p in model.named_parameters()]
    attrs = sorted(k for k in vars(model) if not k.startswith("_"))
    return [n for n, _ in model.named_modules()], params, hooks, model.config.to_dict(), attrs


@pytest.mark.parametrize(
    "arch, config, attention, message",
    [
        ("llama", PeltConfig(methods=(unipelt.PrefixConfig(), unipelt.PromptConfig())), None, "not offered"),
        ("bert", PeltConfig(methods=(LoRAConfig(), unipelt.IA3Config())), None, "same projection"),
        ("bert", PeltConfig(methods=(LoRAConfig(), unipelt.PrefixConfig())), "flex_attention", "sdpa and eager"),
    ],
    ids=["prefix-then-prompt", "lora-then-ia3", "attention"],
)
def test_a_refused_apply_leaves_no_module_behind(arch, config, attention, message):
    """A method that refuses after another was set up (or the attention switch after every layer
    was wrapped) used to leave those modules in the model, trainable, with no pelt_config: a
    retry wrapped it twice. Now the model is as it was, and a retry with a valid config works."""
    model = build(arch)
    if attention:
        model.config._attn_implementation = attention
    before = _fingerprint(model)
    with pytest.raises(UniPeltError, match=message):
        unipelt.apply(model, config)
    assert _fingerprint(model) == before
    model.config._attn_implementation = "sdpa"
    unipelt.apply(model, "lora")
    fresh = unipelt.apply(build(arch), "lora")
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in fresh.named_parameters()]


def test_a_prompt_under_a_head_that_averages_over_the_callers_mask_is_refused():
    model = build("modernbert", classifier_pooling="mean")
    before = _fingerprint(model)
    with pytest.raises(UniPeltError, match="classifier_pooling='mean' is not offered"):
        unipelt.apply(model, "prompt")
    assert _fingerprint(model) == before
    unipelt.apply(build("modernbert"), "prompt")  # classifier_pooling='cls', ModernBERT's default


def _with_dtype(directory: Path, name: str, dtype) -> None:
    """Rewrite one tensor of a unipelt checkpoint in another dtype, the checksum made to match."""
    tensors = load_file(directory / "unipelt.safetensors")
    tensors[name] = torch.zeros(tensors[name].shape, dtype=torch.uint8).view(dtype)
    write_tensors(directory, tensors)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8], ids=str)
def test_a_tensor_of_a_dtype_no_parameter_takes_is_refused_before_the_model_changes(tmp_path, dtype):
    trained = unipelt.apply(build(), "lora")
    randomize(trained)
    unipelt.save(trained, tmp_path)
    _with_dtype(tmp_path, "classifier.weight", dtype)
    for model in (build(), unipelt.apply(build(), "lora")):
        before = _fingerprint(model), {n: p.detach().clone() for n, p in model.named_parameters()}
        with pytest.raises(UniPeltError, match=r"classifier\.weight is u?int8, not one of float32"):
            unipelt.load(model, tmp_path)
        assert _fingerprint(model) == before[0]
        assert all(torch.equal(p, before[1][n]) for n, p in model.named_parameters())


def test_a_load_that_fails_late_puts_the_model_back(tmp_path, monkeypatch):
    """Everything load() changed before a late failure (the weights it copied, the head, the
    label names) is written back, on a fresh model and on one applied before."""
    import unipelt.checkpoint as checkpoint

    trained = unipelt.apply(build(), "unipelt-apl")
    randomize(trained)
    trained.config.id2label = {0: "no", 1: "yes"}
    unipelt.save(trained, tmp_path)

    def fails(model, after="apply"):
        raise UniPeltError("the late check failed")

    monkeypatch.setattr(checkpoint, "check_participation", fails)
    for model in (build(), unipelt.apply(build(), "unipelt-apl")):
        before = _fingerprint(model), {n: p.detach().clone() for n, p in model.named_parameters()}
        with pytest.raises(UniPeltError, match="late check"):
            unipelt.load(model, tmp_path)
        assert _fingerprint(model) == before[0]
        assert all(torch.equal(p, before[1][n]) for n, p in model.named_parameters())


def test_load_into_a_disabled_model(tmp_path):
    """Inside ``with unipelt.disable(model):`` the participation check still runs the modules."""
    trained = unipelt.apply(build(), "lora")
    randomize(trained)
    unipelt.save(trained, tmp_path)
    model = unipelt.apply(build(), "lora")
    with unipelt.disable(model):
        unipelt.load(model, tmp_path)
        off = model(**batch()).logits  # still off: the base model and the loaded head
    with unipelt.disable(trained):
        assert torch.allclose(off, trained(**batch()).logits, atol=1e-6)
    assert torch.allclose(model(**batch()).logits, trained(**batch()).logits, atol=1e-6)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_a_checkpoint_holding_non_finite_values_is_refused_before_the_model_changes(tmp_path, value):
    """NaN weights answer NaN, or, where sdpa drops a NaN query, answer wrongly with no sign of
    it: refused by load (and by merge, which reads through the same check)."""
    trained = unipelt.apply(build(), "lora")
    randomize(trained)
    unipelt.save(trained, tmp_path / "ckpt")
    tensors = load_file(tmp_path / "ckpt" / "unipelt.safetensors")
    name = next(n for n in tensors if n.endswith("pelt_lora.up"))
    tensors[name].view(-1)[0] = value
    write_tensors(tmp_path / "ckpt", tensors)
    model = unipelt.apply(build(), "lora")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(UniPeltError, match=rf"{re.escape(name)} holds NaN or infinite values"):
        unipelt.load(model, tmp_path / "ckpt")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with pytest.raises(UniPeltError, match="holds NaN or infinite values"):
        unipelt.merge_checkpoints([tmp_path / "ckpt"], [1.0], tmp_path / "merged", method="svd")
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize(
    "config",
    [
        lambda: unipelt.LoRAConfig(alpha=float("inf")),
        lambda: unipelt.AdapterConfig(scale=float("-inf")),
        lambda: unipelt.DoRAConfig(alpha=float("inf")),
    ],
    ids=["lora-alpha", "adapter-scale", "dora-alpha"],
)
def test_infinite_numbers_in_a_config_are_refused(config):
    with pytest.raises(UniPeltError, match="must be a finite number, got -?inf"):
        config()


def test_merge_never_writes_over_or_into_an_input_and_refuses_a_seed_torch_cannot_take(tmp_path, capsys):
    dirs = [unipelt.save(unipelt.apply(build(), "lora"), tmp_path / n) for n in ("a", "b")]
    before = {p: p.read_bytes() for d in dirs for p in d.iterdir()}
    for out, message in ((dirs[0], "is the input"), (dirs[1] / "inner", "is inside the input")):
        with pytest.raises(UniPeltError, match=message):
            unipelt.merge_checkpoints(dirs, [0.5, 0.5], out)
    assert {p: p.read_bytes() for d in dirs for p in d.iterdir()} == before and not (dirs[1] / "inner").exists()
    seed = ["--method", "dare_linear", "--density", "0.5", "--seed", "9" * 23, "--out", str(tmp_path / "o")]
    assert main(["merge", *map(str, dirs), "--weights", "0.5,0.5", *seed]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unipelt: error: seed must be a whole number") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
