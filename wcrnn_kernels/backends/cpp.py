"""The "cpp" backend: the fused C++ CPU kernels of csrc/ (float32 and float64).

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

from .. import _build
from . import register_backend

_DTYPES = (torch.float32, torch.float64)
_fakes_registered: set = set()


def register_fakes(namespace: str = "wcrnn_C") -> None:
    """Fake (meta) implementations of the wcrnn_C ops, so that they trace under fake tensors / torch.compile.

    Called by ``_build.load_extension()`` once the library is loaded (the CUDA kernels share these ops); the
    tests call it for the CPU emulation of the CUDA kernels, whose ops have the same schemas.
    """
    if namespace in _fakes_registered:
        return
    _fakes_registered.add(namespace)

    @torch.library.register_fake(f"{namespace}::chain_fwd")
    def _chain_fwd_fake(u, x0, w_hh, res, gamma, lengths, res_kind, nonlin, save_a):
        torch._check(u.dim() == 3, lambda: f"{namespace}::chain_fwd: u: expected (T, B, H), got {tuple(u.shape)}")
        return torch.empty_like(u), torch.empty_like(x0), (torch.empty_like(u) if save_a else u.new_empty((0,)))

    @torch.library.register_fake(f"{namespace}::chain_bwd")
    def _chain_bwd_fake(grad_out, grad_hn, a, w_hh, res, gamma, lengths, res_kind, nonlin, need_delta):
        torch._check(a.dim() == 3, lambda: f"{namespace}::chain_bwd: a: expected (T, B, H), got {tuple(a.shape)}")
        delta = torch.empty_like(a) if need_delta else a.new_empty((0,))
        return torch.empty_like(a), torch.empty_like(grad_hn), delta


class WcrnnCOps:
    """chain_fwd / chain_bwd through the wcrnn_C library's ops, which dispatch on the tensors' device to the
    CPU kernels (csrc/) or the CUDA kernels (csrc/cuda/): shared by the "cpp" and "cuda" backends (and by the
    tests' CPU emulation of the CUDA kernels, whose ops have the same schemas under another namespace)."""

    ops_namespace = "wcrnn_C"

    def chain_fwd(self, u, x0, w_hh, res_kind, res, gamma, lengths, nonlin, save_a):
        ops = getattr(torch.ops, self.ops_namespace)
        return ops.chain_fwd(u, x0, w_hh, res, gamma, lengths, res_kind, nonlin, save_a)

    def chain_bwd(self, grad_out, grad_hn, a, w_hh, res_kind, res, gamma, lengths, nonlin, need_delta):
        # `a` is only read; the CUDA kernels run float32 / float64 only (ops.py upcasts half models' tensors)
        ops = getattr(torch.ops, self.ops_namespace)
        g, dx0, delta = ops.chain_bwd(grad_out, grad_hn, a, w_hh, res, gamma, lengths, res_kind, nonlin, need_delta)
        return g, dx0, (delta if need_delta else None)


class CppBackend(WcrnnCOps):
    name = "cpp"
    _availability = None

    def availability(self):
        if self._availability is None:
            ok, why = _build.load_extension()
            if ok:
                try:
                    why = f"fused C++ CPU kernels ({torch.ops.wcrnn_C.cpu_info()}); {why}"
                except Exception as e:  # noqa: BLE001 - a library without the CPU kernels
                    ok, why = False, f"the loaded wcrnn_C library has no CPU kernels ({e})"
            self._availability = (ok, why)
        return self._availability

    def supports(self, device, dtype, hidden_size):
        if device.type != "cpu":
            return f"runs CPU tensors only, got a {device.type} tensor"
        if dtype not in _DTYPES:
            return f"runs float32 and float64 only, got {dtype} (backend='torch' runs it)"
        return None

register_backend(CppBackend())
