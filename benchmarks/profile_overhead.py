"""Where a preset's inference time goes beyond the plain model's: torch.profiler, op by op.

    python benchmarks/profile_overhead.py [--preset unipelt-apl] [--batch 16] [--threads 1] [--rounds 2]

Both models (the offline MiniLM, the preset folded as ``benchmarks/run.py`` serves it) run in one
process, profiled alternately, so machine drift hits both. Prints the total self-CPU ratio and
the ops that add most, as a share of the plain model's total.
"""

from __future__ import annotations

import argparse

import torch
from minilm import load
from torch.profiler import ProfilerActivity, profile

import unipelt


def self_times(model, batch: dict, calls: int) -> dict[str, list[float]]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            model(**batch)
    return {e.key: [e.self_cpu_time_total, e.count] for e in prof.key_averages()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="unipelt-apl")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    plain = load().eval()
    pelt = unipelt.fold(unipelt.apply(load(), args.preset)).eval()
    ids = torch.randint(1000, 20000, (args.batch, 128), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    totals: dict[str, dict[str, list[float]]] = {"plain": {}, "pelt": {}}
    with torch.inference_mode():
        plain(**batch), pelt(**batch)  # warm-up
        for _ in range(args.rounds):
            for name, model in (("plain", plain), ("pelt", pelt)):
                for op, (t, n) in self_times(model, batch, 3).items():
                    acc = totals[name].setdefault(op, [0.0, 0])
                    acc[0], acc[1] = acc[0] + t, acc[1] + n
    total = {k: sum(t for t, _ in ops.values()) for k, ops in totals.items()}
    print(
        f"{args.preset}, batch {args.batch} x 128, {args.threads} thread(s): self CPU {total['pelt'] / 1e3:.0f} ms "
        f"vs plain {total['plain'] / 1e3:.0f} ms = {total['pelt'] / total['plain']:.3f}x"
    )
    extra = {
        op: totals["pelt"].get(op, [0, 0])[0] - totals["plain"].get(op, [0, 0])[0]
        for op in set(totals["pelt"]) | set(totals["plain"])
    }
    for op in sorted(extra, key=extra.get, reverse=True)[: args.top]:
        p, q = totals["pelt"].get(op, [0, 0]), totals["plain"].get(op, [0, 0])
        print(
            f"  {op:50s} {p[0] / 1e3:8.1f} ms ({p[1]:4d} calls) vs {q[0] / 1e3:8.1f} ms ({q[1]:4d}): "
            f"+{100 * extra[op] / total['plain']:.1f}% of plain"
        )


if __name__ == "__main__":
    main()
