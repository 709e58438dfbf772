"""Each fused path against the code it replaced, on the offline MiniLM, alternately in one process.

    python benchmarks/fused_paths.py [--presets unipelt-apl,unipelt-ap,mam] [--rounds 5] [--threads 2]

For each preset it times the plain model, then the preset's model with every fused path off
("before": the unfused code, restored here by patching the library) and on ("after"): inference
at batch 64 × 128 on the folded model, and a training step at 16 × 128. Same model, same
weights, same batches; rounds alternate between the variants so that drift spreads over both.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from minilm import load  # noqa: E402

import unipelt  # noqa: E402
from unipelt.blocks import LowRank  # noqa: E402
from unipelt.methods import adapter as adapter_module  # noqa: E402
from unipelt.methods import lora as lora_module  # noqa: E402


def _two_gemms(block, weight, z):
    return block.bottleneck(z), weight(z)


def _stored_layout(self, z):
    hid = self.dropout(z) @ self.down[0]
    return self.act(hid + self.down_bias[0] if self.down_bias is not None else hid)


def _sum(self, base, z, h=None):
    return base + self(z, h)


@contextlib.contextmanager
def unfused():
    """The code before the fused paths: W_down used as stored, (d, r); the gate and the
    down-projection as two GEMMs; adapters that return w·A(z) for the wrapper to add."""
    saved = lora_module.read_once, adapter_module.read_once, adapter_module.Adapter.added, LowRank.bottleneck
    lora_module.read_once = adapter_module.read_once = _two_gemms
    adapter_module.Adapter.added = _sum
    LowRank.bottleneck = _stored_layout
    try:
        yield
    finally:
        lora_module.read_once, adapter_module.read_once, adapter_module.Adapter.added, LowRank.bottleneck = saved


VARIANTS = {"before": unfused, "after": contextlib.nullcontext}


def _batch(n: int) -> dict:
    ids = torch.randint(1000, 20000, (n, 128), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _train_step(model, batch, labels, opt):
    def step():
        model(**batch, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def compare(preset: str, rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = unipelt.apply(load(), preset)
    train, infer = _batch(16), _batch(64)
    labels = torch.zeros(16, dtype=torch.long)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    step = _train_step(model.train(), train, labels, opt)
    times = {f"train {v}": [] for v in VARIANTS}
    for i in range(rounds + 1):  # round 0 warms up
        for name, variant in VARIANTS.items():
            with variant():
                t = _seconds(step)
            if i:
                times[f"train {name}"].append(t)
    model = unipelt.fold(model).eval()
    plain = load().eval()
    times |= {"infer plain": []} | {f"infer {v}": [] for v in VARIANTS}
    with torch.inference_mode():
        for i in range(rounds + 1):
            t = _seconds(lambda: plain(**infer))
            if i:
                times["infer plain"].append(t)
            for name, variant in VARIANTS.items():
                with variant():
                    t = _seconds(lambda: model(**infer))
                if i:
                    times[f"infer {name}"].append(t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="unipelt-apl,unipelt-ap,mam,adapter,lora")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print("| preset | train before s | train after s | after/before | infer × plain before | after | after/before |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for preset in args.presets.split(","):
        m = compare(preset, args.rounds)
        print(
            f"| {preset} | {m['train before']:.3f} | {m['train after']:.3f} | "
            f"{m['train after'] / m['train before']:.3f} | {m['infer before'] / m['infer plain']:.3f} | "
            f"{m['infer after'] / m['infer plain']:.3f} | {m['infer after'] / m['infer before']:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
