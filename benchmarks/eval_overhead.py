"""The harness's own evaluation cost: ``unipelt train``'s dev evaluation against a plain loop.

    python benchmarks/eval_overhead.py [--task sst2] [--preset unipelt-apl] [--dev-size 1000] [--repeats 5]

Both score the same dev rows with the same model: the harness through its objective
(``Classify.score``: ``Trainer.predict`` on the length-sorted, collated features) and the plain
loop as ``model(**batch)`` under ``torch.inference_mode`` on the very batches the harness builds.
They are timed alternately in one process, so drift on a shared machine hits both; the ratio of
the medians is printed (issue 18 asks for ≤ 1.1×).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from unipelt.harness.data import load_splits
from unipelt.harness.runner import EVAL_BATCH, ProtocolTrainer, _arguments, load_model, objective_of
from unipelt.harness.spec import make_spec
from unipelt.harness.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--preset", default="unipelt-apl")
    parser.add_argument("--dev-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    spec = make_spec(task=args.task, preset=args.preset, dev_size=args.dev_size)
    task = get_task(spec.task)
    splits = load_splits(task, spec.k, spec.data_seed, dev_size=spec.dev_size)
    tokenizer, model = load_model(spec, task)
    objective = objective_of(spec, task, tokenizer)
    dev = objective.encode(splits.dev, train=False)
    batches = [objective.collate(dev[i : i + EVAL_BATCH], train=False) for i in range(0, len(dev), EVAL_BATCH)]
    batches = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    model.eval()

    @torch.inference_mode()
    def plain() -> None:
        for batch in batches:
            model(**batch)

    with tempfile.TemporaryDirectory() as tmp:
        trainer = ProtocolTrainer(model=model, args=_arguments(spec, tmp), eval_dataset=dev, objective=objective)
        trainer.remove_callback(trainer.callback_handler.callbacks[-1].__class__)  # the progress printer

        def harness() -> None:
            objective.score(trainer, dev)

        times: dict[str, list[float]] = {"harness": [], "plain": []}
        harness(), plain()  # warm-up
        for _ in range(args.repeats):
            for name, fn in (("harness", harness), ("plain", plain)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.task} dev {len(dev)} rows, {args.preset}, batch {EVAL_BATCH}, {args.repeats} alternating runs")
    for name, t in med.items():
        runs = [round(x, 2) for x in times[name]]
        print(f"  {name:8s} {len(dev) / t:8.1f} examples/s  (median {t:.2f} s, all {runs})")
    print(f"  harness / plain time: {med['harness'] / med['plain']:.3f}x")


if __name__ == "__main__":
    main()
