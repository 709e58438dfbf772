"""``unipelt serve``: its flags and the command. Imported by ``unipelt.cli`` for the parser;
FastAPI, uvicorn and Ray are imported only when the command runs."""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path

from ..errors import UniPeltError

TOKEN_ENV = "UNIPELT_ADMIN_TOKEN"


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="an HTTP server for many tasks on one backbone (docs/serving.md)")
    p.add_argument("--model", help="local Hugging Face model directory (default: the offline all-MiniLM-L6-v2)")
    p.add_argument(
        "--task",
        action="append",
        required=True,
        metavar="NAME=DIR[:pairs]",
        help="a task to serve from a unipelt.save checkpoint; ':pairs' if it takes sentence pairs "
        "(repeat for more tasks)",
    )
    p.add_argument(
        "--tasks-dir",
        help="where POST /v1/tasks/{name} may load checkpoints from "
        "(default: the --task directories' parent, if they share one)",
    )
    p.add_argument("--host", default="127.0.0.1", help="loopback address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--max-batch", type=int, default=64, help="rows per model batch, all tasks together (default 64)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill (default 5)")
    p.add_argument(
        "--max-length",
        type=int,
        help="tokens per input, at most; longer ones are truncated (default: the length each checkpoint "
        "was trained at, else the model's limit up to 2048)",
    )
    p.add_argument("--max-inputs", type=int, default=256, help="inputs per request (default 256)")
    p.add_argument(
        "--max-tasks", type=int, default=64, help="tasks served at once, --task and loaded ones together (default 64)"
    )
    p.add_argument("--max-body-kb", type=int, default=1024, help="request body limit in KiB (default 1024)")
    p.add_argument("--request-timeout", type=float, default=60.0, help="seconds a request may wait (default 60)")
    p.add_argument(
        "--admin-token",
        help=f"enables POST/DELETE /v1/tasks/{{name}} (better: ${TOKEN_ENV}, which "
        "other users cannot see in the process list)",
    )
    p.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="one uvicorn process (default), or a Ray Serve deployment",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="run the shared model under torch.compile (unipelt.compile; pays off on a GPU, --backend local)",
    )
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        help="padded positions per model forward, rows × the longest, a prompt's included (default 65536; "
        "--backend local); longer batches run in parts",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="where the model runs: auto (the GPU when torch sees one, else the CPU), cpu, cuda, cuda:1... "
        "(--backend local)",
    )
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (--backend ray)")
    p.add_argument("--cpus-per-replica", type=float, default=1, help="CPUs per Ray replica (default 1)")
    p.add_argument("--ray-address", help="Ray cluster address (default: $RAY_ADDRESS, else start a local one)")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="warnings only")


def _whole(flag: str, value: int | None, low: int, high: int) -> None:
    if value is not None and not low <= value <= high:
        raise UniPeltError(f"{flag} must be from {low} to {high}, got {value}")


def check_flags(args: argparse.Namespace) -> None:
    """The flags ServeSettings does not hold, checked before anything is loaded (its own are
    checked there): a port out of range or a NaN CPU count would end in a traceback."""
    from .app import MAX_BODY_KB

    _whole("--port", args.port, 0, 65535)
    _whole("--max-length", args.max_length, 1, 1 << 20)  # the model's own limit is checked on load
    _whole("--max-batch-tokens", args.max_batch_tokens, 1, 1 << 30)
    _whole("--max-body-kb", args.max_body_kb, 1, MAX_BODY_KB)
    _whole("--replicas", args.replicas, 1, 1024)
    _whole("--max-tasks", args.max_tasks, max(1, len(args.task)), 1 << 16)
    cpus = args.cpus_per_replica
    if not (math.isfinite(cpus) and 0 < cpus <= 1024):
        raise UniPeltError(f"--cpus-per-replica must be a number above 0 and at most 1024, got {cpus}")
    if args.backend == "ray" and args.device not in ("auto", "cpu"):
        raise UniPeltError("--device is for --backend local (Ray replicas run on CPUs)")
    if args.backend == "ray" and args.max_batch_tokens is not None:  # was accepted and not applied
        raise UniPeltError("--max-batch-tokens is for --backend local (a Ray replica batches by rows, @serve.batch)")


def device(flag: str):
    """The torch device ``--device`` names, one that this machine has."""
    import torch

    if flag == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(flag)
    except RuntimeError:
        raise UniPeltError(f"--device must be auto, cpu, cuda or cuda:N, got {_short(flag)!r}") from None
    if chosen.type not in ("cpu", "cuda"):
        raise UniPeltError(f"--device must be auto, cpu, cuda or cuda:N, got {_short(flag)!r}")
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise UniPeltError(f"--device {flag}: torch sees {torch.cuda.device_count()} CUDA device(s) here")
    return chosen


