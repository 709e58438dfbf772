"""A sweep's grid: tasks × methods × K × data seeds, from CLI flags or a TOML/YAML file.

Its keys are ``RunSpec``'s: ``presets`` and ``configs`` (the methods), each swept field under
its axis name (``tasks``, ``k``, ``data_seeds``) and every other setting under its own name
(``lr`` may also be a table per method). Every value is checked for its field's type: a wrong
one is an error naming it, never coerced (``data_seeds = [1.5]`` is not seed 1, ``patience =
true`` is not 1).
"""

from __future__ import annotations

import itertools
import typing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
import yaml

from .data import DIGITS, parse_k
from .errors import HarnessError
from .spec import DEFAULTS, SETTINGS, TYPES, RunSpec, make_spec
from .tasks import get_task

METHODS = ("presets", "configs")  # configs: PeltConfig files, swept like presets
AXES = {f.metadata["axis"]: f.name for f in SETTINGS if f.metadata["axis"]}  # tasks -> task, ...
SCALARS = tuple(f.name for f in SETTINGS if not f.metadata["axis"])


@dataclass(frozen=True, kw_only=True)
class Grid:
    presets: tuple[str, ...] = ()
    configs: tuple[str, ...] = ()
    axes: dict[str, tuple] = field(default_factory=dict)  # axis name -> values, e.g. tasks -> ("rte",)
    settings: dict[str, Any] = field(default_factory=dict)  # the other RunSpec settings that were given

    def __post_init__(self) -> None:
        if not self.axes.get("tasks"):
            raise HarnessError("the grid has no tasks: give --tasks or 'tasks' in the grid file")
        if not self.presets and not self.configs:
            raise HarnessError("the grid has no methods: give --presets and/or 'configs' in the grid file")
        files = dict.fromkeys(Path(c).resolve() for c in self.configs)  # one file given twice is one method
        names = Counter([*dict.fromkeys(self.presets), *(f.stem for f in files)])
        if twice := sorted(n for n, count in names.items() if count > 1):
            raise HarnessError(
                f"two methods of the grid are named {twice[0]!r}: rename a config file (a config's file "
                "name is its method's name in the store, the report and the lr table)"
            )
        for task in self.axes["tasks"]:
            get_task(task)

    def values(self, axis: str) -> tuple:
        return self.axes.get(axis) or (DEFAULTS[AXES[axis]],)

    def specs(self) -> list[RunSpec]:
        """Every run, ordered task → K → seed → method so a partial sweep already compares
        methods on the same data."""
        methods = [dict(preset=p) for p in self.presets] + [dict(config_file=c) for c in self.configs]
        out = []
        for *swept, method in itertools.product(*map(self.values, AXES), methods):
            name = method.get("preset") or Path(method["config_file"]).stem
            lr = self.settings.get("lr")
            out.append(
                make_spec(
                    **dict(zip(AXES.values(), swept)),
                    **{**self.settings, "lr": lr.get(name) if isinstance(lr, dict) else lr},
                    **method,
                )
            )
        return out


