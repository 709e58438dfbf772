#!/usr/bin/env bash
# The study with the backbone's own head (issue 27). Every sweep resumes, so rerunning this
# continues where the committed store stops. One heavy job at a time on 2 cores. Order:
#   1. the pilot (seed 111): every method on SST-2, then AP, LoRA, the adapter and the head-only
#      baseline on STS-B: every method must fit its training rows (analyze.py checks);
#   2. SST-2 and STS-B at K=100 over the five data seeds, seed by seed;
#   3. the same at K=500.
# The rows record the commit they ran at; run it from a clean worktree of that commit so that
# later edits do not mix into one grid (as docs/results/run.sh explains).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
store=${STORE:-$here/backbone.sqlite}
export HF_HUB_OFFLINE=1
# the GLUE TSVs beside the checkout (unipelt itself carries SST-2 only)
export GLUE_DIR=${GLUE_DIR:-$(cd "$here/../../../.." && pwd)/shared/data/glue}
unipelt sweep --grid "$here/grid-k100.toml" --tasks sst2 --data-seeds 111 --store "$store" --workers 2 -q
unipelt sweep --grid "$here/grid-k100.toml" --tasks stsb --data-seeds 111 \
  --presets head-only,lora,adapter,unipelt-ap --store "$store" --workers 2 -q
for seed in 111 222 333 444 555; do
  unipelt sweep --grid "$here/grid-k100.toml" --data-seeds $seed --store "$store" --workers 2 -q
done
for seed in 111 222 333 444 555; do
  unipelt sweep --grid "$here/grid-k500.toml" --data-seeds $seed --store "$store" --workers 2 -q
done
unipelt report --store "$store" --out "$here/report"
