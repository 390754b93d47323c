"""The adding problem (T = 100) for a subcritical, a critical and a supercritical WCRNN: steps to RMS < 0.05.

    python examples/adding_problem.py               # r in {0.95, 1, 1.01}: minutes on 2 CPU cores
    python examples/adding_problem.py --r 0.995,1,1.0025
    python examples/adding_problem.py --quick       # the CI smoke run (seconds)

Each network (``--seeds`` instances per residual, the same weights for every r) is a FusedWCRNN
(gamma = 0.01, nn.RNN's default weights, scalar residual r, relu by default: it learns this task 3-4
times sooner than tanh at the same lr) with a linear readout of its last state, trained online with Adam
on fresh batches of the adding problem (``wcrnn_kernels.tasks.adding_problem``) until the RMS error on a
fixed test set of 1000 sequences falls under 0.05, the paper's minimal performance, or the step budget
runs out. Prints a table (steps to the threshold, best RMS, wall time) and the largest and mean Lyapunov
exponents of each network before and after training, writes the learning curves as a PNG and the
numbers as JSON.
"""
from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn
from tqdm import tqdm

import _common  # noqa: E402  (examples/_common.py: a source checkout's package first)

from wcrnn_kernels import init, tasks  # noqa: E402
from wcrnn_kernels.dynamics import lyapunov_spectrum  # noqa: E402
from wcrnn_kernels.module import FusedWCRNN  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--r", default="0.95,1.0,1.01", help="comma-separated scalar residuals")
    p.add_argument("--T", type=int, default=100, help="sequence length")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--gamma", type=float, default=init.PAPER_GAMMA)
    p.add_argument("--nonlinearity", default="relu", choices=("tanh", "relu"))
    p.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-steps", type=int, default=8000, help="step budget per network")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--threshold", type=float, default=tasks.ADDING_THRESHOLD_RMS)
    p.add_argument("--seeds", type=int, default=3, help="network instances (seeds 0..N-1) per residual")
    _common.add_threads_argument(p)
    p.add_argument("--backend", default="auto")
    p.add_argument("--quick", action="store_true", help="tiny run for CI (T = 30, H = 16, 40 steps)")
    p.add_argument("--out", default=None, help="PNG path (default examples/results/adding_problem.png; with "
                   "--quick examples/results/quick/)")
    a = p.parse_args(argv)
    if a.out is None:
        a.out = _common.default_out("adding_problem.png", a.quick)
    if a.quick:
        a.T, a.hidden, a.max_steps, a.eval_every, a.r, a.seeds = 30, 16, 40, 20, "0.95,1.0,1.01", 1
    a.r_values = [float(v) for v in a.r.split(",")]
    return a


def rms(model, x, y):
    with torch.no_grad():
        return tasks.rms_error(model(x), y)


