"""DeBERTa's prefix (attention.py, ``_deberta_attention``) against its equation written out here
with plain torch ops from one layer's weights, never through the library's code path:

    A = softmax([q·P_k / √(dh·f) ; DeBERTa's score(q, k)]) over [prefix; input],  out = A [P_v; V]

DeBERTa's score (He et al. 2021, Eq. 2-4, indexed as transformers and the original code do):
q_i·k_j/s + q_i·K^r_{δ(i,j)}/s (c2p) + k_j·Q^r_{δ(i,j)}/s (p2c), δ(i,j) = clamp(i - j + span,
0, 2·span - 1), s = √(dh·f), f = 1 + the number of position terms. Prefix positions have no
relative position: content only, always attended."""

import copy

import pytest
import torch
import transformers
from conftest import TINY, batch, build, randomize

import unipelt
from unipelt import PeltConfig, PrefixConfig

L = 3  # prefix length


def tiny(share_att_key: bool):
    """No log buckets, so δ is plain clamped i - j; a span shorter than the batch exercises the clamp."""
    config = transformers.DebertaV2Config(
        **{**TINY, "num_labels": 3},
        relative_attention=True,
        pos_att_type=["c2p", "p2c"],
        position_buckets=-1,
        max_relative_positions=4,
        share_att_key=share_att_key,
    )
    torch.manual_seed(0)
    return transformers.DebertaV2ForSequenceClassification(config).eval()


def heads(t: torch.Tensor, h: int) -> torch.Tensor:
    return t.unflatten(-1, (h, -1)).transpose(-3, -2)  # (..., T, d) -> (..., H, T, dh)


def by_hand(att, x, mask2d, rel, pk=None, pv=None) -> torch.Tensor:
    """One DisentangledSelfAttention's output from its weights; with prefix keys/values (H, l, dh)."""
    h, t = att.num_attention_heads, x.shape[1]
    lin = lambda m, z: z @ m.weight.T + m.bias  # noqa: E731
    q, k, v = (heads(lin(m, x), h) for m in (att.query_proj, att.key_proj, att.value_proj))  # (B, H, T, dh)
    pos_k = heads(lin(att.key_proj if att.share_att_key else att.pos_key_proj, rel), h)  # (H, 2span, dh)
    pos_q = heads(lin(att.query_proj if att.share_att_key else att.pos_query_proj, rel), h)
    s = (q.shape[-1] * 3) ** 0.5  # f = 1 + c2p + p2c
    span = rel.shape[0] // 2
    i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
    delta = (i - j + span).clamp(0, 2 * span - 1)  # (T, T)
    content = q @ k.transpose(-1, -2) / s
    c2p = torch.einsum("bhid,hijd->bhij", q, pos_k[:, delta]) / s  # q_i · K^r_δ(i,j)
    p2c = torch.einsum("bhjd,hijd->bhij", k, pos_q[:, delta]) / s  # k_j · Q^r_δ(i,j)
    scores = content + c2p + p2c
    seen = (mask2d[:, None, :, None] * mask2d[:, None, None, :]).bool()  # DeBERTa's m_i·m_j
    scores = scores.masked_fill(~seen, torch.finfo(scores.dtype).min)
    if pk is not None:
        scores = torch.cat([q @ pk.transpose(-1, -2) / s, scores], dim=-1)  # prefix: content only, always seen
        v = torch.cat([pv.expand(v.shape[0], -1, -1, -1), v], dim=2)
    out = torch.softmax(scores, dim=-1) @ v  # (B, H, T, dh)
    return out.transpose(1, 2).flatten(2)


def layer_inputs(model, b):
    deberta = model.deberta
    x = deberta.embeddings(input_ids=b["input_ids"], mask=b["attention_mask"])
    enc = deberta.encoder
    return x, enc.get_attention_mask(b["attention_mask"]), enc.get_rel_pos(x), enc.get_rel_embedding()


@pytest.mark.parametrize("share_att_key", [False, True], ids=["deberta-v2", "v3-shared-key"])
@torch.no_grad()
def test_the_prefixed_layer_is_the_equation(share_att_key):
    plain = tiny(share_att_key)
    model = unipelt.apply(copy.deepcopy(plain), PeltConfig(methods=(PrefixConfig(length=L),)))
    randomize(model, std=0.5, only_pelt=True)
    b = batch()
    x, mask4d, rel_pos, rel = layer_inputs(plain, b)
    lib = model.deberta.encoder.layer[0].attention.self(x, mask4d, False, relative_pos=rel_pos, rel_embeddings=rel)[0]
    att = plain.deberta.encoder.layer[0].attention.self
    h = att.num_attention_heads
    pk, pv = (heads(t, h) for t in model.pelt_prefix.kv(0))  # (H, l, dh)
    real = b["attention_mask"].bool()  # padded query rows are garbage in both
    assert (lib - by_hand(att, x, b["attention_mask"], rel, pk, pv))[real].abs().max() < 1e-5
    # the check of the check: the same hand-written DeBERTa without a prefix is transformers' layer
    stock = att(x, mask4d, False, relative_pos=rel_pos, rel_embeddings=rel)[0]
    assert (stock - by_hand(att, x, b["attention_mask"], rel))[real].abs().max() < 1e-5
    assert (lib - stock)[real].abs().max() > 1e-3  # the prefix acts


@torch.no_grad()
def test_without_its_prefix_the_model_is_the_plain_model():
    plain = tiny(share_att_key=True)
    model = unipelt.apply(copy.deepcopy(plain), "unipelt-ap")
    randomize(model, std=0.5, only_pelt=True)
    b = batch()
    ref = plain(**b).logits
    assert (model(**b).logits - ref).abs().max() > 1e-4
    with unipelt.disable(model):  # prefix (and adapter) removed
        assert torch.equal(model(**b).logits, ref)
    # a prefix no query sees (a mixed-task batch's other rows): the layer is DeBERTa's own
    x, mask4d, rel_pos, rel = layer_inputs(plain, b)
    att = model.deberta.encoder.layer[0].attention.self.base_layer
    prefix = model.deberta.encoder.layer[0].attention.self.pelt_prefix(x)
    hidden = prefix._replace(visible=torch.zeros(x.shape[0], prefix.keys.shape[2], dtype=torch.bool))
    args, kwargs = (x, mask4d, False), {"relative_pos": rel_pos, "rel_embeddings": rel}
    out = unipelt.attention.attend(att, args, kwargs, hidden)[0]
    real = b["attention_mask"].bool()  # a padded query sees no key: uniform over l + T instead of T
    assert (out - att(*args, **kwargs)[0])[real].abs().max() < 1e-6


@pytest.mark.parametrize("t", [15, 16, 17])
def test_gated_lora_on_a_shared_key_projection_at_every_length(t):
    """With share_att_key, DeBERTa runs its relative-position embeddings (one row of 2·buckets)
    through the LoRA-wrapped q and k projections: their gate never reads the token mask, also
    when the batch's length happens to be 2·buckets. Each row is what it is alone."""
    model = unipelt.apply(build("deberta-v2", share_att_key=True), "unipelt-apl")  # buckets 8: 16 rows
    randomize(model, std=0.2)
    b = batch(t=t)
    with torch.no_grad():
        out = model(**b).logits
        for i, n in enumerate(b["attention_mask"].sum(1).tolist()):
            alone = model(input_ids=b["input_ids"][i : i + 1, :n], attention_mask=b["attention_mask"][i : i + 1, :n])
            torch.testing.assert_close(out[i : i + 1], alone.logits, rtol=1e-4, atol=1e-5)
