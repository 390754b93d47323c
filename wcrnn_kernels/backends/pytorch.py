"""The "torch" backend: the forward chain and the analytic backward chain in plain PyTorch ops.

This is the executable template every kernel follows (docs/design.md section 5) and the fallback on any
device. It runs without autograd: the forward writes x_1..x_T (and, for a backward, a_1..a_T) into
preallocated outputs, the backward runs the delta chain in reverse. float16 / bfloat16 inputs are
computed with float32 state and accumulation, like the GPU kernels, and cast back on output.
"""
from __future__ import annotations

import torch

from ..reference import compute_dtype, phi, phi_prime
from ..residual import apply_residual, apply_residual_transpose
from ._registry import register_backend


def _valid_mask(T, lengths, device):
    """(T, B, 1) bool: step t (0-based) is inside row b's sequence."""
    if lengths is None:
        return None
    return (torch.arange(T, device=device)[:, None] < lengths[None, :]).unsqueeze(-1)


class TorchBackend:
    name = "torch"

    def availability(self):
        return True, "plain PyTorch ops; runs on every device"

    def supports(self, device, dtype, hidden_size):
        return None

    def chain_fwd(self, u, x0, w_hh, res_kind, res, gamma, lengths, nonlin, save_a):
        T, B, H = u.shape
        cd = compute_dtype(u.dtype)
        w_t = w_hh.to(cd).t()
        res, gamma = res.to(cd), gamma.to(cd)
        out = torch.empty((T, B, H), dtype=u.dtype, device=u.device)
        a_all = torch.empty((T, B, H) if save_a else (0,), dtype=u.dtype, device=u.device)
        valid = _valid_mask(T, lengths, u.device)
        x = x0.to(cd)
        for t in range(T):
            a = torch.addmm(u[t].to(cd), x, w_t)
            x_new = apply_residual(res_kind, res, x) + gamma * phi(a, nonlin)
            if valid is None:
                x = x_new
                out[t] = x
                if save_a:
                    a_all[t] = a
            else:
                x = torch.where(valid[t], x_new, x)
                out[t] = torch.where(valid[t], x, 0.0)
                if save_a:
                    a_all[t] = torch.where(valid[t], a, 0.0)
        h_n = x.to(u.dtype)
        if h_n is x0 or not h_n.is_contiguous():  # contiguous, as the op's fake says; never x0 itself (T = 0)
            h_n = h_n.clone(memory_format=torch.contiguous_format)
        return out, h_n, a_all

    def chain_bwd(self, grad_out, grad_hn, a, w_hh, res_kind, res, gamma, lengths, nonlin, need_delta):
        T, B, H = a.shape
        cd = compute_dtype(a.dtype)
        w = w_hh.to(cd)
        res, gamma = res.to(cd), gamma.to(cd)
        valid = _valid_mask(T, lengths, a.device)
        g = torch.empty_like(a)  # a is only read (the contract)
        deltas = torch.empty_like(a) if need_delta else None
        delta = grad_hn.to(cd).clone()
        for t in range(T - 1, -1, -1):
            if valid is None:
                delta = delta + grad_out[t].to(cd)
                g_t = gamma * phi_prime(a[t].to(cd), nonlin) * delta
                d_t = delta
                delta = apply_residual_transpose(res_kind, res, delta) + g_t @ w
            else:
                v = valid[t]
                delta = delta + torch.where(v, grad_out[t].to(cd), 0.0)
                g_t = torch.where(v, gamma * phi_prime(a[t].to(cd), nonlin) * delta, 0.0)
                d_t = torch.where(v, delta, 0.0)
                delta = torch.where(v, apply_residual_transpose(res_kind, res, delta) + g_t @ w, delta)
            g[t] = g_t
            if need_delta:
                deltas[t] = d_t
        return g, delta.to(a.dtype).contiguous(), deltas  # contiguous whatever grad_hn's layout (the fake's)


register_backend(TorchBackend())
