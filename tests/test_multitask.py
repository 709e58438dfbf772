"""Mixed-task batches on one backbone: each row equals its task's own model on that row alone."""

import ast
import json
import pkgutil
from pathlib import Path

import pytest
import torch
from conftest import NOT_SUPPORTED, TINY, batch, build, randomize
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

import unipelt
from unipelt import DoRAConfig, IA3Config, LoRAConfig, MultiTask, PeltConfig, UniPeltError

SERVED = sorted(p for p in unipelt.PRESETS if p not in ("full", "prefix-nogating"))


def rows(n: int, seed: int = 0, longest: int = 11) -> dict:
    """n rows of lengths 3..longest, right-padded; eos (2) last as BART and T5 classify there."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, longest + 1, (n,), generator=g)
    ids = torch.full((n, int(lengths.max())), 1)
    mask = torch.zeros_like(ids)
    for i, n_i in enumerate(lengths.tolist()):
        ids[i, :n_i] = torch.randint(5, TINY["vocab_size"], (n_i,), generator=g)
        ids[i, n_i - 1] = 2
        mask[i, :n_i] = 1
    return {"input_ids": ids, "attention_mask": mask}


def trained(tmp_path, arch, preset, labels=2, seed=0):
    model = unipelt.apply(build(arch, num_labels=labels), preset)
    randomize(model, std=0.1, seed=seed)
    unipelt.save(model, tmp_path / preset)
    return unipelt.load(build(arch, num_labels=labels), tmp_path / preset)


def alone(model, batch, i):
    n = int(batch["attention_mask"][i].sum())
    with torch.no_grad():
        return model(**{k: v[i : i + 1, :n] for k, v in batch.items()}).logits[0]


def assert_rows_match(mt, singles, batch, tasks):
    out = mt(**batch, tasks=tasks)
    for i, task in enumerate(tasks):
        ref = alone(singles[task], batch, i)
        assert out[i].shape == ref.shape, task
        assert (out[i] - ref).abs().max() < 1e-5, (task, (out[i] - ref).abs().max())


# DeBERTa projects its relative-position embeddings once for the whole batch (1, 2k, d): BitFit's
# per-task biases on pos_key_proj/pos_query_proj cannot differ per row there
NOT_MIXED = {"deberta-v2": {"bitfit"}}


def test_every_preset_mixed_in_one_batch(tmp_path, arch):
    served = [p for p in SERVED if p not in NOT_SUPPORTED.get(arch, {}) and p not in NOT_MIXED.get(arch, ())]
    singles = {p: trained(tmp_path, arch, p, labels=1 + i % 3, seed=i) for i, p in enumerate(served)}
    mt = MultiTask(build(arch))
    for p in served:
        mt.add(p, tmp_path / p)
    assert mt.tasks == served
    tasks = [served[i % len(served)] for i in range(2 * len(served))]
    assert_rows_match(mt, singles, rows(len(tasks), seed=3), tasks)


def test_a_per_task_change_to_an_input_shared_by_the_batch_is_refused(tmp_path):
    for i, preset in enumerate(("bitfit", "lora")):
        trained(tmp_path, "deberta-v2", preset, seed=i)
    mt = MultiTask(build("deberta-v2"))
    for preset in ("bitfit", "lora"):
        mt.add(preset, tmp_path / preset)
    with pytest.raises(UniPeltError, match="one input for the whole batch"):
        mt(**rows(2), tasks=["bitfit", "lora"])


def test_a_gated_change_to_a_shared_input_is_refused_even_in_a_batch_of_its_task(tmp_path):
    """With share_att_key DeBERTa's relative positions go through query_proj, where UniPELT's gated
    LoRA sits: the gate would pool over one row's mask there, where the task's own model pools
    over none; refused (the server then answers those rows in halves), not answered otherwise."""
    from unipelt.errors import SharedInputError

    model = unipelt.apply(build("deberta-v2", share_att_key=True), "unipelt-apl")
    randomize(model, std=0.1)
    unipelt.save(model, tmp_path / "apl")
    mt = MultiTask(build("deberta-v2", share_att_key=True))
    mt.add("apl", tmp_path / "apl")
    with pytest.raises(SharedInputError, match="one input for the whole batch"):
        mt(**rows(3), tasks=["apl"] * 3)
    one = {k: v[1:2] for k, v in batch(b=3, t=16).items()}  # a padded row of 2 * position_buckets tokens
    with torch.no_grad():  # one row is answered, its gates pooling the positions as its own model's do
        assert (mt(**one, tasks=["apl"])[0] - model(**one).logits[0]).abs().max() < 1e-5


def test_a_per_task_change_to_a_shared_input_serves_a_batch_of_its_task_alone(tmp_path):
    """In a batch of one task, BitFit on DeBERTa's relative-position projections changes the
    input every row shares, as the task's own model does: every row is answered, not only one."""
    singles = {p: trained(tmp_path, "deberta-v2", p, labels=2 + i, seed=i) for i, p in enumerate(("bitfit", "lora"))}
    mt = MultiTask(build("deberta-v2"))
    for preset in singles:
        mt.add(preset, tmp_path / preset)
    for preset in singles:
        assert_rows_match(mt, singles, rows(4, seed=5), [preset] * 4)


