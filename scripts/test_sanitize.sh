#!/usr/bin/env bash
# The test suite under AddressSanitizer + UndefinedBehaviorSanitizer (`make test-sanitize`;
# docs/RELIABILITY.md). Usage: scripts/test_sanitize.sh BUILD_DIR (built by the Makefile with
# -fsanitize=address,undefined -fno-sanitize-recover=undefined).
# Runs every gtest (ctest, one process per test) and then the Python tests that drive `moe`
# itself with MOE_BIN pointing at the sanitized binary. Any ASan report, leak or UBSan report
# fails the test it happens in.
set -euo pipefail
build=${1:?usage: test_sanitize.sh BUILD_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$build" && pwd)
# detect_leaks: LeakSanitizer at exit. Suppressions (scripts/sanitize.supp) are listed and
# justified there. abort_on_error: a report is a test failure, with the core of the story on
# stderr. UBSan prints the stack and stops at the first report.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1
export LSAN_OPTIONS=suppressions=$root/scripts/sanitize.supp:print_suppressions=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:suppressions=$root/scripts/sanitize.supp
jobs=${JOBS:-$(nproc)}
start=$(date +%s)
(cd "$build" && ctest -j "$jobs" --output-on-failure -E '^py\.' --timeout 1500)
gtest_s=$(( $(date +%s) - start ))
# The CLI tests drive the sanitized `moe` (bad flags, bad files: the error paths).
MOE_BIN=$build/moe PYTHONPATH=$root/tools /usr/bin/python3 "$root/tests/cli/test_cli.py"
echo "test-sanitize: gtests ${gtest_s}s, all $(( $(date +%s) - start ))s"
