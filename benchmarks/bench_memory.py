"""Peak memory of one WCRNN layer (forward + backward) per backend, beside nn.RNN, on CPU.

    python benchmarks/bench_memory.py                    # S1-S4, float32: nn.RNN, cpp, torch
    python benchmarks/bench_memory.py --impls nn.RNN cpp reference --shapes S1 S4 --json out.json

How it is measured: every (implementation, shape) runs in a fresh Python process, so nothing cached by an
earlier measurement counts. The process runs with glibc's allocator told to serve every block of 64 KiB or
more by mmap and to trim freed memory at once (MALLOC_MMAP_THRESHOLD_=65536, MALLOC_TRIM_THRESHOLD_=0) and
with MKL's buffer cache off (MKL_DISABLE_FAST_MM=1): freed memory leaves the resident set immediately, so
the resident set follows the bytes really live (otherwise a buffer freed after warm-up stays resident and
the next allocation reuses it unseen, which flatters whichever implementation allocates in a lucky order). The process builds the layer and its input exactly as benchmarks/ does (float32,
input, weights and biases requiring grad, upstream gradients for output and h_n), runs one full forward +
backward as warm-up (library loading, thread pools, first-call allocations), then resets the kernel's
resident-set high-water mark (``echo 5 > /proc/self/clear_refs`` resets VmHWM, Linux >= 4.0), notes the
current resident set, runs forward + backward once more and reads VmHWM. The reported peak is VmHWM minus
the resident set just before: every byte the step touched on top of what was already live - PyTorch's
allocator, oneDNN / MKL scratch, the kernels' own workspaces and first-touch of fresh pages alike. It also
reports what autograd keeps alive between forward and backward (the resident set after forward, minus before:
the output included), and, as an aside, the median time of 5 more forward + backward steps in the same process
(f+b ms: one process, not interleaved, so a coarse figure; test_bench_wcrnn.py is the timing harness).

Linux only (VmHWM / clear_refs). Numbers are MiB.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_config import SHAPES  # noqa: E402  (docs/design.md section 7)

# "<backend>:lean": FusedWCRNN(backend=<backend>, save_preactivations=False), which keeps only each layer's output
# from forward to backward and recomputes the pre-activations in the backward
IMPLS = ("nn.RNN", "cpp", "torch", "reference", "cpp:lean", "torch:lean")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def child(impl: str, shape: str, dtype_name: str) -> dict:
    import torch
    T, B, I, H = SHAPES[shape]
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    if impl == "nn.RNN":
        model = torch.nn.RNN(I, H, dtype=dtype)
    else:
        from wcrnn_kernels import FusedWCRNN
        backend, _, variant = impl.partition(":")
        model = FusedWCRNN(I, H, backend=backend, dtype=dtype, save_preactivations=variant != "lean")
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    g_out = torch.randn(T, B, H, dtype=dtype)
    g_h = torch.randn(1, B, H, dtype=dtype)

    def step():
        out, h = model(x)
        torch.autograd.backward([out, h], [g_out, g_h])

    step()
    model.zero_grad(set_to_none=True)
    x.grad = None
    _reset_peak()
    before = _status_kib("VmRSS")
    out, h = model(x)
    after_fwd = _status_kib("VmRSS")
    torch.autograd.backward([out, h], [g_out, g_h])
    del out, h
    peak = _status_kib("VmHWM")
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    import wcrnn_kernels
    return {"impl": impl, "shape": shape, "dtype": dtype_name, "package": os.path.dirname(wcrnn_kernels.__file__),
            "T": T, "B": B, "I": I, "H": H,
            "threads": torch.get_num_threads(), "peak_mib": (peak - before) / 1024,
            "retained_after_forward_mib": (after_fwd - before) / 1024,
            "output_mib": T * B * H * torch.finfo(dtype).bits / 8 / 2 ** 20,
            "step_ms": sorted(times)[len(times) // 2] * 1e3}


def measure(impl: str, shape: str, dtype_name: str) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", MKL_DISABLE_FAST_MM="1")
    # the child measures this checkout's wcrnn_kernels, not an installed copy (a script's sys.path[0] is its
    # own folder, benchmarks/, so without this an installed package would shadow the checkout)
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", impl, shape, dtype_name],
                          capture_output=True, text=True, env=env, cwd=root)
    if proc.returncode != 0:
        return {"impl": impl, "shape": shape, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["S1", "S2", "S3", "S4"], choices=list(SHAPES))
    ap.add_argument("--impls", nargs="+", default=["nn.RNN", "cpp", "torch"], choices=list(IMPLS))
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per cell; the median is reported")
    ap.add_argument("--json", help="also write every measurement to this file")
    ap.add_argument("--child", nargs=3, metavar=("IMPL", "SHAPE", "DTYPE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    if not sys.platform.startswith("linux"):
        sys.exit("bench_memory.py reads /proc/self/status (VmHWM): Linux only")
    rows = []
    print(f"peak memory of forward+backward above the live set before it (MiB, {args.dtype}, median of "
          f"{args.repeats} fresh processes)")
    print(f"{'shape':5} {'impl':10} {'peak MiB':>9} {'vs nn.RNN':>9} {'kept fwd->bwd':>13} {'(T,B,H) out MiB':>16} "
          f"{'f+b ms':>8}")
    for shape in args.shapes:
        base = None
        for impl in args.impls:
            runs = [measure(impl, shape, args.dtype) for _ in range(args.repeats)]
            ok = [r for r in runs if "error" not in r]
            if not ok:
                print(f"{shape:5} {impl:10} failed: {runs[0]['error']}")
                continue
            ok.sort(key=lambda r: r["peak_mib"])
            med = dict(ok[len(ok) // 2])
            med["peak_mib_runs"] = [round(r["peak_mib"], 2) for r in ok]
            rows.append(med)
            if impl == "nn.RNN":
                base = med["peak_mib"]
            ratio = f"{med['peak_mib'] / base:9.2f}" if base else f"{'':9}"
            print(f"{shape:5} {impl:10} {med['peak_mib']:9.1f} {ratio} {med['retained_after_forward_mib']:13.1f} "
                  f"{med['output_mib']:16.1f} {med['step_ms']:8.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
