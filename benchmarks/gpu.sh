#!/usr/bin/env bash
# The GPU check of issue 18, as one short script for a lent device (about 15 minutes in all).
# The device has no network, so AdapterHub's environment cannot be built there: unipelt and peft
# only, side by side. Writes docs/benchmarks/results-cuda*.md; copy them back and cite them in
# docs/benchmarks.md beside the CPU figures.
#   bash benchmarks/gpu.sh            # on the device, from the repository root
set -euo pipefail
export HF_HUB_OFFLINE=1
python -c "import torch; assert torch.cuda.is_available(), 'no GPU'; print(torch.cuda.get_device_name())"
methods=frozen,lora,prefix,unipelt-ap,unipelt-apl,mam
out=${OUT:-docs/benchmarks}
python benchmarks/run.py --device cuda --methods $methods --libraries unipelt,peft --repeats 3 \
  --out "$out/results-cuda.md"
python benchmarks/run.py --device cuda --methods $methods --libraries unipelt,peft --repeats 3 --bf16 \
  --out "$out/results-cuda-bf16.md"
python benchmarks/run.py --device cuda --methods lora,unipelt-apl --libraries unipelt --repeats 1 --compile \
  --out "$out/results-cuda-compile.md"
