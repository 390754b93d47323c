"""The "cpp" backend: the fused C++ CPU kernels of csrc/ (float32 and float64; float16 / bfloat16 in float32).

The chains run in the ``wcrnn_C`` operator library (``wcrnn_C::chain_fwd`` / ``wcrnn_C::chain_bwd``,
registered with ``TORCH_LIBRARY`` for the CPU dispatch key). ``wcrnn_kernels._build`` finds or compiles
that library on first use; importing this module never compiles, never raises, and a missing compiler
shows up in ``available_backends()`` with the fix.

Kernel design (docs/design.md section 6, details in csrc/cpu/chain_kernels.h): each thread owns a block of batch
rows and runs the whole time loop for it with no per-step synchronisation; W_hh is packed once per call into
register-tile panels that stay in L1/L2; each step is one small GEMM plus a vectorised epilogue (tanh from a
vector expm1); nothing is allocated inside the loop. The instruction set (AVX-512, AVX2+FMA or the
compiler's baseline) is picked at run time.
"""
from __future__ import annotations

import torch

from ._registry import register_backend
from .compiled import WcrnnCOps, load

_DTYPES = (torch.float32, torch.float64)
# float16 / bfloat16 run on float32 copies (the contract's compute dtype: float32 state and accumulation), the
# outputs rounded to the input dtype where the torch backend rounds them (docs/design.md section 10)
_HALF = (torch.float16, torch.bfloat16)


def _untraced(fn):
    """fn() with torch.jit's tracer suspended. An availability check is no part of a model, and the tracer
    cannot record an op that returns a string (wcrnn_C::cpu_info): the first check made under
    torch.jit.trace failed, and "cpp" stayed unavailable for the rest of the process."""
    state = torch._C._get_tracing_state()
    if state is None:
        return fn()
    torch._C._set_tracing_state(None)
    try:
        return fn()
    finally:
        torch._C._set_tracing_state(state)


class CppBackend(WcrnnCOps):
    name = "cpp"
    _availability = None

    def availability(self):
        if self._availability is None:
            ok, why = load()
            if ok:
                try:
                    why = f"fused C++ CPU kernels ({_untraced(torch.ops.wcrnn_C.cpu_info)}); {why}"
                except Exception as e:  # noqa: BLE001 - a library without the CPU kernels
                    ok, why = False, f"the loaded wcrnn_C library has no CPU kernels ({e})"
            self._availability = (ok, why)
        return self._availability

    def supports(self, device, dtype, hidden_size):
        if device.type != "cpu":
            return f"runs CPU tensors only, got a {device.type} tensor"
        if dtype not in _DTYPES + _HALF:
            return f"runs float16, bfloat16, float32 and float64 only, got {dtype} (backend='torch' runs it)"
        return None

    def chain_fwd(self, u, x0, w_hh, res_kind, res, gamma, lengths, nonlin, save_a):
        if u.dtype not in _HALF:
            return super().chain_fwd(u, x0, w_hh, res_kind, res, gamma, lengths, nonlin, save_a)
        # the kernels are float32 / float64: the chain runs in float32 (state and accumulation, as the contract
        # asks of half inputs) and its outputs are rounded once, as the torch backend rounds them
        f = torch.float32
        out, h_n, a = super().chain_fwd(u.to(f), x0.to(f), w_hh.to(f), res_kind, res.to(f), gamma.to(f), lengths,
                                        nonlin, save_a)
        return out.to(u.dtype), h_n.to(u.dtype), a.to(u.dtype)

    # chain_bwd: WcrnnCOps's. ops.py hands a half model's backward over in float32 (as to the cuda backend).

register_backend(CppBackend())
