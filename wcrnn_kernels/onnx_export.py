"""The chain for ``torch.onnx.export(..., dynamo=True)``: one layer, one direction as a scan over time.

The fused op ``wcrnn_kernels::chain_fwd`` is opaque (its kernels are C++, CUDA or Triton), so it has no ONNX
translation. While the ONNX exporter traces a model (``torch.onnx.is_in_onnx_export()``), ``wcrnn_chain``
computes the same recurrence with ``torch._higher_order_ops.scan`` instead, which the exporter turns into
one ONNX ``Scan`` node: the sequence length and the batch stay dynamic, and every residual form, lengths
(packed sequences), several layers and both directions export. The arithmetic is the reference's
(``reference.py``), with the state in float32 for float16 / bfloat16 inputs like the kernels.
"""
from __future__ import annotations

import torch
from torch._higher_order_ops.scan import scan

from .reference import compute_dtype, phi
from .residual import RES_DENSE, RES_DIAG


def chain_as_scan(u, x0, w_hh, res_kind, res, gamma, lengths, nonlin):
    """output (T, B, H), h_n (B, H) of the chain, computed by a scan (see the module docstring)."""
    cd = compute_dtype(u.dtype)
    w_t, res_c, gamma_c = w_hh.to(cd).t(), res.to(cd), gamma.to(cd)

    H = u.shape[-1]
    if res_kind == RES_DIAG:
        def residual(x):
            return res_c * x
    elif res_kind == RES_DENSE:
        res_t = res_c.t()

        def residual(x):
            return x @ res_t
    else:
        # the pair swap as a gather with a fixed permutation (2k <-> 2k+1): residual.swap_pairs reshapes
        # with the batch size, which inside a scan body becomes a symbolic output the scan cannot stack
        swap = torch.arange(H, device=u.device) ^ 1

        def residual(x):
            return res_c[0] * x + res_c[1] * x.index_select(-1, swap)

    def advance(x, u_t):
        return residual(x) + gamma_c * phi(u_t.to(cd) + x @ w_t, nonlin)

    if lengths is None:
        def step(x, u_t):
            x = advance(x, u_t)
            return x, x.clone()      # a scan body may not return an alias of its carry
        h_n, out = scan(step, x0.to(cd), u)
    else:
        T = u.shape[0]
        valid = (torch.arange(T, device=u.device)[:, None] < lengths.to(u.device)[None, :]).unsqueeze(-1)

        def step(x, xs):
            u_t, v = xs
            x = torch.where(v, advance(x, u_t), x)
            return x, torch.where(v, x, torch.zeros_like(x))
        h_n, out = scan(step, x0.to(cd), (u, valid))
    return out.to(u.dtype), h_n.to(u.dtype)
