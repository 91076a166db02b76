#!/usr/bin/python3
"""Float64 PyTorch forward of the Hugging Face causal-LM classes moe.cpp reads, written from
transformers' modeling_{llama,mixtral,olmoe,qwen2_moe,qwen3_moe,qwen3}.py and DeepSeek's
remote-code modeling_deepseek.py (V1), on the HF tensor names — no `transformers` package
(Debian has none) and none of moe.cpp's code. It writes tiny random model directories as HF
would (config.json + model.safetensors, or shards + model.safetensors.index.json) with the
reference logits beside them:

    tests/fixtures/hf_<case>/config.json, model*.safetensors[, model.safetensors.index.json]
    tests/fixtures/hf_<case>/reference.safetensors   tokens I32 [T], logits F64 [T, V]

The logits are computed in float64 from exactly the stored (F32, BF16 or F16) weights, so a
reader that widens them exactly and maps every tensor to the right place reproduces them up to
float32 rounding. Semantics, per class (all: pre-norm blocks x += attn(rms(x)); x += ffn(rms(x));
RMSNorm x·rsqrt(mean(x²)+eps)·w; RoPE rotate-half with inv_freq = θ^(−2i/hd); causal GQA
attention where query head h reads kv head h // (Hq/Hkv); SwiGLU down(silu(gate x) · up x)):
  Llama     dense
  Qwen3     dense; q_norm / k_norm = RMSNorm over each head's hd values (weights [hd])
  Mixtral   softmax(gate x) → top-k → weights renormalised to sum 1; experts w1 (gate),
            w3 (up), w2 (down) under block_sparse_moe
  OLMoE     q_norm / k_norm over the whole q row [Hq·hd] and k row [Hkv·hd] before RoPE;
            top-k weights renormalised only when norm_topk_prob
  Qwen2-MoE q/k/v projection biases; top-k (norm_topk_prob); plus one shared expert scaled by
            sigmoid(shared_expert_gate x)
  Qwen3-MoE per-head q/k norm; top-k (norm_topk_prob)
  DeepSeek  the first first_k_dense_replace blocks dense (intermediate_size); then top-k
            (norm_topk_prob, denominator + 1e-20) plus shared_experts, one MLP of width
            n_shared_experts · moe_intermediate_size

    /usr/bin/python3 tools/reference/hf_forward.py            # checks, then writes all cases
    /usr/bin/python3 tools/reference/hf_forward.py mixtral    # one case
"""
import json
import math
import os
import shutil
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import safetensors_np  # noqa: E402
from reference.common import DT, parse_case_args  # noqa: E402

V, C, L, HQ, HKV, HD, T = 40, 24, 2, 4, 2, 6, 10
E, K, H, HS, DFF = 4, 2, 12, 10, 20

# name → (architecture, extra config keys, stored dtype, shard_bytes or 0)
CASES = {
    "mixtral": ("MixtralForCausalLM", {"num_local_experts": E, "intermediate_size": H,
                                       "sliding_window": None}, "F16", 0),
    "olmoe": ("OlmoeForCausalLM", {"num_experts": E, "intermediate_size": H,
                                   "norm_topk_prob": False, "clip_qkv": None}, "F32", 0),
    "deepseek": ("DeepseekForCausalLM", {"n_routed_experts": E, "n_shared_experts": 2,
                                         "moe_intermediate_size": H, "intermediate_size": DFF,
                                         "first_k_dense_replace": 1, "moe_layer_freq": 1,
                                         "norm_topk_prob": True, "scoring_func": "softmax"},
                 "BF16", 6000),
    "llama": ("LlamaForCausalLM", {"intermediate_size": DFF, "tie_word_embeddings": True,
                                   "head_dim": 8}, "BF16", 0),
    "qwen2moe": ("Qwen2MoeForCausalLM", {"num_experts": E, "moe_intermediate_size": H,
                                         "shared_expert_intermediate_size": HS,
                                         "norm_topk_prob": False, "decoder_sparse_step": 1,
                                         "mlp_only_layers": [], "use_sliding_window": False},
                 "F32", 0),
    "qwen3moe": ("Qwen3MoeForCausalLM", {"num_experts": E, "moe_intermediate_size": H,
                                         "norm_topk_prob": True, "decoder_sparse_step": 1,
                                         "mlp_only_layers": [], "head_dim": 8}, "F32", 0),
    "qwen3": ("Qwen3ForCausalLM", {"intermediate_size": DFF, "head_dim": 8}, "F32", 0),
}


