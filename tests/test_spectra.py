"""Eigenvalues of residuals that can be trusted, non-normality, and Orhan & Pitkow's convention.

Oracles: closed forms (tridiagonal Toeplitz eigenvalues 2 sqrt(alpha beta) cos(k pi / (H + 1)); the
pseudospectral radius of a normal matrix and of a 2x2 Jordan block), multiple-precision eigenvalues from
mpmath, and Orhan & Pitkow's row-vector matrices rebuilt here from their formulas.
"""
from __future__ import annotations

import math
import warnings

import mpmath
import pytest
import torch

from wcrnn_kernels import dynamics, init
from wcrnn_kernels.dynamics import (canonical_log_spectrum, nonnormality, pseudospectral_radius,
                                    residual_eigenvalues, weak_coupling_check)
from wcrnn_kernels.module import FusedWCRNN

F64 = torch.float64
A, B = 0.99, 0.04  # Orhan & Pitkow's forward and feedback gains


def _toeplitz_closed_form(H, d, a, b):
    k = torch.arange(1, H + 1, dtype=F64)
    return d + 2 * math.sqrt(a * b) * torch.cos(k * math.pi / (H + 1))


def _by_modulus(v):
    v = v.to(torch.complex128)
    return v[torch.argsort(v.abs(), descending=True, stable=True)]


# ------------------------------------------------------------------------ closed forms

@pytest.mark.parametrize("H", [33, 64, 128])
@pytest.mark.parametrize("diag", [0.0, 0.5])
def test_fbchain_eigenvalues_match_the_closed_form(H, diag):
    R = init.fbchain_matrix(H, alpha=A, beta=B, diag=diag, dtype=F64)
    exact = _toeplitz_closed_form(H, diag, A, B)
    for method in ("auto", "toeplitz", "tridiagonal"):
        ev = residual_eigenvalues(R, method=method)
        assert ev.reliable and ev.values.imag.abs().max() == 0
        got = ev.values.real.sort().values
        assert (got - exact.sort().values).abs().max() < 1e-13, method
    lam = canonical_log_spectrum(2, R)
    assert abs(lam[0].item() - math.log(exact.abs().max().item())) < 1e-13
    # the paper's example in docs/science.md: H = 64, diag 0 -> the leading log-modulus is -0.9225
    if H == 64 and diag == 0.0:
        assert abs(lam[0].item() - (-0.9225)) < 5e-5


@pytest.mark.parametrize("H", [33, 65, 127])
def test_odd_size_has_an_exact_zero_eigenvalue(H):
    R = init.fbchain_matrix(H, alpha=A, beta=B, dtype=F64)
    ev = residual_eigenvalues(R)
    assert ev.method == "toeplitz"
    assert (ev.values == 0).sum() == 1  # k = (H + 1) / 2: cos(pi / 2) = 0 exactly
    assert canonical_log_spectrum(2, R)[-1].item() == -math.inf
    # the structure-aware symmetric path finds it to rounding
    evt = residual_eigenvalues(R, method="tridiagonal")
    assert evt.values.abs().min() < 1e-15


def test_general_solver_on_the_fbchain_is_wrong_and_says_so():
    # the failure: float64 eig moves the eigenvalues of this matrix by O(1)
    H = 64
    R = init.fbchain_matrix(H, alpha=A, beta=B, dtype=F64)
    ev = residual_eigenvalues(R, method="eig", on_unreliable="ignore")
    exact = _toeplitz_closed_form(H, 0.0, A, B)
    err = (ev.values.abs().sort().values - exact.abs().sort().values).abs().max()
    assert err > 0.05  # wrong...
    assert not ev.reliable and ev.error_bound.max() > err  # ...and its error bound says so
    with pytest.raises(ValueError, match="cannot be trusted"):
        residual_eigenvalues(R, method="eig")
    with pytest.warns(UserWarning, match="cannot be trusted"):
        residual_eigenvalues(R, method="eig", on_unreliable="warn")


