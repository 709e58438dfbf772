"""``apply``: turn a HF transformers model into a PELT model in place; ``merge`` and ``fold``
prepare it for deployment; ``disable``/``enable`` switch the added modules off and on;
``unload`` returns the plain base model. Injection reads the config, the method registry and the
architecture spec; it never mutates any of them.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import replace
from typing import Iterable, Iterator

import torch
from torch import nn
from transformers import PretrainedConfig

from . import heads
from .arch import spec_for
from .attention import pelt_attention_base, set_attention, unmark_position_passes, use_pelt_attention
from .blocks import Gate, LowRank, Scale
from .config import MethodConfig, PeltConfig
from .errors import UniPeltError
from .methods import METHODS, ModelContext, configured
from .methods.prefix import PrefixEncoder
from .participation import check_participation
from .placement import inject_layers
from .presets import get_preset
from .wrappers import Wrapper, hook_model, plain_path, replace_module, unhook_model

MARK = "pelt_"  # every added parameter's name contains it


def _as_config(preset_or_config) -> PeltConfig:
    if isinstance(preset_or_config, str):
        return get_preset(preset_or_config)
    if isinstance(preset_or_config, PeltConfig):
        return preset_or_config
    if isinstance(preset_or_config, MethodConfig):
        return PeltConfig(methods=(preset_or_config,))
    raise UniPeltError(
        f"apply() takes a preset name, a PeltConfig or a method config, not {type(preset_or_config).__name__}"
    )


class Undo:
    """What ``all_or_nothing`` puts back: every module's attributes (children, parameters,
    buffers, hooks, flags), every parameter's ``requires_grad``, the configs' attributes (the
    attention implementation), and the values of the parameters named with ``keep``."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = [(m, _attributes(m)) for m in model.modules()]
        self.flags = [(p, p.requires_grad) for p in model.parameters()]
        self.configs = [(c, _attributes(c)) for c in _configs(model)]
        self.values: list[tuple[torch.Tensor, torch.Tensor]] = []

    def keep(self, params: Iterable[torch.Tensor]) -> None:
        """Copy the values of those of ``params`` that the model had when the change began, to
        write back on failure: call it before overwriting them (parameters added since go anyway)."""
        known = {id(p) for p, _ in self.flags}
        self.values += [(p, p.detach().clone()) for p in params if id(p) in known]

    def restore(self) -> None:
        for owner, saved in self.modules + self.configs:
            _put_back(owner, saved)
        for p, flag in self.flags:
            p.requires_grad_(flag)
        with torch.no_grad():
            for p, value in self.values:
                p.copy_(value)


@contextlib.contextmanager
def all_or_nothing(model: nn.Module) -> Iterator[Undo]:
    """Run a change to ``model``; if it raises, ``model`` is put back as it was (``Undo``)."""
    undo = Undo(model)
    try:
        yield undo
    except BaseException:
        undo.restore()
        raise


def _attributes(owner) -> dict:
    """``owner``'s attributes, each dict (``_modules``, ``_parameters``, hooks) with its items:
    a dict is refilled in place on restore, so handles that point at it stay valid."""
    return {k: (v, dict(v)) if isinstance(v, dict) else (v, None) for k, v in vars(owner).items()}


def _put_back(owner, saved: dict) -> None:
    now = vars(owner)
    for key in [k for k in now if k not in saved]:
        del now[key]
    for key, (value, items) in saved.items():
        if items is not None:
            value.clear()
            value.update(items)
        now[key] = value


def _configs(model: nn.Module) -> list[PretrainedConfig]:
    """The model's configs and their nested ones (text_config, encoder/decoder configs)."""
    found: dict[int, PretrainedConfig] = {}
    todo = [getattr(m, "config", None) for m in model.modules()]
    while todo:
        c = todo.pop()
        if isinstance(c, PretrainedConfig) and id(c) not in found:
            found[id(c)] = c
            todo += [v for v in vars(c).values() if isinstance(v, PretrainedConfig)]
    return list(found.values())


def _place_like(model: nn.Module) -> None:
    """New modules follow the base model's device and floating dtype."""
    ref = next(p for n, p in model.named_parameters() if MARK not in n)
    for module in model.modules():
        if isinstance(module, (LowRank, Gate, Scale, PrefixEncoder)):
            module.to(device=ref.device, dtype=ref.dtype)


def _base_prefix(model: nn.Module) -> str:
    return "" if model.base_model is model else model.base_model_prefix + "."


