#!/usr/bin/python3
"""tools/plot.py on a synthetic `moe compare` output directory.

Run by ctest as:  /usr/bin/python3 tests/python/test_plot.py <build_dir>
with PYTHONPATH=<repo>/tools. Builds a compare directory with a dense config, an MoE config that
logs per-layer "moe" metrics and a PEER config whose results entry has a PEER routing layer,
runs the script and checks the three PNGs; also checks a missing results.jsonl exits 1.
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "..", "tools", "plot.py")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _moe_layer(layer, step):
    tpe = [100 + 10 * e + step for e in range(8)]
    return {"layer": layer, "tokens_per_expert": tpe, "dropped_pct": 0.5,
            "router_entropy": 2.0, "unused_experts": 0, "max_over_mean_load": 1.2,
            "aux_loss": 0.01, "z_loss": 0.001}


def _make_compare(d):
    steps, tokens = 20, 20 * 4096
    results = []
    for i, (name, kind) in enumerate((("dense", "dense"), ("moe", "moe"), ("peer", "peer"))):
        entry = {"name": name, "kind": kind, "total_params": 1_000_000, "active_params": 500_000,
                 "flops_per_token_train": 3.0e6, "steps": steps, "tokens": tokens,
                 "flops": 3.0e6 * tokens, "val_bpb": 1.5 - 0.1 * i, "wall_s": 10.0, "tokens_per_s": 8192.0}
        rows = []
        for s in range(1, steps + 1):
            row = {"step": s, "loss": (5.0 - 0.3 * i) / (1 + 0.1 * s), "lr": 1e-3, "grad_norm": 1.0,
                   "tokens_per_s": 8192.0, "elapsed_s": 0.5 * s}
            if kind == "moe":
                row["moe"] = [_moe_layer(l, s) for l in range(3)]
            rows.append(row)
            if s % 10 == 0:
                rows.append({"step": s, "val_loss": 4.0, "val_bpb": 1.5})
        if kind == "moe":
            entry["routing"] = [_moe_layer(l, steps) for l in range(3)]
        if kind == "peer":
            entry["routing"] = [{"layer": l, "kind": "peer", "experts": 1024, "usage": 0.8 - 0.1 * l,
                                 "kl": 0.3 + 0.1 * l, "effective": 0.7,
                                 "per_head": [{"usage": 0.6, "kl": 0.4, "effective": 0.67}]}
                                for l in range(2)]
        results.append(entry)
        _write_jsonl(os.path.join(d, name, "metrics.jsonl"), rows)
    _write_jsonl(os.path.join(d, "results.jsonl"), results)


class PlotTest(unittest.TestCase):
    def test_load_over_time_matrix(self):
        # Two log lines of one layer: fractions per expert (rows) per step (columns).
        sys.path.insert(0, os.path.dirname(SCRIPT))
        import plot
        rows = [{"step": 10, "moe": [{"layer": 1, "tokens_per_expert": [1, 3]}]},
                {"step": 20, "moe": [{"layer": 1, "tokens_per_expert": [2, 2]}]}]
        steps, mat = plot.load_over_time(rows)[1]
        self.assertEqual(steps, [10, 20])
        self.assertEqual(mat.tolist(), [[0.25, 0.5], [0.75, 0.5]])

    def test_writes_the_pngs(self):
        with tempfile.TemporaryDirectory() as d:
            _make_compare(d)
            out = os.path.join(d, "figs")
            r = subprocess.run([sys.executable, SCRIPT, "--dir", d, "--out", out],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            for f in ("training_curves.png", "expert_load.png", "peer_usage.png",
                      "expert_load_over_time_moe.png"):
                p = os.path.join(out, f)
                self.assertIn(p, r.stdout)
                with open(p, "rb") as fh:
                    self.assertEqual(fh.read(8), PNG_MAGIC, f)

    def test_routing_heatmap_from_inspect_json(self):
        with tempfile.TemporaryDirectory() as d:
            info = {"path": "m.gguf", "routing": [_moe_layer(l, 1) for l in range(4)],
                    "routing_text": {"path": "text.txt", "tokens": 100}}
            j = os.path.join(d, "inspect.json")
            with open(j, "w") as f:
                json.dump(info, f)
            r = subprocess.run([sys.executable, SCRIPT, "--routing", j], capture_output=True,
                               text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            p = os.path.join(d, "routing.png")
            self.assertIn(p, r.stdout)
            with open(p, "rb") as fh:
                self.assertEqual(fh.read(8), PNG_MAGIC)
            # A JSON without routing (inspect run without --routing) says so in one line.
            with open(j, "w") as f:
                json.dump({"path": "m.gguf"}, f)
            r = subprocess.run([sys.executable, SCRIPT, "--routing", j], capture_output=True,
                               text=True, timeout=60)
            self.assertEqual(r.returncode, 1)
            self.assertIn("--routing", r.stderr)
            self.assertEqual(len(r.stderr.strip().splitlines()), 1)

    def test_missing_results_exits_1(self):
        with tempfile.TemporaryDirectory() as d:
            r = subprocess.run([sys.executable, SCRIPT, "--dir", d],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 1)
            self.assertIn("results.jsonl", r.stderr)
            self.assertEqual(len(r.stderr.strip().splitlines()), 1)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1])  # argv[1] is the build dir, unused here
