#!/usr/bin/python3
"""GGUF models through moe.cpp against llama.cpp itself (issue 16).

For every architecture we import (tools/gguf_models.py writes a tiny random model of each with
gguf-py, llama.cpp's own writer), `moe eval --text` must give the loss llama.cpp gives on the
same windows (build/llama_ref/llama_ref: prebuilt libllama from npm, F32 KV cache, flash
attention off). Then our own trained model goes out to GGUF and llama.cpp evaluates it to our
loss, and moe → GGUF → moe comes back bit for bit.

Run by ctest with MOE_BIN, LLAMA_REF and GGUF_PY set (CMakeLists.txt).
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(ROOT, "tools"))
import gguf_models  # noqa: E402
import safetensors_np as st  # noqa: E402

MOE = os.environ.get("MOE_BIN", "")
LLAMA = os.environ.get("LLAMA_REF", "")
SEQ = 64
THREADS = "2"

# Tolerances on the mean loss, relative.
# F32: both sides compute every product in fp32; they differ only in summation order and in
# ggml's SIMD exp/SiLU (≤ a few ulp). Over sums of ≤ 96 terms the logits differ by ~1e-7
# relative and the mean loss by ~1e-8 (measured: ≤ 1.6e-8 over the seven models, AMD EPYC
# Zen 4 with ggml's zen4 backend). 1e-6 keeps a 60× margin for other CPUs' backends and is 100×
# tighter than the 1e-4; a real difference (a RoPE pairing, a norm, a gate, a missing
# routed scale) moves the loss by more than 1e-3.
TOL_F32 = 1e-6
# BF16 and Q8_0 files: moe eval runs them on the inference engine, which rounds the activations
# of each product to the weight's dot type as ggml's CPU matmul does (bf16: 8-bit mantissa;
# Q8_0: blocks of 32 scaled to ±127). What still differs: the router, which these test files
# store in the matrix dtype (llama-quantize would keep it F32) and which we apply in f32 to its
# dequantized weights where ggml quantizes the activations too; ggml's runtime Q8_0 rounding of
# ties; summation orders. Near-tied router scores of these random models turn such differences
# into an occasional other expert for a token. Measured (AMD EPYC Zen 4, 2 threads): ≤ 1.1e-4
# relative (bf16, qwen3moe) and ≤ 2.7e-4 (q8_0, qwen3moe), most models ≤ 6e-5; 1e-3 keeps a
# 4-9× margin and is still far below what a real error (a wrong scale, block or row) produces.
TOL = {"f32": TOL_F32, "bf16": 1e-3, "q8_0": 1e-3}


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout


def llama_loss(model, text):
    return json.loads(run([LLAMA, "loss", model, text, str(SEQ), THREADS]).strip().splitlines()[-1])


def moe_eval(model, text):
    out = run([MOE, "eval", "--checkpoint", model, "--text", text, "--seq-len", str(SEQ),
               "--threads", THREADS, "--json"])
    return json.loads(out.strip().splitlines()[-1])


class InteropLlama(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        for what, path in (("MOE_BIN", MOE), ("LLAMA_REF", LLAMA)):
            if not path or not os.path.exists(path):
                raise AssertionError(f"{what} is not set or missing ({path!r}): build the llama.cpp "
                                     "reference with `make test` (cmake --build build --target "
                                     "llama_ref)")
        gguf_models.import_gguf()  # fails clearly without GGUF_PY
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

    def check_arch(self, arch, dtype):
        path = os.path.join(self.dir, f"{arch}-{dtype}.gguf")
        vocab = gguf_models.vocab_from_gguf(
            os.path.join(self.vocabs, gguf_models.VOCAB_FOR[arch]))
        gguf_models.write_model(path, arch, dtype=dtype, vocab=vocab, seed=7)
        ref = llama_loss(path, self.text)
        ours = moe_eval(path, self.text)
        self.assertEqual(ours["tokens"], ref["tokens"], f"{arch} {dtype}: token counts differ")
        rel = abs(ours["loss"] - ref["loss"]) / ref["loss"]
        print(f"{arch} {dtype}: relative loss difference {rel:.3g}", file=sys.stderr)
        self.assertLess(rel, TOL[dtype], f"{arch} {dtype}: moe.cpp loss {ours['loss']!r} vs "
                        f"llama.cpp {ref['loss']!r} (relative {rel:.3g})")

    def test_architectures_f32(self):
        for arch in gguf_models.ARCHS:
            with self.subTest(arch=arch):
                self.check_arch(arch, "f32")

    def test_architectures_bf16_q8_0(self):
        for arch in gguf_models.ARCHS:
            for dtype in ("bf16", "q8_0"):
                with self.subTest(arch=arch, dtype=dtype):
                    self.check_arch(arch, dtype)

    def train_tiny(self, name, extra):
        out = os.path.join(self.dir, name)
        run([MOE, "train", "--config", os.path.join(ROOT, "configs", "default.json"), "--quiet",
             "--set", "model.d_model=64", "--set", "model.n_layers=2", "--set", "model.n_heads=4",
             "--set", "model.max_seq_len=128", "--set", "train.steps=30",
             "--set", "train.batch_size=4", "--set", "train.seq_len=64",
             "--set", "train.eval_every=0", "--set", "train.checkpoint_every=0",
             "--set", f"data.dir={os.path.join(ROOT, 'data', 'brown')}",
             "--set", f"train.out_dir={out}", "--set", "train.threads=2"] + extra)
        return os.path.join(out, "final.safetensors")

    def check_export(self, name, extra, arch):
        ckpt = self.train_tiny(name, extra)
        gg = os.path.join(self.dir, name + ".gguf")
        run([MOE, "convert", ckpt, gg])
        info = json.loads(run([MOE, "inspect", gg, "--json"]))
        self.assertEqual(info["architecture"], arch)
        # llama.cpp on our export gives our loss (the checkpoint evaluated by moe.cpp).
        ref = llama_loss(gg, self.text)
        ours = moe_eval(ckpt, self.text)
        self.assertEqual(ours["tokens"], ref["tokens"])
        rel = abs(ours["loss"] - ref["loss"]) / ref["loss"]
        self.assertLess(rel, TOL_F32, f"{name}: moe.cpp {ours['loss']!r} vs llama.cpp on the "
                        f"export {ref['loss']!r}")
        # moe → GGUF (F32) → moe is bit-exact, config included.
        back = os.path.join(self.dir, name + "-back.safetensors")
        run([MOE, "convert", gg, back])
        ma, mb = self.assert_same_weights(ckpt, back, f"{name}: moe → GGUF → moe")
        self.assertEqual(json.loads(ma["config"])["model"], json.loads(mb["config"])["model"])

    def assert_same_weights(self, a_path, b_path, what):
        """Every parameter of checkpoint a (optimizer moments aside) is in b, bit for bit.
        Returns both metadata dicts."""
        a, ma = st.load(a_path)
        b, mb = st.load(b_path)
        names = sorted(k for k in a if not k.startswith("optim."))
        self.assertEqual(names, sorted(b))
        for k in names:
            self.assertEqual(a[k].dtype, b[k].dtype, k)
            self.assertTrue(np.array_equal(a[k].view(np.uint32), b[k].view(np.uint32)),
                            f"{what}: {k} differs")
        return ma, mb

    def test_trained_model_to_llama_cpp(self):
        # The default model (renormalised top-k, rotate-half RoPE) goes out as llama.cpp's
        # "llama" (Mixtral) with q/k rows permuted for its interleaved RoPE.
        self.check_export("default", [], "llama")

    def test_trained_olmoe_style_to_llama_cpp(self):
        # Whole-row QK-norm and plain top-k: exactly OLMoE.
        self.check_export("olmoe", ["--set", "model.qk_norm=row",
                                    "--set", "model.ffn.router.normalize=false"], "olmoe")

    def test_grouped_routing_to_llama_cpp(self):
        # DeepSeek-V3's group-limited routing goes out as expert_group_count /
        # expert_group_used_count, which llama.cpp's build_moe_ffn applies to any architecture:
        # 16 experts in 4 groups, a token keeps 2 groups (8 experts) and takes its top-4 there.
        self.check_export("grouped", ["--set", "model.ffn.router.n_group=4",
                                      "--set", "model.ffn.router.topk_group=2"], "llama")

    def test_grouped_routing_from_gguf(self):
        # A GGUF not written by us (gguf-py) with the group keys: our loss is llama.cpp's. The
        # same weights without the keys give llama.cpp a different loss, so reading the keys is
        # what makes ours agree (the test fails if they are ignored).
        vocab = gguf_models.vocab_from_gguf(
            os.path.join(self.vocabs, gguf_models.VOCAB_FOR["qwen3moe"]))
        plain = os.path.join(self.dir, "qwen3moe-nogroups.gguf")
        grouped = os.path.join(self.dir, "qwen3moe-groups.gguf")
        gguf_models.write_model(plain, "qwen3moe", vocab=vocab, seed=11)
        gguf_models.write_model(grouped, "qwen3moe", vocab=vocab, seed=11, overrides={
            "qwen3moe.expert_group_count": 4, "qwen3moe.expert_group_used_count": 2})
        info = json.loads(run([MOE, "inspect", grouped, "--json"]))
        router = info["config"]["ffn"]["router"]
        self.assertEqual((router["n_group"], router["topk_group"]), (4, 2))
        ref, ref_plain = llama_loss(grouped, self.text), llama_loss(plain, self.text)
        ours = moe_eval(grouped, self.text)
        self.assertEqual(ours["tokens"], ref["tokens"])
        rel = abs(ours["loss"] - ref["loss"]) / ref["loss"]
        self.assertLess(rel, TOL_F32, f"grouped qwen3moe: moe.cpp {ours['loss']!r} vs llama.cpp "
                        f"{ref['loss']!r}")
        apart = abs(ref_plain["loss"] - ref["loss"]) / ref["loss"]
        self.assertGreater(apart, 100 * TOL_F32, "the groups did not change llama.cpp's loss: "
                           "this model cannot tell whether they are read")

    def test_hugging_face_round_trip(self):
        # moe → HF (F32, with tokenizer.json) → moe is bit-exact; the HF directory evaluates to
        # the checkpoint's loss (same weights, same byte tokenizer). Not to the bit: the HF model
        # runs on the inference engine (kernels/qmatmul), our checkpoint on the training model
        # (OpenBLAS), whose f32 sums run in other orders; 1e-6 relative is ~10 float ulps of a
        # mean over the text, far below any difference a wrong weight or token would make.
        ckpt = self.train_tiny("hf", [])
        hf = os.path.join(self.dir, "hf-dir")
        run([MOE, "convert", ckpt, hf])
        self.assertTrue(os.path.exists(os.path.join(hf, "tokenizer.json")))
        back = os.path.join(self.dir, "hf-back.safetensors")
        run([MOE, "convert", hf, back])
        self.assert_same_weights(ckpt, back, "moe → HF → moe")
        want = moe_eval(ckpt, self.text)["loss"]
        self.assertAlmostEqual(moe_eval(hf, self.text)["loss"], want, delta=1e-6 * want)

    def test_fine_tune_a_gguf_model(self):
        # train --init-from a GGUF file: its model and its own (BPE) tokenizer; a few steps on
        # Brown lower its loss, and the result goes back to llama.cpp with our loss.
        vocab = gguf_models.vocab_from_gguf(os.path.join(self.vocabs, "bpe-olmo.gguf"))
        src = os.path.join(self.dir, "ft-src.gguf")
        gguf_models.write_model(src, "olmoe", vocab=vocab, seed=3)
        before = moe_eval(src, self.text)["loss"]
        out = os.path.join(self.dir, "ft")
        run([MOE, "train", "--init-from", src, "--quiet", "--set", "train.steps=12",
             "--set", "train.batch_size=4", "--set", "train.seq_len=64", "--set", "train.lr=3e-3",
             "--set", "train.warmup_steps=2", "--set", "train.eval_every=0",
             "--set", "train.checkpoint_every=0", "--set", "train.threads=2",
             "--set", f"data.dir={os.path.join(ROOT, 'data', 'brown')}",
             "--set", f"train.out_dir={out}"])
        ckpt = os.path.join(out, "final.safetensors")
        after = moe_eval(ckpt, self.text)
        self.assertLess(after["loss"], before)
        gg = os.path.join(self.dir, "ft.gguf")
        run([MOE, "convert", ckpt, gg])
        ref = llama_loss(gg, self.text)
        self.assertEqual(after["tokens"], ref["tokens"])
        self.assertLess(abs(after["loss"] - ref["loss"]) / ref["loss"], TOL_F32)

    def test_imported_models_go_back_out(self):
        # GGUF (SentencePiece or byte-level BPE vocabulary) → our checkpoint → GGUF: llama.cpp
        # computes exactly the same loss on the re-export (same weights, hyperparameters and
        # vocabulary), and via HF for the BPE one.
        for arch in ("llama", "qwen2moe"):
            with self.subTest(arch=arch):
                vocab = gguf_models.vocab_from_gguf(
                    os.path.join(self.vocabs, gguf_models.VOCAB_FOR[arch]))
                src = os.path.join(self.dir, f"out-{arch}.gguf")
                gguf_models.write_model(src, arch, vocab=vocab, seed=11)
                ours = os.path.join(self.dir, f"out-{arch}.safetensors")
                again = os.path.join(self.dir, f"out-{arch}-again.gguf")
                run([MOE, "convert", src, ours])
                run([MOE, "convert", ours, again])
                self.assertEqual(llama_loss(again, self.text), llama_loss(src, self.text))
        # A GGUF llama (Mixtral: interleaved RoPE) goes to HF's rotate-half form with its q/k
        # rows permuted back: the same scores, summed in another order.
        vocab = gguf_models.vocab_from_gguf(os.path.join(self.vocabs, "bpe-llama3.gguf"))
        mixtral = os.path.join(self.dir, "out-mixtral.gguf")
        gguf_models.write_model(mixtral, "llama", vocab=vocab, seed=12)
        hf = os.path.join(self.dir, "out-mixtral-hf")
        run([MOE, "convert", mixtral, hf])
        with open(os.path.join(hf, "config.json")) as f:
            self.assertEqual(json.load(f)["architectures"], ["MixtralForCausalLM"])
        a, b = moe_eval(hf, self.text), moe_eval(mixtral, self.text)
        self.assertEqual(a["tokens"], b["tokens"])
        self.assertLess(abs(a["loss"] - b["loss"]) / b["loss"], TOL_F32)
        hf = os.path.join(self.dir, "out-qwen2moe-hf")
        run([MOE, "convert", os.path.join(self.dir, "out-qwen2moe.gguf"), hf])
        self.assertEqual(moe_eval(hf, self.text)["loss"],
                         moe_eval(os.path.join(self.dir, "out-qwen2moe.gguf"), self.text)["loss"])

    def test_inspect_and_routing(self):
        path = os.path.join(self.dir, "inspect.gguf")
        gguf_models.write_model(path, "deepseek", seed=5)
        info = json.loads(run([MOE, "inspect", path, "--json", "--routing", "--text", self.text,
                               "--seq-len", str(SEQ)]))
        self.assertEqual(info["architecture"], "deepseek")
        self.assertEqual([l["ffn"] for l in info["layers"]], ["dense", "moe", "moe"])
        # Every tensor of the (all-F32) file is counted, as gguf-py's own reader lists them.
        gguf = gguf_models.import_gguf()
        self.assertEqual(info["dtypes"], {"F32": {
            "tensors": len(gguf.GGUFReader(path).tensors),
            "bytes": sum(int(t.n_bytes) for t in gguf.GGUFReader(path).tensors)}})
        self.assertGreater(info["total_params"], info["active_params"])
        routing = info["routing"]
        self.assertEqual([r["layer"] for r in routing], [1, 2])
        tokens = info["routing_text"]["tokens"]
        for r in routing:
            self.assertEqual(len(r["tokens_per_expert"]), 4)
            self.assertEqual(sum(r["tokens_per_expert"]), 2 * tokens)  # top-2, dropless
            self.assertGreaterEqual(r["router_entropy"], 0)

    def expect_refusal(self, path, *needles):
        r = subprocess.run([MOE, "eval", "--checkpoint", path, "--text", self.text, "--json"],
                           capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0, f"{path} was accepted")
        self.assertTrue(r.returncode in (1, 2), f"{path}: exit {r.returncode}: {r.stderr}")
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        for n in (path,) + needles:
            self.assertIn(n, lines[0])

    def test_bad_files_get_one_clear_line(self):
        good = os.path.join(self.dir, "bad-base.gguf")
        gguf_models.write_model(good, "olmoe", seed=1)
        with open(good, "rb") as f:
            data = f.read()
        trunc = os.path.join(self.dir, "truncated.gguf")
        with open(trunc, "wb") as f:
            f.write(data[: len(data) // 2])
        self.expect_refusal(trunc, "tensor")
        unknown = os.path.join(self.dir, "bert.gguf")
        gguf_models.write_model(unknown, "olmoe", arch_name="bert")
        self.expect_refusal(unknown, "bert", "expected one of")
        mla = os.path.join(self.dir, "deepseek2.gguf")
        gguf_models.write_model(mla, "deepseek", arch_name="deepseek2")
        self.expect_refusal(mla, "deepseek2", "MLA")
        quant = os.path.join(self.dir, "q5k.gguf")
        gguf_models.write_model(quant, "llama", tensor_types={"blk.0.ffn_up_exps.weight": "Q4_1"})
        self.expect_refusal(quant, "blk.0.ffn_up_exps.weight", "Q4_1")
        shape = os.path.join(self.dir, "shape.gguf")
        gguf_models.write_model(shape, "olmoe", overrides={"olmoe.feed_forward_length": 48})
        self.expect_refusal(shape, "ffn_gate_exps", "shape")
        groups = os.path.join(self.dir, "groups.gguf")  # 6 experts do not split into 4 groups
        gguf_models.write_model(groups, "olmoe", overrides={"olmoe.expert_group_count": 4,
                                                            "olmoe.expert_group_used_count": 2})
        self.expect_refusal(groups, "olmoe.expert_group_count", "is 4", "divisor")
        used = os.path.join(self.dir, "groups-used.gguf")  # llama.cpp needs used < count
        gguf_models.write_model(used, "olmoe", overrides={"olmoe.expert_group_count": 3,
                                                          "olmoe.expert_group_used_count": 3})
        self.expect_refusal(used, "olmoe.expert_group_used_count", "is 3", "1..2")
        merges = os.path.join(self.dir, "merges.gguf")
        vocab = gguf_models.vocab_from_gguf(os.path.join(self.vocabs, "bpe-qwen2.gguf"))
        vocab["merges"] = None
        gguf_models.write_model(merges, "qwen3", vocab=vocab)
        self.expect_refusal(merges, "merges")
        # An empty or one-byte text has nothing to predict: an error, not 0 bits per byte.
        for content in (b"", b"x"):
            t = os.path.join(self.dir, "tiny.txt")
            with open(t, "wb") as f:
                f.write(content)
            r = subprocess.run([MOE, "eval", "--checkpoint", good, "--text", t, "--json"],
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 1, r.stdout)
            self.assertIn("tiny.txt", r.stderr)
            self.assertIn("evaluation needs at least 2", r.stderr)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1])
