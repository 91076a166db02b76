#!/usr/bin/python3
"""tools/study_report.py and tools/plot_study.py on a hand-made study directory.

Run by ctest as:  /usr/bin/python3 tests/python/test_study_tools.py <build_dir>
Two seeds; "switch" is missing from seed 2. The numbers are chosen so the aggregates can be
checked by hand: dense bpb 2.0 / 2.2 (mean 2.1, spread 0.2); switch 2.5 (seed 1 only); the
paired Δ of switch vs dense uses seed 1 only: 2.5 − 2.0 = 0.5.
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.join(HERE, "..", "..", "tools")
sys.path.insert(0, HERE)
from test_plot import PNG_MAGIC, _write_jsonl  # noqa: E402


def _entry(name, kind, bpb, routing=None):
    e = {"name": name, "config": f"configs/study/{name}.json", "kind": kind,
         "total_params": 1000, "active_params": 500, "flops_per_token_train": 1e6, "steps": 10,
         "tokens": 10 * 2048, "flops": 1e6 * 10 * 2048, "val_bpb": bpb, "final_train_loss": 1.0,
         "wall_s": 10.0, "tokens_per_s": 2048.0}
    if routing is not None:
        e["routing"] = routing
    return e


def _make(d):
    moe = [{"layer": 0, "max_over_mean_load": 1.2, "dropped_pct": 2.0},
           {"layer": 1, "max_over_mean_load": 1.4, "dropped_pct": 4.0}]
    peer = [{"layer": 2, "kind": "peer", "usage": 0.9, "kl": 0.5, "effective": 0.6,
             "per_head": [{"usage": 0.8, "kl": 0.6, "effective": 0.55},
                          {"usage": 1.0, "kl": 0.4, "effective": 0.67}]}]
    for seed, dense_bpb in ((1, 2.0), (2, 2.2)):
        rows = [_entry("dense", "dense", dense_bpb), _entry("peer-bn", "dense+peer", 1.9, peer)]
        if seed == 1:
            rows.append(_entry("switch", "moe", 2.5, moe))
        _write_jsonl(os.path.join(d, f"seed{seed}", "results.jsonl"), rows)
        for r in rows:
            _write_jsonl(os.path.join(d, f"seed{seed}", r["name"], "metrics.jsonl"),
                         [{"step": s, "loss": 3.0 - 0.1 * s} for s in range(1, 11)])
    # Comparison 1 at a larger budget (seed 1): dense 1.8, switch 2.1.
    _write_jsonl(os.path.join(d, "long", "results.jsonl"),
                 [_entry("dense", "dense", 1.8), _entry("switch", "moe", 2.1, moe)])


def _make_new_sections(d):
    """Comparisons 5, 7 and 8 by hand: MI per layer, G at two budgets, load curves."""
    cfg = os.path.join(d, "g.json")
    with open(cfg, "w") as f:  # 4 blocks, C = 128, byte tokens, E = 8·G experts
        json.dump({"model": {"d_model": 128, "n_layers": 4, "ffn": {
            "kind": "moe", "granularity": 2, "expansion": 8}}, "tokenizer": {"kind": "byte"}}, f)
    for seed in (1, 2):
        mi = [{"layer": 0, "mi_bits": 0.1 * seed, "h_group_bits": 3.5},
              {"layer": 1, "mi_bits": 0.3 * seed, "h_group_bits": 3.5}]
        e = _entry("scope-global", "moe", 2.0)
        e["routing_by_group"] = mi
        b = _entry("bal-sign", "moe", 2.1, [{"layer": 0, "max_over_mean_load": 1.5}])
        rows = [e, b]
        if seed == 1:
            g2 = _entry("g2", "moe", 2.3)
            g2.update(config=cfg, total_params=5_000_000, tokens=1e6, flops=1e13)
            rows.append(g2)
        _write_jsonl(os.path.join(d, f"seed{seed}", "results.jsonl"), rows)
        # Load 2.0 for the first 10 logged steps, then 1.2 (100 steps): mean 1.28.
        _write_jsonl(os.path.join(d, f"seed{seed}", "bal-sign", "metrics.jsonl"),
                     [{"step": s, "loss": 1.0, "moe": [{"max_over_mean_load": 2.0 if s <= 10
                                                        else 1.2}]} for s in range(1, 101)])
    small = [dict(_entry(n, "moe", bpb), config=cfg, total_params=5_000_000, tokens=2.5e5)
             for n, bpb in (("g1", 3.0), ("g2", 3.1))]
    _write_jsonl(os.path.join(d, "gbudget-2.5e12", "results.jsonl"), small)


class StudyTools(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.d = self.tmp.name
        _make(self.d)

    def tearDown(self):
        self.tmp.cleanup()

    def run_tool(self, *args):
        return subprocess.run(["/usr/bin/python3", *args], capture_output=True, text=True,
                              timeout=120)

    def test_new_sections(self):
        import math
        sys.path.insert(0, TOOLS)
        import study_sections
        d = tempfile.mkdtemp(dir=self.d)
        _make_new_sections(d)
        md = self.run_tool(os.path.join(TOOLS, "study_report.py"), "--dir", d)
        self.assertEqual(md.returncode, 0, md.stderr)
        # 5: MI means across seeds: layer 0 (0.1 + 0.2)/2, layer 1 (0.3 + 0.6)/2, mean 0.3.
        self.assertIn("| global_batch | 0.1500 | 0.4500 | 0.3000 |", md.stdout)
        # 7: G = 1 wins at 2.5e12 (3.0 < 3.1); at 1e13 only G = 2 (from seed 1).
        self.assertIn("| 1 | **3.0000** | — |", md.stdout)
        self.assertIn("| 2 | 3.1000 | **2.3000** |", md.stdout)
        # 8: max/mean over training 1.28, first 10% 2.0, last 10% 1.2, val 1.5.
        self.assertIn("| bal-sign | 1.28 | 2.00 | 1.20 | 1.50 |", md.stdout)
        # The fit input: N = 5e6 − 256·128 (tied embedding) − 4·16·128 (routers, E·G = 16),
        # loss = bpb·ln 2 nats per byte.
        fit = os.path.join(d, "fit.jsonl")
        r = self.run_tool(os.path.join(TOOLS, "study_report.py"), "--dir", d, "--fit-input", fit)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(fit) as f:
            pts = [json.loads(line) for line in f]
        self.assertEqual(len(pts), 3)
        p = next(p for p in pts if p["name"] == "g2@1.0e+13")
        self.assertEqual(p["N"], 5_000_000 - 256 * 128 - 4 * 16 * 128)
        self.assertEqual((p["D"], p["G"]), (1e6, 2))
        self.assertAlmostEqual(p["loss"], 2.3 * math.log(2), places=12)
        self.assertEqual(study_sections.load_curve(os.path.join(d, "nothing.jsonl")), [])

    def test_report_aggregates(self):
        r = self.run_tool(os.path.join(TOOLS, "study_report.py"), "--dir", self.d, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        j = json.loads(r.stdout)
        self.assertEqual(j["seeds"], [1, 2])
        dense, switch = j["configs"]["dense"], j["configs"]["switch"]
        self.assertAlmostEqual(dense["mean"], 2.1, places=12)
        self.assertAlmostEqual(dense["spread"], 0.2, places=12)
        self.assertEqual(switch["val_bpb_per_seed"], [2.5, None])
        rows = {r["config"]: r for r in j["sections"][0]["rows"]}
        self.assertAlmostEqual(rows["switch"]["delta_vs_first"], 0.5, places=12)
        md = self.run_tool(os.path.join(TOOLS, "study_report.py"), "--dir", self.d)
        self.assertEqual(md.returncode, 0, md.stderr)
        # Layer means of the routing metrics: max/mean (1.2 + 1.4)/2, drop (2 + 4)/2.
        self.assertIn("max/mean 1.30, drop 3.0%", md.stdout)
        self.assertIn("usage 90.0%", md.stdout)
        # The larger-budget rerun: Δ vs dense 2.1 − 1.8 = +0.3; gain of switch 2.5 − 2.1 = 0.4.
        long = md.stdout[md.stdout.index("## 1b."):]
        self.assertRegex(long, r"\| switch \| 20\.5K \| 2\.1000 \| \+0\.3000 \| 2\.5000 \| 0\.4000 \|")

    def test_plots_are_written(self):
        out = os.path.join(self.d, "img")
        r = self.run_tool(os.path.join(TOOLS, "plot_study.py"), "--dir", self.d, "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        for name in ("comparison1.png", "comparison3.png", "peer_usage.png"):
            with open(os.path.join(out, name), "rb") as f:
                self.assertEqual(f.read(8), PNG_MAGIC, name)
        r = self.run_tool(os.path.join(TOOLS, "plot_study.py"), "--dir",
                          os.path.join(self.d, "missing"))
        self.assertNotEqual(r.returncode, 0)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
