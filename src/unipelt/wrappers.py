"""Where the Δh modules plug into a transformer layer. Each wrapper keeps the original module as
``.base_layer`` (wrap, don't patch) and forwards unknown attributes to it, so code that reads,
say, ``attention.self.num_attention_heads`` keeps working. ``pelt_active = False`` makes a
wrapper call its base layer alone (``unipelt.disable``).

The placements follow He et al.'s design space (arch/__init__.py names the modules):
- pre-norm sublayer (Llama, T5): ``PeltSublayer`` around the module that returns h:
  parallel ``h + Δ(x)``, sequential ``h + Δ(h)`` (Houlsby's and Pfeiffer's placements agree:
  there is no LayerNorm after the residual sum).
- post-norm sublayer (BERT, BART): ``PeltPostNorm`` around the LayerNorm of ``s = x + h``:
  parallel ``LN(x + h + Δ(x))`` (He et al. Eq. 6), Houlsby ``LN(x + h + A(h))`` (He et al.
  Eq. 4), Pfeiffer ``LN(s + A(LN(s)))`` (UniPELT's adapter).
- multi-head: ``PeltHeadOutput`` around the output projection, ``o(heads + Δ(x W_q))``.
- an adapter whose input enters a different module than the one hosting it reads it from a
  ``Tap`` that the input module's wrapper fills on every call.

Mixed-task batches (multitask.py) run one shared base module for all rows; each task's wrapper
there says how it changes its own rows (``Wrapper.rows_before``/``rows_after``, on a ``RowsCall``),
so that a new method's wrapper brings its mixed-batch behaviour with it.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Callable

import torch
from torch import nn

from .attention import Prefix, attend, mark_position_passes, new_pass, token_mask
from .blocks import Gate, MaskSlot, PerCall, per_call
from .errors import UniPeltError


def is_replica(module: nn.Module) -> bool:
    """Whether ``module`` is a ``torch.nn.DataParallel`` replica (``_replicate_for_data_parallel``
    marks them): a reference it holds to a module not registered under it is the original's."""
    return getattr(module, "_is_replica", False)


def refuse_replica(module: nn.Module) -> None:
    """Refuse a replica (``is_replica``) of a module that reads a module its replica cannot reach:
    the original's weights sit on another device."""
    if is_replica(module):
        raise UniPeltError(
            "torch.nn.DataParallel (HF Trainer's choice for several GPUs in one process) gives a "
            f"{type(module).__name__} copy no copy of the module it reads (DataParallel must wrap the whole "
            "model unipelt.apply() returned; a decoder-only prompt is never followed): train with "
            "DistributedDataParallel (torchrun, accelerate launch) or on one GPU (CUDA_VISIBLE_DEVICES=0)"
        )


class BeforeModel:
    """The forward pre-hook ``apply`` puts on the model. It starts a new pass for what is kept on
    the pass's mask tensors (``attention.kept_on``), and in a DataParallel replica of the model it
    points every module's references (``refers_to``: attributes naming a module it reads but does
    not own, a layer's prefix encoder, a head adapter's query projection) at the replica's own
    copies. ``replicate`` copies each module's ``__dict__`` shallowly: the references stay the
    original's, and so do the hook dictionaries, which is what identifies a copy's original."""

    def __call__(self, root: nn.Module, _args) -> None:
        new_pass()
        if not is_replica(root):
            return
        copies = {id(m._forward_pre_hooks): m for m in root.modules()}
        for module in root.modules():
            for name in getattr(module, "refers_to", ()):
                original = module.__dict__[name]
                module.__dict__[name] = copies.get(id(original._forward_pre_hooks), original)


def hook_model(model: nn.Module) -> None:
    model.register_forward_pre_hook(BeforeModel())


def unhook_model(model: nn.Module) -> None:
    """Remove ``hook_model``'s hook; found by its type, as ``heads.detach`` finds its own."""
    hooks = model._forward_pre_hooks
    for key in [k for k, hook in hooks.items() if isinstance(hook, BeforeModel)]:
        del hooks[key]


def referred(module: nn.Module, name: str) -> nn.Module:
    """The module ``module`` reads as ``name`` (one of its ``refers_to``): in a replica, the
    replica's copy (``BeforeModel``), or refused where there is none."""
    target = module.__dict__[name]
    if is_replica(module) and not is_replica(target):
        refuse_replica(module)
    return target


