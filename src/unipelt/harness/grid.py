"""A sweep's grid: tasks × methods × K × data seeds, from CLI flags or a TOML/YAML file.

Every setting is checked for its type: a wrong one is an error naming it, never coerced
(``data_seeds = [1.5]`` is not seed 1, ``patience = true`` is not 1).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import tomllib
import yaml

from .data import DEV_SIZE, parse_k
from .errors import HarnessError
from .spec import RunSpec, make_spec
from .tasks import get_task


@dataclass(frozen=True, kw_only=True)
class Grid:
    tasks: tuple[str, ...]
    presets: tuple[str, ...] = ()
    configs: tuple[str, ...] = ()  # PeltConfig files, swept like presets
    k: tuple[int | str, ...] = (100,)
    data_seeds: tuple[int, ...] = (111,)
    model: str | None = None
    model_seed: int = 42
    lr: float | dict[str, float] | None = None  # one value, or per method; default: the paper's
    epochs: int = 50
    patience: int = 10
    dev_size: int = DEV_SIZE
    objective: str = "classify"
    glue_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.tasks:
            raise HarnessError("the grid has no tasks: give --tasks or 'tasks' in the grid file")
        if not self.presets and not self.configs:
            raise HarnessError("the grid has no methods: give --presets and/or 'configs' in the grid file")
        for task in self.tasks:
            get_task(task)
        for k in self.k:
            parse_k(k)

    def _lr(self, method: str) -> float | None:
        return self.lr.get(method) if isinstance(self.lr, dict) else self.lr

    def specs(self) -> list[RunSpec]:
        """Every run, ordered task → K → seed → method so a partial sweep already compares
        methods on the same data."""
        methods = [dict(preset=p) for p in self.presets] + [dict(config_file=c) for c in self.configs]
        out = []
        for task, k, seed, method in itertools.product(self.tasks, self.k, self.data_seeds, methods):
            name = method.get("preset") or Path(method["config_file"]).stem
            out.append(
                make_spec(
                    task=task,
                    k=k,
                    data_seed=seed,
                    model=self.model,
                    lr=self._lr(name),
                    model_seed=self.model_seed,
                    epochs=self.epochs,
                    patience=self.patience,
                    dev_size=self.dev_size,
                    objective=self.objective,
                    glue_dir=self.glue_dir,
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


def _names(key: str, value: Any) -> tuple[str, ...]:
    names = split_list(value)
    if bad := [v for v in names if not isinstance(v, str)]:
        raise HarnessError(f"grid setting {key!r} must be a list of names, got {bad[0]!r}")
    return names


def _integer(key: str, value: Any, what: str = "an integer") -> int:
    """An int, or a string of one (flags arrive as text); never a bool or a float, which int()
    would quietly turn into another number."""
    if type(value) is int:
        return value
    if isinstance(value, str) and value.strip().removeprefix("-").isdigit():
        return int(value)
    raise HarnessError(f"grid setting {key!r} must be {what}, got {value!r}")


def _number(key: str, value: Any) -> float:
    if type(value) in (int, float):
        return float(value)
    if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    raise HarnessError(f"grid setting {key!r} must be a number, got {value!r}")


def _lr(value: Any, methods: set[str]) -> float | dict[str, float]:
    """One learning rate, or a table per method whose every name is a method of the grid."""
    if not isinstance(value, dict):
        return _number("lr", value)
    if unknown := sorted(set(map(str, value)) - methods):
        raise HarnessError(
            f"the lr table names {unknown}, which are not methods of the grid ({', '.join(sorted(methods))})"
        )
    return {name: _number(f"lr.{name}", v) for name, v in value.items()}


def _optional_name(key: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise HarnessError(f"grid setting {key!r} must be a string, got {value!r}")
    return value


def _read(path: Path) -> dict:
    if not path.is_file():
        raise HarnessError(f"grid file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except UnicodeDecodeError as e:
        raise HarnessError(f"grid file {path} is not UTF-8 text (byte {e.start})") from None
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise HarnessError(
            f"grid file {path} is not valid {path.suffix.lstrip('.').upper() or 'YAML'}: {str(e).splitlines()[0]}"
        ) from None
    if data is None or data == {}:
        raise HarnessError(f"grid file {path} is empty: it needs at least 'tasks' and 'presets' or 'configs'")
    if not isinstance(data, dict):
        raise HarnessError(f"grid file {path} must hold a table of settings (tasks, presets, k, data_seeds, ...)")
    return data


def _typed(data: dict) -> dict:
    out = {key: _names(key, data.get(key)) for key in ("tasks", "presets", "configs")}
    out["k"] = tuple(parse_k(k) for k in split_list(data.get("k", (100,))))
    if "data_seeds" in data:
        out["data_seeds"] = tuple(
            _integer("data_seeds", s, "a list of integers") for s in split_list(data["data_seeds"])
        )
    for key in ("model_seed", "epochs", "patience", "dev_size"):
        if key in data:
            out[key] = _integer(key, data[key])
    for key in ("model", "glue_dir", "objective"):
        if key in data:
            out[key] = _optional_name(key, data[key])
    if data.get("lr") is not None:
        out["lr"] = _lr(data["lr"], set(out["presets"]) | {Path(c).stem for c in out["configs"]})
    return out


def make_grid(file: str | Path | None = None, **overrides: Any) -> Grid:
    """A Grid from an optional file, with ``overrides`` (CLI flags that were given) on top.
    Relative config paths in a file are read relative to the file."""
    data = _read(Path(file)) if file else {}
    data = {"k" if key == "ks" else str(key).replace("-", "_"): value for key, value in data.items()}
    if file and "configs" in data:
        data["configs"] = [str(Path(file).parent / c) if isinstance(c, str) else c for c in split_list(data["configs"])]
    data.update({key: value for key, value in overrides.items() if value is not None})
    known = {f.name for f in fields(Grid)}
    if unknown := sorted(set(data) - known):
        raise HarnessError(f"unknown grid setting(s) {unknown}; known: {sorted(known)}")
    return Grid(**_typed(data))


def describe(grid: Grid) -> str:
    sizes = {f: len(getattr(grid, f)) for f in ("tasks", "k", "data_seeds")}
    sizes["methods"] = len(grid.presets) + len(grid.configs)
    return " × ".join(f"{n} {name}" for name, n in sizes.items())
