"""UniPELT against the papers' equations, written out in float64 with plain tensor ops.

The reference below recomputes a tiny BERT from its parameters by SPEC §1-2 alone: the Pfeiffer
adapter ``LN(s + G_A·A(LN(s)))``, prefix keys and values scaled by G_P, LoRA ``θ0 + G_L·BA`` on q
and v (α/r without a gate), and each gate ``mean_t σ(w·x_t + b)`` over real tokens (or all
tokens). It shares none of the library's fused paths (``SharedRead``, ``read_once``, the
once-per-pass prefix network, the per-example products), so the logits and every trainable
parameter's gradient must agree to float64 rounding.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import batch, build, randomize

import unipelt
from unipelt.presets import LORA

CASES = {  # preset -> the submodules it puts in every layer
    "unipelt-apl": "APL",
    "unipelt-ap": "AP",
    "unipelt-ap-nogate": "AP",
    "unipelt-apl-nogate": "APL",
    "adapter": "A",
    "prefix": "P",
    "lora": "L",
}
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def gate(p: dict, name: str, z: torch.Tensor, mask: torch.Tensor, pooling: str):
    """G(z) = mean over tokens of σ(w·z_t + b), one value per example: (B, 1, 1)."""
    g = torch.sigmoid(z @ p[f"{name}.proj.weight"].T + p[f"{name}.proj.bias"])  # (B, T, 1)
    if pooling == "mean":
        return g.mean(1, keepdim=True)
    w = mask.to(g.dtype).unsqueeze(-1)
    return (g * w).sum(1, keepdim=True) / w.sum(1, keepdim=True)


def reference(model, b: dict, parts: str, pooling: str, head: str) -> torch.Tensor:
    p = {n.replace(".base_layer", ""): t for n, t in model.named_parameters()}
    cfg = model.config
    d, heads_n = cfg.hidden_size, cfg.num_attention_heads
    dh = d // heads_n
    ids, mask = b["input_ids"], b["attention_mask"].bool()
    B, T = ids.shape

    def ln(z, name):
        return F.layer_norm(z, (d,), p[f"{name}.weight"], p[f"{name}.bias"], cfg.layer_norm_eps)

    def linear(z, name):
        return z @ p[f"{name}.weight"].T + p[f"{name}.bias"]

    def split(t):  # (B, S, d) -> (B, H, S, dh)
        return t.reshape(B, -1, heads_n, dh).transpose(1, 2)

    emb = "bert.embeddings."
    x = p[emb + "word_embeddings.weight"][ids] + p[emb + "position_embeddings.weight"][:T]
    x = ln(x + p[emb + "token_type_embeddings.weight"][0], emb + "LayerNorm")
    if "P" in parts:  # Embedding(l, d) -> Linear -> tanh -> Linear(2·L·d): every layer's P_K, P_V
        net = "pelt_prefix.nets.0."
        mid = torch.tanh(linear(p[net + "embedding.weight"], net + "mlp_in"))
        prefixes = linear(mid, net + "mlp_out")  # (l, 2·L·d)
    for i in range(cfg.num_hidden_layers):
        layer = f"bert.encoder.layer.{i}."
        att = layer + "attention.self."
        q, k, v = (linear(x, att + n) for n in ("query", "key", "value"))
        if "L" in parts:
            deltas = {}
            for n in ("query", "value"):
                A, Bm = p[f"{att}{n}.pelt_lora.down"][0], p[f"{att}{n}.pelt_lora.up"][0]  # (d, r), (r, d)
                gated = f"{att}{n}.pelt_gate.proj.weight" in p
                w = gate(p, f"{att}{n}.pelt_gate", x, mask, pooling) if gated else LORA.alpha / LORA.r
                deltas[n] = w * (x @ A @ Bm)
            q, v = q + deltas["query"], v + deltas["value"]
        qh, kh, vh = split(q), split(k), split(v)
        bias = torch.zeros(B, 1, 1, T, dtype=x.dtype).masked_fill(~mask[:, None, None, :], -math.inf)
        if "P" in parts:
            length = prefixes.shape[0]
            pk, pv = prefixes[:, 2 * i * d : (2 * i + 1) * d], prefixes[:, (2 * i + 1) * d : (2 * i + 2) * d]
            name = att + "pelt_prefix.pelt_gate"
            w = gate(p, name, x, mask, pooling) if f"{name}.proj.weight" in p else 1.0
            kh = torch.cat([split(w * pk.expand(B, -1, -1)), kh], dim=2)  # only P_K, P_V are scaled
            vh = torch.cat([split(w * pv.expand(B, -1, -1)), vh], dim=2)
            bias = torch.cat([torch.zeros(B, 1, 1, length, dtype=x.dtype), bias], dim=-1)
        scores = qh @ kh.transpose(-1, -2) / math.sqrt(dh) + bias
        ctx = (scores.softmax(-1) @ vh).transpose(1, 2).reshape(B, T, d)
        a = ln(x + linear(ctx, layer + "attention.output.dense"), layer + "attention.output.LayerNorm")
        s = a + linear(F.gelu(linear(a, layer + "intermediate.dense")), layer + "output.dense")
        norm = layer + "output.LayerNorm"
        if "A" in parts:  # Pfeiffer: LN(s + G_A·A(LN(s))), G_A read from the adapter's input LN(s)
            ad = norm + ".pelt_adapter_sequential.0."
            z = ln(s, norm)
            hid = torch.relu(z @ p[ad + "block.down"][0] + p[ad + "block.down_bias"][0])
            out = hid @ p[ad + "block.up"][0] + p[ad + "block.up_bias"]
            w = gate(p, ad + "pelt_gate", z, mask, pooling) if ad + "pelt_gate.proj.weight" in p else 1.0
            s = s + w * out
        x = ln(s, norm)
    if head == "mean":
        m = mask.to(x.dtype).unsqueeze(-1)
        summary = (x * m).sum(1) / m.sum(1)
    else:
        summary = torch.tanh(linear(x[:, 0], "bert.pooler.dense"))
    return linear(summary, "classifier")


def model_for(preset: str, pooling: str, head: str, std: float = 0.3):
    cfg = unipelt.PeltConfig(methods=unipelt.PRESETS[preset].methods, gate_pooling=pooling, head=head)
    model = unipelt.apply(build(**NO_DROPOUT), cfg).double()
    randomize(model, std=std)  # gates far from 0.5, B far from 0: every term counts
    for module in model.modules():  # the methods' own dropouts (LoRA's): none, so train mode is exact
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


@pytest.mark.parametrize("head", ["pooler", "mean"])
@pytest.mark.parametrize("pooling", ["masked_mean", "mean"])
@pytest.mark.parametrize("preset", sorted(CASES))
def test_logits_follow_the_papers_equations(preset, pooling, head):
    model, b = model_for(preset, pooling, head), batch()
    expected = reference(model, b, CASES[preset], pooling, head)
    with torch.no_grad():  # the inference paths: cached fused weights, the prefix computed once
        torch.testing.assert_close(model(**b).logits, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(model(**b).logits, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("pooling", ["masked_mean", "mean"])
@pytest.mark.parametrize("preset", sorted(CASES))
def test_gradients_follow_the_papers_equations(preset, pooling, training):
    """The fused backward (one GEMM for A_q, A_v and three gates; the shared prefix network) gives
    every trainable parameter the gradient of the plain formula."""
    model, b = model_for(preset, pooling, "pooler"), batch()
    model.train(training)
    params = [t for t in model.parameters() if t.requires_grad]
    probe = torch.randn(3, model.config.num_labels, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours = torch.autograd.grad((model(**b).logits * probe).sum(), params)
    theirs = torch.autograd.grad((reference(model, b, CASES[preset], pooling, "pooler") * probe).sum(), params)
    for mine, ref in zip(ours, theirs):
        torch.testing.assert_close(mine, ref, rtol=1e-9, atol=1e-12)
