"""Why ``LowRank.down_t`` exists: a GEMM with few outputs, ``z W`` with W stored (d, k) against
the same W as a contiguous (k, d) (nn.Linear's layout), alternately in one process.

    python benchmarks/gemm_layout.py [--rounds 30]

Inference at 64 × 128 and 16 × 128 tokens (d = 384, MiniLM's width), and forward plus backward
(gradients for z and W) at 16 × 128; k covers LoRA's r = 8, r + a gate, the UniPELT q/v/prefix
gates together, and the adapter's r = 48.
"""

from __future__ import annotations

import argparse
import time

import torch


def _ms(fn, rounds: int) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(rounds):
        fn()
    return 1e3 * (time.perf_counter() - start) / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    d = 384
    print("| tokens | k | pass | z @ W (d, k) ms | linear(z, W as (k, d)) ms | ratio |")
    print("|---:|---:|---|---:|---:|---:|")
    for n, train in ((8192, False), (2048, False), (2048, True)):
        for k in (8, 9, 19, 48, 49):
            z = torch.randn(n, d, requires_grad=train)
            w = torch.randn(d, k, requires_grad=train)

            def stored(z=z, w=w):
                out = z @ w
                return out.sum().backward() if train else out

            def linear(z=z, w=w):
                out = torch.nn.functional.linear(z, w.T.contiguous())
                return out.sum().backward() if train else out

            with torch.set_grad_enabled(train):
                a, b = _ms(stored, args.rounds), _ms(linear, args.rounds)
            print(f"| {n} | {k} | {'fwd+bwd' if train else 'fwd'} | {a:.2f} | {b:.2f} | {b / a:.2f} |", flush=True)


if __name__ == "__main__":
    main()
