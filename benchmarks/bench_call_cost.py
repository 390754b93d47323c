"""Where the host time of one FusedWCRNN call goes, layer by layer, on CPU (the step-by-step benchmark's
question: `test_step_by_step` in test_bench_wcrnn.py measures the whole call against nn.RNN).

    python benchmarks/bench_call_cost.py [--threads 1] [--repeats 7]

Per line: the best of `--repeats` means over 2000 calls (no grad, float32), in microseconds:
  kernel T=1,2,8   the C++ op torch.ops.wcrnn_C.chain_fwd alone; T=1 minus the per-step increase is its fixed
                   cost (mostly packing W_hh once per call)
  impl             the op's implementation (backend resolution + the C++ op): what the eager fast path calls
  custom op        the same through the torch.library custom op's dispatch (what traced graphs call)
  wcrnn_chain      the public op: argument checks, then the fast path
  module           a whole FusedWCRNN(I, H) call with a state, T = 1
  nn.RNN           nn.RNN(I, H) with a state, T = 1
"""
import argparse
import time

import torch

from wcrnn_kernels import FusedWCRNN, ops, wcrnn_chain
from wcrnn_kernels.backends import get_backend


def best_us(fn, calls=2000, repeats=7):
    for _ in range(100):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--shapes", default="1x128,32x128,32x256,1x512", help="BxH, comma-separated")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ok, why = get_backend("cpp").availability()
    if not ok:
        raise SystemExit(f"the cpp backend is not available: {why}")
    I = 32
    print(f"torch {torch.__version__}, {args.threads} thread(s), float32, microseconds per call (best of "
          f"{args.repeats})")
    print(f"{'B':>4} {'H':>4} {'kernel T=1':>10} {'T=2':>7} {'T=8':>7} {'impl':>7} {'custom op':>9} "
          f"{'wcrnn_chain':>11} {'module':>7} {'nn.RNN':>7}")
    torch.manual_seed(0)
    for shape in args.shapes.split(","):
        B, H = (int(v) for v in shape.split("x"))
        x0 = torch.zeros(B, H)
        w = torch.randn(H, H) / H ** 0.5
        res, gamma = torch.full((H,), 0.9), torch.full((H,), 0.1)
        kernel = []
        with torch.no_grad():
            for T in (1, 2, 8):
                u = torch.randn(T, B, H)
                kernel.append(best_us(lambda: torch.ops.wcrnn_C.chain_fwd(u, x0, w, res, gamma, None, 0, 0, False),
                                      repeats=args.repeats))
            u = torch.randn(1, B, H)
            args_op = (u, x0, w, res, gamma, None, 0, 0, "auto", False)
            impl = best_us(lambda: ops._chain_fwd_impl(*args_op), repeats=args.repeats)
            custom = best_us(lambda: ops._chain_fwd(*args_op), repeats=args.repeats)
            public = best_us(lambda: wcrnn_chain(u, x0, w, 0, res, gamma), repeats=args.repeats)
            m, r = FusedWCRNN(I, H), torch.nn.RNN(I, H)
            x, h = torch.randn(1, B, I), torch.zeros(1, B, H)
            module = best_us(lambda: m(x, h), repeats=args.repeats)
            rnn = best_us(lambda: r(x, h), repeats=args.repeats)
        print(f"{B:>4} {H:>4} {kernel[0]:>10.1f} {kernel[1]:>7.1f} {kernel[2]:>7.1f} {impl:>7.1f} {custom:>9.1f} "
              f"{public:>11.1f} {module:>7.1f} {rnn:>7.1f}")


if __name__ == "__main__":
    main()
