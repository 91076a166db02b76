#!/usr/bin/python3
"""PyTorch (float64) reference for the whole dense transformer of moe.cpp.

Writes the committed whole-model fixtures
    tests/fixtures/tiny_model_a.safetensors   (GQA 4q/2kv, qk_norm, untied head, SwiGLU)
    tests/fixtures/tiny_model_b.safetensors   (MHA, no qk_norm, tied embeddings, GELU)
    tests/fixtures/tiny_model_c.safetensors   (GQA, head_dim 8 != C/Hq, q/k/v biases, per-head
                                               qk_norm, interleaved RoPE, untied, SwiGLU)
that the C++ tests compare against: initial parameters, inputs, logits, loss, every gradient,
and ten AdamW steps (losses, learning rates, grad norms, final parameters).

Usage (Debian's interpreter: it has torch 1.13 and numpy):
    /usr/bin/python3 tools/reference/tiny_model.py            # checks, then writes both
    /usr/bin/python3 tools/reference/tiny_model.py --check    # sanity checks only
    /usr/bin/python3 tools/reference/tiny_model.py --out-dir DIR

The model (all float64; weights stored [out, in]; y = x @ W.T; no biases):
    h = embed.weight[x]
    per layer: a = rmsnorm(h, attn_norm); q,k,v = a @ wq.T, a @ wk.T, a @ wv.T
               (qkv_bias: q, k, v += bq, bk, bv, before any norm)
               (qk_norm row: rmsnorm over the whole q row [Hq*hd] / k row [Hkv*hd];
                qk_norm head: rmsnorm over each head's hd values, weight [hd] for all heads)
               RoPE per head on q and k, pair i turned by t*theta^(-2i/hd): pairs (i, i+hd/2)
               ("rotate half", default) or (2i, 2i+1) (rope_style interleaved); t is 0-based
               GQA: query head j uses kv head j // (Hq/Hkv); causal softmax(q.k/sqrt(hd)) @ v
               h += o @ wo.T; f = rmsnorm(h, ffn_norm)
               swiglu: h += (silu(f @ w_gate.T) * (f @ w_up.T)) @ w_down.T
               gelu:   h += gelu_erf(f @ w_up.T) @ w_down.T
    logits = rmsnorm(h, norm) @ W_head.T   (W_head = embed.weight when tied)
    loss = mean cross-entropy (natural log) over all B*T positions
rmsnorm(x, w) = x / sqrt(mean(x**2, -1) + eps) * w.

Optimizer: torch.optim.AdamW (decoupled decay), decay only on 2-D matrices other than
embed.weight; warmup-then-cosine learning rate; clip_grad_norm_ on the global norm before each
update; the same batch every step. losses[s] is the loss before update s (losses[0] == loss).

Initial parameters are drawn in float64, rounded to float32, stored as F32, and the float64
reference runs FROM the rounded values, so the C++ side starts from exactly the same numbers.
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tools"))
from reference.common import DT, parse_case_args, write_fixture  # noqa: E402
GENERATOR = "tools/reference/tiny_model.py"

# The config JSON is the C++ side's schema (include/moe/model/config.h); key order is kept.
TRAIN = {"steps": 10, "lr": 0.01, "min_lr": 0.001, "warmup_steps": 3, "weight_decay": 0.1,
         "beta1": 0.9, "beta2": 0.95, "eps": 1e-08, "grad_clip": 1.0}

FIXTURES = {
    "a": dict(seed=20240501, vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
              head_dim=8, T=12, B=3, qk_norm=True, tie_embeddings=False, activation="swiglu",
              d_ff=48),
    "b": dict(seed=20240502, vocab_size=64, d_model=32, n_layers=2, n_heads=2, n_kv_heads=2,
              head_dim=16, T=10, B=2, qk_norm=False, tie_embeddings=True, activation="gelu",
              d_ff=64),
    # The llama.cpp architecture features: q/k/v biases (Qwen2), per-head q/k norm with one
    # [hd] weight (Qwen3), interleaved RoPE pairs (llama.cpp's "llama"), head_dim != C/Hq.
    "c": dict(seed=20240503, vocab_size=53, d_model=24, n_layers=2, n_heads=4, n_kv_heads=2,
              head_dim=8, T=9, B=2, qk_norm="head", tie_embeddings=False, activation="swiglu",
              d_ff=40, qkv_bias=True, rope_style="interleaved"),
}
ROPE_THETA = 10000.0
NORM_EPS = 1e-5
MATRIX_STD = 0.1
EMBED_STD = 0.5
NORM_W_STD = 0.1
BIAS_STD = 0.3


def config_json(fx):
    cfg = {
        "model": {
            "vocab_size": fx["vocab_size"], "d_model": fx["d_model"], "n_layers": fx["n_layers"],
            "n_heads": fx["n_heads"], "n_kv_heads": fx["n_kv_heads"], "head_dim": fx["head_dim"],
            "max_seq_len": fx["T"], "rope_theta": ROPE_THETA, "norm_eps": NORM_EPS,
            "qk_norm": fx["qk_norm"], "tie_embeddings": fx["tie_embeddings"],
            "ffn": {"kind": "dense", "activation": fx["activation"], "d_ff": fx["d_ff"]},
        },
        "train": {"batch_size": fx["B"], "seq_len": fx["T"], **TRAIN},
    }
    # Fixtures a and b predate these fields: their configs (and bytes) stay as they were.
    for key in ("qkv_bias", "rope_style"):
        if key in fx:
            cfg["model"][key] = fx[key]
    return cfg


def qk_norm_mode(m):
    """none | row | head; the booleans false / true of older configs mean none / row."""
    v = m["qk_norm"]
    return {False: "none", True: "row"}.get(v, v) if isinstance(v, bool) else v


# ------------------------------------------------------------------------------------------
# Parameters


def param_shapes(cfg):
    """Ordered list of (name, shape, kind) with kind in {'embed', 'matrix', 'norm'}."""
    m = cfg["model"]
    V, C, H = m["vocab_size"], m["d_model"], m["ffn"]["d_ff"]
    q, kv = m["n_heads"] * m["head_dim"], m["n_kv_heads"] * m["head_dim"]
    out = [("embed.weight", (V, C), "embed")]
    for l in range(m["n_layers"]):
        p = f"layers.{l}."
        out += [(p + "attn_norm.weight", (C,), "norm"),
                (p + "attn.wq", (q, C), "matrix"),
                (p + "attn.wk", (kv, C), "matrix"),
                (p + "attn.wv", (kv, C), "matrix"),
                (p + "attn.wo", (C, q), "matrix")]
        if qk_norm_mode(m) == "row":
            out += [(p + "attn.q_norm", (q,), "norm"), (p + "attn.k_norm", (kv,), "norm")]
        elif qk_norm_mode(m) == "head":
            hd = m["head_dim"]
            out += [(p + "attn.q_norm", (hd,), "norm"), (p + "attn.k_norm", (hd,), "norm")]
        if m.get("qkv_bias", False):
            out += [(p + "attn.bq", (q,), "bias"), (p + "attn.bk", (kv,), "bias"),
                    (p + "attn.bv", (kv,), "bias")]
        out += [(p + "ffn_norm.weight", (C,), "norm")]
        if m["ffn"]["activation"] == "swiglu":
            out += [(p + "ffn.w_gate", (H, C), "matrix")]
        out += [(p + "ffn.w_up", (H, C), "matrix"), (p + "ffn.w_down", (C, H), "matrix")]
    out += [("norm.weight", (C,), "norm")]
    if not m["tie_embeddings"]:
        out += [("head.weight", (V, C), "matrix")]
    return out


def init_params(cfg, seed):
    """float32-rounded initial values (as float32 torch tensors), tokens and targets."""
    g = torch.Generator().manual_seed(seed)
    params = {}
    for name, shape, kind in param_shapes(cfg):
        z = torch.randn(shape, generator=g, dtype=torch.float64)
        if kind == "embed":
            v = EMBED_STD * z
        elif kind == "matrix":
            v = MATRIX_STD * z
        elif kind == "bias":
            v = BIAS_STD * z  # nonzero, so the forward sees them (the C++ model starts at 0)
        else:
            v = 1.0 + NORM_W_STD * z
        params[name] = v.to(torch.float32)
    V = cfg["model"]["vocab_size"]
    B, T = cfg["train"]["batch_size"], cfg["train"]["seq_len"]
    tokens = torch.randint(0, V, (B, T), generator=g, dtype=torch.int64)
    targets = torch.randint(0, V, (B, T), generator=g, dtype=torch.int64)
    return params, tokens, targets


def decays(name, p):
    """Weight decay only on 2-D matrices other than the embedding (norms never decay)."""
    return p.dim() == 2 and name != "embed.weight"


# ------------------------------------------------------------------------------------------
# Model (batched; float64)


def rmsnorm(x, w, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope_tables(T, hd, theta):
    i = torch.arange(hd // 2, dtype=DT)
    inv_freq = torch.tensor(theta, dtype=DT) ** (-(2.0 * i) / hd)
    ang = torch.arange(T, dtype=DT)[:, None] * inv_freq[None, :]  # [T, hd/2]
    return torch.cos(ang), torch.sin(ang)


def apply_rope(x, cos, sin, style="half"):
    """x [B,T,nh,hd]; cos/sin [T,hd/2]. Pair i is (i, i + hd/2) ("half", rotate-half) or
    (2i, 2i + 1) ("interleaved", llama.cpp's ROPE_TYPE_NORM); it turns by t*theta^(-2i/hd)."""
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    if style == "interleaved":
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).flatten(-2)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def attention(q, k, v, n_heads, n_kv_heads, hd):
    """q [B,T,Hq,hd] (after RoPE), k/v [B,T,Hkv,hd]. Returns [B,T,Hq*hd]."""
    B, T = q.shape[:2]
    group = n_heads // n_kv_heads
    k = k.repeat_interleave(group, dim=2)  # query head j -> kv head j // group
    v = v.repeat_interleave(group, dim=2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B,H,T,hd]
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    causal = torch.ones(T, T, dtype=torch.bool).triu(1)
    scores = scores.masked_fill(causal, float("-inf"))
    o = torch.softmax(scores, dim=-1) @ v  # [B,H,T,hd]
    return o.transpose(1, 2).reshape(B, T, n_heads * hd)


