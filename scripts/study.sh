#!/usr/bin/env bash
# make study: the miniature reproduction of docs/RESULTS.md. Trains the 15 configs of
# configs/study/ to one training-FLOP budget (as `moe params` counts it) for each seed, evaluates
# each on the whole val split (moe compare), plots each seed's runs (tools/plot.py), writes the
# tables of docs/RESULTS.md to runs/study/report.md (tools/study_report.py) and its figures to
# runs/study/img (tools/plot_study.py).
# Resumable: rerunning skips the runs already in runs/study/seed*/results.jsonl.
# About 2 hours on 2 cores at the default budgets (the run in docs/RESULTS.md took 1 h 40 min
# without the periodic evaluations moe compare has made since, which add ~15%). Environment:
#   STUDY_FLOPS  training FLOPs per run (default 1e13)
#   STUDY_SEEDS  seeds (default "1 2")
#   STUDY_LONG_FLOPS  budget of the comparison-1 rerun (default 2.5e13; empty = skip it)
#   STUDY_OUT    output directory (default runs/study)
#   MOE          the moe binary (default build/moe)
set -euo pipefail
FLOPS=${STUDY_FLOPS:-1e13}
SEEDS=${STUDY_SEEDS:-1 2}
OUT=${STUDY_OUT:-runs/study}
MOE=${MOE:-build/moe}
# Comparison 1: dense vs Switch / GShard / Mixtral-style; 2: granularity at fixed E;
# 3: PEER (with and without query BatchNorm) vs dense and MoE; 4: capacity and the aux loss.
CONFIGS="dense switch gshard mixtral g1 g2 g4 g8 peer-bn peer-nobn cap1.0 cap1.25 cap2.0
         cap1.25-noaux dropless-noaux"
paths=()
for c in $CONFIGS; do paths+=("configs/study/$c.json"); done
for seed in $SEEDS; do
  echo "== seed $seed: ${#paths[@]} configs at $FLOPS training FLOPs each -> $OUT/seed$seed"
  $MOE compare --flops "$FLOPS" --configs "${paths[@]}" --set "train.seed=$seed" --out "$OUT/seed$seed"
done
# Comparison 1 again at 2.5× the budget (one seed; dense still sees less than one epoch of
# Brown's train split): does the gap between dense and MoE move with compute?
if [[ -n ${STUDY_LONG_FLOPS-2.5e13} ]]; then
  LONG=${STUDY_LONG_FLOPS:-2.5e13}
  echo "== comparison 1 at $LONG training FLOPs (seed 1) -> $OUT/long"
  $MOE compare --flops "$LONG" --configs configs/study/{dense,switch,gshard,mixtral}.json \
    --set train.seed=1 --out "$OUT/long"
fi
/usr/bin/python3 tools/study_report.py --dir "$OUT" > "$OUT/report.md.tmp"
mv "$OUT/report.md.tmp" "$OUT/report.md"
/usr/bin/python3 tools/plot_study.py --dir "$OUT" --out "$OUT/img"
echo "== tables: $OUT/report.md; figures: $OUT/img/*.png (per seed: $OUT/seed*/*.png)"
