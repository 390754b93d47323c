"""Where the weak-coupling prediction holds: the leading Lyapunov exponent against log rho(R) over gamma.

    python examples/weak_coupling_limit.py            # five residuals x 10 gammas: about a minute on 1 core
    python examples/weak_coupling_limit.py --quick    # the CI smoke run (seconds)

For residuals of growing non-normality (a scalar, a rotation, Orhan & Pitkow's feed-forward chain with
a diagonal, and their chain with feedback at two sizes) the leading Lyapunov exponent of the WCRNN chain
x_t = R x_{t-1} + gamma tanh(W_hh x_{t-1} + W_ih s_t + b) (nn.RNN's default W_hh, W_ih, b; adding-problem
inputs s_t) is measured by the QR method for gamma = 10^-1 .. 10^-10 and compared with

* the paper's prediction log rho(R) (``dynamics.residual_eigenvalues``: exact for these structures), and
* the pseudospectral bound log rho_eps(R), eps = gamma ||W_hh||_2 (``dynamics.pseudospectral_radius``):
  every step Jacobian R + diag(gamma tanh') W_hh is a perturbation of R of at most that size, and
  rho_eps is the farthest an eigenvalue of such a (constant) perturbation can go.

Prints a table and the non-normality of each residual (``dynamics.nonnormality``), writes a PNG and JSON.
"""
from __future__ import annotations

import argparse
import math
import time

import torch

import _common  # noqa: E402  (examples/_common.py: a source checkout's package first)

from wcrnn_kernels import dynamics, init, tasks  # noqa: E402
from wcrnn_kernels.residual import RES_DENSE  # noqa: E402

F64 = torch.float64


def residuals(quick):
    H1, H2 = (8, 12) if quick else (16, 32)
    g = torch.Generator().manual_seed(3)
    rho, th = init.rotational_residual(H1, rho=0.9, theta="uniform", generator=g, dtype=F64)
    return [
        ("scalar r=0.9", 0.9 * torch.eye(H1, dtype=F64)),
        ("rotational rho=0.9", init.residual_matrix("rotational", H1, rho, th, dtype=F64)),
        (f"chain alpha=0.99 diag=0.9 H={H1}", init.chain_matrix(H1, alpha=0.99, diag=0.9, dtype=F64)),
        (f"fbchain alpha=0.99 beta=0.04 H={H1}", init.fbchain_matrix(H1, alpha=0.99, beta=0.04, dtype=F64)),
        (f"fbchain alpha=0.99 beta=0.04 H={H2}", init.fbchain_matrix(H2, alpha=0.99, beta=0.04, dtype=F64)),
    ]


def leading_exponent(R, gamma, T, warmup, B, seed):
    H = R.shape[0]
    torch.manual_seed(seed)
    rnn = torch.nn.RNN(2, H)  # nn.RNN's default init for W_hh, W_ih and the biases
    w_hh = rnn.weight_hh_l0.detach().to(F64)
    x, _ = tasks.adding_problem(B, T, generator=torch.Generator().manual_seed(seed), dtype=F64)
    u = (x.transpose(0, 1) @ rnn.weight_ih_l0.detach().to(F64).t()
         + (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach().to(F64))
    lam = dynamics.lyapunov_spectrum_chain(u, torch.zeros(B, H, dtype=F64), w_hh, RES_DENSE, R, gamma,
                                           "tanh", 1, warmup=warmup, backend="torch")
    return lam[:, 0], w_hh


def gamma_where_prediction_holds(row, gammas, tol=0.01):
    """The largest gamma of the grid below which (inclusive) every measured lambda_1 is within tol of
    log rho(R); None if there is none."""
    best = None
    for g in sorted(gammas, reverse=True):
        if all(abs(sum(m) / len(m) - row["log_rho"]) < tol
               for gg, m in zip(gammas, row["measured"]) if gg <= g):
            best = g
            break
    return best


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, default=3000, help="steps of the QR method")
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--batch", type=int, default=2, help="input sequences (one exponent each)")
    p.add_argument("--gammas", default="1e-1,1e-2,1e-3,1e-4,1e-5,1e-6,1e-7,1e-8,1e-9,1e-10")
    _common.add_threads_argument(p)
    p.add_argument("--quick", action="store_true", help="tiny run for CI")
    p.add_argument("--out", default=None, help="PNG path (default examples/results/weak_coupling_limit.png; "
                   "with --quick examples/results/quick/)")
    a = p.parse_args(argv)
    if a.out is None:
        a.out = _common.default_out("weak_coupling_limit.png", a.quick)
    if a.quick:
        a.T, a.warmup, a.gammas = 400, 100, "1e-1,1e-3,1e-6"
    return a


