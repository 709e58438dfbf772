#!/usr/bin/env bash
# The GPU run of the study with the backbone's own head (issue 27 item 6; GPU.md beside the
# parent folder explains the device call). One script, on one H200-class GPU with no network:
#   0. checks the imports the sweep needs (one line names what is missing) and the GPU;
#   1. upcasts the carried float16 MiniLM (carry/minilm-fp16, made by prepare.py) to float32
#      in MODEL_DIR (default /tmp/unipelt-gpu/minilm-fp32, a fixed path: the model path is part
#      of a run's key, so a rerun on a fresh machine resumes the same runs);
#   2. runs the sweeps, in priority order, into $OUT/gpu.sqlite, a store of its own (its rows
#      are never pooled with the CPU study's), with WORKERS processes (default 12) sharing the
#      GPU in one process group; each run is written to the store as it ends:
#        phase 1  SST-2 K=100, 20 data seeds, AP, NoGate, APL, LoRA, prefix, adapter, head-only
#        phase 2  SST-2 then STS-B at K=500, seeds 111-555, the same methods
#        phase 3  the same at K=1000
#        phase 4  (time left only) full fine-tuning and BitFit on phase 1's cells
#   3. a wall-clock guard: every sweep runs under `timeout -s INT` set from one deadline
#      (BUDGET_S after the start, less a reserve), so the last sweep is interrupted cleanly (the
#      CLI's Ctrl-C path: finished runs stay, claims are released) and the whole script ends
#      within BUDGET_S; SIGKILL GRACE_S later if it has not stopped. A resumed run (the store
#      from an earlier call, docs/results/backbone/gpu.sqlite, copied in first) skips what is done.
#   4. prints a table of the store and folds its WAL in, so $OUT/gpu.sqlite is one file.
# DRY=1: the same path on a CPU, shrunk (1 epoch, K 16/24/32, dev 32, test 32 rows, seeds
# 111,222, 1 worker, one method in phases 2 and 3; phase 4 with 2 workers, its 20 seeds and a
# 90 s cap, to pass through the worker pool and the guard), into a temp folder that is kept.
set -uo pipefail
t0=$(date +%s)
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../../.." && pwd)
carry=${CARRY:-$here/carry}
DRY=${DRY:-0}
PY=${PYTHON:-$(command -v python || command -v python3)}
GRACE_S=${GRACE_S:-15}   # SIGINT, then SIGKILL this much later
RESERVE_S=${RESERVE_S:-20}  # kept after the last sweep's deadline for the summary
MIN_S=${MIN_S:-45}       # a sweep given less than this is not started
log() { echo "[gpu $(( $(date +%s) - t0 ))s] $*"; }

if [ "$DRY" = 1 ]; then
  BUDGET_S=${BUDGET_S:-1800}
  work=$(mktemp -d /tmp/unipelt-gpu-dry.XXXXXX)
  OUT=${OUT:-$work/out}
  MODEL_DIR=${MODEL_DIR:-$work/minilm-fp32}
  WORKERS=${WORKERS:-1}
else
  BUDGET_S=${BUDGET_S:-510}  # 8.5 minutes: the issue's 9, less the machine's own overhead
  work=$(mktemp -d /tmp/unipelt-gpu.XXXXXX)
  OUT=${OUT:?set OUT to the folder whose files come back}
  MODEL_DIR=${MODEL_DIR:-/tmp/unipelt-gpu/minilm-fp32}
  WORKERS=${WORKERS:-12}
fi
trap '[ "$DRY" = 1 ] || rm -rf "$work"' EXIT  # a dry run keeps its folder to be read
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
store=$OUT/gpu.sqlite
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Python 3.13+: os.cpu_count() is what the sweep divides among its workers (threads per worker);
# in a container it may count the host's cores, not the ones this job has
export PYTHON_CPU_COUNT=${PYTHON_CPU_COUNT:-$(nproc)}
log "DRY=$DRY budget ${BUDGET_S}s workers $WORKERS out $OUT model $MODEL_DIR nproc $(nproc)"

