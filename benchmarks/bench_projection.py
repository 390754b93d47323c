"""The CPU input projection's training cost by input width I: F.linear against the module's projection
(wcrnn_kernels/module.py, _input_projection), and a whole FusedWCRNN training step with each.

    python benchmarks/bench_projection.py [--threads 2] [--rounds 16] [--widths 1,2,3,4,8,12,16,32]
                                          [--shape 100x100x128] [--dtype float32]

Milliseconds (median of --rounds interleaved rounds), for each I at T x B x H = --shape (default S4's):
  F.linear      u = F.linear(x, w_ih, b), then u.backward(g): the weight gradient as grad^T @ x
  projection    the module's _input_projection, then the same backward: at 2 <= I <= 12, F.linear with the
                weight as a transposed view of a contiguous w_ih^T, so that the weight gradient is x^T @ grad
                (an I x H product)
  step linear   a FusedWCRNN(I, H) training step (forward, then backward of out.sum() + h_n.sum()) with the
                projection forced to F.linear
  step module   the same step as the module runs it
and the ratios F.linear / projection and step linear / step module (> 1: the module's projection is faster).
The input does not require grad (a training step's usual case); --input-grad makes it.
"""
import argparse
import random
import statistics
import time

import torch

import wcrnn_kernels.module as module
from wcrnn_kernels import FusedWCRNN


def median_rounds(fns, rounds, calls):
    """{name: median milliseconds per call over `rounds` interleaved rounds of `calls` calls}. Each round runs
    the columns in a new order: the column that always follows a whole training step measured 1.7x slower than
    the same code in another column (the memory that step gave back to the system?)."""
    times = {name: [] for name in fns}
    names = list(fns)
    for fn in fns.values():
        for _ in range(2):
            fn()
    order = random.Random(0)
    for _ in range(rounds):
        order.shuffle(names)
        for name in names:
            fn = fns[name]
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - t0) / calls * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--widths", default="1,2,3,4,8,12,16,32")
    ap.add_argument("--shape", default="100x100x128", help="TxBxH")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    ap.add_argument("--input-grad", action="store_true", help="the input requires grad too")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    T, B, H = (int(v) for v in args.shape.split("x"))
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.dtype}, T x B x H = {T} x {B} x {H}, "
          f"input grad {args.input_grad}; ms, median of {args.rounds} interleaved rounds of {args.calls} calls")
    cols = ("F.linear", "projection", "ratio", "step linear", "step module", "ratio")
    print(f"{'I':>3} " + " ".join(f"{c:>11}" for c in cols))
    torch.manual_seed(0)
    skinny = module._SKINNY_INPUT
    for I in (int(v) for v in args.widths.split(",")):
        x = torch.randn(T, B, I, dtype=dtype, requires_grad=args.input_grad)
        w = torch.randn(H, I, dtype=dtype, requires_grad=True)
        b = torch.randn(H, dtype=dtype, requires_grad=True)
        g = torch.randn(T, B, H, dtype=dtype)
        m = FusedWCRNN(I, H, dtype=dtype)

        def step():
            out, hn = m(x)
            (out.sum() + hn.sum()).backward()

        def step_linear():
            module._SKINNY_INPUT = range(0)
            try:
                step()
            finally:
                module._SKINNY_INPUT = skinny

        fns = {
            "F.linear": lambda: torch.nn.functional.linear(x, w, b).backward(g),
            "projection": lambda: module._input_projection(x, w, b, I).backward(g),
            "step linear": step_linear,
            "step module": step,
        }
        ms = median_rounds(fns, args.rounds, args.calls)
        row = (ms["F.linear"], ms["projection"], ms["F.linear"] / ms["projection"], ms["step linear"],
               ms["step module"], ms["step linear"] / ms["step module"])
        print(f"{I:>3} " + " ".join(f"{v:>11.3f}" for v in row), flush=True)


if __name__ == "__main__":
    main()
