"""Trainer callbacks for the protocol: per-epoch dev selection with early stopping that keeps the
best trainable weights in memory (no checkpoint written per epoch), step timing, a progress bar."""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from .record import EpochLog


class RunFailed(RuntimeError):
    """Training went wrong in a way that is the run's result, not a bug (e.g. NaN loss)."""


class BestOnDev(TrainerCallback):
    """Early stopping on the dev metric (UniPELT App. B: patience 10).

    HF's EarlyStoppingCallback needs ``load_best_model_at_end``, which writes a full checkpoint
    every epoch; here only the parameters that train (adapters, gates, head…) are copied.
    """

    def __init__(self, patience: int):
        self.patience = patience
        self.epochs: list[EpochLog] = []
        self.best: float = -math.inf
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] = {}
        self.first_loss: float | None = None  # the first step's, before any update (logging_first_step)
        self._loss = math.nan
        self._bad = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self._loss = float(logs["loss"])
            if self.first_loss is None:
                self.first_loss = self._loss
            if not math.isfinite(self._loss):
                raise RunFailed(f"training loss is {self._loss} at epoch {round(state.epoch or 0)}")

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        epoch = round(state.epoch or 0)
        score = float(metrics["eval_score"])
        self.epochs.append(EpochLog(epoch=epoch, train_loss=self._loss, dev_metric=score))
        if score > self.best:
            self.best, self.best_epoch, self._bad = score, epoch, 0
            self.best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        else:
            self._bad += 1
            control.should_training_stop = self._bad >= self.patience

    def divergence(self, factor: float) -> str | None:
        """Why the losses say training diverged: the last epoch's is not finite, or ``factor``
        times what training started from (the first step's loss or the first epoch's, the lower)."""
        if not self.epochs:
            return None
        last, first = self.epochs[-1], self.epochs[0].train_loss
        start = min(first, self.first_loss) if self.first_loss is not None else first
        if not math.isfinite(last.train_loss):
            return f"diverged: training loss is {last.train_loss} at epoch {last.epoch}"
        if last.train_loss > factor * max(start, 0.01):  # near zero, a tenfold rise is noise, not divergence
            return (
                f"diverged: training loss rose from {start:.4g} at the start (epoch 1: {first:.4g}) "
                f"to {last.train_loss:.4g} at epoch {last.epoch}, over {factor:g}x"
            )
        return None

    @torch.no_grad()
    def restore(self, model: torch.nn.Module) -> None:
        params = dict(model.named_parameters())
        for name, value in self.best_state.items():
            params[name].copy_(value)


class StepTimer(TrainerCallback):
    """Seconds per optimizer step, excluding the per-epoch evaluation that Trainer's
    ``train_runtime`` includes."""

    def __init__(self):
        self.seconds = 0.0
        self.steps = 0
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds += time.perf_counter() - self._start
        self.steps += 1

    @property
    def per_step(self) -> float | None:
        return self.seconds / self.steps if self.steps else None


class RunProgress(TrainerCallback):
    """One tqdm bar per run (steps), with the epoch's loss and dev score; replaces Trainer's
    ProgressCallback, which prints every log dict and a bar per evaluation."""

    def __init__(self, desc: str, position: int = 0, enabled: bool = True):
        self.desc, self.position, self.enabled = desc, position, enabled
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.enabled and state.is_world_process_zero:
            self.bar = tqdm(
                total=state.max_steps,
                desc=self.desc,
                position=self.position,
                leave=False,
                dynamic_ncols=True,
                unit="step",
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.bar is not None and metrics and "eval_score" in metrics:
            self.bar.set_postfix(epoch=round(state.epoch or 0), dev=f"{metrics['eval_score']:.3f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
