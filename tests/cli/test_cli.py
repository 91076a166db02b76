#!/usr/bin/python3
"""The `moe` command line as a user meets it: every subcommand is listed and has help, a bad
flag or value is one clear line on stderr and a non-zero exit (never a crash), and the
published parameter counts come out of `moe params --preset` (Mixtral 8x7B's 46,702,792,704 as
Mistral AI's checkpoint has it; REFERENCE.md). Run by ctest with MOE_BIN."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

MOE = os.environ.get("MOE_BIN", "build/moe")


def run(*args, **kw):
    return subprocess.run([MOE, *args], capture_output=True, text=True, timeout=120, **kw)


class Cli(unittest.TestCase):
    def test_every_subcommand_has_help(self):
        r = run("--help")
        self.assertEqual(r.returncode, 0, r.stderr)
        for sub in ("train", "eval", "generate", "params", "scaling", "bench", "data", "sweep",
                    "compare", "convert", "inspect"):
            self.assertIn(sub, r.stdout)
            h = run(sub, "--help")
            self.assertEqual(h.returncode, 0, f"{sub}: {h.stderr}")
            self.assertIn("--", h.stdout, sub)

    def assert_one_line_error(self, r, *parts):
        self.assertNotEqual(r.returncode, 0)
        self.assertGreaterEqual(r.returncode, 1)
        self.assertLess(r.returncode, 128, f"killed by a signal: {r.returncode}")
        err = r.stderr.strip()
        self.assertTrue(err, "no error message")
        self.assertEqual(len(err.splitlines()), 1, err)
        for p in parts:
            self.assertIn(p, err)

    def test_bad_flags_and_values_are_one_line(self):
        self.assert_one_line_error(run("train", "--no-such-flag"), "no-such-flag")
        self.assert_one_line_error(run("no-such-command"), "no-such-command")
        with tempfile.TemporaryDirectory() as d:
            missing = os.path.join(d, "missing.json")
            self.assert_one_line_error(run("params", "--config", missing), "missing.json")
            bad = os.path.join(d, "bad.json")
            with open(bad, "w") as f:
                json.dump({"model": {"d_model": -3}}, f)
            self.assert_one_line_error(run("params", "--config", bad), "d_model", "-3")
            with open(bad, "w") as f:
                json.dump({"model": {"ffn": {"kind": "moe", "num_experts": 4, "top_k": 2,
                                             "router": {"kind": "nope"}}}}, f)
            self.assert_one_line_error(run("params", "--config", bad), "router.kind", "nope")
            self.assert_one_line_error(run("params", "--config", bad, "--set", "model"),
                                       "override 'model'", "key=value")
            self.assert_one_line_error(
                run("eval", "--checkpoint", os.path.join(d, "none.safetensors")),
                "none.safetensors")

    def test_thread_counts_are_bounded(self):
        # 100,000 threads used to crash inside libgomp; the flag and the config field now say
        # what they accept, before any thread starts.
        with tempfile.TemporaryDirectory() as d:
            r = run("eval", "--checkpoint", os.path.join(d, "m.gguf"), "--threads", "100000")
            self.assert_one_line_error(r, "--threads", "100000")
            r = run("inspect", os.path.join(d, "m.gguf"), "--threads", "100000")
            self.assert_one_line_error(r, "--threads", "100000")
            r = run("params", "--set", "train.threads=100000")
            self.assert_one_line_error(r, "train.threads", "100000", "1024")
            # Above the machine's hardware threads (within the static bound) is refused too,
            # at the point each command would start them, with the machine's count.
            n = os.cpu_count() or 1
            over = str(n + 1)
            m = os.path.join(d, "m.gguf")
            for args in (["eval", "--checkpoint", m], ["generate", "--checkpoint", m],
                         ["inspect", m], ["bench", "infer", "--checkpoint", m]):
                r = run(*args, "--threads", over)
                self.assert_one_line_error(r, "--threads", over, f"{n} hardware thread")
            r = run("train", "--set", f"train.threads={over}", "--set",
                    f"train.out_dir={os.path.join(d, 'run')}")
            self.assert_one_line_error(r, "train.threads", over, f"{n} hardware thread")
            self.assertFalse(os.path.exists(os.path.join(d, "run")))

    def test_a_one_byte_validation_split_is_refused(self):
        # It used to train and log val_bpb 0.0.
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "train.txt"), "w") as f:
                f.write("some training text. " * 200)
            with open(os.path.join(d, "val.txt"), "w") as f:
                f.write("x")
            r = run("train", "--set", "model.d_model=32", "--set", "model.n_layers=1",
                    "--set", "train.steps=2", "--set", "train.batch_size=2",
                    "--set", "train.seq_len=16", "--set", f"data.dir={d}",
                    "--set", f"train.out_dir={os.path.join(d, 'run')}", "--quiet")
            self.assert_one_line_error(r, "val.txt", "at least 2")

    def test_a_negative_step_in_a_checkpoint_is_refused(self):
        # It used to resume at step -4 and stop on a NaN blamed on the learning rate.
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
        import safetensors_np as st
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "train.txt"), "w") as f:
                f.write("some training text. " * 200)
            with open(os.path.join(d, "val.txt"), "w") as f:
                f.write("some validation text. " * 20)
            args = ["--set", "model.d_model=32", "--set", "model.n_layers=1",
                    "--set", "train.steps=2", "--set", "train.batch_size=2",
                    "--set", "train.seq_len=16", "--set", f"data.dir={d}", "--quiet",
                    "--set", "train.eval_every=0"]
            out = os.path.join(d, "run")
            r = run("train", *args, "--set", f"train.out_dir={out}")
            self.assertEqual(r.returncode, 0, r.stderr)
            tensors, meta = st.load(os.path.join(out, "final.safetensors"))
            state = json.loads(meta["train_state"])
            state["step"] = -4
            meta["train_state"] = json.dumps(state)
            bad = os.path.join(d, "bad.safetensors")
            st.save(bad, tensors, meta)
            r = run("train", *args, "--set", f"train.out_dir={os.path.join(d, 'run2')}",
                    "--resume", bad)
            self.assert_one_line_error(r, "bad.safetensors", "train_state", "-4")

    def test_parameter_counts_do_not_overflow(self):
        # Used to print negative counts (signed overflow). Too big for int64: one line.
        r = run("params", "--set", "model.d_model=2147483584", "--set", "model.n_layers=1000000")
        self.assert_one_line_error(r, "d_ff", "2147483584")
        r = run("params", "--set", "model.d_model=2147483584", "--set", "model.n_layers=1000000",
                "--set", "model.ffn.d_ff=64")
        self.assert_one_line_error(r, "2^63", "d_model = 2147483584", "n_layers = 1000000")
        # Near 2^63 but countable: exact, by Python's unbounded integers.
        r = run("params", "--set", "model.d_model=805306304", "--set", "model.n_layers=1", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        j = json.loads(r.stdout)
        C, V = 805306304, 256
        d_ff = (8 * C // 3 + 63) // 64 * 64
        self.assertEqual(j["total_params"], V * C + 4 * C * C + 3 * C * d_ff + 3 * C)
        self.assertEqual(j["bytes_weights_fp32"], 4.0 * j["total_params"])

    def test_a_new_run_refuses_a_directory_holding_a_run(self):
        # A second run used to replace the checkpoints and cut metrics.jsonl silently.
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "train.txt"), "w") as f:
                f.write("some training text. " * 200)
            with open(os.path.join(d, "val.txt"), "w") as f:
                f.write("some validation text. " * 20)
            out = os.path.join(d, "run")
            args = ["train", "--set", "model.d_model=32", "--set", "model.n_layers=1",
                    "--set", "train.steps=2", "--set", "train.batch_size=2",
                    "--set", "train.seq_len=16", "--set", f"data.dir={d}", "--quiet",
                    "--set", "train.eval_every=0", "--set", f"train.out_dir={out}"]
            r = run(*args)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(os.path.join(out, "metrics.jsonl")) as f:
                before = f.read()
            r = run(*args)
            self.assert_one_line_error(r, out, "final.safetensors",
                                       f"metrics.jsonl ({before.count(chr(10))} lines)",
                                       "--overwrite", "--resume")
            with open(os.path.join(out, "metrics.jsonl")) as f:
                self.assertEqual(f.read(), before)
            r = run(*args, "--overwrite")
            self.assertEqual(r.returncode, 0, r.stderr)
            # --init-from compares the model (it used to compare only shapes): another RoPE base
            # is named with both values, and taken only when asked for, with a note.
            ckpt = os.path.join(out, "final.safetensors")
            init = args[:-2] + ["--set", f"train.out_dir={os.path.join(d, 'ft')}",
                                "--init-from", ckpt, "--set", "model.rope_theta=500000"]
            r = run(*init)
            self.assert_one_line_error(r, ckpt, "model.rope_theta = 10000", "500000",
                                       "--allow-model-change")
            r = run(*init, "--allow-model-change")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("model.rope_theta", r.stderr)
            self.assert_one_line_error(run("train", "--allow-model-change"), "--init-from")

    def test_unclear_messages_are_clear(self):
        with tempfile.TemporaryDirectory() as d:
            # CLI11's range error used to print DBL_MAX in 309 digits.
            r = run("eval", "--checkpoint", os.path.join(d, "m.gguf"), "--batch", "1e400")
            self.assert_one_line_error(r, "--batch", "1e400")
            self.assertLess(len(r.stderr), 200, r.stderr)
            # Negative values used to mean "the default" silently.
            for flag in ("--seq-len", "--threads"):
                r = run("eval", "--checkpoint", os.path.join(d, "m.gguf"), flag, "-5")
                self.assert_one_line_error(r, flag, "-5")
            # A directory without config.json used to give "mmap failed (No such device)".
            r = run("eval", "--checkpoint", d)
            self.assert_one_line_error(r, d, "is a directory",
                                       "Hugging Face model directory with config.json")
            # A well-formed key naming a block the model lacks.
            r = run("params", "--set", "model.n_layers=2",
                    "--set", 'model.ffn_overrides={"5": {"kind": "dense"}}')
            self.assert_one_line_error(r, "block 5 does not exist", "the model has 2 blocks")
            # Values of the wrong JSON type used to surface as nlohmann's type_error.302.
            grid = os.path.join(d, "grid.json")
            with open(grid, "w") as f:
                json.dump({"d_model": [64], "tokens": [1000], "granularity": [1],
                           "expansion": "four", "out_dir": os.path.join(d, "sw")}, f)
            r = run("sweep", "--grid", grid)
            self.assert_one_line_error(r, "grid.json", "expansion", "four", "an integer")

    def test_a_checkpoint_field_of_the_wrong_type_is_named(self):
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
        import safetensors_np as st
        import numpy as np
        with tempfile.TemporaryDirectory() as d:
            cfg = {"model": {"d_model": 32, "n_layers": 1, "n_heads": 2}}
            meta = {"format": "moe.cpp/1", "config": json.dumps(cfg),
                    "train_state": json.dumps({"step": "12"}), "tokenizer.kind": "byte",
                    "tokenizer.blob": "", "has_optimizer": "0"}
            bad = os.path.join(d, "bad.safetensors")
            st.save(bad, {"embed.weight": np.zeros((256, 32), np.float32)}, meta)
            r = run("eval", "--checkpoint", bad, "--text", bad)
            self.assert_one_line_error(r, "bad.safetensors", "train_state", "step", '"12"')
            self.assertNotIn("type_error", r.stderr)

    def test_memory_is_checked_before_allocating(self):
        # n_layers = 1e8 used to grow past 6.8 GB, 2e9 ended in a bare std::bad_alloc.
        import resource
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
        import safetensors_np as st
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "train.txt"), "w") as f:
                f.write("some training text. " * 200)
            with open(os.path.join(d, "val.txt"), "w") as f:
                f.write("some validation text. " * 20)
            args = ["train", "--set", "model.d_model=32", "--set", "model.n_layers=1",
                    "--set", "train.steps=2", "--set", "train.batch_size=2",
                    "--set", "train.seq_len=16", "--set", f"data.dir={d}", "--quiet",
                    "--set", "train.eval_every=0"]
            for layers in ("100000000", "2000000000"):
                r = run(*args, "--set", f"model.n_layers={layers}",
                        "--set", f"train.out_dir={os.path.join(d, 'big')}")
                self.assert_one_line_error(r, "training needs ~", f"n_layers = {layers}",
                                           "is available")
            out = os.path.join(d, "run")
            r = run(*args, "--set", f"train.out_dir={out}")
            self.assertEqual(r.returncode, 0, r.stderr)
            # A checkpoint whose metadata claims a context of 1e8 used to make eval and generate
            # allocate ~6.7 GB (RoPE table and scores for every position): they size by the
            # context they use.
            tensors, meta = st.load(os.path.join(out, "final.safetensors"))
            cfg = json.loads(meta["config"])
            cfg["model"]["max_seq_len"] = 100000000
            meta["config"] = json.dumps(cfg)
            long = os.path.join(d, "long.safetensors")
            st.save(long, tensors, meta)
            r = run("eval", "--checkpoint", long, "--split", "val")
            self.assertEqual(r.returncode, 0, r.stderr)
            r = run("generate", "--checkpoint", long, "--tokens", "20", "--temperature", "0")
            self.assertEqual(r.returncode, 0, r.stderr)
            # An empty text is refused naming the file (it used to be 0 bits per byte, then an
            # error that named no file).
            empty = os.path.join(d, "empty.txt")
            open(empty, "w").close()
            r = run("eval", "--checkpoint", long, "--text", empty)
            self.assert_one_line_error(r, "empty.txt", "0 token(s)")
            peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            self.assertLess(peak_kb, 1 << 20, "a child of this test used more than 1 GB")

    def test_a_bf16_run_evaluates_in_either_precision(self):
        # train.precision = bf16 is saved with the checkpoint; `moe eval` evaluates in it by
        # default, and --precision picks either (the masters are f32). Another value is one
        # clear line.
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "train.txt"), "w") as f:
                f.write("some training text. " * 200)
            with open(os.path.join(d, "val.txt"), "w") as f:
                f.write("some validation text. " * 20)
            out = os.path.join(d, "run")
            r = run("train", "--set", "model.d_model=32", "--set", "model.n_layers=1",
                    "--set", "train.steps=3", "--set", "train.batch_size=2",
                    "--set", "train.seq_len=16", "--set", f"data.dir={d}", "--quiet",
                    "--set", "train.eval_every=0", "--set", "train.precision=bf16",
                    "--set", f"train.out_dir={out}")
            self.assertEqual(r.returncode, 0, r.stderr)
            ckpt = os.path.join(out, "final.safetensors")
            res = {}
            for flag in ([], ["--precision", "bf16"], ["--precision", "fp32"]):
                r = run("eval", "--checkpoint", ckpt, "--split", "val", "--json", *flag)
                self.assertEqual(r.returncode, 0, r.stderr)
                j = json.loads(r.stdout)
                res[tuple(flag)] = j
            self.assertEqual(res[()]["precision"], "bf16")
            self.assertEqual(res[()]["loss"], res[("--precision", "bf16")]["loss"])
            self.assertEqual(res[("--precision", "fp32")]["precision"], "fp32")
            self.assertNotEqual(res[("--precision", "fp32")]["loss"], res[()]["loss"])
            r = run("eval", "--checkpoint", ckpt, "--precision", "fp16")
            self.assert_one_line_error(r, "--precision", "fp16")

    def test_published_parameter_counts(self):
        r = run("params", "--preset", "mixtral-8x7b", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        j = json.loads(r.stdout)
        total = j.get("params_total", j.get("total_params"))
        self.assertEqual(total, 46702792704, j)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
