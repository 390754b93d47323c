"""Lyapunov spectra of WCRNN layers by the QR (Benettin) method, and the paper's prediction log|eig(R)|.

One layer/direction of a WCRNN, x_t = R x_{t-1} + gamma * phi(a_t) with a_t = u_t + W_hh x_{t-1}, has the
step Jacobians

    J_t = d x_t / d x_{t-1} = R + diag(gamma * phi'(a_t)) W_hh.

The Lyapunov exponents along a driven trajectory are the growth rates of k orthonormal tangent vectors:
Q_0 (H, k) orthonormal; for t = 1..T: J_t Q_{t-1} = Q_t R_t (thin QR);
lambda_i = 1 / (T - warmup) * sum_{t > warmup} log |(R_t)_ii|. They are in nats per time step, sorted
descending. For a linear residual and a small gamma they approach log|lambda_i(R)| (Dubinin &
Effenberger 2024): ``residual_log_spectrum`` gives that prediction.

The state trajectory runs through the fused op (``wcrnn_chain`` with the model's backend); the tangent
dynamics run batched over the input sequences in float64 (by default), without autograd.
"""
from __future__ import annotations

import numbers
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .contract import check_layer_direction
from .init import canonical_residual_matrix
from .ops import wcrnn_chain
from .reference import phi_prime as _phi_prime
from .residual import apply_residual
from .spectra import (NonNormality, ResidualEigenvalues, canonical_log_spectrum, nonnormality,
                      pseudospectral_radius, residual_eigenvalues, weak_coupling_check)

# the spectra toolkit moved to spectra.py; its names stay importable from here
__all__ = ["NonNormality", "ResidualEigenvalues", "canonical_log_spectrum", "layer_inputs", "lyapunov_spectrum",
           "lyapunov_spectrum_chain", "nonnormality", "pseudospectral_radius", "random_orthonormal",
           "residual_eigenvalues", "residual_log_spectrum", "step_jacobians", "weak_coupling_check"]


