"""unipelt <-> HF peft checkpoints, checked against the peft installed beside unipelt."""

import json

import pytest
import torch
from conftest import batch, build, build_lm, randomize

import unipelt
from unipelt import LoRAConfig, PeltConfig, PromptConfig

peft = pytest.importorskip("peft")


def _logits(model, b=None):
    with torch.no_grad():
        return model(**(b or batch())).logits


@pytest.mark.parametrize("arch", ["bert", "roberta", "llama", "bart", "t5"])
def test_an_ungated_lora_model_is_written_as_a_peft_checkpoint_with_the_same_logits(tmp_path, arch):
    ours = unipelt.apply(build(arch), PeltConfig(methods=(LoRAConfig(r=4, alpha=8.0, targets=("q", "v", "ffn_out")),)))
    randomize(ours, std=0.1)
    unipelt.to_peft(ours, tmp_path)
    ref = peft.PeftModel.from_pretrained(build(arch), tmp_path).eval()
    assert (_logits(ours) - _logits(ref)).abs().max() < 1e-5
    assert (_logits(ours) - _logits(build(arch))).abs().max() > 1e-3  # the LoRA and the head travelled


def test_target_modules_are_full_paths_where_leaf_names_would_adapt_more(tmp_path):
    """BART's q_proj names self- and cross-attention alike: a self-only LoRA lists its paths."""
    ours = unipelt.apply(build("bart"), LoRAConfig(targets=("q",), attention=("self",)))
    randomize(ours, std=0.1)
    unipelt.to_peft(ours, tmp_path)
    targets = json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"]
    assert all(t.endswith(".self_attn.q_proj") for t in targets) and len(targets) == 4
    ref = peft.PeftModel.from_pretrained(build("bart"), tmp_path).eval()
    assert (_logits(ours) - _logits(ref)).abs().max() < 1e-5


def test_modules_to_save_travel_with_the_head(tmp_path):
    ours = unipelt.apply(build("bert"), PeltConfig(methods=(LoRAConfig(),), modules_to_save=("pooler",)))
    randomize(ours, std=0.1)
    unipelt.to_peft(ours, tmp_path)
    ref = peft.PeftModel.from_pretrained(build("bert"), tmp_path).eval()
    assert (_logits(ours) - _logits(ref)).abs().max() < 1e-5


def test_an_exported_lora_imports_back(tmp_path):
    ours = unipelt.apply(build("roberta"), LoRAConfig(r=4, alpha=8.0, targets=("q", "k", "v")))
    randomize(ours, std=0.1)
    unipelt.to_peft(ours, tmp_path)
    back = unipelt.from_peft(build("roberta"), tmp_path)
    assert back.pelt_config.methods == ours.pelt_config.methods
    assert (_logits(back) - _logits(ours)).abs().max() < 1e-6


def _prompted_lm(length=4):
    ours = unipelt.apply(build_lm("llama"), PromptConfig(length=length))
    with torch.no_grad():
        ours.pelt_prompt.embeddings.normal_(0.0, 1.0)
    return ours


def test_a_causal_lm_prompt_goes_to_peft_and_comes_back_with_the_same_logits(tmp_path):
    """peft puts the prompt in front of the input: its logits have l leading positions more."""
    ours = _prompted_lm()
    unipelt.to_peft(ours, tmp_path)
    ref = peft.PeftModel.from_pretrained(build_lm("llama"), tmp_path).eval()
    assert (_logits(ours) - _logits(ref)[:, 4:]).abs().max() < 1e-5
    back = unipelt.from_peft(build_lm("llama"), tmp_path)
    assert back.pelt_config.methods == (PromptConfig(length=4),)
    assert (_logits(back) - _logits(ours)).abs().max() < 1e-6


def test_a_peft_prompt_checkpoint_imports_with_peft_logits(tmp_path):
    ref = peft.get_peft_model(build_lm("llama"), peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))
    with torch.no_grad():
        ref.prompt_encoder["default"].embedding.weight.normal_(0.0, 1.0)
    ref.save_pretrained(tmp_path)
    ours = unipelt.from_peft(build_lm("llama"), tmp_path)
    assert (_logits(ours) - _logits(ref.eval())[:, 5:]).abs().max() < 1e-5


