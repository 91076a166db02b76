#!/usr/bin/python3
"""Crashes during training (issue 18): kill -9 at random moments, SIGTERM, a full disk during a
checkpoint write and a dead MPI rank. Each time the last checkpoint must load, `--resume` must
continue with exactly the losses of an uninterrupted run (metrics.jsonl compared bit for bit),
and no temporary file may be left behind. Tiny models: the whole file runs in well under a
minute on two cores. Run by ctest with MOE_BIN (and MOE_MPIRUN for the MPI case).

The full-disk case mounts a small tmpfs, which needs root (CI and the development machines run
as root); where the mount fails the test FAILS, saying why, rather than skip."""
import glob
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import unittest

MOE = os.path.abspath(os.environ.get("MOE_BIN", "build/moe"))
MPIRUN = os.environ.get("MOE_MPIRUN", "")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
import safetensors_np  # noqa: E402

# Long enough that a signal sent a few steps in lands before the end on a fast, idle machine
# (a step of this model takes well under a millisecond there), short enough to stay cheap.
STEPS = 300


def write_data(d):
    rng = random.Random(7)
    words = ("the of and to a in that is was he for it with as his on be at by had not are but "
             "from or have an they which one you were her all she there would their").split()
    for split, n in (("train", 6000), ("val", 600)):
        with open(os.path.join(d, split + ".txt"), "w") as f:
            f.write(" ".join(rng.choice(words) for _ in range(n)))


def config(d, out, **train):
    t = {"batch_size": 2, "seq_len": 16, "steps": STEPS, "lr": 0.01, "warmup_steps": 2,
         "log_every": 1, "eval_every": 0, "checkpoint_every": 2, "threads": 1, "out_dir": out}
    t.update(train)
    return {"model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 16},
            "data": {"dir": d}, "train": t}


def losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [(j["step"], j["loss"]) for j in map(json.loads, f) if "loss" in j]


def checkpoint_step(path):
    """The step of a checkpoint, read with the independent numpy reader (loads every tensor)."""
    tensors, meta = safetensors_np.load(path)
    assert tensors, path
    return json.loads(meta["train_state"])["step"]


