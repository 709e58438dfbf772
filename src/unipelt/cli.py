"""``unipelt`` command line: train one run, sweep a grid, report a store, or run the demo.

A thin layer over ``unipelt.harness``: parse flags, call one function, print one line per
outcome. Bad input (a ``UniPeltError``) prints ``unipelt: error: …`` and exits 2 without a
traceback; a sweep or run that finished with failed runs exits 1.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import typing
from dataclasses import MISSING
from pathlib import Path

from safetensors import SafetensorError

from .errors import UniPeltError
from .serve.cli import add_parser as _add_serve
from .serve.cli import run as _serve

log = logging.getLogger("unipelt")
RUNS_STORE = ("train", "sweep", "demo")  # the commands an interrupt leaves resumable

# Small enough for a few minutes on 2 CPU cores: SST-2 has short sentences; 10 epochs, not 50.
DEMO = dict(
    tasks="sst2",
    presets="head-only,lora,adapter,unipelt-apl",  # head-only: the frozen backbone, what a method must beat
    k="100",
    data_seeds="111",
    epochs=10,
    store="runs/demo.sqlite",
    out="runs/demo-report",
)


def _verbosity(p: argparse.ArgumentParser, default) -> None:
    p.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", default=default, help="warnings only, no progress bars")


def _flag(p, f, *, swept: bool, defaults: dict) -> None:
    """The flag of RunSpec field ``f``: its type, help and default come from the field (or from
    ``defaults``, a verb's own, by dest); in a sweep a swept field takes a comma-separated list
    under its axis name (``--data-seeds``)."""
    from .harness.spec import TYPES

    meta, kind = f.metadata, TYPES[f.name]
    dest = meta["axis"] if swept and meta["axis"] else f.name
    names = [f"--{f.name.replace('_', '-')}"]
    if swept and meta["axis"]:
        names.insert(0, f"--{meta['axis'].replace('_', '-')}")
        kind = str
    if dest in defaults:
        text = re.sub(r" \(default[^)]*\)", "", meta["help"]) + f" (default {defaults[dest]})"
    else:
        shown = f.default in (MISSING, None, False) or "(default" in meta["help"]
        text = meta["help"] + ("" if shown else f" (default {f.default})")
    text = ("comma-separated: " if swept and meta["axis"] else "") + text
    options: dict = dict(default=None, help=text, dest=dest)
    if kind is bool:
        options["action"] = "store_true"
    elif typing.get_origin(kind) is typing.Literal:
        options["choices"] = typing.get_args(kind)
    elif kind in (int, float) or kind == float | None:  # an optional number: None is its default
        options["type"] = float if kind == float | None else kind
    p.add_argument(*dict.fromkeys(names), **options)


def _settings(p: argparse.ArgumentParser, *, swept: bool, skip: tuple[str, ...] = (), defaults=None) -> None:
    """Every RunSpec setting as a flag (argparse default None: the library's default, or the
    verb's own in ``defaults``, which its help then shows)."""
    from .harness.spec import SETTINGS

    _verbosity(p, argparse.SUPPRESS)  # also accepted after the subcommand
    for f in SETTINGS:
        if f.name not in skip:
            _flag(p, f, swept=swept, defaults=defaults or {})


def _add_train(sub, flags: bool = True) -> None:
    train = sub.add_parser("train", help="one run: train on K examples, select on dev, score on test")
    if not flags:
        return
    train.add_argument("--task", required=True, help="cola, sst2, mrpc, stsb, qqp, mnli, qnli or rte")
    method = train.add_mutually_exclusive_group(required=True)
    method.add_argument("--preset", help="a preset name, e.g. lora or unipelt-apl")
    method.add_argument("--config", help="a PeltConfig as a JSON or YAML file")
    train.add_argument("--store", default="runs/unipelt.sqlite", help="results store (SQLite; default %(default)s)")
    train.add_argument("--save", metavar="DIR", help="also save the trained PELT weights with unipelt.save")
    train.add_argument(
        "--label-names",
        metavar="A,B,...",
        help="the class names the --save checkpoint keeps, in label-value order (default: the task's, "
        "e.g. negative,positive for sst2)",
    )
    train.add_argument("--force", action="store_true", help="run even if the store holds this run as finished")
    _settings(train, swept=False, skip=("task",))


def _add_sweep(sub, flags: bool = True) -> None:
    sweep = sub.add_parser("sweep", help="a grid of runs, resumable; finished runs are skipped")
    if not flags:
        return
    sweep.add_argument("--grid", help="TOML or YAML file with the grid (flags override its values)")
    sweep.add_argument("--presets", help="comma-separated presets")
    sweep.add_argument("--configs", help="comma-separated PeltConfig files, swept like presets")
    sweep.add_argument("--store", default="runs/unipelt.sqlite", help="results store (SQLite; default %(default)s)")
    sweep.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    sweep.add_argument("--backend", choices=("local", "ray"), default="local", help="where runs execute")
    sweep.add_argument("--ray-address", help="Ray cluster address (default: running cluster, else local)")
    _settings(sweep, swept=True)


def _add_report_and_demo(sub, demo_flags: bool = True) -> None:
    report = sub.add_parser("report", help="tables and plots from a results store")
    report.add_argument("--store", default="runs/unipelt.sqlite", help="results store (SQLite; default %(default)s)")
    report.add_argument("--out", default="runs/report", help="output directory (report.md, report.html)")
    _verbosity(report, argparse.SUPPRESS)
    demo = sub.add_parser("demo", help="a small real sweep on the defaults, then its tables (a few minutes on CPU)")
    if not demo_flags:
        return
    demo.add_argument("--presets", default=DEMO["presets"], help="comma-separated presets (default %(default)s)")
    demo.add_argument("--store", default=DEMO["store"], help="results store (SQLite; default %(default)s)")
    demo.add_argument("--out", default=DEMO["out"], help="report directory (default %(default)s)")
    own = {k: v for k, v in DEMO.items() if k not in ("presets", "store", "out")}
    _settings(demo, swept=True, defaults=own)
    demo.set_defaults(**own)


def _add_merge(sub) -> None:
    merge = sub.add_parser("merge", help="combine saved checkpoints of one config and base into one (TIES, DARE, ...)")
    merge.add_argument("checkpoints", nargs="+", help="checkpoint directories (unipelt.save)")
    merge.add_argument("--weights", required=True, help="comma-separated, one per checkpoint, e.g. 0.5,0.5")
    merge.add_argument("--out", required=True, help="directory of the merged checkpoint")
    methods = "linear (default), ties, dare_linear, dare_ties; on LoRA's product: svd, ties_svd, dare_*_svd"
    merge.add_argument("--method", default="linear", help=methods + " (docs/migration.md)")
    merge.add_argument("--density", type=float, default=1.0, help="the fraction kept by TIES and DARE (default 1)")
    merge.add_argument("--majority-sign", default="total", choices=("total", "frequency"), help="TIES' sign election")
    merge.add_argument("--seed", type=int, default=None, help="seed of DARE's random masks")
    _verbosity(merge, argparse.SUPPRESS)


class _Parser(argparse.ArgumentParser):
    """argparse's parser, its refusals one line as every other (the usage is one --help away);
    subcommands' parsers are of the same class."""

    def error(self, message: str):
        self.exit(2, f"unipelt: error: {message} (see: {self.prog} --help)\n")


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand with its flags; given ``command``, the others only by name and help: the
    RunSpec settings' flags import RunSpec, and with it torch, which `unipelt --help` and a
    mistyped command need not wait for."""
    parser = _Parser(prog="unipelt", description="Parameter-efficient tuning experiments on GLUE.")
    _verbosity(parser, False)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub, command in (None, "train"))
    _add_sweep(sub, command in (None, "sweep"))
    _add_report_and_demo(sub, command in (None, "demo"))
    _add_merge(sub)
    _add_serve(sub)
    return parser


def _command(argv: list[str]) -> str:
    """The subcommand ``argv`` names ('' when none, as in `unipelt --help`): its first word that is
    not an option (the top-level options take no values)."""
    return next((a for a in argv if not a.startswith("-")), "")


def _given(args: argparse.Namespace) -> dict:
    """The RunSpec settings whose flags were given (argparse default None = the library's default)."""
    from .harness.spec import SETTINGS

    names = [(f.metadata["axis"] or f.name) if args.command != "train" else f.name for f in SETTINGS]
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _train(args: argparse.Namespace) -> int:
    from .harness import Store, make_spec, runner
    from .harness.paths import check_output_dir, inputs_of
    from .harness.store import check_store
    from .harness.sweep import preflight

    # every input and output is checked before the store is opened: a mistake changes nothing
    spec = make_spec(preset=args.preset, config_file=args.config, **_given(args))
    check_store(Path(args.store))
    if args.save is not None:
        check_output_dir(args.save, "--save directory", inputs_of([spec]), store=args.store)
    names = _label_names(args, spec)
    preflight([spec])
    with Store(args.store) as store:
        if not _claim(store, spec, args):
            return 0
        recorder = _Recorder(store) if runner.is_main_process() else None
        options = runner.RunOptions(progress=not args.quiet, save_dir=args.save, label_names=names, keep=recorder)
        record = runner.run(spec, options)
        if recorder is None:
            return 0
        recorder(record)  # a failed run is recorded now; a finished one was, before its save
        if recorder.error:
            return _unrecorded(spec, record, recorder.error, args)
        kept = store.result(spec.key) if recorder.written.kept_finished else None
    return _train_outcome(spec, record, recorder.written, kept, args.store, args.save)


def _label_names(args: argparse.Namespace, spec) -> tuple[str, ...] | None:
    """``--label-names``, checked against the task; it names a checkpoint's classes, so it needs ``--save``."""
    from .harness.errors import HarnessError
    from .harness.tasks import get_task, parse_label_names

    if args.label_names is None:
        return None
    if not args.save:
        raise HarnessError("--label-names names the classes of a saved checkpoint: give --save DIR too")
    return parse_label_names(get_task(spec.task), args.label_names)


class _Recorder:
    """Writes the run's attempt to the store once: a finished run as soon as its score exists,
    before the optional save can fail; a store that cannot be written leaves its message here."""

    def __init__(self, store):
        self.store, self.written, self.error = store, None, ""

    def __call__(self, record) -> None:
        if self.written is None and not self.error:
            try:
                self.written = self.store.write(record)
            except UniPeltError as e:
                self.error = str(e)


def _unrecorded(spec, record, error: str, args: argparse.Namespace) -> int:
    """One line for a run the store could not take: its outcome, and what was kept of it."""
    if record.status == "finished":
        outcome = f"finished with test {record.metric} {record.test_metric:.4f} (best epoch {record.best_epoch})"
    else:
        outcome = f"failed: {record.reason}"
    if args.save and record.status == "finished":
        outcome += (
            f"; saving its checkpoint failed too: {record.save_error}"
            if record.save_error
            else f"; its checkpoint is saved in {args.save}"
        )
    print(f"unipelt: error: {spec.label()} {outcome}; it is not recorded: {error}", file=sys.stderr)
    return 1


def _claim(store, spec, args: argparse.Namespace) -> bool:
    """Whether this process runs ``spec``: not when it is finished (without --force); an error
    when another process is training it now. Under accelerate only rank 0 claims."""
    from .harness import runner
    from .harness.errors import HarnessError

    if not runner.is_main_process():
        return args.force or store.finished_keys().isdisjoint(spec.keys)
    claim = store.claim(spec.key, force=args.force, older=spec.keys[1:])
    if claim.status == "finished":
        print(f"{spec.label()}: already finished in {args.store} (use --force to run it again)")
        return False
    if claim.status == "busy":
        raise HarnessError(
            f"{spec.label()} is being trained now by {claim.owner} (last heartbeat "
            f"{claim.age:.0f} s ago) on {args.store}; wait for it to finish"
        )
    return True


def _train_outcome(spec, record, written, kept, store_path: str, save_dir: str | None = None) -> int:
    if record.status == "failed":
        detail = (
            f"; the run's finished result (test {kept.metric} {kept.test_metric:.4f}, {kept.finished_at}) is kept"
            if kept is not None
            else ""
        )
        print(
            f"{spec.label()}: run failed: {record.reason} (attempt {written.attempt} recorded in {store_path}{detail})"
        )
        return 1
    print(
        f"{spec.label()}: test {record.metric} {record.test_metric:.4f} (best epoch {record.best_epoch} of "
        f"{len(record.epochs)}), {record.params.get('total', 0):,} trainable params, "
        f"{record.train_s_per_step:.3f} s/step, {record.infer_ex_per_s:.0f} ex/s -> {store_path}"
    )
    if record.save_error:
        print(
            f"unipelt: error: the run finished and is recorded, but saving it failed: {record.save_error}",
            file=sys.stderr,
        )
        return 1
    if save_dir:
        print(f"saved: {Path(save_dir).resolve()} (unipelt.load or MultiTask.add reads it)")
    return 0


def _sweep(args: argparse.Namespace, grid_file: str | None = None) -> int:
    from .harness import Store, make_grid, run_sweep
    from .harness.grid import describe
    from .harness.paths import check_output_dir, inputs_of
    from .harness.store import check_store
    from .harness.sweep import check_execution, preflight

    grid = make_grid(grid_file, presets=args.presets, configs=getattr(args, "configs", None), **_given(args))
    specs = grid.specs()
    check_execution(getattr(args, "workers", 1), getattr(args, "backend", "local"))
    check_store(Path(args.store))
    if getattr(args, "out", None) is not None:  # the demo reports afterwards
        check_output_dir(args.out, "--out directory", inputs_of(specs), store=args.store)
    preflight(specs)
    log.info("grid: %s = %d runs", describe(grid), len(specs))  # after the checks: an error is the only line
    with Store(args.store) as store:
        summary = run_sweep(
            specs,
            store,
            workers=getattr(args, "workers", 1),
            backend=getattr(args, "backend", "local"),
            ray_address=getattr(args, "ray_address", None),
            progress=not args.quiet,
        )
    kept = f" ({summary.kept} of them kept an earlier finished result)" if summary.kept else ""
    elsewhere = f", {summary.elsewhere} are being trained by another sweep" if summary.elsewhere else ""
    print(
        f"sweep: {summary.total} runs in the grid: {summary.skipped} were already finished, "
        f"{summary.finished} finished now, {summary.failed} failed{kept}{elsewhere} -> {args.store}"
    )
    return 1 if summary.failed else 0


def _report(args: argparse.Namespace) -> int:
    from .harness import Store, export, report
    from .harness.paths import check_output_dir

    check_output_dir(args.out, "--out directory")
    with Store(args.store, readonly=True) as store:
        try:
            built = report.build(store)
            runs = export.write_runs(store, Path(args.out) / "runs")  # peft's method-comparison layout
        except UniPeltError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as e:  # a row no unipelt wrote: edited, damaged
            raise UniPeltError(
                f"results store {args.store} holds a row that cannot be read ({type(e).__name__}: {e}); "
                "was it edited by hand?"
            ) from None
    out = report.write(built, args.out)
    print(f"report: {out / 'report.md'} and {out / 'report.html'}; {len(runs)} runs as JSON in {out / 'runs'}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from .merging import merge_checkpoints

    try:
        weights = [float(w) for w in args.weights.split(",")]
    except ValueError:
        raise UniPeltError(f"--weights must be comma-separated numbers, got {args.weights!r}") from None
    if not args.out.strip():  # Path("") is the current directory
        raise UniPeltError("--out is empty: give a directory")
    out = merge_checkpoints(
        args.checkpoints,
        weights,
        args.out,
        method=args.method,
        density=args.density,
        majority_sign=args.majority_sign,
        seed=args.seed,
    )
    print(f"merge: {len(args.checkpoints)} checkpoints ({args.method}) -> {out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .harness import Store, report

    args.workers, args.backend, args.ray_address = 1, "local", None
    status = _sweep(args)
    _report(args)
    with Store(args.store, readonly=True) as store:
        built = report.build(store)
    for table in built.tables:  # the accuracy table and the cost table
        if table.title.startswith(("Table 1", "Table 4")):
            print("\n" + report.table_text(table))
    return status


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="[%(name)s] %(message)s")
    from .offline import quiet_transformers  # the library's: `serve` does not load the harness

    quiet_transformers()


def main(argv: list[str] | None = None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else argv
        args = _parser(_command(argv)).parse_args(argv)
    except SystemExit as e:  # argparse has printed usage and its error; return instead of exiting
        return int(e.code or 0)
    _configure_logging(args)
    commands = {
        "train": _train,
        "sweep": lambda a: _sweep(a, a.grid),
        "report": _report,
        "demo": _demo,
        "merge": _merge,
        "serve": _serve,
    }
    try:
        return commands[args.command](args)
    except (UniPeltError, OSError, SafetensorError) as e:  # a file that vanished, filled a disk or is cut short
        print(f"unipelt: error: {str(e).replace(chr(10), ' ')}", file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt:
        resume = "; finished runs are saved, rerun the same command to resume" if args.command in RUNS_STORE else ""
        print(f"unipelt: interrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
