"""Methods that add no module: BitFit (Ben Zaken et al. 2022) trains the base model's bias
vectors, full fine-tuning every weight (the baseline every PELT method is measured against), and
the head alone nothing else (the frozen backbone's baseline: a PELT method that does not beat it
has added nothing).

In a mixed-task batch (multitask.py) a BitFit task's base model has biases of its own on the
shared weights: each is served as its difference to the shared bias, added on the task's rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..config import MethodConfig
from ..wrappers import RowsCall, plain_path
from . import Method, Mixed, register


@dataclass(frozen=True, kw_only=True)
class BitFitConfig(MethodConfig):
    """Train only the bias vectors of the pretrained model (Ben Zaken et al. 2022)."""

    method: ClassVar[str] = "bitfit"
    unique: ClassVar[bool] = True


@dataclass(frozen=True, kw_only=True)
class FullFineTuning(MethodConfig):
    """Train every weight: the baseline every PELT method is measured against."""

    method: ClassVar[str] = "full"
    exclusive: ClassVar[bool] = True


@dataclass(frozen=True, kw_only=True)
class HeadOnly(MethodConfig):
    """Train the task head alone on the frozen backbone: a linear probe of its summary."""

    method: ClassVar[str] = "head_only"
    exclusive: ClassVar[bool] = True


@dataclass
class BiasDelta:
    """A task's bias minus the shared one, added to the shared module's output on the task's rows.
    Where a wrapper of the task recomputes the module on its rows (a post-norm LayerNorm), that
    overwrites the rows after this, the task's own bias included."""

    delta: torch.Tensor

    def rows_before(self, call: RowsCall, rows: torch.Tensor) -> None:
        pass

    def rows_after(self, call: RowsCall, rows: torch.Tensor) -> None:
        call.h[rows] += self.delta


def _bias_deltas(task: nn.Module, shared: nn.Module) -> list[tuple[str, BiasDelta]]:
    """Each bias of the task's base model, at its module's path without wrappers."""
    plain = dict(shared.named_modules())
    out = []
    for name, p in task.named_parameters():
        path, _, leaf = plain_path(name).rpartition(".")
        if leaf == "bias" and path in plain:
            out.append((path, BiasDelta((p - plain[path].bias).detach())))
    return out


_NO_SHARED_BACKBONE = "a full fine-tuning checkpoint has no shared backbone to serve"
register(
    Method(
        config=BitFitConfig,
        kind="bitfit",
        trains=lambda name: name.endswith(".bias"),
        mixed=Mixed(entries=_bias_deltas),
    )
)
register(
    Method(
        config=FullFineTuning,
        kind="base",
        trains=lambda name: True,
        mixed=Mixed(refused=lambda configs: _NO_SHARED_BACKBONE),
    )
)
register(Method(config=HeadOnly, kind="base"))  # trains no base weight: no rule
