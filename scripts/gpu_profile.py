"""One forward + backward of one FusedWCRNN layer per CUDA path, for Nsight Compute (tier 1's `profile` step).

    ncu --section SpeedOfLight ... -k regex:chain_ python scripts/gpu_profile.py --shape S1 --paths regs,tiled
    python scripts/gpu_profile.py --dry-run        # CPU: the same calls through the CUDA emulator

Each path runs once, without warm-up, so that the first kernel launches ncu profiles (its --launch-count) are
the forward and the backward chain of each path, in the order of --paths. The layer is the benchmarks' own
(benchmarks/bench_config.py layer_call: default residual, inputs, weights and biases requiring grad). What the
report is for: where the time of a step goes (issue slots, warp stalls: barrier, shared memory, long
scoreboard; shared-memory throughput) in the register path against the tiled register path (which reads a
quarter of its state words from shared memory) at the shapes where cuDNN
is faster in float32.
"""
from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "benchmarks"), os.path.join(REPO, "scripts"), os.path.join(REPO, "tests")]

import torch  # noqa: E402

from bench_config import SHAPES, layer_call  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="S1", choices=sorted(SHAPES))
    ap.add_argument("--paths", default="regs,tiled")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    T, B, I, H = SHAPES[args.shape]
    backend, device = "cuda", "cuda"
    if args.dry_run:
        from gpu_smoke import setup_backend
        backend, device = setup_backend("cuda", True)
        T = min(T, 4)
    for path in [p.strip() for p in args.paths.split(",") if p.strip()]:
        fn = layer_call(f"{backend}:{path}", "forward+backward", T, B, I, H, device, getattr(torch, args.dtype))
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        print(f"profiled: {args.shape} (T={T}, B={B}, H={H}) {args.dtype} path={path}", flush=True)


if __name__ == "__main__":
    main()
