#!/usr/bin/python3
"""Figures for the scaling-law workflow (docs/SCALING.md).

  plot_scaling.py runs --runs runs.jsonl --out DIR [--moe BIN] [--bootstrap 100] [--dense]
      Loss vs training FLOPs of the runs of a sweep, one colour per granularity G, and the law
      fitted to them by `moe scaling fit --json`, evaluated at each run's own (N, D, G) and drawn
      as a line through each G's runs in FLOP order. Writes DIR/loss_vs_flops.png.

  plot_scaling.py plan --out DIR [--moe BIN] [--expansion 64]
      The compute-optimal granularity of `moe scaling plan --json` for budgets 1e17…1e25 FLOPs,
      and how much more compute a compute-optimal dense model needs to reach the same loss.
      Writes DIR/optimal_granularity.png.

runs.jsonl holds one JSON object per line with at least "N" (non-embedding parameters, total),
"D" (training tokens), "loss" (nats per token) and "flops" (training FLOPs); "G" defaults to 1.
Every number comes from the moe binary (default build/moe); this script only draws.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")  # no display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MOE = os.path.join(REPO, "build", "moe")
FIGSIZE = (6, 4)
DPI = 100


class PlotError(Exception):
    def __init__(self, message, detail=None):
        super().__init__(message)
        self.detail = detail or message  # the short reason (e.g. the binary's own error line)


class MoeNotRunnable(PlotError):
    """The binary itself could not be started (as opposed to a command that ran and failed)."""


def run_moe(moe, args):
    """Runs the moe binary and returns its --json output parsed."""
    cmd = [moe] + [str(a) for a in args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise MoeNotRunnable(f"cannot run {moe}: {e} (build it with `cmake --build build`, "
                             "or pass --moe)")
    if p.returncode != 0:
        msg = p.stderr.strip() or p.stdout.strip()
        short = re.sub(r"\s*\[[^\]]*\]$", "", msg.splitlines()[-1] if msg else "")
        short = re.sub(r"^moe: error: ", "", short)
        raise PlotError(f"{' '.join(cmd)} failed ({p.returncode}): {msg}", short or None)
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError as e:
        raise PlotError(f"{' '.join(cmd)}: output is not JSON ({e}): {p.stdout[:200]!r}")


def read_runs(path):
    """The runs of a runs.jsonl as a list of dicts with float N, D, G, loss, flops and a name."""
    runs = []
    with open(path) as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                j = json.loads(line)
            except json.JSONDecodeError as e:
                raise PlotError(f"{path}:{no}: not JSON ({e})")
            if not isinstance(j, dict):
                raise PlotError(f"{path}:{no}: not a JSON object")
            r = {"name": str(j.get("name", f"line {no}"))}
            for k, required in (("N", True), ("D", True), ("loss", True), ("flops", True),
                                ("G", False)):
                if k not in j:
                    if required:
                        raise PlotError(f"{path}:{no}: field {k} missing")
                    r[k] = 1.0
                    continue
                v = j[k]
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                    raise PlotError(f"{path}:{no}: field {k}: got {v!r}, expected a positive number")
                r[k] = float(v)
            runs.append(r)
    if not runs:
        raise PlotError(f"{path}: no runs")
    return runs


def law_loss(fit, N, D, G):
    """L(N, D, G) = c + (g/G^γ + a)/N^α + b/D^β with the coefficients of a fit (dict)."""
    N, D, G = np.asarray(N, float), np.asarray(D, float), np.asarray(G, float)
    gran = fit["g"] / G ** fit["gamma"] if fit.get("g", 0) > 0 else 0.0
    return fit["c"] + (gran + fit["a"]) / N ** fit["alpha"] + fit["b"] / D ** fit["beta"]


def _fmt_g(g):
    return str(int(g)) if float(g).is_integer() else f"{g:g}"


def plot_runs(runs_path, out_dir, moe=DEFAULT_MOE, bootstrap=100, dense=False, seed=None):
    """Draws DIR/loss_vs_flops.png; returns (path, fit dict or None)."""
    runs = read_runs(runs_path)
    args = ["scaling", "fit", "--runs", runs_path, "--json", "--bootstrap", bootstrap]
    if dense:
        args.append("--dense")
    if seed is not None:
        args += ["--seed", seed]
    fit, fit_error = None, None
    try:
        fit = run_moe(moe, args)
    except MoeNotRunnable:
        raise
    except PlotError as e:  # the fit refused, e.g. too few finished runs yet: still draw the points
        fit_error = e.detail
        print(f"plot_scaling: warning: no fitted law drawn: {e}", file=sys.stderr)

    os.makedirs(out_dir, exist_ok=True)
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    gs = sorted({r["G"] for r in runs})
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(gs))) if len(gs) > 1 else ["C0"]
    for g, col in zip(gs, colours):
        rs = sorted((r for r in runs if r["G"] == g), key=lambda r: r["flops"])
        x = np.array([r["flops"] for r in rs])
        y = np.array([r["loss"] for r in rs])
        ax.scatter(x, y, color=col, s=22, zorder=3, label=f"G = {_fmt_g(g)} ({len(rs)} runs)")
        if fit is not None:
            pred = law_loss(fit, [r["N"] for r in rs], [r["D"] for r in rs], g)
            ax.plot(x, pred, color=col, lw=1.2, alpha=0.8, zorder=2)
    if fit is not None:
        ax.plot([], [], color="0.3", lw=1.2, label="fitted law at each run's N, D, G")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("final training loss (nats/token)")
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", axis="x", alpha=0.1)
    ax.legend(fontsize=8, loc="upper right", framealpha=0.85)
    if fit is not None:
        law = "dense law" if dense else "L = c + (g/G^γ + a)/N^α + b/D^β"
        line1 = f"{law}, fitted to {fit['runs']} runs"
        line2 = (f"a={fit['a']:.3g} α={fit['alpha']:.3g} b={fit['b']:.3g} β={fit['beta']:.3g} "
                 + ("" if dense else f"g={fit['g']:.3g} γ={fit['gamma']:.3g} ")
                 + f"c={fit['c']:.3g}")
        line3 = f"RMSE {fit['rmse']:.4f}"
        if fit.get("heldout_runs", 0):
            line3 += f", held-out RMSE {fit['heldout_rmse']:.4f} ({fit['heldout_runs']} runs)"
        ax.set_title(f"{line1}\n{line2}\n{line3}", fontsize=8.5)
    else:
        reason = fit_error if len(fit_error) <= 70 else fit_error[:69] + "…"
        ax.set_title(f"{len(runs)} runs, no fitted law:\n{reason}", fontsize=8.5)
    fig.tight_layout()
    path = os.path.join(out_dir, "loss_vs_flops.png")
    fig.savefig(path)
    plt.close(fig)
    return path, fit


def plot_plan(out_dir, moe=DEFAULT_MOE, expansion=64, flops_min=1e17, flops_max=1e25, points=17):
    """Draws DIR/optimal_granularity.png; returns (path, list of plan dicts)."""
    budgets = np.logspace(math.log10(flops_min), math.log10(flops_max), points)
    plans = [run_moe(moe, ["scaling", "plan", "--flops", f"{F:.6g}", "--expansion", expansion,
                           "--json"]) for F in budgets]
    gs = np.array([p["granularity"] for p in plans])
    mult = np.array([p["dense_compute_multiplier"] for p in plans])

    os.makedirs(out_dir, exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(FIGSIZE[0], FIGSIZE[1] * 1.25), dpi=DPI,
                                   sharex=True)
    # G is discrete: a staircase whose steps change halfway (geometrically) between budgets.
    edges = np.concatenate([[budgets[0]], np.sqrt(budgets[:-1] * budgets[1:]), [budgets[-1]]])
    ax1.stairs(gs, edges, color="C0", lw=1, baseline=None)
    ax1.plot(budgets, gs, "o", color="C0", ms=4)
    ax1.set_xscale("log")
    ax1.set_yscale("log", base=2)
    ax1.set_yticks([1, 2, 4, 8, 16, 32, 64, 128, 256])
    ax1.set_yticklabels(["1", "2", "4", "8", "16", "32", "64", "128", "256"])
    ax1.set_ylim(0.8, 320)
    ax1.set_ylabel("optimal granularity G")
    ax1.grid(True, alpha=0.3)
    ax1.set_title(f"Compute-optimal fine-grained MoE, expansion E = {expansion}\n"
                  "(Krajewski et al. 2024 laws and shape assumptions; G over powers of two)",
                  fontsize=9)

    ax2.plot(budgets, mult, "s-", color="C3", ms=4, lw=1.2)
    if mult.max() / mult.min() > 10:  # a wide range (e.g. E = 16 or a wider budget span)
        ax2.set_yscale("log")
        ax2.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax2.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
            lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    else:
        ax2.set_ylim(0, mult.max() * 1.15)
    ax2.set_ylabel("dense compute multiplier (×)")
    ax2.set_xlabel("training FLOP budget")
    ax2.grid(True, which="both", alpha=0.3)
    # Label the multiplier at 1e20 (or the budget nearest to it) as the paper does.
    i = int(np.argmin(np.abs(np.log10(budgets) - 20)))
    ax2.annotate(f"{mult[i]:.1f}× at $10^{{{math.log10(budgets[i]):.3g}}}$ FLOPs (G = {_fmt_g(gs[i])})",
                 (budgets[i], mult[i]), textcoords="offset points", xytext=(8, -14), fontsize=8)
    ax2.text(0.01, 0.96, "compute a dense model needs to reach the optimal MoE's loss,\n"
             "over the MoE's budget", transform=ax2.transAxes, va="top", fontsize=7.5,
             color="0.3")
    fig.tight_layout()
    path = os.path.join(out_dir, "optimal_granularity.png")
    fig.savefig(path)
    plt.close(fig)
    return path, plans


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("runs", help="loss vs training FLOPs with the fitted law")
    r.add_argument("--runs", required=True, help="runs.jsonl (one JSON object per run)")
    r.add_argument("--out", required=True, help="output directory")
    r.add_argument("--moe", default=DEFAULT_MOE, help="the moe binary (default build/moe)")
    r.add_argument("--bootstrap", type=int, default=100,
                   help="bootstrap resamples passed to `moe scaling fit` (default 100)")
    r.add_argument("--seed", type=int, default=None, help="seed passed to `moe scaling fit`")
    r.add_argument("--dense", action="store_true", help="fit the dense law (g = 0)")
    p = sub.add_parser("plan", help="optimal G and dense compute multiplier vs FLOP budget")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--moe", default=DEFAULT_MOE, help="the moe binary (default build/moe)")
    p.add_argument("--expansion", type=int, default=64, choices=[16, 64],
                   help="expansion rate E (the fitted laws exist for 64 and 16)")
    p.add_argument("--flops-min", type=float, default=1e17)
    p.add_argument("--flops-max", type=float, default=1e25)
    p.add_argument("--points", type=int, default=17, help="log-spaced budgets (default 17)")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "runs":
            path, _ = plot_runs(a.runs, a.out, a.moe, a.bootstrap, a.dense, a.seed)
        else:
            if not (0 < a.flops_min < a.flops_max) or a.points < 2:
                raise PlotError("expected 0 < --flops-min < --flops-max and --points >= 2")
            path, _ = plot_plan(a.out, a.moe, a.expansion, a.flops_min, a.flops_max, a.points)
    except (PlotError, OSError) as e:
        print(f"plot_scaling: error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