class Crash(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.d = self.tmp.name
        write_data(self.d)
        self.env = dict(os.environ, OMP_NUM_THREADS="1")

    def tearDown(self):
        self.tmp.cleanup()

    def cfg_file(self, name, cfg):
        path = os.path.join(self.d, name + ".json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        return path

    def train(self, path, *extra, **kw):
        return subprocess.run([MOE, "train", "--config", path, "--quiet", *extra],
                              capture_output=True, text=True, timeout=120, env=self.env, **kw)

    def start(self, path, *extra):
        return subprocess.Popen([MOE, "train", "--config", path, "--quiet", *extra],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env)

    def reference(self):
        out = os.path.join(self.d, "ref")
        r = self.train(self.cfg_file("ref", config(self.d, out)))
        self.assertEqual(r.returncode, 0, r.stderr)
        ref = losses(out)
        self.assertEqual([s for s, _ in ref], list(range(1, STEPS + 1)))
        return ref

    def wait_for_step(self, out, proc, step, timeout=60):
        """Until metrics.jsonl reaches `step` (or the process ends)."""
        t0 = time.time()
        while time.time() - t0 < timeout and proc.poll() is None:
            try:
                if losses(out) and losses(out)[-1][0] >= step:
                    return
            except (OSError, ValueError, KeyError):
                pass  # not written yet, or a line being written
            time.sleep(0.005)

    def test_kill_9_at_random_moments_then_resume_is_bit_exact(self):
        ref = self.reference()
        out = os.path.join(self.d, "run")
        path = self.cfg_file("run", config(self.d, out))
        last = os.path.join(out, "last.safetensors")
        rng = random.Random(int(os.environ.get("MOE_CRASH_SEED", "18")))
        kills, resumed_from = 0, 0
        while kills < 3:
            # Killed before its first checkpoint: start afresh over the killed run's log.
            extra = ["--resume", last] if os.path.exists(last) else ["--overwrite"]
            p = self.start(path, *extra)
            # A random moment after the run has passed a random step beyond where it resumed:
            # some kills land in a step, some during a checkpoint write.
            self.wait_for_step(out, p, resumed_from + rng.randint(1, 40))
            time.sleep(rng.uniform(0, 0.01))
            if p.poll() is not None:
                p.communicate()
                break  # finished before the kill: the run was too fast to kill this time
            p.send_signal(signal.SIGKILL)
            p.communicate(timeout=30)
            kills += 1
            # The previous checkpoint loads (with every tensor) and holds a step of this run.
            if os.path.exists(last):
                resumed_from = checkpoint_step(last)
                self.assertGreater(resumed_from, 0)
                self.assertEqual(resumed_from % 2, 0)  # checkpoint_every = 2
        self.assertEqual(kills, 3, "the run finished before it could be killed three times")
        r = self.train(path, "--resume", last) if os.path.exists(last) else self.train(
            path, "--overwrite")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(losses(out), ref)  # every step once, each loss bit-identical
        self.assertEqual(glob.glob(os.path.join(out, "*.tmp.*")), [])

    def test_sigterm_saves_and_resume_is_bit_exact(self):
        ref = self.reference()
        out = os.path.join(self.d, "term")
        path = self.cfg_file("term", config(self.d, out, checkpoint_every=0))
        p = self.start(path)
        self.wait_for_step(out, p, 5)
        p.send_signal(signal.SIGTERM)  # what timeout, Slurm, Kubernetes and docker stop send
        _, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 0, err)
        last = os.path.join(out, "last.safetensors")
        step = checkpoint_step(last)
        self.assertGreaterEqual(step, 5)
        self.assertLess(step, STEPS)
        r = self.train(path, "--resume", last)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(losses(out), ref)
        self.assertEqual(glob.glob(os.path.join(out, "*.tmp.*")), [])

    def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(self):
        mnt = os.path.join(self.d, "small")
        os.makedirs(mnt)
        # A checkpoint of this model with its AdamW moments is ~0.3 MB; the disk is filled up
        # below once the first is written.
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0,
                         f"cannot mount a tmpfs (this test needs root): {r.stderr.strip()}")
        try:
            out = os.path.join(mnt, "run")
            path = self.cfg_file("full", config(self.d, out, steps=6, checkpoint_every=2))
            r = self.train(path, "--stop-after", "2")
            self.assertEqual(r.returncode, 0, r.stderr)
            last = os.path.join(out, "last.safetensors")
            with open(last, "rb") as f:
                before = f.read()
            # Fill the disk but for a little room, as another job writing there would.
            filler = os.path.join(mnt, "filler")
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
            try:
                while True:
                    os.write(fd, b"\0" * 4096)
            except OSError:
                pass
            os.close(fd)
            os.truncate(filler, os.path.getsize(filler) - 64 * 1024)
            r = self.train(path, "--resume", last)
            self.assertNotEqual(r.returncode, 0)
            self.assertLess(r.returncode, 128, r.stderr)
            err = r.stderr.strip()
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertIn("last.safetensors", err)
            with open(last, "rb") as f:
                self.assertEqual(f.read(), before, "the previous checkpoint changed")
            self.assertEqual(checkpoint_step(last), 2)
            self.assertEqual(glob.glob(os.path.join(out, "*.tmp.*")), [])
        finally:
            subprocess.run(["umount", "-l", mnt], capture_output=True)

    def test_a_dead_mpi_rank_ends_the_job(self):
        self.assertTrue(MPIRUN, "mpirun not found at configure time (scripts/setup.sh installs "
                        "openmpi-bin and libopenmpi-dev)")
        out = os.path.join(self.d, "mpi")
        path = self.cfg_file("mpi", config(self.d, out, steps=2000, checkpoint_every=2))
        cmd = [MPIRUN, "--oversubscribe", "--allow-run-as-root", "-np", "2", "-x",
               "OMP_NUM_THREADS=1", MOE, "train", "--config", path, "--quiet"]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            self.wait_for_step(out, p, 5)
            self.assertIsNone(p.poll(), "the MPI run ended early")
            ranks = [int(c) for c in os.listdir("/proc") if c.isdigit() and self.is_rank(c, p.pid)]
            self.assertEqual(len(ranks), 2, "expected two moe ranks under mpirun")
            os.kill(max(ranks), signal.SIGKILL)
            t0 = time.time()
            _, err = p.communicate(timeout=60)  # bounded: the job must not hang
            self.assertLess(time.time() - t0, 60)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        self.assertNotEqual(p.returncode, 0)
        # Open MPI names the dead process and its signal in its report.
        self.assertRegex(err, r"(?i)signal 9|killed", err)
        last = os.path.join(out, "last.safetensors")
        self.assertGreater(checkpoint_step(last), 0)  # the last checkpoint loads, whole

    @staticmethod
    def is_rank(pid, mpirun_pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0")[0]
        except OSError:
            return False
        return ppid == mpirun_pid and argv0.endswith(b"moe")


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
