#!/usr/bin/python3
"""Figures for a `moe compare` output directory, or for the routing of one model.

  plot.py --dir runs/compare [--out OUTDIR]
  plot.py --routing inspect.json [--out OUTDIR]

--routing reads the JSON of `moe inspect MODEL --routing --text FILE --json` and writes
routing.png: a layer x expert heatmap of the fraction of each layer's tokens routed to each
expert over that text, titled with the model and the text.

DIR holds results.jsonl (one JSON object per config) and one subdirectory per config name with
its metrics.jsonl. Writes to OUTDIR (default DIR):
  training_curves.png  val bpb (periodic evaluations, ending at the whole-split result) and
                       training loss vs training FLOPs, log-x, one line per config
  expert_load_over_time_<config>.png
                       per MoE config, one heatmap per layer: expert x logged step, the
                       fraction of the layer's tokens each expert received
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
    """The JSON objects of a JSON-lines file; [] if it cannot be read (a run not started)."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue  # a partly written last line of a live run
    except OSError:
        pass
    return rows


def load_metrics(d, name):
    path = os.path.join(d, name, "metrics.jsonl")
    return read_jsonl(path) if os.path.exists(path) else []


def plot_training_curves(results, metrics, out):
    """Left: val bpb vs training FLOPs (the periodic evaluations moe compare logs, ending at the
    whole-val-split result). Right: training loss vs FLOPs. Log-x, one line per config."""
    fig, (av, at) = plt.subplots(1, 2, figsize=(12, 5), sharex=True)
    for r in results:
        name = r.get("name", "?")
        steps = r.get("steps") or 0
        tokens = r.get("tokens") or 0
        fpt = r.get("flops_per_token_train") or 0
        tps = tokens / steps if steps else 0
        rows = metrics.get(name, [])
        bpb = r.get("val_bpb")
        label = name + (f" (val bpb {bpb:.4f})" if isinstance(bpb, (int, float)) else "")

        def curve(key):
            pts = [(m["step"] * fpt * tps, m[key]) for m in rows if key in m and "step" in m]
            return [(x, y) for x, y in pts
                    if x > 0 and isinstance(y, (int, float)) and math.isfinite(y)]

        val = curve("val_bpb")
        # The last periodic evaluation uses a subset of the val windows: end the line at the
        # whole-split number moe compare reports.
        if isinstance(bpb, (int, float)) and steps and fpt:
            val = [p for p in val if p[0] < steps * fpt * tps] + [(steps * fpt * tps, bpb)]
        line = av.plot([p[0] for p in val], [p[1] for p in val], label=label, marker="o",
                       markersize=3)[0]
        train = curve("loss")
        at.plot([p[0] for p in train], [p[1] for p in train], label=name, color=line.get_color(),
                marker="o" if len(train) < 20 else None, markersize=3)
    for ax, what in ((av, "val bits per byte"), (at, "training loss (nats/token)")):
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    av.set_title("Validation bpb vs compute")
    at.set_title("Training loss vs compute")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def load_over_time(rows):
    """{layer: (steps, [experts x steps] fractions)} from every logged "moe" entry."""
    per = {}
    for m in rows:
        for l in m.get("moe") or []:
            t = l.get("tokens_per_expert")
            if not t or l.get("kind") == "peer":
                continue
            per.setdefault(l.get("layer", 0), []).append((m.get("step", 0), t))
    out = {}
    for layer, seq in per.items():
        width = max(len(t) for _, t in seq)
        mat = np.full((width, len(seq)), np.nan)
        for j, (_, t) in enumerate(seq):
            t = np.asarray(t, dtype=float)
            s = t.sum()
            mat[:len(t), j] = t / s if s > 0 else 0.0
        out[layer] = ([st for st, _ in seq], mat)
    return out


def plot_load_over_time(name, layers, out):
    """One heatmap per MoE layer: expert (rows) x logged step (columns), colour = the fraction
    of the layer's routed tokens that expert received in that log window."""
    ids = sorted(layers)
    fig, axes = plt.subplots(1, len(ids), figsize=(3.2 * len(ids) + 1.5, 3.8), squeeze=False)
    vmax = max(np.nanmax(layers[l][1]) for l in ids)
    for ax, l in zip(axes[0], ids):
        steps, mat = layers[l]
        im = ax.imshow(mat, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0,
                       vmax=vmax, extent=(steps[0], steps[-1], mat.shape[0] - 0.5, -0.5))
        ax.set_title(f"layer {l}")
        ax.set_xlabel("step")
        ax.set_ylabel("expert")
    fig.colorbar(im, ax=list(axes[0]), label="fraction of the layer's tokens")
    fig.suptitle(f"{name}: expert load over training")
    fig.savefig(out, dpi=100)
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
        when = "" if step == "inspect" else f" (step {step})"
        ax.set_title(f"{name}: fraction of tokens per expert{when}")
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


def plot_routing(path, out_dir):
    """routing.png from `moe inspect --routing --json` output; returns the path or None."""
    with open(path) as f:
        info = json.load(f)
    routing = info.get("routing")
    if routing is None:
        print(f"plot.py: error: {path} has no \"routing\" (run `moe inspect MODEL --routing "
              "--text FILE --json`)", file=sys.stderr)
        return None
    mat, ids = load_matrix([l for l in routing if l.get("kind", "moe") != "peer"])
    if mat is None:
        print(f"plot.py: error: {path}: the model has no MoE layer to plot", file=sys.stderr)
        return None
    text = (info.get("routing_text") or {}).get("path", "?")
    name = f"{os.path.basename(str(info.get('path', '?')))} on {os.path.basename(text)}"
    p = os.path.join(out_dir, "routing.png")
    plot_expert_load([(name, "inspect", mat, ids)], p)
    return p


def main(argv=None):
    ap = argparse.ArgumentParser(description="Plot a `moe compare` output directory.")
    ap.add_argument("--dir", help="compare output directory (holds results.jsonl)")
    ap.add_argument("--routing", help="JSON of `moe inspect --routing --json` (routing.png)")
    ap.add_argument("--out", default=None, help="output directory (default: --dir, or the "
                    "directory of --routing)")
    args = ap.parse_args(argv)
    if args.routing:
        out_dir = args.out or os.path.dirname(os.path.abspath(args.routing))
        os.makedirs(out_dir, exist_ok=True)
        p = plot_routing(args.routing, out_dir)
        if p is None:
            return 1
        print(p)
        return 0
    if not args.dir:
        print("plot.py: error: give --dir (a `moe compare` directory) or --routing FILE",
              file=sys.stderr)
        return 1

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
    for r in results:
        name = r.get("name", "?")
        layers = load_over_time(metrics.get(name, []))
        if layers and max(len(v[0]) for v in layers.values()) >= 2:
            p = os.path.join(out_dir, f"expert_load_over_time_{name}.png")
            plot_load_over_time(name, layers, p)
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
