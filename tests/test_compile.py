"""torch.compile: no graph break anywhere unipelt adds code, outputs equal to eager.

Dynamo's ``fullgraph=True`` raises on the first graph break, so a model that compiles with it has
none. The cheap ``eager`` backend checks tracing for every preset and architecture; AOTAutograd
(``aot_eager``) checks the backward pass, and one case goes through the real compiler (inductor).
Seq2seq classifiers are compiled without their head: transformers' BART/T5 heads check the eos
count with a data-dependent op (``unique_consecutive``), a break of the base model, not of ours.
"""

import pytest
import torch
from conftest import ARCHS, batch, build, randomize

import unipelt

HEAD_BREAKS = {"bart", "t5", "mbart"}  # the break is in transformers' classification head
PRESETS = sorted(unipelt.PRESETS)


def body_and_inputs(arch: str, preset: str):
    model = unipelt.apply(build(arch), preset)
    randomize(model)
    inputs = batch()
    if arch in HEAD_BREAKS:
        return model.base_model, {**inputs, "decoder_input_ids": inputs["input_ids"][:, :4]}
    return model, inputs


def compiled_matches_eager(module, inputs, backend: str) -> None:
    torch._dynamo.reset()
    compiled = torch.compile(module, backend=backend, fullgraph=True)
    with torch.no_grad():
        ref, out = module(**inputs)[0], compiled(**inputs)[0]
    assert (out - ref).abs().max() < 1e-5


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_traces_in_one_graph(preset):
    compiled_matches_eager(*body_and_inputs("bert", preset), backend="eager")


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("preset", ["unipelt-apl", "lora"])  # every kind of module; LoRA alone
def test_every_architecture_traces_in_one_graph(arch, preset):
    compiled_matches_eager(*body_and_inputs(arch, preset), backend="eager")


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_compiled_training_step_gives_eager_gradients(arch):
    model = unipelt.apply(build(arch), "unipelt-apl").train()
    randomize(model)
    inputs = {**batch(), "labels": torch.tensor([0, 1, 2])}

    def grads(module):
        model.zero_grad()
        module(**inputs).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    torch.manual_seed(0)  # dropout draws the same masks in both passes
    ref = grads(model)
    torch._dynamo.reset()
    torch.manual_seed(0)
    got = grads(torch.compile(model, backend="aot_eager", fullgraph=True))
    assert ref.keys() == got.keys()
    assert all((got[n] - ref[n]).abs().max() < 1e-5 for n in ref)


def test_inductor_compiles_unipelt_apl():
    compiled_matches_eager(*body_and_inputs("bert", "unipelt-apl"), backend="inductor")


def test_unipelt_compile_compiles_in_place_and_matches_eager():
    """``unipelt.compile``: the same module, the same parameter names, eager's outputs, and one
    graph for batches of two lengths (dynamic shapes)."""
    model = unipelt.apply(build("bert"), "unipelt-apl").eval()
    randomize(model)
    long, short = batch(t=9), batch(t=6)
    names = list(model.state_dict())
    with torch.no_grad():
        ref = [model(**b).logits for b in (long, short)]
    torch._dynamo.reset()
    assert unipelt.compile(model, backend="aot_eager", fullgraph=True) is model
    assert list(model.state_dict()) == names  # unipelt.save and the Trainer see what they saw
    with torch.no_grad():
        got = [model(**b).logits for b in (long, short)]
    assert all((g - r).abs().max() < 1e-5 for g, r in zip(got, ref))


def test_gate_values_of_a_compiled_model_are_eagers():
    """The compiled graph skips the hooks gate_values adds for its call: it returned {}."""
    model = unipelt.apply(build("bert"), "unipelt-apl").eval()
    randomize(model)
    b = batch()
    eager = unipelt.gate_values(model, b)
    torch._dynamo.reset()
    unipelt.compile(model, backend="aot_eager")
    with torch.no_grad():
        model(**b)  # compiled now
    compiled = unipelt.gate_values(model, b)
    assert eager and compiled.keys() == eager.keys()
    assert all(compiled[layer] == pytest.approx(values) for layer, values in eager.items())


def test_load_into_and_apply_onto_a_compiled_model(tmp_path):
    """The participation check runs the forward eagerly: traced, its hooks' outputs lose their
    graph and every module looked idle ("transformers bypasses unipelt's hook")."""
    trained = unipelt.apply(build(), "lora")
    randomize(trained)
    unipelt.save(trained, tmp_path / "lora")
    loaded = unipelt.load(unipelt.compile(unipelt.apply(build(), "lora"), backend="aot_eager"), tmp_path / "lora")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch()).logits, trained(**batch()).logits)
    unipelt.apply(unipelt.compile(build(), backend="aot_eager"), "unipelt-apl")


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(40)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", model_max_length=64)


def test_serve_compile_answers_as_eager(tmp_path):
    """``unipelt serve --compile``: the engine's shared model compiled in place, the same answers."""
    from unipelt.serve import Engine, Row, TaskSpec

    build("bert").save_pretrained(tmp_path / "base")
    _word_tokenizer().save_pretrained(tmp_path / "base")
    for i, preset in enumerate(("unipelt-apl", "lora")):
        model = unipelt.apply(build("bert", num_labels=2), preset)
        randomize(model, std=0.1, seed=i)
        unipelt.save(model, tmp_path / preset)
    rows = [Row(task=t, text=f"w{i} w{i + 3} w7" + " w2" * (i % 3)) for i, t in enumerate(["unipelt-apl", "lora"] * 3)]
    answers = []
    torch._dynamo.reset()
    for compile in (False, {"backend": "aot_eager"}):
        engine = Engine.from_directory(tmp_path / "base", compile=compile)
        for preset in ("unipelt-apl", "lora"):
            engine.add(preset, TaskSpec(path=tmp_path / preset, pairs=False))
        assert (engine.mt.model._compiled_call_impl is not None) == bool(compile)
        answers.append(engine.run(rows))
    for eager, compiled in zip(*answers):
        assert eager["label"] == compiled["label"]
        assert eager["scores"].keys() == compiled["scores"].keys()
        assert all(abs(eager["scores"][k] - compiled["scores"][k]) < 1e-5 for k in eager["scores"])


@pytest.mark.parametrize("preset", ["lora", "unipelt-apl"])
def test_batches_of_any_shape_recompile_no_more_than_the_plain_model(preset):
    """A shared read (LoRA's q and v, the gates) kept the last pass's result, and a compiled graph
    that read it was guarded on its tensors' shapes: a batch of a shape seen before, after one of
    another shape, compiled again (3 recompiles over these shapes, the plain model's 1)."""
    from torch._dynamo.utils import counters

    shapes = [(3, 9), (1, 7), (3, 11), (1, 5), (2, 6), (1, 8), (3, 6)]

    def recompiles(model) -> int:
        torch._dynamo.reset()
        counters.clear()
        model.compile(dynamic=True, backend="eager")
        with torch.no_grad():
            model(**batch(b=3, t=9))
            first = counters["frames"]["total"]
            for b, t in shapes[1:]:
                model(**{k: v[:b] for k, v in batch(b=3, t=t, seed=t).items()})
        return counters["frames"]["total"] - first

    model = unipelt.apply(build("llama"), preset)
    randomize(model)
    assert recompiles(model) <= recompiles(build("llama"))
