#!/usr/bin/python3
"""PyTorch (float64) reference for the routing rules of issue 20 in ONE MoE layer of moe.cpp:
DeepSeek-V3's group-limited routing with the selection bias and the routed scaling factor,
the sequence-wise balance loss, and the bias update.

Writes tests/fixtures/moe_<case>.safetensors (cases in CASES) in the schema of moe_layer.py
(its docstring: x, R, param.*, y, aux_loss, z_loss, loss, grad.*, logits, experts_idx, gates,
dropped, keep_second) plus `bias` (F32 [E], the selection bias, when used) and, with a bias,
`bias_next_sign` / `bias_next_sign_centred` (F64 [E]: the bias after one update from this
forward's loads at rate BIAS_RATE). The metadata "layer" adds n_group, topk_group,
routed_scaling_factor, aux_loss_scope, bias_balance and bias_rate.

Usage (Debian's interpreter: torch 1.13 and numpy):
    /usr/bin/python3 tools/reference/moe_routing.py              # checks, then writes all
    /usr/bin/python3 tools/reference/moe_routing.py --check      # checks only

The rules (float64, from the float32-rounded stored values; moe_layer.py's rules otherwise):
  scores: p = softmax(r) or sigmoid(r). Selection keys: p + bias (bias only selects; the gates
      use p) [DeepSeek-V3 §2.1.2].
  group-limited routing [DeepSeek-V3 inference/model.py Gate; HF modeling_deepseek_v3.py
      DeepseekV3TopkRouter.get_topk_indices]: the E experts form n_group groups of E/n_group
      consecutive experts; group score = the sum of the group's two largest KEYS (bias
      included, as both sources do); the topk_group groups with the largest group scores are
      kept (ties to the lower group); the k largest keys among their experts are selected (the
      other experts are -inf, as in DeepSeek's code; HF fills them with 0.0, which differs only
      when every kept key is negative); slots in decreasing key, ties to the lower expert.
  gates: the selected p, divided by their sum when normalize (HF adds 1e-20 to that sum, which
      changes nothing here), THEN times routed_scaling_factor (both sources scale after the
      normalisation).
  balancing loss, aux_loss_scope:
      micro_batch: alpha * E * sum_e f_e * P_e over the N tokens (moe_layer.py);
      sequence [DeepSeek-V2 eqs. 12-14, DeepSeek-V3 eqs. 17-20]: per sequence b of T tokens
          f_{b,e} = (selections of e in b before capacity) / (T*k)   (gshard: first choices / T)
          P_{b,e} = mean over the T tokens of the balance probability (softmax p; sigmoid:
                    p normalised over the experts per token)
          aux_loss = alpha * E * mean_b sum_e f_{b,e} * P_{b,e};  f is not differentiated.
      global_batch [Qiu et al., arXiv 2501.11873, eqs. 4-6]: the fixture's x is a GLOBAL batch
          of G micro-batches of B sequences (rows [j*B*T, (j+1)*B*T) are micro-batch j);
          LBL_global = alpha * E * sum_e fbar_e * Pbar_e, fbar and Pbar over all G*B*T tokens
          (f not differentiated); z over all tokens too. moe.cpp runs it as G forwards whose
          f_e is fbar (a counting pre-pass) and P_e the micro-batch's own, with the aux and z
          gradients scaled by 1/G: the mean of the G micro-batch losses is eq. 6's form of
          LBL_global, checked equal here. The objective is sum(y*R) + aux + z over the whole
          global batch, so grad.* are the step's summed gradients. Metadata: "batch" = B (one
          micro-batch), "micro_batches" = G.
      Selections count the ACTUAL selection (bias and groups included), as DeepSeek-V2's
      released MoEGate counts topk_idx.
  bias update [DeepSeek-V3 §2.1.2]: load_e = selections of e before capacity over the step;
      b_e += rate * sign(mean_e load_e - load_e) (rate = float32(0.01), as the config field
      holds it); sign_centred then subtracts mean_e b_e.

Inputs are redrawn until every decision has a margin: top-(k+1) keys among the kept groups
and the topk_group-th / (topk_group+1)-th group scores >= 1e-3 apart; and until the case
exercises its rule (some token whose selection differs without the groups, with the max
instead of the top-2 sum as the group score, and without the bias).
"""
import collections
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
sys.path.insert(0, HERE)
from reference.common import max_diff, parse_case_args, to64, write_fixture  # noqa: E402
import moe_layer as ml  # noqa: E402

