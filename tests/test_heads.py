"""The task head (heads.py): each summary checked against its formula on a plain copy of the model,
resolved from the model's own declaration, kept through save/load and MultiTask."""

import json

import pytest
import torch
from conftest import batch, build, randomize

import unipelt
from unipelt import LoRAConfig, PeltConfig, UniPeltError

# an architecture where the summary replaces the pooler's output, one whose head reads the first
# token, and a decoder whose head reads the last real token
SUMMARY_ARCHS = ("bert", "roberta", "distilbert", "llama")


def pooled(hidden: torch.Tensor, mask: torch.Tensor, head: str) -> torch.Tensor:
    """The paper-level definition, written out per row: a mean over real tokens, or the last one."""
    rows = []
    for h, m in zip(hidden, mask):
        real = h[m.bool()]
        rows.append(real.mean(0) if head == "mean" else real[-1])
    return torch.stack(rows)


def reference(plain, inputs: dict, head: str) -> torch.Tensor:
    """The plain model's own head fed with the summary where it reads its own."""
    out = plain.base_model(**inputs)
    summary = pooled(out.last_hidden_state, inputs["attention_mask"], head)
    kind = plain.config.model_type
    if kind == "bert":
        return plain.classifier(summary)
    if kind == "llama":
        return plain.score(summary)
    hidden = out.last_hidden_state.clone()
    hidden[:, 0] = summary
    if kind == "distilbert":
        return plain.classifier(torch.relu(plain.pre_classifier(hidden[:, 0])))
    return plain.classifier(hidden)


@pytest.mark.parametrize("head", ["mean", "last"])
@pytest.mark.parametrize("arch", SUMMARY_ARCHS)
@torch.no_grad()
def test_a_summary_head_computes_its_formula(arch, head):
    plain, model = build(arch), build(arch)
    unipelt.apply(model, PeltConfig(methods=(LoRAConfig(),), head=head))  # LoRA starts at Δ = 0
    inputs = batch()
    assert (model(**inputs).logits - reference(plain, inputs, head)).abs().max() < 1e-5
    assert model.pelt_config.head == head


@pytest.mark.parametrize("head", ["mean", "last"])
@torch.no_grad()
def test_a_decoder_reads_the_summary_when_pad_is_eos(head):
    """transformers' decoder heads read the last token that is not the pad id: with pad = eos and
    rows ending in eos, not the mask's last real token. The head still reads the summary."""
    plain, model = build("llama", pad_token_id=2), build("llama", pad_token_id=2)
    unipelt.apply(model, PeltConfig(methods=(LoRAConfig(),), head=head))
    inputs = batch()
    inputs["input_ids"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, 2)
    summary = pooled(plain.base_model(**inputs).last_hidden_state, inputs["attention_mask"], head)
    torch.testing.assert_close(model(**inputs).logits, plain.score(summary))


@pytest.mark.parametrize("how", ["argument", "config"])
@pytest.mark.parametrize("arch", ["bert", "deberta-v2"])
@torch.no_grad()
def test_a_summary_head_under_return_dict_false(arch, how):
    """The base model then returns a tuple: the summary goes where its ModelOutput would hold it."""
    model = unipelt.apply(build(arch), PeltConfig(methods=(LoRAConfig(),), head="mean"))
    randomize(model)
    expected = model(**batch()).logits
    if how == "config":
        model.config.return_dict = False
    got = model(**batch(), **({"return_dict": False} if how == "argument" else {}))[0]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@torch.no_grad()
def test_the_mean_head_ignores_padding():
    model = unipelt.apply(build(), PeltConfig(methods=(LoRAConfig(),), head="mean"))
    randomize(model)
    inputs = batch()
    padded = model(**inputs).logits[1]
    real = int(inputs["attention_mask"][1].sum())
    alone = model(input_ids=inputs["input_ids"][1:2, :real], attention_mask=inputs["attention_mask"][1:2, :real])
    assert (alone.logits[0] - padded).abs().max() < 1e-5


def test_model_and_pooler_leave_the_model_as_transformers_built_it():
    inputs = batch()
    with torch.no_grad():
        want = build()(**inputs).logits
        for head in ("model", "pooler"):
            got = unipelt.apply(build(), PeltConfig(methods=(LoRAConfig(),), head=head))(**inputs).logits
            assert torch.equal(got, want)