class RowsCall:
    """One call of a shared module in a mixed-task batch, as each task's modules there see it.

    ``args``/``kwargs``: the call's inputs, which ``rows_before`` hooks may replace (the input
    ``x`` on their rows, positions); ``out``: the shared module's output, fresh from it, which
    ``rows_after`` hooks change on their rows in place (``h``). What must be one tensor for the
    whole batch (a padded prefix block, a prompt layout) a hook hands to ``gather``; the site
    ``combine``s each kind once, after every task's hooks of the phase have run.
    """

    def __init__(self, args: tuple, kwargs: dict):
        self.args, self.kwargs, self.out = args, kwargs, None
        self.prefix: Prefix | None = None  # every task's prefix in one padded block, for attend()
        self.parts: dict[Callable, list] = {}

    @property
    def x(self) -> torch.Tensor | None:
        return self.args[0] if self.args else self.kwargs.get("hidden_states")

    @x.setter
    def x(self, value: torch.Tensor) -> None:
        if self.args:
            self.args = (value, *self.args[1:])
        else:
            self.kwargs = {**self.kwargs, "hidden_states": value}

    @property
    def h(self) -> torch.Tensor:
        return self.out[0] if isinstance(self.out, tuple) else self.out

    def gather(self, combine: Callable[[RowsCall, list], None], rows: torch.Tensor, part) -> None:
        self.parts.setdefault(combine, []).append((rows, part))

    def combine(self) -> None:
        parts, self.parts = self.parts, {}
        for combine, got in parts.items():
            combine(self, got)


@contextlib.contextmanager
def on_rows(module: nn.Module, rows: torch.Tensor, taps: tuple = ()):
    """For a while, ``module``'s gates pool over the task's rows of the mask (``MaskSlot.rows``)
    and each tap holds only those rows' value."""
    called = (module, *getattr(module, "called", ()))  # and what it calls but does not own
    # with the gates a shared read computes beside a module's own (another method's: the prefix's)
    subs = [sub for m in called for sub in m.modules()]
    gates = [*subs, *(g for sub in subs for g in getattr(getattr(sub, "shared", None), "gates", ()))]
    slots = {g.slot for g in gates if isinstance(g, Gate)}
    taps = [t for t in taps if t is not None]
    saved = [t.value for t in taps]
    for s in slots:
        s.rows = rows
    for t in taps:
        t.value = t.value[rows]
    try:
        yield
    finally:
        for s in slots:
            s.rows = None
        for t, v in zip(taps, saved):
            t.value = v


def insert(x: torch.Tensor, at: int, lengths: torch.Tensor, fill: float = 0) -> torch.Tensor:
    """``x`` (B, T, ...) with ``lengths[b]`` tokens of ``fill`` inserted after the first ``at`` of row
    b, and zeros after the row: (B, T + max(lengths), ...); no token moves but by its row's insertion."""
    b, t = x.shape[:2]
    out = x.new_zeros(b, t + int(lengths.max()), *x.shape[2:])
    out[:, :at] = x[:, :at]
    for n in lengths.unique().tolist():
        rows = (lengths == n).nonzero().flatten()
        out[rows, at : at + n] = fill
        out[rows, at + n : t + n] = x[rows, at:]
    return out


def plain_path(name: str) -> str:
    """A module's path in the model without wrappers."""
    return name.replace(".base_layer", "")


class Wrapper(nn.Module):
    pelt_active = True  # False: the base layer alone (unipelt.disable)

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("base_layer"), name)

    def rows_before(self, call: RowsCall, rows: torch.Tensor) -> None:
        """In a mixed batch, before the shared module runs: change the input on the task's ``rows``."""

    def rows_after(self, call: RowsCall, rows: torch.Tensor) -> None:
        """In a mixed batch, after the shared module ran: this wrapper's output on the task's ``rows``,
        from what the modules inside it gave there. This default runs the task's wrapper again on
        its rows, exact for any wrapper of one input; methods that can instead add to the shared
        output (LoRA, (IA)³) override it."""
        with on_rows(self, rows, (getattr(self, "tap", None),)):
            call.h[rows] = self(call.x[rows])


def has(root: nn.Module, path: str) -> bool:
    try:
        root.get_submodule(path)
    except AttributeError:
        return False
    return True