def config_of(arch, extra):
    cfg = {"architectures": [arch], "hidden_size": C, "num_hidden_layers": L,
           "num_attention_heads": HQ, "num_key_value_heads": HKV, "vocab_size": V,
           "max_position_embeddings": 64, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
           "tie_word_embeddings": False, "hidden_act": "silu", "num_experts_per_tok": K,
           "rope_scaling": None}
    cfg.update(extra)
    return cfg


def hd_of(cfg):
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def is_moe_layer(cfg, arch, l):
    if arch in ("LlamaForCausalLM", "Qwen3ForCausalLM"):
        return False
    if arch == "DeepseekForCausalLM":
        return l >= cfg["first_k_dense_replace"] and l % cfg["moe_layer_freq"] == 0
    return True


def shapes(cfg, arch):
    """HF tensor name → shape, in the order HF's state_dict lists them."""
    hd, out = hd_of(cfg), {}
    dq, dkv = HQ * hd, HKV * hd
    out["model.embed_tokens.weight"] = (V, C)
    for l in range(L):
        p = f"model.layers.{l}."
        out[p + "self_attn.q_proj.weight"] = (dq, C)
        out[p + "self_attn.k_proj.weight"] = (dkv, C)
        out[p + "self_attn.v_proj.weight"] = (dkv, C)
        if arch == "Qwen2MoeForCausalLM":
            out[p + "self_attn.q_proj.bias"] = (dq,)
            out[p + "self_attn.k_proj.bias"] = (dkv,)
            out[p + "self_attn.v_proj.bias"] = (dkv,)
        out[p + "self_attn.o_proj.weight"] = (C, dq)
        if arch == "OlmoeForCausalLM":
            out[p + "self_attn.q_norm.weight"] = (dq,)
            out[p + "self_attn.k_norm.weight"] = (dkv,)
        if arch in ("Qwen3MoeForCausalLM", "Qwen3ForCausalLM"):
            out[p + "self_attn.q_norm.weight"] = (hd,)
            out[p + "self_attn.k_norm.weight"] = (hd,)
        if not is_moe_layer(cfg, arch, l):
            d = cfg["intermediate_size"]
            out[p + "mlp.gate_proj.weight"] = (d, C)
            out[p + "mlp.up_proj.weight"] = (d, C)
            out[p + "mlp.down_proj.weight"] = (C, d)
        elif arch == "MixtralForCausalLM":
            out[p + "block_sparse_moe.gate.weight"] = (E, C)
            for e in range(E):
                q = f"{p}block_sparse_moe.experts.{e}."
                out[q + "w1.weight"], out[q + "w2.weight"], out[q + "w3.weight"] = \
                    (H, C), (C, H), (H, C)
        else:
            out[p + "mlp.gate.weight"] = (E, C)
            for e in range(E):
                q = f"{p}mlp.experts.{e}."
                out[q + "gate_proj.weight"], out[q + "up_proj.weight"] = (H, C), (H, C)
                out[q + "down_proj.weight"] = (C, H)
            sh = {"Qwen2MoeForCausalLM": ("shared_expert.", HS),
                  "DeepseekForCausalLM": ("shared_experts.", H * cfg.get("n_shared_experts", 0))}
            if arch in sh and sh[arch][1] > 0:
                q, d = p + "mlp." + sh[arch][0], sh[arch][1]
                out[q + "gate_proj.weight"], out[q + "up_proj.weight"] = (d, C), (d, C)
                out[q + "down_proj.weight"] = (C, d)
            if arch == "Qwen2MoeForCausalLM":
                out[p + "mlp.shared_expert_gate.weight"] = (1, C)
        out[p + "input_layernorm.weight"] = (C,)
        out[p + "post_attention_layernorm.weight"] = (C,)
    out["model.norm.weight"] = (C,)
    if not cfg["tie_word_embeddings"]:
        out["lm_head.weight"] = (V, C)
    return out


