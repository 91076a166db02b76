#!/usr/bin/python3
"""aux_loss_scope global_batch (Qiu et al., arXiv 2501.11873; docs/MOE.md), end to end through
`moe train`: THE INVARIANCE TEST. One global batch of 4 sequences per optimizer step, trained as
2 micro-batches × 2 ranks, 4 micro-batches × 1 rank and 1 micro-batch × 4 ranks
(train.sample_by_step, so the three layouts draw the same 4 sequences per step): LBL_global
takes f_e and P_e over the whole step's 4 sequences in every layout, and the cross-entropy, the
z-loss and the gradient are means over the same 4 sequences, so the three layouts train the same
function. What differs is only the order of float sums: the gradient is a sum of 4 sequences'
shares added in another order (per rank, then over ranks) and f_e and P_e sums likewise.

What is compared and to what tolerance:
- the per-step aux_loss and loss in metrics.jsonl: relative 1e-5. One step's forward is the
  same computation per sequence in every layout (attention and the MoE are per token or per
  sequence, the routing is the same: the routing margins of this tiny model are far above float
  rounding), so the only differences are the final sums, ~1e-7 relative; after N = 4 AdamW
  steps the weights differ by the amounts below, which move the losses by far less than 1e-5.
- the final weights: |Δw| <= 20·lr·1e-3 = 6e-5 absolute. Each AdamW step moves a weight by
  lr·m̂/(√v̂ + ε); a gradient entry g that differs by δ between layouts (δ ~ 1e-7·|the sum's
  terms|) changes that move by at most lr·δ/(|g| + ε). Summed over the 4 steps this is below
  lr·1e-3 except where g is within ~1e-4 of cancelling exactly; the factor 20 covers that tail.
  Measured: the largest difference over all tensors is printed by the test.
And the proof the test can fail: with aux_loss_scope micro_batch the same three layouts give
per-step aux losses that differ far beyond the tolerance (the f_e of each micro-batch is not the
step's), while 1 micro-batch × 4 ranks of micro_batch equals global_batch exactly (one forward
sees the whole step).
Run by ctest with MOE_BIN and MOE_MPIRUN."""
import json
import os
import subprocess
import sys
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import safetensors_np  # noqa: E402
from test_data_parallel import MPIRUN, MOE, MpiCase  # noqa: E402

LR = 0.003
STEPS = 4
LAYOUTS = [(2, 2), (4, 1), (1, 4)]  # (micro-batches, ranks); 4 sequences per step each
REL_LOSS = 1e-5
ABS_WEIGHT = 20 * LR * 1e-3


def config(d, out, scope, grad_accum):
    ffn = {"kind": "moe", "num_experts": 8, "top_k": 2, "d_expert": 16, "aux_loss_coef": 0.1,
           "aux_loss_scope": scope}
    return {"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 16, "ffn": ffn},
            "data": {"dir": d},
            "train": {"batch_size": 4 // grad_accum, "grad_accum": grad_accum,
                      "sample_by_step": True, "seq_len": 16, "steps": STEPS, "lr": LR,
                      "warmup_steps": 0, "log_every": 1, "eval_every": 0, "eval_batches": 1,
                      "checkpoint_every": 0, "out_dir": out}}


class GlobalBatch(MpiCase):
    def train(self, scope, grad_accum, ranks):
        out = os.path.join(self.d, f"{scope}_{grad_accum}x{ranks}")
        path = out + ".json"
        with open(path, "w") as f:
            json.dump(config(self.d, out, scope, grad_accum), f)
        cmd = [MOE, "train", "--config", path, "--quiet"]
        if ranks > 1:
            cmd = [MPIRUN, "-np", str(ranks), "--oversubscribe", "--allow-run-as-root", "-x",
                   "OMP_NUM_THREADS=1"] + cmd
        env = dict(os.environ, OMP_NUM_THREADS="1")
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(out, "metrics.jsonl")) as f:
            lines = [json.loads(l) for l in f]
        steps = [l for l in lines if "aux_loss" in l and "loss" in l]
        self.assertEqual(len(steps), STEPS)
        # The counting forwards leave the routing metrics alone: each step logs the selections
        # of its 4 sequences × 16 tokens × top-2 once per layer, whatever the layout.
        for l in steps:
            for m in l["moe"]:
                self.assertEqual(sum(m["tokens_per_expert"]), 4 * 16 * 2, f"{out} {m}")
        w, _ = safetensors_np.load(os.path.join(out, "final.safetensors"))
        return (np.array([l["aux_loss"] for l in steps]), np.array([l["loss"] for l in steps]), w)

    def test_three_layouts_train_the_same_function(self):
        runs = {lay: self.train("global_batch", *lay) for lay in LAYOUTS}
        aux0, loss0, w0 = runs[LAYOUTS[0]]
        self.assertTrue(np.all(aux0 > 0))
        worst = 0.0
        for lay in LAYOUTS[1:]:
            aux, loss, w = runs[lay]
            np.testing.assert_allclose(aux, aux0, rtol=REL_LOSS, err_msg=f"aux_loss {lay}")
            np.testing.assert_allclose(loss, loss0, rtol=REL_LOSS, err_msg=f"loss {lay}")
            self.assertEqual(sorted(w), sorted(w0))
            for k in w0:
                if not k.startswith("optim"):
                    d = float(np.max(np.abs(w[k].astype(np.float64) - w0[k].astype(np.float64))))
                    worst = max(worst, d)
                    self.assertLessEqual(d, ABS_WEIGHT, f"{k} {lay}")
        print(f"\nglobal_batch: largest weight difference between layouts {worst:.3e} "
              f"(tolerance {ABS_WEIGHT:.1e})")

    def test_micro_batch_scope_does_not_agree(self):
        # Step 1 starts from the same weights: the aux losses differ by definition alone.
        aux_4x1, _, w_4x1 = self.train("micro_batch", 4, 1)
        aux_1x4, _, w_1x4 = self.train("micro_batch", 1, 4)
        aux_g, _, w_g = self.train("global_batch", 1, 4)
        np.testing.assert_array_equal(aux_1x4, aux_g)  # one forward sees the whole step
        for k in w_g:
            np.testing.assert_array_equal(w_1x4[k], w_g[k], err_msg=k)
        gap = abs(aux_4x1[0] - aux_1x4[0]) / aux_1x4[0]
        router = max(float(np.max(np.abs(w_4x1[k] - w_1x4[k]))) for k in w_g if "router" in k)
        print(f"\nmicro_batch: 4×1 vs 1×4 aux_loss at step 1 differ by {gap:.3e} relative, "
              f"router weights by {router:.3e}")
        self.assertGreater(gap, 100 * REL_LOSS)
        self.assertGreater(router, 10 * ABS_WEIGHT)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
