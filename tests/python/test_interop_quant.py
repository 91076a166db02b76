#!/usr/bin/python3
"""Q4_0 and Q4_K_M GGUF models through moe.cpp against llama.cpp itself (issue 17).

A tiny random model (tools/gguf_models.py, widths raised to 256 so every matrix row is whole
Q4_K super-blocks) is written in F32 by gguf-py, then quantized by llama.cpp's own quantizer
(`llama_ref quantize`: llama_model_quantize of the prebuilt libllama, as llama-quantize runs it)
to Q4_0 (its output head goes to Q6_K) and to Q4_K_M (Q4_K with Q6_K for some attn_v/ffn_down
tensors and the head). `moe eval` must then give the mean loss llama.cpp gives on the same
windows, with the weights read in place: the engine's owned (widened) bytes stay a small part of
its weight bytes (`moe bench infer --json`).

Run by ctest with MOE_BIN, LLAMA_REF and GGUF_PY set (CMakeLists.txt).
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(ROOT, "tools"))
import gguf_models  # noqa: E402

MOE = os.environ.get("MOE_BIN", "")
LLAMA = os.environ.get("LLAMA_REF", "")
SEQ = 64
THREADS = "2"

# The architectures checked, at widths that are multiples of 256 (C, H·HD and the FFN widths):
# llama.cpp quantizes a row of another width to a fallback type (Q5_0, …) that we do not read.
# Not 8 experts: for those llama.cpp's Q4_K_M rules switch attn_output to Q5_K.
ARCHS = {"olmoe": dict(C=256, HD=64, FF=256),
         "qwen3moe": dict(C=256, HD=64, FF=256, E=4, K=2),
         "llama": dict(C=256, HD=64, FF=256)}

# Tolerance on the mean loss, relative. Both engines quantize the activations of each product
# the same way (Q8_0 blocks of 32 for Q4_0 weights, Q8_K blocks of 256 for Q4_K/Q6_K: ggml's
# vec_dot_type) and form the same exact integer block sums, so what differs is what differs for
# Q8_0 files (test_interop_llama.py): summation orders, ggml's SIMD rounding of Q8_0 ties, and
# the router's f32 arithmetic against near-tied scores of a random model. Measured (AMD EPYC
# Zen 4, 2 threads, ggml's zen4 backend): Q4_0 2.3e-5 (olmoe), 3.0e-5 (qwen3moe), 1.9e-6 (llama);
# Q4_K_M 3.7e-6, 5.6e-6, 6.0e-6 relative, below the Q8_0 files' ≤ 2.7e-4. 1e-3 is the Q8_0
# files' tolerance (other CPUs' ggml backends order sums differently and may flip a near-tied
# expert), still far below what a wrong scale, min, nibble order or block layout produces.
TOL = 1e-3


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout


def last_json(out):
    return json.loads(out.strip().splitlines()[-1])


class InteropQuant(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        for what, path in (("MOE_BIN", MOE), ("LLAMA_REF", LLAMA)):
            if not path or not os.path.exists(path):
                raise AssertionError(f"{what} is not set or missing ({path!r}): build the llama.cpp "
                                     "reference with `make test` (cmake --build build --target "
                                     "llama_ref)")
        cls.gguf = gguf_models.import_gguf()  # fails clearly without GGUF_PY
        import make_test_vocabs  # noqa: E402
        cls.vocabs = make_test_vocabs.cached(os.path.dirname(MOE))
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = cls.tmp.name
        brown = os.path.join(ROOT, "data", "brown", "test.txt")
        if not os.path.exists(brown):
            raise AssertionError(f"{brown} is missing: run `moe data fetch brown` (make test does)")
        with open(brown, "rb") as f:
            head = f.read(6000)
        cls.text = os.path.join(cls.dir, "text.txt")
        with open(cls.text, "wb") as f:
            f.write(head)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def tensor_types(self, path):
        return {t.tensor_type.name for t in self.gguf.GGUFReader(path).tensors}

    def check(self, arch, qtype, must_hold):
        name = f"{arch}-q256"
        gguf_models.ARCHS[name] = dict(gguf_models.ARCHS[arch], **ARCHS[arch])
        if "arch" not in gguf_models.ARCHS[name]:
            gguf_models.ARCHS[name]["arch"] = arch
        f32 = os.path.join(self.dir, f"{name}-f32.gguf")
        if not os.path.exists(f32):
            vocab = gguf_models.vocab_from_gguf(
                os.path.join(self.vocabs, gguf_models.VOCAB_FOR[arch]))
            gguf_models.write_model(f32, name, dtype="f32", vocab=vocab, seed=11)
        path = os.path.join(self.dir, f"{name}-{qtype}.gguf")
        run([LLAMA, "quantize", f32, path, qtype])
        types = self.tensor_types(path)
        for t in must_hold:
            self.assertIn(t, types, f"{arch} {qtype}: llama.cpp wrote no {t} tensor ({types})")
        self.assertTrue(types <= {"F32", "Q8_0", "Q4_0", "Q4_K", "Q6_K"},
                        f"{arch} {qtype}: unexpected tensor types {types}")
        ref = last_json(run([LLAMA, "loss", path, self.text, str(SEQ), THREADS]))
        ours = last_json(run([MOE, "eval", "--checkpoint", path, "--text", self.text,
                              "--seq-len", str(SEQ), "--threads", THREADS, "--json"]))
        self.assertEqual(ours["tokens"], ref["tokens"], f"{arch} {qtype}: token counts differ")
        rel = abs(ours["loss"] - ref["loss"]) / ref["loss"]
        print(f"{arch} {qtype}: relative loss difference {rel:.3g}", file=sys.stderr)
        self.assertLess(rel, TOL, f"{arch} {qtype}: moe.cpp loss {ours['loss']!r} vs llama.cpp "
                        f"{ref['loss']!r} (relative {rel:.3g})")
        # In place: only the norms (and any tensor of another layout) are owned f32 copies.
        b = last_json(run([MOE, "bench", "infer", "--checkpoint", path, "--pp", "8", "--tg", "2",
                           "--threads", THREADS, "--json"]))
        print(f"{arch} {qtype}: owned {b['owned_bytes']} of {b['weight_bytes']} weight bytes",
              file=sys.stderr)
        self.assertLess(b["owned_bytes"], 0.02 * b["weight_bytes"],
                        f"{arch} {qtype}: the engine widened weights to f32 copies ({b})")

    def test_q4_0(self):
        for arch in ARCHS:
            with self.subTest(arch=arch):
                self.check(arch, "Q4_0", ["Q4_0"])

    def test_q4_k_m(self):
        for arch in ARCHS:
            with self.subTest(arch=arch):
                self.check(arch, "Q4_K_M", ["Q4_K", "Q6_K"])


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1])