REFUSED_EXPORTS = [
    ("gated", lambda: unipelt.apply(build("bert"), "unipelt-apl"), "gated"),
    ("adapter", lambda: unipelt.apply(build("bert"), "adapter"), "AdapterConfig"),
    ("prefix", lambda: unipelt.apply(build_lm("llama"), "prefix"), "positions"),
    ("combined", lambda: unipelt.apply(build("bert"), PeltConfig(methods=(LoRAConfig(), PromptConfig()))), "combines"),
    ("bert prompt", lambda: unipelt.apply(build("bert"), PromptConfig()), "LayerNorm"),
    ("llama classifier prompt", lambda: unipelt.apply(build("llama"), PromptConfig()), "right-padded"),
    ("merged", lambda: unipelt.merge(unipelt.apply(build("bert"), "lora")), "merged"),
    ("gpt2 prompt", lambda: unipelt.apply(build_lm("gpt2"), PromptConfig()), "learned"),
    ("mistral window prompt", lambda: unipelt.apply(build_lm("mistral", sliding_window=4), PromptConfig()), "window"),
]


@pytest.mark.parametrize("make,reason", [r[1:] for r in REFUSED_EXPORTS], ids=[r[0] for r in REFUSED_EXPORTS])
def test_what_peft_cannot_express_is_refused(tmp_path, make, reason):
    with pytest.raises(unipelt.UniPeltError, match=reason):
        unipelt.to_peft(make(), tmp_path)
    assert not (tmp_path / "adapter_config.json").exists()


def test_peft_prefix_and_other_prompts_are_refused_on_import(tmp_path):
    peft.get_peft_model(
        build_lm("llama"), peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    ).save_pretrained(tmp_path / "prefix")
    with pytest.raises(unipelt.UniPeltError, match="positions"):
        unipelt.from_peft(build_lm("llama"), tmp_path / "prefix")
    peft.get_peft_model(
        build("bert"), peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4)
    ).save_pretrained(tmp_path / "prompt")
    model = build("bert")
    with pytest.raises(unipelt.UniPeltError, match="LayerNorm"):
        unipelt.from_peft(model, tmp_path / "prompt")
    assert getattr(model, "pelt_config", None) is None


