"""(IA)³ (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
In-Context Learning", §3.3): learned vectors rescale the keys, the values and the FFN's inner
activation,

    k = l_k ⊙ (W_k x),   v = l_v ⊙ (W_v x),   FFN(x) = W_out (l_ff ⊙ f(W_in x)),

each vector initialised to ones, so training starts at the frozen model. Each is a diagonal
matrix next to a frozen one, so ``merge`` folds it into W exactly: diag(l_k) W_k, W_out diag(l_ff).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ..config import ALL_ATTENTION, AttentionKind, MethodConfig, check_attention, check_choices
from ..errors import UniPeltError
from ..wrappers import Wrapper, has, replace_module
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
    """A linear map whose output (``on="output"``) or input (``on="input"``) is rescaled by l."""

    def __init__(self, base_layer: nn.Linear, on: Literal["input", "output"]):
        super().__init__(base_layer)
        self.on = on
        width = base_layer.in_features if on == "input" else base_layer.out_features
        ref = base_layer.weight
        self.pelt_ia3 = nn.Parameter(torch.ones(width, device=ref.device, dtype=ref.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.pelt_active:
            return self.base_layer(x)
        if self.on == "input":
            return self.base_layer(x * self.pelt_ia3)
        return self.base_layer(x) * self.pelt_ia3

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        base, l = self.base_layer, self.pelt_ia3.to(self.base_layer.weight.dtype)
        if self.on == "input":
            base.weight.mul_(l[None, :])  # W diag(l); the bias is added after, unscaled
        else:
            base.weight.mul_(l[:, None])  # diag(l) W, and l ⊙ b
            if base.bias is not None:
                base.bias.mul_(l)
        return base

    @torch.no_grad()
    def switch_off(self) -> None:
        self.pelt_ia3.fill_(1.0)


def _wrap(layer: nn.Module, path: str, on: str) -> None:
    if isinstance(layer.get_submodule(path), Wrapper):  # its merge would miss the other method's delta
        raise UniPeltError(f"(IA)³ and another method on the same projection {path!r} are not supported")
    replace_module(layer, path, lambda lin: IA3Linear(lin, on=on))


def place(layer: nn.Module, ctx: LayerContext, configs: list) -> None:
    cfg = configs[0]
    paths = ctx.stack.lora_paths()
    for target in cfg.targets:
        if target == "ffn":
            found = [p for p in paths[("ffn_out", "ffn")] if has(layer, p)]
            if not found:
                raise UniPeltError(f"(IA)³ ffn: none of {paths[('ffn_out', 'ffn')]} is in the layer")
            for path in found:
                _wrap(layer, path, "input")
            continue
        for where in cfg.attention:
            for path in paths.get((target, where), ()):
                _wrap(layer, path, "output")


register(Method(config=IA3Config, kind="ia3", modules=(IA3Linear,), place=place))
