"""Tiny random models of the architectures moe.cpp imports, written as GGUF with llama.cpp's own
writer (gguf-py), for the interop tests (tests/python/test_interop_llama.py).

Each model has the tensors and hyperparameter keys llama.cpp's src/models/<arch>.cpp reads, at
sizes small enough to evaluate in a fraction of a second, with the features that set each
architecture apart switched on (q/k/v biases, per-head or whole-row QK-norm, a gated shared
expert, leading dense blocks, shared experts, a routed scaling factor, GQA, head_dim ≠ C/H,
tied and untied heads).

    import gguf_models
    gguf_models.write_model("m.gguf", "olmoe", dtype="f32", vocab=None, seed=0)

`vocab` is a dict of tokenizer.ggml.* values (see vocab_from_gguf); None writes the 256-token
byte-level vocabulary moe.cpp exports for its byte tokenizer.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_test_vocabs  # noqa: E402  (GPT-2's byte table, shared with the test vocabularies)


def import_gguf():
    path = os.environ.get("GGUF_PY")
    if not path or not os.path.isdir(path):
        raise SystemExit("GGUF_PY must name llama.cpp's gguf-py directory (build/llama_ref/"
                         "llama.cpp/gguf-py; `make test` sets it up)")
    if path not in sys.path:
        sys.path.insert(0, path)
    import gguf  # noqa: E402
    return gguf


def make_writer(gguf, path, arch):
    """gguf-py's writer, also able to write an empty array (GGUF allows one and llama.cpp reads
    it; gguf-py refuses it, yet our byte vocabulary has no merges and llama.cpp requires the
    tokenizer.ggml.merges key of a "gpt2" vocabulary)."""
    import struct

    class Writer(gguf.GGUFWriter):
        def _pack_val(self, val, vtype, add_vtype, sub_type=None):
            if vtype == gguf.GGUFValueType.ARRAY and len(val) == 0 and sub_type is not None:
                head = struct.pack("<I", vtype) if add_vtype else b""
                return head + struct.pack("<IQ", sub_type, 0)
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return Writer(path, arch)


def byte_vocab():
    table = make_test_vocabs.bytes_to_unicode()
    return {"model": "gpt2", "pre": "default",
            "tokens": [table[b] for b in range(256)],
            "token_type": [1] * 256, "merges": []}


def vocab_from_gguf(path):
    """The tokenizer.ggml.* values of a (vocab-only) GGUF file, to write into a test model."""
    gguf = import_gguf()
    r = gguf.GGUFReader(path)
    out = {}
    for name, field in r.fields.items():
        if name.startswith("tokenizer.ggml."):
            out[name[len("tokenizer.ggml."):]] = field.contents()
    return out


# The real vocabulary each test model uses (tools/make_test_vocabs.py trains them on Brown): the
# kind its architecture's real models ship with.
VOCAB_FOR = {"llama": "spm.gguf", "llama-dense": "bpe-llama3.gguf", "olmoe": "bpe-olmo.gguf",
             "qwen2moe": "bpe-qwen2.gguf", "qwen3moe": "bpe-qwen2.gguf", "qwen3": "bpe-qwen2.gguf",
             "deepseek": "bpe-deepseek-llm.gguf"}


# Per architecture: sizes and switches. C = d_model, H = head count, KV = kv heads, HD = head
# dim, FF = dense / expert width, E experts, K used.
ARCHS = {
    # Mixtral: llama with experts, GQA, renormalised top-k, interleaved RoPE, untied head.
    "llama": dict(C=64, L=2, H=4, KV=2, HD=16, FF=48, E=4, K=2, tied=False),
    "llama-dense": dict(arch="llama", C=64, L=2, H=4, KV=2, HD=16, FF=96, E=0, K=0, tied=True),
    "olmoe": dict(C=64, L=2, H=4, KV=4, HD=16, FF=40, E=6, K=2, tied=False),
    "qwen2moe": dict(C=64, L=2, H=4, KV=2, HD=16, FF=32, E=4, K=2, tied=False, SFF=48),
    "qwen3moe": dict(C=64, L=2, H=4, KV=2, HD=24, FF=32, E=8, K=3, tied=True),
    "qwen3": dict(C=64, L=2, H=4, KV=2, HD=24, FF=80, E=0, K=0, tied=False),
    "deepseek": dict(C=64, L=3, H=4, KV=4, HD=16, FF=96, EFF=32, E=4, K=2, tied=False,
                     SHARED=2, DENSE=1, SCALE=1.5),
}


def write_model(path, name, dtype="f32", vocab=None, seed=0, ctx=256, arch_name=None,
                overrides=None, tensor_types=None):
    """overrides: {key: int} written over the hyperparameters (bad-input tests); tensor_types:
    {tensor name: ggml type name} to store those tensors as random raw blocks of that type;
    arch_name: general.architecture to claim instead of the real one."""
    gguf = import_gguf()
    spec = dict(ARCHS[name])
    arch = spec.pop("arch", name)
    claimed = arch_name or arch
    vocab = vocab or byte_vocab()
    V = len(vocab["tokens"])
    C, L, H, KV, HD = spec["C"], spec["L"], spec["H"], spec["KV"], spec["HD"]
    FF, E, K = spec["FF"], spec["E"], spec["K"]
    rng = np.random.default_rng(seed)
    w = make_writer(gguf, path, claimed)
    if claimed != arch:  # the keys keep the real architecture's prefix only if asked to
        w.arch = arch
    w.add_context_length(ctx)
    w.add_embedding_length(C)
    w.add_block_count(L)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_key_length(HD)
    w.add_value_length(HD)
    w.add_rope_dimension_count(HD)
    w.add_rope_freq_base(10000.0 if arch != "qwen3moe" else 1000000.0)
    w.add_layer_norm_rms_eps(1e-6 if arch.startswith("qwen") else 1e-5)
    if arch == "deepseek":
        w.add_feed_forward_length(FF)
        w.add_expert_feed_forward_length(spec["EFF"])
        w.add_leading_dense_block_count(spec["DENSE"])
        w.add_expert_shared_count(spec["SHARED"])
        w.add_expert_weights_scale(spec["SCALE"])
    elif arch in ("qwen2moe", "qwen3moe"):
        w.add_feed_forward_length(FF * K)
        w.add_expert_feed_forward_length(FF)
        if arch == "qwen2moe":
            w.add_expert_shared_feed_forward_length(spec["SFF"])
    else:
        w.add_feed_forward_length(FF)
    if E:
        w.add_expert_count(E)
        w.add_expert_used_count(K)
    w.add_tokenizer_model(vocab["model"])
    if "pre" in vocab:
        w.add_tokenizer_pre(vocab["pre"])
    w.add_token_list(vocab["tokens"])
    if "scores" in vocab:
        w.add_token_scores(list(vocab["scores"]))
    w.add_token_types(list(vocab["token_type"]))
    if vocab["model"] == "gpt2" and vocab.get("merges") is not None:
        # add_token_merges skips an empty list, but llama.cpp requires the key for "gpt2".
        w.add_key_value("tokenizer.ggml.merges", list(vocab.get("merges", [])),
                        gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.STRING)
    for key in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"):
        if key in vocab:
            w.add_uint32("tokenizer.ggml." + key, int(vocab[key]))
    for key in ("add_bos_token", "add_eos_token", "add_space_prefix"):
        if key in vocab:
            w.add_bool("tokenizer.ggml." + key, bool(vocab[key]))

    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16,
             "q8_0": gguf.GGMLQuantizationType.Q8_0}[dtype]

    def mat(name, shape, std):
        a = (rng.standard_normal(shape) * std).astype(np.float32)
        if tensor_types and name in tensor_types:
            t = gguf.GGMLQuantizationType[tensor_types[name]]
            block, size = gguf.GGML_QUANT_SIZES[t]
            raw = rng.integers(0, 256, size=(*shape[:-1], shape[-1] // block * size),
                               dtype=np.uint8)
            w.add_tensor(name, raw, raw_dtype=t)
            return
        if qtype == gguf.GGMLQuantizationType.F32 or shape[-1] % 32:
            w.add_tensor(name, a)
        else:
            w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)

    def vec(name, n, mean=1.0, std=0.1):
        w.add_tensor(name, (mean + std * rng.standard_normal(n)).astype(np.float32))

    Dq, Dkv = H * HD, KV * HD
    s = 1.0 / np.sqrt(C)
    mat("token_embd.weight", (V, C), 0.5)
    for l in range(L):
        p = f"blk.{l}."
        vec(p + "attn_norm.weight", C)
        mat(p + "attn_q.weight", (Dq, C), s)
        mat(p + "attn_k.weight", (Dkv, C), s)
        mat(p + "attn_v.weight", (Dkv, C), s)
        mat(p + "attn_output.weight", (C, Dq), 1.0 / np.sqrt(Dq))
        if arch == "qwen2moe":
            vec(p + "attn_q.bias", Dq, 0.0, 0.2)
            vec(p + "attn_k.bias", Dkv, 0.0, 0.2)
            vec(p + "attn_v.bias", Dkv, 0.0, 0.2)
        if arch == "olmoe":
            vec(p + "attn_q_norm.weight", Dq)
            vec(p + "attn_k_norm.weight", Dkv)
        if arch in ("qwen3moe", "qwen3"):
            vec(p + "attn_q_norm.weight", HD)
            vec(p + "attn_k_norm.weight", HD)
        vec(p + "ffn_norm.weight", C)
        dense = E == 0 or (arch == "deepseek" and l < spec["DENSE"])
        if dense:
            mat(p + "ffn_gate.weight", (FF, C), s)
            mat(p + "ffn_up.weight", (FF, C), s)
            mat(p + "ffn_down.weight", (C, FF), 1.0 / np.sqrt(FF))
            continue
        eff = spec.get("EFF", FF)
        # Router logits of a few units: well separated, so no near-ties flip a top-k choice
        # between two implementations whose sums differ in the last bit.
        mat(p + "ffn_gate_inp.weight", (E, C), 2.0 / np.sqrt(C))
        mat(p + "ffn_gate_exps.weight", (E, eff, C), s)
        mat(p + "ffn_up_exps.weight", (E, eff, C), s)
        mat(p + "ffn_down_exps.weight", (E, C, eff), 1.0 / np.sqrt(eff))
        if arch == "qwen2moe":
            sff = spec["SFF"]
            vec(p + "ffn_gate_inp_shexp.weight", C, 0.0, s)
            mat(p + "ffn_gate_shexp.weight", (sff, C), s)
            mat(p + "ffn_up_shexp.weight", (sff, C), s)
            mat(p + "ffn_down_shexp.weight", (C, sff), 1.0 / np.sqrt(sff))
        if arch == "deepseek":
            sff = eff * spec["SHARED"]
            mat(p + "ffn_gate_shexp.weight", (sff, C), s)
            mat(p + "ffn_up_shexp.weight", (sff, C), s)
            mat(p + "ffn_down_shexp.weight", (C, sff), 1.0 / np.sqrt(sff))
    for key, value in (overrides or {}).items():
        w.add_uint32(key, value)
    vec("output_norm.weight", C)
    if not spec["tied"]:
        mat("output.weight", (V, C), s)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    write_model(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "f32")
