#!/usr/bin/python3
"""tools/plot_scaling.py against the moe binary.

Run by ctest as:  /usr/bin/python3 tests/python/test_plot_scaling.py <build_dir>
with MOE_BIN=<build_dir>/moe and PYTHONPATH=<repo>/tools. Writes a synthetic runs.jsonl drawn
from the moe-e64 law (Krajewski et al. 2024) with small noise, runs both subcommands into a
temporary directory and checks the PNGs; also checks the script's own law evaluation against
`moe scaling law` and that the fitted law recovers the synthetic data.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.join(HERE, "..", "..", "tools")
sys.path.insert(0, TOOLS)  # also works without PYTHONPATH
import plot_scaling as ps  # noqa: E402

SCRIPT = os.path.join(TOOLS, "plot_scaling.py")
BUILD_DIR = None  # set from argv in __main__
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
E64 = {"a": 18.1, "alpha": 0.115, "b": 30.8, "beta": 0.147, "g": 2.1, "gamma": 0.58, "c": 0.47}


def _moe():
    if os.environ.get("MOE_BIN"):
        return os.environ["MOE_BIN"]
    build = BUILD_DIR or os.environ.get("MOE_BUILD_DIR")
    return os.path.join(build, "moe") if build else None


def _synthetic_runs(path, seed=0, noise=0.01):
    """24 runs: N 1e6..1e8 (4 sizes) × D 1e7..1e9 (2 per size) × G 1, 2, 4, from the moe-e64 law.

    FLOPs follow the paper's shape assumptions at E = 64 (d = 64·n_blocks,
    N = d²·(8E+4)·n_blocks, F = (72·d² + 14·d·E·G)·n_blocks·D)."""
    rng = np.random.default_rng(seed)
    E = 64
    rows = []
    for i, N in enumerate(np.logspace(6, 8, 4)):
        for D in np.logspace(7, 9, 4)[i % 2::2]:
            for G in (1, 2, 4):
                nb = (N / (4096.0 * (8 * E + 4))) ** (1 / 3)
                d = 64 * nb
                flops = (72 * d * d + 14 * d * E * G) * nb * D
                loss = float(ps.law_loss(E64, N, D, G)) + rng.normal(0, noise)
                rows.append({"name": f"n{N:.0e}-d{D:.0e}-g{G}", "N": N, "D": D, "G": G, "E": E,
                             "flops": flops, "loss": loss, "val_bpb": loss / np.log(2) / 4})
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.write("\n")  # a blank line is allowed
    return rows


def _check_png(test, path, min_bytes=10_000):
    test.assertTrue(os.path.isfile(path), f"{path} not written")
    with open(path, "rb") as f:
        data = f.read()
    test.assertEqual(data[:8], PNG_MAGIC, f"{path}: not a PNG")
    test.assertGreater(len(data), min_bytes, f"{path}: only {len(data)} bytes")
    test.assertEqual(data[12:16], b"IHDR")
    width, height = struct.unpack(">II", data[16:24])
    test.assertTrue(300 <= width <= 1200 and 200 <= height <= 1000, (width, height))
    return width, height


@unittest.skipUnless(_moe() and os.path.exists(_moe()), "the moe binary was not found (MOE_BIN)")
class PlotScalingTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.runs = os.path.join(self.dir, "runs.jsonl")
        self.rows = _synthetic_runs(self.runs)

    def tearDown(self):
        self.tmp.cleanup()

    def _script(self, *args):
        return subprocess.run([sys.executable, SCRIPT, *args, "--moe", _moe()],
                              capture_output=True, text=True, timeout=120)

    def test_runs_figure(self):
        self.assertGreaterEqual(len(self.rows), 20)
        out = os.path.join(self.dir, "figs")
        p = self._script("runs", "--runs", self.runs, "--out", out, "--bootstrap", "10")
        self.assertEqual(p.returncode, 0, p.stderr)
        path = os.path.join(out, "loss_vs_flops.png")
        self.assertEqual(p.stdout.strip(), path)
        self.assertEqual(_check_png(self, path), (600, 400))

    def test_plan_figure(self):
        out = os.path.join(self.dir, "figs")
        p = self._script("plan", "--out", out, "--expansion", "64")
        self.assertEqual(p.returncode, 0, p.stderr)
        _check_png(self, os.path.join(out, "optimal_granularity.png"))

    def test_plan_values(self):
        # The planner's findings the figure shows: G grows with the budget, never G = 1, and
        # at 1e20 FLOPs G = 16 with a dense model needing ~20× the compute.
        _, plans = ps.plot_plan(os.path.join(self.dir, "p"), _moe(), 64, 1e17, 1e25, 9)
        gs = [p["granularity"] for p in plans]
        self.assertEqual(gs, sorted(gs))
        self.assertGreater(min(gs), 1)
        at20 = plans[3]
        self.assertAlmostEqual(at20["flops"], 1e20, delta=1e14)
        self.assertEqual(at20["granularity"], 16)
        self.assertTrue(15 < at20["dense_compute_multiplier"] < 30, at20)

    def test_law_matches_binary(self):
        for fit, coef in (("moe-e64", E64),):
            for N, D, G in ((1e6, 1e7, 1), (3e7, 2e8, 4), (1e9, 1e11, 64)):
                j = ps.run_moe(_moe(), ["scaling", "law", "--params", N, "--tokens", D,
                                        "--granularity", G, "--fit", fit, "--json"])
                self.assertAlmostEqual(float(ps.law_loss(coef, N, D, G)), j["loss"], places=10)

    def test_fit_recovers_synthetic_law(self):
        _, fit = ps.plot_runs(self.runs, os.path.join(self.dir, "f"), _moe(), bootstrap=0)
        self.assertIsNotNone(fit)
        self.assertEqual(fit["runs"], len(self.rows))
        self.assertLess(fit["rmse"], 0.03)  # the noise is 0.01
        pred = ps.law_loss(fit, [r["N"] for r in self.rows], [r["D"] for r in self.rows],
                           [r["G"] for r in self.rows])
        self.assertLess(float(np.max(np.abs(pred - [r["loss"] for r in self.rows]))), 0.05)

    def test_too_few_runs_still_draws_points(self):
        few = os.path.join(self.dir, "few.jsonl")
        with open(few, "w") as f:
            for r in self.rows[:3]:
                f.write(json.dumps(r) + "\n")
        out = os.path.join(self.dir, "few")
        p = self._script("runs", "--runs", few, "--out", out, "--bootstrap", "0")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("no fitted law drawn", p.stderr)
        self.assertIn("at least 7 runs", p.stderr)
        _check_png(self, os.path.join(out, "loss_vs_flops.png"), min_bytes=5_000)

    def test_bad_runs_file(self):
        bad = os.path.join(self.dir, "bad.jsonl")
        with open(bad, "w") as f:
            f.write(json.dumps({"N": 1e6, "D": 1e7, "loss": 5.0}) + "\n")  # no flops
        p = self._script("runs", "--runs", bad, "--out", os.path.join(self.dir, "bad"))
        self.assertEqual(p.returncode, 1)
        self.assertIn("field flops missing", p.stderr)
        p = self._script("runs", "--runs", os.path.join(self.dir, "missing.jsonl"),
                         "--out", os.path.join(self.dir, "bad"))
        self.assertEqual(p.returncode, 1)
        self.assertIn("error", p.stderr)

    def test_missing_binary(self):
        missing = os.path.join(self.dir, "no-such-moe")
        with self.assertRaises(ps.MoeNotRunnable):
            ps.run_moe(missing, ["scaling", "plan", "--flops", 1e20])
        # A binary that cannot run is an error, not a figure without a law.
        p = subprocess.run([sys.executable, SCRIPT, "runs", "--runs", self.runs, "--out",
                            os.path.join(self.dir, "nobin"), "--moe", missing],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 1)
        self.assertIn("cannot run", p.stderr)


if __name__ == "__main__":
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        BUILD_DIR = sys.argv.pop(1)
    unittest.main(verbosity=1)
