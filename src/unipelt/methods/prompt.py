"""Prompt tuning (Lester et al. 2021): ``l`` trainable vectors inserted into the input only.

The prompt goes in front of the input (Lester et al.), or after the first ``prompt_at`` tokens
where the architecture file says so (BERT's family keeps [CLS] first for its pooler); the mask
function in attention.py inserts the matching ones into the padding mask. In encoder-decoders it
joins the encoder input, as in Lester et al.'s T5 setting; attention.py widens the decoder's
cross-attention mask to match.

Decoder-only models get ``CausalPrompt`` instead: inserting tokens would shift what the LM labels
and a last-token classifier's index refer to. Under a causal mask the prompt tokens see only each
other, so what every layer computes for them does not depend on the input: running the frozen
model on the prompt alone, at positions -l..-1, gives each layer's prompt keys and values, and
prepending those as a prefix (attention.py) is exactly prompt tuning with the prompt in front.
Positions only enter through rotary embeddings, which depend on distances, so the input keeps
positions 0.. and the cache, masks and labels never see the prompt. With learned absolute
positions (GPT-2) the prompt's pass takes positions 0..l-1 and the input keeps its own 0..
(ours): every row has the plain model's positions, where Lester et al.'s prompt in front would
shift them by l. On a sliding-window layer (Mistral, Gemma-2) the pass keeps every prompt
position, and, as a prefix's, the prompt stays visible to every token (ours): a prompt in front
would leave the window of tokens more than the window's width after it.

An encoder-decoder's prompt sits at a fixed column, so its inputs must be padded on the right (a
left-padded row would put its padding between the prompt and its tokens; T5's relative positions
would see it): a left-padded batch is refused.

An encoder whose rotary positions are computed apart from its embeddings (ModernBERT) gets
``PeltPositions`` around that module: the prompt's tokens take ordinary positions after the
first ``prompt_at`` tokens, and the input's following ones move up by l, as for real tokens.

In a mixed-task batch (multitask.py) each row is laid out as ``[first tokens, its task's prompt,
the rest, padding]``, so no row's tokens move but by its own prompt; decoder-only prompts are
served as prefixes, their keys and values computed before each batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..attention import (
    cached_kv,
    checkpointing_layers,
    output_cache,
    reentrant_checkpointing,
    run_keeping_every_position,
)
from ..blocks import PerCall, per_call
from ..config import MethodConfig, check_positive
from ..errors import UniPeltError
from ..wrappers import RowsCall, Wrapper, insert, replace_module
from . import LayerContext, Method, Mixed, ModelContext, register
from .prefix import PrefixConfig, attach


@dataclass(frozen=True, kw_only=True)
class PromptConfig(MethodConfig):
    """``length`` trainable embeddings inserted into the input only (Lester et al. 2021)."""

    method: ClassVar[str] = "prompt"
    unique: ClassVar[bool] = True
    length: int = 10

    def __post_init__(self) -> None:
        check_positive("PromptConfig", "length", self.length)


class PeltEmbeddings(Wrapper):
    def __init__(self, base_layer: nn.Module, cfg: PromptConfig, d: int, at: int = 0):
        super().__init__(base_layer)
        ref = next(base_layer.parameters())
        self.at = at
        # unit variance: the prompt joins the embeddings after their LayerNorm
        self.pelt_prompt = nn.Parameter(torch.randn(cfg.length, d).to(device=ref.device, dtype=ref.dtype))

    def forward(self, *args, **kwargs) -> torch.Tensor:
        e = self.base_layer(*args, **kwargs)  # (B, T, d)
        if not self.pelt_active:
            return e
        p = self.pelt_prompt.to(e.dtype).expand(e.shape[0], -1, -1)  # (B, l, d)
        return torch.cat([e[:, : self.at], p, e[:, self.at :]], dim=1)

    def rows_after(self, call: RowsCall, rows: torch.Tensor) -> None:
        call.gather(_lay_out, rows, self)


def _lay_out(call: RowsCall, parts: list[tuple[torch.Tensor, PeltEmbeddings]]) -> None:
    """Row b: [e[:at], its task's prompt, e[at:], zeros], as ``MultiTask`` lays out the mask."""
    e, at = call.out, parts[0][1].at  # (B, T, d)
    lengths = torch.zeros(e.shape[0], dtype=torch.long, device=e.device)
    for rows, m in parts:
        lengths[rows] = m.pelt_prompt.shape[0]
    out = insert(e, at, lengths)  # (B, T + widest prompt, d)
    for rows, m in parts:
        out[rows, at : at + m.pelt_prompt.shape[0]] = m.pelt_prompt.to(e.dtype)
    call.out = out


class PeltPositions(Wrapper):
    """A rotary embedding module, ``(x, position_ids, ...) -> (cos, sin)``, whose position ids are
    lengthened to the prompted sequence x: the n missing positions are inserted after the first
    ``at``, the rest move up by n. Called with as many positions as tokens, it is the base module."""

    def __init__(self, base_layer: nn.Module, at: int):
        super().__init__(base_layer)
        self.at = at

    def lengthen(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        p, at, n = position_ids, self.at, x.shape[1] - position_ids.shape[-1]  # p: (B or 1, T)
        if n <= 0:
            return p
        first = p[..., at - 1 : at] + 1 if at else p[..., :1]  # the prompt's first position
        inserted = first + torch.arange(n, device=p.device)  # (B or 1, n)
        return torch.cat([p[..., :at], inserted, p[..., at:] + n], dim=-1)  # (B or 1, T + n)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, *args, **kwargs):
        if self.pelt_active:
            position_ids = self.lengthen(x, position_ids)
        return self.base_layer(x, position_ids, *args, **kwargs)

    def rows_before(self, call: RowsCall, rows: torch.Tensor) -> None:
        # every row's layout has positions for the widest prompt (a second task's call finds them there)
        call.args = (call.x, self.lengthen(call.x, call.args[1]), *call.args[2:])

    def rows_after(self, call: RowsCall, rows: torch.Tensor) -> None:
        pass  # positions for all rows: the layers' prompt tokens are the embeddings' business


class _PromptPass(PerCall):
    """Whether this thread is running the prompt's own pass (``CausalPrompt.refresh``), and the
    keys and values its last pass gave: a no-grad call on another thread must not replace the
    table a training forward's layers read."""

    running = per_call("running")
    table = per_call("table")


class CausalPrompt(nn.Module):
    """The prompt of a decoder-only model, served to each layer as prefix keys and values.

    A forward pre-hook on the base model runs the prompt through it once per forward (batch 1,
    l tokens), before the real tokens reach the layers, whatever the inputs (ids or embeddings);
    ``kv`` has the same shape contract as ``PrefixEncoder.kv`` so ``LayerPrefix`` serves both.
    A hook, not a wrapper: wrapping the base model would move every module path under it.
    ``remove`` takes it off (``unipelt.unload``).
    """

    attention = ("self",)
    gated = False
    pelt_active = True

    def __init__(self, cfg: PromptConfig, base: nn.Module, absolute_positions: bool = False):
        super().__init__()
        self.__dict__["base"] = base  # the model owns the base; registering it here would repeat it
        vocab = base.get_input_embeddings().weight
        # Lester et al.'s vocabulary init: the prompt starts at the scale the layers expect
        picks = torch.randint(vocab.shape[0], (cfg.length,), device=vocab.device)
        self.embeddings = nn.Parameter(vocab.detach()[picks].clone())
        self.length = cfg.length
        self.first_position = 0 if absolute_positions else -cfg.length  # rotary: right before the input
        # the last table of any thread: for a thread that ran no pass of its own (the autograd
        # worker rerunning a checkpointed layer on a GPU)
        self._last: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._pass = _PromptPass()  # per thread: another thread's prompt pass must not hide the prompt
        self._hook = base.register_forward_pre_hook(self._refresh)

    def remove(self) -> None:
        self._hook.remove()

    def _refresh(self, _module, _args) -> None:
        if self._pass.running or not self.pelt_active:  # the prompt's own pass; or switched off
            return
        self.refresh()

    def refresh(self) -> None:
        """Run the prompt through the base model and keep every layer's keys and values."""
        # The prompt pass is l tokens: it runs without activation checkpointing, which would
        # drop the cache this reads its keys and values from.
        checkpointed = checkpointing_layers(self.base)
        if self.training and any(reentrant_checkpointing(m) for m in checkpointed):
            # every layer's recomputation would backpropagate through the shared prompt pass again
            raise UniPeltError(
                "prompt tuning on a decoder-only model needs non-reentrant activation "
                "checkpointing: pass use_reentrant=False in the checkpointing kwargs "
                "(transformers' default)"
            )
        self._pass.running = True
        try:
            for m in checkpointed:
                m.gradient_checkpointing = False  # transformers' per-layer switch
            start = self.first_position
            positions = torch.arange(start, start + self.length, device=self.embeddings.device)[None]
            # every prompt position in every layer, a sliding-window one's too: the input sees them all
            out = run_keeping_every_position(self.base, inputs_embeds=self.embeddings[None], position_ids=positions)
        finally:
            self._pass.running = False
            for m in checkpointed:
                m.gradient_checkpointing = True
        self._pass.table = self._last = [(k[0], v[0]) for k, v in cached_kv(output_cache(out))]

    def kv(self, slot: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Layer ``slot``'s prompt keys and values, each (l, d_kv); None during the prompt's own pass."""
        if self._pass.running:
            return None
        table = self._pass.table or self._last
        if table is None:
            raise UniPeltError(
                "the prompt's keys and values are computed when the base model runs; call the model, not a single layer"
            )
        k, v = table[slot]  # (H_kv, l, dh), rotated at positions -l..-1 (or at 0..l-1)
        return k.transpose(0, 1).flatten(1), v.transpose(0, 1).flatten(1)


def setup(ctx: ModelContext, configs: list) -> None:
    cfg, spec = configs[0], ctx.spec
    spec.check_prompt(ctx.model.config)
    ctx.attention_hook = True
    if spec.embeddings is not None:
        replace_module(ctx.base, spec.embeddings, lambda e: PeltEmbeddings(e, cfg, ctx.d, spec.prompt_at))
        if spec.rotary is not None:
            replace_module(ctx.base, spec.rotary, lambda r: PeltPositions(r, spec.prompt_at))
        ctx.prompt_at, ctx.prompt_length = spec.prompt_at, cfg.length
        return
    # decoder-only: the prompt is served as a prefix
    if ctx.cfg.of(PrefixConfig):
        raise UniPeltError(
            "prompt and prefix tuning together are not offered on decoder-only models: there "
            "the prompt is itself served as a prefix (methods/prompt.py); use one of them"
        )
    ctx.model.pelt_prompt = ctx.prefix = CausalPrompt(cfg, ctx.base, spec.absolute_positions)


def place(layer: nn.Module, ctx: LayerContext, configs: list) -> None:
    if isinstance(ctx.model.prefix, CausalPrompt):
        attach(layer, ctx, ctx.model.prefix, gated=False)


def _refresh(model: nn.Module) -> None:
    """A decoder's prompt keys and values for a mixed batch: the task's own base model, whose
    pre-hook would compute them, never runs there."""
    prompt = getattr(model, "pelt_prompt", None)
    if isinstance(prompt, CausalPrompt):
        prompt.refresh()


register(
    Method(
        config=PromptConfig,
        kind="prompt",
        modules=(PeltEmbeddings, CausalPrompt, PeltPositions),
        setup=setup,
        place=place,
        mixed=Mixed(
            inserts=lambda configs, spec: configs[0].length if spec.embeddings is not None else 0,
            prepare=_refresh,
        ),
    )
)
