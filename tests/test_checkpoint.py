import dataclasses
import hashlib
import json

import pytest
import torch
from conftest import batch, build, randomize

import unipelt
from unipelt import UniPeltError

PRESETS = sorted(unipelt.PRESETS)


def logits(model):
    with torch.no_grad():
        return model(**batch()).logits


@pytest.mark.parametrize("preset", PRESETS)
def test_save_then_load_into_a_fresh_base_reproduces_logits(tmp_path, arch, preset):
    model = unipelt.apply(build(arch), preset)
    randomize(model)
    unipelt.save(model, tmp_path)
    restored = unipelt.load(build(arch), tmp_path)
    assert (logits(restored) - logits(model)).abs().max() < 1e-6
    assert restored.pelt_config == model.pelt_config


def test_checkpoint_holds_only_pelt_parameters_and_the_head(tmp_path):
    model = unipelt.apply(build(), "unipelt-apl")
    unipelt.save(model, tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "unipelt.safetensors", "pt") as f:
        keys = list(f.keys())
    assert "pelt_prefix.folded" in keys and not any("mlp" in k for k in keys)
    assert all("pelt_" in k or k.startswith(("classifier.", "bert.pooler.")) for k in keys)
    meta = json.loads((tmp_path / "unipelt.json").read_text())
    assert meta["base_model"]["hidden_size"] == 32


def test_loading_into_a_different_base_model_is_refused(tmp_path):
    unipelt.save(unipelt.apply(build(), "lora"), tmp_path)
    with pytest.raises(UniPeltError, match="hidden_size: checkpoint 32 vs model 48"):
        unipelt.load(build(hidden_size=48), tmp_path)
    with pytest.raises(UniPeltError, match="base tensor bert.embeddings.word_embeddings.weight differs"):
        unipelt.load(build(seed=7), tmp_path)
    with pytest.raises(UniPeltError, match="model_type"):
        unipelt.load(build("roberta"), tmp_path)


def test_loading_into_a_model_with_another_config_is_refused(tmp_path):
    unipelt.save(unipelt.apply(build(), "lora"), tmp_path)
    with pytest.raises(UniPeltError, match="different unipelt config"):
        unipelt.load(unipelt.apply(build(), "adapter"), tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
def test_damaged_weights_fail_with_a_clear_error(tmp_path, damage):
    unipelt.save(unipelt.apply(build(), "lora"), tmp_path)
    path = tmp_path / "unipelt.safetensors"
    data = bytearray(path.read_bytes())
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:-4] + b"\x00\x00\x80\x7f")
    with pytest.raises(UniPeltError, match="truncated or modified"):
        unipelt.load(build(), tmp_path)


def test_damaged_file_is_caught_even_when_the_checksum_is_updated(tmp_path):
    unipelt.save(unipelt.apply(build(), "lora"), tmp_path)
    path, meta_path = tmp_path / "unipelt.safetensors", tmp_path / "unipelt.json"
    path.write_bytes(path.read_bytes()[:100])
    meta = json.loads(meta_path.read_text())
    meta["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UniPeltError, match="not a readable safetensors file"):
        unipelt.load(build(), tmp_path)


def test_missing_checkpoint_and_unapplied_model_errors(tmp_path):
    with pytest.raises(UniPeltError, match="not a unipelt checkpoint"):
        unipelt.load(build(), tmp_path)
    with pytest.raises(UniPeltError, match="unipelt.apply"):
        unipelt.save(build(), tmp_path)


def _state(model) -> dict:
    """Everything a load could change: the module tree, the parameters, the trainable flags."""
    return {
        "modules": [n for n, _ in model.named_modules()],
        "config": getattr(model, "pelt_config", None),
        "params": {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()},
    }


def _assert_same(before: dict, after: dict) -> None:
    assert after["modules"] == before["modules"] and after["config"] == before["config"]
    assert after["params"].keys() == before["params"].keys()
    for name, (value, grad) in before["params"].items():
        assert torch.equal(after["params"][name][0], value) and after["params"][name][1] == grad, name


def test_same_embeddings_with_other_encoder_weights_are_refused(tmp_path):
    unipelt.save(unipelt.apply(build(), "lora"), tmp_path)
    other = build(seed=7)
    other.bert.embeddings.load_state_dict(build().bert.embeddings.state_dict())
    with pytest.raises(
        UniPeltError, match=r"base tensor bert\.encoder\.layer\.0\.attention\.self\.query\.weight differs"
    ):
        unipelt.load(other, tmp_path)


def test_the_same_weights_in_another_precision_load(tmp_path):
    model = unipelt.apply(build(), "lora")
    randomize(model)
    unipelt.save(model, tmp_path)
    restored = unipelt.load(build().to(torch.bfloat16), tmp_path)
    assert restored.pelt_config == model.pelt_config


def test_weights_beyond_the_models_precision_are_refused_not_loaded_as_inf(tmp_path):
    model = unipelt.apply(build(), "lora")
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "pelt_lora" in n).fill_(1e5)  # float16 ends at 65504
    unipelt.save(model, tmp_path)
    half = build().to(torch.float16)
    before = {n: t.clone() for n, t in half.state_dict().items()}
    with pytest.raises(UniPeltError, match="beyond float16's range"):
        unipelt.load(half, tmp_path)
    assert getattr(half, "pelt_config", None) is None and half.state_dict().keys() == before.keys()
    assert all(torch.equal(t, before[n]) for n, t in half.state_dict().items())
    unipelt.load(build().to(torch.bfloat16), tmp_path)  # bfloat16 holds 1e5


