"""One run of the protocol (SPEC §3-4) with HF ``Trainer``: train on K examples, pick the epoch
with the best dev score, report the test score and the run's costs.

``Trainer`` is used so ``accelerate launch`` scales a run without code here; only the rank-0
process records results (see ``is_main_process``).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import partial
from typing import Callable

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    ProgressCallback,
    Trainer,
    TrainingArguments,
    set_seed,
)

from .. import apply, count_parameters, fold, gate_values, save
from ..checkpoint import dry_apply
from ..compiling import compile as compile_model
from ..errors import UniPeltError
from ..inject import head_parameter_names  # the head count_parameters reports: one definition
from ..offline import quiet_transformers  # noqa: F401  (sweep workers and Ray tasks call runner.quiet_transformers)
from .callbacks import BestOnDev, RunFailed, RunProgress, StepTimer
from .data import Splits, load_splits
from .errors import HarnessError
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
    # the names the saved checkpoint gives the classes (default: the task's own, e.g. negative/positive)
    label_names: tuple[str, ...] | None = None
    # called with a finished run's record before the optional save: the score is kept first
    keep: Callable[[RunRecord], None] | None = None


def is_main_process() -> bool:
    """Rank 0 under ``accelerate launch``/torchrun (they set RANK), or a plain process."""
    return os.environ.get("RANK", "0") == "0"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _model_class(spec: RunSpec, task: Task) -> tuple[type, dict]:
    """The model class a run trains and the config settings it gives it. The generate objective
    keeps the model's LM head."""
    if spec.objective == "generate":
        return AutoModelForCausalLM, {}
    labels = (
        {}
        if task.is_regression
        else {"id2label": dict(enumerate(task.label_names)), "label2id": _label2id(task.label_names)}
    )
    problem = "regression" if task.is_regression else "single_label_classification"
    return AutoModelForSequenceClassification, {"num_labels": task.num_labels, "problem_type": problem, **labels}


def load_model(spec: RunSpec, task: Task):
    """Tokenizer and model with the spec's PELT config applied; seeded so the head and the PELT
    modules start the same for every method."""
    path = model_path(spec.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    set_seed(spec.model_seed)
    cls, settings = _model_class(spec, task)
    # a checkpoint with another task's head of another size: transformers draws a fresh one
    model, info = cls.from_pretrained(
        path, **settings, **({"ignore_mismatched_sizes": True} if settings else {}), output_loading_info=True
    )
    if settings:
        _fresh_head(model, info)
    if tokenizer.pad_token is None:  # decoder tokenizers: pad with eos, as HF's examples do
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # the head finds each sequence's last token
    model = apply(model, spec.config)
    if spec.bf16:
        _head_in_float32(model)
    return tokenizer, compile_model(model) if spec.compile else model


def _fresh_head(model, info: dict) -> None:
    """A head the checkpoint held at the task's size (a model fine-tuned on another task with as
    many labels: SST-2's for RTE) is drawn afresh too, as transformers draws a missing one, from
    the run's model seed: every run starts from an untrained head, as the protocol has it."""
    drawn = set(info["missing_keys"]) | {m if isinstance(m, str) else m[0] for m in info["mismatched_keys"]}
    head = head_parameter_names(model)
    loaded = sorted(n for n in head if n not in drawn)
    if not loaded:
        return
    for name, p in model.named_parameters():
        p._is_hf_initialized = name not in head  # transformers' init draws only what is not flagged
    # every module the head is made of, deepest first, then the model: an architecture sets its
    # head's scale in a branch for the head's class (T5) or the model's (ModernBERT)
    modules = {n.rpartition(".")[0] for n in head} | {n.split(".")[0] for n in head}
    for name in sorted(modules, key=lambda n: -n.count(".")):
        model._init_weights(model.get_submodule(name))
    model._init_weights(model)
    log.info("the model's own head (%s) is drawn afresh for the task", ", ".join(loaded))


def _head_in_float32(model) -> None:
    """Under ``--bf16`` the task head's output is computed in float32 (``Float32Head``)."""
    for name in sorted({n.split(".")[0] for n in head_parameter_names(model)}):
        model.get_submodule(name).register_forward_hook(Float32Head(), with_kwargs=True)


class Float32Head:
    """A forward hook that computes the module's output again in float32, whatever autocast
    accelerate wraps the model's forward in: a regression head's bf16 output comes in steps of
    1/64 near STS-B's labels (the test's Spearman ranks ties), and a classifier's close logits
    tie. The head is a GEMM or two; the bf16 output is dropped (and from a compiled graph). A hook,
    not a patched forward: a copy (deepcopy, a DataParallel replica) runs its own weights."""

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict, output):
        inputs = [t for t in (*args, *kwargs.values()) if torch.is_tensor(t)]
        device = inputs[0].device.type if inputs else "cpu"
        if not torch.is_autocast_enabled(device):
            return output
        cast = lambda t: t.float() if torch.is_tensor(t) and t.is_floating_point() else t  # noqa: E731
        with torch.autocast(device, enabled=False):
            return type(module).forward(module, *map(cast, args), **{k: cast(v) for k, v in kwargs.items()})


