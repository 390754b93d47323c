"""Tier-1 correctness smoke of one GPU backend against the float64 reference (run by scripts/gpu_check.sh).

    python scripts/gpu_smoke.py --backend triton|cuda --dtypes float64,float32,bfloat16 --out smoke.jsonl
    python scripts/gpu_smoke.py --backend cuda --dry-run ...   # CPU: the CUDA emulator / Triton interpreter

Every case is one forward and one backward of the fused chain (output, h_n and the gradients of u, x0, W_hh,
the canonical residual and gamma), compared with autograd through the reference loop in float64 on the
same (rounded) inputs, by max |x - ref| / max |ref| per tensor:
  float64            at most 1e-10;
  float32            at most 4x the reference loop's own float32 error (cuBLAS fp32), floor 1e-5;
  bfloat16/float16   at most 2x the "torch" backend's error in that dtype (it keeps fp32 state too) plus one
                     epsilon of the dtype.
The CUDA backend runs each case on every path (WCRNN_CUDA_PATH=grid / block / regs / tiled); a path the planner
refuses (W_hh does not fit one block's shared memory; the register path past H = 256, 128 in float64, 64 with
a dense residual; the tiled register path past H = 128, 64 in float64, and the dense form) is recorded as "refused", never as a failure, where sanitize_cases.cuda_path_refused predicts it;
an unpredicted refusal is an error. One long grid-path run (T = 2048, H = 1024,
float32) and one on the register path (T = 2048, H = 128) run twice and must agree bit for bit. Outputs start as NaN
(WCRNN_POISON_OUTPUTS=1 for the CUDA op, torch.empty* poisoned for the Triton launchers), so an element a
kernel forgets to write fails.

Each case appends one JSON line to --out as soon as it finishes (a timeout keeps what was done) and prints
one line. Exit status 1 if any case failed or raised.

--dry-run: the same cases on CPU tensors, smaller (T <= 6, H <= 130, the long run T = 40 at H = 64), with the
Triton kernels under the interpreter (TRITON_INTERPRET=1, set by this script before triton is imported) and
the CUDA kernels under the CPU emulator of tests/cuda_emu sized as an H100 (132 SMs, 232,448 B per block).
It checks that this script and its plumbing work; it says nothing about the GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRY = "--dry-run" in sys.argv
if DRY and "--backend" in sys.argv and sys.argv[sys.argv.index("--backend") + 1] == "triton":
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (by wcrnn_kernels, lazily)
os.environ["WCRNN_POISON_OUTPUTS"] = "1"
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]

import torch  # noqa: E402

from helpers import KINDS, NAMES, make_case, max_rel_err, run_chain  # noqa: E402
from sanitize_cases import cuda_path_refused  # noqa: E402
from wcrnn_kernels.backends import get_backend  # noqa: E402

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


def cases(dtype_name: str, dry: bool):
    """(kind, nonlinearity, lengths, T, B, H) per dtype: every residual kind and both nonlinearities at small
    H, the grid path's sizes (H = 512, 1024) for the common kinds."""
    out = []
    if dtype_name == "float64":
        for kind in KINDS:
            out += [(kind, "tanh", True, 7, 17, 48), (kind, "relu", False, 5, 3, 48)]
        out += [("rotational", "tanh", True, 5, 3, 130), ("dense", "tanh", True, 5, 3, 130),
                ("scalar", "tanh", True, 4, 5, 512),
                ("rotational", "relu", True, 6, 3, 100)]  # the register path's shared-memory tail
    elif dtype_name == "float32":
        for kind in KINDS:
            out.append((kind, "tanh", True, 32, 9, 256))
        out += [("rotational", "relu", False, 24, 33, 128), ("scalar", "tanh", True, 16, 5, 1024),
                ("dense", "tanh", True, 16, 5, 1024),
                # the register path's dense form and its 4-row tiles (B = 200 on 132 SMs)
                ("dense", "tanh", True, 32, 9, 64), ("scalar", "tanh", True, 24, 200, 100)]
    else:
        for kind in KINDS:
            out.append((kind, "tanh", True, 32, 9, 128))
        out += [("scalar", "tanh", True, 16, 5, 1024), ("dense", "relu", False, 16, 5, 512),
                ("dense", "relu", True, 32, 9, 64)]
    if dry:  # the interpreter and the emulator are slow: same kinds and flags, small sizes
        out = [(k, nl, ln, min(T, 6), min(B, 9), min(H, 130)) for k, nl, ln, T, B, H in out]
    return out


# ------------------------------------------------------------------------------------------------------------
# One chain, forward and backward: the test suite's case builder and runner (tests/helpers.py)