@pytest.mark.parametrize("preset", SERVED)
def test_each_preset_beside_another_task(tmp_path, preset):
    singles = {preset: trained(tmp_path, "bert", preset, labels=3), "lora": trained(tmp_path, "bert", "lora", seed=1)}
    mt = MultiTask(build())
    for name in singles:
        mt.add(name, tmp_path / name)
    assert_rows_match(mt, singles, rows(5, seed=4), [preset, "lora", preset, preset, "lora"])


@pytest.mark.parametrize("arch", ["bert", "bart"])
def test_a_task_whose_gates_count_padding_gets_its_own_answer_beside_a_longer_row(tmp_path, arch):
    """gate_pooling="mean" averages over the batch's padding too (the official code): in a mixed
    batch that padding comes from other requests, so each row pools over its own positions, what
    it gets alone; a batch of its task alone is no exception (the rows could be anyone's)."""
    config = PeltConfig(methods=unipelt.PRESETS["unipelt-apl"].methods, gate_pooling="mean")
    model = unipelt.apply(build(arch), config)
    randomize(model, std=0.1, seed=1)
    unipelt.save(model, tmp_path / "mean")
    singles = {"mean": unipelt.load(build(arch), tmp_path / "mean"), "lora": trained(tmp_path, arch, "lora", seed=2)}
    mt = MultiTask(build(arch))
    for name in singles:
        mt.add(name, tmp_path / name)
    assert_rows_match(mt, singles, rows(4, seed=6), ["mean", "lora", "lora", "mean"])
    assert_rows_match(mt, singles, rows(3, seed=7), ["mean"] * 3)


@pytest.mark.parametrize("arch", ["bart", "t5"])
def test_rows_with_different_numbers_of_eos_tokens_share_a_batch(tmp_path, arch):
    """BART's and T5's heads read the last eos state and refuse a batch whose rows hold different
    numbers of eos tokens: a pair task (eos between its sentences) beside a single-sentence task."""
    singles = {p: trained(tmp_path, arch, p, seed=i) for i, p in enumerate(["lora", "unipelt-apl"])}
    mt = MultiTask(build(arch))
    for name in singles:
        mt.add(name, tmp_path / name)
    b = rows(5, seed=8)
    b["input_ids"][[0, 3], 1] = 2  # rows 0 and 3: one eos more (every row ends in one)
    assert_rows_match(mt, singles, b, ["lora", "unipelt-apl", "lora", "unipelt-apl", "unipelt-apl"])


