"""Regenerate tests/fixtures/adapters/: AdapterHub ``adapters`` checkpoints with their expected logits.

    python benchmarks/make_adapters_fixtures.py          # from unipelt's own environment

Re-runs itself in the comparators' environment that benchmarks/run.py builds (``adapters`` 1.3.0
+ transformers 4.57.6, benchmarks/.envs/adapters, created on first use). For a tiny random BERT
and RoBERTa (hidden 32, 2 layers, 4 heads, vocabulary 100) it writes

    <arch>/base/                 the base model, ``save_pretrained`` (safetensors)
    <arch>/<config>/adapter/     what ``save_adapter`` wrote (config JSON + weights, head if any)
    <arch>/<config>/io.safetensors   input_ids, attention_mask and adapters' logits on them

after a few training steps with each config, so that every trained tensor is away from its
initialisation. tests/test_interop_adapters.py loads each into unipelt on transformers 5 and
compares logits. Everything is seeded: a rerun rewrites the same numbers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "tests" / "fixtures" / "adapters"
ARCHS = ("bert", "roberta")
TINY = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=40,
    num_labels=3,
)


def _configs():
    """name -> (adapters config, how the head is saved, weights format). Small sizes keep each
    fixture a few KB; the defaults that matter (Pfeiffer's LayerNorm placement, ParBn's
    scaling, UniPELT's gates) are the library's own."""
    from adapters import (
        DoubleSeqBnConfig,
        LoRAConfig,
        MAMConfig,
        ParBnConfig,  # noqa: F401
        PrefixTuningConfig,
        PromptTuningConfig,
        SeqBnConfig,
        UniPELTConfig,
    )

    prefix = dict(prefix_length=4, bottleneck_size=8)
    return {
        "seq_bn": (SeqBnConfig(), "flex", "safetensors"),
        "seq_bn_gelu_attn": (
            SeqBnConfig(mh_adapter=True, non_linearity="gelu", reduction_factor=8),
            "flex",
            "safetensors",
        ),
        "double_seq_bn": (DoubleSeqBnConfig(non_linearity="relu", reduction_factor=8), "flex", "safetensors"),
        "par_bn": (ParBnConfig(reduction_factor=4), "flex", "safetensors"),  # scaling 4.0, its default
        "scaled_par_bn": (ParBnConfig(scaling="learned", reduction_factor=4), "flex", "safetensors"),
        # adapters 1.3 cannot write a prefix as safetensors (the pool's tensors are shared under
        # several names): every config with a prefix is saved as its .bin
        "prefix_tuning": (PrefixTuningConfig(**prefix), "flex", "bin"),
        "prefix_tuning_flat": (PrefixTuningConfig(flat=True, prefix_length=4), "flex", "bin"),
        "lora": (LoRAConfig(r=4, alpha=8), "flex", "safetensors"),
        "lora_ffn": (
            LoRAConfig(r=2, alpha=3, attn_matrices=["k"], intermediate_lora=True, output_lora=True),
            "flex",
            "safetensors",
        ),
        # trained on the plain HF model with adapters.init: no head is saved, the base one stays
        "lora_bin_nohead": (LoRAConfig(r=4, alpha=16, attn_matrices=["q", "k", "v"]), "none", "bin"),
        "prompt_tuning": (PromptTuningConfig(prompt_length=4, combine="prefix_after_bos"), "flex", "safetensors"),
        "unipelt": (
            UniPELTConfig(PrefixTuningConfig(**prefix), SeqBnConfig(reduction_factor=8), LoRAConfig(r=4, alpha=2)),
            "flex",
            "bin",
        ),
        "mam": (MAMConfig(PrefixTuningConfig(**prefix), ParBnConfig(reduction_factor=4)), "flex", "bin"),
    }


def _batch(torch, arch: str):
    """3 rows of 9 tokens, rows 1 and 2 padded; <s>/[CLS] first, a separator last."""
    g = torch.Generator().manual_seed(1)
    pad = 1 if arch == "roberta" else 0
    ids = torch.randint(5, TINY["vocab_size"], (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 4:] = 0
    ids[:, 0] = 0 if arch == "roberta" else 3
    ids[torch.arange(3), mask.sum(1) - 1] = 2 if arch == "roberta" else 4
    ids[mask == 0] = pad
    return ids, mask


def _base(arch: str, directory: Path):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    if arch == "bert":
        model = BertForSequenceClassification(BertConfig(**TINY, pad_token_id=0))
    else:
        model = RobertaForSequenceClassification(RobertaConfig(**TINY, pad_token_id=1, bos_token_id=0, eos_token_id=2))
    model.save_pretrained(directory, safe_serialization=True)


def _train(model, ids, mask, torch, steps: int = 6) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-2)
    labels = torch.tensor([0, 2, 1])
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def _fixture(arch: str, name: str, config, head: str, fmt: str, base: Path, out: Path) -> None:
    import adapters
    import torch
    from adapters import AutoAdapterModel
    from safetensors.torch import save_file
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(100)
    ids, mask = _batch(torch, arch)
    # eager attention: under sdpa, adapters 1.3 lets a prompt-tuned BERT attend to padding (a padded
    # row's logits differ from the same row unpadded by 7e-4); eager masks it, as unipelt does
    if head == "flex":
        model = AutoAdapterModel.from_pretrained(base, attn_implementation="eager")
        model.add_adapter(name, config=config)
        model.add_classification_head(name, num_labels=TINY["num_labels"])
    else:
        model = AutoModelForSequenceClassification.from_pretrained(base, attn_implementation="eager")
        adapters.init(model)
        model.add_adapter(name, config=config)
    model.train_adapter(name)  # freezes the base, trains the adapter and a flex head
    if head == "none":  # train_adapter leaves a plain model's own head trainable, and save_adapter skips it
        model.classifier.requires_grad_(False)
    model.set_active_adapters(name)
    _train(model, ids, mask, torch)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    out.mkdir(parents=True)
    model.save_adapter(str(out / "adapter"), name, with_head=head == "flex", use_safetensors=fmt == "safetensors")
    save_file({"input_ids": ids, "attention_mask": mask, "logits": logits.contiguous()}, out / "io.safetensors")


def generate() -> None:
    import adapters
    import transformers

    if OUT.exists():
        shutil.rmtree(OUT)
    for arch in ARCHS:
        base = OUT / arch / "base"
        _base(arch, base)
        for name, (config, head, fmt) in _configs().items():
            _fixture(arch, name, config, head, fmt, base, OUT / arch / name)
            print(f"{arch}/{name}", file=sys.stderr)
    (OUT / "VERSIONS.json").write_text(
        json.dumps(
            {
                "adapters": adapters.__version__,
                "transformers": transformers.__version__,
                "generator": "benchmarks/make_adapters_fixtures.py",
            },
            indent=2,
        )
        + "\n"
    )


def main() -> None:
    # it deletes and rewrites tests/fixtures/adapters: --help (or any argument) must only print
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    try:
        import adapters  # noqa: F401
    except ImportError:  # unipelt's environment: run again in the comparators'
        sys.path.insert(0, str(HERE))
        from run import _adapters_python

        subprocess.run([_adapters_python(), __file__], check=True)
        return
    generate()
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
