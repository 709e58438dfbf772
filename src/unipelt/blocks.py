"""The building blocks every method is assembled from (He et al. 2022, §3: Δh = f(x W_down) W_up).

``LowRank`` is the functional form, ``Gate`` and ``Scale`` the composition weights. An adapter is
``LowRank`` with a nonlinearity, LoRA is ``LowRank`` with the identity, a multi-head adapter is
``LowRank`` with one group per head.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "identity": nn.Identity}


def in_input_dtype(x: torch.Tensor):
    """Autocast off, for a map with few outputs that reads x (ours): a down-projection or a gate.

    Such a map costs about one read of x. Autocast would first cast x (float32 after a LayerNorm)
    and the weights to bf16, which reads x, writes it again and adds two kernels, for a GEMM that
    gains nothing from bf16. Without autocast these maps run in x's dtype, as they do in float32.
    """
    device = x.device.type
    return torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device) else contextlib.nullcontext()


_DERIVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # owner -> {name: (key, value)}
_STEPS = [0]  # optimizer steps and module conversions in this process: writes no version counter sees


def _stepped(_optimizer, _args, _kwargs) -> None:
    _STEPS[0] += 1


class Keyed(nn.Module):
    """A module whose parameters ``parameters_key`` reads. ``.to()``, ``.half()``, ``.float()``
    give each parameter new ``.data``, which keeps its version counter: storage freed by one
    conversion can come back at the same address after the next (CUDA's caching allocator), and a
    key would match weights made from the old values. Every conversion counts as a step."""

    def _apply(self, fn, recurse=True):
        _STEPS[0] += 1
        return super()._apply(fn, recurse)


# Fused optimizers (AdamW(fused=True): Trainer's default "adamw_torch_fused" since torch 2.8)
# write the parameters in place without bumping their version counters: every step must count.
register_optimizer_step_post_hook(_stepped)


def parameters_key(params) -> tuple:
    """What a tensor computed from ``params`` depends on: their contents as version counters,
    storage and dtype show them, the optimizer steps and conversions since (neither shows there), and
    whether it is made under ``torch.inference_mode()`` (an inference tensor, which a later
    forward under autograd could not save for backward)."""
    return _STEPS[0], torch.is_inference_mode_enabled(), tuple((p._version, p.data_ptr(), p.dtype) for p in params)


def holding(params) -> tuple:
    """The storages of ``params``, kept beside what was made from them: while they live, a new
    ``.data`` cannot be put at their address, so ``parameters_key``'s addresses tell it apart.
    Assigning ``.data`` keeps a parameter's version counter, and the allocator readily gives the
    block just freed to the next tensor of its size (glibc did for 7 of 30 ``p.data = p.data + 1``)."""
    return tuple(p.untyped_storage() for p in params)


def derived(owner: object, name: str, sources: tuple[torch.Tensor, ...], make):
    """``make()``: tensors computed from parameters alone (fused weights), kept for the next call
    while no gradient is recorded for them and no source has changed (in place, ``.data``, device
    or dtype) and no optimizer has stepped. An eval loop then builds a layer's fused weights once,
    not on every forward pass; under autograd they are built per call, so that gradients reach the
    parameters. An in-place change is seen through the parameter's version counter, as autograd
    sees one: writes through ``.data`` bypass it (assign a new ``.data``, or write under
    ``torch.no_grad()``, as ``load_state_dict`` does)."""
    if (torch.is_grad_enabled() and any(p.requires_grad for p in sources)) or torch.compiler.is_compiling():
        return make()
    key = parameters_key(sources)
    store = _DERIVED.setdefault(owner, {})
    hit = store.get(name)
    if hit is None or hit[0] != key:
        hit = store[name] = (key, make(), holding(sources))
    return hit[1]


def constant(owner: object, name: str, like: torch.Tensor, make):
    """``make()``, a tensor that needs no gradient (zeros to pad with), made once per dtype and
    device of ``like`` instead of on every call."""
    if torch.compiler.is_compiling():
        return make()
    store = _DERIVED.setdefault(owner, {})
    key = (name, like.dtype, like.device, torch.is_inference_mode_enabled())  # an inference tensor: see parameters_key
    hit = store.get(key)
    if hit is None:
        hit = store[key] = make()
    return hit


class LowRank(Keyed):
    """``up(act(down(z)))`` with ``groups`` independent bottlenecks over equal slices of z.

    init "bert": both projections N(0, 0.02) (the official UniPELT adapter).
    init "lora": down Kaiming-uniform, up zeros, so Δh = 0 at the start (He et al.'s scaled PA).
    """

    def __init__(
        self,
        d_in: int,
        r: int,
        d_out: int,
        *,
        activation: str = "identity",
        bias: bool = True,
        groups: int = 1,
        init: str = "lora",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.groups = groups
        self.down = nn.Parameter(torch.empty(groups, d_in // groups, r))
        self.up = nn.Parameter(torch.empty(groups, r, d_out // groups))
        self.down_bias = nn.Parameter(torch.zeros(groups, r)) if bias else None
        self.up_bias = nn.Parameter(torch.zeros(d_out)) if bias else None
        self.act = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.reset_parameters(init)

    @torch.no_grad()
    def reset_parameters(self, init: str) -> None:
        if init == "bert":
            nn.init.normal_(self.down, std=0.02)
            nn.init.normal_(self.up, std=0.02)
        else:
            # kaiming_uniform(a=sqrt(5)) on a (r, d_in) weight, as nn.Linear/peft do
            bound = 1.0 / math.sqrt(self.down.shape[1])
            nn.init.uniform_(self.down, -bound, bound)
            nn.init.zeros_(self.up)

    def bottleneck(self, z: torch.Tensor) -> torch.Tensor:
        """``act(down(z))`` for a single group: (..., r), in z's dtype (``in_input_dtype``)."""
        bias = self.down_bias[0].to(z.dtype) if self.down_bias is not None else None
        with in_input_dtype(z):
            return self.act(nn.functional.linear(self.dropout(z), self.down_t().to(z.dtype), bias))

    def down_t(self) -> torch.Tensor:
        """W_down as a contiguous (r, d_in), nn.Linear's layout. With so few outputs, MKL runs
        ``z W_down`` up to 2x faster this way round (forward and backward; benchmarks/gemm_layout.py),
        and the copy is r·d_in numbers."""
        return self.down[0].T.contiguous()

    def expand(self, hid: torch.Tensor) -> torch.Tensor:
        """``up(hid)`` for a single group: (..., d_out)."""
        out = hid @ self.up[0]
        return out + self.up_bias if self.up_bias is not None else out

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.groups == 1:  # the common case stays two plain matmuls
            out = self.bottleneck(z) @ self.up[0]
        else:
            z = self.dropout(z)
            zg = z.unflatten(-1, (self.groups, -1))  # (..., G, d_in/G)
            hid = torch.einsum("...gi,gir->...gr", zg, self.down)
            hid = hid + self.down_bias if self.down_bias is not None else hid
            out = torch.einsum("...gr,gro->...go", self.act(hid), self.up).flatten(-2)  # (..., d_out)
        return out + self.up_bias if self.up_bias is not None else out

    def delta_weight(self) -> torch.Tensor:
        """The (d_out, d_in) matrix this map equals when it is linear and has one group."""
        return (self.down[0] @ self.up[0]).T


class PerCall:
    """State that belongs to one forward pass, not to the module that holds it.

    Each thread sees its own values (a ``threading.local``), so forwards running on several
    threads at once (a server's worker threads, ``nn.DataParallel``'s replicas) never read each
    other's masks, taps or rows: concurrent calls are as safe as with the plain transformers
    model. A value is left in place after the call, for gradient checkpointing, which reruns a
    layer during backward (on the calling thread on CPU). Copies and pickles start empty: no call
    is in progress in them.
    """

    def __init__(self) -> None:
        self._call = threading.local()

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_call"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._call = threading.local()


def per_call(name: str) -> property:
    """An attribute of a ``PerCall`` that each thread sets and reads for itself (None when unset)."""

    def get(self):
        return getattr(self._call, name, None)

    def put(self, value) -> None:
        setattr(self._call, name, value)

    return property(get, put)


class _Positions(threading.local):
    on = False


_POSITIONS = _Positions()  # per thread: whether the projections now read positions, not tokens


@contextlib.contextmanager
def projecting_positions():
    """While a model projects embeddings of relative positions rather than its tokens (DeBERTa's
    ``share_att_key``; ``attention.mark_position_passes``), gates take every position's mean."""
    before, _POSITIONS.on = _POSITIONS.on, True
    try:
        yield
    finally:
        _POSITIONS.on = before


class MaskSlot(PerCall):
    """What the gates of one layer need to know about the current forward pass.

    ``mask``: which tokens are real, for the masked mean. HF layers do not hand the padding mask
    to linear maps, so the layer wrapper (``PeltLayer``) writes it here; gates read it.
    ``causal``: the layer is causal (a decoder's), so gates stay per token (see ``Gate``).
    ``rows``: in a mixed-task batch (unipelt.MultiTask), the rows a task's modules run on now.
    Not a module: it holds no state worth saving and must not be registered once per gate.

    ``mask`` and ``rows`` are per call (``PerCall``). A thread that never set the mask reads the
    one the last forward under autograd left: that is a layer rerun by gradient checkpointing on
    an autograd worker thread (CUDA's backward runs there, outside the layer wrapper). Forwards
    without gradients never write it, so concurrent inference cannot disturb a training step.
    """

    rows = per_call("rows")

    def __init__(self, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self._trained: torch.Tensor | None = None  # the mask of the last forward under autograd

    @property
    def mask(self) -> torch.Tensor | None:
        return getattr(self._call, "mask", self._trained)

    @mask.setter
    def mask(self, value: torch.Tensor | None) -> None:
        self._call.mask = value
        if torch.is_grad_enabled():
            self._trained = value


class Gate(Keyed):
    """UniPELT's gate: ``sigmoid(Linear(d, 1))`` per token, pooled to one value per example.

    Starts N(0, 0.02) with zero bias, so every gate opens at about 0.5 (official code).
    Returns shape (B, 1, 1), ready to broadcast over (B, T, d). In a causal layer it returns the
    per-token values, (B, T, 1) (ours): pooling over the sequence would leak later tokens into
    earlier ones, and cached decoding, which sees one new token per step, could not match it.
    """

    def __init__(self, d: int, pooling: str = "masked_mean", slot: MaskSlot | None = None):
        super().__init__()
        self.proj = nn.Linear(d, 1)
        self.pooling = pooling
        self.slot = slot or MaskSlot()
        self.label: tuple[int, str] | None = None  # (layer, submodule), set by apply()
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(
        self, z: torch.Tensor, logits: torch.Tensor | None = None, value: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The gate for input z; ``logits``, when given, are ``proj(z)`` already computed (``read_once``),
        ``value`` the whole gate (``SharedRead``): the module is still called, so its hooks see it."""
        if value is not None:
            return value
        return self.pool(torch.sigmoid(self.proj(z) if logits is None else logits), z)  # g: (B, T, 1)

    def pool(self, g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Per-token values g, (B, T, k), to this gate's: (B, 1, k), or g itself in a causal layer."""
        if self.slot.causal:
            return g
        token_mask, rows = self.slot.mask, self.slot.rows
        # "mean" counts the batch's padding (the official code); in a mixed batch (rows set) that
        # padding is other requests', so each row pools over its own positions: what it gets alone
        counts_padding = self.pooling == "mean" and rows is None
        if counts_padding or token_mask is None or _POSITIONS.on or token_mask.shape[1] != z.shape[1]:
            return g.mean(dim=1, keepdim=True)  # every position counts, where z is not the layer's tokens
        if z.shape[0] != (token_mask.shape[0] if rows is None else len(rows)):
            # not the layer's tokens, as many as they are: an input the whole batch shares
            return g.mean(dim=1, keepdim=True)
        with in_input_dtype(g):  # one product, (B, 1, T) @ (B, T, k), in g's dtype
            return torch.bmm(self.mean_weights(token_mask, g.dtype), g)  # (B, 1, k)

    def mean_weights(self, token_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """m / Σm over the real tokens, (B, 1, T): built once per call for all gates of all layers
        (they read one token mask, ``attention.token_mask``), per thread."""
        rows, compiling = self.slot.rows, torch.compiler.is_compiling()
        cached = None if compiling else getattr(_MEAN_WEIGHTS, "last", None)
        # an inference tensor: see parameters_key (a compiled graph asks no such question)
        key = None if compiling else (dtype, torch.is_inference_mode_enabled())
        if cached is not None and cached[0] is token_mask and cached[1] is rows and cached[2] == key:
            return cached[3]
        m = (token_mask if rows is None else token_mask[rows]).to(dtype).unsqueeze(1)  # (B, 1, T)
        weights = m / m.sum(dim=-1, keepdim=True).clamp_min(1.0)
        if not compiling:  # a compiled graph builds them in-graph, where the compiler can share them
            _MEAN_WEIGHTS.last = (token_mask, rows, key, weights)
        return weights


_MEAN_WEIGHTS = threading.local()  # per thread: the last (token mask, rows, dtype, weights)


class Interpolation(Gate):
    """λ(z) in He et al.'s gated addition ``(1 - λ)·h + λ·Δh`` (their Eq. 5 for prefix tuning):
    ``sigmoid(Linear(d, 1))`` per token, never pooled.

    The bias starts at -4, λ ≈ 0.018 (ours): at λ = 0.5 the frozen model's h would be halved
    before training begins, while prefix tuning's own λ starts small.
    """

    INIT_BIAS = -4.0

    def __init__(self, d: int):
        super().__init__(d)
        nn.init.constant_(self.proj.bias, self.INIT_BIAS)

    def forward(self, z: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(self.proj(z) if logits is None else logits)  # (..., T, 1)


def fuses(block: LowRank, weight: nn.Module) -> bool:
    """Whether ``read_once`` computes ``block``'s bottleneck and ``weight`` in one GEMM."""
    dropout = isinstance(block.dropout, nn.Dropout) and block.dropout.training
    return isinstance(weight, Gate) and block.groups == 1 and not dropout


def read_once(
    block: LowRank, weight: nn.Module, z: torch.Tensor, ones: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``block.bottleneck(z)`` and the composition weight ``weight(z)``.

    A gate reads the same z as the down-projection, so both come from one GEMM with
    ``[W_down | w_gate]``: these skinny maps cost about what reading z costs, and z is read once.
    The gate module is still called (on its logits), so hooks on it (``gate_values``) see it.
    A dropout on the bottleneck's input would give the two different inputs: then two GEMMs.
    ``ones`` (only where ``fuses`` and the activation keeps 1 at 1, ReLU or none): the bottleneck
    gets one more column, always 1 (weights 0, bias 1), that carries a bias of the up-projection
    through the same product as W_up (``Adapter.added``).
    """
    if not fuses(block, weight):
        return block.bottleneck(z), weight(z)
    r = block.down.shape[-1] + ones
    sources = (block.down, weight.proj.weight, weight.proj.bias)
    sources += () if block.down_bias is None else (block.down_bias,)
    make = lambda: _read_once_weights(block, weight, ones)  # noqa: E731
    w, bias = derived(block, "read_once_ones" if ones else "read_once", sources, make)
    with in_input_dtype(z):  # w is (d, r + 1): addmm takes it as it is, with no transpose
        both = torch.addmm(bias.to(z.dtype), z.reshape(-1, z.shape[-1]), w.to(z.dtype))
    both = both.view(*z.shape[:-1], -1)  # (..., r + 1)
    hid, logits = both.split([r, 1], dim=-1)
    return block.act(hid), weight(z, logits=logits)


def _read_once_weights(block: LowRank, weight: Gate, ones: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``[W_down | w_gate]`` as a fresh (d, r + 1), and its bias. W_down enters as it is stored,
    (d, r): no transpose of it to build, nor to take back in backward. With ``ones``,
    ``[W_down | 0 | w_gate]`` and ``[b_down, 1, b_gate]``: the bottleneck's column of ones."""
    gate_w, gate_b = weight.proj.weight, weight.proj.bias
    d, r = block.down.shape[1:]
    # the bias as (1, n), the shape b_down (1, r) is stored in: its gradient is addmm's column sum
    # as it comes, where a (n,) bias would need a view of it
    down_b = (
        block.down_bias
        if block.down_bias is not None
        else constant(block, "zeros", gate_b, lambda: gate_b.new_zeros(1, r))
    )
    if ones:
        zero = constant(block, "zero_column", gate_w, lambda: gate_w.new_zeros(d, 1))
        one = constant(block, "one", gate_b, lambda: gate_b.new_ones(1, 1))
        return torch.cat([block.down[0], zero, gate_w.T], dim=1), torch.cat([down_b, one, gate_b.view(1, 1)], dim=1)
    return torch.cat([block.down[0], gate_w.T], dim=1), torch.cat([down_b, gate_b.view(1, 1)], dim=1)


class SharedRead(PerCall):
    """The skinny maps of one layer that read the same input x: UniPELT's LoRA A for q and v,
    their gates and the prefix gate, all of which read the layer input h_in.

    The first member called with x computes every member's part in one GEMM,
    ``x [A_1 | A_2 | ... | w_1 | w_2 | ...]``, and all gates in one sigmoid and one pooling; the
    others take their columns from it (per call and thread, ``PerCall``). Members must be linear
    (identity activation), single-group, without bias or dropout on x, and gates must share one
    ``MaskSlot`` and pooling. A member that asks again for the same x, or whose x is another
    tensor, gets a fresh computation: a new forward pass, a layer rerun by gradient checkpointing,
    a cross-attention input. Not a module: it holds references to modules the model owns.
    """

    result = per_call("result")  # (x, grad enabled, members served, low-rank parts, gate values)

    def __init__(self) -> None:
        super().__init__()
        self.blocks: list[LowRank | None] = []
        self.gates: list[Gate | None] = []
        self.live = 0  # members not left

    def join(self, block: LowRank | None, gate: Gate | None) -> int | None:
        """Add a member; its index for ``read``, or None when it cannot share (see above)."""
        if block is not None and (block.groups != 1 or block.down_bias is not None):
            return None
        if block is not None and not (isinstance(block.act, nn.Identity) and isinstance(block.dropout, nn.Identity)):
            return None
        first = next((g for g in self.gates if g is not None), None)
        if gate is not None and first is not None and (gate.slot is not first.slot or gate.pooling != first.pooling):
            return None
        if gate is not None and type(gate) is not Gate:  # an Interpolation is never pooled
            return None
        self.blocks.append(block)
        self.gates.append(gate)
        self.live += 1
        return len(self.blocks) - 1

    def leave(self, index: int) -> None:
        """Drop a member (a merged LoRA): its columns are no longer computed."""
        self.live -= self.blocks[index] is not None or self.gates[index] is not None
        self.blocks[index] = self.gates[index] = None

    def read(self, index: int, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Member ``index``'s ``A x`` and its gate's value. ``A x`` is (N, r) for N = x's tokens
        when no member has a gate; with gates it keeps x's shape, (B, T, r), as they need it."""
        last, grad = self.result, torch.is_grad_enabled()
        if last is None or last[0] is not x or last[1] != grad or index in last[2]:
            last = (x, grad, (), *self._compute(x))
        served = (*last[2], index)
        # the last member served drops it: a compiled graph that read the previous pass's would be
        # guarded on its tensors' shapes (a recompile per batch shape), and it holds x
        self.result = None if len(served) >= self.live else (*last[:2], served, *last[3:])
        low, value = last[3][index], last[4][index]
        gate = self.gates[index]
        return low, (gate(x, value=value) if gate is not None else None)

    def _compute(self, x: torch.Tensor) -> tuple[list, list]:
        blocks = [(i, b) for i, b in enumerate(self.blocks) if b is not None]
        gates = [(i, g) for i, g in enumerate(self.gates) if g is not None]
        r = [b.down.shape[-1] for _, b in blocks]
        sources = tuple(b.down for _, b in blocks) + tuple(p for _, g in gates for p in (g.proj.weight, g.proj.bias))
        w_t, bias = derived(self, "weights", sources, lambda: self._weights(blocks, gates, sum(r)))
        x2 = x.reshape(-1, x.shape[-1])  # (N, d)
        with in_input_dtype(x):
            if gates:  # the gates pool over tokens: x's shape, (B, T, Σr + k)
                both = torch.addmm(bias.to(x.dtype), x2, w_t.to(x.dtype)).view(*x.shape[:-1], -1)
            else:
                both = x2 @ w_t.to(x.dtype)  # (N, Σr)
        parts = both.split([*r, len(gates)], dim=-1) if gates else both.split(r, dim=-1)
        lows, values = [None] * len(self.blocks), [None] * len(self.gates)
        for (i, _), part in zip(blocks, parts):
            lows[i] = part
        if gates:
            g = torch.sigmoid(parts[-1])  # (B, T, k)
            pooled = gates[0][1].pool(g, x)  # (B, 1, k), or (B, T, k) in causal layers
            for (i, _), value in zip(gates, pooled.split(1, dim=-1)):
                values[i] = value
        return lows, values

    @staticmethod
    def _weights(blocks: list, gates: list, r: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[A_1 | A_2 | ... | w_1 | ...]`` as a (d, Σr + k), and the gates' biases after Σr zeros."""
        if not gates:  # each A as it is stored, (d, r): nothing to transpose, forward or backward
            parts = [b.down[0] for _, b in blocks]
            return (torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]), None
        # a gate's row of W is a column of (d, Σr + k), whose gradient is strided: autograd would
        # copy it before it accumulates. Built as (Σr + k, d), every gate row's gradient is whole.
        w = torch.cat([b.down[0].T for _, b in blocks] + [g.proj.weight for _, g in gates]).T
        first = gates[0][1].proj.bias
        zeros = [constant(gates[0][1], f"zeros{r}", first, lambda: first.new_zeros(r))] if r else []
        return w, torch.cat(zeros + [g.proj.bias for _, g in gates])


class Scale(nn.Module):
    """A fixed or learned scalar s in ``h + s·Δh`` (He et al.'s scaled parallel adapter)."""

    def __init__(self, value: float, learn: bool = False):
        super().__init__()
        if learn:
            self.value = nn.Parameter(torch.tensor(float(value)))
        else:
            self.register_buffer("value", torch.tensor(float(value)), persistent=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.value


def composition_weight(
    composition: str,
    d: int,
    *,
    scale: float = 1.0,
    learn_scale: bool = False,
    pooling: str = "masked_mean",
    slot: MaskSlot | None = None,
) -> nn.Module:
    """The module that turns an input into the weight w in ``h + w·Δh`` (or λ in interpolation)."""
    if composition == "gated":
        return Gate(d, pooling, slot)
    if composition == "interpolate":
        return Interpolation(d)
    return Scale(scale if composition == "scaled" else 1.0, learn=learn_scale)
