"""What serving many tasks on one backbone costs, measured side by side in one process on the
offline MiniLM (on a GPU with --device cuda):

- memory: the bytes of every distinct tensor ``unipelt.MultiTask`` holds with N tasks, against the
  base model plus the sum of the tasks' module sizes (their checkpoints), and N model copies;
- throughput: 64 rows x 128 tokens spread over 4 and 16 tasks in one mixed batch, against a
  single-task batch of 64 with the same modules, and against running the tasks one after another;
- the same with LoRA-only tasks against peft's mixed-adapter batches (``adapter_names=``).

    python benchmarks/multitask.py [--rounds 5] [--device cpu] [--sizes 1,4,16,64]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from minilm import load  # noqa: E402

import unipelt  # noqa: E402

MIX = ("lora", "adapter", "unipelt-apl", "prefix", "bitfit", "ia3", "mam", "prompt")  # presets, in turn
BATCH, LENGTH = 64, 128


def _tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def _holding(mt) -> list[torch.Tensor]:
    """Every tensor the MultiTask reaches: the shared model, each task's skeleton (its modules,
    head, and any bias of its own) and BitFit's bias differences."""
    models = [mt.model] + [t.model for t in mt._tasks.values()]
    tensors = [t for m in models for t in itertools.chain(m.parameters(), m.buffers())]
    deltas = [
        e.delta
        for m in mt.model.modules()
        for es in getattr(m, "entries", {}).values()
        for e in es
        if hasattr(e, "delta") and isinstance(e.delta, torch.Tensor)
    ]
    return tensors + deltas


def make_checkpoints(root: Path, n: int, presets=MIX) -> list[Path]:
    dirs = []
    for i in range(n):
        preset = presets[i % len(presets)]
        model = unipelt.apply(load(), preset)
        with torch.no_grad():  # as if trained: every module moves away from its initial value
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.01)
        dirs.append(unipelt.save(model, root / f"{i:02d}-{preset}"))
    return dirs


def memory(root: Path, sizes: list[int]) -> None:
    dirs = make_checkpoints(root / "memory", max(sizes))
    base = load()
    base_bytes = _tensor_bytes(itertools.chain(base.parameters(), base.buffers()))
    print("\n| tasks | MultiTask holds | base + modules | ratio | N model copies |\n|---:|---:|---:|---:|---:|")
    for n in sizes:
        mt = unipelt.MultiTask(load())
        for d in dirs[:n]:
            mt.add(d.name, d)
        held = _tensor_bytes(_holding(mt))
        modules = sum((d / "unipelt.safetensors").stat().st_size for d in dirs[:n])
        print(
            f"| {n} | {held / 2**20:.1f} MiB | {(base_bytes + modules) / 2**20:.1f} MiB | "
            f"{held / (base_bytes + modules):.3f} | {n * base_bytes / 2**20:.0f} MiB |"
        )


def _batch(device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (BATCH, LENGTH), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def _time(fns: dict, rounds: int) -> dict[str, float]:
    """Median seconds of each function, timed alternately so that drift hits them alike."""
    times = {k: [] for k in fns}
    with torch.inference_mode():
        for r in range(rounds + 1):  # round 0 is warm-up
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                if r:
                    times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def throughput(root: Path, tasks: int, presets, rounds: int, device: str, peft: bool = False) -> None:
    dirs = make_checkpoints(root / f"tp-{tasks}-{presets[0]}", tasks, presets)
    mt = unipelt.MultiTask(load().to(device))
    for d in dirs:
        mt.add(d.name, d)
    preset_of = {d.name: d.name.split("-", 1)[1] for d in dirs}
    batch = _batch(device)
    mixed = [dirs[i % tasks].name for i in range(BATCH)]
    # one model per preset in use: a task's own model costs what any task of its preset costs
    own = {
        p: unipelt.fold(unipelt.load(load().to(device), d).eval())
        for p, d in {preset_of[d.name]: d for d in dirs}.items()
    }
    groups = {t: torch.tensor([i for i, x in enumerate(mixed) if x == t]) for t in dict.fromkeys(mixed)}
    fns = {
        "mixed batch (MultiTask)": lambda: mt(**batch, tasks=mixed),
        "tasks one after another (own models)": lambda: [
            own[preset_of[t]](**{k: v[r] for k, v in batch.items()}) for t, r in groups.items()
        ],
    }
    fns |= {f"single-task batch: {p}": (lambda m=m: m(**batch)) for p, m in own.items()}
    if peft:
        fns["peft mixed batch (adapter_names=)"] = _peft_mixed(root, dirs, device, batch, mixed)
    t = _time(fns, rounds)
    # a 64-row batch of these tasks' modules, if each row could run alone in a batch of its own kind
    share = {p: sum(len(r) for task, r in groups.items() if preset_of[task] == p) / BATCH for p in own}
    ref = sum(share[p] * t[f"single-task batch: {p}"] for p in own)
    print(
        f"\n{tasks} tasks ({', '.join(sorted(own))}), batch {BATCH} x {LENGTH}, {device}; reference: "
        f"single-task batches of 64 with the same modules, weighted by rows ({ref:.3f} s):"
    )
    print("| run | s/batch | rows/s | throughput vs reference |\n|---|---:|---:|---:|")
    for name, sec in t.items():
        print(f"| {name} | {sec:.3f} | {BATCH / sec:.0f} | {ref / sec:.2f}x |")


def _peft_mixed(root: Path, dirs, device, batch, mixed):
    from peft import PeftModel

    peft_dirs = []
    for d in dirs:
        model = unipelt.load(load(), d)
        peft_dirs.append(unipelt.to_peft(model, root / "peft" / d.name))
    model = PeftModel.from_pretrained(load(), peft_dirs[0], adapter_name=dirs[0].name)
    for d, p in zip(dirs[1:], peft_dirs[1:]):
        model.load_adapter(p, adapter_name=d.name)
    model = model.to(device).eval()
    return lambda: model(**batch, adapter_names=mixed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="1,4,16,64")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()  # MiniLM's missing classifier is reported once per load
    transformers.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        memory(root, [int(s) for s in args.sizes.split(",")])
        for n in (4, 16):
            throughput(root, n, MIX, args.rounds, args.device)
        for n in (4, 16):
            throughput(root, n, ("lora",), args.rounds, args.device, peft=True)


if __name__ == "__main__":
    main()
