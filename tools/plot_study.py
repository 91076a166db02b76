#!/usr/bin/python3
"""Figures for a `make study` output directory (scripts/study.sh).

  plot_study.py [--dir runs/study] [--out docs/img/study] [--quiet]

DIR holds seed<N>/ (one `moe compare` output per seed: results.jsonl plus <config>/metrics.jsonl)
and optionally long/ (comparison 1 at a larger budget, seed 1). The comparisons and their config
order are those of tools/study_report.py. Writes to OUT (created if needed):
  comparison<i>.png  i = 1..6, 8: training loss (nats/token, centred moving average over 9 logged points)
                     vs training FLOPs, log-x, one colour per config, one line style per seed;
                     and final val bpb per config: bar = mean over seeds, dots = each seed
  long.png           the same for long/ (if long/results.jsonl exists), with the short-budget
                     seed-1 values as hollow markers on the bar chart
  peer_usage.png     PEER usage % and effective fraction exp(-KL) per config and seed (layer
                     means as bars, heads as dots), if some PEER config has routing entries
  capacity.png       comparison 4: mean val bpb vs % dropped and vs max/mean expert load
                     (averaged over layers, then seeds), if some of its configs have routing
  comparison7.png    val bpb against G at each budget (gbudget-<F>/ and seed1/), best G starred
  load.png           comparison 8: max/mean expert load over training per config and seed
The study may be partial: missing seeds, configs, runs and fields are skipped. Prints the paths
written (not with --quiet).
"""
import argparse
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")  # no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import study_sections  # noqa: E402
import study_report  # noqa: E402  (SECTIONS, read_results, find_seeds, routing_of, num, mean)
from plot import read_jsonl  # noqa: E402  (tolerates a missing file or a partial last line)

SECTIONS = study_report.SECTIONS
num = study_report.num
mean = study_report.mean
FIGSIZE = (6.4, 4.0)
DPI = 80
SMOOTH_HALF = 4  # moving average over 2*4+1 = 9 logged points
COLORS = plt.get_cmap("tab10").colors
STYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "^", "s", "D", "v"]
PEER_CONFIGS = ["peer-bn", "peer-nobn"]
CAPACITY_SECTION = 3  # index in SECTIONS of "Capacity factor and the balancing loss"



def config_colors():
    """name -> tab10 colour index, the same in every figure (dense, mixtral, ...), distinct
    within each comparison."""
    idx = {}
    for _, rows in SECTIONS:
        if rows is None:  # comparison 7 has its own figure (g_budget_figure)
            continue
        used = {idx[n] for n, _ in rows if n in idx}
        for n, _ in rows:
            if n not in idx:
                idx[n] = next(i for i in range(len(COLORS)) if i not in used)
                used.add(idx[n])
    return idx


COLOR_OF = config_colors()


def color(name, fallback=0):
    return COLORS[COLOR_OF.get(name, fallback) % len(COLORS)]


plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8,
                     "xtick.labelsize": 7, "ytick.labelsize": 7, "legend.fontsize": 6.5})


def smooth(ys, half=SMOOTH_HALF):
    """Centred moving average over 2*half+1 points. At the start the window shrinks
    symmetrically (point i < half averages 0..2i), so the steep start of a loss curve is not
    pulled up by a one-sided window; at the (flat, noisy) end it is cut off on the right."""
    ys = np.asarray(ys, dtype=float)
    n = len(ys)
    if n < 3 or half < 1:
        return ys
    c = np.concatenate(([0.0], np.cumsum(ys)))
    out = np.empty(n)
    for i in range(n):
        lo = i - min(half, i)
        hi = min(i + min(half, i), n - 1)
        out[i] = (c[hi + 1] - c[lo]) / (hi - lo + 1)
    return out