def test_wrappers_stacked_on_one_fused_map_add_up_in_a_mixed_batch(tmp_path):
    """LoRA on q, DoRA on v and (IA)³ on k of GPT-2's one c_attn: three wrappers at one site, each
    changing its rows from what the ones inside it gave (DoRA through LoRA's row hook)."""
    cfg = PeltConfig(methods=(LoRAConfig(targets=("q",)), DoRAConfig(targets=("v",)), IA3Config(targets=("k",))))
    model = unipelt.apply(build("gpt2", num_labels=3), cfg)
    randomize(model, std=0.1)
    unipelt.save(model, tmp_path / "stacked")
    singles = {"stacked": unipelt.load(build("gpt2", num_labels=3), tmp_path / "stacked")}
    singles["dora"] = trained(tmp_path, "gpt2", "dora", seed=1)
    mt = MultiTask(build("gpt2"))
    for name in singles:
        mt.add(name, tmp_path / name)
    assert_rows_match(mt, singles, rows(4, seed=7), ["stacked", "dora", "dora", "stacked"])


def method_imports(source: str) -> list[str]:
    """The method files (``unipelt.methods.<file>``) that ``source``, a module of unipelt, imports from."""
    files = {m.name for m in pkgutil.iter_modules(unipelt.methods.__path__)}
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("unipelt.methods.")]
        elif isinstance(node, ast.ImportFrom):
            # relative imports: multitask.py sits in unipelt itself
            module = ".".join(filter(None, ["unipelt" if node.level else "", node.module or ""]))
            names = {a.name for a in node.names}
            if module.startswith("unipelt.methods."):
                found.append(module)
            elif module == "unipelt.methods" and names & files:
                found += [f"{module}.{n}" for n in sorted(names & files)]
            elif module == "unipelt" and "methods" in names:
                found.append("unipelt.methods")  # the package as a name: its files by attribute
    return found


def test_multitask_reaches_methods_only_through_the_registry():
    """A new method is one file, mixed batches included (issue 31): multitask.py imports no method
    file's classes, only the registry, and asks each module and method how it runs on its rows."""
    source = Path(unipelt.multitask.__file__).read_text("utf-8")
    assert method_imports(source) == []
    assert method_imports("from .methods.lora import LoRALinear\nfrom .methods import configured") == [
        "unipelt.methods.lora"
    ]
    assert sorted(method_imports("from .methods import bitfit\nimport unipelt.methods.ia3")) == [
        "unipelt.methods.bitfit",
        "unipelt.methods.ia3",
    ]


def test_adding_or_removing_a_task_leaves_the_others_unchanged(tmp_path):
    for p in ("unipelt-apl", "prompt", "bitfit"):
        trained(tmp_path, "bert", p)
    mt = MultiTask(build())
    mt.add("unipelt-apl", tmp_path / "unipelt-apl")
    batch, tasks = rows(4, seed=5), ["unipelt-apl"] * 4
    before = torch.stack(mt(**batch, tasks=tasks))
    mt.add("prompt", tmp_path / "prompt")
    mt.add("bitfit", tmp_path / "bitfit")
    assert torch.equal(torch.stack(mt(**batch, tasks=tasks)), before)
    mixed = mt(**batch, tasks=["unipelt-apl", "prompt", "bitfit", "unipelt-apl"])
    # other rows change the batch's shapes (the prompt widens it), so only rounding may differ
    assert (mixed[0] - before[0]).abs().max() < 1e-6 and (mixed[3] - before[3]).abs().max() < 1e-6
    mt.remove("prompt")
    mt.remove("bitfit")
    assert mt.tasks == ["unipelt-apl"]
    assert torch.equal(torch.stack(mt(**batch, tasks=tasks)), before)


def test_the_shared_backbone_holds_one_copy_of_the_base_weights(tmp_path):
    base = build()
    weights = {id(p) for p in base.base_model.parameters()}
    mt = MultiTask(base)
    for p in ("lora", "bitfit", "unipelt-apl"):
        trained(tmp_path, "bert", p)
        mt.add(p, tmp_path / p)
    for name in mt.tasks:  # each task's skeleton points at the shared tensors, BitFit's biases aside
        skeleton = mt._tasks[name].model.base_model
        shared = {id(p) for n, p in skeleton.named_parameters() if "pelt_" not in n and not n.endswith(".bias")}
        assert shared <= weights
    ref = build()
    assert all(torch.equal(a, b) for a, b in zip(base.base_model.parameters(), ref.base_model.parameters()))


