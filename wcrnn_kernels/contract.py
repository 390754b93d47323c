"""The chain op's argument contract (docs/design.md section 8), checked in one place for every Python entry.

Two levels share these checks and their messages:

* the public op ``wcrnn_chain`` (``check_chain_call``): lenient where a user is, strict where a kernel is.
  gamma may be a number, a 0-d or an (H,) tensor, res for res_kind 0 a 0-d or an (H,) tensor (a 0-d one is
  one value for every unit, broadcast by the backends); lengths any integer sequence of B entries in [0, T];
  every tensor in u's dtype and on u's device. Returns the arguments as the kernels take them.
* the kernel launchers callable directly (the Triton ``wcrnn_fwd`` / ``wcrnn_bwd``: ``check_kernel_fwd`` /
  ``check_kernel_bwd``): the kernels' exact contract, contiguous tensors, gamma (H,) or (), lengths int64 on the
  device, codes as ints, no conversion.

The compiled library (csrc/) checks the same contract for its own two ops, from one C++ header
(csrc/wcrnn_checks.h), because those ops are callable directly too; the messages are worded alike.
"""
from __future__ import annotations

import numbers
from typing import Optional

import torch
from torch import Tensor

from .residual import NONLIN_CODES, RES_DENSE, RES_DIAG, RES_ROT, canonical_shape

_FORM_NAMES = {RES_DIAG: "diagonal", RES_ROT: "rotation pairs", RES_DENSE: "dense"}


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def check_rank(name: str, t, ndim: int, desc: str) -> None:
    """`t` is a tensor of `ndim` dimensions; `desc` names them, e.g. "(T, B, H)"."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor {desc}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor {desc}, got shape {tuple(t.shape)}")


def check_shape(name: str, t, shape: tuple, desc: str) -> None:
    """`t` is a tensor of exactly `shape`; `desc` names the dimensions, e.g. "(B, H)"."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor {desc}, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {desc} = {tuple(shape)}, got {tuple(t.shape)}")


def check_like(name: str, t: Tensor, like_name: str, like: Tensor, *, dtype: bool = True) -> None:
    """`t` is on `like`'s device and (when `dtype`) of its dtype."""
    if dtype and t.dtype != like.dtype:
        raise ValueError(f"{name}: dtype {t.dtype} does not match {like_name}'s dtype {like.dtype}")
    if t.device != like.device:
        raise ValueError(f"{name}: device {t.device} does not match {like_name}'s device {like.device}")


def check_contiguous(name: str, t: Tensor) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor")


def check_res_kind(res_kind) -> int:
    """A canonical residual form (a ``ResidualForm`` or its code 0, 1, 2) as a plain int."""
    if isinstance(res_kind, bool) or res_kind not in (RES_DIAG, RES_ROT, RES_DENSE):
        raise ValueError(f"res_kind: expected 0 (diagonal), 1 (rotation pairs) or 2 (dense), a ResidualForm, "
                         f"got {res_kind!r}")
    return int(res_kind)


def check_residual(res_kind: int, res, H: int) -> None:
    """res has the canonical shape of `res_kind` (which is already checked) for hidden size H, or, for res_kind
    0, is a 0-d tensor (one value for every unit)."""
    if res_kind == RES_ROT and H % 2:
        raise ValueError(f"res: rotation pairs need an even hidden size, got H = {H}")
    want = canonical_shape(res_kind, H)
    scalar = res_kind == RES_DIAG and isinstance(res, torch.Tensor) and res.dim() == 0
    if not isinstance(res, torch.Tensor) or (tuple(res.shape) != want and not scalar):
        also = " or ()" if res_kind == RES_DIAG else ""
        raise ValueError(f"res: expected shape {want}{also} for res_kind {res_kind} ({_FORM_NAMES[res_kind]}), "
                         f"got {_shape(res)}")


def check_nonlin_code(nonlin) -> int:
    if isinstance(nonlin, bool) or nonlin not in (0, 1):
        raise ValueError(f"nonlin: expected 0 (tanh) or 1 (relu), got {nonlin!r}")
    return int(nonlin)


