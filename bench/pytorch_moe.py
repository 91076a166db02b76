#!/usr/bin/python3
"""PyTorch (1.13, CPU) baselines for `moe bench moe`: one MoE layer, forward + backward.

The step `moe bench moe` times (src/cli/bench/bench_moe.cpp), written two ways a competent PyTorch
user would write it:

  loop  the Mixtral expert loop of Hugging Face transformers' MixtralSparseMoeBlock: router
        linear, softmax, top-k, renormalise, then for each expert `torch.where(selected == e)`,
        gather its tokens, run its SwiGLU MLP (three nn.Linear, bias=False), scale by the gate and
        `index_add_` into the output.
  bmm   capacity-padded batched experts: the N·k (token, expert) assignments are sorted by expert
        and gathered into an [E, capacity, C] tensor (capacity = the largest expert load of this
        step, so nothing is dropped; the padding rows are zeros), the three expert matmuls are
        torch.bmm over [E, capacity, ·] against weights stored as [E, H, C] / [E, C, H]
        parameters, and the rows are combined back with their gates by `index_add`.

Both: x [N, C] ~ N(0, 1) (its gradient is computed too), router W_r [E, C] ~ U(±1/√C), expert
weights ~ N(0, 0.02²); softmax over E in float32, top-k, gates renormalised to sum 1, dropless;
loss = mean(y²) + α·E·Σ_e f_e·P_e with α = 0.01 (Switch aux loss: f_e = share of the N·k
selections that chose e, P_e = mean router probability of e). A timed step = forward, loss,
loss.backward() (gradients set to None first; no optimizer). One untimed warm-up step, then the
median of --repeats steps, as `moe bench moe` does. gflops = 6·N·k·3·C·H / time, the expert
FLOPs of forward + backward (the router and the aux loss are not counted), the formula of
`moe bench moe`.

--autocast runs the forward and the loss under torch.autocast("cpu", dtype=torch.bfloat16) (the
PyTorch user's bf16 recipe: matmuls in bf16, fp32 weights and gradients), the baseline of
`moe bench moe --precision bf16`.

    /usr/bin/python3 bench/pytorch_moe.py --impl loop|bmm [--d-model 512] [--experts 8]
        [--top-k 2] [--d-expert 1024] [--tokens 4096] [--repeats 5] [--threads 2] [--autocast]
        [--json]
    /usr/bin/python3 bench/pytorch_moe.py --check   # loop, bmm and a dense float64 reference
                                                    # agree (y, loss, all gradients)
    /usr/bin/python3 bench/pytorch_moe.py --gemm-ceiling [shape options]  # the expert matmuls
                                                    # alone, torch.mm per expert, balanced load
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

ALPHA = 0.01  # Switch aux-loss coefficient, as in `moe bench moe`


# ----------------------------------------------------------------------------------------------
# Routing, shared by both layers: router linear, softmax, top-k, renormalise, aux loss.


def route(x, w_router, k, alpha=ALPHA):
    """Returns (gates [N, k], selected [N, k] int64, aux loss, per-expert counts [E])."""
    E = w_router.shape[0]
    N = x.shape[0]
    logits = F.linear(x, w_router)                    # [N, E]
    probs = F.softmax(logits, dim=-1, dtype=torch.float32)
    gates, selected = torch.topk(probs, k, dim=-1)    # [N, k]
    gates = gates / gates.sum(dim=-1, keepdim=True)   # renormalised to sum 1
    counts = torch.bincount(selected.reshape(-1), minlength=E)  # [E], no gradient
    f = counts.to(probs.dtype) / (N * k)
    P = probs.mean(dim=0)
    aux = alpha * E * (f * P).sum()
    return gates, selected, aux, counts


# ----------------------------------------------------------------------------------------------
# The two layers


class SwiGLUExpert(nn.Module):
    """MixtralBlockSparseTop2MLP: w2(silu(w1 x) * w3 x), here w_gate / w_up / w_down."""

    def __init__(self, C, H):
        super().__init__()
        self.w_gate = nn.Linear(C, H, bias=False)
        self.w_up = nn.Linear(C, H, bias=False)
        self.w_down = nn.Linear(H, C, bias=False)

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class LoopMoE(nn.Module):
    """Hugging Face MixtralSparseMoeBlock's expert loop (without its jitter and its bf16 casts)."""

    def __init__(self, C, E, k, H):
        super().__init__()
        self.E, self.k = E, k
        self.router = nn.Linear(C, E, bias=False)
        self.experts = nn.ModuleList(SwiGLUExpert(C, H) for _ in range(E))

    def weights(self):
        """(router, w_gate, w_up, w_down) stacked as [E, C], [E, H, C], [E, H, C], [E, C, H]."""
        st = lambda name: torch.stack([getattr(ex, name).weight for ex in self.experts])
        return self.router.weight, st("w_gate"), st("w_up"), st("w_down")

    @torch.no_grad()
    def load(self, w_router, w_gate, w_up, w_down):
        self.router.weight.copy_(w_router)
        for e, ex in enumerate(self.experts):
            ex.w_gate.weight.copy_(w_gate[e])
            ex.w_up.weight.copy_(w_up[e])
            ex.w_down.weight.copy_(w_down[e])

    def forward(self, x):
        gates, selected, aux, counts = route(x, self.router.weight, self.k)
        gates = gates.to(x.dtype)
        y = torch.zeros_like(x)
        for e in range(self.E):
            idx, slot = torch.where(selected == e)  # tokens that chose e, and in which slot
            if idx.numel() == 0:
                continue
            ye = self.experts[e](x[idx]) * gates[idx, slot, None]
            y.index_add_(0, idx, ye)
        return y, aux, counts