def test_hidden_structure_falls_back_to_a_checked_general_solve():
    # a permutation similarity hides the tridiagonal structure (same eigenvalues, same conditioning)
    H = 16
    R = init.fbchain_matrix(H, alpha=A, beta=B, dtype=F64)
    P = torch.eye(H, dtype=F64)[torch.randperm(H, generator=torch.Generator().manual_seed(0))]
    Rp = P @ R @ P.t()
    with pytest.raises(ValueError, match="method='mpmath'"):
        canonical_log_spectrum(2, Rp)
    ev = residual_eigenvalues(Rp, method="mpmath")
    assert ev.reliable and ev.method == "mpmath"
    exact = _toeplitz_closed_form(H, 0.0, A, B)
    assert (ev.values.real.sort().values - exact.sort().values).abs().max() < 1e-12
    assert ev.values.imag.abs().max() < 1e-12


def test_well_conditioned_dense_residual_is_reliable_in_float64():
    g = torch.Generator().manual_seed(2)
    R = torch.randn(12, 12, generator=g, dtype=F64) / math.sqrt(12)
    ev = residual_eigenvalues(R)
    assert ev.method == "eig" and ev.reliable and ev.error_bound.max() < 1e-10
    with mpmath.workdps(40):
        ref = mpmath.eig(mpmath.matrix(R.tolist()), left=False, right=False)
    ref = _by_modulus(torch.tensor([complex(z) for z in ref], dtype=torch.complex128))
    assert (ev.values.abs() - ref.abs()).abs().max() < 1e-12


def test_triangular_chain_is_exact_and_nilpotent():
    M = init.chain_matrix(40, alpha=1.02, dtype=F64)
    ev = residual_eigenvalues(M)
    assert ev.method == "diagonal" and torch.equal(ev.values, torch.zeros(40, dtype=torch.complex128))
    assert torch.isneginf(canonical_log_spectrum(2, M)).all()
    M2 = init.chain_matrix(40, alpha=1.02, diag=0.9, dtype=F64).t()  # upper triangular too
    assert torch.allclose(canonical_log_spectrum(2, M2), torch.full((40,), math.log(0.9), dtype=F64),
                          rtol=0, atol=1e-15)


def test_tridiagonal_non_toeplitz_splits_and_balances():
    g = torch.Generator().manual_seed(4)
    H = 12
    d = torch.rand(H, generator=g, dtype=F64)
    a = torch.rand(H - 1, generator=g, dtype=F64) + 0.5
    b = 0.05 * (torch.rand(H - 1, generator=g, dtype=F64) + 0.1)
    b[3] = 0.0  # splits into a block-triangular pair of blocks
    b[7] = -b[7]  # a negative product: that block goes to the general solver after balancing
    R = torch.diag(d) + torch.diag(a, -1) + torch.diag(b, 1)
    ev = residual_eigenvalues(R)
    assert ev.method == "tridiagonal" and ev.reliable
    with mpmath.workdps(60):
        ref = mpmath.eig(mpmath.matrix(R.tolist()), left=False, right=False)
    ref = _by_modulus(torch.tensor([complex(z) for z in ref], dtype=torch.complex128))
    assert (ev.values.abs() - ref.abs()).abs().max() < 1e-10
    # an all-negative Toeplitz block: d + 2 i sqrt(|a b|) cos(k pi/(H+1))
    Rn = init.fbchain_matrix(9, alpha=1.0, beta=-0.25, dtype=F64)
    evn = residual_eigenvalues(Rn)
    k = torch.arange(1, 10, dtype=F64)
    assert torch.allclose(evn.values.imag.abs().sort().values,
                          (torch.cos(k * math.pi / 10)).abs().sort().values, atol=1e-14)


# ------------------------------------------------------------------------ non-normality

def test_pseudospectral_radius_closed_forms():
    D = torch.diag(torch.tensor([0.9, -0.5, 0.3], dtype=F64))
    for eps in (1e-1, 1e-3, 1e-6):
        assert abs(pseudospectral_radius(D, eps) - (0.9 + eps)) < 1e-9
    c = 2.0
    J = torch.tensor([[0.0, c], [0.0, 0.0]], dtype=F64)  # sigma_min(zI - J) = eps on |z|^2 = eps^2 + c eps
    for eps in (1e-2, 1e-4, 1e-8):
        assert abs(pseudospectral_radius(J, eps) - math.sqrt(eps * eps + c * eps)) < 1e-9


