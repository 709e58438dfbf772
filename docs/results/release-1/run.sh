#!/usr/bin/env bash
# Release 1 (moved here from docs/results/ in issue 19; paths updated to the new place). The grids
# K=100/K=500 are the ones in docs/results/, unchanged.
# The study's commands. Every sweep resumes, so rerunning this continues where the committed
# stores stop (README.md, "Coverage", says what had run).
# As it ran on 2 cores: K=100 seeds 111 and 222, then K=500 seed 111. The masking sweep, the first
# part of the seed-333 sweep (SST-2 and one STS-B run) and the experiments ran beside them in
# stores of their own, merged into these two with sqlite3 (same schema, disjoint run keys).
# A second session ran everything from the second seed-333 line on, in this order, and
# the MRPC dev-size experiment.
set -euo pipefail
store=${STORE:-docs/results/release-1/unipelt.sqlite}
export HF_HUB_OFFLINE=1
for seed in 111 222; do
  unipelt sweep --grid docs/results/grid-k100.toml --data-seeds $seed --store "$store" --workers 2 -q
done
unipelt sweep --grid docs/results/release-1/grid-masking.toml --store "$store" -q
# cheap tasks first in the late sweeps, so that more tasks are complete when time runs out
unipelt sweep --grid docs/results/grid-k500.toml --tasks sst2,mrpc,rte --data-seeds 111 --store "$store" --workers 2 -q
# cut off after SST-2 and one STS-B run; the line after it finished seed 333 in the second session
unipelt sweep --grid docs/results/grid-k100.toml --tasks sst2,stsb,cola,mrpc,rte --data-seeds 333 --store "$store" -q
unipelt sweep --grid docs/results/grid-k100.toml --tasks rte,mrpc,stsb,cola --data-seeds 333 --store "$store" --workers 2 -q
for seed in 222 333; do
  unipelt sweep --grid docs/results/grid-k500.toml --tasks sst2,mrpc,rte --data-seeds $seed --store "$store" --workers 2 -q
done
# beyond the minimum grid: K=500 on the other two tasks
unipelt sweep --grid docs/results/grid-k500.toml --tasks stsb,cola --store "$store" --workers 2 -q
unipelt report --store "$store" --out docs/results/release-1
# its analysis.md came from the analyze.py of that time (git show 99377d2:docs/results/analyze.py)

# Targeted experiments, in their own store
exp=${EXPERIMENTS:-docs/results/release-1/experiments.sqlite}
unipelt sweep --grid docs/results/release-1/grid-epochs.toml --store "$exp" -q
unipelt sweep --grid docs/results/release-1/grid-lr.toml --store "$exp" -q
unipelt sweep --grid docs/results/release-1/grid-mrpc-dev.toml --store "$exp" --workers 2 -q
unipelt report --store "$exp" --out docs/results/release-1/experiments
