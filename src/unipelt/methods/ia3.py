"""(IA)³ (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
In-Context Learning", §3.3): learned vectors rescale the keys, the values and the FFN's inner
activation,

    k = l_k ⊙ (W_k x),   v = l_v ⊙ (W_v x),   FFN(x) = W_out (l_ff ⊙ f(W_in x)),

each vector initialised to ones, so training starts at the frozen model. Each is a diagonal
matrix next to a frozen one, so ``merge`` folds it into W exactly: diag(l_k) W_k, W_out diag(l_ff).
On a fused projection ([q; k; v] in one map, GPT-2's ``c_attn``) the vector covers the k and v
rows only: the factor is ``[1; l_k; l_v]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ..arch import locate
from ..attention import features, weight_out_in
from ..config import ALL_ATTENTION, AttentionKind, MethodConfig, check_attention, check_choices
from ..errors import UniPeltError
from ..wrappers import RowsCall, Wrapper, has, replace_module
from . import LayerContext, Method, register

IA3Target = Literal["k", "v", "ffn"]


@dataclass(frozen=True, kw_only=True)
class IA3Config(MethodConfig):
    """targets: "k" and "v" rescale the attention's key and value projections; "ffn" the input of
    the FFN's output projection (its inner activation). attention: as for LoRA."""

    method: ClassVar[str] = "ia3"
    unique: ClassVar[bool] = True
    targets: tuple[IA3Target, ...] = ("k", "v", "ffn")
    attention: tuple[AttentionKind, ...] = ALL_ATTENTION

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", check_choices("IA3Config", "targets", self.targets, IA3Target))
        check_attention("IA3Config", self, applies=any(t != "ffn" for t in self.targets))


class IA3Linear(Wrapper):
    """A linear map whose output (``on="output"``) or input (``on="input"``) is rescaled by l;
    ``rows``: the output ranges [start, stop) of a fused map that l covers (None: all of them)."""

    def __init__(self, base_layer: nn.Module, on: Literal["input", "output"], rows=None):
        super().__init__(base_layer)
        self.on = on
        d_in, d_out = features(base_layer)
        self.rows = tuple(tuple(r) for r in rows) if rows is not None else None
        ref = base_layer.weight
        index = torch.cat([torch.arange(a, b, device=ref.device) for a, b in self.rows]) if self.rows else None
        self.register_buffer("index", index, persistent=False)  # the rows l scales
        width = d_in if on == "input" else d_out if index is None else len(index)
        self.pelt_ia3 = nn.Parameter(torch.ones(width, device=ref.device, dtype=ref.dtype))

    def factor(self) -> torch.Tensor:
        """The full-width vector the input or output is multiplied by: ones outside ``rows``."""
        if self.index is None:
            return self.pelt_ia3
        ones = self.pelt_ia3.new_ones(features(self.base_layer)[1])
        return ones.index_put((self.index,), self.pelt_ia3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.pelt_active:
            return self.base_layer(x)
        if self.on == "input":
            return self.base_layer(x * self.pelt_ia3)
        h = self.base_layer(x)
        # the base layer's dtype: under autocast a float32 l would turn bf16 keys into float32 ones, which
        # transformers 5.17-5.24's sdpa cannot mix with T5's bf16 position bias (an overflow on CUDA)
        return h * self.factor().to(h.dtype)

    def rows_before(self, call: RowsCall, rows: torch.Tensor) -> None:
        if self.on == "input":  # out of place: the shared input is other modules' too
            call.x = call.x.index_put((rows,), call.x[rows] * self.pelt_ia3)

    def rows_after(self, call: RowsCall, rows: torch.Tensor) -> None:
        if self.on == "output":
            call.h[rows] *= self.factor()

    @torch.no_grad()
    def merge(self) -> nn.Module:
        base = self.base_layer
        w, l = weight_out_in(base), self.factor().to(base.weight.dtype)  # w: (d_out, d_in) view
        if self.on == "input":
            w.mul_(l[None, :])  # W diag(l); the bias is added after, unscaled
        else:
            w.mul_(l[:, None])  # diag(l) W, and l ⊙ b
            if base.bias is not None:
                base.bias.mul_(l)
        return base

    @torch.no_grad()
    def switch_off(self) -> None:
        self.pelt_ia3.fill_(1.0)


def _overlaps(module: nn.Module, rows) -> bool:
    """Whether a wrapper already around the linear map changes any of ``rows`` (None: all rows);
    LoRA on q and (IA)³ on k and v of one fused map touch different rows."""
    while isinstance(module, Wrapper):
        owned = getattr(module, "rows", None)  # LoRALinear's (start, stop), or None for all rows
        if owned is None or rows is None or any(a < owned[1] and owned[0] < b for a, b in rows):
            return True
        module = module.base_layer
    return False


def _wrap(layer: nn.Module, path: str, on: str, rows=None) -> None:
    if _overlaps(layer.get_submodule(path), rows):  # its merge would miss the other method's delta
        raise UniPeltError(f"(IA)³ and another method on the same projection {path!r} are not supported")
    replace_module(layer, path, lambda lin: IA3Linear(lin, on=on, rows=rows))


def place(layer: nn.Module, ctx: LayerContext, configs: list) -> None:
    cfg = configs[0]
    paths = ctx.stack.lora_paths()
    scaled: dict[str, list] = {}  # linear map -> the output rows l covers there (None: all)
    for target in cfg.targets:
        if target == "ffn":
            found = [p for p in paths[("ffn_out", "ffn")] if has(layer, p)]
            if not found:
                raise UniPeltError(f"(IA)³ ffn: none of {paths[('ffn_out', 'ffn')]} is in the layer")
            for path in found:
                _wrap(layer, path, "input")
            continue
        for where in cfg.attention:
            for projection in paths.get((target, where), ()):
                path, rows = locate(layer, projection, ctx.model.model.config)
                scaled.setdefault(path, []).append(rows)
    for path, rows in scaled.items():  # k and v of one fused map share one vector
        _wrap(layer, path, "output", None if None in rows else rows)


register(Method(config=IA3Config, kind="ia3", modules=(IA3Linear,), place=place))
