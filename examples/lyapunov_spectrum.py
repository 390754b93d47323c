"""Lyapunov spectra of WCRNNs across the paper's residual grid, beside the prediction log|lambda(R)|.

    python examples/lyapunov_spectrum.py            # H = 64, T = 1000 (about a minute on 2 CPU cores)
    python examples/lyapunov_spectrum.py --quick    # the CI smoke run (seconds)

For every r in {0.95, 0.995, 1, 1.0025, 1.01} a FusedWCRNN (nn.RNN's default weights, gamma = 0.01) is
driven by adding-problem inputs; its full spectrum is computed by the QR method, one spectrum per input
sequence. Then a heterogeneous (diagonal) residual with memory time scales from 10 to 1000 steps and a
rotational residual. Writes a PNG (panel A: the r grid, panel B: diagonal and rotational) and a JSON with
the numbers, and prints a markdown table.
"""
from __future__ import annotations

import argparse
import math
import time

import torch
from tqdm import tqdm

import _common  # noqa: E402  (examples/_common.py: a source checkout's package first)

from wcrnn_kernels import init, tasks  # noqa: E402
from wcrnn_kernels.dynamics import lyapunov_spectrum, residual_log_spectrum  # noqa: E402
from wcrnn_kernels.module import FusedWCRNN  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=64, help="hidden size H (even)")
    p.add_argument("--steps", type=int, default=1000, help="length T of the driving sequences")
    p.add_argument("--warmup", type=int, default=200, help="QR steps before exponents are accumulated")
    p.add_argument("--batch", type=int, default=4, help="number of driving sequences (one spectrum each)")
    p.add_argument("--gamma", type=float, default=init.PAPER_GAMMA, help="coupling constant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", help="FusedWCRNN backend for the state trajectory")
    _common.add_threads_argument(p)
    p.add_argument("--quick", action="store_true", help="tiny run for CI (H = 32, T = 300)")
    p.add_argument("--out", default=None, help="PNG path (default examples/results/lyapunov_spectrum.png; with "
                   "--quick examples/results/quick/)")
    a = p.parse_args(argv)
    if a.out is None:
        a.out = _common.default_out("lyapunov_spectrum.png", a.quick)
    if a.quick:
        a.hidden, a.steps, a.warmup, a.batch = 32, 300, 50, 2
    return a


def spectrum(model, args, gen):
    x, _ = tasks.adding_problem(args.batch, args.steps, generator=gen, dtype=torch.float64)
    lam = lyapunov_spectrum(model, x, warmup=args.warmup)  # (B, H)
    return lam, residual_log_spectrum(model)


def main(argv=None):
    args = parse_args(argv)
    _common.apply_threads(args)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    H, F64 = args.hidden, torch.float64
    kw = dict(gamma=args.gamma, batch_first=True, dtype=F64, backend=args.backend)
    runs = [(f"scalar r={r:g}", FusedWCRNN(2, H, residual="scalar", r=r, **kw)) for r in init.PAPER_R_GRID]
    r_het = init.heterogeneous_residual(H, "loguniform", 10.0, 1000.0, generator=gen, dtype=F64)
    runs.append(("diagonal tau~logU(10,1000)", FusedWCRNN(2, H, residual="diagonal", r=r_het, **kw)))
    rho = 0.97 + 0.04 * torch.rand(H // 2, generator=gen, dtype=F64)
    rho, theta = init.rotational_residual(H, rho, "uniform", generator=gen, dtype=F64)
    runs.append(("rotational rho~U(0.97,1.01)", FusedWCRNN(2, H, residual="rotational", r=rho, theta=theta, **kw)))

    results = []
    t0 = time.perf_counter()
    for name, model in tqdm(runs, desc="Lyapunov spectra", unit="net"):
        lam, pred = spectrum(model, args, gen)
        dev = (lam - pred).abs()
        results.append(dict(name=name, exponents_mean=lam.mean(0).tolist(), predicted=pred.tolist(),
                            max_abs_dev=dev.max().item(),
                            mean_dev=(lam.mean(-1) - pred.mean()).abs().max().item(),
                            lambda_max=lam[:, 0].mean().item(), lambda_min=lam[:, -1].mean().item()))
    wall = time.perf_counter() - t0

    print(f"\nH = {H}, T = {args.steps} (warm-up {args.warmup}), gamma = {args.gamma}, {args.batch} driving "
          f"sequences, wall time {wall:.1f} s\n")
    # (no bare "|" inside cells: the table is pasted into markdown)
    print("| network | predicted log-moduli of eig(R) | measured lambda_1 .. lambda_H | max_i abs(lambda_i - pred_i) "
          "| abs(mean lambda - mean pred) |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['name']} | {min(r['predicted']):+.5f} .. {max(r['predicted']):+.5f} | "
              f"{r['lambda_max']:+.5f} .. {r['lambda_min']:+.5f} | {r['max_abs_dev']:.2e} | {r['mean_dev']:.2e} |")

    meta = dict(hidden=H, steps=args.steps, warmup=args.warmup, batch=args.batch, gamma=args.gamma,
                seed=args.seed, quick=args.quick, wall_time_s=wall, torch=torch.__version__)
    _common.save(args.out, meta, results, lambda: plot(results, args, wall))
    return results


def plot(results, args, wall):
    plt = _common.pyplot()

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = ("tab:blue", "tab:cyan", "black", "tab:orange", "tab:red")
    idx = range(1, args.hidden + 1)
    for c, r, res in zip(colors, init.PAPER_R_GRID, results):
        ax1.plot(idx, res["exponents_mean"], "o", ms=3, color=c, label=f"r = {r:g}")
        ax1.axhline(math.log(r), color=c, ls="--", lw=1)
    ax1.set(xlabel="exponent index i", ylabel="Lyapunov exponent (nats / step)",
            title=f"A. scalar residuals, gamma = {args.gamma:g} (dashed: log r)")
    ax1.legend(fontsize=8, loc="lower left")
    for res, c in zip(results[len(init.PAPER_R_GRID):], ("tab:green", "tab:purple")):
        ax2.plot(idx, res["exponents_mean"], "o", ms=3, color=c, label=res["name"] + " (measured)")
        ax2.plot(idx, res["predicted"], "-", color=c, lw=1, label="sorted log|eig R|")
    ax2.set(xlabel="exponent index i", ylabel="Lyapunov exponent (nats / step)",
            title="B. heterogeneous and rotational residuals")
    ax2.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"WCRNN Lyapunov spectra by the QR method: H = {args.hidden}, T = {args.steps}, "
                 f"{args.batch} input sequences ({wall:.0f} s)", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
