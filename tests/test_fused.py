"""The fused paths (issue 18) compute what the plain formulas do.

``read_once`` takes a gate's logits and a bottleneck's down-projection from one GEMM;
``Adapter.added`` forms ``base + w·A(z)`` in one ``addmm``. Here each is checked against the
two-step formula written out, and whole models against the same models with the fused paths
patched out, outputs and gradients, on every architecture.
"""

import pytest
import torch
from conftest import ARCHS, batch, build, randomize

import unipelt
from unipelt.blocks import Gate, Interpolation, LowRank, MaskSlot, Scale, read_once
from unipelt.methods import adapter as adapter_module
from unipelt.methods import lora as lora_module

GATED = ("unipelt-apl", "unipelt-ap", "mam", "adapter-houlsby", "parallel-adapter", "lora")


def _unfused(monkeypatch) -> None:
    def two_gemms(block, weight, z):
        hid = z @ block.down[0]
        hid = hid + block.down_bias[0] if block.down_bias is not None else hid
        return block.act(hid), weight(z)

    monkeypatch.setattr(lora_module, "read_once", two_gemms)
    monkeypatch.setattr(adapter_module, "read_once", two_gemms)
    monkeypatch.setattr(adapter_module.Adapter, "added", lambda self, base, z, h=None: base + self(z, h))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("weight", ["gate", "interpolation", "scale"])
def test_read_once_is_the_bottleneck_and_the_weight(bias, weight):
    torch.manual_seed(0)
    block = LowRank(16, 4, 16, activation="relu", bias=bias, init="bert")
    if bias:
        torch.nn.init.normal_(block.down_bias)
    module = {"gate": Gate(16, slot=MaskSlot()), "interpolation": Interpolation(16), "scale": Scale(0.5)}[weight]
    z = torch.randn(2, 5, 16)
    hid, w = read_once(block, module, z)
    ref = torch.relu(z @ block.down[0] + (block.down_bias[0] if bias else 0))
    if weight == "scale":
        ref_w = torch.tensor(0.5)
    else:
        g = torch.sigmoid(z @ module.proj.weight.T + module.proj.bias)  # (2, 5, 1)
        ref_w = g.mean(dim=1, keepdim=True) if weight == "gate" else g
    assert torch.allclose(hid, ref, atol=1e-6) and torch.allclose(w, ref_w, atol=1e-6)


def test_read_once_gives_the_dropped_input_to_the_bottleneck_only():
    """With dropout on the bottleneck's input the gate must read the undropped z: two GEMMs."""
    block = LowRank(16, 4, 16, dropout=0.5).train()
    gate = Gate(16, slot=MaskSlot())
    z = torch.randn(2, 5, 16)
    torch.manual_seed(3)
    hid, w = read_once(block, gate, z)
    torch.manual_seed(3)
    assert torch.allclose(hid, torch.nn.functional.dropout(z, 0.5) @ block.down[0], atol=1e-6)
    assert torch.allclose(w, gate(z))


@pytest.mark.parametrize("composition", ["gated", "scaled", "add", "interpolate"])
@pytest.mark.parametrize("up_bias", [True, False])
def test_added_is_base_plus_the_increment(composition, up_bias):
    cfg = adapter_module.AdapterConfig(insertion="parallel", composition=composition)
    adapter = adapter_module.Adapter(cfg, 16, pooling="masked_mean", slot=MaskSlot())
    torch.nn.init.normal_(adapter.block.up_bias if up_bias else adapter.block.down_bias)
    if not up_bias:
        adapter.block.up_bias = None
    base, z, h = torch.randn(3, 2, 5, 16).unbind()
    assert torch.allclose(adapter.added(base, z, h), base + adapter(z, h), atol=1e-6)


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("preset", GATED)
def test_models_match_the_unfused_code(arch, preset, monkeypatch):
    model = unipelt.apply(build(arch), preset)
    randomize(model)
    model.eval()
    inputs = batch()

    def run():
        model.zero_grad(set_to_none=True)
        out = model(**inputs).logits
        out.sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fused, fused_grads = run()
    with monkeypatch.context() as m:
        _unfused(m)
        plain, plain_grads = run()
    assert (fused - plain).abs().max() < 1e-5
    assert fused_grads.keys() == plain_grads.keys()
    for name, grad in fused_grads.items():
        assert torch.allclose(grad, plain_grads[name], atol=1e-5, rtol=1e-4), name


def test_gate_values_still_see_fused_gates():
    model = unipelt.apply(build("bert"), "unipelt-apl")
    values = unipelt.gate_values(model, batch())
    assert {"adapter", "lora_q", "lora_v", "prefix"} <= set(values[0])
