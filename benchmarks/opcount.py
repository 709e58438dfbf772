"""How many ATen ops one train step and one eval forward dispatch: a deterministic, CPU-only
measure of the per-layer overhead that sets the time on a GPU (issue 30).

    python benchmarks/opcount.py                      # the table, every preset, peft's LoRA and prefix
    python benchmarks/opcount.py --detail unipelt-apl # which ops a preset adds over the plain model
    python benchmarks/opcount.py --where unipelt-apl  # one layer's train ops, by source line or autograd node
    python benchmarks/opcount.py --bf16               # the same under bf16 autocast, with its casts

The model is MiniLM-L6's shape (hidden 384, 6 layers, 12 heads, FFN 1536) with random weights
built from a ``BertConfig`` (no download), sdpa attention, batch 2 × 16 with two padding tokens.
A ``TorchDispatchMode`` counts every op that reaches the backend: forward, backward (the train
step: forward with labels and ``loss.backward()``, no optimizer step) and the eval forward
(``torch.no_grad``), before and after ``merge``/``fold``. The "per layer" column is
(ops at 6 layers - ops at 3 layers) / 3 for the train step: the cost each layer adds.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import inspect
import sys
import traceback
import warnings

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import BertConfig, BertForSequenceClassification

import unipelt

BATCH, LENGTH = 2, 16
CASTS = {"_to_copy", "to", "copy_"}  # what a dtype conversion dispatches as


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched while it is active, by name (``aten.mm.default`` -> ``mm``);
    with ``by_source``, by (where, name): the autograd node running it in backward, else the
    innermost line of unipelt or transformers that called it."""

    def __init__(self, by_source: bool = False) -> None:
        super().__init__()
        self.ops: collections.Counter = collections.Counter()
        self.by_source = by_source

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops[(_source(), name) if self.by_source else name] += 1
        return func(*args, **(kwargs or {}))


def _source() -> str:
    node = torch._C._current_autograd_node()
    if node is not None:
        return f"backward {node.name()}"
    for frame in reversed(traceback.extract_stack()):
        if "/unipelt/" in frame.filename or "/transformers/" in frame.filename:
            return f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} {frame.name}"
    return "elsewhere"


def count(fn, by_source: bool = False) -> collections.Counter:
    counter = OpCounter(by_source)
    with counter:
        fn()
    return counter.ops


def base_model(layers: int) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=384,
        num_hidden_layers=layers,
        num_attention_heads=12,
        intermediate_size=1536,
        vocab_size=30522,
        num_labels=2,
        attn_implementation="sdpa",
    )
    return BertForSequenceClassification(cfg)


def inputs() -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (BATCH, LENGTH), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0  # one padded row: the masks take their real path
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1])}


def _plain(model):
    model.requires_grad_(False)
    model.classifier.requires_grad_(True)
    return model, None


def _accept_past_key_values() -> None:
    """peft 0.21 prefix-tunes BERT only if ``BertModel.forward`` names ``past_key_values``;
    transformers 5.25 renamed it ``cache`` and still accepts the old name: show peft that name."""
    from transformers import BertModel

    sig = inspect.signature(BertModel.forward)
    if "past_key_values" not in sig.parameters:
        params = list(sig.parameters.values())
        params.insert(-1, inspect.Parameter("past_key_values", inspect.Parameter.KEYWORD_ONLY, default=None))
        BertModel.forward.__signature__ = sig.replace(parameters=params)


def _peft(kind: str):
    def build(model):
        import peft

        if kind == "lora":
            cfg = peft.LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=2, target_modules=["query", "value"])
            return peft.get_peft_model(model, cfg), lambda m: m.merge_and_unload()
        _accept_past_key_values()
        cfg = peft.PrefixTuningConfig(
            task_type="SEQ_CLS", num_virtual_tokens=10, prefix_projection=True, encoder_hidden_size=512
        )
        return peft.get_peft_model(model, cfg), None

    return build


def _preset(name: str):
    def build(model):
        unipelt.apply(model, name)
        gated = any(getattr(m, "pelt_gate", None) is not None for m in model.modules() if hasattr(m, "merge"))
        return model, unipelt.fold if gated else unipelt.merge

    return build


def rows() -> dict:
    """name -> builder(model) -> (model, what prepares it for inference or None)."""
    table = {"plain (head only)": _plain, "peft lora": _peft("lora"), "peft prefix": _peft("prefix")}
    table.update({name: _preset(name) for name in unipelt.PRESETS})
    return table