def check_lengths(lengths, B: int, T: int, device) -> Tensor:
    """Any integer sequence of B entries in [0, T] as the kernels take it: int64, contiguous, on `device`.
    The range is checked eagerly only (it reads the values; a traced graph cannot)."""
    if not isinstance(lengths, torch.Tensor):
        try:
            lengths = torch.as_tensor(lengths)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"lengths: expected an integer tensor or sequence of B = {B} entries, got "
                            f"{type(lengths).__name__} {lengths!r}") from e
    if lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(f"lengths: expected a 1-D tensor of B = {B} entries, got shape {tuple(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.is_complex():
        raise ValueError(f"lengths: expected an integer tensor, got dtype {lengths.dtype}")
    if not torch.compiler.is_compiling() and B > 0:
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 0 or hi > T:
            raise ValueError(f"lengths: every entry must lie in [0, T = {T}], got min {lo}, max {hi}")
    # non_blocking: CPU lengths for a GPU chain are copied without making the host wait for the device
    return lengths.to(device=device, dtype=torch.int64, non_blocking=True).contiguous()


def check_chain_call(u, x0, w_hh, res_kind, res, gamma, lengths, nonlinearity: str):
    """The public op's arguments (``wcrnn_chain``): returns (res_kind as int, gamma as a tensor of shape ()
    or (H,) in u's dtype, lengths as int64 on u's device or None, the nonlinearity's code)."""
    check_rank("u", u, 3, "(T, B, H)")
    T, B, H = u.shape
    if T == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN (u has T = 0 steps)")
    if not u.is_floating_point():
        raise ValueError(f"u: expected a floating-point tensor, got dtype {u.dtype}")
    check_rank("x0", x0, 2, "(B, H)")
    check_rank("w_hh", w_hh, 2, "(H, H)")
    check_shape("x0", x0, (B, H), "(B, H)")
    check_shape("w_hh", w_hh, (H, H), "(H, H)")
    res_kind = check_res_kind(res_kind)
    check_residual(res_kind, res, H)
    if nonlinearity not in NONLIN_CODES:
        raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
    if not isinstance(gamma, torch.Tensor):
        if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):  # "0.1" would pass float()
            raise TypeError(f"gamma: expected a number or a tensor, got {type(gamma).__name__} {gamma!r}")
        gamma = torch.tensor(float(gamma), dtype=u.dtype, device=u.device)
    if gamma.numel() != 1 and tuple(gamma.shape) != (H,):
        raise ValueError(f"gamma: expected a number or a tensor of shape () or ({H},), got {tuple(gamma.shape)}")
    for name, t in (("x0", x0), ("w_hh", w_hh), ("res", res), ("gamma", gamma)):
        check_like(name, t, "u", u)
    if lengths is not None:
        lengths = check_lengths(lengths, B, T, u.device)
    return res_kind, gamma, lengths, NONLIN_CODES[nonlinearity]


def _check_kernel_params(B, H, seq_name, seq, w_hh, res_kind, res, gamma, lengths, nonlin,
                         w_dtype_free: bool):
    """What both kernel directions share; `seq` (u or a) fixes device and dtype."""
    res_kind = check_res_kind(res_kind)
    check_residual(res_kind, res, H)
    check_shape("w_hh", w_hh, (H, H), "(H, H)")
    if not (isinstance(gamma, torch.Tensor) and gamma.dim() == 0):
        check_shape("gamma", gamma, (H,), "(H,) or ()")
    for name, t in (("w_hh", w_hh), ("res", res), ("gamma", gamma)):
        check_like(name, t, seq_name, seq, dtype=not (w_dtype_free and name == "w_hh"))
        check_contiguous(name, t)
    if lengths is not None:
        check_shape("lengths", lengths, (B,), "(B,)")
        if lengths.dtype != torch.int64:
            raise ValueError(f"lengths: expected dtype torch.int64, got {lengths.dtype}")
        check_like("lengths", lengths, seq_name, seq, dtype=False)
        check_contiguous("lengths", lengths)
    return res_kind, check_nonlin_code(nonlin)


def check_kernel_fwd(u, x0, w_hh, res_kind, res, gamma, lengths: Optional[Tensor], nonlin):
    """A forward launcher's arguments: u (T, B, H); x0 (B, H), w_hh, res, gamma (H,) or () in u's dtype and on
    its device; lengths (B,) int64 or None; all contiguous. Returns (res_kind, nonlin) as ints."""
    check_rank("u", u, 3, "(T, B, H)")
    _, B, H = u.shape
    check_contiguous("u", u)
    check_shape("x0", x0, (B, H), "(B, H)")
    check_like("x0", x0, "u", u)
    check_contiguous("x0", x0)
    return _check_kernel_params(B, H, "u", u, w_hh, res_kind, res, gamma, lengths, nonlin, False)


def check_kernel_bwd(grad_out, grad_hn, a, w_hh, res_kind, res, gamma, lengths: Optional[Tensor], nonlin):
    """A backward launcher's arguments: a, grad_out (T, B, H), grad_hn (B, H), res, gamma in a's dtype (the
    compute dtype); w_hh (H, H) in any float dtype; all on a's device and contiguous. Returns
    (res_kind, nonlin) as ints."""
    check_rank("a", a, 3, "(T, B, H)")
    T, B, H = a.shape
    check_contiguous("a", a)
    for name, t, shape, desc in (("grad_out", grad_out, (T, B, H), "(T, B, H) like a"),
                                 ("grad_hn", grad_hn, (B, H), "(B, H)")):
        check_shape(name, t, shape, desc)
        check_like(name, t, "a", a)
        check_contiguous(name, t)
    return _check_kernel_params(B, H, "a", a, w_hh, res_kind, res, gamma, lengths, nonlin, True)


def check_layer_direction(layer, direction, num_layers: int, bidirectional: bool) -> None:
    """A layer index in [0, num_layers) and a direction 0 (1 too when bidirectional), as ints."""
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or not 0 <= layer < num_layers:
        raise ValueError(f"layer: expected an integer in [0, {num_layers - 1}] (num_layers = {num_layers}), "
                         f"got {layer!r}")
    if isinstance(direction, bool) or not isinstance(direction, numbers.Integral) or \
            not 0 <= direction < (2 if bidirectional else 1):
        allowed = "0 or 1 (bidirectional)" if bidirectional else "0 (the module is not bidirectional)"
        raise ValueError(f"direction: expected {allowed}, got {direction!r}")
