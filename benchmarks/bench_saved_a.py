"""What saving the pre-activations costs the forward and saves the backward, per shape (C++ backend, CPU).

    python benchmarks/bench_saved_a.py [--repeats N]

Since commit 121783b the forward writes a_t = u_t + W_hh x_{t-1} for the backward (when a backward can
follow) instead of the backward recomputing all a_t with one (T*B, H) x (H, H) GEMM. This times, in one
process and interleaved (best of N, so that this shared VM's noise cancels as far as it can):
  fwd save_a / fwd no save:  the C++ forward chain with and without writing a (a fresh (T, B, H) buffer);
  recompute GEMM + alloc:    what the backward ran before: a fresh (T, B, H) buffer and the two addmm calls.
The backward's net saving is (recompute GEMM + alloc) - (fwd save_a - fwd no save). Milliseconds.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

import torch  # noqa: E402

from wcrnn_kernels.backends import get_backend  # noqa: E402

SHAPES = {"S1": (784, 32, 1, 128), "S2": (1024, 16, 32, 64), "S3": (1024, 64, 32, 256), "S4": (100, 100, 2, 128)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    be = get_backend("cpp")
    ok, why = be.availability()
    if not ok:
        sys.exit(f"the cpp backend is not available: {why}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; best of {args.repeats} (S3: of "
          f"{max(3, args.repeats // 4)}), ms")
    print(f"{'shape':5s} {'fwd save_a':>11s} {'fwd no save':>12s} {'recompute GEMM + alloc':>23s} {'net saving':>11s}")
    for name, (T, B, _, H) in SHAPES.items():
        g = torch.Generator().manual_seed(0)
        u, out = torch.randn(T, B, H, generator=g), torch.randn(T, B, H, generator=g)
        x0, w = torch.randn(B, H, generator=g), torch.randn(H, H, generator=g) / H ** 0.5
        res, gamma = torch.rand(H, generator=g), torch.rand(H, generator=g)

        def recompute():
            a = torch.empty(T, B, H)
            torch.addmm(u[0], x0, w.t(), out=a[0])
            torch.addmm(u[1:].reshape(-1, H), out[:-1].reshape(-1, H), w.t(), out=a[1:].view(-1, H))
            return a

        fns = {"save": lambda: be.chain_fwd(u, x0, w, 0, res, gamma, None, 0, True),
               "nosave": lambda: be.chain_fwd(u, x0, w, 0, res, gamma, None, 0, False),
               "recompute": recompute}
        best = dict.fromkeys(fns, float("inf"))
        for _ in range(max(3, args.repeats // 4) if name == "S3" else args.repeats):
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                best[k] = min(best[k], time.perf_counter() - t0)
        ms = {k: v * 1e3 for k, v in best.items()}
        net = ms["recompute"] - (ms["save"] - ms["nosave"])
        print(f"{name:5s} {ms['save']:11.2f} {ms['nosave']:12.2f} {ms['recompute']:23.2f} {net:11.2f}")


if __name__ == "__main__":
    main()
