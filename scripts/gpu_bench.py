"""Tier-1 benchmark lines: one layer per (implementation, mode, dtype, shape), timed with CUDA events.

    python scripts/gpu_bench.py --out bench.jsonl                       # S1-S4, G4; float32, bfloat16
    python scripts/gpu_bench.py --prewarm                               # compile the Triton variants only
    python scripts/gpu_bench.py --dry-run --out bench.jsonl             # CPU plumbing check (tiny T)

Implementations: ``nn.RNN`` (cuDNN, with torch's default ``cudnn.allow_tf32 = True``), ``nn.RNN-noTF32``,
``cuda`` and ``triton`` (``FusedWCRNN(backend=...)`` with its default
residual, scalar r = 1, gamma = 0.01: the same layer the pytest-benchmark harness in benchmarks/ times), and
``gemm-floor`` (forward only: T dependent (B x H) @ (H x H) products and nothing else), and
``<backend>@<precision>`` (a backend under ``torch.set_float32_matmul_precision``; benchmarks/bench_config.py),
``cuda:<path>`` (the cuda backend on a forced path, e.g. ``cuda:block``; a path that cannot run the shape is
recorded as refused), ``<backend>/chain`` (the chain alone on a precomputed input projection: what the layer
costs beyond it is the module's), ``<backend>+lean`` (``save_preactivations=False``: the backward recomputes the
input projection and the pre-activations). ``forward`` runs under
no_grad; ``forward+backward`` backpropagates one upstream gradient into output and h_n with the input, the
weights and the biases requiring grad. The Triton kernels run their default configurations here
(WCRNN_TRITON_AUTOTUNE=0 unless the caller sets it), so every line costs at most two compiles; tier 3 runs
the autotuned harness.

Memory (forward+backward lines of nn.RNN and the plain backends, +lean included): after the timing, one more
call split into its forward and backward, with the GPU allocator's counters: ``kept_mib`` (what the forward
leaves allocated for the backward, the outputs included) and ``peak_mib`` (the most allocated at once), MiB
above what was allocated before (memory_of).

Timing (METHOD.md): two warm-up calls (compiles, cuDNN plans), then repeated calls, each bracketed by CUDA
events, until 0.25 s or 40 calls (at least 5); the median is reported with the min and max. Inputs are random
normal, never zeros. One JSON line per measurement is appended to --out as soon as it is taken (a metadata
line first: device, versions, commit); the table at the end gives ms per call, microseconds per step and the
ratio nn.RNN time / best GPU backend time (> 1: faster than cuDNN).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if "--dry-run" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("WCRNN_TRITON_AUTOTUNE", "0")
sys.path[:0] = [REPO, os.path.join(REPO, "benchmarks"), os.path.join(REPO, "scripts")]

import torch  # noqa: E402

from bench_config import SHAPES, layer_call  # noqa: E402
from wcrnn_kernels.backends import get_backend  # noqa: E402

MODES = ("forward", "forward+backward")


def commit() -> str:
    env = os.environ.get("WCRNN_COMMIT")
    if env:
        return env
    try:
        return subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def meta(device):
    m = {"meta": True, "torch": torch.__version__, "cuda": torch.version.cuda, "commit": commit(),
         "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        import triton
        m["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001 - reporting only
        m["triton"] = f"unavailable ({type(e).__name__})"
    if device == "cuda":
        m["device"] = torch.cuda.get_device_name()
        m["cudnn"] = torch.backends.cudnn.version()
        m["sms"] = torch.cuda.get_device_properties(0).multi_processor_count
        m["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    else:
        m["device"] = "cpu (dry run)"
    m["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    m["autotune"] = os.environ.get("WCRNN_TRITON_AUTOTUNE")
    return m


class Timer:
    """(wall, host) seconds of one call of fn. wall: CUDA events around it on a GPU (the device idle before it),
    perf_counter on the CPU. host: perf_counter until fn returns, i.e. on a GPU until the host has enqueued
    all of the call's work without waiting for it. host close to wall: the call is bound by its host time
    (Python, dispatch, launches), which a faster kernel cannot shorten."""

    def __init__(self, device):
        self.cuda = device == "cuda"

    def __call__(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            t0 = time.perf_counter()
            fn()
            host = time.perf_counter() - t0
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e-3, host
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
        return wall, wall


def build(impl, mode, shape, dtype, device, T_override=None):
    """The callable that runs one measurement (the harness's own, benchmarks/bench_config.py), and (T, B, I, H)."""
    T, B, I, H = SHAPES[shape]
    if T_override:
        T = min(T, T_override)
    return layer_call(impl, mode, T, B, I, H, device, dtype), (T, B, I, H)


def backend_of(impl):
    """The backend an implementation name runs: "cuda" for "cuda:block", "cuda/chain", "cuda@high", "cuda+lean"."""
    return re.split(r"[@:/+]", impl, maxsplit=1)[0]


def predicted_refusal(e, impl, mode, dtype_name, H):
    """The planner refused a forced CUDA path ("cuda:block") where sanitize_cases.cuda_path_refused predicts it
    (gpu_smoke.is_refusal) for the layer's residual (scalar) in its dtype or, forward+backward, in float32, the
    backward's dtype for half models. Any other error stays an error."""
    if ":" not in impl:
        return False
    from gpu_smoke import is_refusal
    path = impl.split(":", 1)[1]
    dtypes = [dtype_name] + (["float32"] if mode != "forward" and dtype_name in ("float16", "bfloat16") else [])
    return any(is_refusal(e, path, "scalar", H, d) for d in dtypes)


def memory_of(fn, device):
    """(kept, peak) MiB of one forward+backward of a layer_call closure on the GPU, from torch's allocator: kept,
    what the forward leaves allocated for the backward (activations, the outputs included); peak, the most
    allocated at once during forward and backward; both above what was allocated before (the parameters, the
    input, the upstream gradients, and the parameters' .grad from earlier calls). None for closures without
    halves (the wrapped variants: cuda:<path>, @<precision>, /chain). On the CPU (dry run) the same steps with
    the counters at 0, so that the plumbing runs."""
    if not hasattr(fn, "forward"):
        return None
    cuda = device == "cuda"
    allocated = torch.cuda.memory_allocated if cuda else (lambda: 0)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = allocated()
    outs = fn.forward()
    sync()
    kept = allocated() - before
    fn.backward(outs)
    del outs
    sync()
    peak = (torch.cuda.max_memory_allocated() if cuda else 0) - before
    return kept / 2 ** 20, peak / 2 ** 20


def measure(fn, timer, min_reps, max_reps, budget_s):
    """(wall times, host times) of repeated calls, after two unmeasured ones."""
    timer(fn)
    timer(fn)
    walls, hosts = [], []
    while len(walls) < min_reps or (len(walls) < max_reps and sum(walls) < budget_s):
        wall, host = timer(fn)
        walls.append(wall)
        hosts.append(host)
    return walls, hosts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="JSON lines, appended")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--shapes", default="S1,S2,S3,S4,G4")
    ap.add_argument("--impls", default="nn.RNN,cuda,triton,gemm-floor")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--prewarm", action="store_true", help="run each Triton / CUDA variant once at T = 2, no output")
    ap.add_argument("--tag", default="", help="recorded in every line (e.g. an environment variable that was set)")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()

    device = "cpu" if args.dry_run else "cuda"
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    if args.dry_run:
        # the same plumbing on CPU: cuda -> the emulator, triton -> the interpreter, a few steps
        os.environ.update({"WCRNN_EMU_SMS": "132", "WCRNN_EMU_SMEM_OPTIN": "232448"})
        if any(backend_of(i) == "cuda" for i in impls):
            from gpu_smoke import setup_backend
            emu = setup_backend("cuda", True)[0]
            impls = [emu + i[4:] if backend_of(i) == "cuda" else i for i in impls]
    T_cap = 2 if args.prewarm else (4 if args.dry_run else None)
    timer = Timer(device)
    reps = (1, 1, 0.0) if (args.dry_run or args.prewarm) else (5, 40, 0.25)
    rows = []
    if args.out and not args.prewarm:
        with open(args.out, "a") as f:
            f.write(json.dumps(meta(device)) + "\n")
    for dt_name in args.dtypes.split(","):
        dtype = getattr(torch, dt_name.strip())
        for shape in args.shapes.split(","):
            shape = shape.strip()
            for mode in args.modes.split(","):
                for impl in impls:
                    if impl == "gemm-floor" and mode != "forward":
                        continue
                    if args.prewarm and impl in ("nn.RNN", "nn.RNN-noTF32", "gemm-floor"):
                        continue
                    rec = dict(impl=impl, mode=mode if impl != "gemm-floor" else "floor", dtype=dt_name,
                               shape=shape, tag=args.tag)
                    t0 = time.perf_counter()
                    try:
                        if impl not in ("nn.RNN", "nn.RNN-noTF32", "gemm-floor"):
                            b = get_backend(backend_of(impl))
                            ok, why = b.availability()
                            why = why if not ok else b.supports(torch.device(device), dtype, SHAPES[shape][3])
                            if not ok or why is not None:
                                raise RuntimeError(f"backend {impl!r} does not run this: {why}")
                        fn, (T, B, I, H) = build(impl, mode, shape, dtype, device, T_cap)
                        times, hosts = measure(fn, timer, *reps)
                        med = statistics.median(times)
                        rec.update(status="ok", T=T, B=B, I=I, H=H, median_ms=med * 1e3, min_ms=min(times) * 1e3,
                                   max_ms=max(times) * 1e3, reps=len(times), us_per_step=med * 1e6 / T,
                                   tokens_per_s=T * B / med, host_ms=statistics.median(hosts) * 1e3)
                        mem = memory_of(fn, device) if mode == "forward+backward" and not args.prewarm else None
                        if mem is not None:
                            rec.update(kept_mib=mem[0], peak_mib=mem[1])
                    except Exception as e:  # noqa: BLE001 - recorded, the sweep goes on
                        refused = predicted_refusal(e, impl, mode, dt_name, SHAPES[shape][3])
                        rec.update(status="refused" if refused else "error",
                                   message=f"{type(e).__name__}: {str(e).strip()[:300]}")
                    rec["seconds"] = round(time.perf_counter() - t0, 2)
                    rows.append(rec)
                    if args.out and not args.prewarm:
                        with open(args.out, "a") as f:
                            f.write(json.dumps(rec) + "\n")
                    if rec["status"] == "ok":
                        mem = f", kept {rec['kept_mib']:.1f} MiB, peak {rec['peak_mib']:.1f} MiB" if "kept_mib" in rec else ""
                        print(f"{args.tag}{' ' if args.tag else ''}{dt_name:8} {shape} {rec['mode']:16} {impl:13} {rec['median_ms']:10.3f} ms "
                              f"{rec['us_per_step']:8.2f} us/step, host {rec['host_ms']:.3f} ms{mem} ({rec['reps']} reps, {rec['seconds']} s)",
                              flush=True)
                    else:
                        print(f"{dt_name:8} {shape} {rec['mode']:16} {impl:13} {rec['status'].upper()} {rec['message']}",
                              flush=True)
    if not args.prewarm and not args.tag:
        print_table(rows)
    sys.exit(1 if any(r["status"] == "error" for r in rows) else 0)