def curve(run_dir, entry):
    """(FLOPs, smoothed loss) of one run's training log, or None."""
    steps = num(entry.get("steps"))
    tokens = num(entry.get("tokens"))
    fpt = num(entry.get("flops_per_token_train"))
    if not steps or not tokens or not fpt:
        return None
    tps = tokens / steps
    pts = []
    for m in read_jsonl(os.path.join(run_dir, entry["name"], "metrics.jsonl")):
        s, y = num(m.get("step")), num(m.get("loss"))
        if s is not None and y is not None and s > 0:
            pts.append((s * fpt * tps, y))
    if not pts:
        return None
    pts.sort()
    xs = np.array([p[0] for p in pts])
    return xs, smooth([p[1] for p in pts])


def fmt_flops(x):
    return study_report.f_sci(x) if x is not None else "?"


def budget(runs_by_seed):
    fl = [num(e.get("flops")) for _, runs in runs_by_seed for e in runs.values()]
    fl = [f for f in fl if f is not None]
    return max(fl) if fl else None


def zoom(ax, values, pad_frac=0.25):
    """y-limits around the data range (not from 0)."""
    values = [v for v in values if v is not None]
    if not values:
        return
    lo, hi = min(values), max(values)
    pad = (hi - lo) * pad_frac if hi > lo else max(abs(hi) * 0.01, 1e-3)
    ax.set_ylim(lo - pad, hi + pad)


def tick_labels(ax, x, labels):
    ax.set_xticks(x)
    rot = 30 if len(labels) > 4 or max(len(s) for s in labels) > 8 else 0
    ax.set_xticklabels(labels, rotation=rot, ha="right" if rot else "center")