def forward(P, tokens, cfg):
    """P: dict name -> float64 tensor. Returns logits [B,T,V]."""
    m = cfg["model"]
    eps, hd, Hq, Hkv = m["norm_eps"], m["head_dim"], m["n_heads"], m["n_kv_heads"]
    B, T = tokens.shape
    cos, sin = rope_tables(T, hd, m["rope_theta"])
    h = P["embed.weight"][tokens]
    for l in range(m["n_layers"]):
        p = f"layers.{l}."
        a = rmsnorm(h, P[p + "attn_norm.weight"], eps)
        q = a @ P[p + "attn.wq"].T
        k = a @ P[p + "attn.wk"].T
        v = a @ P[p + "attn.wv"].T
        if m.get("qkv_bias", False):
            q, k, v = q + P[p + "attn.bq"], k + P[p + "attn.bk"], v + P[p + "attn.bv"]
        if qk_norm_mode(m) == "row":
            q = rmsnorm(q, P[p + "attn.q_norm"], eps)
            k = rmsnorm(k, P[p + "attn.k_norm"], eps)
        q, k = q.view(B, T, Hq, hd), k.view(B, T, Hkv, hd)
        if qk_norm_mode(m) == "head":  # each head's hd values, one weight shared by the heads
            q = rmsnorm(q, P[p + "attn.q_norm"], eps)
            k = rmsnorm(k, P[p + "attn.k_norm"], eps)
        style = m.get("rope_style", "half")
        q = apply_rope(q, cos, sin, style)
        k = apply_rope(k, cos, sin, style)
        v = v.view(B, T, Hkv, hd)
        h = h + attention(q, k, v, Hq, Hkv, hd) @ P[p + "attn.wo"].T
        f = rmsnorm(h, P[p + "ffn_norm.weight"], eps)
        if m["ffn"]["activation"] == "swiglu":
            u = F.silu(f @ P[p + "ffn.w_gate"].T) * (f @ P[p + "ffn.w_up"].T)
        else:
            u = F.gelu(f @ P[p + "ffn.w_up"].T)  # exact erf GELU (torch default)
        h = h + u @ P[p + "ffn.w_down"].T
    h = rmsnorm(h, P["norm.weight"], eps)
    w_head = P["embed.weight"] if m["tie_embeddings"] else P["head.weight"]
    return h @ w_head.T


