#!/usr/bin/python3
"""bench/RESULTS.md keeps the latest run of each benchmark; bench/run_bench.sh replaces a section.

Run by ctest as:  /usr/bin/python3 tests/python/test_bench_results.py [build_dir]
The section logic (bench/results_md.py) is tested on small texts, and the whole script on one
benchmark, `run_bench.sh peer`, with a fake build/moe and a fake PyTorch side that print recorded
JSON results (those of the 4d023db run at 2^20 experts): the script must turn them into that
run's table rows, parse each result once, replace only the peer section of a copy of
RESULTS.md, and leave the other sections byte for byte.
"""
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import results_md  # noqa: E402

ORDER = ["dense", "moe", "peer", "mpi"]


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def section(name, *lines):
    return "\n".join([f"## {name}", "", *lines])


class ReplaceSection(unittest.TestCase):
    def setUp(self):
        text = ""
        for name in ORDER:
            text = results_md.replace_section(
                text, name, section(name, f"| {name} row | 1 | 2 | 0.50 |", "",
                                    f"- {name} note", f"- (Added by hand.) {name} hand note"),
                ORDER)
        self.text = text

    def test_a_new_file_starts_with_the_header_and_keeps_the_order(self):
        self.assertTrue(self.text.startswith(results_md.HEADER))
        self.assertEqual(re.findall(r"(?m)^## (\S+)$", self.text), ORDER)
        self.assertTrue(self.text.endswith("hand note\n"))

    def test_replacing_a_section_leaves_the_others_byte_for_byte(self):
        new = results_md.replace_section(self.text, "moe",
                                         section("moe", "| moe row | 3 | 4 | 0.75 |") + "\n\n",
                                         ORDER)
        pre, old_secs = results_md.split_sections(self.text)
        pre2, new_secs = results_md.split_sections(new)
        self.assertEqual(pre, pre2)
        self.assertEqual([n for n, _ in new_secs], ORDER)
        for (n, a), (_, b) in zip(old_secs, new_secs):
            if n != "moe":
                self.assertEqual(a, b)
        self.assertEqual(dict(new_secs)["moe"], section("moe", "| moe row | 3 | 4 | 0.75 |"))
        self.assertNotIn("moe hand note", new)  # hand notes go with the numbers they explained

    def test_a_missing_benchmark_goes_before_the_next_one_in_order(self):
        text = self.text
        for name in ["peer", "dense"]:
            pre, secs = results_md.split_sections(text)
            text = "\n\n".join([pre] + [s for n, s in secs if n != name]) + "\n"
        text = results_md.replace_section(text, "peer", section("peer", "- new"), ORDER)
        self.assertEqual(re.findall(r"(?m)^## (\S+)$", text), ["moe", "peer", "mpi"])
        text = results_md.replace_section(text, "dense", section("dense", "- new"), ORDER)
        self.assertEqual(re.findall(r"(?m)^## (\S+)$", text), ORDER)
        text = results_md.replace_section(text, "other", section("other", "- new"), ORDER)
        self.assertEqual(re.findall(r"(?m)^## (\S+)$", text), ORDER + ["other"])

    def test_a_section_must_start_with_its_heading(self):
        with self.assertRaises(ValueError):
            results_md.replace_section(self.text, "moe", section("peer", "- x"), ORDER)

    def test_the_committed_file_has_one_section_per_benchmark_in_script_order(self):
        script = read(os.path.join(ROOT, "bench", "run_bench.sh"))
        all_benches = re.search(r"(?m)^ALL_BENCHES=\(([^)]*)\)", script).group(1).split()
        text = read(os.path.join(ROOT, "bench", "RESULTS.md"))
        self.assertEqual(re.findall(r"(?m)^## (\S+)$", text), all_benches)
        for name, body in results_md.split_sections(text)[1]:
            self.assertRegex(body.splitlines()[2], r"^Measured \d{4}-\d\d-\d\d .*Machine: .*"
                             r"Commit: \w+", name)


# Recorded results, in the order the script asks for them (2 rounds).
SGEMM = ['{"blas": "OpenBLAS (fake)", "gflops": 216.0, "size": 2048, "threads": 2}',
         '{"blas": "OpenBLAS (fake)", "gflops": 267.7, "size": 2048, "threads": 2}']
MOE_PEER = ['{"ms_per_step": 215.1, "unique_rows_per_step": 199541,'
            ' "bytes_per_step": 4062572544.0, "memory_bandwidth_bytes_per_s": 2.4e10,'
            ' "bandwidth_fraction": 0.787, "threads": 2}',
            '{"ms_per_step": 205.34, "unique_rows_per_step": 199541,'
            ' "bytes_per_step": 4062572544.0, "memory_bandwidth_bytes_per_s": 2.553e10,'
            ' "bandwidth_fraction": 0.77495, "threads": 2}']
