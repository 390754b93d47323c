"""Residual maps R: the user-facing kinds and the three canonical forms that kernels see.

User-facing kinds (docs/design.md section 2): ``none``, ``scalar``, ``diagonal``, ``rotational``, ``dense``.
Kernels only implement three canonical forms, selected by an integer code:

* ``RES_DIAG``  (0): ``res`` has shape ``(H,)``;     R(x) = res * x            (none, scalar, diagonal)
* ``RES_ROT``   (1): ``res`` has shape ``(2, H)``;   R(x) = res[0] * x + res[1] * swap_pairs(x)
* ``RES_DENSE`` (2): ``res`` has shape ``(H, H)``;   R(x) = res @ x            (column-vector convention)

For the rotational kind, pair k = units (2k, 2k+1) rotates by theta_k and scales by rho_k. With
a_k = rho_k cos(theta_k), b_k = rho_k sin(theta_k) the block is [[a, -b], [b, a]], so per unit
``res[0] = (a_0, a_0, a_1, a_1, ...)`` and ``res[1] = (-b_0, b_0, -b_1, b_1, ...)``. This per-unit form
lets every kernel apply a rotation with one elementwise pass and one pair swap, and never see angles.
The conversion is built from ordinary autograd ops, so gradients reach rho and theta for free.
"""
from __future__ import annotations

import enum
import numbers

import torch


class ResidualForm(enum.IntEnum):
    """The three canonical residual forms the kernels implement (docs/design.md section 2): the
    ``res_kind`` argument of ``wcrnn_chain``. Members are ints, so the codes 0, 1, 2 work too."""
    DIAG = 0    # res (H,):   R(x) = res * x                 (none, scalar, diagonal)
    ROT = 1     # res (2, H): res[0] * x + res[1] * swap_pairs(x)   (rotational)
    DENSE = 2   # res (H, H): R(x) = res @ x                 (dense)


RES_DIAG = ResidualForm.DIAG
RES_ROT = ResidualForm.ROT
RES_DENSE = ResidualForm.DENSE

RESIDUAL_KINDS = ("none", "scalar", "diagonal", "rotational", "dense")
NONLINEARITIES = ("tanh", "relu")
NONLIN_CODES = {"tanh": 0, "relu": 1}


def swap_pairs(x: torch.Tensor) -> torch.Tensor:
    """Exchange units 2k and 2k+1 along the last axis (H must be even)."""
    return x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)


def canonical_kind(kind: str) -> ResidualForm:
    if kind in ("none", "scalar", "diagonal"):
        return RES_DIAG
    if kind == "rotational":
        return RES_ROT
    if kind == "dense":
        return RES_DENSE
    raise ValueError(f"residual: expected one of {RESIDUAL_KINDS}, got {kind!r}")


