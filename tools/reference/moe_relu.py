"""ReMoE's layer in PyTorch float64: writes tests/fixtures/moe_relu.safetensors.

ReMoE (Wang, Zhu, Chen, arXiv 2412.14711, §3.2-3.4), one layer of it:
  R(x) = ReLU(x·W_rᵀ)                                   gates, no softmax, no top-k
  y    = Σ_e R_e(x)·E_e(x)                              every expert with R_e > 0 (dropless)
  L_reg,lb = c · (1/N)·Σ_n Σ_e f_e·R_e(x_n),  f_e = E/(k·N)·Σ_n 1{R_e(x_n) > 0}
with f_e a constant (detached: the paper's load-balancing weight is not differentiated) and
c = λ_i/L the layer's coefficient (here a fixed 0.37, large enough that its gradient matters).
The fixture holds inputs and parameters (float32 values), y, L_reg,lb, the unscaled L1 sum, the
active count, and the float64 gradients of  Σ y·R_up + L_reg,lb  for x and every parameter.

The draw is rejected unless every router logit is at least LOGIT_GAP away from 0, so ReLU's
kink is nowhere near and finite differences (tests/ffn/test_moe_relu.cpp) are exact to O(h²).
The layer is also computed token by token (loop_layer) as an independent check of the batched
form, and the gradients are checked by torch.autograd.gradcheck.

Usage: /usr/bin/python3 tools/reference/moe_relu.py [--check] [--out-dir DIR]
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
from reference.common import max_diff, parse_case_args, to64, write_fixture  # noqa: E402

DT = torch.float64
GENERATOR = "tools/reference/moe_relu.py"
C, H = 16, 8
LOGIT_GAP = 0.05
MAX_DRAWS = 2000
CASES = {
    # E = 6, target k = 2: with ROUTER_STD 0.5 about half the gates are positive (as at the start
    # of training), so tokens have different numbers of experts (some none).
    "relu": dict(seed=2001, E=6, k=2, B=2, T=5, coef=0.37),
}


def draw(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    E, N = cfg["E"], cfg["B"] * cfg["T"]

    def randn(*shape):
        return torch.randn(shape, generator=g, dtype=DT)

    P = {"router.weight": 0.5 * randn(E, C),
         "experts.w_gate": randn(E, H, C) / math.sqrt(C),
         "experts.w_up": randn(E, H, C) / math.sqrt(C),
         "experts.w_down": randn(E, C, H) / math.sqrt(H)}
    inp = {"x": randn(N, C), "R": randn(N, C)}
    return ({k: v.to(torch.float32) for k, v in inp.items()},
            {k: v.to(torch.float32) for k, v in P.items()})


def experts(P, x):
    u = F.silu(torch.einsum("nc,ehc->enh", x, P["experts.w_gate"]))
    u = u * torch.einsum("nc,ehc->enh", x, P["experts.w_up"])
    return torch.einsum("enh,ech->enc", u, P["experts.w_down"])  # [E, N, C]


def layer(P, x, cfg):
    E, k = cfg["E"], cfg["k"]
    N = x.shape[0]
    logits = x @ P["router.weight"].T
    gates = torch.relu(logits)  # [N, E]
    y = torch.einsum("ne,enc->nc", gates, experts(P, x))
    active = (gates > 0).to(DT)
    f = (E / (k * N)) * active.sum(0).detach()  # not differentiated
    l1 = (f * gates).sum() / N
    return dict(y=y, logits=logits, l1=l1, reg=cfg["coef"] * l1, active=active.sum())


def loop_layer(P, x, cfg):
    """The same, one token and one expert at a time (plain Python sums over floats)."""
    E, k = cfg["E"], cfg["k"]
    N = x.shape[0]
    W = P["router.weight"].detach()
    counts = [0] * E
    gates = [[max(0.0, float(W[e] @ x[n])) for e in range(E)] for n in range(N)]
    for n in range(N):
        for e in range(E):
            counts[e] += gates[n][e] > 0
    ys = []
    for n in range(N):
        yn = torch.zeros(C, dtype=DT)
        for e in range(E):
            if gates[n][e] > 0:
                gu = F.silu(P["experts.w_gate"][e].detach() @ x[n]) * (
                    P["experts.w_up"][e].detach() @ x[n])
                yn = yn + gates[n][e] * (P["experts.w_down"][e].detach() @ gu)
        ys.append(yn)
    l1 = sum(E * counts[e] / (k * N) * gates[n][e] for n in range(N) for e in range(E)) / N
    return torch.stack(ys), l1


def run(P32, inp32, cfg):
    P = {k: v.clone().requires_grad_(True) for k, v in to64(P32).items()}
    inp = to64(inp32)
    x = inp["x"].clone().requires_grad_(True)
    o = layer(P, x, cfg)
    loss = (o["y"] * inp["R"]).sum() + o["reg"]
    loss.backward()
    grads = {"x": x.grad.detach().clone()}
    grads.update({k: p.grad.detach().clone() for k, p in P.items()})
    return o, loss.detach(), grads


def checks(P32, inp32, cfg, o):
    P, inp = to64(P32), to64(inp32)
    y_loop, l1_loop = loop_layer(P, inp["x"], cfg)
    d = max(max_diff(y_loop, o["y"].detach()), abs(l1_loop - float(o["l1"])))
    assert d < 1e-12, f"loop layer differs by {d}"
    names = list(P)
    R = inp["R"]

    def fn(x, *ps):
        o2 = layer(dict(zip(names, ps)), x, cfg)
        return (o2["y"] * R).sum() + o2["reg"]

    args = [inp["x"].clone().requires_grad_(True)] + [P[n].clone().requires_grad_(True)
                                                      for n in names]
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-6)
    print(f"  checks: loop layer {d:.1e}, gradcheck ok")


def main():
    args = parse_case_args(__doc__, CASES)
    torch.set_num_threads(1)
    for name in args.cases:
        cfg = dict(CASES[name])
        for attempt in range(MAX_DRAWS):
            seed = cfg["seed"] + 7919 * attempt
            inp32, P32 = draw(cfg, seed)
            logits = to64(inp32)["x"] @ to64(P32)["router.weight"].T
            if logits.abs().min().item() >= LOGIT_GAP:
                break
        else:
            raise RuntimeError(f"{name}: no draw with every |logit| >= {LOGIT_GAP}")
        o, loss, grads = run(P32, inp32, cfg)
        if not args.no_check:
            checks(P32, inp32, cfg, o)
        per_token = (o["logits"] > 0).sum(1).tolist()
        print(f"case {name}: seed {seed}, loss {loss.item():.12f}, L1 {float(o['l1']):.6e}, "
              f"active per token {per_token}")
        if args.check:
            continue
        out = {"x": inp32["x"].numpy(), "R": inp32["R"].numpy()}
        for k, v in P32.items():
            out["param." + k] = v.numpy()
        out["y"] = o["y"].detach().numpy()
        out["aux_loss"] = np.array(float(o["reg"]), np.float64)
        out["l1_loss"] = np.array(float(o["l1"]), np.float64)
        out["active"] = np.array(float(o["active"]), np.float64)
        out["loss"] = np.array(loss.item(), np.float64)
        for k, g in grads.items():
            out["grad." + k] = g.numpy()
        meta = {"layer": json.dumps(dict(d_model=C, d_expert=H, num_experts=cfg["E"],
                                         top_k=cfg["k"], batch=cfg["B"], seq_len=cfg["T"],
                                         relu_l1=cfg["coef"])),
                "generator": GENERATOR, "torch_version": torch.__version__}
        path = write_fixture(args.out_dir, f"moe_{name}.safetensors", out, meta, 150_000)
        print(f"  wrote {os.path.relpath(path, REPO)} ({os.path.getsize(path)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
