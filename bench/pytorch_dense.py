#!/usr/bin/python3
"""PyTorch (1.13, CPU) baseline for `moe bench train --config configs/bench-dense.json`.

The same model, batch and optimizer as moe.cpp's dense transformer, written the way a competent
PyTorch user would: nn.Module / nn.Linear(bias=False), batched attention over [B, H, T, T] with a
causal mask and softmax (1.13 has no scaled_dot_product_attention), hand-written RMSNorm,
RoPE "rotate half", SwiGLU FFN, tied embedding/head, mean cross-entropy, torch.optim.AdamW with
two parameter groups (weight decay on matrices only) and clip_grad_norm_.

Timed step = zero_grad(set_to_none=True), forward, loss.backward(), clip_grad_norm_, opt.step().
Warm-up steps are not timed; the median of the timed steps is reported.

--autocast runs the forward (and so the backward of its products) under
torch.autocast("cpu", dtype=torch.bfloat16): PyTorch's bf16 mixed precision, the baseline of
moe.cpp's train.precision = bf16 (fp32 master weights, AdamW and loss as in moe.cpp).

    /usr/bin/python3 bench/pytorch_dense.py [--steps 10] [--warmup 2] [--threads 2] [--json]
                                            [--breakdown] [--autocast]
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_blas import blas_core  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------
# Configuration: read the same JSON file moe.cpp reads, with moe.cpp's defaults
# (include/moe/model/config.h) for the fields it leaves out.


def load_config(path):
    with open(path) as f:
        j = json.load(f)
    m, t = j.get("model", {}), j.get("train", {})
    ffn = m.get("ffn", {})
    if ffn.get("kind", "dense") != "dense" or ffn.get("activation", "swiglu") != "swiglu":
        sys.exit(f"{path}: this baseline implements only the dense SwiGLU FFN")
    if m.get("qk_norm", False) not in (False, "none") or \
            m.get("n_kv_heads", 0) not in (0, m.get("n_heads", 4)):
        sys.exit(f"{path}: this baseline implements neither QK-norm nor grouped-query attention")
    if m.get("qkv_bias", False) or m.get("rope_style", "half") != "half":
        sys.exit(f"{path}: this baseline implements neither q/k/v biases nor interleaved RoPE")
    if not m.get("tie_embeddings", True):
        sys.exit(f"{path}: this baseline implements only tied embeddings")
    C = m.get("d_model", 128)
    H = m.get("n_heads", 4)
    d_ff = ffn.get("d_ff", 0) or (8 * C // 3 + 63) // 64 * 64  # moe.cpp's SwiGLU auto rule
    vocab = m.get("vocab_size", 256) or 256  # "auto" = byte tokenizer
    return dict(
        vocab=vocab, C=C, n_layers=m.get("n_layers", 4), n_heads=H,
        head_dim=m.get("head_dim", 0) or C // H, max_seq=m.get("max_seq_len", 256),
        rope_theta=m.get("rope_theta", 10000.0), norm_eps=m.get("norm_eps", 1e-5),
        init_std=m.get("init_std", 0.02), d_ff=d_ff,
        batch=t.get("batch_size", 16), seq_len=t.get("seq_len", 128),
        lr=t.get("lr", 1e-3), weight_decay=t.get("weight_decay", 0.1),
        betas=(t.get("beta1", 0.9), t.get("beta2", 0.95)), eps=t.get("eps", 1e-8),
        grad_clip=t.get("grad_clip", 1.0), seed=t.get("seed", 1234),
        min_lr=t.get("min_lr", 1e-4), warmup_steps=t.get("warmup_steps", 100),
        total_steps=t.get("steps", 1000),
    )


def lr_schedule(s, cfg):
    """moe.cpp's schedule (src/nn/adamw.cpp): linear warm-up, then cosine to min_lr. `moe bench
    train` steps through it too, so the two losses stay comparable (not the same: the initial
    weights and tokens come from different random generators)."""
    lr, warm = cfg["lr"], cfg["warmup_steps"]
    if s < warm:
        return lr * (s + 1) / warm
    progress = min(1.0, (s - warm) / max(1, cfg["total_steps"] - warm))
    return cfg["min_lr"] + 0.5 * (lr - cfg["min_lr"]) * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------------------
# Model


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C, H, hd = cfg["C"], cfg["n_heads"], cfg["head_dim"]
        self.H, self.hd = H, hd
        self.wq = nn.Linear(C, H * hd, bias=False)
        self.wk = nn.Linear(C, H * hd, bias=False)
        self.wv = nn.Linear(C, H * hd, bias=False)
        self.wo = nn.Linear(H * hd, C, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        # [B, T, H*hd] -> [B, H, T, hd]
        q = self.wq(x).view(B, T, self.H, self.hd).transpose(1, 2)
        k = self.wk(x).view(B, T, self.H, self.hd).transpose(1, 2)
        v = self.wv(x).view(B, T, self.H, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.hd))
        att = att.masked_fill(mask, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, self.H * self.hd)
        return self.wo(y)


class SwiGLU(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C, d_ff = cfg["C"], cfg["d_ff"]
        self.w_gate = nn.Linear(C, d_ff, bias=False)
        self.w_up = nn.Linear(C, d_ff, bias=False)
        self.w_down = nn.Linear(d_ff, C, bias=False)

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn_norm = RMSNorm(cfg["C"], cfg["norm_eps"])
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg["C"], cfg["norm_eps"])
        self.ffn = SwiGLU(cfg)

    def forward(self, x, cos, sin, mask):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed = nn.Embedding(cfg["vocab"], cfg["C"])
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg["n_layers"]))
        self.norm = RMSNorm(cfg["C"], cfg["norm_eps"])
        # The head is the embedding matrix (tied): logits = x · embedᵀ.
        T, hd = cfg["max_seq"], cfg["head_dim"]
        inv_freq = cfg["rope_theta"] ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]  # [T, hd/2]
        ang = torch.cat((ang, ang), dim=-1)  # rotate-half layout: [T, hd]
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)  # True above the diagonal = masked
        self.register_buffer("mask", mask, persistent=False)
        # moe.cpp's init: N(0, std) for matrices and the embedding, std/sqrt(2L) for the
        # projections into the residual stream, ones for the norms.
        std = cfg["init_std"]
        std_out = std / math.sqrt(2 * cfg["n_layers"])
        for name, p in self.named_parameters():
            if p.dim() == 2:
                is_out = name.endswith("wo.weight") or name.endswith("w_down.weight")
                nn.init.normal_(p, 0.0, std_out if is_out else std)

    def forward(self, idx, targets):
        B, T = idx.shape
        cos, sin, mask = self.cos[:T], self.sin[:T], self.mask[:T, :T]
        x = self.embed(idx)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        logits = F.linear(self.norm(x), self.embed.weight)
        return F.cross_entropy(logits.view(B * T, -1), targets.view(B * T))


def make_optimizer(model, cfg, foreach):
    # Weight decay on the matrices of the blocks only: not on norms, not on the (tied) embedding.
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and not n.startswith("embed")]
    ids = {id(p) for p in decay}
    no_decay = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": decay, "weight_decay": cfg["weight_decay"]},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg["lr"], betas=cfg["betas"], eps=cfg["eps"],
                             foreach=foreach)


# ----------------------------------------------------------------------------------------------
# Reporting helpers


def moe_params(moe, config):
    try:
        out = subprocess.run([moe, "params", "--config", config, "--json"], check=True,
                             capture_output=True, text=True).stdout
        return json.loads(out)["total_params"]
    except (OSError, subprocess.CalledProcessError, ValueError, KeyError) as e:
        print(f"note: could not get moe's parameter count from {moe}: {e}", file=sys.stderr)
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=os.path.join(REPO, "configs/bench-dense.json"))
    ap.add_argument("--moe", default=os.path.join(REPO, "build/moe"),
                    help="moe binary, for the parameter-count check")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--foreach", choices=["on", "off"], default="on",
                    help="AdamW foreach (multi-tensor) implementation; 1.13 has no fused AdamW")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time forward, backward and clip+AdamW separately")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--autocast", action="store_true",
                    help='forward under torch.autocast("cpu", dtype=torch.bfloat16)')
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.threads < 1:
        ap.error("need --steps >= 1, --warmup >= 0, --threads >= 1")

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    torch.manual_seed(cfg["seed"])
    B, T, V = cfg["batch"], cfg["seq_len"], cfg["vocab"]
    model = Transformer(cfg)
    opt = make_optimizer(model, cfg, args.foreach == "on")
    x = torch.randint(0, V, (B, T))
    y = torch.randint(0, V, (B, T))

    n_params = sum(p.numel() for p in model.parameters())
    n_moe = moe_params(args.moe, args.config)
    core, blas_lib = blas_core()
    info = (f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"OpenBLAS core {core} (OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')})")
    match = n_moe is not None and n_moe == n_params
    params_line = (f"parameters: pytorch {n_params}, moe {n_moe if n_moe is not None else '?'}"
                   f" ({'match' if match else 'MISMATCH' if n_moe is not None else 'unchecked'})")
    log = sys.stderr if args.json else sys.stdout
    print(info, file=log)
    print(params_line, file=log)
    print(f"model: C={cfg['C']} L={cfg['n_layers']} H={cfg['n_heads']} d_ff={cfg['d_ff']} "
          f"V={V}; batch {B} x {T}{'; autocast bf16' if args.autocast else ''}", file=log)

    times, fwd, bwd, upd = [], [], [], []
    params = list(model.parameters())
    loss = None
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast):
            loss = model(x, y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
        for g in opt.param_groups:
            g["lr"] = lr_schedule(i, cfg)
        opt.step()
        t3 = time.perf_counter()
        if i >= args.warmup:
            times.append(t3 - t0)
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            upd.append(t3 - t2)
    ms = statistics.median(times) * 1e3
    tps = B * T / (ms / 1e3)
    res = {"ms_per_step": ms, "tokens_per_s": tps, "batch": B, "seq_len": T,
           "threads": torch.get_num_threads(), "loss": float(loss), "params": n_params,
           "moe_params": n_moe, "params_match": match, "torch": torch.__version__,
           "blas_core": core, "adamw_foreach": args.foreach == "on",
           "autocast_bf16": args.autocast,
           "forward_ms": statistics.median(fwd) * 1e3,
           "backward_ms": statistics.median(bwd) * 1e3,
           "optimizer_ms": statistics.median(upd) * 1e3}
    if args.json:
        print(json.dumps(res))
    else:
        print(f"train step: {ms:.1f} ms/step, {tps:.0f} tokens/s (batch {B} x {T}, "
              f"{res['threads']} threads), loss {res['loss']:.4f}")
    if args.breakdown:
        print(f"breakdown (medians): forward {res['forward_ms']:.1f} ms, backward "
              f"{res['backward_ms']:.1f} ms, clip+AdamW {res['optimizer_ms']:.1f} ms", file=log)


if __name__ == "__main__":
    main()