def parse_task(value: str):
    """``NAME=DIR`` or ``NAME=DIR:pairs`` -> (name, TaskSpec)."""
    from .engine import TASK_NAME, TaskSpec

    name, sep, rest = value.partition("=")
    if not sep or not name or not rest:
        raise UniPeltError(f"--task {value!r}: expected NAME=DIR or NAME=DIR:pairs")
    if not re.fullmatch(TASK_NAME, name):  # the name a client sends in JSON and in DELETE's URL
        what = "1-64 letters, digits, '_', '.' or '-', the first a letter or digit"
        raise UniPeltError(f"--task {value!r}: a task name is {what}")
    pairs = rest.endswith(":pairs")
    path = _directory(f"--task {_short(value)!r}:", rest.removesuffix(":pairs"))
    return name, TaskSpec(path=path, pairs=True if pairs else None)


def _short(text: str, most: int = 80) -> str:
    return text if len(text) <= most else text[: most - 3] + "..."


def _directory(flag: str, value: str) -> Path:
    """``value`` as an existing directory, resolved; a path that cannot be is one error line."""
    try:
        path = Path(value).expanduser()
        if path.is_dir():
            return path.resolve()
    except (OSError, RuntimeError) as e:  # '~nosuchuser', a name too long, a symlink loop
        raise UniPeltError(f"{flag} {_short(value)}: {getattr(e, 'strerror', None) or e}") from None
    raise UniPeltError(f"{flag} {_short(str(path))} is not a directory")


def _check_checkpoints(tasks: dict) -> None:
    """Each --task is a readable unipelt checkpoint, checked before a backend starts (Ray's
    replicas load them in other processes, where a refusal would become a failed deployment)."""
    from ..checkpoint import read_metadata

    for name, spec in tasks.items():
        try:
            read_metadata(spec.path)
        except UniPeltError as e:
            raise UniPeltError(f"--task {name}: {e}") from None


def _tasks_dir(args, tasks: dict) -> Path | None:
    if args.tasks_dir:
        return _directory("--tasks-dir", args.tasks_dir)
    parents = {spec.path.parent for spec in tasks.values()}
    return parents.pop() if len(parents) == 1 else None


def _check_model_directory(model: str) -> None:
    """A local directory holds a config.json of a supported architecture: said in those terms,
    before transformers reports whichever of its files it fails on first."""
    if not Path(model).is_dir():
        return
    from ..arch import check_supported  # imports transformers: not for --help

    if not (Path(model) / "config.json").is_file():
        raise UniPeltError(f"--model {model} has no config.json: give a directory save_pretrained wrote")
    try:
        check_supported(model)
    except UniPeltError as e:
        raise UniPeltError(f"--model {model}: {e}") from None


def run(args: argparse.Namespace) -> int:
    from ..offline import DEFAULT_MODEL, model_path  # the library's: serving does not need the harness

    try:
        from .app import ServeSettings
        from .server import loopback
    except ImportError as e:
        raise UniPeltError(f"unipelt serve needs the serve extra (pip install 'unipelt[serve]'): {e}") from None
    from .engine import BATCH_TOKENS, Engine, ServeError

    check_flags(args)
    tasks = dict(parse_task(t) for t in args.task)
    if len(tasks) != len(args.task):
        raise UniPeltError("two --task flags give the same task name")
    _check_checkpoints(tasks)
    try:
        settings = ServeSettings(
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            max_inputs=args.max_inputs,
            max_body_bytes=args.max_body_kb * 1024,
            request_timeout_s=args.request_timeout,
            admin_token=args.admin_token or os.environ.get(TOKEN_ENV) or None,
            tasks_dir=_tasks_dir(args, tasks),
        )
    except ValueError as e:
        raise UniPeltError(str(e)) from None
    host = loopback(args.host)
    try:
        model = model_path(args.model or DEFAULT_MODEL)
    except UniPeltError as e:
        raise UniPeltError(f"{e}; or pass --model DIR") from None
    _check_model_directory(model)
    if args.backend == "ray":
        from .ray_backend import serve_ray

        if args.compile:
            raise UniPeltError("--compile is for --backend local")

        if args.replicas < 1:
            raise UniPeltError("--replicas must be at least 1")
        return serve_ray(
            model,
            tasks,
            args.max_length,
            settings,
            host=host,
            port=args.port,
            replicas=args.replicas,
            cpus_per_replica=args.cpus_per_replica,
            address=args.ray_address,
        )
    from .server import serve_local

    try:
        engine = Engine.from_directory(
            model,
            args.max_length,
            compile=args.compile,
            max_tasks=args.max_tasks,
            device=device(args.device),
            max_batch_tokens=args.max_batch_tokens or BATCH_TOKENS,
        )
    except UniPeltError:
        raise
    except Exception as e:  # noqa: BLE001 - the directory comes from outside: transformers' refusals vary
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UniPeltError(f"--model {model} cannot be loaded: {type(e).__name__}: {first}") from None
    for name, spec in tasks.items():
        try:
            engine.add(name, spec)
        except ServeError as e:
            raise UniPeltError(f"--task {name}: {e.message}") from None
    return serve_local(engine, settings, host, args.port, quiet=getattr(args, "quiet", False))
