"""What one run is: a frozen spec whose key identifies the run in the store, so a sweep can tell
which grid cells are already done.

``RunSpec`` is the one definition of a run's settings. Each field's metadata says what it is,
and everything else is derived from it: the flags of ``train`` and ``sweep`` (``help``), the
grid file keys (a setting's name, or its ``axis`` for the ones a sweep lists), the run key
(every compared field; one equal to its ``since`` value is left out, so keys made before it
existed stay valid), the store's columns (``column``) and the report's row labels (``variant``).
"""

from __future__ import annotations

import hashlib
import json
import math
import typing
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from .. import DEFAULT_LEARNING_RATES, PRESETS, PeltConfig, get_preset
from ..config import Head
from ..errors import UniPeltError
from ..heads import declared
from .data import DEV_SIZE, data_identity, parse_k
from .errors import HarnessError
from .generative import check_objective
from .models import DEFAULT_MODEL, check_model, model_identity, model_path, resolve_model  # noqa: F401
from .tasks import get_task

HEAD_LR = 1e-3  # pre-registered for every method: a head-only run fits SST-2 within 3 epochs at it, not in 30 at 1e-4
MIN_LENGTH = 16  # tokens per example: room for a pair (or a prompt) beside the special tokens


def setting(
    default: Any = MISSING, *, help: str, axis: str | None = None, variant: bool = True, compare: bool = True, **meta
) -> Any:
    """A field the user sets: a flag of ``train`` and ``sweep`` and a grid file key. ``axis``:
    the plural name under which a sweep takes a list of values (then it is not a variant)."""
    meta = dict(help=help, axis=axis, variant=variant and axis is None, **meta)
    return field(default=default, compare=compare, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """One training run of the UniPELT protocol (SPEC §3-4)."""

    task: str = setting(help="cola, sst2, mrpc, stsb, qqp, mnli, qnli or rte", axis="tasks", column=True)
    method: str = field(metadata=dict(column=True))  # preset name, or the config file's stem
    config: PeltConfig
    model: str = setting(
        help="local Hugging Face model directory (default: the offline all-MiniLM-L6-v2)", variant=False, column=True
    )
    k: int | str = setting(100, help="training examples: an integer or 'all'", axis="k", column=True)
    data_seed: int = setting(111, help="seed of the data split", axis="data_seeds", column=True)
    lr: float = setting(help="learning rate (default: the paper's for the method)", column=True)
    epochs: int = setting(50, help="maximum epochs")
    patience: int = setting(10, help="early-stopping patience in epochs")
    model_seed: int = setting(42, help="seed of the head, the PELT init and the data order", column=True)
    dev_size: int = setting(DEV_SIZE, help="dev rows for checkpoint selection")
    batch_size: int = setting(16, help="train batch size")
    max_length: int = setting(128, help="max tokens per example")
    objective: Literal["classify", "generate"] = setting(
        "classify", help="classify with a head, or generate the label word with a causal LM", since="classify"
    )
    bf16: bool = setting(False, help="train under bf16 autocast (CPU or GPU)", since=False)
    # In the key: inductor draws its own dropout masks, so a compiled run trains to other weights
    # than an eager one; False (every run stored before) leaves the key as it was
    compile: bool = setting(
        False,
        help="run the model under torch.compile (unipelt.compile; pays off on a GPU)",
        since=False,
    )
    # The head: chosen here, recorded in the config (so in the key); None in runs stored before it.
    head: Head = setting(
        "auto",
        help="the summary the task head reads: auto (the backbone's own: mean for a sentence-transformers "
        "model that declares it), model, pooler, mean or last",
        compare=False,
    )
    head_lr: float | None = setting(
        None, help=f"learning rate of the task head, its own optimizer group (default {HEAD_LR})", since=None
    )
    # the model's config and weights hash (models.model_identity); '' for a hub name
    model_id: str = field(default="", metadata=dict(variant=True, since=""))
    # the GLUE files' hash where they are not the known copy (data.data_identity)
    data_id: str = field(default="", metadata=dict(variant=False, since=""))  # per task: no row label
    # Where the data is read from: not part of the run's identity.
    glue_dir: str | None = setting(
        None,
        help="GLUE directory (default: $GLUE_DIR, then the embedded SST-2, then the hub)",
        variant=False,
        compare=False,
    )

    def __post_init__(self) -> None:
        """Each field checked by its type: a seed is what numpy's seeding takes, any other int
        positive (``type()``: True is an int to isinstance), a bool a bool."""
        if not isinstance(self.config, PeltConfig):
            raise HarnessError(f"a run's config must be a PeltConfig, got {type(self.config).__name__}")
        for name, kind in TYPES.items():
            value, flag = getattr(self, name), name.replace("_", "-")
            if kind is int and name.endswith("seed") and (type(value) is not int or not 0 <= value < 2**32):
                raise HarnessError(f"{flag} must be an integer from 0 to 2**32 - 1, got {value!r}")
            if kind is int and not name.endswith("seed"):
                if type(value) is not int or value < 1:
                    raise HarnessError(f"{flag} must be a positive integer, got {value!r}")
                if value >= 2**31:  # torch and numpy index with int64
                    raise HarnessError(f"{flag} must be below 2**31, got {value!r}")
                if name == "max_length" and value < MIN_LENGTH:
                    raise HarnessError(
                        f"--max-length must be at least {MIN_LENGTH}, got {value}: fewer leave a sentence pair no "
                        "room beside the special tokens (or a prompt's cue and answer), and a tokenizer that "
                        "cannot cut to that length keeps the whole text"
                    )
            if kind is bool and type(value) is not bool:
                raise HarnessError(f"{flag} must be true or false, got {value!r}")
        for name in ("lr", "head_lr"):
            value = getattr(self, name)
            if (value is not None or name == "lr") and (type(value) not in (int, float) or not 0 < value < math.inf):
                what = "the learning rate" if name == "lr" else "the head's learning rate"
                raise HarnessError(f"{what} must be a positive number (and finite), got {value!r}")
            if type(value) is int:  # lr=1 is the run of lr=1.0: one run key
                object.__setattr__(self, name, float(value))
        check_objective(self.objective, get_task(self.task))

    @property
    def key(self) -> str:
        """Stable id of the run: a hash of every field that changes its result, the config as
        canonical JSON. A field at its ``since`` value is left out, so older keys stay valid."""
        return self._hash(self.config.to_dict())

    @property
    def keys(self) -> tuple[str, ...]:
        """``key``, and the key a store may hold this run under from before a whole number in a
        float field (alpha: 2) was written as a float: such a run is finished, not trained again."""
        return tuple(dict.fromkeys((self.key, self._hash(self.config.to_dict(floats=False)))))

    def _hash(self, config: dict) -> str:
        ident = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.compare and not ("since" in f.metadata and getattr(self, f.name) == f.metadata["since"])
        }
        ident["config"] = json.dumps(config, sort_keys=True)
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]

    def to_dict(self) -> dict[str, Any]:
        """Every field, the config as ``PeltConfig.to_dict()``: what the store keeps."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**out, "config": self.config.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        """The spec a store row holds (fields added since it was written take their defaults)."""
        return cls(**{**data, "config": PeltConfig.from_dict(data["config"])})

    def columns(self) -> dict[str, Any]:
        """The fields the store keeps in columns of their own (K as text: it may be 'all')."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("column")}
        return {**out, "k": str(self.k)}

    def label(self) -> str:
        objective = " generate" if self.objective == "generate" else ""
        return f"{self.task} {self.method}{objective} K={self.k} seed={self.data_seed}"