def test_a_peft_tensor_of_a_dtype_no_parameter_takes_is_refused_before_the_model_changes(tmp_path):
    from safetensors.torch import load_file, save_file

    ours = unipelt.apply(build("roberta"), LoRAConfig(r=4, alpha=8.0, targets=("q", "v")))
    unipelt.to_peft(ours, tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    tensors = load_file(path)
    name = sorted(tensors)[-1]
    tensors[name] = torch.zeros(tensors[name].shape, dtype=torch.int8)
    save_file(tensors, path)
    model = build("roberta")
    before = [(n, p.requires_grad, p.detach().clone()) for n, p in model.named_parameters()]
    with pytest.raises(unipelt.UniPeltError, match="int8, not one of float32"):
        unipelt.from_peft(model, tmp_path)
    after = list(model.named_parameters())
    assert len(after) == len(before) and getattr(model, "pelt_config", None) is None
    assert all(n == m and p.requires_grad == g and torch.equal(p, v) for (n, g, v), (m, p) in zip(before, after))


def test_a_failed_export_leaves_the_previous_one(tmp_path, monkeypatch):
    import pathlib

    first = unipelt.apply(build("roberta"), LoRAConfig(r=4, targets=("q", "v")))
    randomize(first, std=0.1)
    unipelt.to_peft(first, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    second = unipelt.apply(build("roberta"), LoRAConfig(r=8, targets=("q", "v")))

    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", full)  # the config, after the weights
    with pytest.raises(OSError, match="No space"):
        unipelt.to_peft(second, tmp_path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    back = unipelt.from_peft(build("roberta"), tmp_path)
    assert (_logits(back) - _logits(first)).abs().max() < 1e-6


@pytest.mark.parametrize("field, value", [("lora_bias", True), ("alora_invocation_tokens", [5]), ("use_qalora", True)])
def test_a_peft_option_that_changes_the_forward_is_refused(tmp_path, field, value):
    """lora_bias adds B's bias, aLoRA acts from its invocation tokens on: imported as plain LoRA,
    either would give other logits than peft's without a word."""
    unipelt.to_peft(unipelt.apply(build("roberta"), LoRAConfig(r=4, targets=("q", "v"))), tmp_path)
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    with pytest.raises(unipelt.UniPeltError, match=f"uses {field}"):
        unipelt.from_peft(build("roberta"), tmp_path)


def test_a_lora_b_bias_tensor_has_no_place(tmp_path):
    from safetensors.torch import load_file, save_file

    unipelt.to_peft(unipelt.apply(build("roberta"), LoRAConfig(r=4, targets=("q", "v"))), tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    weight = next(k for k in tensors if k.endswith("lora_B.weight"))
    tensors[weight.replace(".weight", ".bias")] = torch.ones(tensors[weight].shape[0])
    save_file(tensors, tmp_path / "adapter_model.safetensors")
    with pytest.raises(unipelt.UniPeltError, match="lora_B.bias"):
        unipelt.from_peft(build("roberta"), tmp_path)


@pytest.mark.parametrize("arch, saved", [("llama", ("norm",)), ("bert", ("embeddings",))])
def test_modules_to_save_are_written_as_paths_peft_takes_no_more_than(tmp_path, arch, saved):
    """peft takes every module whose name ends with an entry: "norm" named every layer norm of
    Llama's layers too, and peft failed to load the export."""
    ours = unipelt.apply(build(arch), PeltConfig(methods=(LoRAConfig(r=4, targets=("q", "v")),), modules_to_save=saved))
    randomize(ours, std=0.1)
    unipelt.to_peft(ours, tmp_path)
    ref = peft.PeftModel.from_pretrained(build(arch), tmp_path).eval()
    assert (_logits(ours) - _logits(ref)).abs().max() < 1e-5
    assert unipelt.from_peft(build(arch), tmp_path).pelt_config.modules_to_save == saved


def test_a_module_to_save_holding_lora_layers_is_refused_and_writes_nothing(tmp_path):
    ours = unipelt.apply(
        build("bert"), PeltConfig(methods=(LoRAConfig(),), modules_to_save=("encoder.layer.1.attention",))
    )
    with pytest.raises(unipelt.UniPeltError, match="holds LoRA layers"):
        unipelt.to_peft(ours, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_modules_to_save_of_a_bare_base_model_go_to_peft_and_back(tmp_path):
    from conftest import CONFIGS
    from transformers import BertModel

    def bare():
        torch.manual_seed(0)
        return BertModel(CONFIGS["bert"]()).eval()

    ours = unipelt.apply(bare(), PeltConfig(methods=(LoRAConfig(r=4),), modules_to_save=("pooler",)))
    randomize(ours, std=0.1)
    unipelt.to_peft(ours, tmp_path)
    ref = peft.PeftModel.from_pretrained(bare(), tmp_path).eval()
    with torch.no_grad():
        assert (ours(**batch()).pooler_output - ref(**batch()).pooler_output).abs().max() < 1e-6
    back = unipelt.from_peft(bare(), tmp_path)
    with torch.no_grad():
        assert (back(**batch()).pooler_output - ours(**batch()).pooler_output).abs().max() < 1e-6


def test_a_failed_export_into_a_new_directory_leaves_no_directory(tmp_path, monkeypatch):
    import pathlib

    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    with pytest.raises(OSError, match="No space"):
        unipelt.to_peft(unipelt.apply(build("roberta"), LoRAConfig(r=4, targets=("q", "v"))), tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_a_config_asking_for_huge_modules_is_refused_before_allocating_them(tmp_path):
    unipelt.to_peft(unipelt.apply(build("roberta"), LoRAConfig(r=4, targets=("q", "v"))), tmp_path)
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "r": 2**40}))
    with pytest.raises(unipelt.UniPeltError, match="added parameters"):
        unipelt.from_peft(build("roberta"), tmp_path)


ROUND_TRIPS = {
    "bart-self-q": ("bart", (LoRAConfig(targets=("q",), attention=("self",)), LoRAConfig(targets=("v", "ffn_out")))),
    "t5-o-ffn_in": ("t5", (LoRAConfig(targets=("o", "ffn_in")),)),
    "llama-ffn_in": ("llama", (LoRAConfig(targets=("q", "ffn_in")),)),  # gate_proj and up_proj
    "gpt2-conv1d": ("gpt2", (LoRAConfig(targets=("ffn_in", "ffn_out")),)),  # fan_in_fan_out
    "bert-dora": ("bert", (unipelt.DoRAConfig(targets=("v", "ffn_out")),)),
    "deberta-all": ("deberta-v2", (LoRAConfig(targets=("q", "k", "v", "o", "ffn_in", "ffn_out")),)),
}


@pytest.mark.parametrize("case", ROUND_TRIPS)
def test_every_lora_target_goes_to_peft_and_back(tmp_path, case):
    """from_peft used to read only q, k and v by their leaf names: to_peft's full paths, o and
    the FFN's maps were refused, as was GPT-2's fan_in_fan_out."""
    arch, methods = ROUND_TRIPS[case]
    ours = unipelt.apply(build(arch), PeltConfig(methods=methods))
    randomize(ours, only_pelt=True, std=0.3)
    unipelt.to_peft(ours, tmp_path)
    ref = peft.PeftModel.from_pretrained(build(arch), tmp_path).eval()
    back = unipelt.from_peft(build(arch), tmp_path)
    assert back.pelt_config.methods == methods
    assert (_logits(back) - _logits(ours)).abs().max() < 1e-6
    assert (_logits(ref) - _logits(ours)).abs().max() < 1e-5
    assert (_logits(ours) - _logits(build(arch))).abs().max() > 1e-4


def test_a_peft_regex_selects_as_peft_does(tmp_path):
    ref = peft.get_peft_model(build("bert"), peft.LoraConfig(r=4, target_modules=r".*\.(query|intermediate\.dense)"))
    randomize(ref, only_pelt=False, std=0.1)
    ref.save_pretrained(tmp_path)
    ours = unipelt.from_peft(build("bert"), tmp_path)
    assert ours.pelt_config.methods == (LoRAConfig(r=4, alpha=8.0, targets=("q", "ffn_in")),)
    assert (_logits(ours) - _logits(ref.eval())).abs().max() < 1e-5


@pytest.mark.parametrize(
    "targets, reason",
    [
        (["bert.encoder.layer.0.attention.self.query"], "adapts that map in every layer"),
        (["query", "pooler.dense"], "no unipelt equivalent"),
        ("nothing", "select no linear map"),
    ],
)
def test_a_peft_selection_no_unipelt_config_makes_is_refused(tmp_path, targets, reason):
    peft.get_peft_model(build("bert"), peft.LoraConfig(r=4, target_modules=["query"])).save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "target_modules": targets}))
    with pytest.raises(unipelt.UniPeltError, match=reason):
        unipelt.from_peft(build("bert"), tmp_path)


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("target_modules", "(query", "not a valid regular expression"),
        ("lora_dropout", None, "'lora_dropout' must be a number"),  # peft's own LoraLayer fails on null
    ],
)
def test_a_malformed_peft_field_is_one_clear_error_and_leaves_the_model(tmp_path, field, value, reason):
    peft.get_peft_model(build("bert"), peft.LoraConfig(r=4, target_modules=["query"])).save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    model = build("bert")
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(unipelt.UniPeltError, match=reason):
        unipelt.from_peft(model, tmp_path)
    assert getattr(model, "pelt_config", None) is None
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(t, before[n]) for n, t in model.state_dict().items())


