#!/usr/bin/env bash
# The study's commands on the corrected library (issue 19). Every sweep resumes, so rerunning this
# continues where the committed stores stop. One heavy job at a time on 2 cores: the uncut grid
# first (the paper's questions are answered on it), then the head ablation, then the cut K=100
# and K=500 grids, seed by seed so that a partial store stays balanced, then the head ablation for
# the single methods at K=500 and K=100. release-1/ holds the first study and its commands.
# Every row was made by the library at commit ac91e80 (the fidelity release), run from a
# worktree so that later library commits do not mix into one grid. To resume the same way:
#   git worktree add ../study ac91e80
#   cp docs/results/{*.sqlite,grid-head*.toml,*-pooler.json} ../study/docs/results/
#   main=$PWD; (cd ../study && PYTHONPATH=src bash "$main/docs/results/run.sh")
# and copy the stores back (sqlite3 SRC ".backup DST") to commit them. Run this file from here, not
# a copy in the worktree: a changed tracked file there marks every row's commit "+dirty".
# Running it from a newer checkout also works; analyze.py's provenance block then shows both commits.
set -euo pipefail
uncut=${UNCUT:-docs/results/uncut.sqlite}
head=${HEAD:-docs/results/head.sqlite}
head_k100=${HEAD_K100:-docs/results/head-k100.sqlite}
head_k500=${HEAD_K500:-docs/results/head-k500.sqlite}
store=${STORE:-docs/results/unipelt.sqlite}
export HF_HUB_OFFLINE=1
# the GLUE TSVs beside the checkout (unipelt itself carries SST-2 only)
export GLUE_DIR=${GLUE_DIR:-$(cd "$(dirname "$0")/../../.." && pwd)/shared/data/glue}
for seed in 111 222 333; do
  unipelt sweep --grid docs/results/grid-uncut.toml --data-seeds $seed --store "$uncut" --workers 2 -q
done
for seed in 111 222 333; do  # the head ablation: UniPELT-AP with the pooler trained, same protocol
  unipelt sweep --grid docs/results/grid-head.toml --data-seeds $seed --store "$head" --workers 2 -q
done
for seed in 111 222 333; do
  unipelt sweep --grid docs/results/grid-k100.toml --data-seeds $seed --store "$store" --workers 2 -q
done
for seed in 111 222 333; do
  unipelt sweep --grid docs/results/grid-k500.toml --tasks sst2,mrpc,rte --data-seeds $seed --store "$store" --workers 2 -q
done
unipelt sweep --grid docs/results/grid-k500.toml --tasks stsb,cola --store "$store" --workers 2 -q
# the head ablation for the single methods, on the cut K=500 and K=100 protocols (SST-2's seeds first)
unipelt sweep --grid docs/results/grid-head-k500.toml --store "$head_k500" --workers 2 -q
unipelt sweep --grid docs/results/grid-head-k100.toml --store "$head_k100" --workers 2 -q
unipelt report --store "$uncut" --out docs/results/uncut
unipelt report --store "$store" --out docs/results/cut
python docs/results/analyze.py