def comparison_figure(title, rows, seeds, out, short=None):
    """rows: [(name, label)]; seeds: [(seed, runs, run_dir)]. short: {name: bpb} for hollow markers.

    Returns True if written (some config of rows has a results entry)."""
    present = [(i, name, label or name) for i, (name, label) in enumerate(rows)
               if any(name in runs for _, runs, _ in seeds)]
    if not present:
        return False
    fig, (ax, bx) = plt.subplots(1, 2, figsize=FIGSIZE, gridspec_kw={"width_ratios": [1.25, 1]})
    # left: smoothed training loss vs FLOPs
    seed_ids = [s for s, _, _ in seeds]
    drawn_styles = set()
    ycap = []
    ymin = []
    for i, name, label in present:
        col = color(name, i)
        first = True
        for k, (s, runs, run_dir) in enumerate(seeds):
            e = runs.get(name)
            c = curve(run_dir, e) if e else None
            if c is None:
                continue
            xs, ys = c
            ax.plot(xs, ys, color=col, ls=STYLES[k % len(STYLES)], lw=1.2,
                    label=label if first else None)
            drawn_styles.add(k)
            first = False
            ymin.append(float(np.min(ys)))
            # loss at 5% of the run: caps the y-range so the early drop does not flatten the tail
            ycap.append(float(np.interp(xs[0] + 0.05 * (xs[-1] - xs[0]), xs, ys)))
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("training loss (nats/token, smoothed)")
    if ymin:
        lo, hi = min(ymin), max(ycap)
        if hi > lo:
            ax.set_ylim(lo - 0.05 * (hi - lo), hi)
    ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if len(drawn_styles) > 1:
        for k in sorted(drawn_styles):
            handles.append(Line2D([], [], color="gray", ls=STYLES[k % len(STYLES)], lw=1.2))
            labels.append(f"seed {seed_ids[k]}")
    if handles:
        ax.legend(handles, labels, loc="upper right", ncol=1)
    # right: final val bpb, bar = mean over seeds, dots = each seed
    x = np.arange(len(present))
    allv = []
    seen_seed = set()
    for j, (i, name, label) in enumerate(present):
        vals = [(k, num(runs[name].get("val_bpb"))) for k, (_, runs, _) in enumerate(seeds)
                if name in runs]
        vals = [(k, v) for k, v in vals if v is not None]
        if not vals:
            continue
        m = mean([v for _, v in vals])
        allv += [v for _, v in vals]
        bx.bar(j, m, 0.62, color=color(name, i), alpha=0.55, edgecolor=color(name, i))
        top = max([m] + [v for _, v in vals])  # above the seed dots (not the hollow markers)
        bx.annotate(f"{m:.3f}", (j, top), xytext=(0, 4), textcoords="offset points",
                    ha="center", va="bottom", fontsize=6.5)
        if len(seeds) > 1 or short is None:
            for k, v in vals:
                off = (k - (len(seeds) - 1) / 2) * 0.12
                bx.plot(j + off, v, MARKERS[k % len(MARKERS)], color="black", ms=3.5,
                        label=f"seed {seed_ids[k]}" if k not in seen_seed else None)
                seen_seed.add(k)
        if short and short.get(name) is not None:
            allv.append(short[name])
            bx.plot(j, short[name], "o", mfc="none", mec="black", ms=7, mew=1.2,
                    label=short.get("_label") if "short" not in seen_seed else None)
            seen_seed.add("short")
    zoom(bx, allv)
    tick_labels(bx, x, [label for _, _, label in present])
    bx.set_ylabel("final val bpb (lower is better)")
    bx.grid(True, axis="y", alpha=0.3)
    if seen_seed and (len(seen_seed) > 1 or short):
        handles, labels = bx.get_legend_handles_labels()
        if short:
            handles.append(Patch(facecolor="lightgray", edgecolor="gray"))
            labels.append(short.get("_bar", "this run"))
        bx.legend(handles, labels, loc="best", framealpha=0.9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return True


def layer_means(entry, keys):
    """{key: mean over PEER layers} and [per-head dicts] of one results entry, or (None, [])."""
    r = entry.get("routing") if entry else None
    if not isinstance(r, list):
        return None, []
    peer = [m for m in r if isinstance(m, dict) and m.get("kind") == "peer"]
    if not peer:
        return None, []
    heads = [h for m in peer if isinstance(m.get("per_head"), list)
             for h in m["per_head"] if isinstance(h, dict)]
    return {k: mean([num(m.get(k)) for m in peer]) for k in keys}, heads


def effective(d):
    e, kl = num(d.get("effective")), num(d.get("kl"))
    return e if e is not None else (math.exp(-kl) if kl is not None else None)


def peer_usage_figure(seeds, out):
    groups = []  # (label, usage, eff, [head usage], [head eff])
    for name in PEER_CONFIGS:
        for s, runs, _ in seeds:
            e = runs.get(name)
            means, heads = layer_means(e, ("usage",))
            if means is None:
                continue
            r = [m for m in e["routing"] if isinstance(m, dict) and m.get("kind") == "peer"]
            eff = mean([effective(m) for m in r])
            groups.append((f"{name}\nseed {s}", means["usage"], eff,
                           [num(h.get("usage")) for h in heads], [effective(h) for h in heads]))
    if not groups:
        return False
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 1.1 * len(groups)), 3.4))
    x = np.arange(len(groups))
    w = 0.36
    pct = lambda v: 100.0 * v if v is not None else np.nan  # noqa: E731
    ax.bar(x - w / 2, [pct(g[1]) for g in groups], w, color=COLORS[0], alpha=0.75,
           label="usage (% of experts hit, layer mean)")
    ax.bar(x + w / 2, [pct(g[2]) for g in groups], w, color=COLORS[1], alpha=0.75,
           label="effective fraction exp(-KL) (%, layer mean)")
    head_label = True
    for j, g in enumerate(groups):
        for off, vals in ((-w / 2, g[3]), (w / 2, g[4])):
            vals = [pct(v) for v in vals if v is not None]
            if vals:
                jit = np.linspace(-w * 0.3, w * 0.3, len(vals)) if len(vals) > 1 else [0.0]
                ax.plot(j + off + np.asarray(jit), vals, ".", color="black", ms=3,
                        label="per head (all layers)" if head_label else None)
                head_label = False
        for off, v in ((-w / 2, g[1]), (w / 2, g[2])):
            if v is not None:  # the layer mean, inside the bar near its base
                ax.annotate(f"{100 * v:.0f}%", (j + off, 0), xytext=(0, 3),
                            textcoords="offset points", ha="center", va="bottom", fontsize=6.5)
    ax.set_xticks(x)
    ax.set_xticklabels([g[0] for g in groups])
    ax.set_ylabel("% of the layer's experts")
    ax.set_ylim(0, 135)  # room for the legend above the bars
    ax.set_yticks(range(0, 101, 20))
    ax.set_title("PEER expert usage on the val split")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper center", framealpha=0.9, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return True