def _autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def measure(build, layers: int = 6, bf16: bool = False, parts=("train", "eval", "merged")) -> dict:
    """Op counters for one train step, one eval forward and one eval forward after merge/fold."""
    model, prepare = build(base_model(layers))
    batch = inputs()
    out = {}

    def step():
        with _autocast(bf16):
            loss = model(**batch).loss
        loss.backward()

    def forward():
        with torch.no_grad(), _autocast(bf16):
            model(**{k: v for k, v in batch.items() if k != "labels"})

    model.train()
    step()  # first call: lazy initialisation stays out of the counts
    model.zero_grad(set_to_none=True)
    if "train" in parts:
        out["train"] = count(step)
    model.eval()
    forward()
    if "eval" in parts:
        out["eval"] = count(forward)
    if "merged" in parts:
        if prepare is not None:
            model = prepare(model) or model
            forward()
        out["merged"] = count(forward)
    return out


def table(names: list[str], bf16: bool) -> str:
    builders = rows()
    results = {}
    for name in names:
        full = measure(builders[name], 6, bf16)
        short = measure(builders[name], 3, bf16, parts=("train",))
        results[name] = (full, (sum(full["train"].values()) - sum(short["train"].values())) / 3)
        print(f"  measured {name}", file=sys.stderr)
    plain = results.get("plain (head only)")
    total = lambda c: sum(c.values())  # noqa: E731
    head = (
        "| model | train step | × plain | eval forward | × plain | after merge/fold | train ops per layer | × plain |"
    )
    if bf16:
        head += " casts (train / eval) |"
    lines = [head, "|---" + "|---:" * (head.count("|") - 2) + "|"]
    for name, (res, per_layer) in results.items():
        t, e, m = (total(res[k]) for k in ("train", "eval", "merged"))
        pt, pe, pl = (total(plain[0]["train"]), total(plain[0]["eval"]), plain[1]) if plain else (None,) * 3
        rel = lambda a, b: f"{a / b:.2f}×" if b else "–"  # noqa: E731
        line = f"| {name} | {t:,} | {rel(t, pt)} | {e:,} | {rel(e, pe)} | {m:,} | "
        line += f"{per_layer:,.0f} | {rel(per_layer, pl)} |"
        if bf16:
            casts = [sum(res[k][op] for op in CASTS) for k in ("train", "eval")]
            line += f" {casts[0]} / {casts[1]} |"
        lines.append(line)
    return "\n".join(lines)


def detail(name: str, bf16: bool, part: str) -> str:
    builders = rows()
    mine = measure(builders[name], 6, bf16)[part]
    plain = measure(builders["plain (head only)"], 6, bf16)[part]
    extra = {op: mine[op] - plain[op] for op in set(mine) | set(plain)}
    lines = [f"{name}, {part}: {sum(mine.values())} ops vs plain {sum(plain.values())}", "| op | ops | plain | added |"]
    lines.append("|---|---:|---:|---:|")
    for op in sorted(extra, key=lambda o: -extra[o]):
        if extra[op]:
            lines.append(f"| {op} | {mine[op]} | {plain[op]} | {extra[op]:+d} |")
    return "\n".join(lines)


def where(name: str) -> str:
    """The train ops one layer adds, (6 layers - 3 layers) / 3, by where they come from."""
    builders = rows()
    per = {}
    for layers in (6, 3):
        model, _ = builders[name](base_model(layers))
        batch = inputs()
        model.train()

        def step():
            model(**batch).loss.backward()

        step()  # lazy initialisation stays out of the counts
        model.zero_grad(set_to_none=True)
        per[layers] = count(step, by_source=True)
    extra = {key: (per[6][key] - per[3][key]) / 3 for key in set(per[6]) | set(per[3])}
    places: dict[str, list] = collections.defaultdict(list)
    for (place, op), n in extra.items():
        if n:
            places[place].append((op, n))
    total = lambda ops: sum(n for _, n in ops)  # noqa: E731
    lines = [f"{name}: {sum(extra.values()):.0f} train ops per layer", "| where | ops | which |", "|---|---:|---|"]
    for place, ops in sorted(places.items(), key=lambda item: -total(item[1])):
        which = ", ".join(f"{op} ×{n:g}" for op, n in sorted(ops, key=lambda o: -o[1]))
        lines.append(f"| {place} | {total(ops):g} | {which} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated rows (presets, 'peft lora', 'peft prefix')")
    parser.add_argument("--detail", help="one row: its op histogram against the plain model's")
    parser.add_argument("--where", help="one row: the train ops one layer adds, by source line or autograd node")
    parser.add_argument("--part", default="train", choices=("train", "eval", "merged"))
    parser.add_argument("--bf16", action="store_true", help="under torch.autocast('cpu', dtype=torch.bfloat16)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' renamed keywords
    if args.where:
        print(where(args.where))
        return
    if args.detail:
        print(detail(args.detail, args.bf16, args.part))
        return
    names = list(rows())
    if args.only:
        names = ["plain (head only)"] + [n for n in args.only.split(",") if n != "plain (head only)"]
    print(table(names, args.bf16))


if __name__ == "__main__":
    main()
