"""One run of the protocol (SPEC §3-4) with HF ``Trainer``: train on K examples, pick the epoch
with the best dev score, report the test score and the run's costs.

``Trainer`` is used so ``accelerate launch`` scales a run without code here; only the rank-0
process records results (see ``is_main_process``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import partial

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    ProgressCallback,
    Trainer,
    TrainingArguments,
    set_seed,
)

from .. import UniPeltError, apply, count_parameters, fold, gate_values, save
from .callbacks import BestOnDev, RunFailed, RunProgress, StepTimer
from .data import Splits, load_splits
from .generative import Generate
from .models import model_path
from .objective import Classify, Objective
from .record import RunRecord, versions
from .spec import RunSpec
from .tasks import Task, get_task

log = logging.getLogger(__name__)

DIVERGED = 10.0  # a final training loss this many times the starting one: the run diverged
GATE_EXAMPLES = 256  # dev examples averaged for the gate report: enough for a stable mean
EVAL_BATCH = 64  # evaluation batches are length-grouped, so a larger batch pads little


@dataclass(frozen=True)
class RunOptions:
    """How to run, not what: none of it changes the result."""

    progress: bool = True
    progress_position: int = 0
    save_dir: str | None = None


def is_main_process() -> bool:
    """Rank 0 under ``accelerate launch``/torchrun (they set RANK), or a plain process."""
    return os.environ.get("RANK", "0") == "0"


def quiet_transformers() -> None:
    """Silence what every run would repeat: the "newly initialized" head warning (expected: the
    head is trained) and the weight-loading bars."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_model(spec: RunSpec, task: Task):
    """Tokenizer and model with the spec's PELT config applied; seeded so the head and the PELT
    modules start the same for every method. The generate objective keeps the model's LM head."""
    path = model_path(spec.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    set_seed(spec.model_seed)
    if spec.objective == "generate":
        model = AutoModelForCausalLM.from_pretrained(path)
    else:
        labels = (
            {}
            if task.is_regression
            else {"id2label": dict(enumerate(task.labels)), "label2id": {l: i for i, l in enumerate(task.labels)}}
        )
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=task.num_labels,
            problem_type="regression" if task.is_regression else "single_label_classification",
            ignore_mismatched_sizes=True,  # a checkpoint with another task's head: that head is re-initialised
            **labels,
        )
    if tokenizer.pad_token is None:  # decoder tokenizers: pad with eos, as HF's examples do
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # the head finds each sequence's last token
    return tokenizer, apply(model, spec.config)


def _arguments(spec: RunSpec, output_dir: str) -> TrainingArguments:
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=EVAL_BATCH,
        num_train_epochs=spec.epochs,
        learning_rate=spec.lr,
        eval_strategy="epoch",
        logging_strategy="epoch",
        save_strategy="no",
        report_to="none",
        logging_first_step=True,  # the loss before any update: what divergence is measured against
        seed=spec.model_seed,
        logging_nan_inf_filter=False,  # a NaN loss must fail the run, not vanish
        dataloader_pin_memory=torch.cuda.is_available(),
        bf16=spec.bf16,  # autocast; the weights stay float32
        # no GPU: say so, or Trainer refuses bf16 and, under accelerate launch, trains each process alone
        use_cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
        disable_tqdm=False,
    )  # True would add PrinterCallback; the bar is replaced below instead


class ProtocolTrainer(Trainer):
    """``Trainer`` whose evaluation is the objective's score; it reaches the callbacks
    (``BestOnDev``) as ``eval_score``. The objective pads the training batches too."""

    def __init__(self, *args, objective: Objective, **kwargs):
        super().__init__(*args, data_collator=partial(objective.collate, train=True), **kwargs)
        self.objective = objective

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        metrics = {f"{metric_key_prefix}_score": self.objective.score(self, dataset)}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def objective_of(spec: RunSpec, task: Task, tokenizer) -> Objective:
    return (Generate if spec.objective == "generate" else Classify)(task, tokenizer, spec.max_length)


