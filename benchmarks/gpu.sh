#!/usr/bin/env bash
# The GPU check of issue 30 as one prepared script for a lent device, at most 8 minutes: unipelt and
# peft in one process on random-weight BERT models of MiniLM-L6's and bert-base's shapes (made on
# the device: the real weights cannot be sent there), fp32 and bf16 autocast, eager and compiled,
# train step, inference at batch 128 and batch-1 latency (benchmarks/gpu_table.py), then the
# op counts for reference. Writes $OUT (default docs/benchmarks) results-gpu.md and opcount.md;
# copy them back and cite them in docs/benchmarks.md.
#   bash benchmarks/gpu.sh            # on the device, from the repository root
#   bash benchmarks/gpu.sh --tiny     # dry run on the CPU: tiny sizes, compiled rows on aot_eager
set -euo pipefail
export HF_HUB_OFFLINE=1
# the device gets a copy of the working tree, not an installed unipelt: import it from src/
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
out=${OUT:-docs/benchmarks}
mkdir -p "$out"
cd benchmarks
if [[ "${1:-}" == "--tiny" ]]; then
  timeout 600 python gpu_table.py --tiny --out "${OUT:-/tmp}/results-gpu-tiny.md"
  exit
fi
python -c "import torch; assert torch.cuda.is_available(), 'no GPU'; print(torch.cuda.get_device_name())"
# rows start until 390 s have passed; the timeout ends a row that would run past 7.5 minutes
timeout 450 python gpu_table.py --budget 390 --out "../$out/results-gpu.md" || echo "gpu_table stopped early: rows so far are in $out/results-gpu.md"
CUDA_VISIBLE_DEVICES= timeout 30 python opcount.py --only "peft lora,lora,unipelt-apl" > "../$out/opcount.md" || true