def on(case, device, dtype):
    return {k: (v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
                if isinstance(v, torch.Tensor) else v) for k, v in case.items()}


def run(case, backend, nonlinearity):
    """Forward + backward of <output, G_out> + <h_n, G_h>: (output, h_n, du, dx0, dw_hh, dres, dgamma) on CPU."""
    return tuple(t.detach().cpu() for t in run_chain(case, backend, nonlinearity))


# ------------------------------------------------------------------------------------------------------------
# Poisoning of Python-side empties (the Triton launchers allocate their outputs with torch.empty*)

def poison_empties():
    def poisoned(fn):
        def wrapper(*args, **kwargs):
            t = fn(*args, **kwargs)
            if t.is_floating_point():
                t.fill_(float("nan"))
            return t
        return wrapper
    torch.empty = poisoned(torch.empty)
    torch.empty_like = poisoned(torch.empty_like)
    torch.Tensor.new_empty = poisoned(torch.Tensor.new_empty)


# ------------------------------------------------------------------------------------------------------------
# Backends: the real ones on a GPU; under --dry-run the Triton interpreter and the CUDA emulator

def setup_backend(name, dry):
    """The registered backend name to call and the device of its tensors."""
    if not dry:
        return name, "cuda"
    if name == "triton":
        return "triton", "cpu"
    # the CUDA kernels' own source under tests/cuda_emu, sized as an H100
    os.environ.update({"WCRNN_EMU_SMS": "132", "WCRNN_EMU_SMEM_OPTIN": "232448"})
    import cuda_emu
    from wcrnn_kernels.backends import register_backend
    from wcrnn_kernels.backends.compiled import WcrnnCOps, register_fakes
    from wcrnn_kernels.backends.cuda import CudaBackend
    ok, why = cuda_emu.load()
    if not ok:
        raise SystemExit(f"--dry-run: the CUDA emulator did not build: {why}")
    register_fakes("wcrnn_cuda_emu")

    class Emulated(WcrnnCOps):
        name = "cuda-emulated"
        ops_namespace = "wcrnn_cuda_emu"

        def availability(self):
            return True, "the CUDA kernels under the CPU emulator of tests/cuda_emu"

        def supports(self, device, dtype, hidden_size):
            return CudaBackend().supports(torch.device("cuda"), dtype, hidden_size)

    register_backend(Emulated())
    return "cuda-emulated", "cpu"


def set_path(path):
    if path is None:
        os.environ.pop("WCRNN_CUDA_PATH", None)
    else:
        os.environ["WCRNN_CUDA_PATH"] = path


def is_refusal(e, path, kind, H, dtype_name):
    """The planner refused a forced path where sanitize_cases.cuda_path_refused says it must (any other error,
    or a refusal nobody predicted, is an error)."""
    refusal = path is not None and cuda_path_refused(path, kind, H, dtype_name)
    return isinstance(e, RuntimeError) and bool(refusal) and re.search(refusal, str(e)) is not None


# ------------------------------------------------------------------------------------------------------------

def check_case(backend, device, dtype_name, kind, nl, lengths, T, B, H, seed, paths, emit):
    dtype = DTYPES[dtype_name]
    if kind == "rotational" and H % 2:
        H += 1
    case = make_case(kind, T, B, H, lengths=lengths, seed=seed)
    lo = on(case, "cpu", dtype)                       # the inputs rounded to the dtype
    t0 = time.perf_counter()
    exact = run(on(lo, device, torch.float64), "reference", nl)
    yard, what = None, None
    if dtype == torch.float32:
        yard, what = run(on(lo, device, dtype), "reference", nl), "reference float32"
    elif dtype != torch.float64:
        yard, what = run(on(lo, device, dtype), "torch", nl), f"torch backend {dtype_name}"
    t_ref = time.perf_counter() - t0
    for path in paths:
        set_path(path)
        rec = dict(backend=backend, path=path or "-", dtype=dtype_name, kind=kind, nonlinearity=nl,
                   lengths=lengths, T=T, B=B, H=H)
        t0 = time.perf_counter()
        try:
            got = run(on(lo, device, dtype), backend, nl)
        except Exception as e:  # noqa: BLE001 - every failure is recorded, the sweep goes on
            rec.update(status="refused" if is_refusal(e, path, kind, H, dtype_name) else "error", seconds=round(time.perf_counter() - t0, 3),
                       message=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}" if str(e).strip()
                       else type(e).__name__)
            if rec["status"] == "error":
                rec["traceback"] = traceback.format_exc()[-1500:]
            emit(rec)
            continue
        errs = {n: max_rel_err(a, e) for n, a, e in zip(NAMES, got, exact)}
        if dtype == torch.float64:
            tols = {n: 1e-10 for n in NAMES}
        elif dtype == torch.float32:
            tols = {n: max(4 * max_rel_err(y, e), 1e-5) for n, y, e in zip(NAMES, yard, exact)}
        else:
            eps = torch.finfo(dtype).eps
            tols = {n: 2 * max_rel_err(y, e) + eps for n, y, e in zip(NAMES, yard, exact)}
        bad = [n for n in NAMES if not errs[n] <= tols[n]]
        dtypes_ok = all(t.dtype == dtype for t in got)
        rec.update(status="pass" if not bad and dtypes_ok else "fail", seconds=round(time.perf_counter() - t0, 3),
                   ref_seconds=round(t_ref, 3), worst=max(errs.values()),
                   errors={n: float(f"{v:.3e}") for n, v in errs.items()},
                   tolerances={n: float(f"{v:.3e}") for n, v in tols.items()}, yardstick=what)
        if bad:
            rec["failed"] = bad
        if not dtypes_ok:
            rec["message"] = f"result dtypes {[str(t.dtype) for t in got]} != {dtype}"
        emit(rec)


