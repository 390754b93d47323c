"""The paper's prediction, computed so that it can be trusted: the eigenvalues of a residual (exact where the
structure is known, with error bounds or in high precision otherwise), their log moduli, and where the
weak-coupling prediction holds (non-normality, the pseudospectral radius, ``weak_coupling_check``).
``docs/science.md`` sections 5 and 6 give the formulas and the measurements. Split from ``dynamics.py``,
which re-exports these names.
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .contract import check_layer_direction
from .init import canonical_residual_matrix
from .residual import RES_DENSE, RES_DIAG, RES_ROT


# ---------------------------------------------------------------------------------------------------------
# The prediction: eigenvalues of the residual, computed so that they can be trusted
# ---------------------------------------------------------------------------------------------------------

_EPS64 = torch.finfo(torch.float64).eps


class ResidualEigenvalues(NamedTuple):
    """Eigenvalues of a residual matrix with what is known about their accuracy.

    values: (H,) complex128, sorted by modulus, descending (ties by real part, descending).
    method: how they were computed: "diagonal" (a triangular matrix: its diagonal, exact), "toeplitz"
        (a tridiagonal Toeplitz matrix: the closed form), "tridiagonal" (a diagonal similarity makes each
        irreducible block symmetric when its sub- times super-diagonal products are positive:
        symmetric eigenvalues, accurate to a few eps * ||R||), "eig" (a general float64 eigen-solver),
        "mpmath" (the same in multiple precision).
    error_bound: (H,) float64, a first-order bound on |computed - exact| of each eigenvalue of the
        given matrix (0 for the exact methods; kappa_i * H * eps * ||R||_F for "eig" with kappa_i the
        eigenvalue's condition number, the same at the working precision for "mpmath").
    reliable: whether every error_bound is at most ``tol * max(rho(R), tiny)``.
    """
    values: Tensor
    method: str
    error_bound: Tensor
    reliable: bool


def _sort_eig(vals: Tensor, *others: Tensor):
    vals = vals.to(torch.complex128)
    # sort by modulus, then by real part (both descending), deterministically
    key = vals.abs() * (1 + 4 * _EPS64) + 0.0
    order = sorted(range(vals.numel()), key=lambda i: (-float(key[i]), -float(vals[i].real),
                                                       -float(vals[i].imag)))
    idx = torch.tensor(order, dtype=torch.long)
    return (vals[idx],) + tuple(o[idx] for o in others)


def _is_lower_or_upper_triangular(R: Tensor) -> bool:
    return bool(torch.equal(R, torch.tril(R)) or torch.equal(R, torch.triu(R)))


def _is_tridiagonal(R: Tensor) -> bool:
    return bool(torch.equal(R, torch.triu(torch.tril(R, 1), -1)))


def _toeplitz_tridiagonal_eigenvalues(H: int, d: float, a: float, b: float) -> Tensor:
    """d + 2 sqrt(a b) cos(k pi / (H + 1)), k = 1..H, with cos(k pi/(H+1)) written as
    sin((H + 1 - 2k) pi / (2 (H + 1))) so that the middle one of an odd H is exactly 0."""
    k = torch.arange(1, H + 1, dtype=torch.float64)
    c = torch.sin((H + 1 - 2 * k) * math.pi / (2 * (H + 1)))
    s = complex(a * b) ** 0.5 if a * b < 0 else math.sqrt(a * b)
    return (d + 2 * s * c.to(torch.complex128)) if isinstance(s, complex) else (d + 2 * s * c).to(torch.complex128)


def _general_eig(R: Tensor):
    """float64 eigenvalues and first-order error bounds kappa_i * H * eps * ||R||_F, with
    kappa_i = ||x_i|| ||y_i|| / |y_i^H x_i| from the right eigenvectors X and Y^H = X^{-1}."""
    H = R.shape[0]
    vals, X = torch.linalg.eig(R)
    try:
        Yh = torch.linalg.inv(X)
        kappa = torch.linalg.vector_norm(X, dim=0) * torch.linalg.vector_norm(Yh, dim=1)
        kappa = torch.where(torch.isfinite(kappa), kappa, torch.full_like(kappa, math.inf))
    except RuntimeError:  # singular eigenvector matrix: a defective (or numerically defective) eigenvalue
        kappa = torch.full((H,), math.inf, dtype=torch.float64)
    bound = kappa * H * _EPS64 * torch.linalg.matrix_norm(R).item()
    return vals, bound, kappa


def _mpmath_eig(R: Tensor, dps: int):
    import mpmath

    H = R.shape[0]
    with mpmath.workdps(dps):
        A = mpmath.matrix(R.tolist())  # exact: every float64 is an mpf
        E, ER = mpmath.eig(A, left=False, right=True)
        try:
            EL = mpmath.inverse(ER)  # rows: left eigenvectors with y_i^H x_i = 1
            kappa = []
            for i in range(H):
                nx = mpmath.sqrt(sum(abs(ER[j, i]) ** 2 for j in range(H)))
                ny = mpmath.sqrt(sum(abs(EL[i, j]) ** 2 for j in range(H)))
                kappa.append(float(nx * ny))
        except ZeroDivisionError:
            kappa = [math.inf] * H
        fro = float(mpmath.sqrt(sum(abs(A[i, j]) ** 2 for i in range(H) for j in range(H))))
        vals = torch.tensor([complex(complex(e).real, complex(e).imag) for e in E], dtype=torch.complex128)
    kappa = torch.tensor(kappa, dtype=torch.float64)
    bound = kappa * H * 10.0 ** (1 - dps) * fro
    return vals, bound


def residual_eigenvalues(R: Tensor, *, method: str = "auto", tol: float = 1e-6, dps: Optional[int] = None,
                         on_unreliable: str = "raise") -> ResidualEigenvalues:
    """Eigenvalues of a square residual matrix R that can be trusted, or an error that says they cannot.

    A general eigen-solver is backward stable, but an eigenvalue's forward error is its condition number
    times eps * ||R||, and a strongly non-normal R has enormous condition numbers: Orhan & Pitkow's chain
    with feedback (alpha = 0.99 forward, beta = 0.04 back) at H = 64 has an eigenvector matrix of
    condition ~ (alpha / beta)^(H/2) ~ 1e44, and float64 ``eig`` returns a leading eigenvalue of modulus
    0.61 for an exact 0.3975. So the structure is used where it is known:

    * ``"diagonal"``: triangular R (the feed-forward chain, diagonal residuals): the diagonal, exact.
    * ``"toeplitz"``: tridiagonal with constant diagonals d, a (sub), b (super): the closed form
      d + 2 sqrt(a b) cos(k pi / (H + 1)), k = 1..H (complex for a b < 0); exactly 0 in the middle of an
      odd H when d = 0.
    * ``"tridiagonal"``: any tridiagonal R. It splits into irreducible blocks where a product
      a_i b_i is 0 (the rest is block triangular); a block whose products are all positive is similar,
      by a diagonal matrix, to a symmetric one (off-diagonals sqrt(a_i b_i)), whose eigenvalues
      ``eigvalsh`` computes to a few eps * ||R||; other blocks are balanced the same way (off-diagonals
      +-sqrt|a_i b_i|) and handed to the general solver with its error bound.
    * ``"eig"``: float64 ``torch.linalg.eig`` with a first-order error bound per eigenvalue,
      kappa_i * H * eps * ||R||_F, kappa_i = ||x_i|| ||y_i|| / |y_i^H x_i| (right and left eigenvectors).
      The bound itself comes from computed eigenvectors and is only an estimate when it is large (and a
      defective eigenvalue, kappa = inf, moves by eps^(1/m)); it is large exactly when the values are
      not to be trusted.
    * ``"mpmath"``: the same in multiple precision (``dps`` decimal digits; by default enough for the
      float64 estimate of the condition numbers, doubled until the bound is met, up to 4 tries). Slow
      (seconds at H = 64, minutes at H = 256), for dense residuals with no structure.

    ``"auto"`` picks the first that applies of diagonal, toeplitz, tridiagonal, eig. When the result is
    not reliable (an error bound above ``tol * max(rho(R), tiny)``), ``on_unreliable`` says what happens:
    ``"raise"`` (a ValueError that names the bound and the remedy), ``"warn"`` or ``"ignore"``.
    """
    if not isinstance(R, Tensor) or R.dim() != 2 or R.shape[0] != R.shape[1] or R.shape[0] < 1:
        raise ValueError(f"R: expected a square (H, H) tensor, got {getattr(R, 'shape', type(R).__name__)}")
    if method not in ("auto", "diagonal", "toeplitz", "tridiagonal", "eig", "mpmath"):
        raise ValueError(f"method: expected 'auto', 'diagonal', 'toeplitz', 'tridiagonal', 'eig' or "
                         f"'mpmath', got {method!r}")
    if on_unreliable not in ("raise", "warn", "ignore"):
        raise ValueError(f"on_unreliable: expected 'raise', 'warn' or 'ignore', got {on_unreliable!r}")
    if not (isinstance(tol, numbers.Real) and tol > 0):
        raise ValueError(f"tol: expected a positive number, got {tol!r}")
    if R.is_complex():
        raise ValueError("R: expected a real matrix (residuals are real), got a complex one")
    R = R.detach().to(dtype=torch.float64, device="cpu")
    if not bool(torch.isfinite(R).all()):
        raise ValueError("R: has non-finite entries")
    H = R.shape[0]
    tri = _is_lower_or_upper_triangular(R)
    tridiag = _is_tridiagonal(R)
    d, a, b = torch.diagonal(R), torch.diagonal(R, -1), torch.diagonal(R, 1)
    toeplitz = tridiag and all(bool((v == v[0]).all()) for v in (d, a, b) if v.numel())
    if method == "auto":
        method = "diagonal" if tri else "toeplitz" if toeplitz else "tridiagonal" if tridiag else "eig"
    need = dict(diagonal=tri, toeplitz=toeplitz, tridiagonal=tridiag)
    if not need.get(method, True):
        raise ValueError(f"method: {method!r} needs a {'triangular' if method == 'diagonal' else method} R")

    if method == "diagonal":
        vals, bound = d.to(torch.complex128), torch.zeros(H, dtype=torch.float64)
    elif method == "toeplitz":
        vals = (_toeplitz_tridiagonal_eigenvalues(H, float(d[0]), float(a[0]), float(b[0])) if H > 1
                else d.to(torch.complex128))
        bound = torch.zeros(H, dtype=torch.float64)
    elif method == "tridiagonal":
        vals_l, bound_l = [], []
        prod = a * b
        cuts = [0] + [i + 1 for i in range(H - 1) if prod[i] == 0] + [H]
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            dd, p = d[lo:hi], prod[lo:hi - 1]
            off = torch.sqrt(p.abs())
            if bool((p > 0).all()):
                S = torch.diag(dd) + torch.diag(off, -1) + torch.diag(off, 1)
                ev = torch.linalg.eigvalsh(S)
                vals_l.append(ev.to(torch.complex128))
                bound_l.append(torch.full_like(ev, (hi - lo) * _EPS64 * max(float(torch.linalg.matrix_norm(S, 2)), 0.0)))
            else:
                B = torch.diag(dd) + torch.diag(torch.sign(a[lo:hi - 1]) * off, -1) \
                    + torch.diag(torch.sign(b[lo:hi - 1]) * off, 1)
                ev, bd, _ = _general_eig(B)
                vals_l.append(ev)
                bound_l.append(bd)
        vals, bound = torch.cat(vals_l), torch.cat(bound_l)
    elif method == "eig":
        vals, bound, _ = _general_eig(R)
    else:  # mpmath
        if dps is None:
            _, _, kappa = _general_eig(R)
            k = float(kappa.max())
            dps = 30 + (int(math.log10(k)) if math.isfinite(k) and k > 1 else 40)
        if isinstance(dps, bool) or not isinstance(dps, numbers.Integral) or dps < 16:
            raise ValueError(f"dps: expected an integer >= 16, got {dps!r}")
        rho_guess = None
        for _ in range(4):
            vals, bound = _mpmath_eig(R, int(dps))
            rho_guess = float(vals.abs().max())
            if float(bound.max()) <= tol * max(rho_guess, 1e-300):
                break
            dps *= 2
    vals, bound = _sort_eig(vals, bound)
    rho = float(vals.abs().max())
    reliable = bool(float(bound.max()) <= tol * max(rho, 1e-300)) if float(bound.max()) > 0 else True
    if not reliable and on_unreliable != "ignore":
        msg = (f"R: its eigenvalues cannot be trusted with method={method!r}: error bound up to "
               f"{float(bound.max()):.3g} against a spectral radius {rho:.4g} (tol {tol:g}); R is strongly "
               f"non-normal (eigenvalue condition numbers up to {float(bound.max()) / (H * _EPS64 * max(float(torch.linalg.matrix_norm(R)), 1e-300)):.3g}). "
               f"Use method='mpmath' (multiple precision), or a structured R (triangular, tridiagonal)")
        if on_unreliable == "raise":
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)
    return ResidualEigenvalues(vals, method, bound, reliable)


def canonical_log_spectrum(res_kind: int, res: Tensor, *, method: str = "auto",
                           on_unreliable: str = "raise") -> Tensor:
    """log |lambda_i(R)| of a canonical residual, sorted descending (H,): diagonal log|r_i|, rotation
    pairs log rho_k twice each, dense the log moduli from ``residual_eigenvalues(R, method=...)`` (exact
    for triangular and tridiagonal Toeplitz R, structure-aware for tridiagonal R, a float64 solve with an
    error bound otherwise: an untrustworthy result raises unless ``on_unreliable`` says otherwise).
    ``-inf`` for an eigenvalue that is exactly zero."""
    res = res.detach().to(torch.float64)
    if res_kind == RES_DIAG:
        mod = res.abs()
    elif res_kind == RES_ROT:
        mod = torch.sqrt(res[0] ** 2 + res[1] ** 2)  # unit 2k and 2k+1 both carry rho_k
    elif res_kind == RES_DENSE:
        mod = residual_eigenvalues(res, method=method, on_unreliable=on_unreliable).values.abs()
    else:
        raise ValueError(f"res_kind: expected 0 (diag), 1 (rot) or 2 (dense), got {res_kind!r}")
    return torch.log(mod).sort(descending=True).values


# ---------------------------------------------------------------------------------------------------------
# Where the prediction holds: non-normality and the pseudospectral radius
# ---------------------------------------------------------------------------------------------------------

def pseudospectral_radius(R: Tensor, eps: float, *, n_angles: int = 33, n_radii: int = 64) -> float:
    """The eps-pseudospectral radius rho_eps(R) = max{|z| : sigma_min(z I - R) <= eps} (2-norm).

    Every matrix R + E with ||E||_2 <= eps has its eigenvalues inside the eps-pseudospectrum, and every
    point of it is an eigenvalue of some such R + E; rho_eps >= rho(R) + eps, with equality for a normal
    R. Computed on ``n_angles`` rays z = r e^{i theta}, theta in [0, pi] (R real: the set is symmetric
    about the real axis), and on the rays through every eigenvalue, by scanning r from ||R||_2 + eps
    downwards on ``n_radii`` points (plus the points of the ray within eps of an eigenvalue, which are
    inside) and bisecting the outermost crossing of sigma_min = eps. A part of the pseudospectrum that
    lies between the rays and between the scanned points can be missed, so the result is a lower bound
    up to that resolution (exact for a normal R); sigma_min is accurate to about eps_machine * ||R||, so
    eps should be well above 1e-14 ||R||.
    """
    if not isinstance(R, Tensor) or R.dim() != 2 or R.shape[0] != R.shape[1]:
        raise ValueError(f"R: expected a square (H, H) tensor, got {getattr(R, 'shape', type(R).__name__)}")
    if not (isinstance(eps, numbers.Real) and eps > 0):
        raise ValueError(f"eps: expected a positive number, got {eps!r}")
    for name, v in (("n_angles", n_angles), ("n_radii", n_radii)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 2:
            raise ValueError(f"{name}: expected an integer >= 2, got {v!r}")
    Rc = R.detach().to(dtype=torch.complex128, device="cpu")
    H = Rc.shape[0]
    eye = torch.eye(H, dtype=torch.complex128)
    top = float(torch.linalg.matrix_norm(Rc, 2)) + eps
    grid = torch.linspace(top, 0.0, n_radii, dtype=torch.float64)
    lam = residual_eigenvalues(R.detach().to(torch.float64).cpu(), on_unreliable="ignore").values
    # rays: an even grid over [0, pi] and the rays through every eigenvalue (R is real: conjugate pairs)
    angles = torch.cat((torch.linspace(0.0, math.pi, n_angles, dtype=torch.float64), torch.angle(lam).abs()))

    def smin(z: Tensor) -> Tensor:
        return torch.linalg.svdvals(z[:, None, None] * eye - Rc)[:, -1]

    best = 0.0
    for th in angles.unique().tolist():
        ph = complex(math.cos(th), math.sin(th))
        # every point within eps of an eigenvalue is inside: add the eigenvalues' projections on the ray
        proj = lam * complex(math.cos(th), -math.sin(th))
        near = proj.real[(proj.imag.abs() <= eps) & (proj.real > 0)]
        radii = torch.cat((grid, near)).unique().flip(0)  # descending
        s = smin(radii * ph)
        inside = torch.nonzero(s <= eps).flatten()
        if inside.numel() == 0:
            continue
        j = int(inside[0])
        if j == 0:
            return top  # cannot happen for the exact sigma_min; guards rounding
        lo, hi = float(radii[j]), float(radii[j - 1])  # sigma_min(lo) <= eps < sigma_min(hi)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if float(smin(torch.tensor([mid], dtype=torch.float64) * ph)[0]) <= eps:
                lo = mid
            else:
                hi = mid
            if hi - lo <= 1e-15 * hi:
                break
        best = max(best, lo)
    return best


class NonNormality(NamedTuple):
    """How far a residual is from normal, and what that means for the weak-coupling prediction.

    spectral_radius: rho(R) (from ``residual_eigenvalues``). henrici: the relative departure from
    normality sqrt(||R||_F^2 - sum |lambda_i|^2) / ||R||_F (0 for a normal R, 1 for a nilpotent one).
    eig_condition: the largest eigenvalue condition number kappa_i (1 for a normal R, inf for a defective
    one; how far an eigenvalue moves per unit perturbation, to first order). transient_growth:
    max_{1 <= k <= 2H} ||R^k||_2 / rho(R)^k (1 for a normal R; inf for a nilpotent one).
    eps: the perturbation size gamma * ||W_hh||_2 * max|phi'| (None when no gamma was given).
    pseudospectral_radius: rho_eps(R) at that eps (None without gamma). predicted_shift:
    log rho_eps - log rho (None without gamma): how far a constant perturbation of that size can move the
    leading exponent; the weak-coupling prediction log|lambda(R)| is safe when it is small (below the
    ``tol`` of ``weak_coupling_check``; for a normal R it is log(1 + eps / rho)).
    """
    spectral_radius: float
    henrici: float
    eig_condition: float
    transient_growth: float
    eps: Optional[float]
    pseudospectral_radius: Optional[float]
    predicted_shift: Optional[float]


def _eig_condition(R: Tensor, method: str) -> float:
    H = R.shape[0]
    d, a, b = torch.diagonal(R), torch.diagonal(R, -1), torch.diagonal(R, 1)
    if method in ("toeplitz", "tridiagonal") and H > 1 and bool((a * b > 0).all()):
        # R = D^{-1} S D with S symmetric (eigenvectors q): right x = D^{-1} q, left y = D q, y^T x = 1
        logd = torch.cat((torch.zeros(1, dtype=torch.float64), torch.cumsum(0.5 * torch.log(b / a), 0)))
        logd = logd - logd.mean()
        if float(logd.abs().max()) > 600:
            return math.inf
        D = torch.exp(logd)
        off = torch.sqrt(a * b)
        S = torch.diag(d) + torch.diag(off, -1) + torch.diag(off, 1)
        _, Q = torch.linalg.eigh(S)
        x = Q / D[:, None]
        y = Q * D[:, None]
        return float((torch.linalg.vector_norm(x, dim=0) * torch.linalg.vector_norm(y, dim=0)).max())
    if method == "diagonal":
        # repeated diagonal entries of a non-diagonal triangular matrix: (numerically) defective
        if not bool(torch.equal(R, torch.diag(d))) and torch.unique(d).numel() < H:
            return math.inf
    _, _, kappa = _general_eig(R)
    return float(kappa.max())


def nonnormality(R: Tensor, *, gamma=None, w_hh: Optional[Tensor] = None, phi_prime_max: float = 1.0,
                 method: str = "auto") -> NonNormality:
    """Measures of the non-normality of a residual matrix R (see ``NonNormality``).

    With ``gamma`` (a number or an (H,) tensor) and ``w_hh`` (the recurrent weights; default: the 2-norm
    of nn.RNN's default initialisation is not assumed, pass the matrix) it also gives the
    pseudospectral radius at eps = max|gamma| * ||W_hh||_2 * phi_prime_max: the step Jacobians
    R + diag(gamma phi') W_hh are perturbations of R of at most that size.
    """
    if not isinstance(R, Tensor) or R.dim() != 2 or R.shape[0] != R.shape[1]:
        raise ValueError(f"R: expected a square (H, H) tensor, got {getattr(R, 'shape', type(R).__name__)}")
    R = R.detach().to(dtype=torch.float64, device="cpu")
    H = R.shape[0]
    ev = residual_eigenvalues(R, method=method)
    rho = float(ev.values.abs().max())
    fro2 = float((R * R).sum())
    dep2 = max(fro2 - float((ev.values.abs() ** 2).sum()), 0.0)
    henrici = math.sqrt(dep2 / fro2) if fro2 > 0 else 0.0
    kappa = _eig_condition(R, ev.method)
    growth, P = 1.0, torch.eye(H, dtype=torch.float64)
    for k in range(1, 2 * H + 1):
        P = P @ R
        nk = float(torch.linalg.matrix_norm(P, 2))
        if rho == 0.0:
            growth = math.inf if nk > 0 or k == 1 else growth
            break
        growth = max(growth, nk / rho ** k)
    eps = ps = shift = None
    if gamma is not None:
        if w_hh is None:
            raise ValueError("w_hh: needed with gamma (the perturbation is gamma * phi' * W_hh)")
        if not isinstance(w_hh, Tensor) or tuple(w_hh.shape) != (H, H):
            raise ValueError(f"w_hh: expected an ({H}, {H}) tensor, got {getattr(w_hh, 'shape', type(w_hh).__name__)}")
        g = float(torch.as_tensor(gamma, dtype=torch.float64).abs().max())
        eps = g * float(torch.linalg.matrix_norm(w_hh.detach().to(torch.float64).cpu(), 2)) * phi_prime_max
        if eps > 0:
            ps = max(pseudospectral_radius(R, eps), rho + eps)  # rho + eps is a theorem; the scan a bound below
            shift = math.log(ps) - math.log(rho) if rho > 0 else math.inf
        else:
            ps, shift = rho, 0.0
    return NonNormality(rho, henrici, kappa, growth, eps, ps, shift)


def weak_coupling_check(model, layer: int = 0, direction: int = 0, *, tol: float = 0.02,
                        warn: bool = True) -> NonNormality:
    """Before training: does the weak-coupling prediction log|lambda(R)| hold for this layer?

    Returns ``nonnormality(R, gamma=gamma, w_hh=W_hh)`` of the layer's residual; warns (with ``warn``)
    when the predicted shift log rho_eps(R) - log rho(R) of the leading exponent exceeds ``tol`` (nats
    per step), i.e. when gamma * ||W_hh||_2 is large enough that the perturbation can carry the leading
    exponent away from log rho(R) (docs/science.md, "Where the prediction holds"). For a normal R the
    shift is log(1 + eps / rho), about 0.01 at gamma = 0.01, rho = 0.9 with nn.RNN's default W_hh; for a
    strongly non-normal R it is orders of magnitude larger. The measured leading exponents in
    ``examples/weak_coupling_limit.py`` stayed below log rho_eps(R) at every gamma measured.
    """
    check_layer_direction(layer, direction, model.num_layers, model.bidirectional)
    cw = model.chain_weights(layer, direction)
    R = canonical_residual_matrix(cw.res_kind, cw.res.detach().to(torch.float64))
    rep = nonnormality(R, gamma=cw.gamma, w_hh=cw.w_hh)
    if warn and rep.spectral_radius == 0:
        warnings.warn("weak coupling: the residual is R = 0 (residual='none' or a zero r), so the prediction "
                      "log|lambda(R)| is -inf: the Lyapunov exponents are those of gamma * diag(phi') W_hh alone, "
                      "which the weak-coupling limit does not predict", stacklevel=2)
    elif warn and rep.predicted_shift is not None and rep.predicted_shift > tol:
        warnings.warn(f"weak coupling: at gamma * ||W_hh||_2 = {rep.eps:.3g} the residual "
                      f"(eigenvalue condition {rep.eig_condition:.3g}, transient growth "
                      f"{rep.transient_growth:.3g}) can move the leading Lyapunov exponent by up to "
                      f"{rep.predicted_shift:.3g} above log rho(R) = {math.log(rep.spectral_radius) if rep.spectral_radius > 0 else -math.inf:.4g}: "
                      f"the prediction log|lambda(R)| does not hold; lower gamma or use a less non-normal R",
                      stacklevel=2)
    return rep