def _gates(model, dev: list[dict], objective: Objective) -> dict[int, dict[str, float]]:
    """Per-layer mean gate values over GATE_EXAMPLES dev examples, spread evenly over the
    length-sorted dev set so short and long inputs both count."""
    picked = np.unique(np.linspace(0, len(dev) - 1, min(len(dev), GATE_EXAMPLES)).astype(int))
    sums: dict[int, dict[str, float]] = {}
    for start in range(0, len(picked), EVAL_BATCH):
        batch = objective.collate([dev[int(i)] for i in picked[start : start + EVAL_BATCH]], train=False)
        batch = {k: v.to(model.device) for k, v in batch.items() if k != "labels"}
        n = len(batch["input_ids"])
        for layer, values in gate_values(model, batch).items():
            for name, v in values.items():
                sums.setdefault(layer, {}).setdefault(name, 0.0)
                sums[layer][name] += v * n / len(picked)
    return sums


def _train(spec: RunSpec, task: Task, splits: Splits, options: RunOptions, started: str) -> RunRecord:
    tokenizer, model = load_model(spec, task)
    objective = objective_of(spec, task, tokenizer)
    train = objective.encode(splits.train, train=True)
    dev, test = (objective.encode(s, train=False) for s in (splits.dev, splits.test))
    best, timer = BestOnDev(spec.patience), StepTimer()
    progress = RunProgress(spec.label(), options.progress_position, options.progress)
    with tempfile.TemporaryDirectory(prefix="unipelt-run-") as tmp:
        trainer = ProtocolTrainer(
            model=model,
            args=_arguments(spec, tmp),
            train_dataset=train,
            eval_dataset=dev,
            objective=objective,
            callbacks=[best, timer, progress],
        )
        trainer.remove_callback(ProgressCallback)
        trainer.train()
        if reason := best.divergence(DIVERGED):
            raise RunFailed(reason)
        best.restore(model)
        params = count_parameters(model)  # before folding: "total" includes the prefix network
        fold(model)  # inference runs as deployed: the prefix network replaced by its output
        start = time.perf_counter()
        test_metric = objective.score(trainer, test)
        infer_seconds = time.perf_counter() - start
    model.eval()
    record = RunRecord(
        spec=spec,
        status="finished",
        metric=task.metric,
        epochs=tuple(best.epochs),
        best_epoch=best.best_epoch,
        dev_metric=best.best,
        test_metric=test_metric,
        test_source=splits.test_source,
        sizes={"train": len(train), "dev": len(dev), "test": len(test)},
        params=params,
        train_s_per_step=timer.per_step,
        infer_ex_per_s=len(test) / infer_seconds,
        gates=_gates(model, dev, objective) if spec.config.gated else {},
        versions=versions(),
        started_at=started,
        finished_at=_now(),
    )
    return _save(model, options.save_dir, record) if options.save_dir and is_main_process() else record


def _save(model, directory: str, record: RunRecord) -> RunRecord:
    """Save the trained weights; a failure here does not undo the finished run, it is reported."""
    try:
        save(model, directory)
    except (OSError, UniPeltError) as e:
        log.error("%s: saving the checkpoint to %s failed: %s", record.spec.label(), directory, e)
        return replace(record, save_error=f"{type(e).__name__}: {e}")
    return record


def failed_record(spec: RunSpec, reason: str, started: str | None = None) -> RunRecord:
    return RunRecord(
        spec=spec,
        status="failed",
        reason=reason,
        metric=get_task(spec.task).metric,
        versions=versions(),
        started_at=started or _now(),
        finished_at=_now(),
    )


def run(spec: RunSpec, options: RunOptions = RunOptions()) -> RunRecord:
    """Train and evaluate ``spec``. Any failure during training becomes a ``failed`` record with
    its reason, so a sweep goes on; Ctrl-C is not a failure and propagates."""
    started = _now()
    task = get_task(spec.task)
    try:
        splits = load_splits(task, spec.k, spec.data_seed, dev_size=spec.dev_size, glue_dir=spec.glue_dir)
        record = _train(spec, task, splits, options, started)
    except RunFailed as e:
        record = failed_record(spec, str(e), started)
    except Exception as e:  # the run's outcome, recorded; the traceback goes to the log
        log.debug("run %s failed:\n%s", spec.label(), traceback.format_exc())
        record = failed_record(spec, f"{type(e).__name__}: {e}".splitlines()[0], started)
    if record.status == "failed":
        log.warning("%s failed: %s", spec.label(), record.reason)
    else:
        log.info(
            "%s: test %s %.4f (best epoch %s of %d)",
            spec.label(),
            record.metric,
            record.test_metric,
            record.best_epoch,
            len(record.epochs),
        )
    return record