def round_to(x32, dtype):
    """float32 array → (stored bytes, float64 tensor of exactly the stored values)."""
    if dtype == "F32":
        return x32.astype("<f4").tobytes(), torch.from_numpy(x32.astype(np.float64))
    if dtype == "F16":
        h = x32.astype(np.float16)  # round to nearest even
        return h.astype("<f2").tobytes(), torch.from_numpy(h.astype(np.float64))
    b = torch.from_numpy(x32).to(torch.bfloat16)  # round to nearest even
    bits = b.view(torch.int16).numpy().astype("<i2")
    return bits.tobytes(), b.to(DT)


def init(cfg, arch, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    raw, P = {}, {}
    for name, shape in shapes(cfg, arch).items():
        x = torch.randn(shape, generator=g, dtype=torch.float32)
        if name.endswith("norm.weight") or "layernorm" in name:
            x = 1 + 0.2 * x
        elif name.endswith("gate.weight") and "proj" not in name:
            x = 0.5 * x  # router / shared gate: decisive routing, no near-ties
        else:
            x = 0.25 * x
        raw[name], P[name] = round_to(x.numpy(), dtype)
    return raw, P


def rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, theta):  # x [T, heads, hd]
    hd = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=DT) / hd)
    f = torch.arange(x.shape[0], dtype=DT)[:, None] * inv[None]
    emb = torch.cat([f, f], -1)
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]
    rot = torch.cat([-x[..., hd // 2:], x[..., :hd // 2]], -1)
    return x * cos + rot * sin


def attention(P, p, x, cfg, arch):
    hd, eps = hd_of(cfg), cfg["rms_norm_eps"]
    lin = lambda n: F.linear(x, P[p + n + ".weight"], P.get(p + n + ".bias"))  # noqa: E731
    q, k, v = lin("q_proj"), lin("k_proj"), lin("v_proj")
    if arch == "OlmoeForCausalLM":  # whole row, before the head split
        q, k = rms(q, P[p + "q_norm.weight"], eps), rms(k, P[p + "k_norm.weight"], eps)
    q, k, v = q.view(T, HQ, hd), k.view(T, HKV, hd), v.view(T, HKV, hd)
    if arch in ("Qwen3MoeForCausalLM", "Qwen3ForCausalLM"):  # per head
        q, k = rms(q, P[p + "q_norm.weight"], eps), rms(k, P[p + "k_norm.weight"], eps)
    q, k = rope(q, cfg["rope_theta"]), rope(k, cfg["rope_theta"])
    rep = HQ // HKV
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    s = torch.einsum("thd,shd->hts", q, k) / math.sqrt(hd)
    s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    o = torch.einsum("hts,shd->thd", s.softmax(-1), v).reshape(T, HQ * hd)
    return F.linear(o, P[p + "o_proj.weight"])


def mlp(P, q, x, names=("gate_proj", "up_proj", "down_proj")):
    g, u, d = (P[q + n + ".weight"] for n in names)
    return F.linear(F.silu(F.linear(x, g)) * F.linear(x, u), d)


def moe(P, p, x, cfg, arch):
    mixtral = arch == "MixtralForCausalLM"
    blk = p + ("block_sparse_moe." if mixtral else "mlp.")
    scores = F.linear(x, P[blk + "gate.weight"]).softmax(-1)
    w, idx = scores.topk(K, dim=-1)
    # No near-ties at the k-th choice: float32 could pick another expert than float64.
    top = scores.topk(K + 1, dim=-1).values
    assert (top[:, K - 1] - top[:, K]).min().item() > 1e-4, "routing near-tie; change the seed"
    if mixtral or cfg.get("norm_topk_prob", False):
        denom = w.sum(-1, keepdim=True) + (1e-20 if arch == "DeepseekForCausalLM" else 0)
        w = w / denom
    names = ("w1", "w3", "w2") if mixtral else ("gate_proj", "up_proj", "down_proj")
    y = torch.zeros_like(x)
    for t in range(T):
        for j in range(K):
            y[t] += w[t, j] * mlp(P, f"{blk}experts.{int(idx[t, j])}.", x[t], names)
    if arch == "Qwen2MoeForCausalLM":
        gate = torch.sigmoid(F.linear(x, P[blk + "shared_expert_gate.weight"]))
        y = y + gate * mlp(P, blk + "shared_expert.", x)
    if arch == "DeepseekForCausalLM" and cfg.get("n_shared_experts"):
        y = y + mlp(P, blk + "shared_experts.", x)
    return y


def forward(P, tokens, cfg, arch):
    eps = cfg["rms_norm_eps"]
    x = P["model.embed_tokens.weight"][tokens]
    for l in range(L):
        p = f"model.layers.{l}."
        x = x + attention(P, p + "self_attn.", rms(x, P[p + "input_layernorm.weight"], eps), cfg,
                          arch)
        h = rms(x, P[p + "post_attention_layernorm.weight"], eps)
        x = x + (moe(P, p, h, cfg, arch) if is_moe_layer(cfg, arch, l) else mlp(P, p + "mlp.", h))
    x = rms(x, P["model.norm.weight"], eps)
    head = P["model.embed_tokens.weight" if cfg["tie_word_embeddings"] else "lm_head.weight"]
    return F.linear(x, head)


def write_shard(path, names, raw, shp, dtype):
    header, off = {}, 0
    for n in names:
        header[n] = {"dtype": dtype, "shape": list(shp[n]),
                     "data_offsets": [off, off + len(raw[n])]}
        off += len(raw[n])
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(hb).to_bytes(8, "little") + hb + b"".join(raw[n] for n in names))


def write_case(key, out_dir):
    arch, extra, dtype, shard_bytes = CASES[key]
    cfg = config_of(arch, extra)
    raw, P = init(cfg, arch, dtype, seed=sum(map(ord, key)))
    tokens = torch.randint(0, V, (T,), generator=torch.Generator().manual_seed(1))
    logits = forward(P, tokens, cfg, arch)
    d = os.path.join(out_dir, "hf_" + key)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(dict(cfg, torch_dtype={"F32": "float32", "F16": "float16",
                                         "BF16": "bfloat16"}[dtype]), f, indent=2)
    shp, names = shapes(cfg, arch), list(raw)
    if not shard_bytes:
        write_shard(os.path.join(d, "model.safetensors"), names, raw, shp, dtype)
    else:
        groups, size = [[]], 0
        for n in names:
            if groups[-1] and size + len(raw[n]) > shard_bytes:
                groups.append([])
                size = 0
            groups[-1].append(n)
            size += len(raw[n])
        weight_map = {}
        for i, g in enumerate(groups):
            fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
            write_shard(os.path.join(d, fname), g, raw, shp, dtype)
            weight_map.update({n: fname for n in g})
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": sum(map(len, raw.values()))},
                       "weight_map": weight_map}, f, indent=2)
    safetensors_np.save(os.path.join(d, "reference.safetensors"),
                        {"tokens": tokens.numpy().astype(np.int32), "logits": logits.numpy()},
                        {"generator": "tools/reference/hf_forward.py", "case": key})
    print(f"{d}: {arch} {dtype}, logits max |{logits.abs().max().item():.3f}|")