def _rewrite_meta(directory, change) -> None:
    path = directory / "unipelt.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def test_a_format_1_checkpoint_still_loads_and_checks_its_embedding_probe(tmp_path):
    model = unipelt.apply(build(), "lora")
    randomize(model)
    unipelt.save(model, tmp_path)

    def as_format_1(meta):
        meta["format"] = 1
        del meta["base_model"]["base_tensors"]
        meta["base_model"]["embedding_probe"] = (
            build().bert.embeddings.word_embeddings.weight[:4, :8].flatten().tolist()
        )

    _rewrite_meta(tmp_path, as_format_1)
    assert (logits(unipelt.load(build(), tmp_path)) - logits(model)).abs().max() < 1e-6
    with pytest.raises(UniPeltError, match="embedding weights differ"):
        unipelt.load(build(seed=7), tmp_path)


def _drop(key):
    return lambda meta: meta.pop(key)


def _set(*path_and_value):
    *keys, value = path_and_value

    def change(meta):
        for key in keys[:-1]:
            meta = meta[key]
        meta[keys[-1]] = value

    return change


@pytest.mark.parametrize(
    "change, field",
    [
        (_drop("config"), "'config' is missing"),
        (_drop("base_model"), "'base_model' is missing"),
        (_drop("sha256"), "'sha256' is missing"),
        (_set("config", None), "'config' must be dict, got None"),
        (_set("config", {"methods": 5}), "'config'"),
        (_set("config", {"methods": [{"method": "lora", "targets": 5}]}), "'config'"),
        (_set("base_model", []), "'base_model' must be dict, got []"),
        (_set("base_model", "hidden_size", "big"), "'base_model.hidden_size' must be int or null"),
        (_set("base_model", "hidden_size", True), "'base_model.hidden_size'"),
        (_set("base_model", "base_tensors", {"x": None}), "'base_model.base_tensors.x' must be dict"),
        (
            _set("base_model", "base_tensors", {"x": {"shape": [1], "dtype": "float32", "sha256": "0"}}),
            "'base_model.base_tensors.x.probe' is missing",
        ),
        (
            _set("base_model", "base_tensors", {"x": {"shape": ["a"], "dtype": "f", "sha256": "0", "probe": []}}),
            "'base_model.base_tensors.x.shape[]' must be int",
        ),
        (_set("sha256", 12), "'sha256' must be str, got 12"),
        (_set("task", "pairs", "yes"), "'task.pairs' must be bool, got 'yes'"),
        (_set("task", "max_length", 12.5), "'task.max_length' must be int"),
        (_set("task", "max_length", 0), "'task.max_length' must be at least 1, got 0"),
        (_set("task", "num_labels", -1), "'task.num_labels' must be at least 0, got -1"),
        (_set("task", "id2label", {"²": "a", "1": "b", "2": "c"}), "'task.id2label' must map label ids"),
        (_set("task", "num_labels", "3"), "'task.num_labels' must be int"),
        (_set("task", "id2label", ["a", "b"]), "'task.id2label' must map label ids"),
        (_set("task", "num_labels", 1000), "'task.id2label' names 3 labels, 'task.num_labels' is 1000"),
        (_set("format", True), "checkpoint format True"),
    ],
)
def test_malformed_metadata_is_refused_naming_the_field(tmp_path, change, field):
    unipelt.save(unipelt.apply(build(), "lora"), tmp_path)
    _rewrite_meta(tmp_path, change)
    model = build()
    before = _state(model)
    with pytest.raises(UniPeltError, match="unipelt.json: |checkpoint format") as raised:
        unipelt.load(model, tmp_path)
    assert field in str(raised.value)
    _assert_same(before, _state(model))


