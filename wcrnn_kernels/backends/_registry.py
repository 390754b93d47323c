"""The backend registry: registration, lookup, availability and resolution (the contract is in
``backends/__init__.py``). The backends register themselves here when ``backends/__init__.py`` loads them;
this module imports none of them, so the import graph has no cycle.
"""
from __future__ import annotations

import warnings

import torch

# set by backends/__init__.py: imports every backend module (each registers itself) on first use
_loader = None

_REGISTRY: dict = {}

# Preference order for backend="auto", per device type. CUDA: "cuda" first, measured on an H200
# (benchmarks/results/h200-8527ece-run1): faster than "triton" at every benchmark shape in float32 (1.1-9.9x) and
# in bfloat16 forward+backward except S2; "triton" wins bfloat16 forward at small H (S1-S3).
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


@torch._dynamo.assume_constant_result
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
                if cand == "torch":
                    _warn_fallback(device, dtype)
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


_FALLBACK_WARNED = False


def _warn_fallback(device, dtype) -> None:
    """Once per process: "auto" runs CPU tensors on the slow "torch" backend because the compiled C++ backend
    could not be loaded or built here (its reason says how to fix it). Silent where "cpp" could not run these
    tensors anyway (another dtype), and where it is not registered at all."""
    global _FALLBACK_WARNED
    b = _REGISTRY.get("cpp")
    if _FALLBACK_WARNED or device.type != "cpu" or b is None or b.supports(device, dtype, 1) is not None:
        return
    ok, why = b.availability()
    if ok:
        return
    _FALLBACK_WARNED = True
    warnings.warn(f"wcrnn_kernels: backend='auto' runs CPU tensors on the 'torch' backend (several times slower "
                  f"than the compiled 'cpp' backend), because the compiled backend is not available here: {why}. "
                  f"Fix that and restart, or pass backend='torch' to choose it explicitly.", RuntimeWarning,
                  stacklevel=5)