def print_table(rows):
    by = {(r["dtype"], r["shape"], r["mode"], r["impl"]): r for r in rows if r["status"] == "ok"}
    keys = sorted({(r["dtype"], r["shape"], r["mode"]) for r in rows if r["mode"] != "floor"})
    gpu = [i for i in ("cuda", "cuda:regs", "triton", "cuda-emulated", "cuda-emulated:regs") if any(k[3] == i for k in by)]
    print("\nms per call (median); ratio = nn.RNN / best of " + "/".join(gpu) + " (> 1: faster than nn.RNN)")
    print(f"{'dtype':8} {'shape':5} {'mode':16} {'nn.RNN':>9} " + " ".join(f"{i:>9}" for i in gpu)
          + f" {'floor':>9} {'ratio':>6} {'us/step':>8}")
    for dt, shape, mode in keys:
        base = by.get((dt, shape, mode, "nn.RNN"))
        cand = [by[(dt, shape, mode, i)] for i in gpu if (dt, shape, mode, i) in by]
        best = min(cand, key=lambda r: r["median_ms"]) if cand else None
        floor = by.get((dt, shape, "floor", "gemm-floor"))

        def ms(r):
            return f"{r['median_ms']:9.3f}" if r else f"{'-':>9}"
        ratio = f"{base['median_ms'] / best['median_ms']:6.2f}" if base and best else f"{'-':>6}"
        us = f"{best['us_per_step']:8.2f}" if best else f"{'-':>8}"
        print(f"{dt:8} {shape:5} {mode:16} {ms(base)} " + " ".join(ms(by.get((dt, shape, mode, i))) for i in gpu)
              + f" {ms(floor) if mode == 'forward' else f'{chr(32) * 9}'} {ratio} {us}")


if __name__ == "__main__":
    main()
