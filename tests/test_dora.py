"""DoRA (Liu et al. 2024) against HF peft's ``use_dora`` on the same weights, against its equation
on fused projections, and the invariants the design-space table does not cover: merge, counts,
the gate's refusal, mixed batches."""

import pytest
import torch
from conftest import HEADS, batch, build, randomize

import unipelt
from unipelt import DoRAConfig, LoRAConfig, PeltConfig, UniPeltError
from unipelt.arch import spec_for
from unipelt.attention import weight_out_in
from unipelt.methods.dora import DoRALinear

peft = pytest.importorskip("peft")
DORA = DoRAConfig(r=4, alpha=8.0, targets=("q", "v"))


def logits(model):
    with torch.no_grad():
        return model(**batch()).logits


def _qv_leaves(arch: str) -> list[str] | None:
    attention = spec_for(build(arch)).stacks[0].attention[0]
    if not isinstance(attention.q, str):
        return None  # a fused [q; k; v] map: peft's DoRA would normalise all of it
    return [getattr(attention, t).rpartition(".")[2] for t in ("q", "v")]


def _peft_and_ours(arch: str, use_rslora: bool = False):
    """peft's DoRA with random A, B and magnitude, and unipelt's with the same values."""
    cfg = DoRAConfig(r=4, alpha=8.0, targets=("q", "v"), use_rslora=use_rslora)
    ours = unipelt.apply(build(arch), cfg)
    ref = peft.get_peft_model(
        build(arch),
        peft.LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=_qv_leaves(arch),
            use_dora=True,
            use_rslora=use_rslora,
            modules_to_save=[HEADS[arch]],
        ),
    )
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, m in ref.named_modules():
            if hasattr(m, "lora_magnitude_vector") and "default" in m.lora_magnitude_vector:
                a = torch.randn(m.lora_A["default"].weight.shape, generator=g) * 0.3
                b = torch.randn(m.lora_B["default"].weight.shape, generator=g) * 0.3
                mag = m.lora_magnitude_vector["default"].weight
                mag.mul_(1 + 0.5 * torch.randn(mag.shape, generator=g))
                m.lora_A["default"].weight.copy_(a)
                m.lora_B["default"].weight.copy_(b)
                wrapper = ours.get_submodule(name.replace("base_model.model.", ""))
                wrapper.pelt_lora.down[0].copy_(a.T)
                wrapper.pelt_lora.up[0].copy_(b.T)
                wrapper.pelt_magnitude.weight.copy_(mag)
    return ours, ref.eval()


def test_same_weights_give_the_same_logits_and_merged_weights_as_peft(arch):
    if _qv_leaves(arch) is None:
        pytest.skip("a fused [q; k; v] map: peft normalises all of it, unipelt's q and v their rows (tested below)")
    ours, ref = _peft_and_ours(arch)
    got, want = logits(ours), logits(ref)
    assert (got - want).abs().max() < 1e-5
    assert (got - logits(build(arch))).abs().max() > 20 * (got - want).abs().max()  # DoRA acts
    ours, ref = unipelt.merge_and_unload(ours), ref.merge_and_unload()
    theirs = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        assert (p - theirs[name]).abs().max() < 1e-5, name
    assert (logits(ours) - want).abs().max() < 1e-5


def test_rslora_scale_matches_peft():
    ours, ref = _peft_and_ours("bert", use_rslora=True)
    assert (logits(ours) - logits(ref)).abs().max() < 1e-5


def test_gradients_match_peft():
    """The norm is a constant for backward in both (DoRA §4.3)."""
    ours, ref = _peft_and_ours("bert")
    labels = torch.tensor([0, 1, 2])
    ours(**batch(), labels=labels).loss.backward()  # both in eval mode: no dropout draws to tell apart
    ref(**batch(), labels=labels).loss.backward()
    q = "bert.encoder.layer.0.attention.self.query"
    mine, theirs = ours.get_submodule(q), ref.get_submodule(f"base_model.model.{q}")
    assert (mine.pelt_magnitude.weight.grad - theirs.lora_magnitude_vector["default"].weight.grad).abs().max() < 1e-6
    assert (mine.pelt_lora.up.grad[0].T - theirs.lora_B["default"].weight.grad).abs().max() < 1e-6


