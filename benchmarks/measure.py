"""Timing and memory for one model, library-agnostic: imported by every worker, in every
environment (it needs only torch). Medians over repeated steps, warm-up excluded."""

from __future__ import annotations

import contextlib
import resource
import statistics
import sys
import time

import torch

TRAIN_BATCH, EVAL_BATCH, LENGTH = 16, 64, 128
_forward = contextlib.nullcontext  # measure(bf16=True) makes every timed forward a bf16 autocast one


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _inputs(batch: int, vocab: int, device: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, min(vocab, 20000), (batch, LENGTH), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def _median_seconds(fn, device: str, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_step_seconds(model, device: str, repeats: int = 8, warmup: int = 2) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    batch = _inputs(TRAIN_BATCH, model.config.vocab_size, device)
    labels = torch.zeros(TRAIN_BATCH, dtype=torch.long, device=device)
    model.train()

    def step():
        with _forward():
            loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _median_seconds(step, device, repeats, warmup)


def _run(model, batch):
    with _forward():
        return model(**batch)


@torch.inference_mode()
def inference(model, device: str, plain=None, repeats: int = 6, warmup: int = 1) -> dict:
    """Throughput at batch 64 and latency at batch 1. With ``plain`` (the same base model without
    any method), the two are timed alternately in this process, so that their ratio does not
    carry the ±15% drift seen between processes on a shared CPU."""
    models = {"method": model.eval()} | ({"plain": plain.to(device).eval()} if plain is not None else {})
    big = _inputs(EVAL_BATCH, model.config.vocab_size, device)
    one = _inputs(1, model.config.vocab_size, device)
    times: dict[str, dict[str, list[float]]] = {k: {"big": [], "one": []} for k in models}
    for name, m in models.items():
        for _ in range(warmup):
            _run(m, big), _run(m, one)
    for _ in range(repeats):
        for name, m in models.items():
            for key, batch, n in (("big", big, 1), ("one", one, 4)):
                times[name][key].append(_median_seconds(lambda: _run(m, batch), device, n, 0))
    med = {k: {key: statistics.median(v) for key, v in t.items()} for k, t in times.items()}
    result = {"infer_examples_per_s": EVAL_BATCH / med["method"]["big"], "latency_ms": 1000 * med["method"]["one"]}
    if plain is not None:
        result["infer_vs_plain"] = med["method"]["big"] / med["plain"]["big"]
        result["latency_vs_plain"] = med["method"]["one"] / med["plain"]["one"]
    return result


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def measure(
    model, device: str, trainable: int, prepare_inference=None, load_plain=None, compile=False, bf16=False
) -> dict:
    """Train first (peak memory is the process's peak, so one model per process), then infer,
    alternating with the plain model from ``load_plain`` when given. With ``compile``, each model
    runs through ``torch.compile`` (inductor); warm-up steps absorb the compile time. With
    ``bf16``, every forward runs under bf16 autocast (the weights stay float32, as in training)."""
    global _forward
    if bf16:
        _forward = lambda: torch.autocast(device_type=device, dtype=torch.bfloat16)  # noqa: E731
    wrap = torch.compile if compile else (lambda m: m)
    model.to(device)
    result = {
        "trainable": trainable,
        "train_step_s": train_step_seconds(wrap(model), device),
        "peak_train_mb": peak_memory_mb(device),
    }
    if prepare_inference is not None:
        model = prepare_inference(model) or model  # on the eager module: folding changes its code path
    plain = wrap(load_plain().to(device)) if load_plain else None
    result.update(inference(wrap(model), device, plain))
    return result
