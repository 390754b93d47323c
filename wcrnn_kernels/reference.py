"""The specification as code: the plain PyTorch time loop of one WCRNN layer in one direction.

    a_t = W_ih s_t + b_ih + W_hh x_{t-1} + b_hh
    x_t = R(x_{t-1}) + gamma * phi(a_t)                       t = 1..T

Every backend is checked against this loop (autograd through it is the gradient oracle). It is written to
be obviously right: one step is one line of arithmetic, the loop iterates with ``unbind`` (indexing a
tensor per step would make autograd's backward quadratic in T), and lengths follow docs/design.md section 4.
It works for any floating dtype and device and is differentiable in every argument.
"""
from __future__ import annotations

import torch

from .residual import apply_residual, canonical_residual


def _is_tanh(nonlinearity) -> bool:
    if nonlinearity in ("tanh", 0):
        return True
    if nonlinearity in ("relu", 1):
        return False
    raise ValueError(f"nonlinearity: expected 'tanh' or 'relu' (or their codes 0, 1), got {nonlinearity!r}")


def phi(a: torch.Tensor, nonlinearity) -> torch.Tensor:
    """The nonlinearity: "tanh" / "relu", or their op codes 0 / 1 (the one definition in the package)."""
    return torch.tanh(a) if _is_tanh(nonlinearity) else torch.relu(a)


def phi_prime(a: torch.Tensor, nonlinearity) -> torch.Tensor:
    """phi'(a): 1 - tanh(a)^2, or the step function of relu (0 at a = 0)."""
    if _is_tanh(nonlinearity):
        y = torch.tanh(a)
        return 1.0 - y * y
    return (a > 0).to(a.dtype)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """State and accumulation dtype of the backends: float32 for half inputs, else the input dtype
    (docs/design.md section 10)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def wcrnn_chain_ref(u, x0, w_hh, res_kind, res, gamma, lengths=None, nonlinearity="tanh"):
    """The sequential chain on the fused-op boundary (docs/design.md section 5), by autograd.

    Shapes: u (T, B, H) precomputed input projection including both biases; x0 (B, H); w_hh (H, H);
    res the canonical residual of ``res_kind`` (see ``residual.py``); gamma (H,) or a scalar;
    lengths (B,) integer or None. Returns (output (T, B, H), h_n (B, H)).
    """
    T = u.shape[0]
    x = x0
    outs = []
    if lengths is not None:
        steps = torch.arange(T, device=u.device)
        valid = (steps[:, None] < lengths.to(u.device)[None, :]).unsqueeze(-1)  # (T, B, 1)
        valid_steps = valid.unbind(0)
    for t, u_t in enumerate(u.unbind(0)):
        x_new = apply_residual(res_kind, res, x) + gamma * phi(u_t + x @ w_hh.t(), nonlinearity)
        if lengths is None:
            x = x_new
            outs.append(x)
        else:
            v = valid_steps[t]
            x = torch.where(v, x_new, x)
            outs.append(torch.where(v, x, torch.zeros_like(x)))
    output = torch.stack(outs) if outs else u.new_zeros(u.shape)
    return output, x


def wcrnn_layer_ref(input, x0, w_ih, w_hh, b_ih=None, b_hh=None, *, residual="scalar", r=1.0,
                    theta=None, gamma=0.01, nonlinearity="tanh", lengths=None):
    """One layer, one direction, time-major: input (T, B, I), x0 (B, H) -> (output (T, B, H), h_n (B, H)).

    ``residual``/``r``/``theta`` are the user-facing parameters of docs/design.md section 2 (r a number or a
    tensor of the kind's shape, theta the rotation angles); gamma a number, a 0-d tensor or (H,).
    """
    H = w_hh.shape[0]
    u = input @ w_ih.t()
    if b_ih is not None:
        u = u + b_ih
    if b_hh is not None:
        u = u + b_hh
    res_kind, res = canonical_residual(residual, H, r, theta, dtype=input.dtype, device=input.device)
    if not isinstance(gamma, torch.Tensor):
        gamma = torch.tensor(float(gamma), dtype=input.dtype, device=input.device)
    return wcrnn_chain_ref(u, x0, w_hh, res_kind, res, gamma, lengths, nonlinearity)