def head_parameter_names(model: nn.Module) -> set[str]:
    """The task head: every parameter outside the base model (BERT's ``classifier``, Llama's
    ``score``, BART's and T5's ``classification_head``, RoBERTa's whole classification head).

    A language model's output embedding is not a task head: it is pretrained (often tied to the
    input embedding) and has vocabulary size, so causal and seq2seq LMs keep it frozen.
    """
    prefix = _base_prefix(model)
    if not prefix:
        return set()
    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    pretrained = {id(p) for p in lm_head.parameters()} if isinstance(lm_head, nn.Module) else set()
    return {
        n for n, p in model.named_parameters() if MARK not in n and id(p) not in pretrained and not n.startswith(prefix)
    }


def saved_module_names(model: nn.Module, cfg: PeltConfig) -> set[str]:
    """Parameters of the base-model modules named in ``cfg.modules_to_save``: paths in the base
    model as loaded, which the wrappers above a module (``.base_layer``) do not change."""
    prefix = _base_prefix(model)
    paths = tuple(f"{prefix}{m}." for m in cfg.modules_to_save)
    return {n for n, _ in model.named_parameters() if paths and MARK not in n and plain_path(n).startswith(paths)}


def _check_modules_to_save(base: nn.Module, cfg: PeltConfig) -> None:
    for path in cfg.modules_to_save:
        try:
            base.get_submodule(path)
        except AttributeError:
            children = ", ".join(name for name, _ in base.named_children())
            raise UniPeltError(
                f"modules_to_save names {path!r}, which the base model does not have; its modules are: {children}"
            ) from None


def _check_saved_modules_are_read(model: nn.Module, cfg: PeltConfig, spec) -> None:
    """A summary head replaces the pooler's output, so a pooler in ``modules_to_save`` would get
    no gradient and be counted, saved and served as trained while it stays as it was."""
    if cfg.head not in heads.SUMMARIES or heads.place_of(model, spec) != "pooler":
        return
    unread = [m for m in cfg.modules_to_save if m == "pooler" or m.startswith("pooler.")]
    if unread:
        raise UniPeltError(
            f"modules_to_save names {unread}, which the {cfg.head!r} head does not read (it replaces the "
            "pooler's output): drop them, or use head='pooler' to train the pooler"
        )


def trained_names(model: nn.Module, cfg: PeltConfig) -> set[str]:
    """The parameters ``cfg`` trains: unipelt's modules, the task head, ``modules_to_save`` and
    what a method's rule selects (BitFit's biases). Read from the config, not from
    ``requires_grad``, which a user may change after training (a model frozen for evaluation)."""
    rules = [m.trains for m, _ in configured(cfg) if m.trains is not None]
    train = head_parameter_names(model) | saved_module_names(model, cfg)
    return {n for n, _ in model.named_parameters() if MARK in n or n in train or any(rule(n) for rule in rules)}


def _set_trainable(model: nn.Module, cfg: PeltConfig) -> None:
    train = trained_names(model, cfg)
    for name, p in model.named_parameters():
        p.requires_grad_(name in train)


def apply(model: nn.Module, preset_or_config) -> nn.Module:
    """Inject the configured modules into ``model``, freeze its base weights, keep the head
    trainable; returns ``model``. ``preset_or_config``: a name in ``PRESETS`` or a config."""
    return applied(model, preset_or_config, new=True)


def applied(model: nn.Module, preset_or_config, *, new: bool) -> nn.Module:
    """``apply``; with ``new=False`` (a saved config, ``load``) what a new config is refused for
    but a checkpoint from before that refusal may hold is let through."""
    cfg = _as_config(preset_or_config)
    if getattr(model, "pelt_config", None) is not None:
        raise UniPeltError("this model already has unipelt modules; apply() to a fresh model")
    spec = spec_for(model)
    refuse_inference_weights(model)
    _check_modules_to_save(model.base_model, cfg)
    cfg = replace(cfg, head=heads.resolve(model, cfg.head))  # recorded as it ran, never "auto"
    heads.check(model, cfg.head, spec)
    if new:
        _check_saved_modules_are_read(model, cfg, spec)
    # under torch.inference_mode() too, the new parameters are ordinary tensors: they train later,
    # and the participation check needs their gradients
    with all_or_nothing(model), torch.inference_mode(False):  # a method refusing halfway leaves no module behind
        _inject(model, cfg, spec, new)
        check_participation(model)  # a module that transformers bypasses is an error (issue 28)
    return model


def refuse_inference_weights(model: nn.Module) -> None:
    """A model built under ``torch.inference_mode()`` holds inference tensors: autograd cannot
    read them, so unipelt cannot check its modules take part (nor can they train)."""
    if any(p.is_inference() for p in model.parameters()):
        raise UniPeltError(
            f"{type(model).__name__}'s weights were made under torch.inference_mode(), so nothing can train "
            "or be checked on them: build the model outside it (torch.no_grad() is fine), then apply or load"
        )