def test_fused_projections_follow_the_equation_row_by_row():
    """GPT-2's c_attn = [q; k; v]: the q and v DoRAs each renormalise their own rows."""
    model = unipelt.apply(build("gpt2"), DORA)
    randomize(model, std=0.2, only_pelt=True)
    before = logits(model)
    plain = build("gpt2")
    with torch.no_grad():
        for i, block in enumerate(model.transformer.h):
            w = weight_out_in(plain.transformer.h[i].attn.c_attn)  # (3d, d)
            wrapped = block.attn.c_attn
            for start in (64, 0):  # v wraps q
                rows = w[start : start + 32]
                lora = wrapped.pelt_lora
                v = rows + 2.0 * (lora.down[0] @ lora.up[0]).T  # s = alpha / r = 2
                rows.copy_(wrapped.pelt_magnitude.weight[:, None] * v / v.norm(dim=1, keepdim=True))
                wrapped = wrapped.base_layer
        plain.score.load_state_dict(model.score.state_dict())
    assert (before - logits(build("gpt2"))).abs().max() > 1e-3
    assert (before - logits(plain)).abs().max() < 1e-5
    assert (logits(unipelt.merge_and_unload(model)) - logits(plain)).abs().max() < 1e-5


def test_merge_is_exact_and_removes_the_wrapper(arch):
    model = unipelt.apply(build(arch), "dora")
    randomize(model, std=0.2)
    before = logits(model)
    unipelt.merge(model)
    assert not any(isinstance(m, DoRALinear) for m in model.modules())
    assert (logits(model) - before).abs().max() < 1e-5


def test_a_fresh_dora_is_the_base_model(arch):
    assert (logits(unipelt.apply(build(arch), "dora")) - logits(build(arch))).abs().max() < 1e-6


def test_counts_are_lora_plus_one_magnitude_per_output_row():
    from transformers import BertConfig, BertForSequenceClassification

    with torch.device("meta"):
        model = BertForSequenceClassification(BertConfig(num_labels=2))  # bert-base shapes
    c = unipelt.count_parameters(unipelt.apply(model, "dora"))
    assert c["dora"] == 12 * 2 * (2 * 768 * 8 + 768)
    assert "lora" not in c and c["total"] == c["inference"] == c["dora"]


def test_the_gate_and_a_lora_on_the_same_projection_are_refused():
    with pytest.raises(UniPeltError, match="DoRA cannot be gated"):
        DoRAConfig(composition="gated")
    with pytest.raises(UniPeltError, match="same projection"):
        unipelt.apply(build(), PeltConfig(methods=(LoRAConfig(targets=("q",)), DoRAConfig(targets=("q", "k")))))
    model = unipelt.apply(build(), PeltConfig(methods=(LoRAConfig(targets=("q",)), DoRAConfig(targets=("v",)))))
    c = unipelt.count_parameters(model)
    assert c["lora"] == 2 * (2 * 32 * 8) and c["dora"] == 2 * (2 * 32 * 8 + 32)


def test_peft_export_refuses_dora(tmp_path):
    with pytest.raises(UniPeltError, match="DoRAConfig"):
        unipelt.to_peft(unipelt.apply(build(), DORA), tmp_path)


@pytest.mark.parametrize("arch", ["bert", "gpt2", "bart"])
def test_dora_runs_in_mixed_batches(tmp_path, arch):
    singles = {}
    for i, (name, preset) in enumerate([("dora", DORA), ("lora", "lora"), ("dora2", DORA)]):
        model = unipelt.apply(build(arch), preset)
        randomize(model, std=0.2, seed=i)
        unipelt.save(model, tmp_path / name)
        singles[name] = unipelt.load(build(arch), tmp_path / name)
    mt = unipelt.MultiTask(build(arch))
    for name in singles:
        mt.add(name, tmp_path / name)
    tasks = ["dora", "lora", "dora2"]
    out = mt(**batch(), tasks=tasks)
    for i, task in enumerate(tasks):
        row = {k: v[i : i + 1] for k, v in batch().items()}
        with torch.no_grad():
            assert (out[i] - singles[task](**row).logits[0]).abs().max() < 1e-5