def test_bad_checkpoints_and_calls_are_refused(tmp_path):
    for p in ("full", "prefix-nogating", "lora"):
        trained(tmp_path, "bert", p)
    mt = MultiTask(build())
    with pytest.raises(UniPeltError, match="full fine-tuning checkpoint has no shared backbone"):
        mt.add("full", tmp_path / "full")
    with pytest.raises(UniPeltError, match="not served in mixed batches"):
        mt.add("nogating", tmp_path / "prefix-nogating")
    cfg = unipelt.PeltConfig(methods=(unipelt.LoRAConfig(),), modules_to_save=("pooler",))
    unipelt.save(unipelt.apply(build(), cfg), tmp_path / "pooler")
    with pytest.raises(UniPeltError, match="trains base modules"):
        mt.add("pooler", tmp_path / "pooler")
    with pytest.raises(UniPeltError, match="another base model"):
        MultiTask(build(seed=7)).add("lora", tmp_path / "lora")
    mt.add("lora", tmp_path / "lora")
    with pytest.raises(UniPeltError, match="already loaded"):
        mt.add("lora", tmp_path / "lora")
    with pytest.raises(UniPeltError, match="unknown task"):
        mt(**rows(2), tasks=["lora", "rte"])
    with pytest.raises(UniPeltError, match="plain base model"):
        MultiTask(unipelt.apply(build(), "lora"))
    assert mt.tasks == ["lora"]


def test_a_commit_that_fails_leaves_the_shared_model_as_it_was(tmp_path, monkeypatch):
    """A task refused at its last check (its rows disagree with its own model) takes with it
    the sites it wrapped around shared modules and the attention it switched, not only its
    entries: the shared model is the one it was, and serves the next task as a fresh one would."""
    for p in ("unipelt-apl", "lora"):
        trained(tmp_path, "bert", p)
    mt = MultiTask(build())
    shape = lambda: [(n, type(m)) for n, m in mt.model.named_modules()]  # noqa: E731
    before, attention = shape(), mt.model.config._attn_implementation

    def refuse(self, task):
        raise UniPeltError("refused at the last check")

    with monkeypatch.context() as m:
        m.setattr(MultiTask, "_check_served", refuse)
        with pytest.raises(UniPeltError, match="last check"):
            mt.add("unipelt-apl", tmp_path / "unipelt-apl")
    assert shape() == before and mt.model.config._attn_implementation == attention
    assert mt.tasks == [] and mt._summary.heads == {}
    mt.add("lora", tmp_path / "lora")
    fresh = MultiTask(build())
    fresh.add("lora", tmp_path / "lora")
    batch = rows(3, seed=2)
    assert torch.equal(torch.stack(mt(**batch, tasks=["lora"] * 3)), torch.stack(fresh(**batch, tasks=["lora"] * 3)))
    assert shape() == [(n, type(m)) for n, m in fresh.model.named_modules()]


def _as_format_1(directory) -> None:
    """Rewrite a checkpoint's metadata as unipelt 0.1 wrote it (no head, an embedding probe)."""
    path = directory / "unipelt.json"
    meta = json.loads(path.read_text())
    old = {k: v for k, v in meta["config"].items() if k not in ("modules_to_save", "head")}
    emb = build().get_input_embeddings().weight[:4, :8].detach().flatten().tolist()
    base = {k: v for k, v in meta["base_model"].items() if k != "base_tensors"} | {"embedding_probe": emb}
    path.write_text(json.dumps({**meta, "format": 1, "config": old, "base_model": base}))