class BmmMoE(nn.Module):
    """Capacity-padded batched experts: dispatch to [E, capacity, C], three torch.bmm, combine."""

    def __init__(self, C, E, k, H):
        super().__init__()
        self.E, self.k = E, k
        self.router = nn.Parameter(torch.empty(E, C))
        self.w_gate = nn.Parameter(torch.empty(E, H, C))
        self.w_up = nn.Parameter(torch.empty(E, H, C))
        self.w_down = nn.Parameter(torch.empty(E, C, H))

    def weights(self):
        return self.router, self.w_gate, self.w_up, self.w_down

    @torch.no_grad()
    def load(self, w_router, w_gate, w_up, w_down):
        for p, w in zip(self.weights(), (w_router, w_gate, w_up, w_down)):
            p.copy_(w)

    def forward(self, x):
        N, C = x.shape
        E, k = self.E, self.k
        gates, selected, aux, counts = route(x, self.router, k)
        # Dispatch: sort the N·k assignments by expert (stable, so tokens keep their order).
        flat = selected.reshape(-1)                                  # [N·k]
        order = torch.argsort(flat, stable=True)
        expert = flat[order]
        token = torch.div(order, k, rounding_mode="floor")           # token of each assignment
        cap = int(counts.max())                                      # dropless capacity
        start = torch.cumsum(counts, 0) - counts                     # first sorted row of e
        row = expert * cap + (torch.arange(N * k) - start[expert])   # row in [E·cap]
        # One gather builds [E, cap, C]: padding rows read a zero row appended to x. (The gathers
        # are index_select, whose backward is an index_add: with x[src] and ye[row] instead, the
        # backward's accumulating index_put runs on one thread in 1.13 and the step takes
        # 10-15 % longer.)
        src = torch.full((E * cap,), N, dtype=torch.long)
        src[row] = token
        x_pad = torch.cat([x, x.new_zeros(1, C)])
        xin = x_pad.index_select(0, src).view(E, cap, C)
        h = F.silu(torch.bmm(xin, self.w_gate.transpose(1, 2))) * \
            torch.bmm(xin, self.w_up.transpose(1, 2))                # [E, cap, H]
        ye = torch.bmm(h, self.w_down.transpose(1, 2)).view(E * cap, C)
        # Combine: the real rows, scaled by their gates, summed into their tokens.
        g = gates.reshape(-1)[order].to(x.dtype)
        y = x.new_zeros(N, C).index_add(0, token, ye.index_select(0, row) * g[:, None])
        return y, aux, counts


IMPLS = {"loop": LoopMoE, "bmm": BmmMoE}


# ----------------------------------------------------------------------------------------------
# Set-up, one step, check


def init_weights(C, E, H, gen, dtype=torch.float32):
    """`moe bench moe`'s distributions (not its values: a different generator)."""
    bound = 1.0 / math.sqrt(C)
    w_router = (torch.rand(E, C, generator=gen, dtype=dtype) * 2 - 1) * bound
    w_gate = torch.randn(E, H, C, generator=gen, dtype=dtype) * 0.02
    w_up = torch.randn(E, H, C, generator=gen, dtype=dtype) * 0.02
    w_down = torch.randn(E, C, H, generator=gen, dtype=dtype) * 0.02
    return w_router, w_gate, w_up, w_down


def make_layer(impl, C, E, k, H, weights):
    layer = IMPLS[impl](C, E, k, H)
    layer.load(*weights)
    return layer


