"""Tables (markdown) and figures from the JSON lines of ``examples/sweep.py``.

    python examples/sweep_report.py [--results-dir examples/results/sweeps]

Writes ``report.md``, ``fig3.png``, ``lr_gamma.png`` and ``elman_op.png`` next to the JSON lines and prints
the report. Only finished runs are in the JSON lines; every table says how many seeds each cell has.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics

import _common  # examples/_common.py (this script's folder is first on sys.path)
from sweep import RESULTS, read_jsonl  # the runner writes what this reads

HERE = _common.HERE


def load(results_dir, name):
    return sorted(read_jsonl(os.path.join(results_dir, f"{name}.jsonl")), key=lambda r: r["seed"])


def _steps(rows):
    return ", ".join(str(r["steps_to_threshold"]) if r["steps_to_threshold"] is not None
                     else f">{r['steps_run']}" + (" (diverged)" if r["diverged"] else "") for r in rows)


def _median_steps(rows):
    """Median over seeds with a run that never reached the threshold counted as beyond its budget."""
    if not rows:
        return "-"
    vals = sorted(r["steps_to_threshold"] if r["steps_to_threshold"] is not None else math.inf for r in rows)
    n = len(vals)
    m = vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2
    return f"> {rows[0]['steps']}" if m == math.inf else f"{m:g}"


def _best(rows):
    vals = [r["best_rms"] for r in rows if r["best_rms"] is not None]
    if not vals:
        return "-", "-"
    return (f"{statistics.mean(vals):.4f} [{min(vals):.4f}, {max(vals):.4f}]",
            ", ".join(f"{v:.4f}" for v in vals))


def fig3_table(rows, T):
    out = [f"ADD{T}: H = {rows[0]['hidden']}, gamma = {rows[0]['gamma']:g}, {rows[0]['nonlinearity']}, Adam lr "
           f"{rows[0]['lr']:g}, batch {rows[0]['batch']}, {rows[0]['steps']} steps, test RMS on "
           f"{rows[0]['test_size']} fixed sequences every {rows[0]['eval_every']} steps" if rows else f"ADD{T}: no runs",
           "",
           "| r | seeds | best test RMS: mean [min, max] | per seed | steps to RMS < 0.05, per seed | median | reached |",
           "|---|---|---|---|---|---|---|"]
    for r in sorted({x["r"] for x in rows}):
        rr = [x for x in rows if x["r"] == r]
        mean, per = _best(rr)
        reached = sum(x["steps_to_threshold"] is not None for x in rr)
        out.append(f"| {r:g} | {len(rr)} | {mean} | {per} | {_steps(rr)} | {_median_steps(rr)} | "
                   f"{reached}/{len(rr)} |")
    return "\n".join(out)


def grid_table(rows, keys, label):
    out = [f"| {label} | seeds | best test RMS: mean [min, max] | per seed | steps to RMS < 0.05, per seed | "
           f"median | diverged |", "|---|---|---|---|---|---|---|"]
    for cfg in sorted({tuple(x[k] for k in keys) for x in rows}, key=lambda c: tuple(map(str, c))):
        rr = [x for x in rows if tuple(x[k] for k in keys) == cfg]
        mean, per = _best(rr)
        name = ", ".join(f"{k} {v}" for k, v in zip(keys, cfg))
        out.append(f"| {name} | {len(rr)} | {mean} | {per} | {_steps(rr)} | {_median_steps(rr)} | "
                   f"{sum(x['diverged'] for x in rr)}/{len(rr)} |")
    return "\n".join(out)


def plot_fig3(by_T, out):
    plt = _common.pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for (T, rows), c in zip(sorted(by_T.items()), ("C0", "C1", "C2")):
        if not rows:
            continue
        rs = sorted({x["r"] for x in rows})
        xs = list(range(len(rs)))
        best = [[x["best_rms"] for x in rows if x["r"] == r] for r in rs]
        budget = rows[0]["steps"]
        steps = [[x["steps_to_threshold"] if x["steps_to_threshold"] is not None else budget
                  for x in rows if x["r"] == r] for r in rs]
        for ax, vals, lab in ((axes[0], best, "best test RMS"), (axes[1], steps, "steps to RMS 0.05")):
            ax.plot(xs, [statistics.mean(v) for v in vals], "o-", color=c,
                    label=f"ADD{T} (seeds: {min(map(len, vals))}-{max(map(len, vals))})")
            ax.fill_between(xs, [min(v) for v in vals], [max(v) for v in vals], color=c, alpha=0.2)
            ax.set_xticks(xs, [f"{r:g}" for r in rs])
            ax.set(xlabel="residual r (Lyapunov exponents = log r)", ylabel=lab)
        axes[1].axhline(budget, color=c, ls=":", lw=0.8)
    axes[0].axhline(0.05, color="gray", ls="--", lw=0.8, label="MP: RMS 0.05")
    axes[0].set_yscale("log")
    axes[0].set_title("A. best test RMS (mean, min-max)")
    axes[1].set_title("B. steps to MP (not reached: plotted at the budget, dotted)")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_curves(groups, out, title):
    """groups: list of (panel title, list of (label, rows))."""
    plt = _common.pyplot()

    n = len(groups)
    cols = 2 if n > 1 else 1
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.5 * cols, 3.6 * nrows), squeeze=False)
    for ax, (ptitle, series) in zip(axes.flat, groups):
        for (label, rows), c in zip(series, ("C0", "C1", "C2", "C3")):
            for i, r in enumerate(rows):
                ys = [min(v, 10.0) if math.isfinite(v) else 10.0 for v in r["test_rms"]]
                ax.plot(r["steps_curve"], ys, color=c, lw=1, alpha=0.8, label=label if i == 0 else None)
        ax.axhline(0.05, color="gray", ls="--", lw=0.8)
        ax.axhline(math.sqrt(1 / 6), color="gray", ls=":", lw=0.8)
        ax.set_yscale("log")
        ax.set(title=ptitle, xlabel="training step", ylabel="test RMS")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def report(results_dir=RESULTS, out_md=None):
    parts = ["# Sweep results (generated by `python examples/sweep_report.py` from the JSON lines)", ""]
    by_T = {}
    for name, T in (("fig3_add100", 100), ("fig3_add200", 200), ("fig3_add400", 400)):
        rows = load(results_dir, name)
        if rows:
            by_T[T] = rows
            parts += [f"## Fig. 3, ADD{T}", "", fig3_table(rows, T), ""]
    if by_T:
        plot_fig3(by_T, os.path.join(results_dir, "fig3.png"))
    lrg = load(results_dir, "lr_gamma")
    crit = [x for x in by_T.get(100, []) if x["r"] == 1.0]  # the (lr 0.01, gamma 0.01) cell
    lrg_all = lrg + [dict(x, experiment="lr_gamma") for x in crit if x["seed"] in {y["seed"] for y in lrg}]
    if lrg_all:
        parts += ["## Learning rate x coupling on ADD100 (r = 1)", "",
                  "(the lr 0.01, gamma 0.01 cell is fig3_add100's r = 1 runs with the same seeds)", "",
                  grid_table(lrg_all, ("gamma", "lr"), "gamma, lr"), ""]
        groups = []
        for lr in (0.1, 0.01):
            for g in (0.01, 0.001):
                rr = [x for x in lrg_all if x["lr"] == lr and x["gamma"] == g]
                groups.append((f"lr {lr:g}, gamma {g:g}", [(f"{len(rr)} seeds", rr)]))
        plot_curves(groups, os.path.join(results_dir, "lr_gamma.png"),
                    "ADD100, WCRNN r = 1, H = 64, Adam: learning rate x coupling")
    el = load(results_dir, "elman_init") + load(results_dir, "elman_init_lr01")
    op = load(results_dir, "op_chain")
    groups = []
    if el:
        parts += ["## Weakly coupled initialisation of an Elman nn.RNN (ADD100, tanh)", "",
                  grid_table(el, ("lr", "init"), "lr, init"), ""]
        for lr in sorted({x["lr"] for x in el}):
            groups.append((f"nn.RNN tanh, ADD100, Adam lr {lr:g}: weakly coupled vs default init",
                           [(k, [x for x in el if x["init"] == k and x["lr"] == lr])
                            for k in ("weakly_coupled", "default")]))
    if op:
        parts += [f"## Orhan & Pitkow: chain vs orthogonal nn.RNN (ADD{op[0]['T']}, relu)", "",
                  grid_table(op, ("init",), "init"), ""]
        groups.append((f"nn.RNN relu, ADD{op[0]['T']}: chain vs orthogonal init",
                       [(k, [x for x in op if x["init"] == k]) for k in ("chain", "orthogonal")]))
    if groups:
        plot_curves(groups, os.path.join(results_dir, "elman_op.png"), "plain Elman networks on the adding problem")
    all_rows = [x for n in ("fig3_add100", "fig3_add200", "fig3_add400", "lr_gamma", "elman_init",
                            "elman_init_lr01", "op_chain")
                for x in load(results_dir, n)]
    if all_rows:
        parts += ["## Wall time", "", f"{len(all_rows)} runs, {sum(x['wall_time_s'] for x in all_rows) / 60:.0f} "
                  f"worker-minutes of training (one torch thread each, niced, on a shared 2-core machine)", ""]
    text = "\n".join(parts)
    with open(out_md or os.path.join(results_dir, "report.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results-dir", default=RESULTS)
    p.add_argument("--out-md", default=None)
    a = p.parse_args(argv)
    report(a.results_dir, a.out_md)


if __name__ == "__main__":
    main()