def _setup_and_place(ctx: ModelContext) -> Counter:
    """Every method's model-wide ``setup``, then its modules in every layer; returns the modules
    each method (by kind) added."""
    modules = lambda: sum(1 for _ in ctx.model.modules())  # noqa: E731
    added: Counter = Counter()
    for method, configs in configured(ctx.cfg):
        if method.setup is not None:
            before = modules()
            method.setup(ctx, configs)
            added[method.kind] += modules() - before
    added.update(inject_layers(ctx))
    return added


def _inject(model: nn.Module, cfg: PeltConfig, spec, new: bool) -> None:
    existing = set(model.modules())
    ctx = ModelContext(model=model, base=model.base_model, spec=spec, cfg=cfg, d=getattr(model.config, spec.hidden_key))
    added = _setup_and_place(ctx)
    idle = [configs for method, configs in configured(cfg) if method.modules and not added[method.kind]]
    if new and idle:  # a target or sublayer the model does not have: it would train nothing of it
        raise UniPeltError(
            f"{', '.join(map(repr, idle[0]))} matches no module of {type(model).__name__}: "
            "check its targets and the sublayers it names (attention, ffn, cross)"
        )
    head = head_parameter_names(model)
    base = [n for n, _ in model.named_parameters() if MARK not in n and n not in head]
    selects_none = [
        configs for method, configs in configured(cfg) if method.trains and not any(map(method.trains, base))
    ]
    if new and selects_none:
        raise UniPeltError(
            f"{', '.join(map(repr, selects_none[0]))} selects no weight of {type(model).__name__}'s base model, "
            "so it would train nothing there (BitFit: this model has no bias vectors)"
        )
    if ctx.attention_hook:
        use_pelt_attention(model, (ctx.prompt_length, ctx.prompt_at) if ctx.prompt_length else None)
    heads.attach(model, cfg.head, spec, prompt_at=ctx.prompt_at)
    hook_model(model)
    _place_like(model)
    _set_trainable(model, cfg)
    for module in model.modules():  # new modules follow the model: an eval model stays deterministic
        if module not in existing:
            module.train(model.training)
    model.pelt_config = cfg


def fold(model: nn.Module) -> nn.Module:
    """Replace the prefix reparameterisation network by the prefixes it produces."""
    require_pelt(model)
    prefix = getattr(model, "pelt_prefix", None)
    if prefix is not None:
        with exact_arithmetic(model):
            prefix.fold()
    return model


@contextlib.contextmanager
def exact_arithmetic(model: nn.Module) -> Iterator[None]:
    """What ``fold`` and ``merge`` compute becomes weights of the model: computed in the weights'
    own dtype whatever autocast the caller runs under (bf16 rounding would stay in an fp32 model),
    and as ordinary tensors under ``torch.inference_mode()`` (a parameter that is an inference
    tensor breaks every later forward pass, which reads its version counter)."""
    devices = {p.device.type for p in model.parameters()} - {"meta"}  # a model split across devices
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.no_grad())
        for device in sorted(d for d in devices if torch.is_autocast_enabled(d)):
            stack.enter_context(torch.autocast(device, enabled=False))
        yield


def _mergeable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Wrapper) and hasattr(m, "merge")]


def merge(model: nn.Module) -> nn.Module:
    """Fold every ungated LoRA and every (IA)³ vector into its base weight, and the prefix network
    into its output. Afterwards those wrappers are gone: they cost what the plain model costs."""
    require_pelt(model)
    found = _mergeable(model)
    if any(not m.pelt_active for m in _switches(model)):
        raise UniPeltError(
            "merge() inside disable(): the merged LoRA and (IA)³ would act while the other modules "
            "stay off; enable() first"
        )
    gated = [n for n, m in found if getattr(m, "pelt_gate", None) is not None]
    if gated:
        raise UniPeltError(f"gated LoRA cannot be merged (its scale depends on the input): {gated[:3]}...")
    with exact_arithmetic(model):
        for name, _ in sorted(found, key=lambda item: -item[0].count(".")):  # innermost first
            replace_module(model, name, lambda m: m.merge())
    if found:  # the base weights now hold the updates: disable() and save() refuse, saying why
        model.pelt_merged = True
    fold(model)
    return model


class _Switch:
    """``disable``/``enable`` act at once; used as a context manager, the previous state returns."""

    def __init__(self, model: nn.Module, active: bool):
        self.model, self.previous = model, _set_active(model, active)

    def __enter__(self) -> nn.Module:
        return self.model

    def __exit__(self, *exc) -> None:
        for module, state in self.previous:
            module.pelt_active = state


def _switches(model: nn.Module) -> list[nn.Module]:
    """The modules ``disable``/``enable`` turn off and on."""
    return [m for m in model.modules() if hasattr(type(m), "pelt_active")]


