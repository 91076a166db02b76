#!/usr/bin/python3
"""Figures for a `moe compare` output directory.

  plot.py --dir runs/compare [--out OUTDIR]

DIR holds results.jsonl (one JSON object per config) and one subdirectory per config name with
its metrics.jsonl. Writes to OUTDIR (default DIR):
  training_curves.png  training loss (nats/token) vs training FLOPs, log-x, one line per config,
                       final val bpb in the legend
  expert_load.png      per MoE config, a layer x expert heatmap of the fraction of tokens routed
                       to each expert at the last logged step (only if some config logs "moe")
  peer_usage.png       usage % and effective fraction exp(-KL) per config/layer of PEER layers
                       (only if some results entry has a PEER routing layer)
Prints the paths written.
"""
import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")  # no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def read_jsonl(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a partly written last line of a live run
    return rows


def load_metrics(d, name):
    path = os.path.join(d, name, "metrics.jsonl")
    return read_jsonl(path) if os.path.exists(path) else []


def plot_training_curves(results, metrics, out):
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results:
        name = r.get("name", "?")
        steps = r.get("steps") or 0
        tokens = r.get("tokens") or 0
        fpt = r.get("flops_per_token_train") or 0
        tps = tokens / steps if steps else 0
        train = [m for m in metrics.get(name, []) if "loss" in m and "step" in m]
        xs = [m["step"] * fpt * tps for m in train]
        ys = [m["loss"] for m in train]
        pts = [(x, y) for x, y in zip(xs, ys) if x > 0 and y is not None and math.isfinite(y)]
        bpb = r.get("val_bpb")
        label = name + (f" (val bpb {bpb:.4f})" if isinstance(bpb, (int, float)) else "")
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, marker="o", markersize=3)
        else:
            ax.plot([], [], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title("Training loss vs compute")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def last_moe(rows):
    for m in reversed(rows):
        if m.get("moe"):
            return m
    return None


def load_matrix(layers):
    """Rows = layers (sorted), cols = experts; each row normalised to fractions."""
    layers = sorted((l for l in layers if l.get("tokens_per_expert")),
                    key=lambda l: l.get("layer", 0))
    if not layers:
        return None, []
    width = max(len(l["tokens_per_expert"]) for l in layers)
    mat = np.full((len(layers), width), np.nan)
    for i, l in enumerate(layers):
        t = np.asarray(l["tokens_per_expert"], dtype=float)
        s = t.sum()
        mat[i, :len(t)] = t / s if s > 0 else 0.0
    return mat, [l.get("layer", i) for i, l in enumerate(layers)]


def plot_expert_load(panels, out):
    n = len(panels)
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.0 + 1.6 * n + sum(0.25 * len(p[3]) for p in panels)),
                             squeeze=False)
    for ax, (name, step, mat, layer_ids) in zip(axes[:, 0], panels):
        im = ax.imshow(mat, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0)
        ax.set_title(f"{name}: fraction of tokens per expert (step {step})")
        ax.set_xlabel("expert")
        ax.set_ylabel("layer")
        ax.set_yticks(range(len(layer_ids)))
        ax.set_yticklabels([str(x) for x in layer_ids])
        fig.colorbar(im, ax=ax, label="fraction of layer's tokens")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_peer_usage(entries, out):
    labels = [f"{name}\nL{l.get('layer', '?')}" for name, l in entries]
    usage = [100.0 * float(l.get("usage", 0.0) or 0.0) for _, l in entries]
    eff = []
    for _, l in entries:
        kl = l.get("kl")
        eff.append(100.0 * math.exp(-kl) if isinstance(kl, (int, float)) else float("nan"))
    x = np.arange(len(entries))
    w = 0.38
    fig, ax = plt.subplots(figsize=(max(6, 1.0 + 0.9 * len(entries)), 4.5))
    ax.bar(x - w / 2, usage, w, label="usage (% of experts hit)")
    ax.bar(x + w / 2, eff, w, label="effective fraction exp(-KL) (%)")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title("PEER expert usage")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Plot a `moe compare` output directory.")
    ap.add_argument("--dir", required=True, help="compare output directory (holds results.jsonl)")
    ap.add_argument("--out", default=None, help="output directory (default: --dir)")
    args = ap.parse_args(argv)

    res_path = os.path.join(args.dir, "results.jsonl")
    if not os.path.isfile(res_path):
        print(f"plot.py: error: {res_path} not found (is --dir a `moe compare` output directory?)",
              file=sys.stderr)
        return 1
    out_dir = args.out or args.dir
    os.makedirs(out_dir, exist_ok=True)

    results = read_jsonl(res_path)
    metrics = {r.get("name", "?"): load_metrics(args.dir, r.get("name", "?")) for r in results}
    written = []

    p = os.path.join(out_dir, "training_curves.png")
    plot_training_curves(results, metrics, p)
    written.append(p)

    panels = []
    for r in results:
        name = r.get("name", "?")
        m = last_moe(metrics.get(name, []))
        if m is None:
            continue
        mat, ids = load_matrix(m["moe"])
        if mat is not None:
            panels.append((name, m.get("step", "?"), mat, ids))
    if panels:
        p = os.path.join(out_dir, "expert_load.png")
        plot_expert_load(panels, p)
        written.append(p)

    peer = [(r.get("name", "?"), l) for r in results for l in (r.get("routing") or [])
            if isinstance(l, dict) and l.get("kind") == "peer"]
    if peer:
        p = os.path.join(out_dir, "peer_usage.png")
        plot_peer_usage(peer, p)
        written.append(p)

    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