@pytest.mark.parametrize("preset", ["lora", "bitfit"])
def test_a_format_1_checkpoint_never_writes_into_the_shared_backbone(tmp_path, preset):
    """Format 1 saved BERT's pooler in every method, and its config does not say so: the pooler
    loads as modules_to_save (checkpoint._v1_pooler), which a mixed batch cannot serve. Reading
    such a checkpoint must refuse it before anything is written, not after the shared pooler
    (or a BitFit bias) was overwritten."""
    cfg = PeltConfig(methods=unipelt.get_preset(preset).methods, modules_to_save=("pooler",))
    model = unipelt.apply(build(), cfg)
    randomize(model, std=0.1)
    unipelt.save(model, tmp_path / "v1")
    _as_format_1(tmp_path / "v1")
    base = build()
    mt = MultiTask(base)
    before = {n: (p.detach().clone(), p.requires_grad) for n, p in base.named_parameters()}
    with pytest.raises(UniPeltError, match="trains base modules"):
        mt.prepare("v1", tmp_path / "v1")
    with pytest.raises(UniPeltError, match="trains base modules"):
        mt.add("v1", tmp_path / "v1")
    after = dict(base.named_parameters())
    for name, (value, grad) in before.items():
        assert torch.equal(after[name], value) and after[name].requires_grad == grad, name
    assert mt.tasks == []


def test_a_task_name_that_is_not_a_string_is_refused_with_the_library_error(tmp_path):
    trained(tmp_path, "bert", "lora")
    mt = MultiTask(build())
    for name in (["a"], None, ""):
        with pytest.raises(UniPeltError, match="non-empty name"):
            mt.add(name, tmp_path / "lora")
    assert mt.tasks == []


def _tokenizer():
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(40)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", model_max_length=64)


def test_pairs_keep_their_segment_ids(tmp_path):
    singles = {p: trained(tmp_path, "bert", p, seed=i) for i, p in enumerate(("unipelt-apl", "prompt"))}
    mt = MultiTask(build())
    for p in singles:
        mt.add(p, tmp_path / p)
    batch = rows(4, seed=6)
    batch["token_type_ids"] = (torch.arange(batch["input_ids"].shape[1]) >= 3).long().expand(4, -1).contiguous()
    tasks = ["unipelt-apl", "prompt", "prompt", "unipelt-apl"]
    out = mt(**batch, tasks=tasks)
    for i, task in enumerate(tasks):
        ref = alone(singles[task], batch, i)
        assert (out[i] - ref).abs().max() < 1e-5, task
    without = mt(**{k: v for k, v in batch.items() if k != "token_type_ids"}, tasks=tasks)
    assert (out[0] - without[0]).abs().max() > 1e-6  # the segment ids reach the model


def test_predict_names_labels_as_the_checkpoint_does(tmp_path):
    model = unipelt.apply(build(num_labels=2, id2label={0: "negative", 1: "positive"}), "unipelt-apl")
    randomize(model)
    unipelt.save(model, tmp_path / "sst2")
    regression = unipelt.apply(build(num_labels=1, problem_type="regression"), "lora")
    randomize(regression)
    unipelt.save(regression, tmp_path / "stsb", pairs=True)
    mt = MultiTask(build(pad_token_id=0))
    mt.add("sst2", tmp_path / "sst2")
    mt.add("stsb", tmp_path / "stsb")
    out = mt.predict(["w1 w2 w3", ("w4 w5", "w6"), "w7"], ["sst2", "stsb", "sst2"], _tokenizer())
    assert [o["task"] for o in out] == ["sst2", "stsb", "sst2"]
    assert set(out[0]["scores"]) == {"negative", "positive"} and out[0]["label"] in out[0]["scores"]
    assert abs(sum(out[2]["scores"].values()) - 1) < 1e-6
    assert isinstance(out[1]["value"], float)


