"""The tables of the study's comparisons 5-8 that need more than val bpb per config (used by
tools/study_report.py; standard library only).

  5. expert specialisation by genre: the mutual information between expert choice and Brown
     genre per layer, from "routing_by_group" in moe compare's results (train/routing_groups.h);
  6. ReMoE: mean active experts per token per layer, from the routing metrics;
  7. granularity at three budgets: val bpb per G and budget (dirs gbudget-<F>/ and seed1/), the
     runs written as {"N", "D", "G", "loss"} lines for `moe scaling fit`, and the fit beside the
     paper's coefficients;
  8. load balance over training: max/mean expert load from each run's metrics.jsonl.
"""
import json
import math
import os
import re

DASH = "—"

# Krajewski et al. 2024, Table 1 (and the appendix's E = 16 fit): ../shared/REFERENCE.md.
PAPER_FITS = [
    ("paper, MoE E = 64", {"a": 18.1, "alpha": 0.115, "b": 30.8, "beta": 0.147, "g": 2.1,
                           "gamma": 0.58, "c": 0.47}),
    ("paper, MoE E = 16", {"a": 19.64, "alpha": 0.124, "b": 57.07, "beta": 0.169, "g": 1.18,
                           "gamma": 0.986, "c": 0.472}),
]
G_CONFIGS = ["g1", "g2", "g4", "g8"]


def _num(x):
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _fix(x, d=4):
    x = _num(x)
    return DASH if x is None else f"{x:.{d}f}"


def _table(header, rows, align):
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


# ---- 5. specialisation ------------------------------------------------------------------------

def mi_per_layer(entry):
    """[(layer, mi_bits)] of one run, or [] when it has no routing_by_group."""
    r = entry.get("routing_by_group") if entry else None
    if not isinstance(r, list):
        return []
    return [(m.get("layer"), _num(m.get("mi_bits"))) for m in r if isinstance(m, dict)]


def specialisation_table(rows, seeds):
    """Mutual information I(expert; genre) in bits per layer, mean across seeds."""
    per = {}
    layers = []
    h_group = None
    for name, label in rows:
        acc = {}
        for _, runs in seeds:
            e = runs.get(name)
            for layer, mi in mi_per_layer(e):
                acc.setdefault(layer, []).append(mi)
                if layer not in layers:
                    layers.append(layer)
            for m in (e or {}).get("routing_by_group") or []:
                h_group = h_group or _num(m.get("h_group_bits"))
        per[name] = {layer: _mean(v) for layer, v in acc.items()}
    if not layers:
        return []
    layers.sort()
    header = ["config"] + [f"layer {layer}" for layer in layers] + ["mean"]
    body = []
    for name, label in rows:
        v = per.get(name, {})
        body.append([label or name] + [_fix(v.get(layer)) for layer in layers]
                    + [_fix(_mean([v.get(layer) for layer in layers]))])
    out = ["Expert specialisation by genre: I(expert choice; genre) in bits on the val split, per "
           "layer, mean across seeds (0 = every genre routes alike; H(genre) = "
           f"{_fix(h_group, 2)} bits bounds it):", ""]
    return out + _table(header, body, "l" + "r" * (len(layers) + 1))


# ---- 6. ReMoE ----------------------------------------------------------------------------------

ACTIVE_KEYS = ("active_experts",)  # ReMoE layers (src/ffn/moe/moe_ffn.cpp metrics)


