#!/usr/bin/python3
"""DeepSeek-V3's selection bias in training (`model.ffn.router.bias_balance`, docs/MOE.md): the
bias moves once per optimizer step, from the loads of all the step's micro-batches and ranks,
by the rule `router.bias_update` names; it is in the checkpoint, and a resumed run continues
with the same bits.

Checked end to end through `moe train`: after one step of grad_accum 2 (on 1 process and on 2
MPI ranks), each MoE layer's bias equals γ·sign(mean load − load_e) exactly, load_e being the
step's tokens per expert in metrics.jsonl (dropless, so every selection is kept); with
sign_centred the same minus its mean. The old rule (an update after each micro-batch) would give
±2γ wherever both micro-batches agree. A run stopped after 3 of 6 steps and resumed ends with the
same final checkpoint, byte for byte, as the run that went straight through.
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
from test_data_parallel import MPIRUN, MPI_FLAGS, MOE, MpiCase  # noqa: E402

RATE = 0.01


def config(d, out, rule, steps=1, grad_accum=2):
    ffn = {"kind": "moe", "num_experts": 8, "top_k": 2, "d_expert": 16, "aux_loss_coef": 0.0001,
           "router": {"score": "sigmoid", "bias_balance": True, "bias_rate": RATE,
                      "bias_update": rule}}
    return {"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 16, "ffn": ffn},
            "data": {"dir": d},
            "train": {"batch_size": 4, "seq_len": 16, "steps": steps, "lr": 0.003,
                      "warmup_steps": 0, "log_every": 1, "eval_every": 0, "eval_batches": 2,
                      "checkpoint_every": 0, "grad_accum": grad_accum, "out_dir": out}}


class BiasBalance(MpiCase):
    def train(self, cfg, ranks=1, extra=()):
        path = os.path.join(self.d, f"{os.path.basename(cfg['train']['out_dir'])}.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        cmd = [MOE, "train", "--config", path, "--quiet"] + list(extra)
        if ranks > 1:
            cmd = [MPIRUN] + MPI_FLAGS + cmd
        env = dict(os.environ, OMP_NUM_THREADS="1")
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_one_update_per_step_from_all_micro_batches_and_ranks(self):
        for ranks in (1, 2):
            for rule in ("sign", "sign_centred"):
                with self.subTest(ranks=ranks, rule=rule):
                    out = os.path.join(self.d, f"b{ranks}_{rule}")
                    self.train(config(self.d, out, rule), ranks)
                    with open(os.path.join(out, "metrics.jsonl")) as f:
                        lines = [json.loads(l) for l in f]
                    moe = [l["moe"] for l in lines if "moe" in l]
                    self.assertEqual(len(moe), 1, "one training step, one log line")
                    tensors, _ = safetensors_np.load(os.path.join(out, "final.safetensors"))
                    doubled = False
                    for m in moe[0]:
                        load = np.array(m["tokens_per_expert"], np.float64)
                        # 2 micro-batches × 4 sequences (the global batch) × 16 tokens × top-2.
                        self.assertEqual(load.sum(), 2 * 4 * 16 * 2)
                        b = np.float32(RATE) * np.sign(load.mean() - load).astype(np.float32)
                        if rule == "sign_centred":
                            b = (b.astype(np.float64) - b.astype(np.float64).mean()).astype(
                                np.float32)
                        got = tensors[f"layers.{m['layer']}.ffn.router.bias"]
                        np.testing.assert_array_equal(got, b, err_msg=f"layer {m['layer']}")
                        doubled |= bool(np.any(np.abs(got) > 1.5 * RATE))
                    self.assertFalse(doubled)

    def test_resume_continues_with_the_same_bits(self):
        rule = "sign_centred"
        whole = os.path.join(self.d, "whole")
        self.train(config(self.d, whole, rule, steps=6))
        part = os.path.join(self.d, "part")
        self.train(config(self.d, part, rule, steps=6), extra=["--stop-after", "3"])
        last = os.path.join(part, "last.safetensors")
        self.assertTrue(os.path.exists(last))
        self.train(config(self.d, part, rule, steps=6), extra=["--resume", last])
        a, _ = safetensors_np.load(os.path.join(whole, "final.safetensors"))
        b, _ = safetensors_np.load(os.path.join(part, "final.safetensors"))
        self.assertEqual(sorted(a), sorted(b))
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        self.assertTrue(any(k.endswith("router.bias") for k in a))


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
