#!/usr/bin/env bash
# make run: train the default model on Brown, then report held-out bits per byte next to xz -9
# on the same test text, and print a sample. Assumes `make build` and the corpus (make data).
set -euo pipefail
CONFIG=${1:-configs/default.json}
MOE=build/moe
DATA=$(/usr/bin/python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('data',{}).get('dir','data/brown'))" "$CONFIG")
OUT=$(/usr/bin/python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('train',{}).get('out_dir','runs/default'))" "$CONFIG")

echo "== training $CONFIG on $DATA (checkpoints and metrics.jsonl in $OUT)"
# --overwrite: `make run` twice retrains from scratch (a new run otherwise refuses a directory
# that holds one).
$MOE train --config "$CONFIG" --overwrite
CKPT="$OUT/final.safetensors"
[ -f "$CKPT" ] || CKPT="$OUT/last.safetensors"

echo
echo "== held-out evaluation on $DATA/test.txt"
MODEL_BPB=$($MOE eval --checkpoint "$CKPT" --split test --json | /usr/bin/python3 -c "import json,sys; print('%.4f' % json.load(sys.stdin)['bpb'])")
BYTES=$(wc -c < "$DATA/test.txt")
XZ_BYTES=$(xz -9 -e -c "$DATA/test.txt" | wc -c)
XZ_BPB=$(/usr/bin/python3 -c "print('%.4f' % ($XZ_BYTES * 8 / $BYTES))")
printf '  %-28s %s bits per byte\n' "moe ($(basename "$CKPT"))" "$MODEL_BPB" "xz -9e (same test text)" "$XZ_BPB"
if /usr/bin/python3 -c "import sys; sys.exit(0 if $MODEL_BPB < $XZ_BPB else 1)"; then
  echo "  the model compresses the held-out text better than xz"
else
  echo "  the model does NOT beat xz on this run"
fi

echo
# 115 tokens: with the 13-byte prompt they fill the 128 positions the model was trained on (generate's
# default context for our checkpoints; RoPE positions past it were never trained).
echo "== sample (temperature 0.8, top-p 0.95, seed 1)"
$MOE generate --checkpoint "$CKPT" --prompt "The jury said" --tokens 115 --temperature 0.8 --top-p 0.95 --seed 1
