#!/usr/bin/python3
"""Tables for a `make study` output directory (scripts/study.sh).

  study_report.py [--dir runs/study] [--json]

DIR holds one subdirectory seed<N> per seed, each with the results.jsonl that `moe compare`
writes: one JSON object per config (name, kind, total_params, active_params, tokens, flops,
val_bpb, wall_s, ... and, for models with MoE/PEER layers, "routing": one object per layer).
Routing fields used (see src/ffn/moe/moe_ffn.cpp and src/ffn/peer/peer_ffn.cpp, metrics()):
  MoE layer:  layer, dropped_pct, max_over_mean_load, router_entropy, unused_experts, aux_loss,
              z_loss, tokens_per_expert
  PEER layer: layer, kind = "peer", experts, usage (fraction of experts used), kl
              (KL(z||uniform), nats), effective (exp(-KL)), per_head: [{usage, kl, effective}]

Prints Markdown: one table per comparison of the study, with one val-bpb column per seed, the
mean, the spread (max - min) across seeds, the paired difference against the first row of the
table, the mean wall time and the routing summary (averaged over layers, then over seeds). The
routing numbers are those of the val-split evaluation, so drops are at eval_capacity_factor.
The study may be partial: missing configs/seeds/fields print as "—".
--json prints the aggregated numbers as one JSON object instead.
Standard library only.
"""
import argparse
import json
import math
import os
import re
import sys

import study_sections

DASH = "—"

# (title, [(config name, label)]) in the order of docs/RESULTS.md and scripts/study.sh.
SECTIONS = [
    ("1. Dense vs MoE at equal FLOPs",
     [("dense", None), ("switch", None), ("gshard", None), ("mixtral", None)]),
    ("2. Granularity at fixed expansion (E = 8)",
     [("g1", None), ("g2", None), ("g4", None), ("g8", None)]),
    ("3. PEER vs dense and MoE",
     [("dense", None), ("mixtral", None), ("peer-bn", None), ("peer-nobn", None)]),
    ("4. Capacity factor and the balancing loss",
     [("cap1.0", None), ("cap1.25", None), ("cap2.0", None), ("mixtral", "dropless (mixtral)"),
      ("cap1.25-noaux", None), ("dropless-noaux", None)]),
    ("5. Global-batch vs micro-batch balancing",
     [("scope-micro", "micro_batch"), ("scope-global", "global_batch"),
      ("scope-seq", "sequence")]),
    ("6. ReMoE vs top-k at equal active compute",
     [("mixtral", "top-2 softmax, E = 8 (mixtral)"), ("remoe-e8", None), ("topk-e32", None),
      ("remoe-e32", None)]),
    ("7. Does the optimal G grow with the budget?", None),  # study_sections.g_budget_table
    ("8. Bias balancing (sign, sign-centred) vs the aux loss",
     [("bal-aux", None), ("bal-sign", None), ("bal-centred", None)]),
]