def test_peft_weights_beyond_the_models_precision_are_refused_not_loaded_as_inf(tmp_path):
    source = peft.get_peft_model(build("bert"), peft.LoraConfig(r=4, target_modules=["query"]))
    with torch.no_grad():
        next(p for n, p in source.named_parameters() if "lora_B" in n).fill_(1e5)  # float16 ends at 65504
    source.save_pretrained(tmp_path)
    half = build("bert").to(torch.float16)
    with pytest.raises(unipelt.UniPeltError, match="beyond float16's range"):
        unipelt.from_peft(half, tmp_path)
    assert getattr(half, "pelt_config", None) is None


def test_importing_into_a_model_that_has_unipelt_modules_says_so(tmp_path):
    """It reported the targets it could not match in the wrapped model, not why."""
    peft.get_peft_model(build("bert"), peft.LoraConfig(r=4, target_modules=["query"])).save_pretrained(tmp_path)
    for value in (unipelt.apply(build("bert"), "lora"), None):
        message = "already has unipelt modules" if value is not None else "expected a transformers model"
        with pytest.raises(unipelt.UniPeltError, match=message):
            unipelt.from_peft(value, tmp_path)
        with pytest.raises(unipelt.UniPeltError, match=message):
            unipelt.from_adapters(value, tmp_path)


def test_a_number_too_long_for_python_to_read_in_a_peft_config_is_one_clear_error(tmp_path):
    peft.get_peft_model(build("bert"), peft.LoraConfig(r=4, target_modules=["query"])).save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    path.write_text(path.read_text().replace('"r": 4', '"r": ' + "4" * 5000))
    with pytest.raises(unipelt.UniPeltError, match="digits"):
        unipelt.from_peft(build("bert"), tmp_path)


