"""What one run is: a frozen, hashable spec whose key identifies the run in the store, so a
sweep can tell which grid cells are already done."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from .. import DEFAULT_LEARNING_RATES, PRESETS, PeltConfig, get_preset
from ..errors import UniPeltError
from .data import DEV_SIZE, parse_k
from .errors import HarnessError
from .generative import check_objective
from .models import DEFAULT_MODEL, check_model, model_identity, model_path, resolve_model  # noqa: F401
from .tasks import get_task


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """One training run of the UniPELT protocol (SPEC §3-4). ``config`` is the PeltConfig as
    canonical JSON so the spec stays hashable and picklable (it crosses process boundaries)."""

    task: str
    method: str  # preset name, or the config file's stem for --config
    config: str
    model: str
    k: int | str
    data_seed: int = 111
    model_seed: int = 42
    lr: float
    epochs: int = 50
    patience: int = 10
    batch_size: int = 16
    max_length: int = 128
    dev_size: int = DEV_SIZE
    objective: str = "classify"  # or "generate": the task as label-word generation (harness/generative.py)
    model_id: str = ""  # the model's config and weights hash (models.model_identity); '' for a hub name
    # Where the data is read from: not part of the run's identity.
    glue_dir: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("epochs", "patience", "batch_size", "max_length", "dev_size"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:  # type(): True is an int to isinstance
                raise HarnessError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        for name in ("data_seed", "model_seed"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value < 2**32:  # what numpy's seeding takes
                raise HarnessError(f"{name.replace('_', '-')} must be an integer from 0 to 2**32 - 1, got {value!r}")
        if type(self.lr) not in (int, float) or not self.lr > 0:
            raise HarnessError(f"the learning rate must be a positive number, got {self.lr!r}")
        check_objective(self.objective, get_task(self.task))

    @property
    def key(self) -> str:
        """Stable id of the run: a hash of every field that changes its result. The default
        objective and an empty model id are left out, so keys from before they existed stay valid."""
        ident = {
            k: v
            for k, v in asdict(self).items()
            if k != "glue_dir" and not (k == "objective" and v == "classify") and not (k == "model_id" and not v)
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]

    @property
    def pelt_config(self) -> PeltConfig:
        return PeltConfig.from_dict(json.loads(self.config))

    def label(self) -> str:
        objective = " generate" if self.objective == "generate" else ""
        return f"{self.task} {self.method}{objective} K={self.k} seed={self.data_seed}"


def read_config_file(path: str | Path) -> PeltConfig:
    """A PeltConfig from JSON or YAML (YAML is a superset of JSON, so one parser reads both)."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise HarnessError(f"config file {path} is not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        raise HarnessError(f"{path} is not valid JSON/YAML: {str(e).splitlines()[0]}") from None
    try:
        return PeltConfig.from_dict(data)
    except UniPeltError as e:
        raise HarnessError(f"config file {path}: {e}") from None
    except (TypeError, ValueError, AttributeError) as e:  # a malformed entry the config does not name
        raise HarnessError(f"config file {path} is not a PELT config: {e}") from None


def _default_lr(method: str, config: PeltConfig) -> float:
    if method in DEFAULT_LEARNING_RATES:
        return DEFAULT_LEARNING_RATES[method]
    same = [n for n, c in PRESETS.items() if c == config]  # a config file that equals a preset
    if same:
        return DEFAULT_LEARNING_RATES[same[0]]
    raise HarnessError(f"config {method!r} matches no preset, so it has no default learning rate: pass --lr")


def make_spec(
    *,
    task: str,
    preset: str | None = None,
    config_file: str | None = None,
    model: str | None = None,
    k: int | str = 100,
    lr: float | None = None,
    **options,
) -> RunSpec:
    """A validated RunSpec from CLI-level choices; ``options`` are the remaining RunSpec fields."""
    task = get_task(task).name
    if (preset is None) == (config_file is None):
        raise HarnessError("give exactly one of --preset NAME or --config FILE")
    if preset is not None:
        method, config = preset, get_preset(preset)
    else:
        method, config = Path(config_file).stem, read_config_file(config_file)
    model = resolve_model(model)
    spec = RunSpec(
        task=task,
        method=method,
        config=json.dumps(config.to_dict(), sort_keys=True),
        model=model,
        k=parse_k(k),
        lr=_default_lr(method, config) if lr is None else lr,
        model_id=model_identity(model),
        **options,
    )
    check_model(spec.model, objective=spec.objective, max_length=spec.max_length)
    return spec