def main(argv=None):
    a = parse_args(argv)
    _common.apply_threads(a)
    gammas = [float(v) for v in a.gammas.split(",")]
    t0 = time.perf_counter()
    rows = []
    for name, R in residuals(a.quick):
        ev = dynamics.residual_eigenvalues(R)
        log_rho = math.log(float(ev.values.abs().max()))
        nn_ = dynamics.nonnormality(R)
        meas, bound = [], []
        for gm in gammas:
            lam, w_hh = leading_exponent(R, gm, a.T, a.warmup, a.batch, seed=0)
            eps = gm * float(torch.linalg.matrix_norm(w_hh, 2))
            ps = max(dynamics.pseudospectral_radius(R, eps), float(ev.values.abs().max()) + eps)
            meas.append(lam.tolist())
            bound.append(math.log(ps))
        rows.append(dict(name=name, H=R.shape[0], log_rho=log_rho, method=ev.method, henrici=nn_.henrici,
                         eig_condition=nn_.eig_condition, transient_growth=nn_.transient_growth,
                         gammas=gammas, measured=meas, log_pseudospectral_radius=bound))
    wall = time.perf_counter() - t0

    print(f"\nleading Lyapunov exponent (mean over {a.batch} input sequences; T = {a.T}, warm-up {a.warmup}, "
          f"tanh, nn.RNN default weights) against log rho(R) and log rho_eps(R), eps = gamma ||W_hh||_2\n")
    print("| residual | H | log rho(R) | eig. condition | transient growth | "
          + " | ".join(f"gamma={g:.0e}" for g in gammas) + " |")
    print("|---|---|---|---|---|" + "---|" * len(gammas))
    for r in rows:
        cells = [f"{sum(m) / len(m):+.4f} ({b:+.3f})" for m, b in zip(r["measured"], r["log_pseudospectral_radius"])]
        print(f"| {r['name']} | {r['H']} | {r['log_rho']:+.4f} | {r['eig_condition']:.2g} | "
              f"{r['transient_growth']:.2g} | " + " | ".join(cells) + " |")
    print("\ncells: measured lambda_1 (log rho_eps bound)")
    for r in rows:
        r["gamma_holds"] = gamma_where_prediction_holds(r, gammas)
        g = r["gamma_holds"]
        print(f"{r['name']}: |lambda_1 - log rho(R)| < 0.01 for every gamma <= "
              f"{'(none of the grid)' if g is None else f'{g:g}'}")
    print(f"\nwall time {wall:.0f} s")
    meta = dict(T=a.T, warmup=a.warmup, batch=a.batch, nonlinearity="tanh", torch=torch.__version__,
                wall_time_s=wall, quick=a.quick)
    _common.save(a.out, meta, rows, lambda: plot(rows, a.out))
    return rows


def plot(rows, out):
    plt = _common.pyplot()

    fig, ax = plt.subplots(figsize=(7.5, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for c, r in zip(colors, rows):
        m = [sum(v) / len(v) for v in r["measured"]]
        ax.plot(r["gammas"], m, "o-", color=c, label=f"{r['name']} (kappa {r['eig_condition']:.1g})")
        ax.plot(r["gammas"], r["log_pseudospectral_radius"], ":", color=c, lw=1.2)
        ax.axhline(r["log_rho"], color=c, ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set(xlabel="coupling gamma", ylabel="leading Lyapunov exponent (nats / step)",
           title="measured (o-), log rho(R) (--), pseudospectral bound log rho_eps (:)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