def residual_param_shape(kind: str, hidden_size: int) -> tuple[int, ...] | None:
    """Shape of the user-facing ``r`` parameter for a kind (None for ``none``)."""
    H = hidden_size
    return {"none": None, "scalar": (), "diagonal": (H,), "rotational": (H // 2,), "dense": (H, H)}[kind]


def check_residual_args(kind: str, hidden_size: int, r, theta) -> None:
    """Raise ValueError naming the argument when r / theta do not fit the residual kind."""
    canonical_kind(kind)
    H = hidden_size
    if kind == "rotational" and H % 2:
        raise ValueError(
            f"residual='rotational' rotates pairs of units and needs an even hidden_size, got {H}")
    if isinstance(r, torch.Tensor):
        shape = residual_param_shape(kind, H)
        if r.numel() != 1 and (shape is None or tuple(r.shape) != shape):
            raise ValueError(
                f"r: residual={kind!r} with hidden_size={H} expects a number or a tensor of shape "
                f"{shape}, got a tensor of shape {tuple(r.shape)}")
        if not r.is_floating_point():
            raise ValueError(f"r: expected a floating-point tensor, got dtype {r.dtype}")
    elif isinstance(r, bool) or not isinstance(r, numbers.Real):
        raise TypeError(f"r: expected a number or a tensor, got {type(r).__name__}")
    if theta is not None:
        if kind != "rotational":
            raise ValueError(f"theta: only used by residual='rotational', got residual={kind!r}")
        if not isinstance(theta, torch.Tensor) or tuple(theta.shape) != (H // 2,):
            got = tuple(theta.shape) if isinstance(theta, torch.Tensor) else type(theta).__name__
            raise ValueError(f"theta: expected a tensor of shape ({H // 2},) (hidden_size / 2), got {got}")


def canonical_residual(kind: str, hidden_size: int, r, theta=None, *, dtype=None, device=None,
                       keep_scalar: bool = False):
    """User-facing (kind, r, theta) -> (res_kind code, res tensor) with differentiable ops.

    ``r`` may be a number or a tensor of the kind's shape (a 0-d / 1-element tensor is broadcast).
    ``keep_scalar``: a 0-d ``r`` of the kinds "scalar" and "diagonal" comes back as it is, 0-d, and "none"
    gives a 0-d zero, which the chain op and every backend take for H equal entries (the module's per-call
    path: no expand, no copy).
    """
    H = hidden_size
    code = canonical_kind(kind)
    if kind == "none":  # R = 0 whatever r is: no tensor made of r (a T = 1 call of such a module pays each op)
        tensor_r = isinstance(r, torch.Tensor)
        return code, torch.zeros(() if keep_scalar else (H,),
                                 dtype=dtype or (r.dtype if tensor_r else torch.get_default_dtype()),
                                 device=device if device is not None else (r.device if tensor_r else None))
    if not isinstance(r, torch.Tensor):
        r = torch.tensor(float(r), dtype=dtype or torch.get_default_dtype(), device=device)
    if dtype is not None and r.dtype != dtype or device is not None and r.device != torch.device(device):
        r = r.to(dtype=dtype, device=device)
    if kind in ("scalar", "diagonal"):
        if r.dim() == 0:
            return code, r if keep_scalar else r.expand(H)
        return code, r.reshape(-1).expand(H) if r.numel() == 1 else r
    if kind == "dense":
        if r.dim() == 0 or r.numel() == 1:
            return code, r.reshape(()) * torch.eye(H, dtype=r.dtype, device=r.device)
        return code, r
    # rotational: r holds the magnitudes rho (H/2,), theta the angles (H/2,)
    rho = r.reshape(-1).expand(H // 2) if r.numel() == 1 else r
    th = theta.to(dtype=rho.dtype, device=rho.device)
    a = rho * torch.cos(th)
    b = rho * torch.sin(th)
    diag_part = torch.stack((a, a), dim=-1).flatten()
    swap_part = torch.stack((-b, b), dim=-1).flatten()
    return code, torch.stack((diag_part, swap_part))


def apply_residual(res_kind: int, res: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """R(x) for a canonical residual; x is (..., H)."""
    if res_kind == RES_DIAG:
        return x * res
    if res_kind == RES_ROT:
        return x * res[0] + swap_pairs(x) * res[1]
    if res_kind == RES_DENSE:
        return x @ res.t()
    raise ValueError(f"res_kind: expected 0 (diag), 1 (rot) or 2 (dense), got {res_kind!r}")


def apply_residual_transpose(res_kind: int, res: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """R^T d for a canonical residual (the backward chain's residual term)."""
    if res_kind == RES_DIAG:
        return d * res
    if res_kind == RES_ROT:
        return d * res[0] + swap_pairs(d * res[1])
    if res_kind == RES_DENSE:
        return d @ res
    raise ValueError(f"res_kind: expected 0 (diag), 1 (rot) or 2 (dense), got {res_kind!r}")


def canonical_shape(res_kind: int, hidden_size: int) -> tuple[int, ...]:
    return {RES_DIAG: (hidden_size,), RES_ROT: (2, hidden_size), RES_DENSE: (hidden_size, hidden_size)}[res_kind]