def test_nonnormality_of_normal_and_non_normal_residuals():
    Q = init.orthogonal_matrix(10, gain=0.9, generator=torch.Generator().manual_seed(1), dtype=F64)
    W = torch.randn(10, 10, generator=torch.Generator().manual_seed(2), dtype=F64) / math.sqrt(10)
    nq = nonnormality(Q, gamma=0.01, w_hh=W)
    assert nq.henrici < 1e-7 and abs(nq.eig_condition - 1) < 1e-8 and abs(nq.transient_growth - 1) < 1e-8
    eps = 0.01 * torch.linalg.matrix_norm(W, 2).item()
    assert abs(nq.eps - eps) < 1e-15 and abs(nq.predicted_shift - math.log(1 + eps / 0.9)) < 1e-6
    H = 16
    W16 = torch.randn(H, H, generator=torch.Generator().manual_seed(3), dtype=F64) / math.sqrt(H)
    nf = nonnormality(init.fbchain_matrix(H, alpha=A, beta=B, dtype=F64), gamma=1e-3, w_hh=W16)
    # eigenvector condition ~ (alpha / beta)^((H - 1) / 2) and a large shift at gamma = 1e-3
    assert nf.eig_condition > (A / B) ** ((H - 1) / 2) / 10
    assert nf.transient_growth > 1e6 and nf.predicted_shift > 0.1
    assert nonnormality(init.chain_matrix(8, alpha=1.0, dtype=F64)).transient_growth == math.inf


