"""The backend registry: registration, lookup, availability and resolution (the contract is in
``backends/__init__.py``). The backends register themselves here when ``backends/__init__.py`` loads them;
this module imports none of them, so the import graph has no cycle.
"""
from __future__ import annotations

import torch

from .._lazy_dynamo import assume_constant_result
from .._warn import warn_at_caller

# set by backends/__init__.py: imports every backend module (each registers itself) on first use
_loader = None

_REGISTRY: dict = {}

# Preference order for backend="auto", per device type; the first is the compiled backend whose loss "auto"
# reports once (_warn_fallback). CUDA: "cuda" first, measured on an H200 (benchmarks/results/h200-fbeda44-run3):
# in float32 1.4-25x faster than "triton" at S1, S3, S4 and G4 (25x at G4, H = 512), on par at S2 (within 4 %);
# with the register path (h200-ec2fdbb-run4, h200-67b95f2-run5-verify) faster at every shape in bfloat16 too.
_AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpp", "torch")}


def register_backend(backend) -> None:
    _REGISTRY[backend.name] = backend
    _RESOLVED.clear()


def get_backend(name: str):
    _ensure_loaded()
    return _REGISTRY[name]


def backend_names() -> list[str]:
    _ensure_loaded()
    return ["reference"] + list(_REGISTRY)


def available_backends() -> dict[str, dict]:
    """For every backend: whether it can run in this process and why (not).

    Returns ``{name: {"available": bool, "reason": str}}``. ``reference`` (autograd through the plain
    loop) is always available.
    """
    _ensure_loaded()
    report = {"reference": {"available": True, "reason": "autograd through the plain PyTorch loop"}}
    for name, b in _REGISTRY.items():
        ok, why = b.availability()
        report[name] = {"available": ok, "reason": why}
    return report


class BackendUnavailableError(RuntimeError):
    """A named backend cannot run these tensors here; the message says why and how to get it."""


# (name, device, dtype, H) -> resolved name. Availability does not change within a process, and the
# answer must not be recomputed per forward call (nor traced by torch.compile: see resolve_backend).
_RESOLVED: dict = {}


@assume_constant_result
def resolve_backend(name: str, device: torch.device, dtype: torch.dtype, hidden_size: int) -> str:
    """Turn "auto" into a concrete backend name, or check that a named backend can run these tensors.

    torch.compile evaluates this eagerly at trace time and bakes the answer into the graph (availability
    checks take locks and load libraries, which Dynamo cannot trace).
    """
    key = (name, str(device), dtype, int(hidden_size))
    if key not in _RESOLVED:
        _RESOLVED[key] = _resolve_backend(name, device, dtype, hidden_size)
    return _RESOLVED[key]


def _resolve_backend(name, device, dtype, hidden_size):
    _ensure_loaded()
    if name == "reference":
        return name
    if name == "auto":
        for cand in _AUTO_ORDER.get(device.type, ("torch",)):
            b = _REGISTRY.get(cand)
            if b is not None and b.availability()[0] and b.supports(device, dtype, hidden_size) is None:
                _warn_fallback(cand, device, dtype)
                return cand
        return "torch"
    if name not in _REGISTRY:
        raise ValueError(f"backend: expected 'auto' or one of {backend_names()}, got {name!r}")
    b = _REGISTRY[name]
    ok, why = b.availability()
    if not ok:
        raise BackendUnavailableError(f"backend={name!r} is not available here: {why}")
    why = b.supports(device, dtype, hidden_size)
    if why is not None:
        raise BackendUnavailableError(f"backend={name!r} cannot run these tensors: {why}")
    return name


def _ensure_loaded() -> None:
    if _loader is not None:
        _loader()


# device types for which "auto" has already warned that it lost the compiled backend
_FALLBACK_WARNED: set = set()

# what "auto" gives up, per device type, when the first backend of _AUTO_ORDER cannot be loaded or built
_FALLBACK_COST = {
    "cpu": "several times slower than the compiled 'cpp' backend",
    "cuda": ("slower than the compiled 'cuda' backend: on an H200 'triton' took up to 25x its time in float32, "
             "and the per-step matrix products of 'torch' alone 3.4x or more"),
}


def _warn_fallback(chosen: str, device, dtype) -> None:
    """Once per process and device type: "auto" runs these tensors on `chosen` because the compiled backend
    that comes first for the device (cpp on CPU, cuda on CUDA) could not be loaded or built here (its reason
    says how to fix it). Silent where `chosen` is that backend, where it could not run these tensors anyway
    (another dtype), and where it is not registered at all."""
    order = _AUTO_ORDER.get(device.type)
    if not order or chosen == order[0] or device.type in _FALLBACK_WARNED:
        return
    first = order[0]
    b = _REGISTRY.get(first)
    if b is None or b.supports(device, dtype, 1) is not None:
        return
    ok, why = b.availability()
    if ok:
        return
    _FALLBACK_WARNED.add(device.type)
    warn_at_caller(f"wcrnn_kernels: backend='auto' runs {device.type.upper()} tensors on the {chosen!r} backend "
                   f"({_FALLBACK_COST.get(device.type, 'slower')}), because the compiled {first!r} backend is "
                   f"not available here: {why}. Fix that and restart, or pass backend={chosen!r} to choose it "
                   f"explicitly.", RuntimeWarning)