def active_experts_table(rows, seeds):
    """Mean active experts per token per layer (ReMoE's metric), mean across seeds."""
    per, layers = {}, []
    for name, _ in rows:
        acc = {}
        for _, runs in seeds:
            r = (runs.get(name) or {}).get("routing")
            for i, m in enumerate(r if isinstance(r, list) else []):
                if not isinstance(m, dict):
                    continue
                v = next((_num(m.get(k)) for k in ACTIVE_KEYS if k in m), None)
                layer = m.get("layer", i)
                if v is not None:
                    acc.setdefault(layer, []).append(v)
                    if layer not in layers:
                        layers.append(layer)
        per[name] = {layer: _mean(v) for layer, v in acc.items()}
    if not layers:
        return []
    layers.sort()
    header = ["config"] + [f"layer {layer}" for layer in layers] + ["mean"]
    body = [[label or name] + [_fix(per[name].get(layer), 2) for layer in layers]
            + [_fix(_mean([per[name].get(layer) for layer in layers]), 2)]
            for name, label in rows if per.get(name)]
    out = ["Active experts per token on the val split (ReMoE's sparsity; per layer, mean across "
           "seeds):", ""]
    return out + _table(header, body, "l" + "r" * (len(layers) + 1))


# ---- 7. granularity at three budgets -----------------------------------------------------------

def _read_results(path):
    runs = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    j = json.loads(line)
                except ValueError:
                    continue
                if isinstance(j, dict) and isinstance(j.get("name"), str):
                    runs[j["name"]] = j
    return runs


def g_budget_runs(d, seeds):
    """{budget: {config: entry}}: the dirs gbudget-<F>/ and, for the main budget, seed 1."""
    out = {}
    for e in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        m = re.fullmatch(r"gbudget-(.+)", e)
        if m:
            runs = _read_results(os.path.join(d, e, "results.jsonl"))
            if runs:
                out[float(m.group(1))] = runs
    seed1 = dict(seeds).get(1, {})
    main = {n: seed1[n] for n in G_CONFIGS if n in seed1}
    if main:
        f = _mean([_num(e.get("flops")) for e in main.values()])
        if f is not None:
            # The main budget's key: the configured value the runs approximate (within 1%).
            key = next((b for b in out if abs(b - f) / b < 0.05), None)
            out.setdefault(key if key is not None else float(f"{f:.1e}"), {}).update(main)
    return dict(sorted(out.items()))


def _config_json(entry):
    path = entry.get("config")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, TypeError, ValueError):
        return None


def scaling_point(entry):
    """{"name", "N", "D", "G", "loss"} of one run for `moe scaling fit`, or None.
    N = total parameters − embedding (counted once: tied) − routers (docs/SCALING.md's N);
    D = tokens seen; loss = val nats per byte (val_bpb·ln 2)."""
    cfg = _config_json(entry)
    if not cfg:
        return None
    m, f = cfg.get("model", {}), cfg.get("model", {}).get("ffn", {})
    C, L = m.get("d_model"), m.get("n_layers")
    G = f.get("granularity") or 1
    E = f.get("num_experts") or (f.get("expansion", 0) * G)
    V = 256 if cfg.get("tokenizer", {}).get("kind", "byte") == "byte" else None
    total, tokens, bpb = (_num(entry.get(k)) for k in ("total_params", "tokens", "val_bpb"))
    if None in (C, L, V, total, tokens, bpb) or not E:
        return None
    N = total - V * C - L * E * C
    return {"name": entry["name"], "N": N, "D": tokens, "G": G, "loss": bpb * math.log(2)}


def write_fit_input(d, seeds, path):
    """The section-7 runs as JSON lines for `moe scaling fit --runs`; returns how many."""
    pts = []
    for budget, runs in g_budget_runs(d, seeds).items():
        for n in G_CONFIGS:
            p = scaling_point(runs[n]) if n in runs else None
            if p:
                p["name"] = f"{n}@{budget:.1e}"
                pts.append(p)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for p in pts:
            f.write(json.dumps(p) + "\n")
    os.replace(path + ".tmp", path)
    return len(pts)