def test_weak_coupling_check_warns_for_a_non_normal_residual_only():
    torch.manual_seed(0)
    normal = FusedWCRNN(2, 16, residual="scalar", r=0.9, gamma=0.01, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = weak_coupling_check(normal)
    assert rep.predicted_shift < 0.05
    fb = FusedWCRNN(2, 16, residual="dense", r=init.fbchain_matrix(16, alpha=A, beta=B, dtype=F64),
                    gamma=0.01, dtype=F64)
    with pytest.warns(UserWarning, match="does not hold"):
        rep = weak_coupling_check(fb)
    assert rep.predicted_shift > 0.1
    # R = 0 (no residual): no prediction to hold, said plainly (it printed "up to inf above -inf")
    with pytest.warns(UserWarning, match="R = 0 .* prediction log\|lambda\(R\)\| is -inf") as caught:
        rep = weak_coupling_check(FusedWCRNN(2, 16, residual="none", gamma=1.0, dtype=F64))
    assert rep.spectral_radius == 0 and len(caught) == 1 and "inf above" not in str(caught[0].message)


def test_non_normal_residual_exponent_needs_a_tiny_gamma():
    # the measurement, small: fbchain H = 8; at gamma = 1e-2 the leading exponent is far above
    # log rho(R), at gamma = 1e-7 it is on it (and below the pseudospectral estimate at every gamma)
    H, T = 8, 800
    R = init.fbchain_matrix(H, alpha=A, beta=B, dtype=F64)
    log_rho = math.log(residual_eigenvalues(R).values.abs().max().item())
    torch.manual_seed(0)
    rnn = torch.nn.RNN(1, H, dtype=F64)
    u = torch.rand(T, 2, H, generator=torch.Generator().manual_seed(0), dtype=F64) - 0.5
    out = {}
    for g in (1e-2, 1e-7):
        lam = dynamics.lyapunov_spectrum_chain(u, torch.zeros(2, H, dtype=F64), rnn.weight_hh_l0.detach(), 2,
                                               R, g, k=1, warmup=300, backend="torch")
        out[g] = lam.mean().item()
        rep = nonnormality(R, gamma=g, w_hh=rnn.weight_hh_l0.detach())
        assert out[g] < math.log(rep.pseudospectral_radius) + 0.02
    assert out[1e-2] - log_rho > 0.1
    assert abs(out[1e-7] - log_rho) < 0.01


def test_bad_arguments_name_the_argument():
    R = init.fbchain_matrix(4, dtype=F64)
    with pytest.raises(ValueError, match="R:"):
        residual_eigenvalues(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="method"):
        residual_eigenvalues(R, method="qr")
    with pytest.raises(ValueError, match="method"):
        residual_eigenvalues(torch.randn(4, 4, dtype=F64), method="toeplitz")
    with pytest.raises(ValueError, match="on_unreliable"):
        residual_eigenvalues(R, on_unreliable="maybe")
    with pytest.raises(ValueError, match="tol"):
        residual_eigenvalues(R, tol=0)
    with pytest.raises(ValueError, match="eps"):
        pseudospectral_radius(R, -1.0)
    with pytest.raises(ValueError, match="w_hh"):
        nonnormality(R, gamma=0.01)
    with pytest.raises(TypeError):
        init.chain_matrix(4, 0.5, 1.02)  # scales are keyword-only
    with pytest.raises(TypeError):
        init.fbchain_matrix(4, 0.04)
    with pytest.raises(ValueError, match="alpha"):
        init.chain_matrix(4, alpha=float("nan"))


# ------------------------------------------------------------------------ Orhan & Pitkow's convention

def _their_chain(n, diag_gain=0.0, offdiag_gain=1.02):
    """Their chain_init, rebuilt from its formula: row-vector matrix with the link on the superdiagonal."""
    return diag_gain * torch.eye(n, dtype=F64) + offdiag_gain * torch.diag(torch.ones(n - 1, dtype=F64), 1)


def _their_fbchain(n, diag_gain=0.0, offdiag_gain=0.04):
    """Their fbchain_init: forward 0.99 on the superdiagonal (hard-coded), feedback on the subdiagonal."""
    return (diag_gain * torch.eye(n, dtype=F64) + 0.99 * torch.diag(torch.ones(n - 1, dtype=F64), 1)
            + offdiag_gain * torch.diag(torch.ones(n - 1, dtype=F64), -1))


def _keras_rnn(K, K_in, xs, act):
    """Keras SimpleRNN without bias: h_t = act(x_t @ K_in + h_{t-1} @ K) (row vectors)."""
    h = torch.zeros(K.shape[0], dtype=F64)
    out = []
    for x in xs:
        h = act(x @ K_in + h @ K)
        out.append(h)
    return torch.stack(out)


def _torch_rnn(W_hh, W_ih, xs, nonlinearity):
    rnn = torch.nn.RNN(W_ih.shape[1], W_hh.shape[0], nonlinearity=nonlinearity, dtype=F64)
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(W_hh)
        rnn.weight_ih_l0.copy_(W_ih)
        rnn.bias_hh_l0.zero_()
        rnn.bias_ih_l0.zero_()
        out, _ = rnn(xs)
    return out


def test_orhan_pitkow_mapping_and_pulse_propagation():
    n = 6
    assert torch.equal(init.chain_matrix(n, alpha=1.02, diag=0.5, dtype=F64), _their_chain(n, 0.5, 1.02).t())
    assert torch.equal(init.fbchain_matrix(n, alpha=0.99, beta=0.07, diag=0.1, dtype=F64),
                       _their_fbchain(n, 0.1, 0.07).t())
    # a unit pulse into input 0 through their non-normal source projection 0.9 * I, relu network
    T = 5
    xs = torch.zeros(T, n, dtype=F64)
    xs[0, 0] = 1.0
    K_in = 0.9 * torch.eye(n, dtype=F64)
    for theirs, ours in ((_their_chain(n), init.chain_matrix(n, alpha=1.02, dtype=F64)),
                         (_their_fbchain(n), init.fbchain_matrix(n, alpha=0.99, beta=0.04, dtype=F64))):
        h_keras = _keras_rnn(theirs, K_in, xs, torch.relu)
        h_ours = _torch_rnn(ours, K_in.t(), xs, "relu")
        assert torch.allclose(h_keras, h_ours, rtol=0, atol=1e-15)
    h = _torch_rnn(init.chain_matrix(n, alpha=1.02, dtype=F64), K_in, xs, "relu")
    assert abs(h[1, 1].item() - 0.918) < 5e-4 and abs(h[3, 3].item() - 0.955) < 5e-4  # 0.9 * 1.02^k
    # their array used directly as weight_hh: the chain runs backwards and the pulse dies
    dead = _torch_rnn(_their_chain(n), K_in, xs, "relu")
    assert dead[1:].abs().max().item() == 0.0
    # their fbchain array used directly: the pulse moves on with the feedback gain 0.04, not 0.99
    weak = _torch_rnn(_their_fbchain(n), K_in, xs, "relu")
    assert abs(weak[1, 1].item() - 0.9 * 0.04) < 1e-15
