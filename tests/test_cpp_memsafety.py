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




def test_kernels_under_address_sanitizer():
    proc = _run(script=["sanitize_cases.py", "cpp"], timeout=900)  # the cases: tests/sanitize_cases.py
    report = proc.stdout[-2000:] + proc.stderr[-6000:]
    assert proc.returncode == 0, f"sanitizer run failed (exit {proc.returncode}):\n{report}"
    assert "ERROR: AddressSanitizer" not in proc.stderr and "runtime error:" not in proc.stderr, report
    assert "clean:" in proc.stdout, report
