"""Lyapunov spectra (wcrnn_kernels.dynamics): the paper's claims and an independent float64 computation.

Oracles: (1) the paper's claim that with gamma = 0.01 the exponents are close to log|lambda(R)|
(docs/design.md section 8.4); (2) an explicit-Jacobian computation written here: Jacobians of one step of the
reference loop by autograd, their product formed in numpy, one QR at the end.
"""
from __future__ import annotations

import math

import mpmath
import pytest
import torch

from wcrnn_kernels import init
from wcrnn_kernels.dynamics import (canonical_log_spectrum, layer_inputs, lyapunov_spectrum,
                                    lyapunov_spectrum_chain, residual_log_spectrum, step_jacobians)
from wcrnn_kernels.module import FusedWCRNN
from wcrnn_kernels.ops import wcrnn_chain
from wcrnn_kernels.reference import wcrnn_chain_ref
from wcrnn_kernels.residual import canonical_residual

F64 = torch.float64


def _drive(T, B, I, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(T, B, I, generator=g, dtype=F64)


# ------------------------------------------------------------------------------------ paper's claims

@pytest.mark.parametrize("r", init.PAPER_R_GRID)
def test_scalar_residual_exponents_are_log_r(r):
    torch.manual_seed(1)
    model = FusedWCRNN(2, 32, r=r, gamma=0.01, dtype=F64)
    lam = lyapunov_spectrum(model, _drive(600, 3, 2, 0), warmup=100)
    assert lam.shape == (3, 32)
    dev = (lam - math.log(r)).abs()
    assert dev.max() < 0.02, f"max |lambda - log r| = {dev.max():.4f}"
    assert (lam.mean(-1) - math.log(r)).abs().max() < 1e-3
    # the prediction helper says the same thing
    assert torch.allclose(residual_log_spectrum(model), torch.full((32,), math.log(r), dtype=F64))


def test_scalar_residual_relu_float32_model():
    # float32 model (the trajectory runs in float32), relu, leading-k only, batch_first input
    torch.manual_seed(2)
    model = FusedWCRNN(3, 20, nonlinearity="relu", r=1.0025, gamma=0.01, batch_first=True)
    lam = lyapunov_spectrum(model, torch.rand(4, 500, 3), k=5, warmup=50)
    assert lam.shape == (4, 5) and lam.dtype == F64
    assert (lam - math.log(1.0025)).abs().max() < 0.02


def test_diagonal_residual_gives_sorted_log_r():
    torch.manual_seed(3)
    H = 24
    r = init.heterogeneous_residual(H, "geometric", tau_min=20.0, tau_max=2000.0, dtype=F64)
    model = FusedWCRNN(2, H, residual="diagonal", r=r, gamma=0.01, dtype=F64)
    lam = lyapunov_spectrum(model, _drive(800, 2, 2, 1), warmup=100)
    expected = torch.log(r).sort(descending=True).values
    assert torch.equal(residual_log_spectrum(model), expected)
    assert (lam - expected).abs().max() < 0.02
    assert (lam.mean(-1) - expected.mean()).abs().max() < 1e-3


def test_rotational_residual_gives_log_rho_twice():
    torch.manual_seed(4)
    H = 18
    g = torch.Generator().manual_seed(0)
    rho = 0.95 + 0.06 * torch.rand(H // 2, generator=g, dtype=F64)
    rho, theta = init.rotational_residual(H, rho=rho, theta="uniform", generator=g, dtype=F64)
    model = FusedWCRNN(2, H, residual="rotational", r=rho, theta=theta, gamma=0.01, dtype=F64)
    lam = lyapunov_spectrum(model, _drive(800, 2, 2, 2), warmup=100)
    expected = torch.log(rho).repeat_interleave(2).sort(descending=True).values
    assert torch.allclose(residual_log_spectrum(model), expected, rtol=0, atol=1e-14)
    assert (lam - expected).abs().max() < 0.02
    assert (lam.mean(-1) - expected.mean()).abs().max() < 1e-3


def test_dense_orthogonal_residual_gives_log_gain():
    torch.manual_seed(5)
    H = 16
    R = init.orthogonal_matrix(H, gain=0.99, generator=torch.Generator().manual_seed(1), dtype=F64)
    model = FusedWCRNN(2, H, residual="dense", r=R, gamma=0.01, dtype=F64)
    lam = lyapunov_spectrum(model, _drive(500, 2, 2, 3), warmup=50)
    assert torch.allclose(residual_log_spectrum(model), torch.full((H,), math.log(0.99), dtype=F64), atol=1e-12)
    assert (lam - math.log(0.99)).abs().max() < 0.02


def test_strong_coupling_breaks_the_approximation():
    # The claim is specific to weak coupling: at gamma = 1 (an Elman-like update on top of R = I) the
    # spectrum must differ from log r = 0 by much more than the weak-coupling tolerance, or the tests
    # above could not tell a wrong Jacobian from a right one.
    torch.manual_seed(6)
    model = FusedWCRNN(2, 16, r=1.0, gamma=1.0, dtype=F64)
    with torch.no_grad():
        model.weight_hh_l0.mul_(4.0)
    lam = lyapunov_spectrum(model, _drive(300, 1, 2, 4), warmup=50)
    assert lam.abs().max() > 0.1


# ------------------------------------------------------------------- independent explicit Jacobians

def _explicit_spectrum(u, x0, w_hh, res_kind, res, gamma, nonlin, q0, warmup):
    """Per sequence: Jacobians of one reference step by autograd, their products and one QR per phase
    in 40-digit arithmetic (mpmath), so the oracle's own error is far below float64's even where the
    plain product of the Jacobians is ill-conditioned."""
    T, B, H = u.shape
    mpmath.mp.dps = 40
    out = []
    for b in range(B):
        x = x0[b]
        jac = []
        for t in range(T):
            def step(xp, t=t):
                y, _ = wcrnn_chain_ref(u[t:t + 1, b:b + 1], xp[None], w_hh, res_kind, res, gamma, None, nonlin)
                return y[0, 0]
            jac.append(mpmath.matrix(torch.autograd.functional.jacobian(step, x).tolist()))
            x = step(x).detach()
        q = mpmath.matrix(q0.tolist())
        if warmup:
            p = mpmath.eye(H)
            for j in jac[:warmup]:
                p = j * p
            q = mpmath.qr(p * q)[0]
            q = q[:, :q0.shape[1]]
        p = mpmath.eye(H)
        for j in jac[warmup:]:
            p = j * p
        r = mpmath.qr(p * q)[1]
        lam = [float(mpmath.log(abs(r[i, i])) / (T - warmup)) for i in range(q0.shape[1])]
        out.append(sorted(lam, reverse=True))
    return torch.tensor(out, dtype=F64)


@pytest.mark.parametrize("kind,nonlin,H,k", [("scalar", "tanh", 5, 5), ("diagonal", "relu", 7, 3),
                                             ("rotational", "tanh", 6, 4), ("dense", "tanh", 3, 3),
                                             ("none", "tanh", 4, 2)])
def test_spectrum_matches_explicit_jacobians(kind, nonlin, H, k):
    g = torch.Generator().manual_seed(H)
    T, B, warmup = 23, 2, 4
    u = torch.randn(T, B, H, generator=g, dtype=F64)
    x0 = 0.3 * torch.randn(B, H, generator=g, dtype=F64)
    w_hh = torch.randn(H, H, generator=g, dtype=F64) / math.sqrt(H)
    r = {"scalar": 0.97, "diagonal": 0.8 + 0.3 * torch.rand(H, generator=g, dtype=F64),
         "rotational": 0.9 + 0.2 * torch.rand(H // 2, generator=g, dtype=F64),
         "dense": torch.randn(H, H, generator=g, dtype=F64) / math.sqrt(H), "none": 0.0}[kind]
    theta = torch.rand(H // 2, generator=g, dtype=F64) * math.pi if kind == "rotational" else None
    res_kind, res = canonical_residual(kind, H, r, theta, dtype=F64)
    gamma = 0.2 + 0.8 * torch.rand(H, generator=g, dtype=F64)  # strong, per-unit coupling
    q0 = torch.linalg.qr(torch.randn(H, k, generator=g, dtype=F64))[0]
    lam = lyapunov_spectrum_chain(u, x0, w_hh, res_kind, res, gamma, nonlin, k, warmup=warmup, q0=q0,
                                  backend="reference")
    expected = _explicit_spectrum(u, x0, w_hh, res_kind, res, gamma, nonlin, q0, warmup)
    assert torch.isfinite(lam).all()
    assert (lam - expected).abs().max() <= 1e-10 * max(1.0, expected.abs().max().item())


def test_layer_inputs_and_jacobians_of_a_deep_bidirectional_model():
    # Layer 1, reverse direction of a 2-layer bidirectional batch_first model: the chain that
    # layer_inputs reconstructs must produce the module's own output, and step_jacobians must be the
    # autograd Jacobians of that chain's steps.
    torch.manual_seed(7)
    H, T, B = 6, 9, 2
    model = FusedWCRNN(3, H, num_layers=2, bidirectional=True, batch_first=True, residual="rotational",
                       r=0.98, gamma=0.3, dtype=F64)
    x = torch.randn(B, T, 3, dtype=F64)
    hx = 0.1 * torch.randn(4, B, H, dtype=F64)
    u, x0, cw = layer_inputs(model, x, hx, layer=1, direction=1)
    states, _ = wcrnn_chain(u, x0, cw.w_hh, cw.res_kind, cw.res, cw.gamma, None, cw.nonlinearity, "reference")
    out, _ = model(x, hx)
    assert torch.allclose(states.flip(0).transpose(0, 1), out[..., H:], rtol=0, atol=1e-13)

    J = step_jacobians(model, x, hx, layer=1, direction=1)
    assert J.shape == (T, B, H, H)
    for t in (0, 4, T - 1):
        for b in range(B):
            xp = x0[b] if t == 0 else states[t - 1, b]

            def step(v):
                y, _ = wcrnn_chain_ref(u[t:t + 1, b:b + 1], v[None], cw.w_hh, cw.res_kind, cw.res, cw.gamma)
                return y[0, 0]
            assert torch.allclose(J[t, b], torch.autograd.functional.jacobian(step, xp), rtol=0, atol=1e-14)

    # and the model-level spectrum equals the chain-level one on the same inputs
    q0 = torch.linalg.qr(torch.randn(H, H, dtype=F64))[0]
    lam = lyapunov_spectrum(model, x, hx=hx, layer=1, direction=1, q0=q0, warmup=2)
    lam2 = lyapunov_spectrum_chain(u, x0, cw.w_hh, cw.res_kind, cw.res, cw.gamma, q0=q0, warmup=2)
    assert torch.allclose(lam, lam2, rtol=0, atol=1e-13)


def test_unbatched_input_and_default_q0_is_reproducible():
    torch.manual_seed(8)
    model = FusedWCRNN(2, 8, r=0.99, dtype=F64)
    x = _drive(50, 1, 2, 5)[:, 0]
    lam = lyapunov_spectrum(model, x, k=3)
    assert lam.shape == (3,)
    assert torch.equal(lam, lyapunov_spectrum(model, x, k=3))
    assert torch.equal(lam, lyapunov_spectrum(model, x.unsqueeze(1), k=3)[0])


def test_canonical_log_spectrum_dense_eigenvalues():
    R = init.fbchain_matrix(7, beta=0.04, alpha=0.99, diag=0.5, dtype=F64)
    k = torch.arange(1, 8, dtype=F64)
    eig = 0.5 + 2 * math.sqrt(0.99 * 0.04) * torch.cos(k * math.pi / 8)
    assert torch.allclose(canonical_log_spectrum(2, R), torch.log(eig.abs()).sort(descending=True).values,
                          atol=1e-12)


def test_bad_arguments_name_the_argument():
    model = FusedWCRNN(2, 8)
    x = torch.rand(10, 2, 2)
    with pytest.raises(ValueError, match="warmup"):
        lyapunov_spectrum(model, x, warmup=10)
    with pytest.raises(ValueError, match="k:"):
        lyapunov_spectrum(model, x, k=9)
    with pytest.raises(ValueError, match="layer"):
        lyapunov_spectrum(model, x, layer=1)
    with pytest.raises(ValueError, match="direction"):
        lyapunov_spectrum(model, x, direction=1)
    with pytest.raises(ValueError, match="input"):
        lyapunov_spectrum(model, torch.rand(10, 2, 3))
    with pytest.raises(ValueError, match="q0"):
        lyapunov_spectrum(model, x, k=2, q0=torch.eye(8))
    with pytest.raises(ValueError, match="hx"):
        lyapunov_spectrum(model, x, hx=torch.zeros(1, 3, 8))
    with pytest.raises(TypeError, match=r"model: expected a FusedWCRNN .* got RNN: FusedWCRNN.from_rnn\(model\)"):
        lyapunov_spectrum(torch.nn.RNN(2, 8), x)


def test_layer_and_direction_are_checked_as_the_module_checks_them():
    from wcrnn_kernels.dynamics import residual_log_spectrum
    from wcrnn_kernels.spectra import weak_coupling_check
    model = FusedWCRNN(3, 4, num_layers=2)
    x = torch.zeros(5, 2, 3)
    for call in (lambda **k: residual_log_spectrum(model, **k), lambda **k: weak_coupling_check(model, **k),
                 lambda **k: layer_inputs(model, x, **k), lambda **k: model.chain_weights(**k)):
        with pytest.raises(ValueError, match=r"layer: expected an integer in \[0, 1\] \(num_layers = 2\), got 2"):
            call(layer=2)
        with pytest.raises(ValueError, match=r"direction: expected 0 \(the module is not bidirectional\), got 1"):
            call(direction=1)