def test_a_bare_string_is_one_input_and_a_bare_task_name_every_rows(tmp_path):
    """`predict("a fine film", "sst2", tok)` once iterated the string ("11 inputs but 4 task names")."""
    model = unipelt.apply(build(num_labels=2, id2label={0: "negative", 1: "positive"}), "lora")
    randomize(model)
    unipelt.save(model, tmp_path / "sst2")
    mt = MultiTask(build(pad_token_id=0))
    mt.add("sst2", tmp_path / "sst2")
    tok = _tokenizer()
    [one] = mt.predict("w1 w2 w3", "sst2", tok)
    assert one == mt.predict(["w1 w2 w3"], ["sst2"], tok)[0] and one["label"] in ("negative", "positive")
    assert [o["task"] for o in mt.predict(["w1", "w2 w3"], "sst2", tok)] == ["sst2", "sst2"]
    assert mt.predict((x for x in ["w1 w2 w3"]), (t for t in ["sst2"]), tok) == [one]  # generators too
    for tasks, message in (([["sst2"]], "tasks must be task names"), (None, "takes a list of inputs")):
        with pytest.raises(UniPeltError, match=message):
            mt.predict(["w1"], tasks, tok)


def test_each_task_takes_the_kind_of_input_and_the_length_it_was_trained_on(tmp_path):
    """The library answers as the server does (a 422 there): a pair given to a single-sentence
    task is refused, not answered as the sentence it is not; inputs are cut to the trained length."""
    model = unipelt.apply(build(num_labels=2), "lora")
    randomize(model)
    unipelt.save(model, tmp_path / "single", max_length=5)
    unipelt.save(model, tmp_path / "pairs", pairs=True)
    mt = MultiTask(build(pad_token_id=0))
    mt.add("single", tmp_path / "single")
    mt.add("pairs", tmp_path / "pairs")
    mt.add("forced", tmp_path / "single", pairs=True)  # a checkpoint that does not say
    unipelt.save(model, tmp_path / "said-single", pairs=False)
    with pytest.raises(UniPeltError, match=r"records that its task takes single sentences \(pairs=False\)"):
        mt.add("contradicted", tmp_path / "said-single", pairs=True)  # it was answered as pairs
    mt.add("agreed", tmp_path / "pairs", pairs=True)
    tok = _tokenizer()
    with pytest.raises(UniPeltError, match=r"inputs\[1\]: task 'single' takes single strings, not pairs"):
        mt.predict(["w1", ("w2", "w3")], "single", tok)
    with pytest.raises(UniPeltError, match=r"inputs\[0\]: task 'pairs' takes sentence pairs"):
        mt.predict(["w1"], "pairs", tok)
    assert mt.predict([("w2", "w3")], "forced", tok)[0]["task"] == "forced"
    with pytest.raises(UniPeltError, match="unknown task 'nope'"):
        mt.predict(["w1"], "nope", tok)
    long = " ".join(f"w{i}" for i in range(12))
    cut = " ".join(f"w{i}" for i in range(3))  # 5 tokens with [CLS] and [SEP]
    assert mt.predict(long, "single", tok) == mt.predict(cut, "single", tok)
    assert mt.predict(long, "single", tok, max_length=14) != mt.predict(cut, "single", tok)
    for pair in (("w1", "w2", "w9"), ("w1",)):  # a third sentence was dropped, a lone one read as single
        with pytest.raises(UniPeltError, match=r"inputs\[0\]: task 'pairs' takes sentence pairs"):
            mt.predict([pair], "pairs", tok)
    for bad in (-1, 0, 10**6, 2.5):  # an IndexError, the default, a shape error, ...
        with pytest.raises(UniPeltError, match="max_length must be a whole number from 1"):
            mt.predict(long, "single", tok, max_length=bad)


