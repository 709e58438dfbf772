"""What every importer shares: reading only safe formats, and installing all or nothing.

Weights are read from safetensors, or from a ``.bin`` through ``torch.load(weights_only=True)``,
which rebuilds tensors and plain containers and refuses any other pickled object. A checkpoint
is installed in two passes: a dry run on a meta-device copy of the model says whether every
tensor has a place of the right shape and every added parameter gets a value, and only then is
the real model changed, so a refused checkpoint leaves the model as it was.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..checkpoint import check_floats, copy_value, dry_apply
from ..config import PeltConfig
from ..errors import UniPeltError
from ..inject import MARK, all_or_nothing, apply, require_model


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise UniPeltError(f"{path} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UniPeltError(f"{path} is not valid JSON: {e}") from None
    except ValueError:  # Python reads no integer literal longer than this
        raise UniPeltError(f"{path} holds a number of over {sys.get_int_max_str_digits()} digits") from None
    except RecursionError:
        raise UniPeltError(f"{path} nests its JSON too deeply to be a config") from None
    if not isinstance(data, dict):
        raise UniPeltError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor mapping from a safetensors file or a ``.bin`` state dict."""
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except SafetensorError as e:
            raise UniPeltError(f"{path} is not a readable safetensors file: {e}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - malformed bytes raise anything (IndexError, UnicodeDecodeError...)
        # weights_only refuses every global but tensors and plain containers: a file that needs
        # more is not a plain state dict, and unpickling it fully could run its code
        why = next(iter(str(e).splitlines()), "") or f"{type(e).__name__} (an empty or truncated file)"
        raise UniPeltError(f"{path} is not a plain tensor state dict (loaded with weights_only=True): {why}") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise UniPeltError(f"{path} does not hold a flat mapping of names to tensors")
    return state


def first_file(directory: Path, names: tuple[str, ...]) -> Path | None:
    """The first of ``names`` present in ``directory`` (safetensors first by convention)."""
    for name in names:
        if (directory / name).is_file():
            return directory / name
    return None


Assign = Callable[[nn.Module], dict[nn.Parameter, torch.Tensor]]


def _named(model: nn.Module, assigned: dict[nn.Parameter, torch.Tensor]) -> dict[str, torch.Tensor]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: t for p, t in assigned.items()}


def _check(model: nn.Module, assigned: dict[nn.Parameter, torch.Tensor], source: str) -> None:
    check_floats(_named(model, assigned), source)
    for p, t in assigned.items():
        if tuple(p.shape) != tuple(t.shape):
            name = _named(model, {p: t})
            raise UniPeltError(
                f"{source}: {next(iter(name))} has shape {tuple(t.shape)} in the checkpoint, "
                f"{tuple(p.shape)} in this model"
            )
    covered = {id(p) for p in assigned}
    missing = [n for n, p in model.named_parameters() if MARK in n and p.requires_grad and id(p) not in covered]
    if missing:
        raise UniPeltError(f"{source} holds no value for {missing[:3]}: the checkpoint is incomplete")


def require_fresh(model) -> None:
    """Refuse what is not a plain transformers model before a checkpoint is read: its modules and
    targets would be read against the unipelt modules already there."""
    require_model(model)
    if getattr(model, "pelt_config", None) is not None:
        raise UniPeltError("this model already has unipelt modules; import into a fresh base model")


def install(model: nn.Module, config: PeltConfig, assign: Assign, source: str) -> nn.Module:
    """``apply(model, config)`` and copy what ``assign`` maps each parameter to, or refuse
    before touching ``model``. ``assign`` is called on the model after ``apply``; it returns
    {parameter: value} and raises UniPeltError for a tensor that has no place."""
    require_fresh(model)
    dry = dry_apply(model, config, f"{source}'s config")
    with torch.device("meta"):  # what the converters build for the dry run stays there too
        try:
            _check(dry, assign(dry), source)
        except UniPeltError:
            raise
        except KeyError as e:  # the converters pop the tensors a module needs
            raise UniPeltError(f"{source} has no tensor {e} that its config needs") from None
        except (RuntimeError, IndexError, ValueError) as e:  # a tensor of a size its module cannot take
            raise UniPeltError(f"{source} holds a tensor its config cannot take: {e}") from None
    with all_or_nothing(model):
        apply(model, config)
        with torch.no_grad():
            names = {id(p): n for n, p in model.named_parameters()}
            for p, t in assign(model).items():
                copy_value(p, t, f"{source}: {names[id(p)]}")
    return model
