"""The compiled operator library ``wcrnn_C``, shared by the "cpp" and "cuda" backends.

The library (csrc/) registers the ops ``wcrnn_C::chain_fwd`` / ``wcrnn_C::chain_bwd`` for the CPU dispatch key
(the C++ kernels) and, where it was built with them, the CUDA key (csrc/cuda/). This module loads it
(through ``_build``, which finds or compiles it), registers the ops' fake implementations so that they trace
under fake tensors and torch.compile, and calls them: ``WcrnnCOps`` is the backend half both backends
share. ``_build`` knows nothing of backends; the backends know the library only through this module.
"""
from __future__ import annotations

import torch

from .. import _build

_fakes_registered: set = set()


def check_same_device(op: str, names: str, *tensors) -> None:
    """Every tensor argument (None skipped) on the first one's device, else an error naming the argument.

    The fakes run for meta tensors too: an op called with one meta argument among CPU or CUDA ones dispatches
    to its fake, which would hand back uninitialised outputs on the first argument's device without a word
    (a module built under ``torch.device("meta")`` whose residual or coupling was never materialised)."""
    first = tensors[0]
    for name, t in zip(names.split(), tensors):
        if t is not None and t.device != first.device:
            raise RuntimeError(f"{op}: {name} is on {t.device} but {names.split()[0]} is on {first.device}; every "
                               "tensor argument must be on one device" +
                               (" (a meta tensor has no data: materialise it, e.g. module.to_empty(device=...) "
                                "then reset_parameters(), or load real values into it)"
                                if "meta" in (t.device.type, first.device.type) else ""))


def register_fakes(namespace: str = "wcrnn_C") -> None:
    """Fake (meta) implementations of the wcrnn_C ops, so that they trace under fake tensors / torch.compile.

    Called by ``load()`` once the library is loaded (the CUDA kernels share these ops); the
    tests call it for the CPU emulation of the CUDA kernels, whose ops have the same schemas.
    """
    if namespace in _fakes_registered:
        return
    _fakes_registered.add(namespace)

    @torch.library.register_fake(f"{namespace}::chain_fwd")
    def _chain_fwd_fake(u, x0, w_hh, res, gamma, lengths, res_kind, nonlin, save_a):
        torch._check(u.dim() == 3, lambda: f"{namespace}::chain_fwd: u: expected (T, B, H), got {tuple(u.shape)}")
        check_same_device(f"{namespace}::chain_fwd", "u x0 w_hh res gamma lengths", u, x0, w_hh, res, gamma, lengths)
        # contiguous, whatever the inputs' layout: the library allocates its outputs so (new_outputs)
        return u.new_empty(u.shape), x0.new_empty(x0.shape), (u.new_empty(u.shape) if save_a else u.new_empty((0,)))

    @torch.library.register_fake(f"{namespace}::chain_bwd")
    def _chain_bwd_fake(grad_out, grad_hn, a, w_hh, res, gamma, lengths, res_kind, nonlin, need_delta):
        torch._check(a.dim() == 3, lambda: f"{namespace}::chain_bwd: a: expected (T, B, H), got {tuple(a.shape)}")
        check_same_device(f"{namespace}::chain_bwd", "a grad_out grad_hn w_hh res gamma lengths", a, grad_out,
                          grad_hn, w_hh, res, gamma, lengths)
        delta = a.new_empty(a.shape) if need_delta else a.new_empty((0,))
        return a.new_empty(a.shape), grad_hn.new_empty(grad_hn.shape), delta  # contiguous, as the library's


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


def load() -> tuple[bool, str]:
    """Load (building it on first use where needed) the library and register its fakes: (ok, why)."""
    ok, why = _build.load_extension()
    if ok:
        register_fakes()
    return ok, why