def check():
    """Causality (a later token never changes earlier logits) and the rotate-half RoPE keeps
    norms and depends only on relative position."""
    for key, (arch, extra, dtype, _) in CASES.items():
        cfg = config_of(arch, extra)
        _, P = init(cfg, arch, dtype, seed=3)
        a = torch.randint(0, V, (T,), generator=torch.Generator().manual_seed(2))
        b = a.clone()
        b[-1] = (b[-1] + 1) % V
        la, lb = forward(P, a, cfg, arch), forward(P, b, cfg, arch)
        assert torch.equal(la[:-1], lb[:-1]), key
    x = torch.randn(T, 1, 8, dtype=DT)
    assert torch.allclose(rope(x, 1e4).norm(dim=-1), x.norm(dim=-1))
    q, k = torch.randn(1, 1, 8, dtype=DT).expand(T, 1, 8), torch.randn(1, 1, 8, dtype=DT)
    qr, kr = rope(q, 1e4), rope(k.expand(T, 1, 8), 1e4)
    dots = [(qr[i + 2] * kr[i]).sum().item() for i in range(T - 2)]
    assert max(dots) - min(dots) < 1e-12, dots


def main():
    args = parse_case_args(__doc__, CASES)
    torch.set_num_threads(1)
    if not args.no_check:
        check()
    if args.check:
        return
    for key in args.cases:
        write_case(key, args.out_dir)


if __name__ == "__main__":
    main()