DT = torch.float64
GENERATOR = "tools/reference/moe_routing.py"
C, H = ml.C, ml.H
GAP = 1e-3
BIAS_RATE = 0.01
BIAS_STD = 0.05

BASE = dict(ml.BASE, n_group=1, topk_group=1, scale=1.0, scope="micro_batch", bias=False)
CASES = {
    "grouped_sigmoid_bias": dict(seed=2001, E=8, k=3, score="sigmoid", n_group=4, topk_group=2,
                                 scale=2.5, bias=True),
    "grouped_softmax": dict(seed=2002, E=8, k=2, n_group=4, topk_group=1, normalize=False,
                            scale=1.5),
    "seq_aux": dict(seed=2003, scope="sequence"),
    "seq_aux_deepseek_v3": dict(seed=2004, E=8, k=2, score="sigmoid", n_group=4, topk_group=2,
                                scale=2.5, bias=True, scope="sequence", beta=0.0),
    "seq_aux_gshard": dict(seed=2005, router="gshard", cf=1.5, beta=0.0, skew=0.8,
                           scope="sequence"),
    # 3 micro-batches of 2 sequences of 3 tokens; alpha large enough for a visible gradient.
    "global_batch": dict(seed=2006, scope="global_batch", G=3, B=6, T=3, alpha=0.2),
}


def case_cfg(name):
    cfg = dict(BASE)
    cfg.update(CASES[name])
    cfg["name"] = name
    return cfg


