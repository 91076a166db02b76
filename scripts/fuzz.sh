#!/usr/bin/env bash
# Runs every libFuzzer target of the fuzz build for SECONDS each (docs/RELIABILITY.md).
# Usage: scripts/fuzz.sh BUILD_DIR [SECONDS] [TARGET...]
# Each target starts from its seed corpus (BUILD_DIR/corpus/<parser>, written by make_seeds)
# plus what earlier runs found (BUILD_DIR/work/<parser>, kept between runs), with an input size
# limit suited to its format, -rss_limit_mb=2048 (a hostile size must be refused before it is
# allocated) and -timeout=10. A crash, leak, UB report, out-of-memory or timeout leaves the input
# in BUILD_DIR/findings/<parser>/ and makes the script fail after all targets ran. One summary
# line per target (seconds, executions, corpus size, result) goes to BUILD_DIR/fuzz_report.txt.
set -uo pipefail
build=${1:?usage: fuzz.sh BUILD_DIR [SECONDS] [TARGET...]}
seconds=${2:-60}
shift $(( $# >= 2 ? 2 : 1 ))
# Input size limits: big enough for the seeds of the format (tiny checkpoints and GGUFs are
# 20–70 KB), small enough that mutations stay fast.
declare -A max_len=(
  [config]=16384 [safetensors]=131072 [checkpoint]=131072 [tokenizer]=65536
  [corpus]=16384 [gguf]=131072 [hf_config]=8192 [hf_tokenizer]=65536)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in "$build"/fuzz_*; do [ -x "$f" ] && targets+=("$(basename "$f" | sed 's/^fuzz_//')"); done
fi
report="$build/fuzz_report.txt"
: > "$report"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
failed=()
for t in "${targets[@]}"; do
  bin="$build/fuzz_$t"
  work="$build/work/$t"; seeds="$build/corpus/$t"; findings="$build/findings/$t"
  mkdir -p "$work" "$seeds" "$findings"
  log="$build/fuzz_$t.log"
  echo "fuzz_$t: ${seconds}s, max_len ${max_len[$t]:-65536}"
  # One thread: the parsers are serial, and OpenMP's pool would only add noise to the leak check.
  OMP_NUM_THREADS=1 ASAN_OPTIONS=detect_leaks=1 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "$bin" -max_total_time="$seconds" -max_len="${max_len[$t]:-65536}" -rss_limit_mb=2048 \
    -malloc_limit_mb=2048 -timeout=10 -print_final_stats=1 -artifact_prefix="$findings/" \
    "$work" "$seeds" > "$log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
  corpus=$(ls "$work" | wc -l)
  if [ $rc -eq 0 ]; then
    result=clean
  else
    result="FINDING (exit $rc): $(grep -m1 -E 'ERROR: |FINDING|runtime error|==ERROR' "$log" | cut -c1-200)"
    failed+=("$t")
  fi
  line="fuzz_$t seconds=$seconds executions=${execs:-?} corpus=$corpus commit=$commit $result"
  echo "$line" | tee -a "$report"
  [ $rc -ne 0 ] && tail -40 "$log"
done
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz: findings in ${failed[*]} (inputs under $build/findings/, logs $build/fuzz_*.log)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets clean ($report)"