def exponents(model, x):
    """Largest and mean Lyapunov exponent of the trained layer on test sequences (one spectrum each)."""
    lam = lyapunov_spectrum(model.rnn, x, warmup=x.shape[1] // 5)
    return lam[:, 0].mean().item(), lam.mean().item()


def train_one(r, seed, args, test):
    torch.manual_seed(seed)  # the weights of seed s are the same for every r
    model = _common.LastStateReadout(FusedWCRNN(2, args.hidden, batch_first=True, residual="scalar", r=r,
                                                gamma=args.gamma, nonlinearity=args.nonlinearity,
                                                backend=args.backend), 1)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(1000 + seed)
    steps, curve = [0], [rms(model, *test)]
    lyap_x = test[0][:4]
    lam_before = exponents(model, lyap_x)
    reached = None
    t0 = time.perf_counter()
    bar = tqdm(range(1, args.max_steps + 1), desc=f"r = {r:g}, seed {seed}", unit="step", mininterval=1.0)
    for step in bar:
        x, y = tasks.adding_problem(args.batch, args.T, generator=gen)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.eval_every == 0 or step == args.max_steps:
            steps.append(step)
            curve.append(rms(model, *test))
            bar.set_postfix(test_rms=f"{curve[-1]:.4f}")
            if curve[-1] < args.threshold:
                reached = step
                break
    bar.close()
    wall = time.perf_counter() - t0
    lam_after = exponents(model, lyap_x)
    return dict(r=r, seed=seed, regime=init.regime_of(r), steps=steps, test_rms=curve, steps_to_threshold=reached,
                best_rms=min(curve), final_rms=curve[-1], steps_run=steps[-1], wall_time_s=wall,
                lambda_max_before=lam_before[0], lambda_mean_before=lam_before[1],
                lambda_max_after=lam_after[0], lambda_mean_after=lam_after[1])


def _median_steps(steps, budget):
    """Median over seeds, counting a run that never reached the threshold as beyond the budget."""
    vals = sorted(v if v is not None else float("inf") for v in steps)
    m = vals[len(vals) // 2] if len(vals) % 2 else (vals[len(vals) // 2 - 1] + vals[len(vals) // 2]) / 2
    return f"> {budget}" if m == float("inf") else f"{m:g}"


def main(argv=None):
    args = parse_args(argv)
    _common.apply_threads(args)
    test = tasks.adding_problem(1000, args.T, generator=torch.Generator().manual_seed(12345))
    t0 = time.perf_counter()
    results = [train_one(r, seed, args, test) for r in args.r_values for seed in range(args.seeds)]
    total = time.perf_counter() - t0
    print(f"\nadding problem T = {args.T}: H = {args.hidden}, gamma = {args.gamma}, {args.nonlinearity}, Adam "
          f"lr = {args.lr}, batch {args.batch}, budget {args.max_steps} steps, threshold RMS {args.threshold}; "
          f"predicting the mean gives RMS {tasks.adding_baseline_rms():.3f}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print(f"| r | regime | steps to RMS < {args.threshold:g}, per seed | median | best test RMS, per seed "
          f"| wall time (s) |")
    print("|---|---|---|---|---|---|")
    for r in args.r_values:
        rows = [res for res in results if res["r"] == r]
        steps = [res["steps_to_threshold"] for res in rows]
        shown = ", ".join(str(v) if v is not None else f">{res['steps_run']}" for v, res in zip(steps, rows))
        best = ", ".join(f"{res['best_rms']:.4f}" for res in rows)
        print(f"| {r:g} | {rows[0]['regime']} | {shown} | {_median_steps(steps, args.max_steps)} | {best} | "
              f"{sum(res['wall_time_s'] for res in rows):.0f} |")
    print(f"\ntotal wall time {total:.0f} s\n\nLyapunov exponents of the layer on 4 test sequences (QR method), "
          f"mean over seeds; log r is the prediction at initialisation:\n")
    print("| r | log r | lambda_max before | lambda_max after | mean lambda before | mean lambda after |")
    print("|---|---|---|---|---|---|")
    for r in args.r_values:
        rows = [res for res in results if res["r"] == r]
        m = {k: sum(res[k] for res in rows) / len(rows) for k in
             ("lambda_max_before", "lambda_max_after", "lambda_mean_before", "lambda_mean_after")}
        print(f"| {r:g} | {math.log(r):+.5f} | {m['lambda_max_before']:+.5f} | {m['lambda_max_after']:+.5f} | "
              f"{m['lambda_mean_before']:+.5f} | {m['lambda_mean_after']:+.5f} |")
    meta = {k: v for k, v in vars(args).items() if k != "out"}
    meta.update(torch=torch.__version__, threads=torch.get_num_threads(), total_wall_time_s=total,
                baseline_rms=tasks.adding_baseline_rms())
    _common.save(args.out, meta, results, lambda: plot(results, args))
    return results


def plot(results, args):
    plt = _common.pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.8))
    colors = dict(zip(args.r_values, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for r in args.r_values:
        rows = [res for res in results if res["r"] == r]
        steps = [res["steps_to_threshold"] for res in rows]
        lab = f"r = {r:g} ({rows[0]['regime']}): median {_median_steps(steps, args.max_steps)} steps"
        for i, res in enumerate(rows):
            ax.plot(res["steps"], res["test_rms"], "-", lw=1.2, color=colors[r], alpha=0.85,
                    label=lab if i == 0 else None)
    ax.axhline(args.threshold, color="gray", ls=":", lw=1, label=f"RMS {args.threshold:g} (paper's MP)")
    ax.axhline(tasks.adding_baseline_rms(), color="gray", ls="--", lw=0.8, label="predict the mean")
    ax.set_yscale("log")
    ax.set(xlabel="training step", ylabel="test RMS error",
           title=f"Adding problem T = {args.T}: H = {args.hidden}, gamma = {args.gamma:g}, "
                 f"{args.nonlinearity}, Adam lr {args.lr:g}, {args.seeds} seed{'s' if args.seeds != 1 else ''}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