def dry_run(spec: RunSpec, task: Task) -> None:
    """``load_model``'s model built from its config on the meta device, and the spec's config
    applied: what ``apply`` refuses (a head the model lacks, one the objective contradicts), a
    config too large for any memory, or a run that would train nothing, is found before any run
    starts and costs no memory. A model that cannot be built on the meta device is left to the run."""
    cls, settings = _model_class(spec, task)
    try:
        config = AutoConfig.from_pretrained(model_path(spec.model), **settings)
        with torch.device("meta"):
            model = cls.from_config(config)
    except Exception:  # noqa: BLE001 - see above: the run itself says what is wrong
        log.debug("%s: no dry run on the meta device", spec.label(), exc_info=True)
        return
    try:
        applied = dry_apply(model, spec.config, "the config", on_meta=True)
    except UniPeltError as e:
        raise HarnessError(f"{spec.label()}: {e}") from None
    if not any(p.requires_grad for p in applied.parameters()):
        raise HarnessError(
            f"{spec.label()}: the config trains no parameter of this model with --objective {spec.objective}"
        )


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


PROTOCOL_DECAY = 0.01  # AdamW's default, on every trainable parameter (see create_optimizer)


class ProtocolTrainer(Trainer):
    """``Trainer`` whose evaluation is the objective's score; it reaches the callbacks
    (``BestOnDev``) as ``eval_score``. The objective pads the training batches too."""

    def __init__(self, *args, objective: Objective, head_lr: float | None = None, **kwargs):
        super().__init__(*args, data_collator=partial(objective.collate, train=True), **kwargs)
        self.objective, self.head_lr = objective, head_lr

    def create_optimizer(self, model=None):
        """The task head in its own group at ``head_lr``; the method's modules keep the paper's rate."""
        if self.optimizer is None and self.head_lr is not None:
            target = self.model if model is None else model
            named = [(n, p) for n, p in target.named_parameters() if p.requires_grad]
            head = head_parameter_names(target)
            # weight decay 0.01 on every group, said here: it is what torch's AdamW does when the
            # groups name none, and every stored run of the protocol trained with it
            groups = [
                {"params": [p for n, p in named if n not in head], "weight_decay": PROTOCOL_DECAY},
                {"params": [p for n, p in named if n in head], "lr": self.head_lr, "weight_decay": PROTOCOL_DECAY},
            ]
            kind, options = self.get_optimizer_cls_and_kwargs(self.args, target)
            self.optimizer = kind([g for g in groups if g["params"]], **options)
        return super().create_optimizer(model)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        metrics = {f"{metric_key_prefix}_score": self.objective.score(self, dataset)}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


@torch.no_grad()
def start_at_label_mean(model, labels) -> None:
    """A regression head starts at the training rows' label mean: its first steps then learn the
    signal, not the offset (a zero start on STS-B's 0-5 scale is a loss of about 7)."""
    head = head_parameter_names(model)
    outputs = [
        m
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m.out_features == 1 and f"{n}.bias" in head
    ]
    if outputs:
        outputs[-1].bias.fill_(float(np.mean(labels)))


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
    log.info("%s: head %s, head learning rate %s", spec.label(), model.pelt_config.head, spec.head_lr or spec.lr)
    objective = objective_of(spec, task, tokenizer)
    if task.is_regression and spec.objective == "classify":
        start_at_label_mean(model, splits.train["label"].astype(float))
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
            head_lr=spec.head_lr,
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
        _check_scores(best, test_metric)
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
    if options.keep is not None:
        options.keep(record)
    if options.save_dir and is_main_process():
        # serving takes the same kind of input, cut to the same length, as training did
        shape = {"pairs": task.text_b is not None, "max_length": spec.max_length}
        return _save(_named(model, options.label_names), options.save_dir, record, shape)
    return record


def _check_scores(best: BestOnDev, test_metric: float) -> None:
    """A NaN score is a failed run, not a result: SQLite would store it as NULL and a report's
    mean would silently leave that seed out."""
    if best.best_epoch is None:
        scores = ", ".join(f"{e.dev_metric}" for e in best.epochs) or "none"
        raise RunFailed(f"no epoch has a dev score (dev scores: {scores})")
    if not math.isfinite(test_metric):
        raise RunFailed(f"the test score is {test_metric}")


def _label2id(names) -> dict[str, int]:
    return {name: i for i, name in enumerate(names)}


def _named(model, names: tuple[str, ...] | None):
    """``model`` with its classes called ``names`` (the checkpoint keeps a config's id2label)."""
    if names:
        model.config.id2label, model.config.label2id = dict(enumerate(names)), _label2id(names)
    return model


def _save(model, directory: str, record: RunRecord, shape: dict) -> RunRecord:
    """Save the trained weights; a failure here does not undo the finished run, it is reported.
    Any error counts (a full disk raises SafetensorError from safetensors' writer): the run's score
    is already kept, and saving is optional."""
    try:
        save(model, directory, **shape)
    except Exception as e:
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
