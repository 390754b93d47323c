"""Do C++ errors raised by the compiled ops reach Python as exceptions, or kill the process?

The first H200 run (8527ece) died with SIGSEGV where the CUDA planner refuses a forced block path (a
TORCH_CHECK in csrc/cuda/chain_cuda.cuh, host code compiled by nvcc); on CPU, under the emulator, the same
check raises RuntimeError. Each case below raises one error in a fresh process; the driver prints, per case,
whether Python saw the exception, and for a case that crashed, the host backtrace from cuda-gdb.

    python scripts/gpu_diag_errors.py            # every case, then backtraces of the crashed ones
    python scripts/gpu_diag_errors.py --case X   # one case in this process
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _chain_args(device, dtype, H=8, res_kind=0, kind_shape=None):
    import torch
    T, B = 2, 3
    u = torch.randn(T, B, H, device=device, dtype=dtype)
    x0 = torch.randn(B, H, device=device, dtype=dtype)
    w = torch.randn(H, H, device=device, dtype=dtype)
    res = torch.randn(*(kind_shape or (H,)), device=device, dtype=dtype)
    gamma = torch.rand(H, device=device, dtype=dtype)
    return u, x0, w, res, gamma


def case(name):
    import torch
    from wcrnn_kernels import _build
    if name.startswith("wcrnn"):
        ok, why = _build.load_extension()
        assert ok, why
    if name == "torch-cpu":
        torch.mm(torch.ones(2, 3), torch.ones(2, 3))
    elif name == "torch-cuda":
        torch.mm(torch.ones(2, 3, device="cuda"), torch.ones(2, 3, device="cuda"))
    elif name == "wcrnn-cpu-check":      # wcrnn_cpu.cpp (g++)
        u, x0, w, res, gamma = _chain_args("cpu", torch.float32)
        torch.ops.wcrnn_C.chain_fwd(u, x0, w, res, gamma, None, 7, 0, False)
    elif name == "wcrnn-cuda-check":     # chain_ops.cu (nvcc host code), before any planning
        u, x0, w, res, gamma = _chain_args("cuda", torch.float32)
        torch.ops.wcrnn_C.chain_fwd(u, x0, w, res, gamma, None, 7, 0, False)
    elif name == "wcrnn-cuda-env":       # path_from_env() in chain_cuda.cuh, called from chain_fwd.cu
        os.environ["WCRNN_CUDA_PATH"] = "bogus"
        u, x0, w, res, gamma = _chain_args("cuda", torch.float32)
        torch.ops.wcrnn_C.chain_fwd(u, x0, w, res, gamma, None, 0, 0, False)
    elif name == "wcrnn-cuda-refusal":   # the planner's refusal that crashed the first run
        os.environ["WCRNN_CUDA_PATH"] = "block"
        u, x0, w, res, gamma = _chain_args("cuda", torch.float64, H=130, kind_shape=(130, 130))
        torch.ops.wcrnn_C.chain_fwd(u, x0, w, res, gamma, None, 2, 0, False)
    else:
        raise SystemExit(f"unknown case {name}")


CASES = ("torch-cpu", "torch-cuda", "wcrnn-cpu-check", "wcrnn-cuda-check", "wcrnn-cuda-env", "wcrnn-cuda-refusal")


def main():
    if "--case" in sys.argv:
        name = sys.argv[sys.argv.index("--case") + 1]
        try:
            case(name)
        except Exception as e:  # noqa: BLE001 - the point: did it arrive as a Python exception?
            print(f"RAISED {type(e).__name__}: {str(e).strip().splitlines()[0][:200]}", flush=True)
            return
        print("NO ERROR", flush=True)
        return
    for tool in (["c++", "--version"], ["ld", "--version"]):
        try:
            out = subprocess.run(tool, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
            print(f"{tool[0]}: {out[0] if out else '?'}", flush=True)
        except OSError as e:
            print(f"{tool[0]}: {e}", flush=True)
    crashed, wrong = [], []
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    for name in CASES:
        r = subprocess.run([sys.executable, __file__, "--case", name], capture_output=True, text=True, timeout=120,
                           env=env)
        last = (r.stdout.strip().splitlines() or ["(no output)"])[-1]
        print(f"{name:20} exit {r.returncode:4}  {last}", flush=True)
        if r.returncode == 0 and not last.startswith("RAISED"):
            wrong.append(name)
        if r.returncode != 0:
            crashed.append(name)
            print("    " + "\n    ".join(r.stderr.strip().splitlines()[-12:]), flush=True)
    gdb = shutil.which("cuda-gdb") or ("/usr/local/cuda/bin/cuda-gdb" if os.path.exists("/usr/local/cuda/bin/cuda-gdb")
                                       else None)
    for name in crashed[:2]:
        if gdb is None:
            print("cuda-gdb not found: no backtrace")
            break
        print(f"==== cuda-gdb backtrace of {name}", flush=True)
        try:
            r = subprocess.run([gdb, "-q", "-batch", "-ex", "run", "-ex", "bt 40", "--args", sys.executable, __file__,
                                "--case", name], capture_output=True, text=True, timeout=150)
            lines = [ln for ln in (r.stdout + r.stderr).splitlines()
                     if ln.startswith("#") or "signal" in ln.lower() or "SIG" in ln]
            print("\n".join(lines[-60:]), flush=True)
        except subprocess.TimeoutExpired:
            print("cuda-gdb timed out", flush=True)
    if crashed or wrong:
        sys.exit(f"error paths that did not raise a Python exception: crashed {crashed}, no error {wrong}")


if __name__ == "__main__":
    main()