# ---- 0. imports and the GPU
command -v timeout >/dev/null || { log "missing: timeout (coreutils): the guard needs it"; exit 3; }
"$PY" - "$DRY" <<'PYCHECK' || exit 3
import importlib.util, sys
need = ["torch", "transformers", "accelerate", "safetensors", "numpy", "pandas", "scipy", "sklearn",
        "tqdm", "yaml", "matplotlib", "datasets", "peft"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
try:
    import unipelt.cli, unipelt.harness.sweep, unipelt.harness.runner  # noqa: F401 - what the sweep imports
except ImportError as e:
    print(f"[gpu] missing: {' '.join(sorted(set(missing + [getattr(e, 'name', None) or str(e)])))}"
          " (unipelt cannot import; nothing was run)")
    sys.exit(1)
if missing:
    print(f"[gpu] missing (not needed by the sweep, so going on): {' '.join(missing)}")
import os, platform, torch, transformers
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"[gpu] python {platform.python_version()} torch {torch.__version__} transformers "
      f"{transformers.__version__} cuda {torch.version.cuda} gpu {gpu} cpus {os.cpu_count()}")
if sys.argv[1] != "1" and not torch.cuda.is_available():
    print("[gpu] no CUDA device: not running the GPU study on a CPU (DRY=1 is the CPU dry run)")
    sys.exit(1)
PYCHECK
[ -f "$carry/minilm-fp16/model.safetensors" ] || { log "no carry folder $carry: run prepare.py and carry it"; exit 3; }

# ---- 1. float16 -> float32 (transformers 5 loads a checkpoint in its saved dtype unless told)
"$PY" - "$carry/minilm-fp16" "$MODEL_DIR" <<'PYUP' || exit 4
import json, shutil, sys
from pathlib import Path
import torch
from safetensors.torch import load_file
import transformers
from transformers import AutoModel

transformers.utils.logging.disable_progress_bar()

src, dst = map(Path, sys.argv[1:])
if (dst / ".complete").is_file():
    print(f"[gpu] model: float32 copy already in {dst}")
    sys.exit(0)
tmp = dst.with_name(dst.name + ".partial")
shutil.rmtree(tmp, ignore_errors=True)
model = AutoModel.from_pretrained(src, dtype=torch.float32)
wrong = sorted({str(p.dtype) for p in model.state_dict().values() if p.is_floating_point()} - {"torch.float32"})
if wrong:
    sys.exit(f"[gpu] model: the upcast left tensors in {wrong}")
model.save_pretrained(tmp, safe_serialization=True)
for f in src.rglob("*"):  # tokenizer, 1_Pooling/config.json (the head: mean), sentence-transformers files
    rel = f.relative_to(src)
    if f.is_file() and str(rel) not in ("model.safetensors", "config.json"):
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, tmp / rel)
from unipelt.heads import declared
if declared(tmp) != "mean":
    sys.exit(f"[gpu] model: {tmp} does not declare mean pooling (1_Pooling/config.json): the head would not be the backbone's")
half, full = load_file(src / "model.safetensors"), load_file(tmp / "model.safetensors")
lost = sorted(set(half) - set(full))
differ = [n for n in full if n in half and not torch.equal(full[n], half[n].to(full[n].dtype))]
if differ or (set(lost) - {"embeddings.position_ids"}) or set(full) - set(half):
    sys.exit(f"[gpu] model: the float32 copy does not match the float16 file: differ {differ[:5]} lost {lost[:5]}")
dtype = json.loads((tmp / "config.json").read_text()).get("dtype")
(tmp / ".complete").write_text("")
shutil.rmtree(dst, ignore_errors=True)
tmp.rename(dst)
print(f"[gpu] model: {len(full)} tensors upcast to float32 in {dst} (config dtype {dtype}; head mean; "
      f"{sum(t.numel() for t in full.values()):,} values, equal to the float16 file's)")
PYUP

# ---- the data: the carried TSVs; a dry run shrinks the test sets to 64 rows
if [ "$DRY" = 1 ]; then
  for t in SST-2 STS-B; do
    mkdir -p "$work/glue/$t"
    cp "$carry/glue/$t/train.tsv.gz" "$work/glue/$t/"
    gzip -dc "$carry/glue/$t/dev.tsv.gz" | head -n 33 > "$work/glue/$t/dev.tsv"
  done
  export GLUE_DIR=$work/glue