def num(x):
    """x as a finite float, or None (missing, null, NaN, not a number)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def read_results(path):
    """name -> entry of one results.jsonl (the last line of a name wins, as in moe compare)."""
    runs = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                j = json.loads(line)
            except ValueError:
                print(f"study_report: {path}:{i}: not JSON, skipped", file=sys.stderr)
                continue
            if isinstance(j, dict) and isinstance(j.get("name"), str):
                runs[j["name"]] = j
    return runs


def find_seeds(d):
    """[(seed, {name: entry})] for the seed<N> subdirectories of d, by seed number."""
    seeds = []
    for e in os.listdir(d):
        m = re.fullmatch(r"seed(\d+)", e)
        if m and os.path.isdir(os.path.join(d, e)):
            p = os.path.join(d, e, "results.jsonl")
            seeds.append((int(m.group(1)), read_results(p) if os.path.isfile(p) else {}))
    return sorted(seeds, key=lambda s: s[0])


def is_peer(layer):
    return layer.get("kind") == "peer"


def routing_of(entry):
    """Per-run routing summary: means over the MoE layers and over the PEER layers."""
    r = entry.get("routing")
    if not isinstance(r, list):
        return None
    layers = [m for m in r if isinstance(m, dict)]
    moe = [m for m in layers if not is_peer(m)]
    peer = [m for m in layers if is_peer(m)]
    out = {}
    if moe:
        out["moe"] = {k: mean([num(m.get(k)) for m in moe])
                      for k in ("max_over_mean_load", "dropped_pct", "router_entropy",
                                "unused_experts", "aux_loss", "z_loss")}
        out["moe"]["layers"] = len(moe)
    if peer:
        def eff(m):
            e = num(m.get("effective"))
            k = num(m.get("kl"))
            return e if e is not None else (math.exp(-k) if k is not None else None)
        out["peer"] = {"usage": mean([num(m.get("usage")) for m in peer]),
                       "kl": mean([num(m.get("kl")) for m in peer]),
                       "effective": mean([eff(m) for m in peer]),
                       "layers": len(peer)}
    return out or None


def merge_routing(per_seed):
    """Mean across seeds of the per-run routing summaries (None entries skipped)."""
    per_seed = [r for r in per_seed if r]
    if not per_seed:
        return None
    out = {}
    for part in ("moe", "peer"):
        rs = [r[part] for r in per_seed if part in r]
        if rs:
            keys = {k for r in rs for k in r}
            out[part] = {k: mean([num(r.get(k)) for r in rs]) for k in sorted(keys)}
            out[part]["seeds"] = len(rs)
    return out


def per_head_usage(entries):
    """{layer: [mean usage of head h across seeds]} for PEER layers that carry per_head data."""
    acc = {}  # layer -> head -> [usage]
    for e in entries:
        r = e.get("routing")
        if not isinstance(r, list):
            continue
        for m in r:
            if not isinstance(m, dict) or not is_peer(m) or not isinstance(m.get("per_head"), list):
                continue
            layer = m.get("layer")
            heads = acc.setdefault(layer if isinstance(layer, int) else DASH, {})
            for h, hd in enumerate(m["per_head"]):
                if isinstance(hd, dict):
                    heads.setdefault(h, []).append(num(hd.get("usage")))
    return {layer: [mean(heads.get(h, [])) for h in range(max(heads) + 1)]
            for layer, heads in acc.items() if heads}


def aggregate(seeds):
    """name -> aggregated numbers over the seeds."""
    names = []
    for _, runs in seeds:
        for n in runs:
            if n not in names:
                names.append(n)
    agg = {}
    for n in names:
        entries = [runs.get(n) for _, runs in seeds]
        present = [e for e in entries if e is not None]
        bpb = [num(e.get("val_bpb")) if e else None for e in entries]
        got = [b for b in bpb if b is not None]

        def common(key):
            return next((e[key] for e in present if e.get(key) is not None), None)

        agg[n] = {
            "kind": common("kind"),
            "config": common("config"),
            "total_params": common("total_params"),
            "active_params": common("active_params"),
            "tokens": mean([num(e.get("tokens")) for e in present]),
            "flops": mean([num(e.get("flops")) for e in present]),
            "steps": common("steps"),
            "val_bpb": bpb,
            "mean": mean(got),
            "spread": max(got) - min(got) if len(got) >= 2 else None,
            "final_train_loss": mean([num(e.get("final_train_loss")) for e in present]),
            "wall_s": mean([num(e.get("wall_s")) for e in present]),
            "tokens_per_s": mean([num(e.get("tokens_per_s")) for e in present]),
            "routing": merge_routing([routing_of(e) for e in present]),
            "per_head_usage": per_head_usage(present),
        }
    return agg


def paired_delta(row, ref):
    """Mean over the seeds both have of bpb(row) - bpb(ref); None if no seed in common."""
    if row is None or ref is None:
        return None
    d = [a - b for a, b in zip(row["val_bpb"], ref["val_bpb"]) if a is not None and b is not None]
    return sum(d) / len(d) if d else None


# ---- formatting -------------------------------------------------------------------------------

def f_count(x):
    """1750000 -> 1.75M (3 significant figures)."""
    x = num(x)
    if x is None:
        return DASH
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            v = x / scale
            break
    else:
        return f"{x:.0f}"
    return f"{v:.{2 if abs(v) < 10 else 1 if abs(v) < 100 else 0}f}{unit}"


def f_sci(x):
    """9.98e12 -> 1.0e13."""
    x = num(x)
    if x is None:
        return DASH
    s = f"{x:.1e}"
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m.group(1) == "-" else "") + m.group(2), s)


def f_fix(x, d=4, signed=False):
    x = num(x)
    if x is None:
        return DASH
    return f"{x:+.{d}f}" if signed else f"{x:.{d}f}"


def f_pct(x, d=1):
    x = num(x)
    return DASH if x is None else f"{x:.{d}f}%"


def f_routing(r):
    if not r:
        return DASH
    parts = []
    m = r.get("moe")
    if m:
        parts.append(f"max/mean {f_fix(m.get('max_over_mean_load'), 2)}, "
                     f"drop {f_pct(m.get('dropped_pct'))}")
    p = r.get("peer")
    if p:
        u = num(p.get("usage"))
        parts.append(f"usage {f_pct(u * 100 if u is not None else None)}, "
                     f"KL {f_fix(p.get('kl'), 2)}, eff {f_fix(p.get('effective'), 2)}")
    return "; ".join(parts) if parts else DASH


def table(header, rows, align):
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def section_table(rows, agg, seed_ids):
    header = (["config", "kind", "total params", "active params", "tokens"]
              + [f"val bpb s{s}" for s in seed_ids]
              + ["mean val bpb", "spread", f"Δ vs {rows[0][1] or rows[0][0]}", "wall s", "routing"])
    align = "llrrr" + "r" * len(seed_ids) + "rrrrl"
    ref = agg.get(rows[0][0])
    body = []
    for i, (name, label) in enumerate(rows):
        a = agg.get(name)
        label = label or name
        if a is None:
            body.append([label] + [DASH] * (len(header) - 1))
            continue
        delta = "(ref)" if i == 0 else f_fix(paired_delta(a, ref), 4, signed=True)
        wall = num(a["wall_s"])
        body.append([label, str(a["kind"] or DASH), f_count(a["total_params"]),
                     f_count(a["active_params"]), f_count(a["tokens"])]
                    + [f_fix(b) for b in a["val_bpb"]]
                    + [f_fix(a["mean"]), f_fix(a["spread"]), delta,
                       f"{wall:.0f}" if wall is not None else DASH, f_routing(a["routing"])])
    return table(header, body, align)


def per_head_table(rows, agg):
    lines = []
    entries = [(label or name, layer, heads) for name, label in rows
               for layer, heads in sorted((agg.get(name) or {}).get("per_head_usage", {}).items(),
                                          key=lambda kv: str(kv[0]))]
    if not entries:
        return lines
    n = max(len(h) for _, _, h in entries)
    header = ["config", "layer"] + [f"head {h}" for h in range(n)]
    body = [[c, str(layer)]
            + [f_pct(u * 100 if u is not None else None) for u in heads] + [DASH] * (n - len(heads))
            for c, layer, heads in entries]
    lines.append("PEER usage per head (% of the layer's experts that the head selects at least "
                 "once over the val split; mean across seeds):")
    lines.append("")
    lines += table(header, body, "ll" + "r" * n)
    return lines


def markdown(d, seeds, agg):
    seed_ids = [s for s, _ in seeds]
    wanted = []
    for _, rows in SECTIONS:
        for name, _ in rows or []:
            if name not in wanted:
                wanted.append(name)
    budget = max((a["flops"] for a in agg.values() if a["flops"] is not None), default=None)
    seeds_txt = ", ".join(map(str, seed_ids)) if seed_ids else "none"
    out = [f"# Study ({d}): seeds {seeds_txt}; training-FLOP budget {f_sci(budget)} per run", ""]
    have = {s: sum(1 for n in wanted if n in runs) for s, runs in seeds}
    total = sum(have.values())
    if not seeds:
        out += ["_No seed<N>/ directories found yet._", ""]
    elif total < len(wanted) * len(seeds):
        per = ", ".join(f"seed{s}: {have[s]}/{len(wanted)}" for s in seed_ids)
        out += [f"_Partial: {total} of {len(wanted) * len(seeds)} runs present"
                + (f" ({per})" if per else "") + "._", ""]
    for k, (title, rows) in enumerate(SECTIONS):
        out += [f"## {title}", ""]
        if rows is None:  # 7: G × budget, and the law fitted to those runs
            g = study_sections.g_budget_table(d, seeds)
            out += g or ["_No runs yet._"]
            fit = study_sections.fit_table(os.path.join(d, "g_budget_fit.json"))
            out += ([""] + fit) if fit else []
            out.append("")
            continue
        out += section_table(rows, agg, seed_ids)
        extra = {2: lambda: per_head_table(rows, agg),
                 4: lambda: study_sections.specialisation_table(rows, seeds),
                 5: lambda: study_sections.active_experts_table(rows, seeds),
                 7: lambda: study_sections.load_table(d, rows, seeds)}.get(k, lambda: [])()
        if extra:
            out += [""] + extra
        out.append("")
    # Comparison 1 rerun at a larger budget (scripts/study.sh: <dir>/long, seed 1), with the
    # same configs' seed-1 bpb at the main budget beside it.
    long_path = os.path.join(d, "long", "results.jsonl")
    if os.path.isfile(long_path):
        runs = read_results(long_path)
        agg_long = aggregate([(1, runs)])
        lb = max((a["flops"] for a in agg_long.values() if a["flops"] is not None), default=None)
        rows = SECTIONS[0][1]
        ref = agg_long.get(rows[0][0])
        header = ["config", "tokens", f"val bpb at {f_sci(lb)}", f"Δ vs {rows[0][0]}",
                  f"val bpb at {f_sci(budget)} (seed 1)", "gain from the larger budget",
                  "routing"]
        body = []
        for i, (name, label) in enumerate(rows):
            a = agg_long.get(name)
            short = agg.get(name)
            sb = short["val_bpb"][0] if short and seed_ids and seed_ids[0] == 1 else None
            if a is None:
                body.append([label or name] + [DASH] * (len(header) - 1))
                continue
            lbpb = a["val_bpb"][0]
            body.append([label or name, f_count(a["tokens"]), f_fix(lbpb),
                         "(ref)" if i == 0 else f_fix(paired_delta(a, ref), 4, signed=True),
                         f_fix(sb), f_fix(sb - lbpb if sb is not None and lbpb is not None
                                          else None), f_routing(a["routing"])])
        out += [f"## 1b. Dense vs MoE at {f_sci(lb)} FLOPs (seed 1)", ""]
        out += table(header, body, "lrrrrrl")
        out.append("")
    extra = [n for n in agg if n not in wanted]
    if extra:
        out += ["## Other configs", ""]
        out += section_table([(n, None) for n in extra], agg, seed_ids)
        out.append("")
    out.append("Rows sorted as run; val bpb = bits per byte on the whole Brown val split; "
               "lower is better.")
    return "\n".join(out)


def to_json(d, seeds, agg):
    budget = max((a["flops"] for a in agg.values() if a["flops"] is not None), default=None)
    sections = []
    for title, rows in SECTIONS:
        if rows is None:
            continue
        ref = agg.get(rows[0][0])
        sections.append({"title": title, "rows": [
            {"config": n, "label": label or n,
             "mean": (agg.get(n) or {}).get("mean"),
             "delta_vs_first": paired_delta(agg.get(n), ref) if i else None}
            for i, (n, label) in enumerate(rows)]})
    return {"dir": d, "seeds": [s for s, _ in seeds], "flop_budget": budget,
            "configs": {n: {("val_bpb_per_seed" if k == "val_bpb" else k): v
                            for k, v in a.items()} for n, a in agg.items()},
            "sections": sections}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="runs/study", help="the study directory (seed<N>/results.jsonl)")
    ap.add_argument("--json", action="store_true", help="print the aggregated numbers as JSON")
    ap.add_argument("--fit-input", metavar="PATH",
                    help="write comparison 7's runs as moe scaling fit input and exit")
    a = ap.parse_args()
    if not os.path.isdir(a.dir):
        sys.exit(f"study_report: {a.dir}: no such directory")
    seeds = find_seeds(a.dir)
    if a.fit_input:
        n = study_sections.write_fit_input(a.dir, seeds, a.fit_input)
        print(f"study_report: {n} runs -> {a.fit_input}", file=sys.stderr)
        return
    agg = aggregate(seeds)
    if a.json:
        print(json.dumps(to_json(a.dir, seeds, agg), indent=1))
    else:
        print(markdown(a.dir, seeds, agg))


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # e.g. piped into head
        sys.stderr.close()
