"""Memory safety of the C++ CPU kernels: AddressSanitizer (+ UndefinedBehaviorSanitizer) on small cases.

The wcrnn_C library is compiled a second time with -fsanitize=address,undefined (cached beside the normal
build, keyed by the same source hash) and exercised in a subprocess that preloads libasan: every compiled
instruction-set variant, every residual kind, both nonlinearities, with and without lengths, float32 and
float64, sizes whose hidden axis ends mid-vector (every tail path reads and writes the caller's tensors),
two threads, forward and backward through the public op. Any out-of-bounds access, use-after-free or
undefined behaviour aborts the subprocess with a sanitizer report, and the test fails showing it.

A positive control first proves that the sanitizer set-up reports a heap overflow at all, and the run
checks that the library it loaded really is instrumented.
"""
from __future__ import annotations

import os

import pytest

from helpers import asan_setup, run_under_asan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


ASAN, SKIP = asan_setup()
pytestmark = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
_run = run_under_asan


def test_positive_control_sanitizer_reports_a_heap_overflow():
    """Without this, a broken set-up (runtime not active) would make the real test pass vacuously."""
    proc = _run("""
        import ctypes
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        p = libc.malloc(16)
        ctypes.memset(p, 0, 17)  # one byte past the block
    """, timeout=60)
    assert proc.returncode == 86, proc.stderr[-3000:]
    assert "heap-buffer-overflow" in proc.stderr


_CASES = r"""
import os, subprocess
os.environ.pop("LD_PRELOAD", None)  # the compiler and ninja run without the sanitizer runtime
import torch
from wcrnn_kernels import _build
root = _build.source_root()
key = _build.source_hash(root, False, extra=("asan",))[:16]
build_dir = os.path.join(_build.cache_root(), f"torch-{torch.__version__}-asan", key)
# -O0: compiles in a fraction of -O1's time (this runs in CI) and keeps every access the source makes
flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-O0", "-g"]
lib = _build.jit_build_and_load(build_dir, f"wcrnn_C_asan_{key}", with_cuda=False, extra_cflags=flags,
                                extra_ldflags=["-fsanitize=address,undefined"])
syms = subprocess.run(["nm", "-D", lib], capture_output=True, text=True).stdout
assert "__asan_report" in syms and "__ubsan_handle" in syms, "the library is not instrumented"
print("instrumented library:", lib, flush=True)

from wcrnn_kernels import canonical_residual, wcrnn_chain
torch.set_num_threads(2)
info = dict(kv.split("=", 1) for kv in torch.ops.wcrnn_C.cpu_info().split())
isas = ["default", "avx2", "avx512"][: ["default", "avx2", "avx512"].index(info["best_isa"]) + 1]
g = torch.Generator().manual_seed(0)
n = 0
for isa in isas:
    os.environ["WCRNN_CPU_ISA"] = isa
    for dtype in (torch.float32, torch.float64):
        for kind in ("none", "diagonal", "rotational", "dense"):
            for T, B, H in ((3, 5, 17), (2, 3, 1), (1, 9, 130), (4, 1, 34)):
                if kind == "rotational" and H % 2:
                    H += 1
                r = {"none": 0.0, "diagonal": torch.rand(H, generator=g, dtype=torch.float64),
                     "rotational": torch.rand(H // 2, generator=g, dtype=torch.float64),
                     "dense": torch.randn(H, H, generator=g, dtype=torch.float64) / H}[kind]
                theta = torch.rand(H // 2, generator=g, dtype=torch.float64) if kind == "rotational" else None
                rk, res = canonical_residual(kind, H, r, theta, dtype=dtype)
                for nonlin in ("tanh", "relu"):
                    for lengths in (None, torch.randint(0, T + 1, (B,), generator=g)):
                        args = [torch.randn(T, B, H, generator=g, dtype=torch.float64).to(dtype),
                                torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype),
                                (torch.randn(H, H, generator=g, dtype=torch.float64) / H ** 0.5).to(dtype),
                                res.detach().clone(), torch.rand(H, generator=g, dtype=torch.float64).to(dtype)]
                        args = [a.requires_grad_(True) for a in args]
                        out, h = wcrnn_chain(args[0], args[1], args[2], rk, args[3], args[4], lengths, nonlin,
                                             backend="cpp")
                        ref = wcrnn_chain(args[0], args[1], args[2], rk, args[3], args[4], lengths, nonlin,
                                          backend="torch")
                        (out.sum() + 2 * h.sum()).backward()
                        tol = 1e-4 if dtype == torch.float32 else 1e-10
                        assert torch.allclose(out, ref[0], rtol=tol, atol=tol), (isa, dtype, kind, T, B, H)
                        assert torch.allclose(h, ref[1], rtol=tol, atol=tol), (isa, dtype, kind, T, B, H)
                        n += 1
print(f"clean: {n} forward+backward cases over ISAs {isas}", flush=True)
"""


def test_kernels_under_address_sanitizer():
    proc = _run(_CASES, timeout=900)
    report = proc.stdout[-2000:] + proc.stderr[-6000:]
    assert proc.returncode == 0, f"sanitizer run failed (exit {proc.returncode}):\n{report}"
    assert "ERROR: AddressSanitizer" not in proc.stderr and "runtime error:" not in proc.stderr, report
    assert "clean:" in proc.stdout, report
