"""The inference benchmark's models (issue 17, bench/run_bench.sh `infer`): OLMoE-1B-7B's layer
shapes with 4 blocks instead of 16 and random weights, as three GGUF files that llama.cpp and
moe.cpp both load:

    olmoe4-f32.gguf    every tensor F32                                   (~7.5 GB)
    olmoe4-bf16.gguf   matrices BF16; router ffn_gate_inp and norms F32   (~3.8 GB)
    olmoe4-q8_0.gguf   matrices Q8_0; router ffn_gate_inp and norms F32   (~2.0 GB)

The router and the norms stay F32 in every file, as llama-quantize keeps them. The three files
hold the same weights (one random draw, fixed seed, stored three ways; BF16 and Q8_0 quantized by
gguf-py's own numpy quantizers). Shapes as OLMoE-1B-7B's config: d_model 2048, 16 heads of 128
(no GQA), whole-row QK-norm, 64 experts of width 1024, top-8, vocab 50304, NEOX RoPE θ 10^4,
RMSNorm ε 1e-5, context 4096, untied head. Matrices are N(0, 0.02²) (activations stay sane
through 4 blocks), norm weights 1.

The files are streamed: the tensor infos are written first, then each tensor's data in chunks
(one expert or 4096 rows at a time), so the writer holds a few MB, never a model. The
tokenizer is a byte-level GPT-2 BPE of exactly 50304 tokens (256 byte tokens, 50047 merges of
two byte tokens, one control token <|endoftext|>); the benchmark feeds token ids, so any valid
vocabulary of the right size serves.

    /usr/bin/python3 tools/make_bench_models.py [OUT_DIR] [--shape olmoe4|tiny]

OUT_DIR defaults to $MOE_BENCH_MODELS, else build/bench_models. The files are cached: OUT_DIR/
<shape>.sha256 records the sha256 of this script (and the shape) they were written by; when it
matches and the files exist nothing is written. New files are written beside the old ones and
renamed into place, the stamp last. Prints the three paths, one a line. `--shape tiny` (d_model
64, 8 experts, 1 block, the same vocabulary) checks the writer in seconds. Needs gguf-py on
PYTHONPATH (build/llama_ref/llama.cpp/gguf-py) and numpy.
"""
import argparse
import hashlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_test_vocabs  # noqa: E402  (GPT-2's byte table)

import gguf  # noqa: E402

SHAPES = {
    # C d_model, L blocks, H heads (= kv heads), HD head dim, FF expert width, E experts, K used
    "olmoe4": dict(C=2048, L=4, H=16, HD=128, FF=1024, E=64, K=8, ctx=4096),
    "tiny": dict(C=64, L=1, H=4, HD=16, FF=32, E=8, K=2, ctx=4096),
}
VOCAB = 50304
STD = 0.02
SEED = 1234
DTYPES = {"f32": gguf.GGMLQuantizationType.F32, "bf16": gguf.GGMLQuantizationType.BF16,
          "q8_0": gguf.GGMLQuantizationType.Q8_0}
CHUNK_ROWS = 4096  # rows of a 2-D matrix generated and written at a time


