"""The method registry: one file per method holds its config (a ``MethodConfig``), its modules
(built from blocks.py) and how it is placed, and registers a ``Method`` here.

Adding a method = one file here, its preset line and its tests. ``inject.apply`` calls each
configured method's ``setup`` once per model and its ``place`` once per layer, in registry order
(linear maps first, so that later wrappers see them); counting reads ``modules`` and ``kind``.
Mixed-task batches (multitask.py) ask each module how it runs on its task's rows (its
wrapper's ``rows_before``/``rows_after``, wrappers.py) and each method its ``Mixed``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Iterator

from torch import nn

from ..blocks import Gate, MaskSlot
from ..config import MethodConfig, PeltConfig
from ..errors import UniPeltError


@dataclass
class ModelContext:
    """What placing modules in one model needs, and what ``setup`` hooks leave for the layers."""

    model: nn.Module
    base: nn.Module
    spec: object  # arch.ArchSpec: methods read it as data
    cfg: PeltConfig
    d: int
    prefix: nn.Module | None = None  # where prefix keys/values come from (prefix or a decoder's prompt)
    prefix_slots: Iterator[int] = field(default_factory=itertools.count)  # shared across layers and stacks
    attention_hook: bool = False  # prefixes or prompts need unipelt's attention functions
    prompt_at: int = 0  # tokens in front of an inserted prompt (attention.py widens masks there)
    prompt_length: int = 0  # its length: 0 where nothing lengthens the input


@dataclass
class LayerContext:
    """What placing modules in one layer needs besides the layer itself."""

    index: int
    stack: object  # arch.Stack
    label: str  # gate-label prefix: "encoder." / "decoder." in models with two stacks, else ""
    model: ModelContext
    slot: MaskSlot

    @property
    def cfg(self) -> PeltConfig:
        return self.model.cfg

    @property
    def d(self) -> int:
        return self.model.d

    @property
    def kw(self) -> dict:
        return dict(pooling=self.cfg.gate_pooling, slot=self.slot)

    def labelled(self, module: nn.Module, name: str, where: str | None = None) -> nn.Module:
        """Label ``module``'s gates (layer, submodule) for ``gate_values``; cross-attention
        modules are told apart from self-attention's ("cross.prefix")."""
        name = f"cross.{name}" if where == "cross" else name
        for m in module.modules():
            if isinstance(m, Gate):
                m.label = (self.index, self.label + name)
        return module


def _nothing(*args) -> None:
    return None


@dataclass(frozen=True)
class Mixed:
    """What a method's tasks need in a mixed batch (multitask.py) besides their wrappers' row hooks:
    rows of tasks with their own modules, on one frozen backbone."""

    refused: Callable[[list], str | None] = _nothing  # why these configs cannot join one, or None
    inserts: Callable[[list, object], int] = lambda configs, spec: 0  # tokens put into each row (spec: arch.ArchSpec)
    # (path in the base model, row entry) for what no wrapper holds, given the task's base model
    # and the shared one; an entry has ``rows_before``/``rows_after`` as wrappers do (BitFit's biases)
    entries: Callable[[nn.Module, nn.Module], list] = lambda task, shared: []
    prepare: Callable[[nn.Module], None] = _nothing  # before each batch with the task's rows, given its model


@dataclass(frozen=True)
class Method:
    config: type[MethodConfig]
    kind: str  # its key in count_parameters
    modules: tuple[type, ...] = ()  # module classes whose own parameters are this method's
    setup: Callable[[ModelContext, list], None] | None = None  # once per model, before the layers
    place: Callable[[nn.Module, LayerContext, list], None] | None = None  # once per layer
    trains: Callable[[str], bool] | None = None  # base parameters it trains, by name (BitFit's biases)
    mixed: Mixed = Mixed()


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    name = method.config.method
    if name in METHODS:
        raise UniPeltError(f"method {name!r} is already registered")
    METHODS[name] = method
    return method


def method_of(cfg: MethodConfig) -> Method:
    return METHODS[type(cfg).method]


def configured(cfg: PeltConfig) -> list[tuple[Method, list]]:
    """The methods ``cfg`` uses, in registry order, each with its configs."""
    return [(m, cfg.of(m.config)) for m in METHODS.values() if cfg.of(m.config)]


def kind_of_module(module: nn.Module) -> str | None:
    """The kind of the most derived module class ``module`` is (DoRA's wrapper is a LoRA wrapper)."""
    found = [(cls, m.kind) for m in METHODS.values() for cls in m.modules if isinstance(module, cls)]
    return max(found, key=lambda f: len(f[0].__mro__))[1] if found else None


# each file registers its method; the order is the placement order (linear maps first)
# isort: off
from . import lora, dora, ia3, prefix, prompt, adapter, bitfit  # noqa: E402,F401
# isort: on