def owning_module(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    """The module that holds ``path``'s last component as a child, and that component's name."""
    parent_path, _, leaf = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    while isinstance(parent, Wrapper) and leaf not in parent._modules:
        parent = parent.base_layer  # the wrapped module owns it; setting it on the wrapper would shadow it
    return parent, leaf


def replace_module(root: nn.Module, path: str, make: Callable[[nn.Module], nn.Module]) -> nn.Module:
    parent, leaf = owning_module(root, path)
    new = make(getattr(parent, leaf))
    setattr(parent, leaf, new)
    return new


def wrap_at(root: nn.Module, path: str, cls: type) -> nn.Module:
    """The ``cls`` wrapper at ``path``, created on first use so that methods share it."""
    module = root.get_submodule(path)
    return module if isinstance(module, cls) else replace_module(root, path, cls)


class Tap(PerCall):
    """The last input a sublayer received, for an adapter placed downstream of it.

    Per call (``PerCall``): each thread reads the input of its own forward. Filled and read
    within one layer's forward, so a layer that gradient checkpointing reruns during backward,
    on whatever thread, refills it before reading it; like ``MaskSlot`` it is left filled.
    """

    value = per_call("value")


class PeltLayer(Wrapper):
    """A transformer layer whose gates need to know which tokens are padding.

    HF hands the padding mask to the layer but not to its linear maps; this wrapper writes it to
    the layer's ``MaskSlot``, for the calling thread only. It is left there after the call because
    gradient checkpointing runs the layer again during backward, outside this wrapper (the slot
    says which mask such a rerun reads). ``mask_position``: where the mask is among the layer's
    positional arguments (the architecture file says).

    Under gradient checkpointing the gradient of the layer's output puts its call's mask back in
    the slot before the layer's backward reruns it: after two forwards and one backward (losses
    summed), the slot would otherwise hold the second call's mask when the first is rerun.
    """

    def __init__(self, base_layer: nn.Module, slot: MaskSlot, mask_position: int = 1):
        super().__init__(base_layer)
        self.slot, self.mask_position = slot, mask_position
        mark_position_passes(base_layer)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        mask = self._keep_mask((hidden_states, *args), kwargs)
        out = self.base_layer(hidden_states, *args, **kwargs)
        h = out[0] if isinstance(out, tuple) else out
        if getattr(self.base_layer, "gradient_checkpointing", False) and h.requires_grad:
            h.register_hook(partial(_put_mask, self.slot, mask))
        return out

    def _keep_mask(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """args: the layer's positional arguments, hidden states first (or in kwargs)."""
        mask = args[self.mask_position] if len(args) > self.mask_position else kwargs.get("attention_mask")
        self.slot.mask = token_mask(mask, _first_input(args, kwargs).shape[1])
        return self.slot.mask

    def rows_before(self, call: RowsCall, rows: torch.Tensor) -> None:
        self._keep_mask(call.args, call.kwargs)

    def rows_after(self, call: RowsCall, rows: torch.Tensor) -> None:
        pass  # the layer's output is its modules' business


def _put_mask(slot: MaskSlot, mask: torch.Tensor | None, grad: torch.Tensor) -> None:
    slot.mask = mask  # on the thread that runs this backward, where the rerun reads it


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]  # Llama passes it by keyword


class PeltSublayer(Wrapper):
    """A sublayer's input module (attention or FFN) with adapters on its output h, prefix keys and
    values for attention, and a ``tap`` on its input for modules downstream. Attention modules
    return tuples: h is the first.

    The prefix travels to the registered attention function as a keyword argument, or to
    attention.py's own forward for an attention that never calls one (DeBERTa's): ``attend``.
    """

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.tap: Tap | None = None
        self.source: Tap | None = None  # where parallel adapters read x, when it enters another module
        self.pelt_prefix: nn.Module | None = None
        self.pelt_adapter_parallel = nn.ModuleList()
        self.pelt_adapter_sequential = nn.ModuleList()

    def forward(self, *args, **kwargs):
        if not self.pelt_active:
            return self.base_layer(*args, **kwargs)
        x = _first_input(args, kwargs)
        if self.tap is not None:
            self.tap.value = x
        prefix = self.pelt_prefix(x) if self.pelt_prefix is not None else None
        out = attend(self.base_layer, args, kwargs, prefix)
        if not self.pelt_adapter_parallel and not self.pelt_adapter_sequential:
            return out
        h = self._adapted(x, out[0] if isinstance(out, tuple) else out)
        return (h, *out[1:]) if isinstance(out, tuple) else h

    def _adapted(self, x: torch.Tensor, h: torch.Tensor, rows=slice(None)) -> torch.Tensor:
        x = self.source.value[rows] if self.source is not None else x
        for adapter in self.pelt_adapter_parallel:
            h = adapter.added(h, x, h)
        for adapter in self.pelt_adapter_sequential:
            h = adapter.added(h, h, h)
        return h

    def rows_before(self, call: RowsCall, rows: torch.Tensor) -> None:
        if self.tap is not None:
            self.tap.value = call.x
        if self.pelt_prefix is not None:
            with on_rows(self.pelt_prefix, rows):
                prefix = self.pelt_prefix(call.x[rows])
            if prefix is not None:  # None: a decoder's prompt during its own pass
                call.gather(_prefixes, rows, prefix)

    def rows_after(self, call: RowsCall, rows: torch.Tensor) -> None:
        if self.pelt_adapter_parallel or self.pelt_adapter_sequential:
            with on_rows(self, rows):
                call.h[rows] = self._adapted(call.x[rows], call.h[rows], rows)


def _prefixes(call: RowsCall, parts: list[tuple[torch.Tensor, Prefix]]) -> None:
    """Every task's prefix in one block padded to the longest; each row sees only its own."""
    x, (_, first) = call.x, parts[0]
    b = x.shape[0]
    width = max(p.keys.shape[2] for _, p in parts)
    shape = (b, first.keys.shape[1], width, first.keys.shape[3])  # (B, H_kv, widest l, dh)
    keys, values = first.keys.new_zeros(shape), first.values.new_zeros(shape)
    visible = torch.zeros(b, width, dtype=torch.bool, device=x.device)
    gated = any(p.query_gate is not None for _, p in parts)
    gate = first.keys.new_ones(b, 1, x.shape[1], 1) if gated else None
    for r, p in parts:
        n = p.keys.shape[2]
        keys[r, :, :n], values[r, :, :n], visible[r, :n] = p.keys, p.values, True
        if p.query_gate is not None:
            gate[r] = p.query_gate
    call.prefix = Prefix(keys, values, query_gate=gate, visible=visible)


class PeltPostNorm(Wrapper):
    """The LayerNorm of a post-norm sublayer, ``LN(s)`` with ``s = x + h``, with adapters around it.

    parallel: s + Δ(x)                     (He et al. 2022 Eq. 6: input x, added after the dropout)
    houlsby:  s + A(h), h = s - x          (Houlsby 2019; He et al. Eq. 4)
    pfeiffer: s + A(LN(s)), then LN       (UniPELT §3: h'_A = G_A·h_A + h_F)
    HF adds x + h inline, so h is recovered as s - x from the tapped x: exact up to one rounding
    of s. With every Δ = 0 this is exactly the original LayerNorm.
    """

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.tap: Tap | None = None  # x, recorded by the sublayer's input module
        self.pelt_adapter_parallel = nn.ModuleList()
        self.pelt_adapter_houlsby = nn.ModuleList()
        self.pelt_adapter_sequential = nn.ModuleList()

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        if not self.pelt_active:
            return self.base_layer(s)
        x = self.tap.value if self.tap is not None else None
        h = s - x if x is not None else None  # the sublayer output, before the residual sum
        for adapter in self.pelt_adapter_parallel:
            s = adapter.added(s, x, h)
        for adapter in self.pelt_adapter_houlsby:
            s = adapter.added(s, h, h)
        for adapter in self.pelt_adapter_sequential:
            s = adapter.added(s, self.base_layer(s))
        return self.base_layer(s)


class PeltHeadOutput(Wrapper):
    """An attention's output projection, with a multi-head parallel adapter added to its input,
    the concatenated head outputs: ``o(heads + Δ(x W_q))`` (He et al. 2022 §3.3). The adapter
    reads the frozen query projection of the attention's input x, which ``tap`` holds; the
    projection is looked up on every call so that a LoRA on q, or its merge, is seen as it is."""

    refers_to = ("owner",)

    def __init__(self, base_layer: nn.Module, tap: Tap, adapter: nn.Module, owner: nn.Module, query: str, rows=None):
        super().__init__(base_layer)
        self.tap = tap
        self.pelt_adapter_head = adapter
        self.__dict__["owner"] = owner  # the attention module holding q; registered by the layer already
        self.query = query
        self.rows = rows  # q's output rows when the query projection is fused ([q; k; v]), else None

    @property
    def called(self) -> tuple[nn.Module]:
        """The query projection it calls, with its own gates (a gated LoRA on q) to restrict to
        a mixed batch's rows (``on_rows``)."""
        return (getattr(referred(self, "owner"), self.query),)

    def forward(self, heads: torch.Tensor) -> torch.Tensor:
        if not self.pelt_active:
            return self.base_layer(heads)
        q = self.called[0](self.tap.value)  # (B, T, H·dh), or fused (B, T, ...)
        if self.rows is not None:
            q = q[..., self.rows[0] : self.rows[1]]  # (B, T, H·dh)
        return self.base_layer(heads + self.pelt_adapter_head(q, heads))


def tap_input(layer: nn.Module, path: str) -> Tap:
    """A tap on the input x of the sublayer whose input module is at ``path``."""
    module = wrap_at(layer, path, PeltSublayer)
    if module.tap is None:
        module.tap = Tap()
    return module.tap
