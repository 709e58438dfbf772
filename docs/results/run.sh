#!/usr/bin/env bash
# The study's exact commands, in the order they ran. Every sweep resumes: rerun to continue.
set -euo pipefail
store=${STORE:-docs/results/unipelt.sqlite}
export HF_HUB_OFFLINE=1
for seed in 111 222; do
  unipelt sweep --grid docs/results/grid-k100.toml --data-seeds $seed --store "$store" --workers 2 -q
done
unipelt sweep --grid docs/results/grid-masking.toml --store "$store" --workers 2 -q
# K=500 got its first seed before K=100 its third, so that both K have runs when time runs out
# and the late sweeps take the cheap tasks first, so that more tasks are complete at the cut-off
unipelt sweep --grid docs/results/grid-k500.toml --tasks sst2,mrpc,rte --data-seeds 111 --store "$store" --workers 2 -q
unipelt sweep --grid docs/results/grid-k100.toml --tasks sst2,stsb,cola,mrpc,rte --data-seeds 333 --store "$store" --workers 2 -q
for seed in 222 333; do
  unipelt sweep --grid docs/results/grid-k500.toml --data-seeds $seed --store "$store" --workers 2 -q
done
unipelt report --store "$store" --out docs/results
python docs/results/analyze.py --store "$store" > docs/results/analysis.md

# Targeted experiments, in their own store (they ran beside the sweeps above)
exp=${EXPERIMENTS:-docs/results/experiments.sqlite}
unipelt sweep --grid docs/results/grid-epochs.toml --store "$exp" -q
unipelt sweep --grid docs/results/grid-lr.toml --store "$exp" -q
unipelt report --store "$exp" --out docs/results/experiments
