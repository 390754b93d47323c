"""Backend registry: every implementation of the fused chain behind one signature.

A backend is an object with

    name: str
    availability() -> (bool, str)          can it run in this process at all, and why (not)
    supports(device, dtype, hidden_size) -> str | None     None if it runs these tensors, else why not
    chain_fwd(u, x0, w_hh, res_kind, res, gamma, lengths, nonlin, save_a) -> (output, h_n, a)
    chain_bwd(grad_out, grad_hn, a, w_hh, res_kind, res, gamma, lengths, nonlin, need_delta)
        -> (g, dx0, delta or None)

The contract for chain_fwd / chain_bwd (checked by ``ops.py`` before any backend is called):
all tensors contiguous, one dtype and one device; u, grad_out, a: (T, B, H); x0, grad_hn: (B, H);
res: canonical residual (``residual.py``); gamma: (H,); lengths: int64 (B,) on the same device, or None;
nonlin: 0 tanh, 1 relu. ``output`` is zero past each row's length and h_n[b] is x_{L_b}.

When ``save_a`` is true, the forward also returns the pre-activations a_t = u_t + W_hh x_{t-1}
(T, B, H) in u's dtype (computed in the compute dtype, rounded once), zero past each row's length:
they are what the backward needs, saved instead of u so that the backward needs no recompute GEMM.
When it is false, ``a`` is an empty tensor and the forward stores nothing extra.

chain_bwd gets ``a`` in the compute dtype (float32 for float16/bfloat16 models) and only reads it: it is
the tensor saved for backward, and a second backward (retain_graph=True) reads it again. ``g``
(T, B, H), a fresh tensor, is dL/da_t (zero past the length), ``dx0`` is dL/dx_0 and ``delta``
(T, B, H), returned only when ``need_delta``, is the total dL/dx_t (zero past the length).

A missing backend is never an import error: ``available_backends()`` reports it and names the fix, and
asking for it by name raises with that message.
"""
from __future__ import annotations

import torch

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


_LOADED = False


def _ensure_loaded() -> None:
    # Imported lazily so that a broken optional backend can never break `import wcrnn_kernels`.
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from . import pytorch  # noqa: F401  (always present)
    for mod in ("cpp", "triton_backend", "cuda"):
        try:
            __import__(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{mod}":
                raise
