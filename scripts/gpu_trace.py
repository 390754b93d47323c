"""Where one layer call's time goes, kernel by kernel (tier 1's `trace` step): torch.profiler over a few calls.

    python scripts/gpu_trace.py [--shapes S1,S4] [--impls nn.RNN,cuda] [--modes forward,forward+backward]
    python scripts/gpu_trace.py --dry-run        # CPU: the same plumbing through the CUDA emulator, no kernels

For each (shape, mode, impl), float32, the benchmarks' own layer (benchmarks/bench_config.py layer_call): the
call's time with CUDA events and its host time (until it returned), then the device activities of --calls
profiled calls, per call: how many kernels (and copies / fills) ran, their summed device time, and the
longest ones by name; then the call captured in a CUDA graph and replayed: its device time with no host in it
(what torch.cuda.graphs or torch.compile(mode="reduce-overhead") would leave of the call). Device time well
under the call's time: the device waited (for the host, or between launches); one activity taking most of it:
that one is the cost. The question it answers (issue 11): in run 5
(benchmarks/results/h200-67b95f2-run5-verify) `auto`'s float32 forward was behind cuDNN by 0.13-0.21 ms per call
at S1, S3 and S4 (ahead by 0.06 at S2), and its backward (forward+backward less forward) took 1.1-1.5 ms at
S1, S2 and S4 whatever T (100-1024), cuDNN's 0.57-0.96: is that the chain kernels, the module's other kernels
(input projection, parameter gradients), or time between them?
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "benchmarks"), os.path.join(REPO, "scripts"), os.path.join(REPO, "tests")]

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from bench_config import SHAPES, layer_call  # noqa: E402
from gpu_bench import Timer, backend_of, measure  # noqa: E402


def device_activities(fn, device, calls):
    """[(name, count per call, device us per call)] of the profiled calls' device activities, longest first."""
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(calls):
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", 0) or 0
        if us > 0:
            rows.append((e.key, e.count / calls, us / calls))
    return sorted(rows, key=lambda r: -r[2])


def graph_replay_ms(fn, reps=10):
    """Median ms of one CUDA-graph replay of fn (captured after a warm-up on a side stream): the call's device
    time with no host in it. Its gap to the call's time is what the host costs the call; an error (a kernel
    or op that cannot be captured) is returned as text and fails nothing."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        graph.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)
    except Exception as e:  # noqa: BLE001 -- reported in the trace line, never fatal
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="S1,S4")
    ap.add_argument("--impls", default="nn.RNN,cuda")
    ap.add_argument("--modes", default="forward,forward+backward")
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    device, cuda_name = "cuda", "cuda"
    if args.dry_run:
        from gpu_smoke import setup_backend
        cuda_name, device = setup_backend("cuda", True)
    dtype = torch.float32
    for shape in [s.strip() for s in args.shapes.split(",") if s.strip()]:
        T, B, I, H = SHAPES[shape]
        if args.dry_run:
            T = min(T, 4)
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            for impl in [i.strip() for i in args.impls.split(",") if i.strip()]:
                run = cuda_name + impl[4:] if backend_of(impl) == "cuda" else impl
                fn = layer_call(run, mode, T, B, I, H, device, dtype)
                walls, hosts = measure(fn, Timer(device), 10, 10, 0.0)  # after two unmeasured (warm-up) calls
                wall, host = statistics.median(walls) * 1e3, statistics.median(hosts) * 1e3
                rows = device_activities(fn, device, args.calls)
                n = sum(r[1] for r in rows)
                busy = sum(r[2] for r in rows) / 1e3
                graph = "n/a (no CUDA)" if device != "cuda" else graph_replay_ms(fn)
                graph = f"{graph:.3f} ms" if isinstance(graph, float) else graph
                print(f"trace {shape} (T={T}, B={B}, H={H}) {mode} {impl}: call {wall:.3f} ms, host {host:.3f} ms, "
                      f"{n:.0f} device activities per call, {busy:.3f} ms busy, CUDA graph replay {graph}",
                      flush=True)
                for name, count, us in rows[:args.top]:
                    print(f"    {us:10.1f} us  x{count:<5.1f} {name[:110]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
