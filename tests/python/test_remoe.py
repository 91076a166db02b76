#!/usr/bin/python3
"""ReMoE in training (`model.ffn.router.kind: relu`, docs/MOE.md; arXiv 2412.14711 §3.3-3.4).

End to end through `moe train` on a tiny model (2 relu layers, E = 8, target k = 2):
- The schedule: with log_every 1 each metrics line holds the step's per-layer sparsity (mean
  over its grad_accum = 2 forwards); the final checkpoint's `router.l1_exponent` (λ = λ_0·α^n)
  must equal Σ_i sign((1 − k/E) − S_i) recomputed from those lines (S_i: the mean over layers),
  and be the same in every layer; the logged λ must be λ_0·α^n.
- Sparsity control: after STEPS steps the mean active experts per token, averaged over the last
  20 steps and the layers, is within 25% of k. STEPS = 400: λ starts at λ_0 = 1e-8 and grows by
  α = 1.2 per step while the gates are too dense, so it needs ln(1e-2/1e-8)/ln 1.2 ≈ 76 steps to
  reach the ~1e-2 scale where the L1 gradient competes with the LM's at this width (measured:
  ~5 active experts per token until step ~40, λ ≈ 0.03 at step 80, ~2 active from step ~100 on);
  then it oscillates, and the run measures well after that (the paper's stage 3). That it was
  the L1 term that did it is checked too: λ must have passed 1e-3 on the way.
- Resume: a run stopped after 3 of 6 steps and resumed ends with the same final checkpoint,
  byte for byte (λ's exponent included), as the run that went straight through.
- Two MPI ranks, data parallel and expert parallel, train the function of one process.
Run by ctest with MOE_BIN and MOE_MPIRUN."""
import json
import os
import subprocess
import sys
import unittest

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import safetensors_np  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_data_parallel import MPIRUN, MPI_FLAGS, MOE, MpiCase, losses  # noqa: E402

E, K = 8, 2
STEPS = 400


def config(d, out, steps, grad_accum=2):
    ffn = {"kind": "moe", "num_experts": E, "top_k": K, "d_expert": 16,
           "router": {"kind": "relu", "normalize": False}}
    return {"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 16, "ffn": ffn},
            "data": {"dir": d},
            "train": {"batch_size": 4, "seq_len": 16, "steps": steps, "lr": 0.003,
                      "warmup_steps": 0, "log_every": 1, "eval_every": 0, "eval_batches": 2,
                      "checkpoint_every": 0, "grad_accum": grad_accum, "out_dir": out}}


class ReMoE(MpiCase):
    def train(self, cfg, extra=(), ranks=1):
        path = os.path.join(self.d, f"{os.path.basename(cfg['train']['out_dir'])}.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        cmd = [MOE, "train", "--config", path, "--quiet"] + list(extra)
        if ranks > 1:
            cmd = [MPIRUN] + MPI_FLAGS + cmd
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_schedule_and_sparsity(self):
        out = os.path.join(self.d, "long")
        self.train(config(self.d, out, STEPS))
        with open(os.path.join(out, "metrics.jsonl")) as f:
            moe = [l["moe"] for l in map(json.loads, f) if "moe" in l]
        self.assertEqual(len(moe), STEPS)
        target = 1 - K / E
        n = 0
        for step in moe:
            s = sum(m["sparsity"] for m in step) / len(step)
            n += (s < target) - (s > target)
        tensors, _ = safetensors_np.load(os.path.join(out, "final.safetensors"))
        for layer in range(2):
            got = tensors[f"layers.{layer}.ffn.router.l1_exponent"]
            np.testing.assert_array_equal(got, np.array([n], np.float32), err_msg=f"layer {layer}")
        # The last line's λ: the value after its step's update.
        for m in moe[-1]:
            self.assertAlmostEqual(m["relu_l1_coef"] / (1e-8 * 1.2 ** n), 1.0, places=12)
        active = np.mean([[m["active_experts"] for m in step] for step in moe[-20:]])
        print(f"mean active experts per token over the last 20 steps: {active:.3f} (k = {K}); "
              f"λ = {1e-8 * 1.2 ** n:.3g}", file=sys.stderr)
        self.assertLess(abs(active - K), 0.25 * K)
        self.assertGreater(max(step[0]["relu_l1_coef"] for step in moe), 1e-3)
        early = np.mean([m["active_experts"] for m in moe[0]])
        self.assertGreater(early, 2.5, "at the start about half of the 8 gates are positive")

    def test_resume_continues_with_the_same_bits(self):
        whole = os.path.join(self.d, "whole")
        self.train(config(self.d, whole, 6))
        part = os.path.join(self.d, "part")
        self.train(config(self.d, part, 6), extra=["--stop-after", "3"])
        last = os.path.join(part, "last.safetensors")
        self.assertTrue(os.path.exists(last))
        self.train(config(self.d, part, 6), extra=["--resume", last])
        a, _ = safetensors_np.load(os.path.join(whole, "final.safetensors"))
        b, _ = safetensors_np.load(os.path.join(part, "final.safetensors"))
        self.assertEqual(sorted(a), sorted(b))
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        self.assertTrue(any(k.endswith("router.l1_exponent") for k in a))

    def test_two_ranks_and_expert_parallel_match_one_process(self):
        # f_e, the sparsity (so λ) and the statistics are over the global batch; the experts'
        # variable row counts travel by the same all-to-all as expert choice's. Same tolerance
        # and reason as test_data_parallel.py: only float32 summation order differs.
        runs = {}
        for tag, ranks, ep in (("one", 1, 1), ("dp", 2, 1), ("ep", 2, 2)):
            c = config(self.d, os.path.join(self.d, tag), 10, grad_accum=1)
            self.train(c, ranks=ranks, extra=["--expert-parallel", "2"] if ep > 1 else [])
            runs[tag] = losses(os.path.join(self.d, tag))
        self.assertEqual(len(runs["one"]), 10)
        for tag in ("dp", "ep"):
            for i, (x, y) in enumerate(zip(runs["one"], runs[tag])):
                self.assertAlmostEqual(x, y, delta=1e-5, msg=f"{tag} step {i + 1}")


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
