"""What save_preactivations=False costs a training step, on CPU: FusedWCRNN forward + backward with the
pre-activations saved (the default) and recomputed in the backward, interleaved.

    python benchmarks/bench_lean.py [--backend cpp] [--shapes S1,S2,S3,S4] [--rounds 9] [--threads 2]

Each round times every (shape, variant) once, in shuffled order, each timing the median of --calls calls of
benchmarks/bench_config.py's layer_call (the harness's own forward+backward: one layer, float32, the input and
every parameter requiring grad); the table gives the median round in milliseconds and lean / default. The
memory side: benchmarks/bench_memory.py --impls nn.RNN cpp cpp:lean.
"""
import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench_config import SHAPES, layer_call  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="cpp")
    ap.add_argument("--shapes", default="S1,S2,S3,S4")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [s for s in args.shapes.split(",") if s]
    variants = (args.backend, args.backend + "+lean")
    fns = {(s, v): layer_call(v, "forward+backward", *SHAPES[s], "cpu", torch.float32) for s in shapes
           for v in variants}
    for fn in fns.values():  # warm-up: library load, thread pools, first-touch
        fn()
    times = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k in random.sample(list(fns), len(fns)):
            ts = []
            for _ in range(args.calls):
                t0 = time.perf_counter()
                fns[k]()
                ts.append(time.perf_counter() - t0)
            times[k].append(statistics.median(ts) * 1e3)
    print(f"forward+backward ms, median of {args.rounds} interleaved rounds, {torch.get_num_threads()} threads")
    print(f"{'shape':6} {variants[0]:>10} {variants[1]:>12} {'lean/default':>13}")
    for s in shapes:
        d, lean = (statistics.median(times[(s, v)]) for v in variants)
        print(f"{s:6} {d:10.2f} {lean:12.2f} {lean / d:13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