def step(layer, x, autocast=False):
    """Forward, loss = mean(y²) + aux, backward. Returns (y, loss, aux, counts, t_fwd, t_bwd).
    autocast: forward and loss under torch.autocast("cpu", dtype=torch.bfloat16)."""
    for p in layer.parameters():
        p.grad = None
    x.grad = None
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y, aux, counts = layer(x)
        loss = y.float().pow(2).mean() + aux.float()
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    return y, loss, aux, counts, t1 - t0, t2 - t1


def grads(layer, x):
    """Gradients of x and of (router, w_gate, w_up, w_down) in the stacked layouts."""
    if isinstance(layer, LoopMoE):
        def g(lin):
            return lin.weight.grad if lin.weight.grad is not None else torch.zeros_like(lin.weight)
        ex = layer.experts
        gw = [layer.router.weight.grad] + [torch.stack([g(getattr(m, n)) for m in ex])
                                           for n in ("w_gate", "w_up", "w_down")]
    else:
        gw = [p.grad for p in layer.weights()]
    return [x.grad] + gw


def dense_reference(x, w_router, w_gate, w_up, w_down, k):
    """The same step written densely (every expert on every token, weighted by a [N, E] combine
    matrix that is zero off the top-k), in whatever dtype it is given: an independent check."""
    gates, selected, aux, counts = route(x, w_router, k)
    combine = torch.zeros(x.shape[0], w_router.shape[0], dtype=x.dtype)
    combine = combine.scatter(1, selected, gates.to(x.dtype))            # [N, E]
    h = F.silu(torch.einsum("nc,ehc->enh", x, w_gate)) * torch.einsum("nc,ehc->enh", x, w_up)
    ye = torch.einsum("enh,ech->enc", h, w_down)                          # [E, N, C]
    y = torch.einsum("ne,enc->nc", combine, ye)
    return y, aux, counts


def check(args):
    """Both layers on small shapes, same weights and input: same y, loss and gradients."""
    names = ["y", "loss", "dx", "d_router", "d_w_gate", "d_w_up", "d_w_down"]
    ok = True
    # (N, C, E, k, H): a Mixtral-like shape and a fine-grained one; experts' init scaled up so the
    # router gradient through the gates is not negligible next to the aux-loss one.
    for N, C, E, k, H in [(256, 64, 8, 2, 96), (256, 64, 16, 4, 32)]:
        gen = torch.Generator().manual_seed(7)
        w = list(init_weights(C, E, H, gen))
        w[1:] = [t * 10 for t in w[1:]]
        x0 = torch.randn(N, C, generator=gen)
        out = {}
        ref_w = [t.double().requires_grad_(True) for t in w]
        x = x0.double().requires_grad_(True)
        y, aux, _ = dense_reference(x, *ref_w, k)
        loss = y.pow(2).mean() + aux
        loss.backward()
        out["dense float64"] = [t.float() for t in [y.detach(), loss.detach(), x.grad] +
                                [t.grad for t in ref_w]]
        for impl in IMPLS:
            layer = make_layer(impl, C, E, k, H, w)
            x = x0.clone().requires_grad_(True)
            y, loss, aux, counts, _, _ = step(layer, x)
            out[impl] = [y.detach(), loss.detach()] + grads(layer, x)
        load = float(counts.max()) / (N * k / E)
        print(f"check N={N} C={C} E={E} k={k} H={H} (max/mean load {load:.2f}, aux "
              f"{float(aux):.4f}): largest of max|a - b| / max|b| over y, loss and the gradients "
              f"of x, router, w_gate, w_up, w_down:")
        for a_name, b_name in [("loop", "bmm"), ("loop", "dense float64"), ("bmm", "dense float64")]:
            worst = 0.0
            for name, a, b in zip(names, out[a_name], out[b_name]):
                rel = float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
                worst = max(worst, rel)
                if not rel <= 1e-4:
                    print(f"  MISMATCH {name}: {a_name} vs {b_name}: {rel:.2e}")
            ok = ok and worst <= 1e-4
            print(f"  {a_name} vs {b_name}: {worst:.1e} {'ok' if worst <= 1e-4 else 'FAIL'}")
    return ok


