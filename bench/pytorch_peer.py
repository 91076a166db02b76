#!/usr/bin/python3
"""PyTorch (1.13, CPU) baseline for `moe bench peer`: one PEER layer training step.

The step `moe bench peer` times (src/cli/bench/bench_peer.cpp), written the usual PyTorch way:

  x [N, C] ~ N(0, 1); query nn.Linear(C, h·d_key) (bias) then nn.BatchNorm1d(h·d_key) on the
  batch statistics (affine, training mode); each head's query is split in halves, scored against
  the sub-keys keys1 / keys2 [S, d_key/2] (nn.Parameter, shared by the heads; S = √experts);
  exact product-key top-k: torch.topk(k) on each half, the k² candidate sums, torch.topk(k) of
  those, the real ids i·S + j gathered from the per-half indices; per-head softmax over the k
  scores; experts u, v = nn.Embedding(S², C, sparse=True); y = Σ_heads Σ_k g·GELU(u_e·x)·v_e
  (embedding lookups, torch.bmm for the dots, no Python loop over tokens or heads);
  loss = mean(y²); backward; torch.optim.Adam on the dense parameters (query, BatchNorm, keys)
  and torch.optim.SparseAdam on u and v, both lr 1e-3, betas (0.9, 0.95), eps 1e-8 (the
  TrainConfig defaults `moe bench peer` uses), no weight decay, no clipping.

  Initialisation as in moe.cpp: query weight ~ N(0, 1/C), bias 0; BatchNorm γ = 1, β = 0; keys
  ~ N(0, 2/d_key); u ~ N(0, 1/C); v ~ N(0, 0.02²).

A timed step = zero_grad(set_to_none=True), forward, loss.backward(), both optimizer steps.
One untimed warm-up step, then the median of --repeats steps, as `moe bench peer` does.

One difference in the rule, not in the work: SparseAdam's bias correction uses one step count
per table (how many times it was stepped), moe.cpp a step count per row (how many times that
row was retrieved). Both update only the retrieved rows of the weights and moments.

    /usr/bin/python3 bench/pytorch_peer.py [--d-model 256] [--experts 1048576] [--heads 8]
        [--top-k 16] [--d-key 128] [--tokens 2048] [--repeats 5] [--threads 2] [--json]
    /usr/bin/python3 bench/pytorch_peer.py --check   # product-key ids == brute-force top-k
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_blas import blas_core  # noqa: E402


class PeerLayer(nn.Module):
    def __init__(self, C, S, heads, k, d_key):
        super().__init__()
        self.C, self.S, self.h, self.k, self.dk = C, S, heads, k, d_key
        D = heads * d_key
        self.query = nn.Linear(C, D)
        self.norm = nn.BatchNorm1d(D)
        self.keys1 = nn.Parameter(torch.empty(S, d_key // 2))
        self.keys2 = nn.Parameter(torch.empty(S, d_key // 2))
        self.u = nn.Embedding(S * S, C, sparse=True)
        self.v = nn.Embedding(S * S, C, sparse=True)
        with torch.no_grad():
            nn.init.normal_(self.query.weight, 0.0, 1.0 / math.sqrt(C))
            nn.init.zeros_(self.query.bias)
            ks = math.sqrt(2.0 / d_key)
            nn.init.normal_(self.keys1, 0.0, ks)
            nn.init.normal_(self.keys2, 0.0, ks)
            nn.init.normal_(self.u.weight, 0.0, 1.0 / math.sqrt(C))
            nn.init.normal_(self.v.weight, 0.0, 0.02)

    def retrieve(self, x):
        """Exact product-key top-k. Returns (scores [N, h, k], real expert ids [N, h, k])."""
        N, h, k, half = x.shape[0], self.h, self.k, self.dk // 2
        q = self.norm(self.query(x)).view(N, h, 2, half)
        s1 = torch.matmul(q[:, :, 0], self.keys1.t())   # [N, h, S]
        s2 = torch.matmul(q[:, :, 1], self.keys2.t())   # [N, h, S]
        v1, i1 = torch.topk(s1, k, dim=-1)               # [N, h, k]
        v2, i2 = torch.topk(s2, k, dim=-1)
        cand = (v1.unsqueeze(-1) + v2.unsqueeze(-2)).view(N, h, k * k)  # [N, h, k²]
        scores, pos = torch.topk(cand, k, dim=-1)        # [N, h, k]
        ids = torch.gather(i1, -1, pos // k) * self.S + torch.gather(i2, -1, pos % k)
        return scores, ids

    def forward(self, x):
        N = x.shape[0]
        scores, ids = self.retrieve(x)
        g = F.softmax(scores, dim=-1).view(N, self.h * self.k)       # per-head softmax
        flat = ids.view(N, self.h * self.k)
        ue = self.u(flat)                                             # [N, h·k, C]
        ve = self.v(flat)                                             # [N, h·k, C]
        a = torch.bmm(ue, x.unsqueeze(-1)).squeeze(-1)                # [N, h·k]
        w = g * F.gelu(a)
        y = torch.bmm(w.unsqueeze(1), ve).squeeze(1)                  # [N, C]
        return y, ids


def make_optimizers(layer, lr=1e-3, betas=(0.9, 0.95), eps=1e-8):
    dense = [p for n, p in layer.named_parameters() if not n.startswith(("u.", "v."))]
    return (torch.optim.Adam(dense, lr=lr, betas=betas, eps=eps),
            torch.optim.SparseAdam([layer.u.weight, layer.v.weight], lr=lr, betas=betas, eps=eps))


def step(layer, opts, x):
    for o in opts:
        o.zero_grad(set_to_none=True)
    y, ids = layer(x)
    loss = y.pow(2).mean()
    loss.backward()
    for o in opts:
        o.step()
    return ids


def bench(args):
    S = math.isqrt(args.experts)
    if S * S != args.experts:
        sys.exit(f"--experts {args.experts}: expected a perfect square")
    if args.top_k > S or args.d_key % 2:
        sys.exit("--top-k must be <= sqrt(experts) and --d-key even")
    torch.manual_seed(args.seed)
    layer = PeerLayer(args.d_model, S, args.heads, args.top_k, args.d_key)
    opts = make_optimizers(layer)
    x = torch.randn(args.tokens, args.d_model)
    times = []
    ids = None
    for it in range(args.repeats + 1):
        t0 = time.perf_counter()
        ids = step(layer, opts, x)
        if it > 0:
            times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    return {"ms_per_step": ms, "tokens_per_s": args.tokens / (ms / 1e3),
            "experts": args.experts, "unique_rows_per_step": int(torch.unique(ids).numel()),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "blas_core": blas_core()[0], "runs_ms": [t * 1e3 for t in times]}


def check():
    """On small shapes: the product-key ids and scores equal a brute-force top-k over all S²
    keys, and y equals a float64 evaluation from those ids."""
    torch.manual_seed(3)
    ok = True
    for (C, S, h, k, dk, N) in [(16, 8, 2, 4, 8, 64), (32, 16, 4, 16, 16, 128),
                                (8, 32, 3, 5, 6, 100)]:
        layer = PeerLayer(C, S, h, k, dk)
        x = torch.randn(N, C)
        with torch.no_grad():
            scores, ids = layer.retrieve(x)
            q = layer.norm(layer.query(x)).view(N, h, 2, dk // 2)
            s1 = torch.matmul(q[:, :, 0], layer.keys1.t())
            s2 = torch.matmul(q[:, :, 1], layer.keys2.t())
            full = (s1.unsqueeze(-1) + s2.unsqueeze(-2)).reshape(N, h, S * S)  # id = i·S + j
            bscores, bids = torch.topk(full, k, dim=-1)
            same_ids = torch.equal(ids.sort(-1).values, bids.sort(-1).values)
            sdiff = (scores - bscores).abs().max().item()
            # y from the ids, in float64, against the layer's forward.
            y, _ = layer(x)
            g = F.softmax(scores.double(), -1)
            ue = layer.u.weight.double()[ids]   # [N, h, k, C]
            ve = layer.v.weight.double()[ids]
            a = torch.einsum("nhkc,nc->nhk", ue, x.double())
            yref = torch.einsum("nhk,nhkc->nc", g * F.gelu(a), ve)
            ydiff = ((y.double() - yref).abs().max() / yref.abs().max()).item()
        good = same_ids and sdiff < 1e-5 and ydiff < 1e-5
        ok &= good
        print(f"check C={C} S={S} (experts {S * S}) h={h} k={k} d_key={dk} tokens={N}: "
              f"ids {'equal' if same_ids else 'DIFFER'} to brute-force top-k over all S² keys, "
              f"max |score diff| {sdiff:.2e}, y rel diff vs float64 {ydiff:.2e}: "
              f"{'ok' if good else 'FAILED'}")
    # Gradients reach u and v as sparse rows and the optimizers run.
    layer = PeerLayer(16, 8, 2, 4, 8)
    opts = make_optimizers(layer)
    u0 = layer.u.weight.detach().clone()
    ids = step(layer, opts, torch.randn(32, 16))
    changed = (layer.u.weight.detach() != u0).any(-1).nonzero().flatten()
    rows_ok = torch.equal(changed, torch.unique(ids))
    ok &= rows_ok
    print(f"check sparse step: rows of u updated == rows retrieved: {'ok' if rows_ok else 'FAILED'}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--experts", type=int, default=1048576, help="S² (a perfect square)")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=16)
    ap.add_argument("--d-key", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5, help="timed steps (median)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--check", action="store_true",
                    help="product-key ids vs brute-force top-k on small shapes, then exit")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.check:
        sys.exit(0 if check() else 1)
    res = bench(args)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"PyTorch PEER C={args.d_model} experts={args.experts} h={args.heads} "
              f"k={args.top_k} d_key={args.d_key} tokens={args.tokens}: "
              f"{res['ms_per_step']:.1f} ms/step, {res['tokens_per_s']:.0f} tokens/s, "
              f"{res['unique_rows_per_step']} distinct rows retrieved "
              f"(torch {res['torch']}, OpenBLAS core {res['blas_core']}, "
              f"{res['threads']} threads)")


if __name__ == "__main__":
    main()