TORCH_PEER = ['{"ms_per_step": 4218.0, "unique_rows_per_step": 200803}',
              '{"ms_per_step": 3154.75, "unique_rows_per_step": 200803}']
EXPECTED_ROWS = [
    "| sgemm 2048³ (GFLOP/s) | 267.7 | – | – |",
    "| PEER N=2^20 ms/step (µs/token) | 205.3 (100.3) | 3154.8 (1540.4) | 15.36 |",
    "| PEER N=2^20 distinct rows / MB moved / % of bandwidth | 199541 / 4063 MB / 77.5% of 25.5 "
    "GB/s | 200803 / – / – | – |",
]
EXPECTED_NOTES = [
    "- moe.cpp BLAS: OpenBLAS (fake)",
    "- sgemm: best of 2 runs (GFLOP/s, in run order: 216 268)",
    "- PEER N=2^20: best of 2 alternating runs per side (ms/step, in run order: moe.cpp 215 205;"
    " PyTorch 4218 3155)",
]

# Prints line n (counted in the file $DIR/count.NAME) of $DIR/NAME.jsonl.
REPLAY = """next() { local c=$DIR/count.$1 n; n=$(( $(cat "$c" 2>/dev/null || echo 0) + 1 )); \
echo "$n" >"$c"; sed -n "${n}p" "$DIR/$1.jsonl"; }"""
FAKE_MOE = """#!/bin/bash
{replay}
case "$1 $2" in
  "bench sgemm") next sgemm ;;
  "bench peer") next moe_peer ;;
  "bench moe") next moe_moe ;;
  "bench train") next moe_train ;;
  "params --config") next moe_params ;;
  *) echo "fake moe: unexpected $*" >&2; exit 2 ;;
esac
"""
FAKE_PYTHON = """#!/bin/bash
{replay}
echo "$1" >>"$DIR/calls"
case "$1" in
  bench/pytorch_*.py)
    if [[ " $* " == *" --check "* ]]; then echo "check passed"; exit 0; fi
    s=${{1#bench/pytorch_}}; s=torch_${{s%.py}}
    [[ " $* " != *" --impl "* ]] || s+=_$(sed 's/.* --impl \\([a-z]*\\).*/\\1/' <<<" $* ")
    [[ " $* " != *" --gemm-ceiling "* ]] || s+=_gemm
    next "$s" ;;
  *) exec /usr/bin/python3 "$@" ;;
esac
"""


