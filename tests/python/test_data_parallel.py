#!/usr/bin/python3
"""Data parallelism over MPI: `mpirun -np 2 moe train` gives the losses of one process with the
same global batch, a rank that fails stops the whole job, and ranks with different configs are
refused at start. Run by ctest with MOE_BIN and MOE_MPIRUN (the mpirun CMake found)."""
import json
import os
import random
import subprocess
import sys
import tempfile
import unittest

MOE = os.environ.get("MOE_BIN", "build/moe")
MPIRUN = os.environ.get("MOE_MPIRUN", "")
# CI runs as root; Open MPI refuses that unless told. Each rank gets one core.
MPI_FLAGS = ["-np", "2", "--oversubscribe", "--allow-run-as-root", "-x", "OMP_NUM_THREADS=1"]


def write_data(d):
    random.seed(1)
    words = "the jury said that city election was conducted in a manner of praise".split()
    for split, n in [("train", 8000), ("val", 800), ("test", 800)]:
        with open(os.path.join(d, split + ".txt"), "w") as f:
            f.write(" ".join(random.choice(words) for _ in range(n)))


def config(d, out, extra=None):
    c = {"model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 16,
                   "ffn": {"d_ff": 64}},
         "data": {"dir": d},
         "train": {"batch_size": 4, "seq_len": 16, "steps": 10, "lr": 0.003, "warmup_steps": 2,
                   "log_every": 1, "eval_every": 0, "checkpoint_every": 0, "out_dir": out}}
    if extra:
        c["model"]["ffn"].update(extra)
    return c


def losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(l)["loss"] for l in f if '"loss"' in l]


class MpiCase(unittest.TestCase):
    """A temporary data directory with a small corpus; mpirun must be there."""

    def setUp(self):
        self.assertTrue(MPIRUN, "mpirun not found at configure time (scripts/setup.sh installs "
                        "openmpi-bin and libopenmpi-dev)")
        self.tmp = tempfile.TemporaryDirectory()
        self.d = self.tmp.name
        write_data(self.d)

    def tearDown(self):
        self.tmp.cleanup()


class DataParallel(MpiCase):
    def run_cfg(self, cfg, name, mpi, env=None):
        path = os.path.join(self.d, name + ".json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        flags = MPI_FLAGS + [a for k in (env or {}) for a in ("-x", k)]
        cmd = ([MPIRUN] + flags if mpi else []) + [MOE, "train", "--config", path, "--quiet"]
        env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)

    def test_two_ranks_match_one_process(self):
        # The MoE case drops tokens (capacity 1.0) and has both routing losses: capacity, f_e and
        # P_e are computed over the global batch, so two ranks still compute one function.
        for extra in (None, {"kind": "moe", "num_experts": 4, "top_k": 2, "d_expert": 16,
                             "capacity_factor": 1.0, "aux_loss_coef": 0.01,
                             "z_loss_coef": 0.001},
                      # PEER with query BatchNorm: batch statistics over the global batch, the
                      # tables' gradients summed over the union of the ranks' retrieved rows.
                      "peer"):
            # Fresh run directories per case (a new run refuses one that holds a run).
            tag = "dense" if extra is None else "peer" if extra == "peer" else "moe"
            p1 = os.path.join(self.d, "p1_" + tag)
            p2 = os.path.join(self.d, "p2_" + tag)
            if extra == "peer":
                c1, c2 = config(self.d, p1), config(self.d, p2)
                for c in (c1, c2):
                    c["model"]["ffn_overrides"] = {"1": {
                        "kind": "peer", "num_experts": 256, "heads": 2, "top_k": 4, "d_key": 16,
                        "query_norm": "batchnorm"}}
            else:
                c1, c2 = config(self.d, p1, extra), config(self.d, p2, extra)
            r1 = self.run_cfg(c1, "one", mpi=False)
            self.assertEqual(r1.returncode, 0, r1.stderr)
            r2 = self.run_cfg(c2, "two", mpi=True)
            self.assertEqual(r2.returncode, 0, r2.stderr)
            a, b = losses(p1), losses(p2)
            self.assertEqual(len(a), 10)
            self.assertEqual(len(a), len(b))
            # Same global batch and function; only the order of float32 gradient sums differs
            # (each rank sums its half, then the halves are added). Over 10 Adam steps that moves
            # losses by ~1e-7 (measured 4e-8); 1e-5 is far above it and far below any real bug
            # (a missing 1/P or a wrong slice changes the loss at the 1e-2 level by step 2).
            for i, (x, y) in enumerate(zip(a, b)):
                self.assertAlmostEqual(x, y, delta=1e-5, msg=f"step {i + 1} ({extra})")

    def test_diverged_replicas_are_caught(self):
        # The replicated weights are hashed and compared across ranks before every checkpoint is
        # written (the one at the end of training included). One rank's weight moved by the
        # fault-injection hook must stop the job there, and nothing diverged must not.
        # One run directory each (a new run refuses one that holds a run).
        cfg = lambda n: config(self.d, os.path.join(self.d, n))
        r = self.run_cfg(cfg("div1"), "div", mpi=True, env={"MOE_FAULT_REPLICA_RANK": "1"})
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn("replicated parameters differ between ranks", r.stderr + r.stdout)
        r = self.run_cfg(cfg("div7"), "div", mpi=True,
                         env={"MOE_FAULT_REPLICA_RANK": "7"})  # no rank 7
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.run_cfg(cfg("div_one"), "div", mpi=True, env={"MOE_FAULT_REPLICA_RANK": "one"})
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('MOE_FAULT_REPLICA_RANK: got "one", expected a rank number',
                      r.stderr + r.stdout)

    def test_a_failing_rank_stops_the_job(self):
        cfg = config(self.d, os.path.join(self.d, "bad"))
        cfg["data"]["dir"] = os.path.join(self.d, "missing")
        r = self.run_cfg(cfg, "bad", mpi=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("moe data fetch brown", r.stderr + r.stdout)

    def test_mismatched_configs_are_refused(self):
        a = os.path.join(self.d, "a.json")
        b = os.path.join(self.d, "b.json")
        with open(a, "w") as f:
            json.dump(config(self.d, os.path.join(self.d, "ra")), f)
        cb = config(self.d, os.path.join(self.d, "ra"))
        cb["train"]["lr"] = 0.001
        with open(b, "w") as f:
            json.dump(cb, f)
        cmd = [MPIRUN, "--oversubscribe", "--allow-run-as-root", "-x", "OMP_NUM_THREADS=1",
               "-np", "1", MOE, "train", "--config", a, "--quiet", ":",
               "-np", "1", MOE, "train", "--config", b, "--quiet"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("different configs", r.stderr + r.stdout)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
