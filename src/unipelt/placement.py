"""The generic placement loop: every layer of every stack the model has, every configured
method's ``place`` hook on it, in registry order. Nothing here knows a method or an
architecture: methods say where they go (methods/), architectures where things are (arch/).
"""

from __future__ import annotations

from collections import Counter

from torch import nn

from .blocks import MaskSlot
from .methods import LayerContext, ModelContext, configured
from .wrappers import PeltLayer


def inject_layers(ctx: ModelContext) -> Counter:
    """Place every method in every layer; returns the modules each method (by kind) added there."""
    stacks = ctx.spec.present_stacks(ctx.base)
    placing = [(m, configs) for m, configs in configured(ctx.cfg) if m.place is not None]
    placed: Counter = Counter()  # modules each method added, over every layer
    for stack in stacks:
        label = f"{stack.name}." if len(stacks) > 1 else ""
        layers = ctx.base.get_submodule(stack.layers)
        for i in range(len(layers)):
            lctx = LayerContext(index=i, stack=stack, label=label, model=ctx, slot=MaskSlot(causal=stack.causal))
            layers[i] = _inject_layer(layers[i], lctx, placing, placed)
    return placed


def _inject_layer(layer: nn.Module, ctx: LayerContext, placing: list, placed: Counter) -> nn.Module:
    for method, configs in placing:
        before = sum(1 for _ in layer.modules())
        method.place(layer, ctx, configs)
        placed[method.kind] += sum(1 for _ in layer.modules()) - before
    return PeltLayer(layer, ctx.slot, ctx.stack.mask_position) if ctx.cfg.gated else layer