def require_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise UniPeltError(f"expected a transformers model, got {type(model).__name__}")


def require_pelt(model) -> None:
    """Refuse what is not a model with unipelt modules, saying which of the two it is not."""
    require_model(model)
    if getattr(model, "pelt_config", None) is None:
        raise UniPeltError("this model has no unipelt modules: apply() or load() first")


def _set_active(model: nn.Module, active: bool) -> list[tuple[nn.Module, bool]]:
    require_pelt(model)
    switches = _switches(model)
    previous = [(m, m.pelt_active) for m in switches]
    for m in switches:
        m.pelt_active = active
    return previous


def base_changed(model: nn.Module) -> str | None:
    """Why ``model``'s base weights may no longer be the pretrained ones, or None."""
    cfg: PeltConfig | None = getattr(model, "pelt_config", None)
    if cfg is None:
        return None
    if getattr(model, "pelt_merged", False):
        return "merge() folded its LoRA/(IA)³ into the base weights"
    head = head_parameter_names(model)
    base = [n for n, _ in model.named_parameters() if MARK not in n and n not in head]
    trained = [m.config.method for m, _ in configured(cfg) if m.trains is not None and any(map(m.trains, base))]
    if trained:
        return f"{' and '.join(trained)} trains the base model's own weights"
    return None


def disable(model: nn.Module) -> _Switch:
    """Run the frozen base model (and its task head) without the added modules, until ``enable``
    or the end of a ``with unipelt.disable(model):`` block. Nothing is removed or reloaded.
    ``modules_to_save`` (BERT's pooler) train with the head and stay, like it. Refused where the
    base weights themselves changed (BitFit, full fine-tuning, a merged model): switching modules
    off would not give the base model back."""
    if why := base_changed(model):
        raise UniPeltError(
            f"disable() cannot give this model's base model back: {why}, and no pretrained copy is "
            "kept; load the base model afresh to compare with it"
        )
    return _Switch(model, False)


def enable(model: nn.Module) -> _Switch:
    return _Switch(model, True)


def unload(model: nn.Module) -> nn.Module:
    """Remove every unipelt module and return the plain base model, without merging (peft's
    ``unload``); every parameter trains again, as in a freshly loaded model. Weights a method
    trained in the base model itself (BitFit's biases, full fine-tuning) stay as trained.
    Refused after ``merge``: the base weights hold the updates and no pretrained copy is kept
    (peft's ``unload`` returns the merged weights there, silently)."""
    require_pelt(model)
    if getattr(model, "pelt_merged", False):
        raise UniPeltError(
            "unload() cannot give the base model back after merge(): its weights hold the LoRA/(IA)³ "
            "updates; merge_and_unload() keeps them in a plain model, or load the base model afresh"
        )
    return _strip(model)


def _strip(model: nn.Module) -> nn.Module:
    while wrapped := next((n for n, m in model.named_modules() if isinstance(m, Wrapper)), None):
        replace_module(model, wrapped, lambda m: m.base_layer)
    for name in ("pelt_prompt", "pelt_prefix"):  # their hooks on the base model
        module = getattr(model, name, None)
        if module is not None and hasattr(module, "remove"):
            module.remove()
    heads.detach(model)
    unhook_model(model)
    unmark_position_passes(model)
    for name in ("pelt_prefix", "pelt_prompt", "pelt_config", "pelt_merged"):
        if hasattr(model, name):
            delattr(model, name)
    set_attention(model, pelt_attention_base(model.config._attn_implementation))
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """``merge``, then ``unload``: the plain model with LoRA and (IA)³ folded in (peft's name).
    Refused when other modules (adapters, prefixes, prompts, gates) would be lost."""
    require_pelt(model)
    kept = {
        type(m).__name__
        for m in model.modules()
        if any(isinstance(m, meth.modules) for meth in METHODS.values()) and not hasattr(m, "merge")
    }
    if kept:
        raise UniPeltError(
            f"merge_and_unload folds LoRA and (IA)³ only; this model also has {sorted(kept)}, "
            "which would be lost: use merge() to fold what can be folded"
        )
    head = getattr(model.pelt_config, "head", None) if getattr(model, "pelt_config", None) else None
    if head in heads.SUMMARIES:
        raise UniPeltError(
            f"merge_and_unload: the task head reads the {head!r} summary, which a plain transformers "
            "model does not compute (its own head would read another): use merge() to fold LoRA and (IA)³"
        )
    return _strip(merge(model))


def zero_deltas(model: nn.Module) -> None:
    """Switch every module that can be switched off to Δh = 0 (a test helper): up-projections
    zero, (IA)³ vectors one, interpolations' λ zero. Prefixes have no such state."""
    for module in model.modules():
        if hasattr(module, "switch_off"):
            module.switch_off()
