"""The end-of-generation set (moe::data::eog_ids, which `moe generate` stops at) against llama.cpp's
(llama_vocab_is_eog, through `llama_ref eog`), on vocab-only GGUF files written here with gguf-py:
eot/eom/fim ids given by metadata, found by their text, out of range, and llama.cpp's two
exceptions (<|end|> beside <|return|>/<|call|> or <|calls|>/<|flush|>; </s> beside
<|tool_response>). Our set also survives the vocabulary's serialization (a converted checkpoint).

Needs LLAMA_REF, GGUF_PY and moe_tok_dump; FAILS (never skips) when one is missing.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest


def env_path(name, default=None):
    p = os.environ.get(name, default)
    if not p or not os.path.exists(p):
        raise AssertionError(f"{name} is not set or missing ({p!r}); build it first "
                             "(cmake --build build --target llama_ref moe_tok_dump)")
    return p


def run_json(cmd):
    r = subprocess.run(cmd, capture_output=True, timeout=120)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.decode()[-800:]}")
    return json.loads(r.stdout.decode().strip().splitlines()[-1])


# Each case: extra tokens after the base vocabulary (text, control?) and the metadata ids, named
# by token text (an int is written as is: out of range).
BASE = ["a", "b", "ab", "<|endoftext|>", "x", "y"]
CASES = {
    # eot and eom only by metadata, on texts llama.cpp does not know: they join eos.
    "metadata_eot_eom": ([("<|custom_end|>", True), ("<|custom_msg|>", True)],
                         {"eos": "<|endoftext|>", "eot": "<|custom_end|>",
                          "eom": "<|custom_msg|>"}),
    # No metadata but eos: every text llama.cpp ends on, the fim pad/repo/sep it detects, and
    # control tokens that do not end (im_start, fim_prefix).
    "texts": ([("<|im_start|>", True), ("<|im_end|>", True), ("<|eot_id|>", True),
               ("</s>", True), ("<end_of_turn>", True), ("<|eom_id|>", True), ("[EOS]", True),
               ("<|fim_prefix|>", True), ("<|fim_pad|>", True), ("<|repo_name|>", True),
               ("<|file_sep|>", True), ("<eos>", False), ("<EOT>", False)],
              {"eos": "<|endoftext|>"}),
    # fim ids by metadata on plain tokens; an out-of-range eot id is ignored (and <|end|> found).
    "metadata_fim_and_bad_eot": ([("<|end|>", True)],
                                 {"eos": "<|endoftext|>", "fim_pad": "x", "fim_rep": "y",
                                  "fim_sep": "ab", "eot": 9999}),
    "harmony_drops_end": ([("<|return|>", True), ("<|call|>", True), ("<|end|>", True)],
                          {"eos": "<|return|>"}),
    "solar_drops_end": ([("<|calls|>", True), ("<|flush|>", True), ("<|end|>", True)],
                        {"eos": "<|endoftext|>"}),
    "end_kept_without_call": ([("<|return|>", True), ("<|end|>", True)],
                              {"eos": "<|endoftext|>"}),
    "gemma4_drops_eos_s": ([("<|tool_response>", True), ("</s>", True), ("<turn|>", True)],
                           {"eos": "x"}),
}

KEYS = {"eos": "tokenizer.ggml.eos_token_id", "eot": "tokenizer.ggml.eot_token_id",
        "eom": "tokenizer.ggml.eom_token_id", "fim_pad": "tokenizer.ggml.fim_pad_token_id",
        "fim_rep": "tokenizer.ggml.fim_rep_token_id", "fim_sep": "tokenizer.ggml.fim_sep_token_id"}


def write_vocab(gguf, path, extra, meta):
    # llama.cpp's vocab_only load still reads the architecture's required hyper-parameters.
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(64)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(16)
    tokens = BASE + [t for t, _ in extra]
    types = [1, 1, 1, 3, 1, 1] + [3 if c else 1 for _, c in extra]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["a b"])
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    for name, v in meta.items():
        w.add_uint32(KEYS[name], v if isinstance(v, int) else tokens.index(v))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


class EogVsLlama(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.llama_ref = env_path("LLAMA_REF")
        gguf_py = env_path("GGUF_PY")
        moe_bin = os.environ.get("MOE_BIN", "")
        cls.tok_dump = env_path("MOE_TOK_DUMP",
                                os.path.join(os.path.dirname(moe_bin), "moe_tok_dump"))
        sys.path.insert(0, gguf_py)
        import gguf  # noqa: E402
        cls.gguf = gguf
        cls.tmp = tempfile.mkdtemp(prefix="moe_eog_")
        cls.text = os.path.join(cls.tmp, "text.txt")
        with open(cls.text, "w") as f:
            f.write("ab")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_sets_equal_llama_cpp(self):
        for name, (extra, meta) in CASES.items():
            with self.subTest(case=name):
                path = os.path.join(self.tmp, name + ".gguf")
                write_vocab(self.gguf, path, extra, meta)
                want = run_json([self.llama_ref, "eog", path])["eog"]
                got = run_json([self.tok_dump, path, self.text])
                self.assertEqual(got["eog"], want, f"{name}: our EOG ids vs llama.cpp's")
                self.assertEqual(got["reloaded_eog"], want, f"{name}: after serialization")
                self.assertTrue(want, f"{name}: llama.cpp's set is empty")


if __name__ == "__main__":
    # ctest passes the build directory: moe_tok_dump lives there.
    if len(sys.argv) > 1 and os.path.isdir(sys.argv[1]):
        os.environ.setdefault("MOE_TOK_DUMP", os.path.join(sys.argv.pop(1), "moe_tok_dump"))
    unittest.main()
