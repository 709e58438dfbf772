"""Proof that every injected module takes part in the forward pass (issue 28).

A hook that transformers stops calling fails silently: under transformers 5.17 T5's stacks kept
their stock attention, the prefix keys never reached it, and the model trained on without them.
``check_participation`` runs one forward pass on a 2-token batch, records the output of every
unipelt module that runs, and asks autograd which of those outputs, and which added parameters,
the model's output depends on. Dependence is structural (a gradient of None, not a numerical
zero), so zero-initialised up-projections and closed gates still count as taking part.

The model is left as it was: eval mode during the pass, training flags, ``requires_grad`` and
``.grad`` restored or untouched; no cache is built.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch
import transformers
from torch import nn

from .errors import UniPeltError

MARK = "pelt_"  # inject.MARK: every added parameter's name contains it
SHOWN = 5  # modules named in the error


def _tensors(out) -> list[torch.Tensor]:
    """The tensors that require grad in a module's output (tensor, tuple, NamedTuple, dict)."""
    if isinstance(out, torch.Tensor):
        return [out] if out.requires_grad else []
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _tensors(item)]
    return []


def probe_inputs(model: nn.Module) -> dict:
    """[token, eos]: classifiers that read the eos (BART, T5) find one; encoder-decoders get the
    same two tokens as decoder input."""
    cfg = model.config
    eos = cfg.eos_token_id[0] if isinstance(cfg.eos_token_id, (list, tuple)) else cfg.eos_token_id
    special = {getattr(cfg, k, None) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    token = next(i for i in range(cfg.vocab_size) if i not in special)
    device = model.get_input_embeddings().weight.device
    ids = torch.tensor([[token, eos if isinstance(eos, int) else token]], device=device)  # (1, 2)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    accepted = inspect.signature(model.forward).parameters
    if getattr(cfg, "is_encoder_decoder", False) and "decoder_input_ids" in accepted:
        inputs["decoder_input_ids"] = ids
    if "use_cache" in accepted:
        inputs["use_cache"] = False
    return inputs


@contextmanager
def _probing(model: nn.Module, params: list[nn.Parameter]):
    """Eval mode and gradients on for the added parameters, for the pass only."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in params]
    model.eval()
    try:
        # eagerly: a compiled forward's graph hides the hooks' outputs from autograd.grad
        with torch.inference_mode(False), torch.enable_grad(), torch.compiler.set_stance("force_eager"):
            for p in params:
                p.requires_grad_(True)
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def _ours(module: nn.Module) -> bool:
    return type(module).__module__.startswith("unipelt.")


def idle_modules(model: nn.Module) -> list[str]:
    """The unipelt modules whose parameters or outputs the model's output does not depend on."""
    named = [(n, p) for n, p in model.named_parameters() if MARK in n]
    if not named:
        return []  # nothing added (BitFit, full fine-tuning)
    outputs: dict[str, list[torch.Tensor]] = {}
    record = lambda name: lambda m, args, out: outputs.setdefault(name, []).extend(_tensors(out))
    hooks = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if _ours(m)]
    try:
        with _probing(model, [p for _, p in named]):
            out = model(**probe_inputs(model))
            tensors = _tensors(out.to_tuple() if hasattr(out, "to_tuple") else out)
            if not tensors:  # nothing in the output depends on anything that trains
                return sorted({n.rpartition(".")[0] for n, _ in named} | {n for n, ts in outputs.items() if ts})
            probed = [p for _, p in named] + [t for ts in outputs.values() for t in ts]
            loss = sum(t.float().sum() for t in tensors)
            grads = iter(torch.autograd.grad(loss, probed, allow_unused=True))
    finally:
        for h in hooks:
            h.remove()
    idle = {n.rpartition(".")[0] for n, _ in named if next(grads) is None}
    for name, ts in outputs.items():
        if ts and all([next(grads) is None for _ in ts]):  # a list: every gradient is consumed
            idle.add(name)
    return sorted(idle)


def check_participation(model: nn.Module, after: str = "apply") -> None:
    """Raise ``UniPeltError`` naming every added module that takes no part in ``model``'s forward
    pass; ``after`` says which call (apply, load, MultiTask.add) is checking."""
    if any(p.is_meta for p in model.parameters()):
        return  # a dry run on the meta device (checkpoint.py)
    idle = idle_modules(model)
    if idle:
        shown = ", ".join(idle[:SHOWN]) + (f" and {len(idle) - SHOWN} more" if len(idle) > SHOWN else "")
        raise UniPeltError(
            f"after {after}(): {shown} take no part in the forward pass of {type(model).__name__} "
            f"(transformers {transformers.__version__}, attention {model.config._attn_implementation!r}): "
            "this transformers version bypasses unipelt's hook there; README.md lists the tested versions"
        )