def vocabulary():
    """tokens, token types, merges, eos id: a valid byte-level BPE of VOCAB tokens."""
    table = make_test_vocabs.bytes_to_unicode()
    byte_tokens = [table[b] for b in range(256)]
    n_merges = VOCAB - 256 - 1
    tokens, merges = list(byte_tokens), []
    for i in range(n_merges):  # pairs of byte tokens in a fixed order: every pair is new
        a, b = byte_tokens[i // 256], byte_tokens[i % 256]
        merges.append(f"{a} {b}")
        tokens.append(a + b)
    tokens.append("<|endoftext|>")
    types = [1] * (VOCAB - 1) + [3]  # normal, …, control
    return tokens, types, merges, VOCAB - 1


def tensor_plan(s):
    """[(name, numpy shape, kind)] in file order; kind: 'mat' (random, file dtype), 'router'
    (random, F32), 'norm' (ones, F32)."""
    C, L, D, FF, E = s["C"], s["L"], s["H"] * s["HD"], s["FF"], s["E"]
    plan = [("token_embd.weight", (VOCAB, C), "mat")]
    for l in range(L):
        p = f"blk.{l}."
        plan += [(p + "attn_norm.weight", (C,), "norm"),
                 (p + "attn_q.weight", (D, C), "mat"), (p + "attn_k.weight", (D, C), "mat"),
                 (p + "attn_v.weight", (D, C), "mat"), (p + "attn_output.weight", (C, D), "mat"),
                 (p + "attn_q_norm.weight", (D,), "norm"), (p + "attn_k_norm.weight", (D,), "norm"),
                 (p + "ffn_norm.weight", (C,), "norm"),
                 (p + "ffn_gate_inp.weight", (E, C), "router"),
                 (p + "ffn_gate_exps.weight", (E, FF, C), "mat"),
                 (p + "ffn_up_exps.weight", (E, FF, C), "mat"),
                 (p + "ffn_down_exps.weight", (E, C, FF), "mat")]
    plan += [("output_norm.weight", (C,), "norm"), ("output.weight", (VOCAB, C), "mat")]
    return plan


def stored_type(kind, dtype):
    return DTYPES[dtype] if kind == "mat" else gguf.GGMLQuantizationType.F32


def nbytes(shape, qtype):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    assert shape[-1] % block == 0, (shape, qtype)
    return int(np.prod(shape[:-1])) * (shape[-1] // block) * size


def encode(a, qtype):
    """float32 rows → the bytes of qtype (gguf-py's quantizers)."""
    if qtype == gguf.GGMLQuantizationType.F32:
        return a
    return gguf.quants.quantize(a, qtype)


def chunks(shape, kind, rng):
    """The tensor's float32 values as 2-D row blocks, in storage order."""
    if kind == "norm":
        yield np.ones((1, shape[0]), dtype=np.float32)
        return
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    for r in range(0, rows, CHUNK_ROWS):
        n = min(CHUNK_ROWS, rows - r)
        yield rng.standard_normal((n, cols), dtype=np.float32) * np.float32(STD)


def open_writer(path, s, dtype, plan, vocab):
    tokens, types, merges, eos = vocab
    w = gguf.GGUFWriter(path, "olmoe")
    w.add_name(f"olmoe-bench-{len(plan)}t")
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])
    w.add_context_length(s["ctx"])
    w.add_embedding_length(s["C"])
    w.add_block_count(s["L"])
    w.add_feed_forward_length(s["FF"])
    w.add_head_count(s["H"])
    w.add_head_count_kv(s["H"])
    w.add_key_length(s["HD"])
    w.add_value_length(s["HD"])
    w.add_rope_dimension_count(s["HD"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_expert_count(s["E"])
    w.add_expert_used_count(s["K"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("olmo")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(eos)
    w.add_eos_token_id(eos)
    for name, shape, kind in plan:
        qtype = stored_type(kind, dtype)
        w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes(shape, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    return w


def write_models(out_dir, shape):
    s = SHAPES[shape]
    plan = tensor_plan(s)
    vocab = vocabulary()
    paths = {d: os.path.join(out_dir, f"{shape}-{d}.gguf") for d in DTYPES}
    tmp = {d: p + ".tmp" for d, p in paths.items()}
    writers = {d: open_writer(tmp[d], s, d, plan, vocab) for d in DTYPES}
    rng = np.random.default_rng(SEED)
    for name, shp, kind in plan:
        print(f"make_bench_models: {name} {shp}", file=sys.stderr, flush=True)
        written = dict.fromkeys(DTYPES, 0)
        for d, w in writers.items():  # each tensor starts at the file's alignment
            w.write_padding(w.fout[0], w.fout[0].tell())
        for block in chunks(shp, kind, rng):
            for d, w in writers.items():
                raw = encode(block, stored_type(kind, d))
                raw.tofile(w.fout[0])
                written[d] += raw.nbytes
        for d, w in writers.items():
            want = nbytes(shp, stored_type(kind, d))
            assert written[d] == want, (name, d, written[d], want)
            w.write_padding(w.fout[0], want)
    for d, w in writers.items():
        w.close()
        os.replace(tmp[d], paths[d])
    return paths


def script_hash(shape):
    h = hashlib.sha256()
    with open(os.path.abspath(__file__), "rb") as f:
        h.update(f.read())
    h.update(shape.encode())
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", nargs="?",
                    default=os.environ.get("MOE_BENCH_MODELS") or "build/bench_models")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="olmoe4")
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    stamp = os.path.join(args.out_dir, f"{args.shape}.sha256")
    want = script_hash(args.shape)
    paths = {d: os.path.join(args.out_dir, f"{args.shape}-{d}.gguf") for d in DTYPES}
    have = open(stamp).read().strip() if os.path.exists(stamp) else ""
    if have != want or not all(os.path.exists(p) for p in paths.values()):
        if os.path.exists(stamp):
            os.remove(stamp)
        print(f"make_bench_models: writing {args.shape} models into {args.out_dir}",
              file=sys.stderr, flush=True)
        paths = write_models(args.out_dir, args.shape)
        with open(stamp + ".tmp", "w") as f:
            f.write(want + "\n")
        os.replace(stamp + ".tmp", stamp)
    for d in DTYPES:
        print(paths[d])


if __name__ == "__main__":
    main()