def bitwise_repeat(backend, device, path, T, B, H, emit):
    """One long float32 chain twice on the same inputs: every result identical bit for bit (a race, a read of
    unwritten memory or a missing fence shows up as a difference)."""
    set_path(path)
    case = on(make_case("scalar", T, B, H, seed=11), device, torch.float32)
    rec = dict(backend=backend, path=path or "-", dtype="float32", kind="scalar", nonlinearity="tanh",
               lengths=False, T=T, B=B, H=H, check="bitwise-repeat")
    t0 = time.perf_counter()
    try:
        a = run(case, backend, "tanh")
        b = run(case, backend, "tanh")
        same = [torch.equal(x, y) for x, y in zip(a, b)]
        finite = all(bool(torch.isfinite(x).all()) for x in a)
        rec.update(status="pass" if all(same) and finite else "fail",
                   differing=[n for n, s in zip(NAMES, same) if not s], finite=finite)
    except Exception as e:  # noqa: BLE001
        rec.update(status="refused" if is_refusal(e, path, "scalar", H, "float32") else "error", message=f"{type(e).__name__}: {e}"[:300])
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    emit(rec)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=("triton", "cuda"), required=True)
    ap.add_argument("--dtypes", default="float64,float32,bfloat16")
    ap.add_argument("--out", required=True, help="JSON lines, appended")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--no-repeat", action="store_true", help="skip the long bitwise-repeat run")
    args = ap.parse_args()

    name, device = setup_backend(args.backend, args.dry_run)
    poison_empties()
    if not args.dry_run:
        ok, why = get_backend(name).availability()
        if not ok:
            raise SystemExit(f"backend {name!r} is not available: {why}")
    # grid first: should a refused block plan ever take the process down (the first H200 run), the case's grid
    # result is in already
    paths = ("grid", "block", "regs", "tiled") if args.backend == "cuda" else (None,)
    counts = {}

    def emit(rec):
        counts[rec["status"]] = counts.get(rec["status"], 0) + 1
        with open(args.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
        extra = (f"worst {rec['worst']:.2e}" if "worst" in rec else rec.get("message", ""))
        if rec.get("failed"):
            extra += " FAILED " + ",".join(f"{n} {rec['errors'][n]:.1e}>{rec['tolerances'][n]:.1e}"
                                          for n in rec["failed"])
        print(f"{rec['status']:7} {rec['backend']:13} {rec['path']:5} {rec['dtype']:8} {rec['kind']:10} "
              f"{rec['nonlinearity']:4} L={int(rec['lengths'])} T={rec['T']:<4} B={rec['B']:<3} H={rec['H']:<4} "
              f"{rec['seconds']:6.2f}s {extra}", flush=True)

    seed = 0
    for dt in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        if dt not in DTYPES:
            raise SystemExit(f"--dtypes: expected names from {list(DTYPES)}, got {dt!r}")
        for kind, nl, lengths, T, B, H in cases(dt, args.dry_run):
            seed += 1
            check_case(name, device, dt, kind, nl, lengths, T, B, H, seed, paths, emit)
    if not args.no_repeat:
        T, B, H = (40, 8, 64) if args.dry_run else (2048, 8, 1024)
        bitwise_repeat(name, device, "grid" if args.backend == "cuda" else None, T, B, H, emit)
        if args.backend == "cuda":
            bitwise_repeat(name, device, "regs", T, B, min(H, 128), emit)
    print(f"smoke {args.backend}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())), flush=True)
    sys.exit(1 if counts.get("fail") or counts.get("error") else 0)


if __name__ == "__main__":
    main()
