"""Initialisations for the residual R, the coupling gamma and the recurrent weights, with their formulas.

Everything here returns plain tensors (or fills an ``nn.RNN`` in place, for the weakly coupled residual
initialisation of an Elman network). Pass the results to ``FusedWCRNN(residual=..., r=..., theta=...)``
or copy them into ``weight_hh_l{k}`` under ``torch.no_grad()``.

Conventions: a WCRNN layer is x_t = R x_{t-1} + gamma * phi(W_hh x_{t-1} + W_ih s_t + b) with column
vectors, so for a small gamma the Lyapunov exponents approach log|lambda_i(R)| (Dubinin & Effenberger
2024). Matrices use the column-vector convention of ``nn.RNN`` (``h_new = W h``): a "forward link" from
unit i to unit i+1 is the entry M[i+1, i].

Reading order: the scalar regimes of the paper, heterogeneous (diagonal) residuals from memory time
scales, rotational residuals (magnitudes and angles, angles from the spectrum of the data), dense
matrices (Orhan & Pitkow's chains, orthogonal, scaled identity), the residual as an (H, H) matrix, and the
weakly coupled residual initialisation of a plain ``nn.RNN``.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import torch

from .residual import RESIDUAL_KINDS, apply_residual, canonical_residual, check_residual_args

# ---------------------------------------------------------------------------------------------------------
# Scalar residuals: the paper's regimes
# ---------------------------------------------------------------------------------------------------------

#: The residual strengths of Dubinin & Effenberger (2024), Figs. 2-3, with their names. With gamma = 0.01
#: every Lyapunov exponent of the network is close to log r: negative (fading memory, subcritical), zero
#: (critical, the "edge of chaos"), positive (supercritical).
PAPER_REGIMES = {
    "strongly_subcritical": 0.95,
    "weakly_subcritical": 0.995,
    "critical": 1.0,
    "weakly_supercritical": 1.0025,
    "strongly_supercritical": 1.01,
}

#: The paper's grid of scalar residuals r, ascending.
PAPER_R_GRID = tuple(PAPER_REGIMES.values())

#: The paper's coupling constant.
PAPER_GAMMA = 0.01


def scalar_residual(regime: Union[str, float]) -> float:
    """The scalar residual r of a named regime, R(x) = r * x.

    ``regime`` is one of ``PAPER_REGIMES`` (``"strongly_subcritical"`` r = 0.95, ``"weakly_subcritical"``
    0.995, ``"critical"`` 1, ``"weakly_supercritical"`` 1.0025, ``"strongly_supercritical"`` 1.01), the
    short names ``"subcritical"`` (0.995), ``"supercritical"`` (1.0025), or a positive number, returned
    unchanged. The largest Lyapunov exponent for a small gamma is log r.
    """
    if isinstance(regime, str):
        short = {"subcritical": "weakly_subcritical", "supercritical": "weakly_supercritical"}
        key = short.get(regime, regime)
        if key not in PAPER_REGIMES:
            raise ValueError(f"regime: expected one of {sorted(PAPER_REGIMES) + sorted(short)} or a "
                             f"positive number, got {regime!r}")
        return PAPER_REGIMES[key]
    if isinstance(regime, bool) or not isinstance(regime, numbers.Real) or not regime > 0:
        raise ValueError(f"regime: expected a regime name or a positive number, got {regime!r}")
    return float(regime)


def regime_of(r: float, tol: float = 1e-12) -> str:
    """"subcritical" (r < 1), "critical" (|r - 1| <= tol) or "supercritical" (r > 1) for a residual r."""
    if abs(r - 1.0) <= tol:
        return "critical"
    return "subcritical" if r < 1.0 else "supercritical"


# ---------------------------------------------------------------------------------------------------------
# Heterogeneous (diagonal) residuals from memory time scales
# ---------------------------------------------------------------------------------------------------------

def _check_size(name, n, even=False):
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"{name}: expected a positive integer, got {n!r}")
    if even and n % 2:
        raise ValueError(f"{name}: rotational residuals pair units and need an even size, got {n}")


def timescale_residual(tau: torch.Tensor) -> torch.Tensor:
    """r_i = exp(-1 / tau_i): the residual whose memory of an input decays as r_i^t = exp(-t / tau_i).

    tau is in time steps. tau = inf gives r = 1 (critical, perfect memory); a negative tau gives a
    supercritical r > 1 that grows as exp(t / |tau|). The Lyapunov exponent of unit i is then -1 / tau_i.
    """
    tau = torch.as_tensor(tau)
    if not tau.is_floating_point():
        tau = tau.to(torch.get_default_dtype())
    if (tau == 0).any():
        raise ValueError("tau: memory time scales must be non-zero (tau = 0 would give r = 0 only as a limit)")
    return torch.exp(-1.0 / tau)


def memory_timescales(hidden_size: int, distribution: str = "loguniform", tau_min: float = 10.0,
                      tau_max: float = 1000.0, *, generator: Optional[torch.Generator] = None,
                      dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Draw H memory time scales tau_i (in steps) in [tau_min, tau_max].

    distributions:
      * ``"loguniform"``: log tau ~ U(log tau_min, log tau_max) (as many units per decade);
      * ``"uniform"``: tau ~ U(tau_min, tau_max);
      * ``"geometric"``: deterministic, tau_i = tau_min * (tau_max / tau_min)^(i / (H - 1)), ascending;
      * ``"linear"``: deterministic, evenly spaced from tau_min to tau_max.
    """
    _check_size("hidden_size", hidden_size)
    if not (0 < tau_min <= tau_max):
        raise ValueError(f"tau_min, tau_max: expected 0 < tau_min <= tau_max, got {tau_min}, {tau_max}")
    dtype = dtype or torch.get_default_dtype()
    H = hidden_size
    if distribution in ("geometric", "linear"):
        s = torch.linspace(0.0, 1.0, H, dtype=torch.float64) if H > 1 else torch.zeros(1, dtype=torch.float64)
        if distribution == "geometric":
            tau = tau_min * (tau_max / tau_min) ** s
        else:
            tau = tau_min + (tau_max - tau_min) * s
        return tau.to(dtype)
    u = torch.rand(H, generator=generator, dtype=torch.float64)
    if distribution == "loguniform":
        tau = torch.exp(math.log(tau_min) + u * (math.log(tau_max) - math.log(tau_min)))
    elif distribution == "uniform":
        tau = tau_min + u * (tau_max - tau_min)
    else:
        raise ValueError(f"distribution: expected 'loguniform', 'uniform', 'geometric' or 'linear', "
                         f"got {distribution!r}")
    return tau.to(dtype)


