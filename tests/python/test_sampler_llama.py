#!/usr/bin/python3
"""Our sampler chain (src/infer/sampler.cpp) against llama.cpp's own.

For random logit vectors (vocabularies of 50, 3000 and 50304 ids, logits N(0, s²) for s = 0.5,
2 and 6) and many option sets (each sampler alone, llama.cpp's defaults, greedy, penalties with
histories that repeat ids, and random combinations), `moe sample-probs` (our chain, hidden
subcommand) and `llama_ref sample` (llama.cpp's penalties → top-k → top-p → min-p → temperature
chain from the prebuilt libllama, tools/llama_ref/llama_ref_sample.cpp) must keep the same ids,
with the same probabilities to 1e-6 relative.

Why 1e-6: both chains make their cuts with the same float arithmetic in the same order (the
penalty rule, top-p's float softmax and running sum, min-p's max + logf(p), l / T), so the
surviving sets agree exactly; the final probabilities are ours in float (expf, double sum)
against the harness's double softmax over llama.cpp's logits: a few float ulps (~1e-7
relative). A probability below float's normal range (1e-37) carries no relative precision, so
those are compared absolutely (1e-37).

Needs LLAMA_REF and MOE_BIN; FAILS (never skips) when one is missing.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np

REL = 1e-6
ABS = 1e-37


def env_path(name):
    p = os.environ.get(name)
    if not p or not os.path.exists(p):
        raise AssertionError(f"{name} is not set or missing ({p!r}); build it first "
                             "(cmake --build build --target moe llama_ref)")
    return p


def run_json(cmd):
    r = subprocess.run(cmd, capture_output=True, timeout=300)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.decode()[-800:]}")
    return json.loads(r.stdout.decode().strip().splitlines()[-1])


NO_TRUNCATION = {"temperature": 1.0, "top-k": 0, "top-p": 1.0, "min-p": 0.0}


def option_sets(rng):
    sets = [
        {},  # llama.cpp's defaults (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05)
        {"temperature": 0.0},
        {"temperature": 0.0, "repeat-penalty": 1.5},
    ]
    for k in [1, 5, 40, 1000]:
        sets.append({**NO_TRUNCATION, "top-k": k})
    for p in [0.0, 0.3, 0.9, 0.99]:
        sets.append({**NO_TRUNCATION, "top-p": p})
    for p in [0.01, 0.1, 0.5, 1.0]:
        sets.append({**NO_TRUNCATION, "min-p": p})
    for t in [0.3, 1.7]:
        sets.append({**NO_TRUNCATION, "temperature": t})
    for rp, n in [(1.1, 64), (1.5, 3), (0.8, 64), (1.3, 0)]:
        sets.append({"repeat-penalty": rp, "repeat-last-n": n})
    sets.append({**NO_TRUNCATION, "frequency-penalty": 0.3, "presence-penalty": 0.5})
    sets.append({"repeat-penalty": 1.2, "frequency-penalty": -0.2, "presence-penalty": 0.4,
                 "repeat-last-n": 8})
    for _ in range(24):  # random combinations
        sets.append({
            "temperature": float(rng.choice([0.0, 0.2, 0.7, 1.0, 1.5])),
            "top-k": int(rng.choice([0, 3, 40, 100, 600])),
            "top-p": float(rng.choice([1.0, 0.95, 0.8, 0.5])),
            "min-p": float(rng.choice([0.0, 0.02, 0.05, 0.2])),
            "repeat-penalty": float(rng.choice([1.0, 1.1, 1.4])),
            "repeat-last-n": int(rng.choice([0, 4, 64])),
            "frequency-penalty": float(rng.choice([0.0, 0.1])),
            "presence-penalty": float(rng.choice([0.0, 0.3])),
        })
    return sets


class SamplerVsLlama(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.llama_ref = env_path("LLAMA_REF")
        cls.moe = env_path("MOE_BIN")
        cls.tmp = tempfile.mkdtemp(prefix="moe_sampler_")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def compare(self, logits, history, opts, what):
        path = os.path.join(self.tmp, "logits.f32")
        logits.astype("<f4").tofile(path)
        args = ["--logits", path, "--vocab", str(logits.shape[1])]
        if history:
            args += ["--history", ",".join(str(t) for t in history)]
        for k, v in opts.items():
            args += [f"--{k}", repr(v)]
        ours = run_json([self.moe, "sample-probs"] + args)["rows"]
        ref = run_json([self.llama_ref, "sample"] + args)["rows"]
        self.assertEqual(len(ours), logits.shape[0], what)
        self.assertEqual(len(ref), logits.shape[0], what)
        for r, (a, b) in enumerate(zip(ours, ref)):
            pa = dict(zip(a["ids"], a["probs"]))
            pb = dict(zip(b["ids"], b["probs"]))
            self.assertEqual(sorted(pa), sorted(pb), f"{what} row {r}: surviving ids differ")
            for i, p in pb.items():
                self.assertLessEqual(abs(pa[i] - p), REL * p + ABS,
                                     f"{what} row {r} id {i}: ours {pa[i]!r}, llama.cpp {p!r}")

    def test_chains_agree(self):
        rng = np.random.default_rng(17)
        sets = option_sets(rng)
        cases = 0
        for vocab in [50, 3000, 50304]:
            # Two rows at each scale: flat (many ids near every cut) to peaked.
            logits = np.concatenate([(scale * rng.standard_normal((2, vocab))).astype(np.float32)
                                     for scale in [0.5, 2.0, 6.0]])
            # Repeated ids, the best ids of the last row among them, so penalties move the cuts.
            best = [int(i) for i in np.argsort(-logits[-1])[:3]]
            history = [int(t) for t in rng.integers(0, vocab, 10)] + best + best[:1]
            for opts in sets:
                with self.subTest(vocab=vocab, opts=opts):
                    self.compare(logits, history, opts, f"V={vocab} {opts}")
                cases += logits.shape[0]
        self.assertGreater(cases, 300)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1])  # ctest passes the build directory: not a test name