def random_orthonormal(hidden_size: int, k: int, *, generator: Optional[torch.Generator] = None,
                       dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """(H, k) matrix with orthonormal columns from the QR of a standard Gaussian matrix."""
    a = torch.randn(hidden_size, k, generator=generator, dtype=torch.float64)
    return torch.linalg.qr(a)[0].to(dtype=dtype, device=device)


def lyapunov_spectrum_chain(u: Tensor, x0: Tensor, w_hh: Tensor, res_kind: int, res: Tensor, gamma,
                            nonlinearity: str = "tanh", k: Optional[int] = None, *, warmup: int = 0,
                            states: Optional[Tensor] = None, q0: Optional[Tensor] = None,
                            dtype: torch.dtype = torch.float64, backend: str = "auto",
                            generator: Optional[torch.Generator] = None) -> Tensor:
    """Leading-k Lyapunov exponents of the chain x_t = R(x_{t-1}) + gamma * phi(u_t + W_hh x_{t-1}).

    Args:
        u: (T, B, H) input projection (W_ih s_t + biases), one column of the batch per input sequence.
        x0: (B, H) initial state. w_hh: (H, H). res_kind, res: canonical residual (``residual.py``).
        gamma: a number, () or (H,). nonlinearity: "tanh" or "relu".
        k: number of exponents (default H: the full spectrum).
        warmup: steps over which the tangent vectors evolve (and align with the dynamics) before
            exponents are accumulated; T must exceed it.
        states: optional (T, B, H) states x_1..x_T if already computed (else the fused op computes them).
        q0: optional (H, k) orthonormal initial tangent vectors (default: a random orthonormal set from
            ``generator``, or from seed 0 when no generator is given, the same for every sequence).
        dtype: dtype of the tangent dynamics (float64 by default: exponents near 0 need it).
        backend: the fused op's backend for the state trajectory.

    Returns:
        (B, k) exponents per sequence, in nats per step, sorted descending.
    """
    if not isinstance(u, Tensor) or u.dim() != 3:
        raise ValueError(f"u: expected a (T, B, H) tensor, got {getattr(u, 'shape', type(u).__name__)}")
    T, B, H = u.shape
    if k is None:
        k = H
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= H:
        raise ValueError(f"k: expected an integer in [1, H = {H}], got {k!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, numbers.Integral) or not 0 <= warmup < T:
        raise ValueError(f"warmup: expected an integer in [0, T = {T}), got {warmup!r}")
    if not isinstance(gamma, Tensor):
        gamma = torch.tensor(float(gamma), dtype=u.dtype, device=u.device)
    if states is None:
        with torch.no_grad():
            states, _ = wcrnn_chain(u, x0, w_hh, res_kind, res, gamma, None, nonlinearity, backend)
    elif tuple(states.shape) != (T, B, H):
        raise ValueError(f"states: expected shape (T, B, H) = {(T, B, H)}, got {tuple(states.shape)}")
    if q0 is None:
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        q0 = random_orthonormal(H, k, generator=generator)
    elif tuple(q0.shape) != (H, k):
        raise ValueError(f"q0: expected shape (H, k) = {(H, k)}, got {tuple(q0.shape)}")

    dev = u.device
    with torch.no_grad():
        u_, x0_, s_ = u.to(dtype), x0.to(dtype), states.to(dtype)
        w = w_hh.detach().to(dtype)
        res_ = res.detach().to(dtype)
        g = gamma.detach().to(dtype=dtype, device=dev).reshape(-1).expand(H)
        # all pre-activations a_t = u_t + W_hh x_{t-1} at once (one GEMM over the saved states)
        prev = torch.cat((x0_.unsqueeze(0), s_[:-1]), 0)
        gp = g * _phi_prime(u_ + prev @ w.t(), nonlinearity)  # (T, B, H): diag of gamma * phi'(a_t)
        # Tangent vectors as rows: V = Q^T (B, k, H); J Q as rows is V R^T + (V W^T) * (gamma phi')
        V = q0.detach().to(dtype=dtype, device=dev).t().expand(B, k, H).contiguous()
        acc = torch.zeros(B, k, dtype=dtype, device=dev)
        for t in range(T):
            V = apply_residual(res_kind, res_, V) + (V @ w.t()) * gp[t].unsqueeze(1)
            q, r = torch.linalg.qr(V.transpose(1, 2))
            V = q.transpose(1, 2)
            if t >= warmup:
                acc += torch.log(torch.diagonal(r, dim1=-2, dim2=-1).abs())
        lam = acc / (T - warmup)
    return lam.sort(dim=-1, descending=True).values


def layer_inputs(model, input: Tensor, hx: Optional[Tensor] = None, layer: int = 0, direction: int = 0):
    """The chain inputs of one layer/direction of a ``FusedWCRNN`` driven by ``input``.

    Returns (u (T, B, H), x0 (B, H), chain_weights) in the layer/direction's own time order (reversed for
    direction 1), with u = W_ih s_t + b for the layer's input s (the model's input for layer 0, the
    previous layer's output otherwise; dropout is not applied). ``input`` as the model takes it:
    (T, B, I), or (B, T, I) with ``batch_first``, or unbatched (T, I); all sequences of one length.
    """
    if not callable(getattr(model, "chain_weights", None)):
        hint = (": FusedWCRNN.from_rnn(model) is the same network (its exponents are the nn.RNN's)"
                if isinstance(model, torch.nn.RNN) else "")
        raise TypeError(f"model: expected a FusedWCRNN (anything with chain_weights(layer, direction)), got "
                        f"{type(model).__name__}{hint}")
    num_dir = 2 if model.bidirectional else 1
    check_layer_direction(layer, direction, model.num_layers, model.bidirectional)
    if not isinstance(input, Tensor) or input.dim() not in (2, 3):
        raise ValueError(f"input: expected a (T, B, I) tensor ((B, T, I) with batch_first, or unbatched "
                         f"(T, I)), got {getattr(input, 'shape', type(input).__name__)}")
    if input.shape[-1] != model.input_size:
        raise ValueError(f"input: expected input.size(-1) == input_size = {model.input_size}, "
                         f"got {input.shape[-1]}")
    x = input.unsqueeze(1) if input.dim() == 2 else (input.transpose(0, 1) if model.batch_first else input)
    w0 = model.weight_ih_l0
    x = x.to(dtype=w0.dtype, device=w0.device)
    T, B = x.shape[:2]
    H = model.hidden_size
    if hx is None:
        hx = x.new_zeros(model.num_layers * num_dir, B, H)
    elif input.dim() == 2:
        hx = hx.unsqueeze(1)
    if tuple(hx.shape) != (model.num_layers * num_dir, B, H):
        raise ValueError(f"hx: expected shape {(model.num_layers * num_dir, B, H)}, got {tuple(hx.shape)}")
    with torch.no_grad():
        layer_in = x
        for l in range(layer + 1):
            if l == layer:
                cw = model.chain_weights(l, direction)
                inp = layer_in if direction == 0 else layer_in.flip(0)
                return F.linear(inp, cw.w_ih, cw.bias), hx[l * num_dir + direction], cw
            outs = []
            for d in range(num_dir):
                cw = model.chain_weights(l, d)
                inp = layer_in if d == 0 else layer_in.flip(0)
                out, _ = wcrnn_chain(F.linear(inp, cw.w_ih, cw.bias), hx[l * num_dir + d], cw.w_hh,
                                     cw.res_kind, cw.res, cw.gamma, None, cw.nonlinearity, _backend(model))
                outs.append(out if d == 0 else out.flip(0))
            layer_in = torch.cat(outs, -1)
    raise AssertionError("unreachable")


def _backend(model) -> str:
    return getattr(model, "backend", "auto")


def lyapunov_spectrum(model, input: Tensor, k: Optional[int] = None, *, warmup: int = 0,
                      hx: Optional[Tensor] = None, layer: int = 0, direction: int = 0,
                      q0: Optional[Tensor] = None, dtype: torch.dtype = torch.float64,
                      generator: Optional[torch.Generator] = None) -> Tensor:
    """Leading-k Lyapunov spectrum of one layer/direction of a ``FusedWCRNN`` driven by ``input``.

    The exponents of J_t = R + diag(gamma * phi'(a_t)) W_hh along the trajectory that ``input`` drives,
    by the QR method (see the module docstring), one spectrum per input sequence.

    Args:
        model: a ``FusedWCRNN`` (anything with ``chain_weights(layer, direction)`` and nn.RNN's config).
        input: as the model takes it ((T, B, I), (B, T, I) with batch_first, or unbatched (T, I)).
        k: number of exponents (default: all H). warmup: steps before accumulation starts (< T).
        hx: optional initial states as for the model's forward. layer, direction: which chain.
        q0, dtype, generator: see ``lyapunov_spectrum_chain``.

    Returns:
        (B, k) exponents in nats per step, sorted descending ((k,) for unbatched input). Their
        prediction for a small gamma is ``residual_log_spectrum(model)``.

    Example::

        model = FusedWCRNN(2, 64, r=1.01, gamma=0.01)
        lam = lyapunov_spectrum(model, torch.rand(1000, 8, 2), warmup=100)   # (8, 64), all near log 1.01
    """
    u, x0, cw = layer_inputs(model, input, hx, layer, direction)
    lam = lyapunov_spectrum_chain(u, x0, cw.w_hh, cw.res_kind, cw.res, cw.gamma, cw.nonlinearity, k,
                                  warmup=warmup, q0=q0, dtype=dtype, backend=_backend(model),
                                  generator=generator)
    return lam[0] if input.dim() == 2 else lam


def residual_log_spectrum(model, layer: int = 0, direction: int = 0) -> Tensor:
    """The paper's prediction for a small gamma: log |lambda_i(R)| of a ``FusedWCRNN`` layer's residual,
    sorted descending (H,). ``-inf`` for a zero eigenvalue (residual "none")."""
    check_layer_direction(layer, direction, model.num_layers, model.bidirectional)
    cw = model.chain_weights(layer, direction)
    return canonical_log_spectrum(cw.res_kind, cw.res)


def step_jacobians(model, input: Tensor, hx: Optional[Tensor] = None, layer: int = 0, direction: int = 0,
                   dtype: torch.dtype = torch.float64) -> Tensor:
    """Explicit Jacobians J_t = R + diag(gamma * phi'(a_t)) W_hh along the driven trajectory.

    Returns (T, B, H, H) in ``dtype`` (memory T*B*H^2: for small models and short inputs; the paper's
    plots of eig(J_t) over time use these).
    """
    u, x0, cw = layer_inputs(model, input, hx, layer, direction)
    with torch.no_grad():
        states, _ = wcrnn_chain(u, x0, cw.w_hh, cw.res_kind, cw.res, cw.gamma, None, cw.nonlinearity,
                                _backend(model))
        prev = torch.cat((x0.unsqueeze(0), states[:-1]), 0).to(dtype)
        w = cw.w_hh.to(dtype)
        gp = cw.gamma.to(dtype) * _phi_prime(u.to(dtype) + prev @ w.t(), cw.nonlinearity)
        R = canonical_residual_matrix(cw.res_kind, cw.res.to(dtype))
        J = R + gp.unsqueeze(-1) * w
    return J[:, 0] if input.dim() == 2 else J