def test_save_records_the_inputs_kind_and_length_for_serving(tmp_path):
    model = unipelt.apply(build(), "lora")
    unipelt.save(model, tmp_path / "plain")
    unipelt.save(model, tmp_path / "rte", pairs=True, max_length=128)
    plain, rte = (json.loads((tmp_path / d / "unipelt.json").read_text())["task"] for d in ("plain", "rte"))
    assert "pairs" not in plain and "max_length" not in plain
    assert rte["pairs"] is True and rte["max_length"] == 128
    for bad, said in (({"pairs": 1}, "save\\(pairs=...\\)"), ({"max_length": 0}, "save\\(max_length=...\\)")):
        with pytest.raises(UniPeltError, match=said):
            unipelt.save(model, tmp_path / "bad", **bad)
    assert not (tmp_path / "bad").exists()  # refused before anything is written


@pytest.mark.parametrize("content", [b"[]", b"null", b"\xff\xfe{}", b"{"])
def test_metadata_that_is_not_an_object_is_refused(tmp_path, content):
    unipelt.save(unipelt.apply(build(), "lora"), tmp_path)
    (tmp_path / "unipelt.json").write_bytes(content)
    with pytest.raises(UniPeltError, match="unipelt.json"):
        unipelt.load(build(), tmp_path)