def split_list(value: Any) -> tuple:
    """``"a,b"`` or ``["a", "b"]`` or a scalar, as a tuple."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,)


def _integer(key: str, value: Any, what: str = "an integer") -> int:
    """An int, or a string of one (flags arrive as text); never a bool or a float, which int()
    would quietly turn into another number."""
    if type(value) is int:
        return value
    if isinstance(value, str) and DIGITS.fullmatch(value.strip().removeprefix("-")):
        return int(value)
    raise HarnessError(f"grid setting {key!r} must be {what}, got {value!r}")


def _number(key: str, value: Any, what: str = "a number") -> float:
    if type(value) in (int, float):
        return float(value)
    if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    raise HarnessError(f"grid setting {key!r} must be {what}, got {value!r}")


def _string(key: str, value: Any, what: str = "a string") -> str | None:
    if value is not None and not isinstance(value, str):
        raise HarnessError(f"grid setting {key!r} must be {what}, got {value!r}")
    return value


def _boolean(key: str, value: Any, what: str = "true or false") -> bool:
    if not isinstance(value, bool):
        raise HarnessError(f"grid setting {key!r} must be {what}, got {value!r}")
    return value


def _parser(name: str):
    """How a value of RunSpec field ``name`` is read from a grid file or a flag, by its type."""
    kind = TYPES[name]
    if name == "k":
        return lambda key, value, what=None: parse_k(value)
    args = set(typing.get_args(kind)) - {type(None)}
    base = next(iter(args)) if len(args) == 1 else kind
    if typing.get_origin(kind) is typing.Literal or base is str:
        return _string
    return {int: _integer, float: _number, bool: _boolean}[base]


def _list(axis: str, value: Any) -> tuple:
    if _parser(AXES[axis]) is _string:
        values = _list_of_names(axis, value)
    else:
        values = tuple(_parser(AXES[axis])(axis, v, "a list of integers") for v in split_list(value))
    if not values:  # given but empty ('--k ,'): an error, not the default axis
        raise HarnessError(f"grid setting {axis!r} lists no values, got {value!r}")
    return values


def _lr(value: Any, methods: set[str]) -> float | dict[str, float]:
    """One learning rate, or a table per method whose every name is a method of the grid."""
    if not isinstance(value, dict):
        return _number("lr", value)
    if unknown := sorted(set(map(str, value)) - methods):
        raise HarnessError(
            f"the lr table names {unknown}, which are not methods of the grid ({', '.join(sorted(methods))})"
        )
    return {name: _number(f"lr.{name}", v) for name, v in value.items()}


def _read(path: Path) -> dict:
    if not path.is_file():
        raise HarnessError(f"grid file {path} {'is a directory' if path.exists() else 'does not exist'}")
    try:
        text = path.read_bytes().decode("utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except UnicodeDecodeError as e:
        raise HarnessError(f"grid file {path} is not UTF-8 text (byte {e.start})") from None
    except RecursionError:  # the parsers recurse per nesting level
        raise HarnessError(f"grid file {path} nests its values too deeply to be a grid") from None
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise HarnessError(
            f"grid file {path} is not valid {path.suffix.lstrip('.').upper() or 'YAML'}: {str(e).splitlines()[0]}"
        ) from None
    if data is None or data == {}:
        raise HarnessError(f"grid file {path} is empty: it needs at least 'tasks' and 'presets' or 'configs'")
    if not isinstance(data, dict):
        raise HarnessError(f"grid file {path} must hold a table of settings (tasks, presets, k, data_seeds, ...)")
    return data


def _typed(data: dict) -> Grid:
    methods = {key: _list_of_names(key, data.get(key)) for key in METHODS}
    axes = {axis: _list(axis, data[axis]) for axis in AXES if axis in data}
    names = set(methods["presets"]) | {Path(c).stem for c in methods["configs"]}
    given = {key: data[key] for key in SCALARS if data.get(key) is not None}
    scalars = {key: _lr(v, names) if key == "lr" else _parser(key)(key, v) for key, v in given.items()}
    return Grid(**methods, axes=axes, settings=scalars)


def _list_of_names(key: str, value: Any) -> tuple[str, ...]:
    names = split_list(value)
    if bad := [v for v in names if not isinstance(v, str) or not v.strip()]:  # a YAML `- ` is None
        raise HarnessError(f"grid setting {key!r} must be a list of names, got {bad[0]!r} in it")
    return names


def make_grid(file: str | Path | None = None, **overrides: Any) -> Grid:
    """A Grid from an optional file, with ``overrides`` (CLI flags that were given) on top.
    Relative config paths in a file are read relative to the file."""
    data = _read(Path(file)) if file else {}
    named = {key: "k" if key == "ks" else str(key).replace("-", "_") for key in data}
    if twice := sorted(n for n, count in Counter(named.values()).items() if count > 1):
        both = [key for key, n in named.items() if n == twice[0]]
        raise HarnessError(f"grid file {file} gives {' and '.join(map(repr, both))}, one setting: keep one")
    data = {named[key]: value for key, value in data.items()}
    if file and "configs" in data:
        data["configs"] = [str(Path(file).parent / c) if isinstance(c, str) else c for c in split_list(data["configs"])]
    data.update({key: value for key, value in overrides.items() if value is not None})
    known = {*METHODS, *AXES, *SCALARS}
    if unknown := sorted(set(data) - known):
        raise HarnessError(f"unknown grid setting(s) {unknown}; known: {sorted(known)}")
    return _typed(data)


def describe(grid: Grid) -> str:
    sizes = {axis: len(grid.values(axis)) for axis in AXES}
    sizes["methods"] = len(grid.presets) + len(grid.configs)
    return " × ".join(f"{n} {name}" for name, n in sizes.items())