def layer_json(cfg):
    j = ml.layer_json(cfg)
    j.update(n_group=cfg["n_group"], topk_group=cfg["topk_group"],
             routed_scaling_factor=cfg["scale"], aux_loss_scope=cfg["scope"],
             bias_balance=cfg["bias"], bias_rate=BIAS_RATE)
    if cfg["scope"] == "global_batch":  # cfg's B is the global batch's G*B sequences
        j.update(batch=cfg["B"] // cfg["G"], micro_batches=cfg["G"])
    return j


def balance(counted, q, kk, E, alpha):
    """alpha * E * sum_e f_e * P_e over the given tokens (f not differentiated)."""
    f = torch.bincount(counted.reshape(-1), minlength=E).to(DT) / (counted.shape[0] * kk)
    return alpha * E * (f * q.mean(0)).sum()


def global_batch_eq6(o, cfg):
    """LBL_global in eq. 6's form: the mean over the G micro-batches of alpha*E*sum fbar*P^j."""
    E, G, kk = cfg["E"], cfg["G"], 1 if cfg["router"] == "gshard" else cfg["k"]
    counted = o["experts_idx"][:, :kk].long()
    fbar = torch.bincount(counted.reshape(-1), minlength=E).to(DT) / (counted.numel())
    n = counted.shape[0] // G
    return sum(cfg["alpha"] * E * (fbar * o["q"][j * n:(j + 1) * n].mean(0)).sum()
               for j in range(G)) / G


def micro_batch_mean(o, cfg):
    """What aux_loss_scope micro_batch gives for the same G micro-batches: the mean of each
    micro-batch's own alpha*E*sum f^j*P^j."""
    E, G, kk = cfg["E"], cfg["G"], 1 if cfg["router"] == "gshard" else cfg["k"]
    counted = o["experts_idx"][:, :kk].long()
    n = counted.shape[0] // G
    return sum(balance(counted[j * n:(j + 1) * n], o["q"][j * n:(j + 1) * n], kk, E,
                       cfg["alpha"]) for j in range(G)) / G


def draw(cfg, seed):
    inp, P = ml.draw(cfg, seed)
    if cfg["bias"]:
        g = torch.Generator().manual_seed(seed + 1)
        inp["bias"] = (BIAS_STD * torch.randn(cfg["E"], generator=g, dtype=DT)).float()
    return inp, P


def select(key, cfg, group_rule="top2"):
    """Expert indices [N, k] (slot order) of the keys [N, E] under the group rule."""
    N, E, k, G, kg = key.shape[0], cfg["E"], cfg["k"], cfg["n_group"], cfg["topk_group"]
    key = key.detach()
    if G > 1:
        grouped = key.view(N, G, E // G)
        if group_rule == "top2":
            gs = torch.sort(grouped, dim=2, descending=True).values[:, :, :2].sum(2)
        else:
            gs = grouped.max(2).values
        chosen = torch.sort(-gs, dim=1, stable=True).indices[:, :kg]
        keep = torch.zeros(N, G, dtype=torch.bool).scatter_(1, chosen, True)
        key = key.masked_fill(~keep.repeat_interleave(E // G, dim=1), -math.inf)
    return torch.sort(-key, dim=1, stable=True).indices[:, :k]


def layer(P, inp, cfg):
    x = inp["x"]
    N, E, k, kind = x.shape[0], cfg["E"], cfg["k"], cfg["router"]
    B, T = cfg["B"], cfg["T"]
    r = x @ P["router.weight"].T
    z = cfg["beta"] * (torch.logsumexp(r, dim=1) ** 2).mean()
    p = torch.sigmoid(r) if cfg["score"] == "sigmoid" else torch.softmax(r, dim=1)
    key = p + inp["bias"] if cfg["bias"] else p
    idx = select(key, cfg)
    ps = p.gather(1, idx)
    gates = ps / ps.sum(1, keepdim=True) if (cfg["normalize"] or kind == "gshard") else ps
    gates = gates * cfg["scale"]
    active = torch.ones(N, k, dtype=torch.bool)
    out = {"logits": r.detach()}
    if kind == "gshard":
        keep2 = 2.0 * gates[:, 1].detach() > inp["uniform"]
        active[:, 1] = keep2
        out["keep_second"] = keep2.to(torch.int32)
    cap = ml.capacity(cfg, N)
    if cap is None:
        kept = active
    else:
        fe, fa = idx.T.reshape(-1), active.T.reshape(-1)
        onehot = F.one_hot(fe, E) * fa[:, None].long()
        pos = (torch.cumsum(onehot, 0) * onehot).sum(1)
        kept = (fa & (pos <= cap)).view(k, N).T
    W = torch.zeros(N, E, dtype=DT).scatter_add(1, idx, gates * kept.to(DT))
    q = p / p.sum(1, keepdim=True) if cfg["score"] == "sigmoid" else p
    counted = idx[:, :1] if kind == "gshard" else idx
    kk = 1 if kind == "gshard" else k
    if cfg["scope"] == "sequence":
        cnt = torch.zeros(B, E, dtype=DT).scatter_add_(
            1, counted.reshape(B, -1), torch.ones(B, T * kk, dtype=DT))
        f = cnt / (T * kk)
        aux = cfg["alpha"] * E * (f * q.view(B, T, E).mean(1)).sum(1).mean()
    else:  # micro_batch; global_batch: the same over the whole global batch (eq. 4)
        f = torch.bincount(counted.reshape(-1), minlength=E).to(DT) / (N * kk)
        aux = cfg["alpha"] * E * (f * q.mean(0)).sum()
    y = torch.einsum("ne,enc->nc", W, ml.expert_bank(P, "experts.", x, cfg["activation"]))
    loads = torch.bincount(counted.reshape(-1), minlength=E).to(DT)
    out.update(y=y, aux_loss=aux, z_loss=z, experts_idx=idx.to(torch.int32),
               gates=gates.detach(), dropped=(~kept).to(torch.int32), key=key.detach(),
               loads=loads, q=q)
    return out


def bias_update(bias, loads, rule):
    # The rate is a float32 config field: the update adds float32(BIAS_RATE) exactly.
    rate = float(np.float32(BIAS_RATE))
    b = bias.to(DT) + rate * torch.sign(loads.mean() - loads)
    return b - b.mean() if rule == "sign_centred" else b


def loop_select(key, cfg):
    """The selection again, one token at a time in plain Python (an independent check)."""
    E, k, G, kg = cfg["E"], cfg["k"], cfg["n_group"], cfg["topk_group"]
    Eg = E // G
    out = []
    for row in key.tolist():
        allowed = range(E)
        if G > 1:
            score = [sum(sorted(row[g * Eg:(g + 1) * Eg], reverse=True)[:2]) for g in range(G)]
            groups = sorted(range(G), key=lambda g: (-score[g], g))[:kg]
            allowed = [e for e in range(E) if e // Eg in groups]
        out.append(sorted(allowed, key=lambda e: (-row[e], e))[:k])
    return out


def margins(o, cfg):
    """The smallest gap of any routing decision: the topk_group-th and next group scores, and
    the top k+1 keys among the kept groups' experts (slot order included)."""
    E, G, kg, k = cfg["E"], cfg["n_group"], cfg["topk_group"], cfg["k"]
    gap = math.inf
    for row in o["key"].tolist():
        allowed = list(range(E))
        if G > 1:
            Eg = E // G
            score = [sum(sorted(row[g * Eg:(g + 1) * Eg], reverse=True)[:2]) for g in range(G)]
            order = sorted(range(G), key=lambda g: (-score[g], g))
            if kg < G:
                gap = min(gap, score[order[kg - 1]] - score[order[kg]])
            allowed = [e for e in range(E) if e // Eg in order[:kg]]
        vals = sorted((row[e] for e in allowed), reverse=True)[:k + 1]
        if len(vals) >= 2:
            gap = min(gap, min(vals[i] - vals[i + 1] for i in range(len(vals) - 1)))
    return gap


def acceptable(o, inp, P, cfg):
    gap = margins(o, cfg)
    if cfg["router"] == "gshard":
        gap = min(gap, (2 * o["gates"][:, 1] - inp["uniform"]).abs().min().item())
    if gap < GAP:
        return False, "margin"
    idx = o["experts_idx"].tolist()
    if cfg["n_group"] > 1:
        if select(o["key"], dict(cfg, n_group=1)).tolist() == idx:
            return False, "groups change nothing"
        if select(o["key"], cfg, group_rule="max").tolist() == idx:
            return False, "max group score gives the same"
    if cfg["bias"]:
        p = o["key"] - inp["bias"].to(DT)
        if select(p, cfg).tolist() == idx:
            return False, "bias changes nothing"
        if bool((o["loads"] == o["loads"].mean()).any()):
            return False, "a load equals the mean"
    if cfg["scope"] == "sequence":
        mb = layer(P, inp, dict(cfg, scope="micro_batch"))
        if abs(float(mb["aux_loss"]) - float(o["aux_loss"])) < 1e-6:
            return False, "the micro-batch loss is the same"
    if cfg["scope"] == "global_batch":
        if abs(float(micro_batch_mean(o, cfg)) - float(o["aux_loss"])) < 1e-4:
            return False, "the micro-batch losses' mean is the same"
    if cfg["name"] == "seq_aux_gshard":
        d = o["dropped"]
        if int(d[:, 0].sum()) + int((d[:, 1].bool() & o["keep_second"].bool()).sum()) < 1:
            return False, "no capacity drop"
    return True, ""


def run_layer(P32, inp32, cfg):
    P = {k: v.clone().requires_grad_(True) for k, v in to64(P32).items()}
    inp = to64(inp32)
    inp["x"].requires_grad_(True)
    o = layer(P, inp, cfg)
    loss = ml.objective(o, inp["R"])
    loss.backward()
    grads = {"x": inp["x"].grad.detach().clone()}
    grads.update({k: p.grad.detach().clone() for k, p in P.items()})
    return o, loss.detach(), grads


def make_fixture(name):
    cfg = case_cfg(name)
    rejected = collections.Counter()
    for attempt in range(ml.MAX_DRAWS):
        seed = cfg["seed"] + 7919 * attempt
        inp32, P32 = draw(cfg, seed)
        with torch.no_grad():
            o = layer(to64(P32), to64(inp32), cfg)
        ok, why = acceptable(o, to64(inp32), to64(P32), cfg)
        if ok:
            break
        rejected[why] += 1
    else:
        raise RuntimeError(f"{name}: no acceptable draw in {ml.MAX_DRAWS} seeds")
    cfg["used_seed"] = seed
    if rejected:
        print(f"  [{name}] rejected before seed {seed}: {dict(rejected)}")
    o, loss, grads = run_layer(P32, inp32, cfg)
    out = {"x": inp32["x"].numpy(), "R": inp32["R"].numpy()}
    for k in ("uniform", "bias"):
        if k in inp32:
            out[k] = inp32[k].numpy()
    for k, v in P32.items():
        out["param." + k] = v.numpy()
    out["y"] = o["y"].detach().numpy()
    for k in ("aux_loss", "z_loss"):
        out[k] = np.array(float(o[k]), np.float64)
    out["loss"] = np.array(loss.item(), np.float64)
    for k, g in grads.items():
        out["grad." + k] = g.numpy()
    out["logits"] = o["logits"].numpy()
    for k in ("experts_idx", "gates", "dropped", "keep_second"):
        if k in o:
            out[k] = o[k].numpy()
    if cfg["bias"]:
        for rule in ("sign", "sign_centred"):
            out["bias_next_" + rule] = bias_update(inp32["bias"], o["loads"], rule).numpy()
    meta = {"layer": json.dumps(layer_json(cfg)), "generator": GENERATOR,
            "torch_version": torch.__version__}
    return out, meta, cfg, (inp32, P32), o


def run_checks(name, cfg, raw, o):
    inp32, P32 = raw
    # 1. The batched selection == the per-token loop, and the micro-batch scope with B = 1 is
    #    the sequence scope (one sequence is the whole batch).
    assert o["experts_idx"].tolist() == loop_select(o["key"], cfg), "batched vs loop selection"
    one = dict(cfg, B=1, T=cfg["B"] * cfg["T"])
    a = layer(to64(P32), to64(inp32), dict(one, scope="sequence"))
    b = layer(to64(P32), to64(inp32), dict(one, scope="micro_batch"))
    d = abs(float(a["aux_loss"]) - float(b["aux_loss"]))
    assert d < 1e-15, f"B=1: sequence vs micro_batch aux {d}"
    # 2. The sequence loss is the mean of per-sequence micro-batch losses.
    if cfg["scope"] == "sequence" and cfg["cf"] == 0:
        parts = []
        for bq in range(cfg["B"]):
            rows = slice(bq * cfg["T"], (bq + 1) * cfg["T"])
            sub = dict(to64(inp32), x=to64(inp32)["x"][rows])
            parts.append(float(layer(to64(P32), sub, dict(cfg, B=1, scope="micro_batch"))
                               ["aux_loss"]))
        d = abs(sum(parts) / len(parts) - float(o["aux_loss"]))
        assert d < 1e-15, f"sequence aux vs mean of per-sequence losses: {d}"
    # 2b. Global batch: eq. 4 (over all tokens) equals eq. 6 (the mean over micro-batches of
    #     fbar times each micro-batch's P), the form moe.cpp computes.
    if cfg["scope"] == "global_batch":
        d = abs(float(global_batch_eq6(o, cfg)) - float(o["aux_loss"]))
        assert d < 1e-15, f"global batch: eq. 4 vs eq. 6 {d}"
        d = abs(float(micro_batch_mean(o, cfg)) - float(o["aux_loss"]))
        print(f"  [{name}] micro_batch scope's mean differs from LBL_global by {d:.3e}")
    # 3. Bias update: sign moves every expert by ±rate or 0; centred keeps the mean at 0.
    if cfg["bias"]:
        c = bias_update(inp32["bias"], o["loads"], "sign_centred")
        assert abs(float(c.mean())) < 1e-15
    # 4. gradcheck of y, aux, z w.r.t. x and every parameter (routing margins >= 1e-3).
    P = {k: v.to(DT).clone().requires_grad_(True) for k, v in P32.items()}
    inp = to64(inp32)
    names = list(P)

    def f(xx, *ps):
        oo = layer(dict(zip(names, ps)), dict(inp, x=xx), cfg)
        return oo["y"], oo["aux_loss"], oo["z_loss"]

    xx = inp["x"].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (xx, *[P[k] for k in names]), eps=1e-6, atol=1e-7,
                                    rtol=1e-5)
    print(f"  [{name}] loop selection, B=1 scopes agree, per-sequence mean, gradcheck: ok")


def main():
    args = parse_case_args(__doc__, CASES)
    torch.set_num_threads(1)
    for name in args.cases:
        out, meta, cfg, raw, o = make_fixture(name)
        if not args.no_check:
            run_checks(name, cfg, raw, o)
        print(f"case {name}: seed {cfg['used_seed']}, loss {float(out['loss']):.12f}, "
              f"aux {float(out['aux_loss']):.6e}, margin {margins(o, cfg):.2e}, "
              f"loads {o['loads'].tolist()}")
        if args.check:
            continue
        path = write_fixture(args.out_dir, f"moe_{name}.safetensors", out, meta, 150_000)
        print(f"  wrote {os.path.relpath(path, REPO)} ({os.path.getsize(path)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