TYPES: dict[str, Any] = typing.get_type_hints(RunSpec)  # each field's type, from its annotation
SETTINGS = tuple(f for f in fields(RunSpec) if "help" in f.metadata)  # the fields a user sets, in order
VARIANTS = tuple(f.name for f in fields(RunSpec) if f.metadata.get("variant"))
DEFAULTS = {f.name: f.default for f in fields(RunSpec) if f.default is not MISSING}


def read_config_file(path: str | Path) -> PeltConfig:
    """A PeltConfig from JSON or YAML (YAML is a superset of JSON, so one parser reads both)."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"config file {path} {'is a directory' if path.exists() else 'does not exist'}")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise HarnessError(f"config file {path} is not UTF-8 text (byte {e.start})") from None
    except RecursionError:  # the parser recurses per nesting level
        raise HarnessError(f"config file {path} nests its values too deeply to be a PELT config") from None
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
    same = [n for n, c in PRESETS.items() if c == replace(config, head="auto")]  # a config file equal to a preset
    if same:
        return DEFAULT_LEARNING_RATES[same[0]]
    raise HarnessError(f"config {method!r} matches no preset, so it has no default learning rate: pass --lr")


def _head(flag: str, config: PeltConfig, model: str) -> str:
    """The head a run uses: the flag's, else the config file's, else the backbone's own (the
    pooling a sentence-transformers directory declares; otherwise the model class's head)."""
    if flag != "auto" and config.head not in ("auto", flag):
        raise HarnessError(f"--head {flag} contradicts the config file's head {config.head!r}")
    chosen = flag if flag != "auto" else config.head
    if chosen != "auto":
        return chosen
    return declared(model_path(model)) or "model"


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
    """A validated RunSpec from CLI-level choices; ``options`` are the remaining settings."""
    task = get_task(task).name
    if (preset is None) == (config_file is None):
        raise HarnessError("give exactly one of --preset NAME or --config FILE")
    if preset is not None:
        method, config = preset, get_preset(preset)
    else:
        method, config = Path(config_file).stem, read_config_file(config_file)
        if method in PRESETS and replace(config, head="auto") != PRESETS[method]:  # its lr, its report row
            raise HarnessError(
                f"config file {config_file} is named like the preset {method!r} but holds another config: "
                "rename it (a config's file name is its method's name in the store and the report)"
            )
    model = resolve_model(model)
    given = options.get("glue_dir")
    folder = Path(given).expanduser() if isinstance(given, str) and given.strip() else None
    if folder is not None and folder.is_dir():  # stored absolute: the report rebuilds the rows from anywhere
        options["glue_dir"] = str(folder.resolve())
    lr = _default_lr(method, config) if lr is None else lr
    head = _head(options.pop("head", None) or "auto", config, model)
    head_lr = options.pop("head_lr", None)
    spec = RunSpec(
        task=task,
        method=method,
        config=replace(config, head=head),
        model=model,
        k=parse_k(k),
        lr=lr,
        model_id=model_identity(model),
        data_id=data_identity(get_task(task), options.get("glue_dir")),
        head=head,
        head_lr=HEAD_LR if head_lr is None else head_lr,
        **options,
    )
    check_model(spec.model, objective=spec.objective, max_length=spec.max_length)
    if spec.bf16 and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise HarnessError(f"--bf16: GPU {torch.cuda.get_device_name()} does not support bf16")
    return spec