def run_bench(d, *benches):
    """Runs bench/run_bench.sh BENCHES (2 rounds) with the fakes on a copy of RESULTS.md in d,
    where the recorded results are; returns (the run, RESULTS.md before, after, the fake
    python's first arguments)."""
    for name, body in [("moe", FAKE_MOE), ("python", FAKE_PYTHON)]:
        path = os.path.join(d, name)
        with open(path, "w") as f:
            f.write(body.format(replay=REPLAY))
        os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    results = os.path.join(d, "RESULTS.md")
    shutil.copy(os.path.join(ROOT, "bench", "RESULTS.md"), results)
    before = read(results)
    env = dict(os.environ, DIR=d, MOE=os.path.join(d, "moe"), PYTHON=os.path.join(d, "python"),
               RESULTS=results, BENCH_ROUNDS="2", PEER_LOG2_EXPERTS="20",
               OPENBLAS_CORETYPE="SkylakeX")
    r = subprocess.run(["bash", os.path.join(ROOT, "bench", "run_bench.sh"), *benches], env=env,
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise AssertionError(f"run_bench.sh {' '.join(benches)} failed:\n{r.stderr}")
    return r, before, read(results), read(os.path.join(d, "calls")).split()


def write_jsonl(d, records):
    for name, lines in records.items():
        with open(os.path.join(d, name + ".jsonl"), "w") as f:
            f.write("\n".join(lines) + "\n")


class RunBenchReplacesItsSection(unittest.TestCase):
    def test_peer_run_from_recorded_results(self):
        with tempfile.TemporaryDirectory() as d:
            write_jsonl(d, {"sgemm": SGEMM, "moe_peer": MOE_PEER, "torch_peer": TORCH_PEER})
            r, before, after, calls = run_bench(d, "peer")

        pre, old = results_md.split_sections(before)
        pre2, new = results_md.split_sections(after)
        self.assertEqual(pre, pre2)
        self.assertEqual([n for n, _ in new], [n for n, _ in old])
        for (n, a), (_, b) in zip(old, new):
            if n != "peer":
                self.assertEqual(a, b, f"section {n} changed")
        peer = dict(new)["peer"]
        self.assertIn(peer, r.stdout)  # printed as written
        lines = peer.splitlines()
        self.assertRegex(lines[2], r"^Measured \d{4}-\d\d-\d\d \(run_bench.sh peer\)\. Machine: "
                         r".+\. Commit: .+\. OPENBLAS_CORETYPE=SkylakeX \(set by the caller\); "
                         r"OMP_NUM_THREADS=2\.$")
        self.assertEqual([l for l in lines if l.startswith("| ")][1:], EXPECTED_ROWS)
        notes = [l for l in lines if l.startswith("- ")]
        for n in EXPECTED_NOTES:
            self.assertIn(n, notes)
        self.assertTrue(any(n.startswith("- PEER: bench/pytorch_peer.py --check passed")
                            for n in notes))
        self.assertFalse(any("Added by hand" in n for n in notes))
        # Each of the 6 JSON results was parsed once (one `python -c` each), then one call to
        # write the section.
        self.assertEqual(calls.count("-c"), len(SGEMM) + len(MOE_PEER) + len(TORCH_PEER))
        self.assertEqual(calls.count("bench/results_md.py"), 1)

    def test_dense_and_moe_run_from_recorded_results(self):
        # dense: moe.cpp 9859 tokens/s against PyTorch 6418 at 21.24 MFLOP/token; moe: one shape
        # of the two is enough to check (the script runs both with the same records).
        train = ['{"ms_per_step": 424.0, "tokens_per_s": 9660.0, "batch": 16, "seq_len": 256,'
                 ' "threads": 2, "loss": 5.5}',
                 '{"ms_per_step": 415.5, "tokens_per_s": 9859.0, "batch": 16, "seq_len": 256,'
                 ' "threads": 2, "loss": 5.5}']
        torch_dense = ['{"ms_per_step": 638.2, "tokens_per_s": 6418.0, "torch": "1.13.0a0",'
                       ' "blas_core": "SkylakeX", "params": 3279104, "moe_params": 3279104,'
                       ' "params_match": true, "forward_ms": 232.4, "backward_ms": 393.5,'
                       ' "optimizer_ms": 12.6}'] * 2
        def layer(ms, gf, load):
            return (f'{{"ms_per_step": {ms}, "gflops": {gf}, "max_over_mean_load": {load},'
                    ' "forward_ms": 100.0, "backward_ms": 200.0, "rows_per_expert": 1024}')
        records = {
            "sgemm": ['{"blas": "OpenBLAS (fake)", "gflops": 300.0, "size": 2048}'] * 10,
            "moe_params": ['{"flops_per_token_train": 21240000.0}'],
            "moe_train": train, "torch_dense": torch_dense,
            "moe_moe": [layer(300.0, 250.0, 1.05), layer(283.3, 272.9, 1.05)] * 2,
            "torch_moe_loop": [layer(379.3, 203.8, 1.03)] * 4,
            "torch_moe_bmm": [layer(478.6, 161.5, 1.03)] * 4,
            "torch_moe_gemm": [layer(290.0, 266.0, 1.0)] * 4,
        }
        with tempfile.TemporaryDirectory() as d:
            write_jsonl(d, records)
            r, before, after, calls = run_bench(d, "dense", "moe")
        old = dict(results_md.split_sections(before)[1])
        new = dict(results_md.split_sections(after)[1])
        self.assertEqual(list(new), list(old))
        for n in ["peer", "mpi"]:
            self.assertEqual(new[n], old[n])
        rows = {l.split(" | ")[0][2:]: l for l in new["dense"].splitlines() if l.startswith("| ")}
        self.assertEqual(rows["dense train (tokens/s)"],
                         "| dense train (tokens/s) | 9859 | 6418 | 1.54 |")
        self.assertEqual(rows["dense model FLOP/s ÷ sgemm FLOP/s"],
                         "| dense model FLOP/s ÷ sgemm FLOP/s | 69.8% | 45.4% | – |")
        self.assertIn("- PyTorch 1.13.0a0, OpenBLAS core SkylakeX; dense parameters: PyTorch"
                      " 3279104, moe.cpp 3279104 (match)", new["dense"])
        self.assertNotIn("MoE E=", new["dense"])
        moe_rows = [l for l in new["moe"].splitlines() if l.startswith("| MoE E=8 ")]
        self.assertEqual(moe_rows[:3], [
            "| MoE E=8 k=2 H=1024 vs PyTorch loop (ms/step) | 283.3 | 379.3 | 1.34 |",
            "| MoE E=8 k=2 H=1024 vs PyTorch bmm (ms/step) | 283.3 | 478.6 | 1.69 |",
            "| MoE E=8 k=2 H=1024 expert GFLOP/s (PyTorch: loop / bmm) | 272.9 | 203.8 / 161.5"
            " | – |"])
        self.assertNotIn("dense train", new["moe"])
        # One parse per result: 2 sgemm + params + 2·2 train + 2 shapes · 2 rounds · (sgemm +
        # 4 sides), then one results_md.py call per benchmark.
        self.assertEqual(calls.count("-c"), 2 + 1 + 4 + 2 * 2 * 5)
        self.assertEqual(calls.count("bench/results_md.py"), 2)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1])
