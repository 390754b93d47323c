"""Initialisations (wcrnn_kernels.init): each formula, the residual matrix against the kernels' residual,
and the weakly coupled residual initialisation of nn.RNN against autograd Jacobians at the origin."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from wcrnn_kernels import init
from wcrnn_kernels.module import FusedWCRNN
from wcrnn_kernels.residual import apply_residual, canonical_residual

F64 = torch.float64


# ------------------------------------------------------------------------------------------ regimes

def test_paper_grid_and_regimes():
    assert init.PAPER_R_GRID == (0.95, 0.995, 1.0, 1.0025, 1.01)
    assert init.PAPER_GAMMA == 0.01
    assert init.scalar_residual("critical") == 1.0
    assert init.scalar_residual("strongly_subcritical") == 0.95
    assert init.scalar_residual("subcritical") == 0.995
    assert init.scalar_residual("supercritical") == 1.0025
    assert init.scalar_residual("strongly_supercritical") == 1.01
    assert init.scalar_residual(0.9) == 0.9
    assert [init.regime_of(r) for r in init.PAPER_R_GRID] == [
        "subcritical", "subcritical", "critical", "supercritical", "supercritical"]
    with pytest.raises(ValueError, match="regime"):
        init.scalar_residual("chaotic")
    with pytest.raises(ValueError, match="regime"):
        init.scalar_residual(-1.0)


# ------------------------------------------------------------------------- heterogeneous residuals

def test_timescale_residual_formula():
    tau = torch.tensor([1.0, 10.0, 1000.0, float("inf"), -50.0], dtype=F64)
    r = init.timescale_residual(tau)
    assert torch.allclose(r, torch.exp(-1 / tau), rtol=0, atol=0)
    assert r[3] == 1.0 and r[4] > 1.0
    # memory of a pulse after tau steps is 1/e
    assert torch.allclose(r[:3] ** tau[:3], torch.full((3,), math.exp(-1), dtype=F64), rtol=1e-12)
    with pytest.raises(ValueError, match="tau"):
        init.timescale_residual(torch.tensor([0.0, 1.0]))


def test_memory_timescales_distributions():
    g = torch.Generator().manual_seed(0)
    tau = init.memory_timescales(20000, "loguniform", 10.0, 1000.0, generator=g, dtype=F64)
    assert tau.min() >= 10.0 and tau.max() <= 1000.0
    # log tau uniform on [log 10, log 1000]: each decade holds half the units, mean log10 tau = 2
    assert abs((tau < 100).double().mean().item() - 0.5) < 0.02
    assert abs(torch.log10(tau).mean().item() - 2.0) < 0.02
    tau = init.memory_timescales(20000, "uniform", 10.0, 1000.0, generator=g, dtype=F64)
    assert abs(tau.mean().item() - 505.0) < 10.0
    geo = init.memory_timescales(5, "geometric", 1.0, 10000.0, dtype=F64)
    assert torch.allclose(geo, torch.tensor([1.0, 10.0, 100.0, 1000.0, 10000.0], dtype=F64), rtol=1e-12)
    lin = init.memory_timescales(3, "linear", 10.0, 30.0, dtype=F64)
    assert torch.allclose(lin, torch.tensor([10.0, 20.0, 30.0], dtype=F64))
    assert init.memory_timescales(1, "geometric", 7.0, 9.0, dtype=F64).tolist() == [7.0]
    with pytest.raises(ValueError, match="distribution"):
        init.memory_timescales(4, "gaussian")
    with pytest.raises(ValueError, match="tau_min"):
        init.memory_timescales(4, tau_min=10.0, tau_max=1.0)
    with pytest.raises(ValueError, match="hidden_size"):
        init.memory_timescales(0)


def test_heterogeneous_residual_is_exp_of_minus_inverse_timescales():
    r = init.heterogeneous_residual(17, "loguniform", 5.0, 500.0, generator=torch.Generator().manual_seed(3),
                                    dtype=F64)
    tau = init.memory_timescales(17, "loguniform", 5.0, 500.0, generator=torch.Generator().manual_seed(3),
                                 dtype=F64)
    assert r.shape == (17,) and r.dtype == F64
    assert torch.allclose(r, torch.exp(-1.0 / tau), rtol=1e-15, atol=0)
    assert (r > math.exp(-1 / 5.0) - 1e-15).all() and (r < math.exp(-1 / 500.0) + 1e-15).all()


# ---------------------------------------------------------------------------- rotational residuals

def test_rotational_residual_eigenvalues():
    H = 10
    rho = torch.linspace(0.9, 1.01, H // 2, dtype=F64)
    rho, theta = init.rotational_residual(H, rho=rho, theta="linear", dtype=F64)
    assert torch.allclose(theta, torch.arange(1, 6, dtype=F64) * math.pi / 5)
    R = init.residual_matrix("rotational", H, rho, theta)
    eig = torch.linalg.eigvals(R)
    want = torch.cat((rho * torch.exp(1j * theta), rho * torch.exp(-1j * theta)))
    key = lambda z: sorted(zip(z.real.tolist(), z.imag.tolist()))  # noqa: E731
    for a, b in zip(key(eig), key(want)):
        assert abs(a[0] - b[0]) < 1e-12 and abs(a[1] - b[1]) < 1e-12
    rho2, th2 = init.rotational_residual(H, 0.99, "uniform", max_angle=0.5,
                                         generator=torch.Generator().manual_seed(0))
    assert torch.all(rho2 == 0.99) and (th2 >= 0).all() and (th2 <= 0.5).all() and th2.unique().numel() == 5
    with pytest.raises(ValueError, match="even"):
        init.rotational_residual(7)
    with pytest.raises(ValueError, match="theta"):
        init.rotational_residual(8, theta=torch.zeros(3))
    with pytest.raises(ValueError, match="rho"):
        init.rotational_residual(8, rho=torch.ones(3))


def test_spectral_angles_find_the_data_frequencies():
    # two sinusoids of equal power at bins 5 and 12 of T = 64, in two channels with random phases
    T, N = 64, 30
    g = torch.Generator().manual_seed(0)
    t = torch.arange(T, dtype=F64)
    ph = 2 * math.pi * torch.rand(N, 2, 2, generator=g, dtype=F64)
    w1, w2 = 2 * math.pi * 5 / T, 2 * math.pi * 12 / T
    s = (torch.cos(w1 * t[None, :, None] + ph[:, None, :, 0])
         + torch.cos(w2 * t[None, :, None] + ph[:, None, :, 1]) + 3.0)  # + a DC offset that is ignored
    ang = init.spectral_angles(s, 6)
    assert ang.shape == (6,)
    assert torch.allclose(ang, torch.tensor([w1] * 3 + [w2] * 3, dtype=F64), atol=1e-12)
    # one pair: the median of the power distribution, here at the first tone; a 2-D input works too
    assert torch.allclose(init.spectral_angles(s[..., 0], 1), torch.tensor([w1], dtype=F64), atol=1e-12)
    with pytest.raises(ValueError, match="sequences"):
        init.spectral_angles(torch.ones(4, 10), 2)
    with pytest.raises(ValueError, match="sequences"):
        init.spectral_angles(torch.ones(10), 2)


# ----------------------------------------------------------------------------------- dense matrices

def test_chain_matrix_column_convention():
    H = 6
    M = init.chain_matrix(H, alpha=1.02, dtype=F64)
    e0 = torch.zeros(H, dtype=F64)
    e0[0] = 1.0
    # a pulse on unit 0 moves to unit 1 after one step (h_new = M h), scaled by alpha
    assert torch.equal(M @ e0, torch.tensor([0, 1.02, 0, 0, 0, 0], dtype=F64))
    assert all(M[i + 1, i] == 1.02 for i in range(H - 1))
    assert (M != 0).sum() == H - 1
    assert torch.count_nonzero(torch.linalg.matrix_power(M, H)) == 0  # nilpotent
    assert torch.allclose(torch.linalg.matrix_power(M, H - 1)[H - 1, 0], torch.tensor(1.02 ** (H - 1), dtype=F64))
    assert torch.equal(init.chain_matrix(1, dtype=F64), torch.zeros(1, 1, dtype=F64))
    Md = init.chain_matrix(4, alpha=0.5, diag=0.3, dtype=F64)
    assert torch.equal(torch.diagonal(Md), torch.full((4,), 0.3, dtype=F64))


def test_fbchain_matrix():
    H = 9
    M = init.fbchain_matrix(H, beta=0.04, alpha=0.99, dtype=F64)
    assert all(M[i + 1, i] == 0.99 and M[i, i + 1] == 0.04 for i in range(H - 1))
    assert (M != 0).sum() == 2 * (H - 1)
    eig = torch.linalg.eigvals(M)
    assert eig.imag.abs().max() < 1e-12
    k = torch.arange(1, H + 1, dtype=F64)
    want = 2 * math.sqrt(0.99 * 0.04) * torch.cos(k * math.pi / (H + 1))
    assert torch.allclose(eig.real.sort().values, want.sort().values, atol=1e-12)


def test_orthogonal_and_identity():
    Q = init.orthogonal_matrix(13, gain=0.9, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.allclose(Q.t() @ Q, 0.81 * torch.eye(13, dtype=F64), atol=1e-13)
    assert torch.allclose(torch.linalg.eigvals(Q).abs(), torch.full((13,), 0.9, dtype=F64), atol=1e-12)
    Q2 = init.orthogonal_matrix(13, gain=0.9, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.equal(Q, Q2)
    assert torch.equal(init.scaled_identity(3, lam=0.5, dtype=F64), 0.5 * torch.eye(3, dtype=F64))


# ------------------------------------------------------------------------------- residual matrices

@pytest.mark.parametrize("kind,H", [("none", 3), ("scalar", 1), ("scalar", 5), ("diagonal", 7),
                                    ("rotational", 2), ("rotational", 12), ("dense", 9)])
def test_residual_matrix_matches_apply_residual(kind, H):
    g = torch.Generator().manual_seed(H)
    r = {"none": 0.0, "scalar": 0.97, "diagonal": torch.rand(H, generator=g, dtype=F64),
         "rotational": torch.rand(H // 2, generator=g, dtype=F64),
         "dense": torch.randn(H, H, generator=g, dtype=F64)}[kind]
    theta = torch.rand(H // 2, generator=g, dtype=F64) * 6 if kind == "rotational" else None
    R = init.residual_matrix(kind, H, r, theta, dtype=F64)
    x = torch.randn(4, H, generator=g, dtype=F64)
    res_kind, res = canonical_residual(kind, H, r, theta, dtype=F64)
    assert torch.allclose(x @ R.t(), apply_residual(res_kind, res, x), rtol=0, atol=1e-14)
    assert torch.allclose(init.canonical_residual_matrix(res_kind, res), R, rtol=0, atol=0)
    if kind == "rotational":  # docs/design.md section 2's blocks, written out
        for k in range(H // 2):
            c, s = math.cos(theta[k]), math.sin(theta[k])
            blk = r[k] * torch.tensor([[c, -s], [s, c]], dtype=F64)
            assert torch.allclose(R[2 * k:2 * k + 2, 2 * k:2 * k + 2], blk, atol=1e-15)
        assert torch.count_nonzero(R) <= 2 * H


def test_residual_matrix_errors():
    with pytest.raises(ValueError, match="residual"):
        init.residual_matrix("skew", 4)
    with pytest.raises(ValueError, match="theta"):
        init.residual_matrix("rotational", 4, 1.0)
    with pytest.raises(ValueError, match="r:"):
        init.residual_matrix("diagonal", 4, torch.ones(3))


# ----------------------------------------------------- weakly coupled residual init of an Elman RNN

def _elman_jacobian_at_origin(rnn, layer, direction):
    """d h_t / d h_{t-1} of one nn.RNN cell at h = 0, s = 0, by autograd through nn.RNN's own cell math."""
    sfx = f"_l{layer}" + ("_reverse" if direction else "")
    w_ih, w_hh = getattr(rnn, "weight_ih" + sfx), getattr(rnn, "weight_hh" + sfx)
    b = (getattr(rnn, "bias_ih" + sfx) + getattr(rnn, "bias_hh" + sfx)) if rnn.bias else 0.0
    cell = nn.RNNCell(w_ih.shape[1], rnn.hidden_size, bias=rnn.bias, nonlinearity=rnn.nonlinearity, dtype=F64)
    with torch.no_grad():
        cell.weight_ih.copy_(w_ih)
        cell.weight_hh.copy_(w_hh)
        if rnn.bias:
            cell.bias_ih.copy_(getattr(rnn, "bias_ih" + sfx))
            cell.bias_hh.copy_(getattr(rnn, "bias_hh" + sfx))
    s = torch.zeros(1, w_ih.shape[1], dtype=F64)
    return torch.autograd.functional.jacobian(lambda h: cell(s, h[None])[0], torch.zeros(rnn.hidden_size,
                                                                                          dtype=F64)), b