def _resave_weights(directory, change) -> None:
    """Rewrite the tensors and keep the checksum valid: only the names or shapes are wrong."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(directory / "unipelt.safetensors")
    save_file(change(tensors), directory / "unipelt.safetensors")
    digest = hashlib.sha256((directory / "unipelt.safetensors").read_bytes()).hexdigest()
    _rewrite_meta(directory, _set("sha256", digest))


@pytest.mark.parametrize("preset", ["lora", "unipelt-apl", "prompt"])
@pytest.mark.parametrize("damage", ["extra tensor", "missing tensor", "wrong shape"])
def test_a_refused_load_leaves_the_model_unchanged(tmp_path, preset, damage):
    unipelt.save(unipelt.apply(build(), preset), tmp_path)

    def change(tensors):
        name = sorted(tensors)[0]
        if damage == "extra tensor":
            return {**tensors, "pelt_unknown": torch.zeros(2)}
        if damage == "missing tensor":
            return {k: v for k, v in tensors.items() if k != name}
        return {**tensors, name: torch.zeros(*tensors[name].shape, 2)}

    _resave_weights(tmp_path, change)
    model = build()
    rng = torch.random.get_rng_state()
    before = _state(model)
    with pytest.raises(UniPeltError, match="does not fit this model|checkpoint shape"):
        unipelt.load(model, tmp_path)
    _assert_same(before, _state(model))
    assert torch.equal(torch.random.get_rng_state(), rng)  # the dry run drew no random numbers
    assert "pelt_config" not in vars(model)


def test_a_refused_load_into_an_applied_model_leaves_it_unchanged(tmp_path):
    unipelt.save(unipelt.apply(build(), "unipelt-apl"), tmp_path)
    _resave_weights(tmp_path, lambda t: {k: v for k, v in t.items() if k != "pelt_prefix.folded"})
    model = unipelt.apply(build(), "unipelt-apl")
    before = _state(model)
    with pytest.raises(UniPeltError, match="missing \\['pelt_prefix.folded'\\]"):
        unipelt.load(model, tmp_path)
    _assert_same(before, _state(model))
    assert model.pelt_prefix.folded is None  # not folded by the refused load


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from unipelt import checkpoint

    first = unipelt.apply(build(), "lora")
    randomize(first)
    unipelt.save(first, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def disk_full(tensors, path):
        open(path, "wb").write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        unipelt.save(unipelt.apply(build(), "lora"), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary file left either
    assert (logits(unipelt.load(build(), tmp_path)) - logits(first)).abs().max() < 1e-6


def test_a_failed_save_into_new_nested_directories_removes_those_it_created(tmp_path, monkeypatch):
    from unipelt import checkpoint

    def disk_full(tensors, path):
        raise OSError(28, "No space left on device")

    (tmp_path / "runs").mkdir()
    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        unipelt.save(unipelt.apply(build(), "lora"), tmp_path / "runs" / "exp1" / "ckpt")
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")] == ["runs"]  # it was there before


def test_a_format_1_checkpoint_loads_as_it_ran(tmp_path):
    """unipelt 0.1 called standard prefix tuning "add" and trained BERT's pooler in every method."""
    cfg = unipelt.PeltConfig(
        methods=(unipelt.PrefixConfig(length=3), unipelt.LoRAConfig()), modules_to_save=("pooler",)
    )
    model = unipelt.apply(build(), cfg)
    randomize(model)
    unipelt.save(model, tmp_path)
    meta = json.loads((tmp_path / "unipelt.json").read_text())
    old = {k: v for k, v in meta["config"].items() if k not in ("modules_to_save", "head")}
    for m in old["methods"]:
        m.pop("networks", None)
        if m["method"] == "prefix":
            m["composition"] = "add"
    emb = model.get_input_embeddings().weight[:4, :8].detach().flatten().tolist()
    base = {k: v for k, v in meta["base_model"].items() if k != "base_tensors"} | {"embedding_probe": emb}
    (tmp_path / "unipelt.json").write_text(json.dumps({**meta, "format": 1, "config": old, "base_model": base}))
    restored = unipelt.load(build(), tmp_path)
    assert restored.pelt_config == model.pelt_config == dataclasses.replace(cfg, head="model")
    assert (logits(restored) - logits(model)).abs().max() < 1e-6


def test_a_base_tensor_probe_of_another_length_is_another_base_not_a_crash(tmp_path):
    """unipelt.json is outside the weights' checksum: a probe of 3 values against the model's 8
    (compared where the dtypes differ) made torch.allclose raise in load and in merge."""
    from unipelt.checkpoint import same_base

    unipelt.save(unipelt.apply(build("bert"), "lora"), tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "unipelt.json").read_text())
    edited = json.loads(json.dumps(meta))
    entry = next(iter(edited["base_model"]["base_tensors"].values()))
    entry["dtype"], entry["probe"] = "float16", [0.0, 0.0, 0.0]
    (tmp_path / "a" / "unipelt.json").write_text(json.dumps(edited))
    with pytest.raises(UniPeltError, match="another base model"):
        unipelt.load(build("bert"), tmp_path / "a")
    assert not same_base(edited["base_model"], meta["base_model"])


def _format_1(probe):
    def change(meta):
        meta["format"] = 1
        del meta["base_model"]["base_tensors"]
        meta["base_model"]["embedding_probe"] = (
            probe or build().get_input_embeddings().weight[:4, :8].flatten().tolist()
        )

    return change


def _other_dtype_probe(value):
    def change(meta):
        entry = next(iter(meta["base_model"]["base_tensors"].values()))
        entry["dtype"], entry["probe"] = "float16", [value] * len(entry["probe"])

    return change


