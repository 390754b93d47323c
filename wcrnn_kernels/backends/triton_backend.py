"""The "triton" backend: the persistent Triton kernels of ``wcrnn_kernels.triton_kernels`` behind the
backend contract (see ``backends/__init__.py``).

Runs CUDA tensors (float16, bfloat16, float32, float64; H up to ``MAX_HIDDEN``), and CPU tensors only
under the Triton interpreter (``TRITON_INTERPRET=1`` set before triton is imported), which exists for
exact testing on machines without a GPU. Importing this module never fails: triton itself is imported
on first use, and a missing or broken install is reported by ``availability()`` with the fix.
"""
from __future__ import annotations

import torch

from ._registry import register_backend

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_state = {"kernels": None, "error": None, "tried": False}


def _kernels():
    """The kernel module, imported on first use; None (and the reason in _state) when it cannot be."""
    if not _state["tried"]:
        _state["tried"] = True
        try:
            from .. import triton_kernels
            _state["kernels"] = triton_kernels
        except Exception as e:  # triton missing, or an install that cannot even import
            _state["error"] = f"{type(e).__name__}: {e}"
    return _state["kernels"]


class TritonBackend:
    name = "triton"

    def availability(self):
        tk = _kernels()
        if tk is None:
            return False, f"triton cannot be imported ({_state['error']}); fix: pip install triton"
        if tk.INTERPRETER:
            return True, ("Triton interpreter (TRITON_INTERPRET=1): runs CPU tensors, for testing only "
                          "(slow); CUDA tensors need a process without TRITON_INTERPRET")
        if not torch.cuda.is_available():
            return False, ("no CUDA device (torch.cuda.is_available() is False); the Triton kernels run CUDA "
                           "tensors, or CPU tensors under TRITON_INTERPRET=1 (testing only)")
        import triton
        return True, f"triton {triton.__version__} on {torch.cuda.get_device_name()}"

    def supports(self, device, dtype, hidden_size):
        tk = _kernels()
        if tk is None:
            return f"triton cannot be imported ({_state['error']}); fix: pip install triton"
        if dtype not in _DTYPES:
            return f"dtype {dtype} is not supported (float16, bfloat16, float32 or float64)"
        if hidden_size > tk.MAX_HIDDEN:
            return (f"hidden size {hidden_size} > {tk.MAX_HIDDEN} (the state tile must fit in registers); "
                    f"backend='torch' runs any size")
        device = torch.device(device)
        if device.type == "cpu":
            if not tk.INTERPRETER:
                return ("CPU tensors run only under the Triton interpreter (set TRITON_INTERPRET=1 before "
                        "importing triton; testing only); use backend='cpp' or 'torch' for CPU tensors")
            return None
        if device.type != "cuda":
            return f"device type {device.type!r} is not supported (CUDA tensors only)"
        if tk.INTERPRETER:
            return ("TRITON_INTERPRET=1 is set, so Triton interprets on the CPU; unset it to run CUDA tensors "
                    "on the GPU")
        if not torch.cuda.is_available():
            return "no CUDA device (torch.cuda.is_available() is False)"
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            return (f"compute capability {major}.{minor} < 8.0: the Triton kernels target Ampere and newer; "
                    f"use backend='cuda' or 'torch'")
        return None

    def chain_fwd(self, u, x0, w_hh, res_kind, res, gamma, lengths, nonlin, save_a):
        return _kernels().wcrnn_fwd(u, x0, w_hh, res_kind, res, gamma, lengths, nonlin, save_a)

    def chain_bwd(self, grad_out, grad_hn, a, w_hh, res_kind, res, gamma, lengths, nonlin, need_delta):
        # ``a`` is only read (the contract): g gets its own buffer, which also lets the autotuner re-run it.
        return _kernels().wcrnn_bwd(grad_out, grad_hn, a, w_hh, res_kind, res, gamma, lengths, nonlin,
                                    need_delta)


register_backend(TritonBackend())
