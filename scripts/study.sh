#!/usr/bin/env bash
# make study: the miniature reproduction of docs/RESULTS.md. Trains the 15 configs of
# configs/study/ to one training-FLOP budget (as `moe params` counts it) for each seed, evaluates
# each on the whole val split (moe compare), plots each seed's runs (tools/plot.py), writes the
# tables of docs/RESULTS.md to runs/study/report.md (tools/study_report.py) and its figures to
# runs/study/img (tools/plot_study.py).
# Resumable: rerunning skips the runs already in runs/study/seed*/results.jsonl.
# About 5 hours on 2 cores at the default budgets (comparisons 1-4 took 1 h 40 min in the run of
# docs/RESULTS.md; 5, 6 and 8 add 20 runs at the same budget, 7 the G runs at 2.5e12 and 4e13).
# Environment:
#   STUDY_FLOPS  training FLOPs per run (default 1e13)
#   STUDY_SEEDS  seeds (default "1 2")
#   STUDY_LONG_FLOPS  budget of the comparison-1 rerun (default 2.5e13; empty = skip it)
#   STUDY_G_FLOPS  comparison 7's other budgets for G = 1, 2, 4, 8, seed 1 (default "2.5e12 4e13";
#                  the main budget's point is comparison 2's seed-1 runs; empty = skip them)
#   STUDY_OUT    output directory (default runs/study)
#   MOE          the moe binary (default build/moe)
set -euo pipefail
FLOPS=${STUDY_FLOPS:-1e13}
SEEDS=${STUDY_SEEDS:-1 2}
OUT=${STUDY_OUT:-runs/study}
MOE=${MOE:-build/moe}
# Comparison 1: dense vs Switch / GShard / Mixtral-style; 2: granularity at fixed E;
# 3: PEER (with and without query BatchNorm) vs dense and MoE; 4: capacity and the aux loss;
# 5: the balancing loss's scope (micro-batch, global batch, sequence); 6: ReMoE vs top-k;
# 8: DeepSeek-V3's bias balancing (sign, sign-centred) vs the aux loss.
CONFIGS="dense switch gshard mixtral g1 g2 g4 g8 peer-bn peer-nobn cap1.0 cap1.25 cap2.0
         cap1.25-noaux dropless-noaux scope-micro scope-global scope-seq remoe-e8 topk-e32
         remoe-e32 bal-aux bal-sign bal-centred"
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
# Comparison 7: does the optimal G grow with the budget? G = 1, 2, 4, 8 at two more budgets (seed
# 1), and the scaling law fitted to the three budgets' runs (moe scaling fit).
for F in ${STUDY_G_FLOPS-2.5e12 4e13}; do
  echo "== comparison 7: G = 1, 2, 4, 8 at $F training FLOPs (seed 1) -> $OUT/gbudget-$F"
  $MOE compare --flops "$F" --configs configs/study/{g1,g2,g4,g8}.json --set train.seed=1 \
    --out "$OUT/gbudget-$F"
done
/usr/bin/python3 tools/study_report.py --dir "$OUT" --fit-input "$OUT/g_budget_runs.jsonl"
if [[ $(wc -l < "$OUT/g_budget_runs.jsonl") -ge 7 ]]; then
  $MOE scaling fit --runs "$OUT/g_budget_runs.jsonl" --json > "$OUT/g_budget_fit.json.tmp"
  mv "$OUT/g_budget_fit.json.tmp" "$OUT/g_budget_fit.json"
fi
/usr/bin/python3 tools/study_report.py --dir "$OUT" > "$OUT/report.md.tmp"
mv "$OUT/report.md.tmp" "$OUT/report.md"
/usr/bin/python3 tools/plot_study.py --dir "$OUT" --out "$OUT/img"
echo "== tables: $OUT/report.md; figures: $OUT/img/*.png (per seed: $OUT/seed*/*.png)"
