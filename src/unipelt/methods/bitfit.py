"""Methods that add no module: BitFit (Ben Zaken et al. 2022) trains the base model's bias
vectors, full fine-tuning every weight (the baseline every PELT method is measured against), and
the head alone nothing else (the frozen backbone's baseline: a PELT method that does not beat it
has added nothing)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import MethodConfig
from . import Method, register


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


register(Method(config=BitFitConfig, kind="bitfit", trains=lambda name: name.endswith(".bias")))
register(Method(config=FullFineTuning, kind="base", trains=lambda name: True))
register(Method(config=HeadOnly, kind="base", trains=lambda name: False))