def capacity_figure(seeds, out):
    _, rows = SECTIONS[CAPACITY_SECTION]
    pts = []  # (name, label, mean bpb, mean dropped %, mean max/mean load, per-seed bpbs)
    for i, (name, label) in enumerate(rows):
        bpb, drop, load = [], [], []
        for _, runs, _ in seeds:
            e = runs.get(name)
            if not e:
                continue
            bpb.append(num(e.get("val_bpb")))
            r = study_report.routing_of(e)
            m = (r or {}).get("moe") or {}
            drop.append(num(m.get("dropped_pct")))
            load.append(num(m.get("max_over_mean_load")))
        b = mean(bpb)
        if b is None:
            continue
        pts.append((name, label or name, b, mean(drop), mean(load)))
    if not any(p[3] is not None or p[4] is not None for p in pts):
        return False
    fig, axes = plt.subplots(1, 2, figsize=FIGSIZE, sharey=True)
    for ax, col, xlabel in ((axes[0], 3, "tokens dropped (%, val, mean over layers)"),
                            (axes[1], 4, "max/mean expert load (val, mean over layers)")):
        for p in pts:
            if p[col] is None:
                continue
            c = color(p[0])
            ax.plot(p[col], p[2], "o", color=c, ms=6, label=p[1])
            ax.annotate(p[1], (p[col], p[2]), xytext=(4, 3), textcoords="offset points",
                        fontsize=6.5, color=c)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        xs = [p[col] for p in pts if p[col] is not None]
        if xs:
            lo, hi = min(xs), max(xs)
            pad = (hi - lo) * 0.15 if hi > lo else max(abs(hi) * 0.1, 0.5 if col == 3 else 0.05)
            ax.set_xlim(lo - pad, hi + pad + (hi - lo + 2 * pad) * 0.3)  # room for labels
    zoom(axes[0], [p[2] for p in pts])
    axes[0].set_ylabel("mean val bpb (lower is better)")
    fig.suptitle(SECTIONS[CAPACITY_SECTION][0] + " (routing on the val split)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return True


def g_budget_figure(title, d, seeds, out):
    """Comparison 7: val bpb against G, one line per budget."""
    by_budget = study_sections.g_budget_runs(d, [(s, r) for s, r, _ in seeds])
    if not by_budget:
        return False
    fig, ax = plt.subplots(figsize=(4.2, 3.0))
    for i, (b, runs) in enumerate(by_budget.items()):
        pts = [(int(n[1:]), num(runs[n].get("val_bpb"))) for n in study_sections.G_CONFIGS
               if n in runs and num(runs[n].get("val_bpb")) is not None]
        if not pts:
            continue
        xs, ys = zip(*pts)
        ax.plot(xs, ys, "o-", color=COLORS[i % len(COLORS)], label=f"{fmt_flops(b)} FLOPs")
        best = min(pts, key=lambda p: p[1])
        ax.plot([best[0]], [best[1]], "*", ms=11, color=COLORS[i % len(COLORS)])
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 4, 8], ["1", "2", "4", "8"])
    ax.set_xlabel("granularity G (E = 8, k_base = 1)")
    ax.set_ylabel("val bits per byte (seed 1)")
    ax.set_title(title + " (★ = best G)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return True


def load_figure(d, seeds, out):
    """Comparison 8: max/mean expert load over training (mean over layers), per config and seed."""
    _, rows = next(sec for sec in SECTIONS if sec[0].startswith("8."))
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    drew = False
    for name, label in rows:
        for j, (s, _, _) in enumerate(seeds):
            c = study_sections.load_curve(os.path.join(d, f"seed{s}", name, "metrics.jsonl"))
            if not c:
                continue
            xs, ys = zip(*c)
            ax.plot(xs, smooth(list(ys)), "-" if j == 0 else "--", color=color(name), lw=1,
                    label=f"{label or name} (seed {s})")
            drew = True
    if not drew:
        plt.close(fig)
        return False
    ax.axhline(1.0, color="0.6", lw=0.6)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("max/mean expert load (training batch)")
    ax.set_title("8. Load balance over training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="runs/study", help="the study directory (seed<N>/, long/)")
    ap.add_argument("--out", default="docs/img/study", help="where the PNGs go")
    ap.add_argument("--quiet", action="store_true", help="print nothing on success")
    a = ap.parse_args(argv)
    if not os.path.isdir(a.dir):
        print(f"plot_study: {a.dir}: no such directory", file=sys.stderr)
        return 1
    seeds = [(s, runs, os.path.join(a.dir, f"seed{s}"))
             for s, runs in study_report.find_seeds(a.dir) if runs]
    os.makedirs(a.out, exist_ok=True)
    written = []

    def note(msg):
        if not a.quiet:
            print(f"plot_study: {msg}", file=sys.stderr)

    flops = fmt_flops(budget([(s, r) for s, r, _ in seeds]))
    for i, (title, rows) in enumerate(SECTIONS, 1):
        p = os.path.join(a.out, f"comparison{i}.png")
        if rows is None:
            if g_budget_figure(title, a.dir, seeds, p):
                written.append(p)
            else:
                note(f"comparison {i}: no results yet, {p} not written")
            continue
        if comparison_figure(f"{title} ({flops} FLOPs/run)", rows, seeds, p):
            written.append(p)
        else:
            note(f"comparison {i}: no results yet, {p} not written")

    long_dir = os.path.join(a.dir, "long")
    long_res = os.path.join(long_dir, "results.jsonl")
    if os.path.isfile(long_res):
        long_runs = study_report.read_results(long_res)
        short = {}
        s1 = next((runs for s, runs, _ in seeds if s == 1), None) or {}
        for name, _ in SECTIONS[0][1]:
            if name in s1:
                short[name] = num(s1[name].get("val_bpb"))
        short["_label"] = f"short budget ({flops}), seed 1"
        short["_bar"] = "long budget, seed 1"
        lf = fmt_flops(budget([(1, long_runs)]))
        p = os.path.join(a.out, "long.png")
        if comparison_figure(f"{SECTIONS[0][0]}: long budget ({lf} FLOPs/run, seed 1)",
                             SECTIONS[0][1], [(1, long_runs, long_dir)], p, short=short):
            written.append(p)
        else:
            note(f"{long_res}: no comparison-1 results, long.png not written")

    p = os.path.join(a.out, "load.png")
    if load_figure(a.dir, seeds, p):
        written.append(p)
    else:
        note("no comparison-8 training logs yet, load.png not written")

    p = os.path.join(a.out, "peer_usage.png")
    if peer_usage_figure(seeds, p):
        written.append(p)
    else:
        note("no PEER routing entries yet, peer_usage.png not written")
    p = os.path.join(a.out, "capacity.png")
    if capacity_figure(seeds, p):
        written.append(p)
    else:
        note("no comparison-4 routing entries yet, capacity.png not written")

    if not a.quiet:
        for p in written:
            print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
