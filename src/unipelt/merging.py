"""Merging task modules: several ``unipelt.save`` checkpoints of one config and base model
combined into one checkpoint, as peft's ``LoraModel.add_weighted_adapter`` combines adapters.

- "linear" (task arithmetic, Ilharco et al. 2023): θ = Σ w_i θ_i for every saved tensor, the
  task head included, which is the sum of task vectors where a module is neutral at 0 (an
  adapter, a prefix); an (IA)³ vector, neutral at 1, merges as 1 + Σ w_i (l_i - 1). For tensors
  whose pretrained value the checkpoint lacks (the head, BitFit's biases, modules_to_save) it is
  task arithmetic only when the weights sum to one. LoRA's A and B are weighted by √|w_i| each,
  the sign on A, as peft does: s·B'A' = s·(Σ √w_i B_i)(Σ √w_i A_i), which keeps the rank but is
  not Σ w_i s B_i A_i (peft calls it a rough approximation; the _svd methods are exact up to the
  rank).
- "ties" (Yadav et al. 2023: keep each tensor's top ``density`` magnitudes, elect a sign per
  entry, average the agreeing weighted entries), "dare_linear" / "dare_ties" (Yu et al. 2024:
  keep each entry with probability ``density``, rescale by 1/density, then sum or TIES' sign
  election): on LoRA's A and B, as peft's methods of those names.
- "svd", "ties_svd", "dare_linear_svd", "dare_ties_svd": the same on each LoRA's low-rank
  product ΔW_i = s·B_i A_i, then the rank-r truncated SVD of the result, ΔW ≈ (U S) V^T.

peft scales the merged adapter by 1 (alpha = r); a merged unipelt checkpoint keeps its config,
so its A and B hold peft's divided by √s (by s for B in the _svd methods): the same ΔW.
Only LoRA has the low-rank form the last seven rely on; they refuse checkpoints with trained
tensors other than LoRA's and the head (another method's, modules_to_save). Every method merges
the head as Σ w_i θ_i. Checkpoints of one task kind merge: their heads' labels and problem type,
and the inputs they were saved for (pairs, max_length), must agree. DARE draws random masks:
pass ``seed`` to repeat them.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Literal, Sequence, get_args

import torch

from .checkpoint import META, _config, _read_meta, _read_tensors, same_base, write_checkpoint
from .config import PeltConfig
from .errors import UniPeltError
from .methods.dora import DoRAConfig
from .methods.lora import LoRAConfig

Combination = Literal[
    "linear", "ties", "dare_linear", "dare_ties", "svd", "ties_svd", "dare_linear_svd", "dare_ties_svd"
]
LORA_A, LORA_B = ".pelt_lora.down", ".pelt_lora.up"  # (1, d_in, r) and (1, r, d_out) in a checkpoint
IA3 = ".pelt_ia3"  # an (IA)³ vector: neutral at 1


def _prune(t: torch.Tensor, density: float, how: str) -> torch.Tensor:
    """Keep the top ``density`` of |t| ("magnitude"), or each entry with probability ``density``
    and rescaled by 1/density ("random", DARE)."""
    if density >= 1:
        return t
    if how == "magnitude":
        keep = torch.zeros(t.numel(), dtype=t.dtype)
        keep[t.abs().flatten().topk(int(density * t.numel())).indices] = 1
        return t * keep.view(t.shape)
    return t * torch.bernoulli(torch.full_like(t, density)) / density


def _combine(tensors: list[torch.Tensor], weights: torch.Tensor, how: str, density: float, sign: str):
    """One merged tensor from one tensor per task (shapes equal), weights (tasks,)."""
    if how in ("ties", "dare_ties"):
        stack = torch.stack([_prune(t, density, "magnitude" if how == "ties" else "random") for t in tensors])
        votes = stack.sum(0) if sign == "total" else stack.sign().sum(0)
        agree = stack.sign() == torch.where(votes >= 0, 1, -1)  # (tasks, ...) the elected sign
        weighted = stack * weights.view(-1, *[1] * (stack.dim() - 1))
        return (weighted * agree).sum(0) / agree.sum(0).clamp(min=1)
    if how == "dare_linear":
        tensors = [_prune(t, density, "random") for t in tensors]
    return sum(w * t for w, t in zip(weights, tensors))


def _merge_lora(a: list, b: list, weights: list[float], how: str, density: float, sign: str):
    """Merged (A, B), each task's given in peft's layout, A (r, d_in) and B (d_out, r), in which
    DARE's random masks are drawn as peft draws them. No scale s is needed: every task has the
    same s at one module (one config), and each combination commutes with a positive factor (a
    mask, a sign, a top-k of magnitudes, an SVD), so combining B A and loading with the module's
    own s gives peft's combination of s·B A, also where the config's LoRA entries differ in s."""
    if not how.endswith("svd"):
        roots = torch.tensor([math.sqrt(abs(w)) for w in weights])
        signs = torch.tensor([1.0 if w >= 0 else -1.0 for w in weights])
        return _combine(a, roots * signs, how, density, sign), _combine(b, roots, how, density, sign)
    deltas = [bi @ ai for ai, bi in zip(a, b)]  # (d_out, d_in) each: ΔW / s
    plain = "linear" if how == "svd" else how.removesuffix("_svd")
    u, s, vh = torch.linalg.svd(_combine(deltas, torch.tensor(weights), plain, density, sign), full_matrices=True)
    r = a[0].shape[0]
    k = min(r, len(s))  # a layer narrower than r: ΔW has rank k at most
    low, up = vh[:k], u[:, :k] * s[:k]  # A (k, d_in), B (d_out, k): s·B A = the rank-k ΔW
    # zero rows of A and columns of B beyond k: the checkpoint keeps the config's shapes
    return torch.nn.functional.pad(low, (0, 0, 0, r - k)), torch.nn.functional.pad(up, (0, r - k))


def _check(metas: list[dict], configs: list[PeltConfig], how: str, dirs: list[Path]) -> None:
    first = configs[0]
    for d, meta, cfg in zip(dirs[1:], metas[1:], configs[1:]):
        if cfg != first:
            raise UniPeltError(f"{d} has another config than {dirs[0]}: only checkpoints of one config merge")
        if not same_base(meta["base_model"], metas[0]["base_model"]):
            raise UniPeltError(f"{d} was saved from another base model than {dirs[0]}")
    if first.gated:
        raise UniPeltError("gated (UniPELT) modules do not merge: a gate scales its module by a function of the input")
    if first.of(DoRAConfig):
        raise UniPeltError("DoRA does not merge: each task's magnitude rescales its own direction ‖W + s·BA‖")
    if how != "linear" and (len(first.of(LoRAConfig)) != len(first.methods) or first.modules_to_save):
        trained = [m.method for m in first.methods] + (["modules_to_save"] if first.modules_to_save else [])
        raise UniPeltError(f"{how!r} merges LoRA's low-rank matrices only; use 'linear' for {', '.join(trained)}")
    task = metas[0].get("task") or {}
    for d, meta in zip(dirs[1:], metas[1:]):
        other = meta.get("task") or {}
        for key in ("num_labels", "problem_type", "id2label", "pairs", "max_length"):
            if other.get(key) != task.get(key):  # the merged checkpoint is served as one task
                raise UniPeltError(
                    f"{d} was saved for another task than {dirs[0]}: its {key} is {other.get(key)!r}, "
                    f"not {task.get(key)!r}"
                )


def merge_checkpoints(
    dirs: Sequence[str | Path],
    weights: Sequence[float],
    out: str | Path,
    method: Combination = "linear",
    density: float = 1.0,
    majority_sign: Literal["total", "frequency"] = "total",
    seed: int | None = None,
) -> Path:
    """Write to ``out`` one checkpoint combining those in ``dirs`` with ``weights`` (see the
    module docstring for the methods); returns ``out``. It loads with ``unipelt.load``."""
    dirs, weights = [Path(d) for d in dirs], _numbers(weights)
    if len(dirs) < 1 or len(weights) != len(dirs):
        raise UniPeltError(
            f"merge_checkpoints needs one weight per checkpoint: {len(dirs)} dirs, {len(weights)} weights"
        )
    if method not in get_args(Combination):
        raise UniPeltError(f"unknown merge method {method!r}; known: {list(get_args(Combination))}")
    if not (isinstance(density, (int, float)) and not isinstance(density, bool) and 0 < density <= 1):
        raise UniPeltError(f"density must be a number in (0, 1], got {density!r}")
    if majority_sign not in ("total", "frequency"):
        raise UniPeltError(f"majority_sign must be 'total' or 'frequency', got {majority_sign!r}")
    if seed is not None and not (type(seed) is int and 0 <= seed < 2**63):  # what torch.manual_seed takes
        raise UniPeltError(f"seed must be a whole number from 0 to 2**63 - 1, got {seed!r}")
    _check_out(Path(out), dirs)
    names, tensors, meta = _read_all(dirs, method)
    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng:  # a seed leaves the caller's random state as it was
        if seed is not None:
            torch.manual_seed(seed)
        merged = _merge(names, tensors, weights, method, density, majority_sign)
    return _write(Path(out), merged, meta, dirs, weights, method)


def _check_out(out: Path, dirs: list[Path]) -> None:
    """The merge is written beside the checkpoints it reads, never over or inside one of them."""
    target = out.resolve()
    if (target / "config.json").is_file():  # a model's identity is a hash of its files (the run keys)
        raise UniPeltError(f"--out {out} holds a model (config.json): write the merged checkpoint elsewhere")
    for d in dirs:
        if target.is_relative_to(d.resolve()):  # the input itself included
            raise UniPeltError(f"--out {out} is {'' if target == d.resolve() else 'inside '}the input {d}")


def _numbers(weights: Sequence[float]) -> list[float]:
    """The weights as finite Python floats (a NumPy array's float32 would not go into the JSON)."""
    try:
        out = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise UniPeltError(f"merge weights must be numbers, got {weights!r}") from None
    if not all(math.isfinite(w) for w in out):
        raise UniPeltError(f"merge weights must be finite, got {out}")
    return out


def _read_all(dirs: list[Path], method: str) -> tuple[list[str], list[dict], dict]:
    """The tensor names (in the order of the model's modules), each checkpoint's tensors and the
    first's metadata, once every check has passed."""
    metas = [_read_meta(d) for d in dirs]
    configs = [_config(m, d / META) for m, d in zip(metas, dirs)]
    _check(metas, configs, method, dirs)
    tensors = [_read_tensors(d, m) for d, m in zip(dirs, metas)]
    names = sorted(tensors[0], key=_module_order(metas[0]))
    for d, t in zip(dirs[1:], tensors[1:]):
        if t.keys() != tensors[0].keys() or any(t[n].shape != tensors[0][n].shape for n in names):
            wrong = sorted(n for n in names if n not in t or t[n].shape != tensors[0][n].shape)
            raise UniPeltError(
                f"{d} holds other tensors or shapes than {dirs[0]} (heads of different sizes?): {wrong[:3]}"
            )
    if any(n.endswith(LORA_A) for n in names) and not configs[0].of(LoRAConfig):
        raise UniPeltError("the checkpoints hold LoRA tensors but their config has no LoRA: not as unipelt saved them")
    _check_lora_layout(names, tensors, dirs[0])
    return names, tensors, metas[0]


def _module_order(meta: dict):
    """A sort key putting tensor names in the order of the model's modules, in which peft draws
    DARE's masks (query before key): base_tensors lists the base weights in that order (format 1
    has none; there, and for the head, by name with layer numbers compared as numbers)."""
    place = {n.removesuffix(".weight"): i for i, n in enumerate(meta["base_model"].get("base_tensors", {}))}

    def key(name: str):
        by_name = [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split(".")]
        return place.get(name.split(".pelt_")[0], len(place)), by_name

    return key


def _check_lora_layout(names: list[str], tensors: list[dict], d: Path) -> None:
    """Each LoRA as a pair (1, d_in, r), (1, r, d_out): a checkpoint whose JSON checks out can still
    hold others (edited by hand), which would fail inside the merge or merge into one load refuses."""
    if not names:
        raise UniPeltError(f"{d} holds no tensors: nothing to merge")
    t = tensors[0]
    downs = {n.removesuffix(LORA_A) for n in names if n.endswith(LORA_A)}
    ups = {n.removesuffix(LORA_B) for n in names if n.endswith(LORA_B)}
    for path in sorted(downs | ups):
        down, up = t.get(path + LORA_A), t.get(path + LORA_B)
        if down is None or up is None or down.dim() != 3 or up.dim() != 3 or down.shape[2] != up.shape[1]:
            raise UniPeltError(f"{d} does not hold LoRA's (1, d_in, r) and (1, r, d_out) pair at {path}")


def _merge(names, tensors, weights, how, density, sign) -> dict[str, torch.Tensor]:
    merged, lora = {}, [n.removesuffix(LORA_A) for n in names if n.endswith(LORA_A)]
    for path in lora:  # in the order of the model's modules, as peft draws DARE's masks
        a = [t[path + LORA_A][0].T.float() for t in tensors]  # (r, d_in)
        b = [t[path + LORA_B][0].T.float() for t in tensors]  # (d_out, r)
        down, up = _merge_lora(a, b, weights, how, density, sign)
        merged[path + LORA_A], merged[path + LORA_B] = down.T[None], up.T[None]
    for n in names:
        if n.endswith(IA3):  # neutral at 1: the task vectors are l_i - 1
            merged[n] = 1 + sum(w * (t[n].float() - 1) for w, t in zip(weights, tensors))
        elif n not in merged:  # every other tensor (head, other methods): linear
            merged[n] = sum(w * t[n].float() for w, t in zip(weights, tensors))
    out = {n: merged[n].to(tensors[0][n].dtype).contiguous() for n in names}
    if bad := [n for n, t in out.items() if t.is_floating_point() and not bool(t.isfinite().all())]:
        raise UniPeltError(
            f"the merge is not finite in {out[bad[0]].dtype} at {bad[0]}: are the weights {weights} too large?"
        )
    return out


def _write(out: Path, tensors: dict, meta: dict, dirs, weights, how) -> Path:
    meta = {k: v for k, v in meta.items() if k != "sha256"}
    meta["merged_from"] = {"checkpoints": [str(d) for d in dirs], "weights": list(weights), "method": how}
    write_checkpoint(out, tensors, meta)
    return out