@pytest.mark.parametrize(
    "change, partner",
    [
        (_format_1([10**30] * 32), _format_1(None)),  # beyond int64
        (_format_1([0] * 32), _format_1(None)),  # integers against the model's floats
        (_other_dtype_probe(10**400), lambda meta: None),  # beyond any float
    ],
    ids=["v1-huge", "v1-ints", "dtype-beyond-float"],
)
def test_probe_numbers_torch_cannot_take_are_one_clear_error_in_load_and_merge(tmp_path, capsys, change, partner):
    """unipelt.json is outside the weights' checksum: JSON integers there raised ValueError,
    OverflowError or RuntimeError from torch in load and in ``unipelt merge`` (comparing bases)."""
    from unipelt.cli import main

    for name, edit in (("bad", change), ("partner", partner)):
        unipelt.save(unipelt.apply(build(), "lora"), tmp_path / name)
        _rewrite_meta(tmp_path / name, edit)
    model = build()
    before = _state(model)
    with pytest.raises(UniPeltError):
        unipelt.load(model, tmp_path / "bad")
    _assert_same(before, _state(model))
    capsys.readouterr()
    args = ["merge", str(tmp_path / "partner"), str(tmp_path / "bad"), "--weights", "0.5,0.5"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("unipelt: error: ")
    assert not (tmp_path / "out").exists()


def test_a_number_too_long_for_python_to_read_is_one_clear_error(tmp_path):
    unipelt.save(unipelt.apply(build(), "lora"), tmp_path)
    path = tmp_path / "unipelt.json"
    path.write_text(path.read_text().replace('"format": 2', '"format": ' + "9" * 5000))
    with pytest.raises(UniPeltError, match="holds a number of over 4300 digits"):
        unipelt.load(build(), tmp_path)


@pytest.mark.parametrize("write", ["save", "to_peft"])
@pytest.mark.parametrize("under", [False, True], ids=["file", "under a file"])
def test_a_file_where_the_directory_goes_is_named_and_left_alone(tmp_path, write, under):
    """Both used to raise FileExistsError or NotADirectoryError from mkdir."""
    blocker = tmp_path / "afile"
    blocker.write_bytes(b"keep")
    model = unipelt.apply(build(), "lora")
    target = blocker / "ckpt" if under else blocker
    with pytest.raises(UniPeltError, match=f"{target}{' cannot be created: .*afile' if under else ''} is a file"):
        getattr(unipelt, write)(model, target)
    assert blocker.read_bytes() == b"keep"


def test_a_checkpoint_from_before_wrapped_modules_to_save_trained_still_loads(tmp_path, caplog):
    """modules_to_save below a wrapper trained nothing and was not saved by an older unipelt; now
    that it trains, its checkpoints lacked tensors the model expects and load refused them."""
    from conftest import write_tensors
    from safetensors.torch import load_file

    from unipelt.checkpoint import WEIGHTS

    cfg = unipelt.PeltConfig(
        methods=unipelt.get_preset("unipelt-apl").methods, modules_to_save=("encoder.layer.1.output",)
    )
    model = unipelt.apply(build(), cfg)
    randomize(model, std=0.1, only_pelt=True)  # the saved module as it trained then: untouched
    unipelt.save(model, tmp_path)
    tensors = load_file(tmp_path / WEIGHTS)
    write_tensors(tmp_path, {n: t for n, t in tensors.items() if "layer.1.base_layer.output." not in n or "pelt_" in n})
    with caplog.at_level("WARNING"):
        restored = unipelt.load(build(), tmp_path)
    assert "did not train" in caplog.text
    with torch.no_grad():
        assert torch.equal(restored(**batch()).logits, model(**batch()).logits)
    write_tensors(tmp_path, {n: t for n, t in tensors.items() if "pelt_gate" not in n})  # a method's tensor: refused
    with pytest.raises(UniPeltError, match="does not fit"):
        unipelt.load(build(), tmp_path)


@pytest.mark.parametrize("freeze", ["everything", "the head", "the gates"])
def test_what_save_writes_is_what_the_config_trains_whatever_requires_grad_says_now(tmp_path, freeze):
    """A model frozen after training (before evaluation or export) wrote a checkpoint of what
    still required grad: frozen, the head and the gates were fingerprinted as base weights, and
    the checkpoint was unloadable ("saved from another base model") or lacked the gates."""
    model = unipelt.apply(build(), "unipelt-apl")
    randomize(model, std=0.1)
    trained = {n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("pelt_prefix.")}
    for name, p in model.named_parameters():
        chosen = {"everything": True, "the head": name.startswith("classifier"), "the gates": "pelt_gate" in name}
        if chosen[freeze]:
            p.requires_grad_(False)
    unipelt.save(model, tmp_path)
    loaded = unipelt.load(build(), tmp_path)
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == trained | {"pelt_prefix.folded"}
    with torch.no_grad():
        assert torch.equal(loaded(**batch()).logits, model(**batch()).logits)


def test_a_base_weight_set_to_train_by_hand_is_named_in_a_warning(tmp_path, caplog):
    model = unipelt.apply(build(), "lora")
    model.bert.pooler.dense.weight.requires_grad_(True)
    with caplog.at_level("WARNING", logger="unipelt.checkpoint"):
        unipelt.save(model, tmp_path)
    assert "bert.pooler.dense.weight" in caplog.text and "modules_to_save" in caplog.text
    assert torch.equal(unipelt.load(build(), tmp_path)(**batch()).logits, model(**batch()).logits)


@pytest.mark.parametrize("preset", ["unipelt-apl", "lora", "prefix"])
def test_apply_and_load_under_inference_mode_make_ordinary_parameters(tmp_path, preset):
    """A server that loads under torch.inference_mode(): the new parameters were inference
    tensors, on which the participation check set requires_grad, and load died with a traceback."""
    model = unipelt.apply(build(), preset)
    randomize(model)
    unipelt.save(model, tmp_path)
    fresh, other = build(), build()
    with torch.inference_mode():
        restored = unipelt.load(fresh, tmp_path)
        applied = unipelt.apply(other, preset)
    assert not any(p.is_inference() for p in [*restored.parameters(), *applied.parameters()])
    assert (logits(restored) - logits(model)).abs().max() < 1e-6
    applied.train()
    applied(**batch(), labels=torch.tensor([0, 1, 1])).loss.backward()  # its modules train
    assert all(p.grad is not None for n, p in applied.named_parameters() if "pelt_" in n)


def test_a_model_built_under_inference_mode_is_refused_unchanged(tmp_path):
    unipelt.save(unipelt.apply(build(), "lora"), tmp_path)
    with torch.inference_mode():
        model = build()
    before = {n: p.clone() for n, p in model.state_dict().items()}
    for call in (lambda: unipelt.apply(model, "lora"), lambda: unipelt.load(model, tmp_path)):
        with pytest.raises(UniPeltError, match=r"made under torch.inference_mode\(\).*outside it"):
            call()
        assert getattr(model, "pelt_config", None) is None
        assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())