def test_auto_reads_the_sentence_transformers_declaration(tmp_path):
    build().save_pretrained(tmp_path)
    from transformers import BertForSequenceClassification

    assert unipelt.apply(BertForSequenceClassification.from_pretrained(tmp_path), "lora").pelt_config.head == "model"
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    model = unipelt.apply(BertForSequenceClassification.from_pretrained(tmp_path), "lora")
    assert model.pelt_config.head == "mean"  # recorded as it ran


def test_auto_reads_the_declaration_of_a_model_loaded_by_hub_name(tmp_path, monkeypatch):
    """A model loaded by its hub name has a name, not a directory, as ``_name_or_path``: the
    declaration in the hub cache's snapshot was never read, and MiniLM's untrained pooler was the head."""
    from huggingface_hub import constants

    snapshot = tmp_path / "models--org--tiny-st" / "snapshots" / ("a" * 40)
    (snapshot / "1_Pooling").mkdir(parents=True)
    (snapshot / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    (tmp_path / "models--org--tiny-st" / "refs").mkdir()
    (tmp_path / "models--org--tiny-st" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = build()
    model.config._name_or_path = "org/tiny-st"
    assert unipelt.apply(model, "lora").pelt_config.head == "mean"
    other = build()
    other.config._name_or_path = "org/not-cached"  # nothing declared, nothing asked of a hub offline
    assert unipelt.apply(other, "lora").pelt_config.head == "model"


@pytest.mark.parametrize("name", ["org/never-fetched", "my-local-dir", "./relative/model"])
def test_auto_asks_no_hub_for_a_name_transformers_did_not_fetch(tmp_path, monkeypatch, name):
    """A name that is a path, or a model no hub gave (nothing of it cached), or any name while the
    environment switches the hub off (set after import too): a lookup took 23 s of retries."""
    import huggingface_hub
    from huggingface_hub import constants

    calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *args, **kwargs: calls.append(args))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    model = build()
    model.config._name_or_path = name
    assert unipelt.apply(model, "lora").pelt_config.head == "model" and calls == []


def test_save_and_load_keep_the_head(tmp_path):
    model = unipelt.apply(build(), PeltConfig(methods=(LoRAConfig(),), head="mean"))
    randomize(model)
    unipelt.save(model, tmp_path)
    assert json.loads((tmp_path / "unipelt.json").read_text())["config"]["head"] == "mean"
    restored = unipelt.load(build(), tmp_path)
    with torch.no_grad():
        assert torch.equal(restored(**batch()).logits, model(**batch()).logits)


def test_unload_removes_the_summary():
    model = unipelt.apply(build(), PeltConfig(methods=(LoRAConfig(),), head="mean"))
    with torch.no_grad():
        assert torch.equal(unipelt.unload(model)(**batch()).logits, build()(**batch()).logits)


@torch.no_grad()
def test_multitask_serves_each_task_with_its_own_head(tmp_path):
    models = {}
    for head in ("mean", "model", "last"):
        model = unipelt.apply(build(), PeltConfig(methods=(LoRAConfig(),), head=head))
        randomize(model, seed=len(models))
        unipelt.save(model, tmp_path / head)
        models[head] = model
    mt = unipelt.MultiTask(build())
    for head in models:
        mt.add(head, tmp_path / head)
    inputs = batch()
    tasks = ["mean", "last", "model"]
    for row, (task, logits) in enumerate(zip(tasks, mt(**inputs, tasks=tasks))):
        alone = models[task](**inputs).logits[row]
        assert (logits - alone).abs().max() < 1e-5


@pytest.mark.parametrize(
    "arch, head, words",
    [
        ("t5", "mean", "not offered"),
        ("bart", "last", "not offered"),
        ("roberta", "pooler", "no pooler"),
    ],
)
def test_a_head_the_model_cannot_have_is_refused_before_anything_changes(arch, head, words):
    model = build(arch)
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(UniPeltError, match=words):
        unipelt.apply(model, PeltConfig(methods=(LoRAConfig(),), head=head))
    assert getattr(model, "pelt_config", None) is None
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_a_model_without_a_task_head_takes_no_summary():
    from conftest import CONFIGS
    from transformers import BertModel

    with pytest.raises(UniPeltError, match="needs a classifier"):
        unipelt.apply(BertModel(CONFIGS["bert"]()), PeltConfig(methods=(LoRAConfig(),), head="mean"))


def test_an_unknown_head_is_refused():
    with pytest.raises(UniPeltError, match="head"):
        PeltConfig(methods=(LoRAConfig(),), head="cls")