@pytest.mark.parametrize("kind", ["scalar", "diagonal", "rotational", "dense"])
def test_weakly_coupled_init_jacobian_at_origin(kind):
    torch.manual_seed(0)
    H = 6
    rnn = nn.RNN(3, H, num_layers=2, bidirectional=True, dtype=F64)
    W0 = {n: p.detach().clone() for n, p in rnn.named_parameters()}
    g = torch.Generator().manual_seed(1)
    r = {"scalar": [0.995, 1.01], "diagonal": torch.rand(H, generator=g, dtype=F64),
         "rotational": torch.rand(H // 2, generator=g, dtype=F64),
         "dense": init.orthogonal_matrix(H, generator=g, dtype=F64)}[kind]
    theta = torch.rand(H // 2, generator=g, dtype=F64) if kind == "rotational" else None
    gamma = 0.01 if kind != "dense" else torch.linspace(0.01, 0.05, H, dtype=F64)
    init.weakly_coupled_init_(rnn, kind, r, theta, gamma)
    for layer in range(2):
        rl = r[layer] if isinstance(r, list) else r
        R = init.residual_matrix(kind, H, rl, theta, dtype=F64)
        gv = torch.as_tensor(gamma, dtype=F64).reshape(-1).expand(H)
        for d in range(2):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            W = W0["weight_hh" + sfx]
            want = R + gv[:, None] * W
            assert torch.allclose(getattr(rnn, "weight_hh" + sfx), want, rtol=0, atol=1e-15)
            J, b = _elman_jacobian_at_origin(rnn, layer, d)
            assert torch.count_nonzero(b) == 0
            assert torch.allclose(J, want, rtol=0, atol=1e-15), f"{sfx}: Jacobian at 0 != R + gamma W"
            assert torch.equal(getattr(rnn, "weight_ih" + sfx), W0["weight_ih" + sfx])


def test_weakly_coupled_init_matches_the_wcrnn_linearisation():
    # The WCRNN with residual R, coupling gamma and recurrent weights W, and the Elman RNN initialised
    # with R + gamma W, have the same Jacobian at the origin (both computed by autograd, zero input).
    torch.manual_seed(1)
    H = 8
    rnn = nn.RNN(2, H, dtype=F64)
    wc = FusedWCRNN.from_rnn(rnn, residual="scalar", r=1.0025, gamma=0.01)
    with torch.no_grad():
        wc.bias_ih_l0.zero_()
        wc.bias_hh_l0.zero_()
    init.weakly_coupled_init_(rnn, "scalar", 1.0025, gamma=0.01)
    s = torch.zeros(1, 1, 2, dtype=F64)
    J_wc = torch.autograd.functional.jacobian(lambda h: wc(s, h.reshape(1, 1, H))[0].reshape(H),
                                              torch.zeros(H, dtype=F64))
    J_el = torch.autograd.functional.jacobian(lambda h: rnn(s, h.reshape(1, 1, H))[0].reshape(H),
                                              torch.zeros(H, dtype=F64))
    assert torch.allclose(J_el, J_wc, rtol=0, atol=1e-15)
    assert not torch.allclose(J_el, 1.0025 * torch.eye(H, dtype=F64), atol=1e-4)  # gamma W is in there


def test_weakly_coupled_init_options():
    torch.manual_seed(2)
    H = 5
    rnn = nn.RNN(4, H, dtype=F64)
    W_ih, W_hh = rnn.weight_ih_l0.detach().clone(), rnn.weight_hh_l0.detach().clone()
    b = (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach().clone()
    init.weakly_coupled_init_(rnn, "scalar", 0.95, gamma=0.02, zero_bias=False, scale_input=True)
    assert torch.allclose(rnn.weight_ih_l0, 0.02 * W_ih, rtol=0, atol=1e-16)
    # with the bias kept, the Jacobian at the origin is diag(phi'(b)) (R + gamma W)
    J, _ = _elman_jacobian_at_origin(rnn, 0, 0)
    want = (1 - torch.tanh(b) ** 2)[:, None] * (0.95 * torch.eye(H, dtype=F64) + 0.02 * W_hh)
    assert torch.allclose(J, want, rtol=0, atol=1e-15)
    with pytest.raises(TypeError, match="rnn"):
        init.weakly_coupled_init_(nn.LSTM(2, 3), "scalar", 1.0)
    with pytest.raises(ValueError, match="r:"):
        init.weakly_coupled_init_(nn.RNN(2, 3, num_layers=2), "scalar", [1.0])
    with pytest.raises(ValueError, match="gamma"):
        init.weakly_coupled_init_(nn.RNN(2, 3), "scalar", 1.0, gamma=torch.ones(2))