@pytest.mark.parametrize("task", ["oops", 5, [1], None])
def test_a_task_block_that_is_not_an_object_is_refused(tmp_path, task):
    """The checksum covers the weights only: an edited task block was served with made-up labels."""
    unipelt.save(unipelt.apply(build(), "lora"), tmp_path)
    meta = json.loads((tmp_path / "unipelt.json").read_text())
    meta["task"] = task
    (tmp_path / "unipelt.json").write_text(json.dumps(meta))
    with pytest.raises(UniPeltError, match="'task'"):
        unipelt.load(build(), tmp_path)


def test_load_restores_the_problem_type_so_a_resave_merges_with_the_original(tmp_path):
    model = build(problem_type="single_label_classification")
    unipelt.save(unipelt.apply(model, "lora"), tmp_path / "a")
    restored = unipelt.load(build(), tmp_path / "a")
    assert restored.config.problem_type == "single_label_classification"
    unipelt.save(restored, tmp_path / "b")
    a, b = (json.loads((tmp_path / x / "unipelt.json").read_text())["task"] for x in "ab")
    assert a == b


def test_a_problem_type_transformers_does_not_know_is_refused(tmp_path):
    unipelt.save(unipelt.apply(build(), "lora"), tmp_path)
    meta = json.loads((tmp_path / "unipelt.json").read_text())
    meta["task"]["problem_type"] = "ranking"
    (tmp_path / "unipelt.json").write_text(json.dumps(meta))
    with pytest.raises(UniPeltError, match="'task.problem_type' must be one of"):
        unipelt.load(build(), tmp_path)