def g_budget_table(d, seeds):
    by_budget = g_budget_runs(d, seeds)
    if not by_budget:
        return []
    budgets = list(by_budget)
    header = ["G"] + [f"val bpb at {b:.1e}" for b in budgets]
    best = {b: min((r for r in by_budget[b].values() if _num(r.get("val_bpb")) is not None),
                   key=lambda r: r["val_bpb"], default=None) for b in budgets}
    body = []
    for n in G_CONFIGS:
        row = [n[1:]]
        for b in budgets:
            e = by_budget[b].get(n)
            v = _fix(e.get("val_bpb")) if e else DASH
            if e and best[b] is e:
                v = f"**{v}**"
            row.append(v)
        body.append(row)
    tokens = ["tokens (G = 1)"] + [
        f"{by_budget[b]['g1']['tokens'] / 1e6:.2f}M" if "g1" in by_budget[b] else DASH
        for b in budgets]
    out = ["Val bpb of G = 1, 2, 4, 8 (E = 8, k_base = 1; seed 1) at each training-FLOP budget; "
           "bold: the best G at that budget.", ""]
    return out + _table(header, body + [tokens], "l" + "r" * len(budgets))


def fit_table(fit_path):
    """The fitted law (moe scaling fit --json) beside the paper's coefficients."""
    try:
        with open(fit_path, encoding="utf-8") as f:
            fit = json.load(f)
    except (OSError, ValueError):
        return []
    keys = ["a", "alpha", "b", "beta", "g", "gamma", "c"]
    names = {"alpha": "α", "beta": "β", "gamma": "γ"}
    body = [["this study (Brown bytes, nats/byte)"] + [_fix(fit.get(k), 3) for k in keys]]
    body += [[label] + [_fix(v.get(k), 3) for k in keys] for label, v in PAPER_FITS]
    out = ["Fit of L(N, D, G) = c + (g/G^γ + a)/N^α + b/D^β to these runs (`moe scaling fit`), "
           "beside Krajewski et al.'s (C4, GPT-2 tokens: only the exponents are comparable):", ""]
    out += _table(["fit"] + [names.get(k, k) for k in keys], body, "l" + "r" * len(keys))
    extra = [f"{k} = {_fix(fit.get(k), 0 if k in ('runs', 'heldout_runs') else 4)}"
             for k in ("rmse", "heldout_rmse", "runs", "heldout_runs") if fit.get(k) is not None]
    if extra:
        out += ["", "Fit quality: " + ", ".join(extra) + "."]
    return out


# ---- 8. load over training ---------------------------------------------------------------------

def load_curve(metrics_path):
    """[(step, max/mean load averaged over the MoE layers)] of a run's training lines."""
    out = []
    try:
        with open(metrics_path, encoding="utf-8") as f:
            for line in f:
                try:
                    j = json.loads(line)
                except ValueError:
                    continue
                layers = j.get("moe")
                if isinstance(layers, list) and "step" in j:
                    v = _mean([_num(m.get("max_over_mean_load")) for m in layers
                               if isinstance(m, dict)])
                    if v is not None:
                        out.append((j["step"], v))
    except OSError:
        pass
    return out


def load_table(d, rows, seeds):
    header = ["config", "max/mean load, mean over training", "first 10% of steps",
              "last 10% of steps", "val (end)"]
    body = []
    for name, label in rows:
        whole, first, last, val = [], [], [], []
        for s, runs in seeds:
            curve = load_curve(os.path.join(d, f"seed{s}", name, "metrics.jsonl"))
            if curve:
                n = max(1, len(curve) // 10)
                whole.append(_mean([v for _, v in curve]))
                first.append(_mean([v for _, v in curve[:n]]))
                last.append(_mean([v for _, v in curve[-n:]]))
            r = (runs.get(name) or {}).get("routing")
            if isinstance(r, list):
                val.append(_mean([_num(m.get("max_over_mean_load")) for m in r
                                  if isinstance(m, dict)]))
        if whole or val:
            body.append([label or name] + [_fix(_mean(x), 2) for x in (whole, first, last, val)])
    if not body:
        return []
    out = ["Max/mean expert load (1 = perfect balance) over training, averaged over layers, "
           "logged steps and seeds:", ""]
    return out + _table(header, body, "lrrrr")