def test_a_batch_that_is_not_rows_of_token_ids_is_one_clear_error(tmp_path):
    trained(tmp_path, "bert", "lora")
    mt = MultiTask(build())
    mt.add("t", tmp_path / "lora")
    b = batch()
    cases = [
        (dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"][:, :5]), "attention_mask must be"),
        (dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"][:2]), "attention_mask must be"),
        (dict(input_ids=b["input_ids"].float()), "input_ids must be a 2-D tensor of token ids"),
        (dict(input_ids=b["input_ids"][0]), "input_ids must be a 2-D tensor"),
        (dict(input_ids=b["input_ids"][:0]), "at least one row of one token"),
        (dict(input_ids=b["input_ids"].bool()), "input_ids must be a 2-D tensor of token ids"),
        (dict(input_ids=b["input_ids"] + TINY["vocab_size"]), "outside the model's vocabulary"),
        (dict(input_ids=-b["input_ids"]), "outside the model's vocabulary"),
        (dict(**b, token_type_ids=torch.zeros(3, 4, dtype=torch.long)), "token_type_ids must be"),
        (dict(**b, token_type_ids=torch.zeros(b["input_ids"].shape)), "token_type_ids must be"),
        (dict(**b, token_type_ids=b["input_ids"].tolist()), "token_type_ids must be"),
    ]
    for inputs, message in cases:
        with pytest.raises(UniPeltError, match=message):
            mt(**inputs, tasks=["t"] * 3)
    with pytest.raises(UniPeltError, match="tasks must be task names"):
        mt(**b, tasks=[["t"]] * 3)
    with pytest.raises(UniPeltError, match="tasks names 0 rows"):
        mt(**b, tasks=None)
    assert [torch.equal(x, y) for x, y in zip(mt(**b, tasks="t"), mt(**b, tasks=["t"] * 3))] == [True] * 3


def test_load_gives_the_model_the_checkpoints_label_names(tmp_path):
    model = unipelt.apply(build(num_labels=2, id2label={0: "negative", 1: "positive"}), "lora")
    unipelt.save(model, tmp_path / "sst2")
    fresh = build(num_labels=2)
    assert fresh.config.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    unipelt.load(fresh, tmp_path / "sst2")
    assert fresh.config.id2label == {0: "negative", 1: "positive"}
    assert fresh.config.label2id == {"negative": 0, "positive": 1}


HEAD_ADAPTER = unipelt.AdapterConfig(target="head", insertion="parallel", r=8)


@pytest.mark.parametrize(
    "methods",
    [
        (HEAD_ADAPTER, unipelt.LoRAConfig(targets=("q", "v"), composition="gated")),
        (HEAD_ADAPTER, unipelt.LoRAConfig(targets=("q", "v")), unipelt.PrefixConfig(length=4, composition="gated")),
    ],
    ids=["gated-lora-on-q", "q-reads-the-prefix-gate"],
)
def test_a_head_adapter_over_a_gated_query_projection_in_a_mixed_batch(tmp_path, methods):
    """The multi-head adapter calls the query projection it does not own: that projection's
    gates (its own, or the prefix gate its shared read computes) pool over the task's rows."""
    model = unipelt.apply(build(), unipelt.PeltConfig(methods=methods))
    randomize(model, std=0.1, seed=1)
    unipelt.save(model, tmp_path / "mix")
    singles = {"mix": unipelt.load(build(), tmp_path / "mix")}
    singles["lora"] = trained(tmp_path, "bert", "lora", labels=3, seed=2)
    mt = MultiTask(build())
    for name in singles:
        mt.add(name, tmp_path / name)
    assert_rows_match(mt, singles, rows(4, seed=3), ["mix", "lora", "mix", "lora"])


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_a_bfloat16_base_serves_its_tasks(tmp_path, arch):
    """The task's head was made in float32 beside bf16 hidden states: add failed with a dtype error."""

    def bf16():
        model = build(arch).to(torch.bfloat16)
        model.config.dtype = torch.bfloat16  # as from_pretrained(dtype=torch.bfloat16) records it
        return model

    model = unipelt.apply(bf16(), "lora")
    randomize(model, std=0.1)
    unipelt.save(model, tmp_path / "lora")
    mt = unipelt.MultiTask(bf16())
    mt.add("lora", tmp_path / "lora")
    single, b = unipelt.load(bf16(), tmp_path / "lora"), batch()
    out = mt(**b, tasks=["lora"] * 3)
    with torch.no_grad():
        for i in range(3):
            row = {k: v[i : i + 1, : int(b["attention_mask"][i].sum())] for k, v in b.items()}
            assert out[i].dtype == torch.bfloat16
            assert (out[i].float() - single(**row).logits[0].float()).abs().max() < 2e-2


def test_a_decoder_prompt_pass_keeps_no_graph(tmp_path):
    """The prompt's own pass before a mixed batch runs without autograd, as the batch does."""
    trained(tmp_path, "llama", "prompt")
    mt = MultiTask(build("llama"))
    mt.add("prompt", tmp_path / "prompt")
    mt(**rows(2), tasks=["prompt", "prompt"])
    k, v = mt._tasks["prompt"].model.pelt_prompt._last[0]
    assert k.grad_fn is None and v.grad_fn is None


def test_a_checkpoint_that_names_no_labels_gets_the_default_names(tmp_path):
    """A task block with num_labels but no id2label (written by hand, or by another tool): the
    head is made at its size with transformers' LABEL_i names, not of size None."""
    import json

    trained(tmp_path, "bert", "lora", labels=3)
    meta_path = tmp_path / "lora" / "unipelt.json"
    meta = json.loads(meta_path.read_text())
    meta["task"]["id2label"] = {}
    meta_path.write_text(json.dumps(meta))
    mt = MultiTask(build())
    mt.add("t", tmp_path / "lora")
    assert mt(**rows(2), tasks=["t", "t"])[0].shape == (3,)
    assert mt._tasks["t"].model.config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}


@pytest.mark.parametrize("head", ["mean", "last"])
def test_a_summary_head_task_under_bf16_autocast(tmp_path, head):
    """Under autocast BERT's pooler output is bf16 and a summary of LayerNorm outputs float32:
    putting one task's summary into the mixed batch's pooler output raised a dtype error."""
    model = unipelt.apply(build("bert"), PeltConfig(methods=(LoRAConfig(),), head=head))
    randomize(model)
    unipelt.save(model, tmp_path / "t")
    mt = unipelt.MultiTask(build("bert"))
    mt.add("t", tmp_path / "t")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        own, mixed = model(**batch()).logits, torch.stack(mt(**batch(), tasks=["t"] * 3))
    torch.testing.assert_close(mixed.float(), own.float(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("arch", ["bert", "llama", "t5"])
def test_a_mask_edited_in_place_under_inference_mode_is_read_afresh(tmp_path, arch):
    """What is kept on a mask tensor (the gates' token mask) is keyed by the forward pass for an
    inference tensor, which counts no versions, and MultiTask's shared model has no hook that
    begins a pass: a mask a server reuses under torch.inference_mode() must still be read afresh.
    It is, because MultiTask takes 2-D masks only, from which transformers builds each pass's own."""
    mt = MultiTask(build(arch))
    trained(tmp_path, arch, "unipelt-apl")
    mt.add("apl", tmp_path / "unipelt-apl")
    batch = rows(2, longest=9)
    with torch.inference_mode():
        mask = batch["attention_mask"].clone()
        mt(batch["input_ids"], mask, "apl")
        mask[0, 3:] = 0
        reused = torch.stack(mt(batch["input_ids"], mask, "apl"))
        fresh = torch.stack(mt(batch["input_ids"], mask.clone(), "apl"))
    torch.testing.assert_close(reused, fresh, rtol=0, atol=0)


@pytest.mark.parametrize("preset", ["unipelt-apl", "bitfit"])
def test_a_task_added_under_inference_mode_answers_as_it_alone(tmp_path, preset):
    """A server adds tasks under torch.inference_mode(): the task's new head was an inference
    tensor, which load's check could not read, and add died with a traceback."""
    model = unipelt.apply(build(), preset)
    randomize(model)
    unipelt.save(model, tmp_path)
    mt = MultiTask(build())
    with torch.inference_mode():
        mt.add("a", tmp_path)
        out = torch.stack(list(mt(**batch(), tasks=["a"] * 3)))
    with torch.no_grad():
        alone = unipelt.load(build(), tmp_path)(**batch()).logits
    assert (out - alone).abs().max() < 1e-6
