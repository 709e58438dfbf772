"""What attention dropout costs a CPU training step, and whether a cheaper dropout mask helps.

    python benchmarks/attention_dropout.py [--threads 2] [--rounds 7]

One MiniLM attention sublayer with a 10-token prefix (batch 16, 128 queries, 138 keys, 12 heads
of 32), forward plus backward, timed alternately in one process; medians, ratios to sdpa with
dropout (what every library runs in training). Variants:
- sdpa, p=0.1: PyTorch's math path, the only CPU kernel that takes dropout;
- sdpa, p=0: the fused CPU kernel; the floor no dropout-training path can reach;
- math, 31-bit mask: the math path written out, its keep-mask drawn as 31-bit integers from
  64-bit random words instead of ``bernoulli_`` on floats (the profile's top dropout cost).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

P = 0.1


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    n = math.prod(shape)
    words = torch.empty((n + 1) // 2, dtype=torch.int64).random_()  # uniform on [0, 2^63)
    bits = words.view(torch.int32)[:n] & 0x7FFFFFFF  # 31 uniform bits per element
    return (bits >= round(p * 2**31)).view(shape)


def math_attention(q, k, v, mask, p):
    probs = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).masked_fill(~mask, float("-inf")).softmax(-1)
    return torch.where(keep_mask(probs.shape, p), probs / (1 - p), 0.0) @ v


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    q = torch.randn(16, 12, 128, 32, requires_grad=True)
    k, v = (torch.randn(16, 12, 138, 32, requires_grad=True) for _ in range(2))
    mask = torch.ones(16, 1, 128, 138, dtype=torch.bool)
    variants = {
        "sdpa, p=0.1": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=P),
        "sdpa, p=0": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        "math, 31-bit mask, p=0.1": lambda: math_attention(q, k, v, mask, P),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, fn in variants.items():
            start = time.perf_counter()
            fn().sum().backward()
            if round_:
                times[name].append(time.perf_counter() - start)
    ref = statistics.median(times["sdpa, p=0.1"])
    print("| variant | ms (fwd+bwd) | × sdpa p=0.1 |\n|---|---:|---:|")
    for name, t in times.items():
        print(f"| {name} | {1000 * statistics.median(t):.1f} | {statistics.median(t) / ref:.2f} |")


if __name__ == "__main__":
    main()