def gemm_ceiling(C, E, k, H, N, repeats, gen):
    """The nine expert matmuls of a step alone, as torch.mm calls (OpenBLAS) on each expert's
    share of a perfectly balanced load, N·k/E rows: forward x·W_gᵀ, x·W_uᵀ, h·W_dᵀ; backward
    dy·W_d, dyᵀ·h, dg·W_g, du·W_u, dgᵀ·x, duᵀ·x. No routing, gathers or elementwise work: what
    this BLAS does on these shapes, the ceiling of a layer made of per-expert BLAS calls.
    Returns the median ms of one such step over `repeats` (after one warm-up)."""
    n = max(1, N * k // E)
    x, dy = torch.randn(n, C, generator=gen), torch.randn(n, C, generator=gen)
    h, dg = torch.randn(n, H, generator=gen), torch.randn(n, H, generator=gen)
    wg, wd = torch.randn(H, C, generator=gen), torch.randn(C, H, generator=gen)
    ops = [lambda: x @ wg.t(), lambda: x @ wg.t(), lambda: h @ wd.t(),
           lambda: dy @ wd, lambda: dy.t() @ h, lambda: dg @ wg, lambda: dg @ wg,
           lambda: dg.t() @ x, lambda: dg.t() @ x]
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        for _ in range(E):
            for op in ops:
                op()
        if i > 0:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--impl", choices=sorted(IMPLS), help="which PyTorch layer to time")
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--d-expert", type=int, default=1024)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5, help="timed steps (median)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--check", action="store_true",
                    help="check on small shapes that loop and bmm compute the same step, and exit")
    ap.add_argument("--gemm-ceiling", action="store_true",
                    help="time only the nine expert matmuls per expert (torch.mm, balanced load)")
    ap.add_argument("--autocast", action="store_true",
                    help='forward under torch.autocast("cpu", dtype=torch.bfloat16)')
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.check:
        sys.exit(0 if check(args) else 1)
    C, E, k, H, N = args.d_model, args.experts, args.top_k, args.d_expert, args.tokens
    if min(C, E, k, H, N, args.repeats, args.threads) < 1 or args.warmup < 0 or k > E:
        ap.error("sizes, --repeats and --threads must be >= 1, --top-k <= --experts")
    if args.gemm_ceiling:
        ms = gemm_ceiling(C, E, k, H, N, args.repeats, torch.Generator().manual_seed(args.seed))
        gflops = 6.0 * (N * k // E) * E * 3.0 * C * H / (ms / 1e3) / 1e9
        res = {"ms_per_step": ms, "gflops": gflops, "rows_per_expert": N * k // E,
               "threads": torch.get_num_threads()}
        print(json.dumps(res) if args.json else
              f"expert matmuls alone (torch.mm, {N * k // E} rows per expert) C={C} E={E} k={k} "
              f"H={H}: {ms:.1f} ms/step, {gflops:.1f} GFLOP/s")
        return
    if args.impl is None:
        ap.error("--impl loop|bmm is required (or --check, --gemm-ceiling)")

    gen = torch.Generator().manual_seed(args.seed)
    layer = make_layer(args.impl, C, E, k, H, init_weights(C, E, H, gen))
    x = torch.randn(N, C, generator=gen).requires_grad_(True)

    times, fwd, bwd = [], [], []
    for i in range(args.warmup + args.repeats):
        t0 = time.perf_counter()
        y, loss, aux, counts, tf, tb = step(layer, x, args.autocast)
        t = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(t)
            fwd.append(tf)
            bwd.append(tb)
    ms = statistics.median(times) * 1e3
    gflops = 6.0 * N * k * 3.0 * C * H / (ms / 1e3) / 1e9
    load = float(counts.max()) / (N * k / E)
    res = {"impl": args.impl, "ms_per_step": ms, "tokens_per_s": N / (ms / 1e3),
           "gflops": gflops, "max_over_mean_load": load, "aux_loss": float(aux),
           "loss": float(loss), "threads": torch.get_num_threads(),
           "forward_ms": statistics.median(fwd) * 1e3,
           "backward_ms": statistics.median(bwd) * 1e3,
           "torch": torch.__version__, "blas_core": blas_core()[0],
           "precision": "autocast-bf16" if args.autocast else "fp32"}
    if args.json:
        print(json.dumps(res))
    else:
        print(f"pytorch {args.impl}{' autocast-bf16' if args.autocast else ''} moe layer C={C} E={E} k={k} H={H} tokens={N}: {ms:.1f} "
              f"ms/step (forward {res['forward_ms']:.1f}, backward {res['backward_ms']:.1f}), "
              f"{res['tokens_per_s']:.0f} tokens/s, {gflops:.1f} GFLOP/s expert compute, "
              f"max/mean expert load {load:.2f}, aux {res['aux_loss']:.4f} "
              f"({res['threads']} threads, torch {res['torch']}, OpenBLAS core {res['blas_core']})")


if __name__ == "__main__":
    main()