@pytest.mark.parametrize(
    "arch, kw",
    [
        ("mistral", dict(sliding_window=4)),
        ("qwen2", dict(use_sliding_window=True, sliding_window=4, max_window_layers=0)),
    ],
)
def test_a_peft_prompt_on_a_sliding_window_is_refused(tmp_path, arch, kw):
    """peft's prompt tokens slide out of a window of 4 (0.16 apart on Mistral); unipelt's stay
    visible as a prefix's keys. Imported, the logits differed silently."""
    ref = peft.get_peft_model(
        build_lm(arch, **kw), peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    )
    ref.save_pretrained(tmp_path)
    model = build_lm(arch, **kw)
    with pytest.raises(unipelt.UniPeltError, match="sliding window of 4"):
        unipelt.from_peft(model, tmp_path)
    assert getattr(model, "pelt_config", None) is None
    # a Qwen2 whose windowed layers start beyond its last (max_window_layers) has none: imported
    full = dict(kw, max_window_layers=2) if arch == "qwen2" else dict(kw, sliding_window=None)
    ours = unipelt.from_peft(build_lm(arch, **full), tmp_path)
    ref = peft.PeftModel.from_pretrained(build_lm(arch, **full), tmp_path).eval()
    b = {k: v[:1] for k, v in batch().items()}
    assert (_logits(ours, b) - _logits(ref, b)[:, 4:]).abs().max() < 1e-5


def test_gpt2_is_a_causal_lm_to_peft(tmp_path):
    """GPT2LMHeadModel's name has no "ForCausalLM": its LoRA went out with no task type and its
    prompt was refused as a sequence classifier's."""
    ours = unipelt.apply(build_lm("gpt2"), LoRAConfig(targets=("ffn_in",)))
    randomize(ours, std=0.1)
    unipelt.to_peft(ours, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    ref = peft.PeftModel.from_pretrained(build_lm("gpt2"), tmp_path).eval()
    assert isinstance(ref, peft.PeftModelForCausalLM)
    assert (_logits(ours) - _logits(ref)).abs().max() < 1e-5


def test_layers_to_transform_zero_is_refused(tmp_path):
    """0 is layer 0 only: read as "not set", a checkpoint holding every layer's tensors loaded
    with every layer's LoRA applied."""
    peft.get_peft_model(build("bert"), peft.LoraConfig(target_modules=["query"])).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**cfg, "layers_to_transform": 0}))
    with pytest.raises(unipelt.UniPeltError, match="uses layers_to_transform"):
        unipelt.from_peft(build("bert"), tmp_path)


@pytest.mark.parametrize("arch, saved", [("bert", ["LayerNorm"]), ("bert", ["word_embeddings"]), ("llama", ["norm"])])
def test_modules_to_save_are_selected_as_peft_selects_them(tmp_path, arch, saved):
    """peft trains every module whose path ends in a name ("norm": Llama's final norm and each
    layer's input_layernorm); an exact path match refused these checkpoints."""
    task = "SEQ_CLS"
    ref = peft.get_peft_model(
        build(arch), peft.LoraConfig(task_type=task, target_modules=["query", "q_proj"], modules_to_save=saved)
    )
    randomize(ref, std=0.1)
    ref.save_pretrained(tmp_path)
    ours = unipelt.from_peft(build(arch), tmp_path)
    assert (_logits(ours) - _logits(ref.eval())).abs().max() < 1e-5
    assert (_logits(ours) - _logits(build(arch))).abs().max() > 1e-3


def test_modules_to_save_naming_the_output_embedding_is_refused(tmp_path):
    ref = peft.get_peft_model(
        build_lm("llama"),
        peft.LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj"], modules_to_save=["lm_head"]),
    )
    ref.save_pretrained(tmp_path)
    model = build_lm("llama")
    with pytest.raises(unipelt.UniPeltError, match="output embedding"):
        unipelt.from_peft(model, tmp_path)
    assert getattr(model, "pelt_config", None) is None


def test_a_module_to_save_tied_to_the_output_embedding_is_refused_both_ways(tmp_path):
    """peft trains a copy of a tied input embedding and leaves lm_head as it was; unipelt trains
    the tied weight, lm_head with it: imported, the logits differed by 3.8."""
    tied = dict(tie_word_embeddings=True)
    ref = peft.get_peft_model(
        build_lm("llama", **tied),
        peft.LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj"], modules_to_save=["embed_tokens"]),
    )
    ref.save_pretrained(tmp_path / "peft")
    model = build_lm("llama", **tied)
    with pytest.raises(unipelt.UniPeltError, match="tied to the output embedding"):
        unipelt.from_peft(model, tmp_path / "peft")
    assert getattr(model, "pelt_config", None) is None
    ours = unipelt.apply(
        build_lm("llama", **tied), PeltConfig(methods=(LoRAConfig(),), modules_to_save=("embed_tokens",))
    )
    with pytest.raises(unipelt.UniPeltError, match="tied to the output embedding"):
        unipelt.to_peft(ours, tmp_path / "out")
    assert not (tmp_path / "out" / "adapter_config.json").exists()
