"""Issue 30's GPU table in one process: unipelt and peft side by side, random-weight BERT models of
MiniLM-L6's shape and of bert-base's, float32 and bf16 autocast, eager and ``unipelt.compile``.

    python benchmarks/gpu_table.py [--out FILE] [--budget 420]   # on the GPU machine
    python benchmarks/gpu_table.py --tiny                        # a dry run on the CPU, tiny sizes

Per row: a train step (forward, backward, AdamW step; batch 32 x 128), inference at batch 128 x 128
and the latency of one 1 x 128 example (after merge/fold, as served); ratios against full
fine-tuning (train) and the plain model (inference, latency) of the same shape, precision and
mode. Compiled rows compile once per model (dynamic shapes) and time after warm-up; their latency
uses ``mode="reduce-overhead"`` (CUDA graphs). Rows run in the order below until ``--budget``
seconds have passed; each finished row is written to ``--out`` at once, so a timeout keeps them.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from opcount import _peft, _plain, _preset
from transformers import BertConfig, BertForSequenceClassification

import unipelt

SHAPES = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
}
MODELS = {
    "full fine-tuning": _preset("full"),
    "plain (head only)": _plain,
    "peft lora": _peft("lora"),
    "lora": _preset("lora"),
    "peft prefix": _peft("prefix"),
    "prefix": _preset("prefix"),
    "adapter": _preset("adapter"),
    "unipelt-ap": _preset("unipelt-ap"),
    "unipelt-apl": _preset("unipelt-apl"),
}
EAGER, SOME = list(MODELS), ["full fine-tuning", "plain (head only)", "peft lora", "lora", "unipelt-apl"]
# (shape, bf16, compiled, models), most wanted first
PLAN = [
    ("minilm", False, False, EAGER),
    ("bert-base", False, False, EAGER),
    ("bert-base", True, False, EAGER),
    ("minilm", False, True, SOME),
    ("minilm", True, False, EAGER),
    ("bert-base", False, True, ["full fine-tuning", "plain (head only)", "unipelt-apl"]),
]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _ms(fn, device: str, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def _batch(b: int, t: int, device: str, labels: bool = False) -> dict:
    ids = torch.randint(1000, 20000, (b, t), generator=torch.Generator().manual_seed(0)).to(device)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return {**out, "labels": torch.zeros(b, dtype=torch.long, device=device)} if labels else out


def measure(name: str, shape: str, bf16: bool, compiled: bool, args) -> dict:
    device = args.device
    torch.manual_seed(0)
    cfg = BertConfig(**SHAPES[shape], vocab_size=30522, num_labels=2, attn_implementation="sdpa")
    model, prepare = MODELS[name](BertForSequenceClassification(cfg))
    model.to(device)
    cast = torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    compile_kw = {"backend": args.backend} if args.backend else {}
    if compiled:
        unipelt.compile(model, **compile_kw)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    train = _batch(args.train_batch, args.length, device, labels=True)

    def step():
        with cast:
            loss = model(**train).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    row = {"train_ms": _ms(step, device, args.repeats, args.warmup)}
    model.eval()
    if prepare is not None:
        model = prepare(model) or model
    big, one = _batch(args.infer_batch, args.length, device), _batch(1, args.length, device)

    def run(batch):
        with torch.inference_mode(), cast:
            model(**batch)

    row["infer_ms"] = _ms(lambda: run(big), device, args.repeats, args.warmup)
    if compiled and device == "cuda":
        unipelt.compile(model, mode="reduce-overhead", **compile_kw)  # CUDA graphs for the latency
    row["latency_ms"] = _ms(lambda: run(one), device, 4 * args.repeats, args.warmup)
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| shape | precision | mode | model | train ms | × full | infer ms | × plain | latency ms (b=1) | × plain |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    ref = {(r["shape"], r["precision"], r["mode"], r["model"]): r for r in rows}

    def ratio(r, ref_model, key):
        base = ref.get((r["shape"], r["precision"], r["mode"], ref_model))
        return f"{r[key] / base[key]:.2f}×" if base else "–"

    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['precision']} | {r['mode']} | {r['model']} | {r['train_ms']:.1f} | "
            f"{ratio(r, 'full fine-tuning', 'train_ms')} | {r['infer_ms']:.1f} | "
            f"{ratio(r, 'plain (head only)', 'infer_ms')} | {r['latency_ms']:.2f} | "
            f"{ratio(r, 'plain (head only)', 'latency_ms')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/benchmarks/results-gpu.md")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds after which no new row starts")
    parser.add_argument("--tiny", action="store_true", help="dry run: tiny shape, tiny batches, CPU")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    args.device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    args.train_batch, args.infer_batch, args.length, args.repeats, args.warmup = 32, 128, 128, 10, 3
    args.backend = None
    plan = PLAN
    if args.tiny:
        args.train_batch, args.infer_batch, args.length, args.repeats, args.warmup = 2, 2, 16, 1, 1
        args.backend = "aot_eager"  # the compiled path, without the minutes inductor takes on a CPU
        plan = [("tiny", True, False, ["plain (head only)", "peft lora", "unipelt-apl"]), ("tiny", False, True, SOME)]
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    head = (
        f"# GPU table (issue 30)\n\n`python benchmarks/gpu_table.py`, {device_name}, torch {torch.__version__}, "
        f"train batch {args.train_batch}×{args.length}, inference {args.infer_batch}×{args.length}, "
        f"random weights, medians of {args.repeats} after {args.warmup} warm-up.\n\n"
    )
    start, rows, skipped = time.perf_counter(), [], []
    for shape, bf16, compiled, models in plan:
        for name in models:
            where = (shape, "bf16" if bf16 else "fp32", "compiled" if compiled else "eager", name)
            if time.perf_counter() - start > args.budget:
                skipped.append(" ".join(where))
                continue
            torch._dynamo.reset()
            try:
                result = measure(name, shape, bf16, compiled, args)
            except Exception as e:  # one row's failure must not lose the others
                skipped.append(f"{' '.join(where)} ({type(e).__name__}: {str(e)[:80]})")
                continue
            rows.append(dict(zip(("shape", "precision", "mode", "model"), where), **result))
            print(f"{time.perf_counter() - start:6.0f} s  {where}: {result}", file=sys.stderr, flush=True)
            body = head + table(rows) + ("\n\nNot run: " + "; ".join(skipped) if skipped else "") + "\n"
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(body)
    print(head + table(rows) + ("\n\nNot run: " + "; ".join(skipped) if skipped else ""))


if __name__ == "__main__":
    main()
