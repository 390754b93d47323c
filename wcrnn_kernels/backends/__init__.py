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
res: canonical residual (``residual.py``), for res_kind 0 also a 0-d tensor; gamma: (H,) or 0-d (a 0-d res or
gamma is one value for every unit: the backend broadcasts it); lengths: int64 (B,) on the same device, or None;
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

import threading

from . import _registry
from ._registry import (_AUTO_ORDER, _REGISTRY, _RESOLVED, BackendUnavailableError, available_backends,
                        backend_names, get_backend, register_backend, resolve_backend)

__all__ = ["BackendUnavailableError", "available_backends", "backend_names", "get_backend", "register_backend",
           "resolve_backend", "_AUTO_ORDER", "_REGISTRY", "_RESOLVED"]

_LOADED = False
_LOAD_LOCK = threading.Lock()
_LOADING_THREAD = None


def _load_all() -> None:
    # Imported lazily so that a broken optional backend can never break `import wcrnn_kernels`. Under a lock:
    # threads whose first calls come at once wait until every backend has registered (a thread that went on
    # while the loading thread was still importing found "torch" missing, or resolved "auto" to "torch" because
    # "cpp" had not registered yet: another backend's rounding, without a word). The loading thread itself goes
    # on while it loads (a backend module that asks the registry while it is imported).
    global _LOADED, _LOADING_THREAD
    if _LOADED or _LOADING_THREAD == threading.get_ident():
        return
    with _LOAD_LOCK:
        if _LOADED:
            return
        _LOADING_THREAD = threading.get_ident()
        try:
            from . import pytorch  # noqa: F401  (always present)
            for mod in ("cpp", "triton_backend", "cuda"):
                try:
                    __import__(f"{__name__}.{mod}")
                except ModuleNotFoundError as e:
                    if e.name != f"{__name__}.{mod}":
                        raise
        finally:
            _LOADED = True  # as before: a backend module that raised is not imported again
            _LOADING_THREAD = None


_registry._loader = _load_all