def loss_fn(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def lr_at(s, tr):
    if s < tr["warmup_steps"]:
        return tr["lr"] * (s + 1) / tr["warmup_steps"]
    progress = (s - tr["warmup_steps"]) / max(1, tr["steps"] - tr["warmup_steps"])
    return tr["min_lr"] + 0.5 * (tr["lr"] - tr["min_lr"]) * (1 + math.cos(math.pi * progress))


# ------------------------------------------------------------------------------------------
# Fixture


def make_fixture(key):
    fx = FIXTURES[key]
    cfg = config_json(fx)
    tr = cfg["train"]
    init32, tokens, targets = init_params(cfg, fx["seed"])
    P = {k: torch.nn.Parameter(v.to(DT)) for k, v in init32.items()}

    # Initial forward/backward.
    logits = forward(P, tokens, cfg)
    loss = loss_fn(logits, targets)
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in P.items()}
    for p in P.values():
        p.grad = None

    # Ten AdamW steps on the same batch.
    decay = [p for k, p in P.items() if decays(k, p)]
    no_decay = [p for k, p in P.items() if not decays(k, p)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tr["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=tr["lr"], betas=(tr["beta1"], tr["beta2"]), eps=tr["eps"], amsgrad=False,
        maximize=False, foreach=False)
    plist = list(P.values())
    losses, lrs, gnorms = [], [], []
    for s in range(tr["steps"]):
        opt.zero_grad(set_to_none=True)
        l_s = loss_fn(forward(P, tokens, cfg), targets)
        l_s.backward()
        gn = torch.nn.utils.clip_grad_norm_(plist, tr["grad_clip"])
        lr = lr_at(s, tr)
        for grp in opt.param_groups:
            grp["lr"] = lr
        opt.step()
        losses.append(l_s.item())
        lrs.append(lr)
        gnorms.append(gn.item())
    assert losses[0] == loss.item()

    out = {}
    for k, v in init32.items():
        out["param." + k] = v.numpy()
    out["tokens"] = tokens.to(torch.int32).numpy()
    out["targets"] = targets.to(torch.int32).numpy()
    out["logits"] = logits.detach().numpy()
    out["loss"] = np.array(loss.item(), dtype=np.float64)
    for k, g in grads.items():
        out["grad." + k] = g.numpy()
    out["losses"] = np.array(losses, np.float64)
    out["lrs"] = np.array(lrs, np.float64)
    out["grad_norms"] = np.array(gnorms, np.float64)
    for k, p in P.items():
        out["final." + k] = p.detach().numpy()
    meta = {"config": json.dumps(cfg), "generator": GENERATOR,
            "torch_version": torch.__version__}
    return out, meta, cfg


# ------------------------------------------------------------------------------------------
# Sanity checks of the reference itself


def naive_forward(P, tokens, cfg):
    """Per-token, per-head loops written straight from the description: an independent
    check of the batched forward (GQA head mapping, RoPE pairing, causal mask)."""
    m = cfg["model"]
    eps, hd, Hq, Hkv = m["norm_eps"], m["head_dim"], m["n_heads"], m["n_kv_heads"]
    B, T = tokens.shape
    half = hd // 2

    def norm(x, w):
        return x / math.sqrt(float((x * x).mean()) + eps) * w

    def rope(x, t):
        y = torch.empty_like(x)
        for i in range(half):
            ang = t * m["rope_theta"] ** (-(2.0 * i) / hd)
            c, s = math.cos(ang), math.sin(ang)
            a, b = (2 * i, 2 * i + 1) if m.get("rope_style") == "interleaved" else (i, i + half)
            y[a] = x[a] * c - x[b] * s
            y[b] = x[b] * c + x[a] * s
        return y

    out = torch.empty(B, T, m["vocab_size"], dtype=DT)
    for b in range(B):
        hs = [P["embed.weight"][int(tokens[b, t])].clone() for t in range(T)]
        for l in range(m["n_layers"]):
            p = f"layers.{l}."
            Q, K, Vv = [], [], []
            for t in range(T):
                a = norm(hs[t], P[p + "attn_norm.weight"])
                q, k, v = P[p + "attn.wq"] @ a, P[p + "attn.wk"] @ a, P[p + "attn.wv"] @ a
                if m.get("qkv_bias", False):
                    q, k, v = q + P[p + "attn.bq"], k + P[p + "attn.bk"], v + P[p + "attn.bv"]
                if qk_norm_mode(m) == "row":
                    q, k = norm(q, P[p + "attn.q_norm"]), norm(k, P[p + "attn.k_norm"])
                qh = [q[j * hd:(j + 1) * hd] for j in range(Hq)]
                kh = [k[j * hd:(j + 1) * hd] for j in range(Hkv)]
                if qk_norm_mode(m) == "head":
                    qh = [norm(x, P[p + "attn.q_norm"]) for x in qh]
                    kh = [norm(x, P[p + "attn.k_norm"]) for x in kh]
                Q.append([rope(x, t) for x in qh])
                K.append([rope(x, t) for x in kh])
                Vv.append([v[j * hd:(j + 1) * hd] for j in range(Hkv)])
            new = []
            for t in range(T):
                heads = []
                for j in range(Hq):
                    kvh = j // (Hq // Hkv)
                    sc = torch.stack([Q[t][j] @ K[u][kvh] for u in range(t + 1)]) / math.sqrt(hd)
                    w = torch.exp(sc - sc.max())
                    w = w / w.sum()
                    heads.append(sum(w[u] * Vv[u][kvh] for u in range(t + 1)))
                h = hs[t] + P[p + "attn.wo"] @ torch.cat(heads)
                f = norm(h, P[p + "ffn_norm.weight"])
                up = P[p + "ffn.w_up"] @ f
                if m["ffn"]["activation"] == "swiglu":
                    g = P[p + "ffn.w_gate"] @ f
                    u = g / (1 + torch.exp(-g)) * up
                else:
                    u = 0.5 * up * (1 + torch.erf(up / math.sqrt(2.0)))
                new.append(h + P[p + "ffn.w_down"] @ u)
            hs = new
        w_head = P["embed.weight"] if m["tie_embeddings"] else P["head.weight"]
        for t in range(T):
            out[b, t] = w_head @ norm(hs[t], P["norm.weight"])
    return out


def manual_adamw(P0, tokens, targets, cfg):
    """AdamW written out from the formulas, to confirm torch.optim.AdamW is what we describe."""
    tr = cfg["train"]
    P = {k: v.clone().requires_grad_(True) for k, v in P0.items()}
    m = {k: torch.zeros_like(v) for k, v in P.items()}
    v2 = {k: torch.zeros_like(v) for k, v in P.items()}
    losses = []
    for s in range(tr["steps"]):
        for p in P.values():
            p.grad = None
        loss = loss_fn(forward(P, tokens, cfg), targets)
        loss.backward()
        losses.append(loss.item())
        norm = math.sqrt(sum(float((p.grad ** 2).sum()) for p in P.values()))
        coef = tr["grad_clip"] / (norm + 1e-6)
        lr = lr_at(s, tr)
        t = s + 1
        with torch.no_grad():
            for k, p in P.items():
                g = p.grad * coef if coef < 1 else p.grad
                if decays(k, p):
                    p.mul_(1 - lr * tr["weight_decay"])
                m[k] = tr["beta1"] * m[k] + (1 - tr["beta1"]) * g
                v2[k] = tr["beta2"] * v2[k] + (1 - tr["beta2"]) * g * g
                mhat = m[k] / (1 - tr["beta1"] ** t)
                vhat = v2[k] / (1 - tr["beta2"] ** t)
                p.sub_(lr * mhat / (vhat.sqrt() + tr["eps"]))
    return {k: p.detach() for k, p in P.items()}, losses


def run_checks(key, out, cfg, verbose=True):
    def say(msg):
        if verbose:
            print(f"  [{key}] {msg}")

    P = {k[6:]: torch.from_numpy(v).to(DT) for k, v in out.items() if k.startswith("param.")}
    tokens = torch.from_numpy(out["tokens"]).long()
    targets = torch.from_numpy(out["targets"]).long()
    m = cfg["model"]

    # 1. Batched forward == per-token loops.
    with torch.no_grad():
        ref = naive_forward(P, tokens, cfg)
    d = (ref - torch.from_numpy(out["logits"])).abs().max().item()
    assert d < 1e-12, f"batched vs naive forward differ by {d}"
    say(f"batched forward == per-token loop forward (max |diff| {d:.1e})")

    # 2. Causality: changing a later token leaves earlier logits unchanged.
    with torch.no_grad():
        T = tokens.shape[1]
        t0 = T // 2
        tk = tokens.clone()
        tk[:, t0] = (tk[:, t0] + 1) % m["vocab_size"]
        tk[:, -1] = (tk[:, -1] + 7) % m["vocab_size"]
        l2 = forward(P, tk, cfg)
        base = torch.from_numpy(out["logits"])
        assert torch.equal(l2[:, :t0], base[:, :t0]), "causal mask leaks future tokens"
        assert (l2[:, t0:] - base[:, t0:]).abs().max() > 1e-6, "changing a token changed nothing"
    say(f"causal: logits before position {t0} unchanged when tokens {t0}.. change")

    # 3. Gradient of the whole model against central differences (a few entries per tensor).
    gen = torch.Generator().manual_seed(7)
    worst = 0.0
    with torch.no_grad():
        for name, p in P.items():
            g = torch.from_numpy(out["grad." + name])
            for _ in range(3):
                idx = tuple(int(torch.randint(0, s, (1,), generator=gen)) for s in p.shape)
                # Fourth-order central difference: truncation O(h^4), rounding ~1e-16/h.
                h = 1e-4
                old = p[idx].item()
                lv = []
                for dx in (2 * h, h, -h, -2 * h):
                    p[idx] = old + dx
                    lv.append(loss_fn(forward(P, tokens, cfg), targets).item())
                p[idx] = old
                fd = (-lv[0] + 8 * lv[1] - 8 * lv[2] + lv[3]) / (12 * h)
                err = abs(fd - g[idx].item()) / max(1e-3, abs(fd), abs(g[idx].item()))
                worst = max(worst, err)
    assert worst < 1e-7, f"whole-model gradient vs central differences: rel err {worst}"
    say(f"whole-model gradients match central differences (worst rel err {worst:.1e})")

    # 4. gradcheck of the pieces: rmsnorm, rope+GQA attention, the FFN.
    gen = torch.Generator().manual_seed(11)
    hd, Hq, Hkv = m["head_dim"], m["n_heads"], m["n_kv_heads"]
    B, T = 2, 5
    cos, sin = rope_tables(T, hd, m["rope_theta"])
    x = torch.randn(B, T, 6, generator=gen, dtype=DT, requires_grad=True)
    w = torch.randn(6, generator=gen, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: rmsnorm(x, w, 1e-5), (x, w))
    q = torch.randn(B, T, Hq, hd, generator=gen, dtype=DT, requires_grad=True)
    k = torch.randn(B, T, Hkv, hd, generator=gen, dtype=DT, requires_grad=True)
    v = torch.randn(B, T, Hkv, hd, generator=gen, dtype=DT, requires_grad=True)
    style = m.get("rope_style", "half")
    assert torch.autograd.gradcheck(
        lambda q, k, v: attention(apply_rope(q, cos, sin, style), apply_rope(k, cos, sin, style),
                                  v, Hq, Hkv, hd), (q, k, v))
    f = torch.randn(B, T, 4, generator=gen, dtype=DT, requires_grad=True)
    wg, wu = (torch.randn(5, 4, generator=gen, dtype=DT, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda f, a, b: F.silu(f @ a.T) * (f @ b.T), (f, wg, wu))
    assert torch.autograd.gradcheck(lambda f, a: F.gelu(f @ a.T), (f, wu))
    say("gradcheck passes for rmsnorm, rope+GQA attention, swiglu, gelu")

    # 5. RoPE is a rotation: it preserves each head's norm, and q.k depends only on t - s.
    with torch.no_grad():
        xr = torch.randn(1, T, 1, hd, generator=gen, dtype=DT)
        assert torch.allclose(apply_rope(xr, cos, sin, style).norm(dim=-1), xr.norm(dim=-1))
        a1 = torch.randn(hd, generator=gen, dtype=DT)
        b1 = torch.randn(hd, generator=gen, dtype=DT)
        qa = apply_rope(a1.expand(1, T, 1, hd), cos, sin, style)[0, :, 0]
        kb = apply_rope(b1.expand(1, T, 1, hd), cos, sin, style)[0, :, 0]
        assert abs(qa[3] @ kb[1] - qa[4] @ kb[2]) < 1e-12
    say("RoPE preserves norms and is relative")

    # 6. torch.optim.AdamW + clip_grad_norm_ == the written-out formulas.
    final, losses = manual_adamw(P, tokens, targets, cfg)
    dl = np.abs(np.array(losses) - out["losses"]).max()
    dp = max((final[k] - torch.from_numpy(out["final." + k])).abs().max().item() for k in final)
    assert dl < 1e-12 and dp < 1e-12, f"manual AdamW differs: losses {dl}, params {dp}"
    say(f"torch AdamW == manual AdamW (losses {dl:.1e}, params {dp:.1e})")

    # 7. The loss goes down on the repeated batch; clipping is active at step 0.
    assert out["losses"][-1] < out["losses"][0]
    assert out["grad_norms"][0] > cfg["train"]["grad_clip"], "want clipping active at step 0"
    say("loss decreases; clipping active at step 0")


def main():
    args = parse_case_args(__doc__, sorted(FIXTURES))
    torch.set_num_threads(1)  # keeps the float64 sums in one fixed order
    for key in args.cases:
        out, meta, cfg = make_fixture(key)
        if not args.no_check:
            run_checks(key, out, cfg)
        tr = cfg["train"]
        clipped = [s for s, g in enumerate(out["grad_norms"]) if g > tr["grad_clip"]]
        print(f"fixture {key}: loss {out['loss']:.10f}")
        print(f"  losses     {' '.join(f'{x:.6f}' for x in out['losses'])}")
        print(f"  grad_norms {' '.join(f'{x:.4f}' for x in out['grad_norms'])}")
        print(f"  lrs        {' '.join(f'{x:.6g}' for x in out['lrs'])}")
        print(f"  clipping active at steps {clipped}")
        if args.check:
            continue
        path = write_fixture(args.out_dir, f"tiny_model_{key}.safetensors", out, meta)
        print(f"  wrote {os.path.relpath(path, REPO)} ({os.path.getsize(path)} bytes, "
              f"{len(out)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