def heterogeneous_residual(hidden_size: int, distribution: str = "loguniform", tau_min: float = 10.0,
                           tau_max: float = 1000.0, *, generator: Optional[torch.Generator] = None,
                           dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """A diagonal residual r (H,) with r_i = exp(-1 / tau_i), tau_i drawn by ``memory_timescales``.

    Use with ``FusedWCRNN(residual="diagonal", r=...)``. The Lyapunov spectrum for a small gamma is then
    the sorted -1 / tau_i: a network with a spread of memory time scales (the paper's heterogeneous
    residuals).
    """
    return timescale_residual(memory_timescales(hidden_size, distribution, tau_min, tau_max,
                                                generator=generator, dtype=torch.float64)).to(
        dtype or torch.get_default_dtype())


# ---------------------------------------------------------------------------------------------------------
# Rotational residuals
# ---------------------------------------------------------------------------------------------------------

def rotational_residual(hidden_size: int, rho: Union[float, torch.Tensor] = 1.0,
                        theta: Union[str, torch.Tensor] = "uniform", *, max_angle: float = math.pi,
                        generator: Optional[torch.Generator] = None,
                        dtype: Optional[torch.dtype] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Magnitudes and angles (rho, theta), each (H/2,), of a rotational residual.

    Pair k (units 2k, 2k+1) evolves by the block rho_k [[cos th_k, -sin th_k], [sin th_k, cos th_k]]: its
    eigenvalues are rho_k e^{+-i th_k}, so its two Lyapunov exponents are log rho_k, and an input
    component at angular frequency th_k (radians per step; period 2 pi / th_k steps) is integrated
    coherently. ``rho`` is a number (every pair) or an (H/2,) tensor. ``theta`` is an (H/2,) tensor, or
    ``"uniform"`` (th_k ~ U(0, max_angle)), or ``"linear"`` (evenly spaced in (0, max_angle]).
    For angles matched to the data use ``spectral_angles``. Pass to
    ``FusedWCRNN(residual="rotational", r=rho, theta=theta)``.
    """
    _check_size("hidden_size", hidden_size, even=True)
    dtype = dtype or torch.get_default_dtype()
    K = hidden_size // 2
    if isinstance(rho, torch.Tensor):
        if rho.numel() != 1 and tuple(rho.shape) != (K,):
            raise ValueError(f"rho: expected a number or a tensor of shape ({K},), got {tuple(rho.shape)}")
        rho_t = rho.to(dtype).reshape(-1).expand(K).clone()
    else:
        rho_t = torch.full((K,), float(rho), dtype=dtype)
    if isinstance(theta, torch.Tensor):
        if tuple(theta.shape) != (K,):
            raise ValueError(f"theta: expected a tensor of shape ({K},), got {tuple(theta.shape)}")
        th = theta.to(dtype).clone()
    elif theta == "uniform":
        th = (torch.rand(K, generator=generator, dtype=torch.float64) * max_angle).to(dtype)
    elif theta == "linear":
        th = (torch.arange(1, K + 1, dtype=torch.float64) * (max_angle / K)).to(dtype)
    else:
        raise ValueError(f"theta: expected an ({K},) tensor, 'uniform' or 'linear', got {theta!r}")
    return rho_t, th


def spectral_angles(sequences: torch.Tensor, num_pairs: int, *, include_dc: bool = False) -> torch.Tensor:
    """Rotation angles matched to the power spectrum of the data: (num_pairs,) angles in [0, pi].

    ``sequences`` is (N, T) or (N, T, C) (batch first). The mean power spectrum over sequences and
    channels is P(w_j) = mean |FFT(s - mean_t s)(w_j)|^2 at w_j = 2 pi j / T, j = 0..T/2. Angle k is the
    (k + 1/2)/num_pairs quantile of the distribution proportional to P, so frequency bands holding more
    of the data's power get more rotation pairs ("the spectral properties of the data" of the paper).
    The time mean is removed first, so w = 0 carries no power unless ``include_dc``.
    """
    _check_size("num_pairs", num_pairs)
    s = torch.as_tensor(sequences)
    if s.dim() == 2:
        s = s.unsqueeze(-1)
    if s.dim() != 3 or s.shape[1] < 2:
        raise ValueError(f"sequences: expected (N, T) or (N, T, C) with T >= 2, got {tuple(s.shape)}")
    s = s.to(torch.float64)
    T = s.shape[1]
    if not include_dc:
        s = s - s.mean(dim=1, keepdim=True)
    power = torch.fft.rfft(s, dim=1).abs().pow(2).mean(dim=(0, 2))  # (T//2 + 1,)
    total = power.sum()
    if not total > 0:
        raise ValueError("sequences: the data has no power at any non-zero frequency (constant in time)")
    omega = 2 * math.pi * torch.arange(power.shape[0], dtype=torch.float64) / T
    cdf = torch.cumsum(power / total, 0)
    q = (torch.arange(num_pairs, dtype=torch.float64) + 0.5) / num_pairs
    idx = torch.searchsorted(cdf, q).clamp(max=power.shape[0] - 1)
    return omega[idx]


# ---------------------------------------------------------------------------------------------------------
# Dense matrices: Orhan & Pitkow's non-normal chains, orthogonal, scaled identity
# ---------------------------------------------------------------------------------------------------------

def _check_scale(name, v):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {v!r}")


def chain_matrix(hidden_size: int, *, alpha: float = 1.0, diag: float = 0.0,
                 dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The feed-forward chain of Orhan & Pitkow (2020): M[i+1, i] = alpha, M[i, i] = diag, 0 elsewhere.

    Column-vector convention (``h_new = M h``, as ``nn.RNN``'s ``weight_hh``): unit i feeds unit i+1, so
    a pulse travels down the chain one unit per step, scaled by alpha each step. All eigenvalues equal
    ``diag`` (M is non-normal, and nilpotent for diag = 0) although ||M^k|| = alpha^k for k < H.

    Orhan & Pitkow's reference code (github.com/eminorhan/nonnormal-init) writes row-vector matrices
    (Keras ``h @ K``; their torch helper returns the same array): ``chain_init(n, diag_gain,
    offdiag_gain)`` = diag_gain I + offdiag_gain on the *super*diagonal. The same network here is::

        chain_matrix(n, alpha=offdiag_gain, diag=diag_gain) == chain_init(n, diag_gain, offdiag_gain).T

    (their default offdiag_gain = 1.02, diag_gain = 0). The scales are keyword-only because the positional
    orders differ: their ``(n, 0.5, 1.02)`` is diag 0.5 with links 1.02. Copying their array unchanged
    into ``weight_hh`` reverses the chain (unit i+1 feeds unit i) and a pulse into unit 0 goes nowhere.
    """
    return _tridiagonal(hidden_size, diag=diag, alpha=alpha, beta=None, dtype=dtype)


def fbchain_matrix(hidden_size: int, *, beta: float = 0.04, alpha: float = 0.99, diag: float = 0.0,
                   dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The chain with feedback of Orhan & Pitkow (2020): M[i+1, i] = alpha, M[i, i+1] = beta, M[i, i] = diag.

    Column-vector convention: forward links alpha (unit i -> i+1), weaker feedback links beta
    (unit i+1 -> i). The tridiagonal Toeplitz matrix has eigenvalues diag + 2 sqrt(alpha beta)
    cos(k pi / (H + 1)), k = 1..H (real for alpha beta > 0), far below its transient gain when
    beta << alpha; it is extremely non-normal (eigenvector condition ~ (alpha / beta)^((H - 1) / 2)), so
    take its eigenvalues from ``dynamics.residual_eigenvalues`` (exact), not from a general eigen-solver.

    Orhan & Pitkow's ``fbchain_init(n, diag_gain, offdiag_gain)`` (github.com/eminorhan/nonnormal-init)
    hard-codes the forward link 0.99 on the superdiagonal (row vectors) and takes the *feedback* as
    ``offdiag_gain`` (default 0.04) on the subdiagonal. The same network here is::

        fbchain_matrix(n, alpha=0.99, beta=offdiag_gain, diag=diag_gain) == fbchain_init(n, diag_gain, offdiag_gain).T

    Copying their array unchanged into ``weight_hh`` swaps the roles: the pulse travels forward with the
    feedback gain beta.
    """
    _check_scale("beta", beta)
    return _tridiagonal(hidden_size, diag=diag, alpha=alpha, beta=beta, dtype=dtype)


def _tridiagonal(hidden_size, *, diag, alpha, beta, dtype):
    """diag on the diagonal, alpha on the subdiagonal (links i -> i+1), beta (unless None) above it."""
    _check_size("hidden_size", hidden_size)
    _check_scale("alpha", alpha)
    _check_scale("diag", diag)
    dtype = dtype or torch.get_default_dtype()
    H = hidden_size
    m = diag * torch.eye(H, dtype=dtype)
    if H > 1:
        m = m + torch.diag(torch.full((H - 1,), float(alpha), dtype=dtype), diagonal=-1)
        if beta is not None:
            m = m + torch.diag(torch.full((H - 1,), float(beta), dtype=dtype), diagonal=1)
    return m


def orthogonal_matrix(hidden_size: int, *, gain: float = 1.0, generator: Optional[torch.Generator] = None,
                      dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """gain * Q with Q Haar-distributed orthogonal: Q from the QR of a standard Gaussian matrix, with the
    columns' signs fixed by sign(diag(R)) so the distribution is uniform. Eigenvalues on |z| = gain."""
    _check_size("hidden_size", hidden_size)
    dtype = dtype or torch.get_default_dtype()
    a = torch.randn(hidden_size, hidden_size, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    d = torch.sign(torch.diagonal(r))
    d[d == 0] = 1.0
    return (gain * q * d).to(dtype)


def scaled_identity(hidden_size: int, *, lam: float = 1.0, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """lam * I (the identity initialisation of Le et al. 2015 at lam = 1)."""
    _check_size("hidden_size", hidden_size)
    return lam * torch.eye(hidden_size, dtype=dtype or torch.get_default_dtype())


# ---------------------------------------------------------------------------------------------------------
# The residual as a matrix, and the weakly coupled residual initialisation of an Elman RNN
# ---------------------------------------------------------------------------------------------------------

def residual_matrix(residual: str, hidden_size: int, r=1.0, theta=None, *,
                    dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The (H, H) matrix of a residual map (column-vector convention: R(x) = R @ x).

    ``residual``, ``r``, ``theta`` as in ``FusedWCRNN``: "none" (0), "scalar" (r I), "diagonal"
    (diag(r)), "rotational" (2x2 blocks rho_k [[cos, -sin], [sin, cos]] on units (2k, 2k+1)), "dense" (r).
    """
    if residual not in RESIDUAL_KINDS:
        raise ValueError(f"residual: expected one of {RESIDUAL_KINDS}, got {residual!r}")
    _check_size("hidden_size", hidden_size)
    if residual == "rotational" and theta is None:
        raise ValueError("theta: residual='rotational' needs the (H/2,) rotation angles")
    check_residual_args(residual, hidden_size, r, theta)
    if dtype is None:
        dtype = r.dtype if isinstance(r, torch.Tensor) else torch.get_default_dtype()
    res_kind, res = canonical_residual(residual, hidden_size, r, theta, dtype=dtype)
    return canonical_residual_matrix(res_kind, res)


def canonical_residual_matrix(res_kind: int, res: torch.Tensor) -> torch.Tensor:
    """The (H, H) matrix of a canonical residual (``residual.py``): R(x) = R @ x for column vectors.

    Built by applying the residual to the identity's rows (rows of ``apply_residual(I)`` are R e_i as
    row vectors, i.e. R^T), so it agrees with the kernels' residual by construction.
    """
    H = res.shape[-1]
    eye = torch.eye(H, dtype=res.dtype, device=res.device)
    return apply_residual(res_kind, res, eye).t().contiguous()


def weakly_coupled_init_(rnn: torch.nn.RNN, residual: str = "scalar", r=1.0, theta=None,
                         gamma: Union[float, torch.Tensor] = PAPER_GAMMA, *, zero_bias: bool = True,
                         scale_input: bool = False) -> torch.nn.RNN:
    """Weakly coupled residual initialisation of a plain Elman ``nn.RNN``, in place.

    For every layer and direction, with W the current ``weight_hh`` (nn.RNN's default init, or whatever
    you put there), set

        weight_hh <- R + diag(gamma) W

    where R is ``residual_matrix(residual, H, r, theta)`` (the same residual for every layer/direction;
    ``r`` may be a list with one entry per layer). The Elman step h_t = phi(W_ih s_t + W_hh h_{t-1} + b)
    then has the Jacobian phi'(b) (R + gamma W) at the origin, which is the WCRNN's R + gamma phi'(b) W
    when phi'(b) = 1: with ``zero_bias`` (default) both biases are zeroed so that for tanh the
    linearisation at the origin is exactly the WCRNN's (for relu phi'(0) is 0 in PyTorch and there is no
    linearisation at the origin; the recurrent weights are still set). ``scale_input`` also multiplies
    weight_ih by gamma, so that the input gain at the origin matches the WCRNN's gamma W_ih too.
    """
    if not isinstance(rnn, torch.nn.RNN):
        raise TypeError(f"rnn: expected a torch.nn.RNN, got {type(rnn).__name__}")
    H = rnn.hidden_size
    rs = list(r) if isinstance(r, (list, tuple)) else [r] * rnn.num_layers
    if len(rs) != rnn.num_layers:
        raise ValueError(f"r: expected one residual per layer ({rnn.num_layers}), got {len(rs)}")
    dirs = ("", "_reverse") if rnn.bidirectional else ("",)
    with torch.no_grad():
        for layer in range(rnn.num_layers):
            for sfx in dirs:
                w = getattr(rnn, f"weight_hh_l{layer}{sfx}")
                R = residual_matrix(residual, H, rs[layer], theta, dtype=w.dtype).to(w.device)
                g = torch.as_tensor(gamma, dtype=w.dtype, device=w.device)
                if g.numel() != 1 and tuple(g.shape) != (H,):
                    raise ValueError(f"gamma: expected a number or a tensor of shape ({H},), got {tuple(g.shape)}")
                g = g.reshape(-1).expand(H)
                w.copy_(R + g[:, None] * w)
                if scale_input:
                    getattr(rnn, f"weight_ih_l{layer}{sfx}").mul_(g[:, None])
                if zero_bias and rnn.bias:
                    getattr(rnn, f"bias_ih_l{layer}{sfx}").zero_()
                    getattr(rnn, f"bias_hh_l{layer}{sfx}").zero_()
    return rnn