else
  export GLUE_DIR=$carry/glue
fi

# ---- a store from an earlier call resumes (never in a dry run); its claims are dropped
earlier=$root/docs/results/backbone/gpu.sqlite
if [ "$DRY" != 1 ] && [ ! -f "$store" ] && [ -f "$earlier" ]; then
  cp "$earlier" "$store"
  log "resuming from $earlier ($("$PY" "$here/summary.py" "$store" --count) finished runs)"
fi
[ -f "$store" ] && "$PY" "$here/summary.py" "$store" --clear

# ---- 2-3. the sweeps, each under the guard
phase() {  # name cap_seconds workers sweep-args...
  local name=$1 cap=$2 workers=$3; shift 3
  local start left before after rc what
  start=$(date +%s)
  left=$(( t0 + BUDGET_S - RESERVE_S - GRACE_S - start ))
  if [ "$cap" -gt 0 ] && [ "$cap" -lt "$left" ]; then left=$cap; fi
  if [ "$left" -lt "$MIN_S" ]; then log "$name: not started (${left}s left)"; return 0; fi
  before=$("$PY" "$here/summary.py" "$store" --count 2>/dev/null); before=${before//[!0-9]/}
  log "$name: up to ${left}s, $workers worker(s)"
  timeout -s INT -k "$GRACE_S" "$left" \
    "$PY" -m unipelt sweep --store "$store" --model "$MODEL_DIR" --workers "$workers" -q "$@"
  rc=$?
  case $rc in
    0) what="complete" ;;
    1) what="complete, some runs failed (recorded as failed)" ;;
    124) what="stopped by the guard at its deadline" ;;
    130) what="interrupted" ;;
    137) what="killed ${GRACE_S}s after the guard's interrupt" ;;
    *) what="error" ;;
  esac
  after=$("$PY" "$here/summary.py" "$store" --count 2>/dev/null); after=${after//[!0-9]/}
  log "$name: rc $rc ($what); $(( ${after:-0} - ${before:-0} )) runs finished in $(( $(date +%s) - start ))s"
}

if [ "$DRY" = 1 ]; then
  small=(--epochs 1 --dev-size 32 --data-seeds 111,222)
  phase "phase 1 (dry)" 0 "$WORKERS" --grid "$here/grid-1-sst2-k100.toml" "${small[@]}" --k 16
  phase "phase 2 (dry)" 0 "$WORKERS" --grid "$here/grid-2-k500.toml" "${small[@]}" --k 24 --presets unipelt-ap
  phase "phase 3 (dry)" 0 "$WORKERS" --grid "$here/grid-3-k1000.toml" "${small[@]}" --k 32 --presets head-only
  phase "phase 4 (dry, 2 workers, 90 s cap)" 90 2 --grid "$here/grid-4-sst2-k100-rest.toml" --epochs 1 --dev-size 32 --k 16
else
  phase "phase 1: SST-2 K=100, 20 seeds" 0 "$WORKERS" --grid "$here/grid-1-sst2-k100.toml"
  phase "phase 2: SST-2, STS-B K=500" 0 "$WORKERS" --grid "$here/grid-2-k500.toml"
  phase "phase 3: SST-2, STS-B K=1000" 0 "$WORKERS" --grid "$here/grid-3-k1000.toml"
  phase "phase 4: full, BitFit SST-2 K=100" 0 "$WORKERS" --grid "$here/grid-4-sst2-k100-rest.toml"
fi

# ---- 4. what the store holds; one file
"$PY" "$here/summary.py" "$store"
commit=$(git -C "$root" rev-parse HEAD 2>/dev/null || "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['prepared_at_commit'] + ' (carry prepared at)')" "$carry/MANIFEST.json")
log "done: commit $commit; $OUT: $(cd "$OUT" && ls -l | awk 'NR>1 {printf "%s %s B; ", $9, $5}')"
exec >&- 2>&-  # close the pipe to tee, and give it a moment to write run.log's last lines
sleep 1
