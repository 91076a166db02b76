#!/usr/bin/python3
"""The inference benchmark's models and its two sides (bench/run_bench.sh `infer`, issue 17).

tools/make_bench_models.py is run with `--shape tiny` (the same writer, vocabulary and dtypes as
the real olmoe4 files, small matrices) into a temporary directory, and:
  - the three files hold the same weights: BF16 and Q8_0 read back through gguf-py's own
    dequantizers equal the F32 file within each format's rounding bound; the router and the norms
    are F32 in every file; the shapes are the olmoe4 plan's with the tiny sizes;
  - a second run writes nothing (the cache, keyed by the script's hash);
  - llama.cpp (build/llama_ref/llama_ref bench) loads each file and prints its measurement;
  - moe bench infer runs on each file and its active_weight_bytes_per_token equals the count
    made from the file with gguf-py (bench/run_bench.sh's active_bytes rule).

Run by ctest with MOE_BIN, LLAMA_REF and GGUF_PY set (CMakeLists.txt); it fails, never skips,
when one is missing.
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
MOE = os.environ.get("MOE_BIN", "")
LLAMA = os.environ.get("LLAMA_REF", "")
GGUF_PY = os.environ.get("GGUF_PY", "")
DTYPES = ["f32", "bf16", "q8_0"]
FIELDS = ["pp_tokens_per_s", "tg_tokens_per_s", "peak_rss_bytes", "load_s"]


def run(cmd, env=None):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout


def file_active_bytes(reader):
    """Bytes one decode step reads, from the file: every tensor but the norms (held as f32
    copies), the expert tensors times K/E, one row of the token embedding (the rule of
    run_bench.sh's active_bytes and of Engine::active_weight_bytes_per_token)."""
    E = reader.fields["olmoe.expert_count"].contents()
    K = reader.fields["olmoe.expert_used_count"].contents()
    total = 0.0
    for t in reader.tensors:
        if t.name.endswith("norm.weight"):
            continue
        n = int(t.n_bytes)
        if "_exps." in t.name:
            n = n * K / E
        elif t.name == "token_embd.weight":
            n = n / int(t.shape[-1])
        total += n
    return int(total)


class BenchModels(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        for what, path in (("MOE_BIN", MOE), ("LLAMA_REF", LLAMA), ("GGUF_PY", GGUF_PY)):
            if not path or not os.path.exists(path):
                raise AssertionError(f"{what} is not set or missing ({path!r}): build the "
                                     "llama.cpp reference (cmake --build build --target "
                                     "llama_ref)")
        sys.path.insert(0, GGUF_PY)
        sys.path.insert(0, os.path.join(ROOT, "tools"))
        cls.tmp = tempfile.TemporaryDirectory()
        cls.env = dict(os.environ, PYTHONPATH=GGUF_PY)
        cls.script = [sys.executable, os.path.join(ROOT, "tools", "make_bench_models.py"),
                      cls.tmp.name, "--shape", "tiny"]
        cls.paths = run(cls.script, cls.env).split()
        import gguf
        cls.reader = {d: gguf.GGUFReader(p) for d, p in zip(DTYPES, cls.paths)}

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_the_three_files_hold_the_same_weights(self):
        import gguf
        from gguf.quants import dequantize
        import make_bench_models as mbm
        self.assertEqual([os.path.basename(p) for p in self.paths],
                         [f"tiny-{d}.gguf" for d in DTYPES])
        r = self.reader
        plan = mbm.tensor_plan(mbm.SHAPES["tiny"])
        F32 = gguf.GGMLQuantizationType.F32
        for d in DTYPES:
            self.assertEqual([t.name for t in r[d].tensors], [n for n, _, _ in plan])
            self.assertEqual(len(r[d].fields["tokenizer.ggml.tokens"].data), mbm.VOCAB)
        for (name, shape, kind), t32, tb, tq in zip(plan, *(r[d].tensors for d in DTYPES)):
            a = np.asarray(t32.data, dtype=np.float32).reshape(shape)
            self.assertEqual(t32.tensor_type, F32, name)
            if kind == "norm":
                np.testing.assert_array_equal(a, 1.0, err_msg=name)
            else:
                self.assertAlmostEqual(float(a.std()), mbm.STD, delta=0.1 * mbm.STD, msg=name)
            if kind != "mat":  # the router and the norms stay F32 in every file
                for t in (tb, tq):
                    self.assertEqual(t.tensor_type, F32, name)
                    np.testing.assert_array_equal(np.asarray(t.data).reshape(shape), a, name)
                continue
            self.assertEqual(tb.tensor_type, gguf.GGMLQuantizationType.BF16, name)
            self.assertEqual(tq.tensor_type, gguf.GGMLQuantizationType.Q8_0, name)
            b = dequantize(tb.data, tb.tensor_type).reshape(shape)
            q = dequantize(tq.data, tq.tensor_type).reshape(shape)
            # BF16 (8 significant bits) rounds to nearest: relative error ≤ 2^-8. Q8_0: blocks
            # of 32 with scale d = amax/127 stored as f16, values d·round(x/d): error ≤ d/2 plus
            # the f16 rounding of d (≤ 2^-11 relative, times |q| ≤ 127).
            self.assertTrue(np.all(np.abs(b - a) <= np.abs(a) * 2.0**-8), name)
            blocks = np.abs(a).reshape(-1, 32).max(axis=1, keepdims=True) / 127
            bound = blocks * (0.5 + 127 * 2.0**-11)
            self.assertTrue(np.all(np.abs(q - a).reshape(-1, 32) <= bound * (1 + 1e-6)), name)

    def test_a_second_run_is_served_from_the_cache(self):
        before = [os.stat(p).st_mtime_ns for p in self.paths]
        self.assertEqual(run(self.script, self.env).split(), self.paths)
        self.assertEqual([os.stat(p).st_mtime_ns for p in self.paths], before)

    def test_llama_cpp_measures_each_file(self):
        import make_bench_models as mbm
        n_params = sum(int(np.prod(s)) for _, s, _ in mbm.tensor_plan(mbm.SHAPES["tiny"]))
        for p in self.paths:
            out = json.loads(run([LLAMA, "bench", p, "16", "4", "1"]).strip().splitlines()[-1])
            for f in FIELDS:
                self.assertGreater(out[f], 0, (p, f))
            self.assertEqual((out["pp"], out["tg"], out["threads"]), (16, 4, 1))
            self.assertEqual(out["n_params"], n_params, p)

    def test_moe_measures_each_file_and_counts_its_active_bytes(self):
        r = self.reader
        for d, p in zip(DTYPES, self.paths):
            out = json.loads(run([MOE, "bench", "infer", "--checkpoint", p, "--pp", "16", "--tg",
                                  "4", "--threads", "1", "--json"]).strip().splitlines()[-1])
            for f in FIELDS + ["triad_gbps", "tg_bandwidth_gbps"]:
                self.assertGreater(out[f], 0, (p, f))
            self.assertEqual(out["active_weight_bytes_per_token"], file_active_bytes(r[d]), p)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]])  # ctest passes the build directory as an argument
