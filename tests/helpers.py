"""Comparison helpers and backend lists shared by the test files (import them from here, not from conftest:
conftest modules of tests/ and benchmarks/ share one module name when both are collected)."""
from __future__ import annotations

import pytest
import torch

from wcrnn_kernels import available_backends

# Backends checked against the reference by the generic suites; each is skipped (with its reason) where it
# cannot run in this process.
CHAIN_BACKENDS = ("torch", "cpp", "triton", "cuda")


def backend_param(name: str):
    return pytest.param(name, id=name)


def require_backend(name: str, device: str = "cpu", dtype=torch.float64, hidden_size: int = 8):
    """Skip, with the backend's own reason, when `name` cannot run tensors of this kind here."""
    from wcrnn_kernels.backends import get_backend
    report = available_backends()
    if name not in report:
        pytest.skip(f"backend {name!r} is not part of this build (no wcrnn_kernels.backends module for it)")
    info = report[name]
    if not info["available"]:
        pytest.skip(f"backend {name!r} unavailable here: {info['reason']}")
    why = get_backend(name).supports(torch.device(device), dtype, hidden_size)
    if why is not None:
        pytest.skip(f"backend {name!r} cannot run {device} {dtype} tensors here: {why}")


def max_rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max(max |expected|, tiny): one number per tensor."""
    actual, expected = actual.detach(), expected.detach()
    scale = expected.abs().max().clamp_min(1e-30) if expected.numel() else torch.tensor(1.0)
    return float((actual.to(expected.dtype) - expected).abs().max() / scale) if expected.numel() else 0.0


def assert_all_close(actual, expected, rtol, names=None):
    """Each pair agrees to `rtol` relative to the expected tensor's max magnitude; NaN never passes."""
    assert len(actual) == len(expected)
    names = names or [str(i) for i in range(len(expected))]
    for n, a, e in zip(names, actual, expected):
        assert a is not None and e is not None, f"{n}: missing gradient"
        assert a.shape == e.shape, f"{n}: shape {tuple(a.shape)} != {tuple(e.shape)}"
        assert torch.isfinite(a).all(), f"{n}: non-finite values"
        err = max_rel_err(a, e)
        assert err <= rtol, f"{n}: relative error {err:.3e} > {rtol:.1e}"
