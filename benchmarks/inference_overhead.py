"""Where UniPELT-APL's inference time goes: the plain model, UniPELT-APL, the same modules with
no gates (unipelt-apl-nogate), and that with its LoRA merged, timed alternately in one
process so that their ratios do not carry drift between processes.

    python benchmarks/inference_overhead.py [--rounds 6] [--batch 64]
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from minilm import load  # noqa: E402

import unipelt  # noqa: E402


def build(name: str):
    model = load().eval()
    if name == "plain":
        return model
    unipelt.apply(model, name.removesuffix("+merge"))
    return unipelt.merge(model) if name.endswith("+merge") else unipelt.fold(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    models = {n: build(n) for n in ("plain", "unipelt-apl", "unipelt-apl-nogate", "unipelt-apl-nogate+merge")}
    ids = torch.randint(1000, 20000, (args.batch, 128), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    times: dict[str, list[float]] = {n: [] for n in models}
    with torch.inference_mode():
        for _ in range(args.rounds + 1):  # the first round is warm-up
            for name, model in models.items():
                start = time.perf_counter()
                model(**batch)
                times[name].append(time.perf_counter() - start)
    plain = statistics.median(times["plain"][1:])
    for name, ts in times.items():
        print(f"{name:22s} {statistics.median(ts[1:]):.3f} s/batch  {statistics.median(ts[1:]) / plain:.2f}x plain")


if __name__ == "__main__":
    main()
