"""The fused op: one layer, one direction of the WCRNN chain, with its hand-derived backward.

    output, h_n = wcrnn_chain(u, x0, w_hh, res_kind, res, gamma, lengths, nonlinearity, backend)

``u`` is the precomputed input projection (both biases included), so only the sequential chain of
docs/design.md section 5 lives here. One custom op per direction: ``wcrnn_kernels::chain_fwd`` (fake
implementation and autograd formula registered) and its backward ``wcrnn_kernels::chain_bwd``; both are opaque
to ``torch.compile``, so ``fullgraph=True`` works, and both resolve the backend when they run.

Reading order: the two ops' implementations and the custom ops made from them, their fake implementations,
the autograd registration, the eager fast path (the same implementations and formula without the custom-op
dispatch, for plain eager calls), then the public function ``wcrnn_chain`` that validates its arguments
(contract.py) and calls the forward.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.autograd.forward_ad as _fwad
from torch import Tensor
from torch.utils._device import DeviceContext as _DeviceContext  # the mode torch.set_default_device installs

from ._lazy_dynamo import assume_constant_result
from ._warn import warn_at_caller
from .backends import get_backend, resolve_backend
from .backends.compiled import check_same_device
from .reference import compute_dtype, phi
from .reference import wcrnn_chain_ref
from .contract import check_chain_call
from .residual import RES_DIAG, RES_ROT, swap_pairs

_EMPTY = (0,)


# The ops take the backend as the caller asked for it ("auto" unless forced) and resolve it when they run,
# from their inputs' device and dtype: a graph traced here (torch.export, torch.compile) records "auto" and
# runs with the fastest backend of wherever it is loaded, a GPU included.

def _chain_fwd_impl(u: Tensor, x0: Tensor, w_hh: Tensor, res: Tensor, gamma: Tensor, lengths: Optional[Tensor],
                    res_kind: int, nonlin: int, backend: str, save_a: bool) -> tuple[Tensor, Tensor, Tensor]:
    name = resolve_backend(backend, u.device, u.dtype, u.shape[-1])
    return get_backend(name).chain_fwd(u, x0, w_hh, res_kind, res, gamma, lengths, nonlin, save_a)


def _chain_bwd_impl(grad_out: Tensor, grad_hn: Tensor, a: Tensor, x0: Tensor, out: Tensor, w_hh: Tensor,
                    res: Tensor, gamma: Tensor, lengths: Optional[Tensor], res_kind: int, nonlin: int,
                    backend: str, need_w: bool, need_res: bool, need_gamma: bool
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    T, B, H = a.shape
    cd = compute_dtype(a.dtype)
    # Half models run the backward in float32. Elsewhere every cast below would be a no-op, and each costs a
    # dispatch (about 0.8 us of host time on the 2-core CPU, 11 of them in a training step): skipped.
    to_cd = (lambda t: t.to(cd)) if cd != a.dtype else (lambda t: t)
    # a_t = u_t + W_hh x_{t-1} was saved by the forward (docs/design.md section 5): no recompute GEMM here.
    # It is read, never written: a second backward (retain_graph=True) reads it again.
    a_c, x0_c, out_c = to_cd(a), to_cd(x0), to_cd(out)
    name = resolve_backend(backend, a.device, a.dtype, H)
    g, dx0, delta = get_backend(name).chain_bwd(
        to_cd(grad_out), to_cd(grad_hn), a_c, to_cd(w_hh), res_kind, to_cd(res), to_cd(gamma), lengths, nonlin,
        need_res or need_gamma)

    def pair_sum(left, right_x0, right_out):
        # sum_t left_t^T x_{t-1} over t and batch, with x_{t-1} = x0 at t = 1 and output[t-2] after
        r = left[0].t() @ right_x0
        if T > 1:
            r = torch.addmm(r, left[1:].reshape(-1, H).t(), right_out[:-1].reshape(-1, H))
        return r

    def prod_sum(d, x0_, out_):
        r = (d[0] * x0_).sum(0)
        if T > 1:
            r = r + (d[1:] * out_[:-1]).sum((0, 1))
        return r

    def empty():  # outputs of a custom op may not alias each other: one fresh empty tensor each
        return a.new_empty(_EMPTY)

    def per_unit(grad, t):  # a 0-d res or gamma stands for H equal entries: its gradient is their sum
        return back(grad.sum() if t.dim() == 0 else grad, t)

    def back(t, like):  # a gradient in its parameter's or input's dtype
        return t if t.dtype == like.dtype else t.to(like.dtype)

    grad_w = back(pair_sum(g, x0_c, out_c), w_hh) if need_w else empty()
    # phi(a_t) = 0 past a row's length (a is 0 there), where delta is 0 too
    grad_gamma = per_unit((delta * phi(a_c, nonlin)).sum((0, 1)), gamma) if need_gamma else empty()
    if not need_res:
        grad_res = empty()
    elif res_kind == RES_DIAG:
        grad_res = per_unit(prod_sum(delta, x0_c, out_c), res)
    elif res_kind == RES_ROT:
        grad_res = back(torch.stack((prod_sum(delta, x0_c, out_c),
                                     prod_sum(delta, swap_pairs(x0_c), swap_pairs(out_c)))), res)
    else:
        grad_res = back(pair_sum(delta, x0_c, out_c), res)
    return back(g, a), back(dx0, x0), grad_w, grad_res, grad_gamma


def _preactivations(u: Tensor, x0: Tensor, out: Tensor, w_hh: Tensor, in_place: bool = True) -> Tensor:
    """a = u + [x0; out[:-1]] W_hh^T (T, B, H) in the compute dtype (one GEMM), what the forward's chain saves
    with save_a, returned in u's dtype as the chain saves it. With `in_place` into u's own buffer where u has
    that dtype (the caller needs u no more). Past a row's length the chain's own a is 0 and this one need not
    be: no matter, g and delta are 0 there (and the layer's padded input and output are 0, so a is finite)."""
    T, B, H = out.shape
    cd = compute_dtype(out.dtype)
    a = (u if in_place else u.clone()) if u.dtype == cd else u.to(cd)
    a2, w_t = a.view(T * B, H), w_hh.to(cd).t()
    a2[:B].addmm_(x0.to(cd), w_t)
    if T > 1:
        a2[B:].addmm_(out[:-1].reshape((T - 1) * B, H).to(cd), w_t)
    return a if a.dtype == u.dtype else a.to(u.dtype)


_chain_fwd = torch.library.custom_op("wcrnn_kernels::chain_fwd", _chain_fwd_impl, mutates_args=())
_chain_bwd = torch.library.custom_op("wcrnn_kernels::chain_bwd", _chain_bwd_impl, mutates_args=())


@_chain_fwd.register_fake
def _chain_fwd_fake(u, x0, w_hh, res, gamma, lengths, res_kind, nonlin, backend, save_a):
    check_same_device("wcrnn_kernels::chain_fwd", "u x0 w_hh res gamma lengths", u, x0, w_hh, res, gamma, lengths)
    # contiguous, as every backend returns them (the backends take contiguous tensors, and the callers pass them)
    return u.new_empty(u.shape), x0.new_empty(x0.shape), (u.new_empty(u.shape) if save_a else u.new_empty(_EMPTY))


@_chain_bwd.register_fake
def _chain_bwd_fake(grad_out, grad_hn, a, x0, out, w_hh, res, gamma, lengths, res_kind, nonlin, backend,
                    need_w, need_res, need_gamma):
    check_same_device("wcrnn_kernels::chain_bwd", "a grad_out grad_hn x0 out w_hh res gamma lengths", a, grad_out,
                      grad_hn, x0, out, w_hh, res, gamma, lengths)

    def maybe(t, need):
        return t.new_empty(t.shape) if need else a.new_empty(_EMPTY)  # contiguous, as the backends return them
    return (a.new_empty(a.shape), x0.new_empty(x0.shape), maybe(w_hh, need_w), maybe(res, need_res),
            maybe(gamma, need_gamma))


def _setup_context(ctx, inputs, output, eager=False):
    u, x0, w_hh, res, gamma, lengths, res_kind, nonlin, backend, save_a = inputs
    out, _, a = output
    ctx.mark_non_differentiable(a)
    ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None, not a zero tensor
    # without save_a (a forward recorded for a backward all the same: a program exported under no_grad, run
    # with grad) u instead, from which the backward recomputes a
    ctx.save_for_backward(a if save_a else u, x0, out, w_hh, res, gamma, lengths)
    ctx.meta = (res_kind, nonlin, backend, save_a, eager)


def _backward(ctx, grad_out, grad_hn, _grad_a):
    a, x0, out, w_hh, res, gamma, lengths = ctx.saved_tensors
    res_kind, nonlin, backend, save_a, eager = ctx.meta
    # The backward op; the eager fast path (_EagerChain) calls its implementation directly, except under
    # create_graph=True (grad mode on here), where the op records that it has no double backward and says so
    # when one is asked for.
    chain_bwd = _chain_bwd_impl if eager and not torch.is_grad_enabled() else _chain_bwd
    if not save_a:  # `a` is u (see _setup_context): a = u + [x0; out[:-1]] W_hh^T, one GEMM
        with torch.no_grad():
            a = _preactivations(a, x0, out, w_hh, in_place=False)
    need = ctx.needs_input_grad
    grad_out = torch.zeros_like(out) if grad_out is None else grad_out.contiguous()
    grad_hn = torch.zeros_like(x0) if grad_hn is None else grad_hn.contiguous()
    gu, gx0, gw, gres, ggamma = chain_bwd(grad_out, grad_hn, a, x0, out, w_hh, res, gamma, lengths,
                                           res_kind, nonlin, backend, need[2], need[3], need[4])
    return (gu if need[0] else None, gx0 if need[1] else None, gw if need[2] else None,
            gres if need[3] else None, ggamma if need[4] else None, None, None, None, None, None)


torch.library.register_autograd("wcrnn_kernels::chain_fwd", _backward, setup_context=_setup_context)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "wcrnn_kernels: a gradient of a gradient (double backward: autograd.grad(..., create_graph=True), then a "
        "backward through its result) is not implemented by the fused WCRNN kernels. Second derivatives work "
        "with torch.func (hessian, jacfwd(jacrev(f)), jvp of grad), which runs the chain as the pure-PyTorch "
        "reference, or with backend='reference'")


torch.library.register_autograd("wcrnn_kernels::chain_bwd", _no_double_backward,
                                setup_context=lambda ctx, inputs, output: None)


# The eager fast path. Dispatching a Python custom op costs about 25-30 us of host time per direction (2-core
# CPU), several times a small chain's own time (T = 1, step-by-step generation) and, on a GPU, host time a
# short sequence cannot hide. In plain eager code the forward therefore calls the implementation directly
# (no backward can follow) or through this autograd.Function, which runs the same implementation, the same
# setup and the same backward formula as the custom op. Whatever transforms or traces (torch.compile,
# torch.export, jit tracing, torch.func, FakeTensor and other modes, tensor subclasses) sees the custom op.

class _EagerChain(torch.autograd.Function):
    # forward(ctx, ...) with the setup inside, not a separate setup_context: with one, Function.apply binds the
    # arguments through inspect.signature at every call (seen in torch 2.13): about a quarter of a T = 1 training
    # step's host time. A setup_context is needed only under torch.func transforms, which never take this path.
    @staticmethod
    def forward(ctx, u, x0, w_hh, res, gamma, lengths, res_kind, nonlin, backend, save_a):
        args = (u, x0, w_hh, res, gamma, lengths, res_kind, nonlin, backend, save_a)
        output = _chain_fwd_impl(*args)
        _setup_context(ctx, args, output, eager=True)
        return output

    backward = staticmethod(_backward)


_PLAIN = (Tensor, torch.nn.Parameter)


def _plain_eager_mode() -> bool:
    """True where nothing traces or transforms the calls made now (no compile, tracing, scripting, dispatch
    mode, functorch transform, or torch function mode other than the default device's)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    c = torch._C
    if c._len_torch_dispatch_stack() or c._are_functorch_transforms_active():
        return False
    if c._is_torch_function_mode_enabled() and not all(
            isinstance(m, _DeviceContext) for m in torch.overrides._get_current_function_mode_stack()):
        return False  # a torch function mode other than torch.set_default_device's / `with torch.device(...)`
    return True


def _plain_tensors(*tensors) -> bool:
    """True where every argument is None, a plain Tensor or a Parameter (no subclass)."""
    for t in tensors:  # a loop, not all(genexpr): half the cost, paid at every step-by-step call
        if t is not None and type(t) not in _PLAIN:
            return False
    return True


def _plain_eager(*tensors) -> bool:
    """True where nothing traces or transforms this call: the fast path computes exactly what the op does."""
    return _plain_eager_mode() and _plain_tensors(*tensors)


def wcrnn_chain(u: Tensor, x0: Tensor, w_hh: Tensor, res_kind: int, res: Tensor, gamma, lengths=None,
                nonlinearity: str = "tanh", backend: str = "auto") -> tuple[Tensor, Tensor]:
    """The WCRNN chain x_t = R(x_{t-1}) + gamma * phi(u_t + W_hh x_{t-1}), t = 1..T.

    Args:
        u: (T, B, H) input projection W_ih s_t + b_ih + b_hh for every step.
        x0: (B, H) initial state.
        w_hh: (H, H) recurrent weights.
        res_kind, res: canonical residual: ``ResidualForm.DIAG`` with res (H,) or 0-d (one value for every
            unit), ``ResidualForm.ROT`` with (2, H), ``ResidualForm.DENSE`` with (H, H) (or the codes 0, 1, 2);
            ``residual.canonical_residual`` builds them from a user kind.
        gamma: a number, a 0-d tensor or (H,) coupling.
        lengths: optional (B,) integer tensor, 0 <= L_b <= T; steps past L_b keep the state and output 0.
        nonlinearity: "tanh" or "relu".
        backend: "auto", "reference", "torch", or a compiled backend (see ``available_backends()``).

    Returns:
        output (T, B, H) with output[t] = x_{t+1} (zero past the length) and h_n (B, H) = x_{L_b}.
        Differentiable in u, x0, w_hh, res and gamma.
    """
    res_kind, gamma, lengths, nonlin = check_chain_call(u, x0, w_hh, res_kind, res, gamma, lengths, nonlinearity)
    H = u.shape[-1]

    # resolved here to check a forced backend early (eager); the op resolves the request again when it runs
    if resolve_backend(backend, u.device, u.dtype, H) == "reference":
        return wcrnn_chain_ref(u, x0, w_hh, res_kind, res, gamma, lengths, nonlinearity)
    gamma = gamma.reshape(()) if gamma.numel() == 1 else gamma  # a single coupling: 0-d, the backends broadcast it
    return run_chain(u, x0, w_hh, res_kind, res, gamma, lengths, nonlin, backend,
                     _plain_eager(u, x0, w_hh, res, gamma, lengths))


def run_chain(u: Tensor, x0: Tensor, w_hh: Tensor, res_kind: int, res: Tensor, gamma: Tensor,
              lengths: Optional[Tensor], nonlin: int, backend: str, plain: bool) -> tuple[Tensor, Tensor]:
    """``wcrnn_chain`` past its checks, for callers whose arguments meet the contract by construction
    (FusedWCRNN, from its own parameters): res_kind and nonlin as int codes, gamma (H,) or 0-d (as res for
    res_kind 0: one value for every unit, broadcast by the backends), lengths int64 on u's
    device or None, all in u's dtype and on its device, a backend other than "reference" (resolved when the op
    runs, which raises for one that cannot run these tensors); ``plain``: ``_plain_eager`` of these tensors,
    which a caller making several calls can work out once (``_plain_eager_mode`` for the state,
    ``_plain_tensors`` for its tensors)."""
    if not plain and _onnx_exporting():  # an exporter traces: never a plain eager call
        if torch.jit.is_tracing():
            raise RuntimeError(
                "torch.onnx.export(..., dynamo=False): the TorchScript-based exporter cannot export the WCRNN "
                "chain (a custom op with no ONNX translation). Export with dynamo=True (the default since torch "
                "2.9), which writes the chain as an ONNX Scan with dynamic sequence length and batch size")
        # torch.onnx.export(..., dynamo=True): the chain as a scan, which becomes an ONNX Scan with dynamic
        # T and B (the custom op has no ONNX translation; onnx_export.py)
        from .onnx_export import chain_as_scan
        return chain_as_scan(u, x0, w_hh, res_kind, res, gamma, lengths, nonlin)
    if (not plain and torch._C._are_functorch_transforms_active()) or _fwad._current_level >= 0:
        # torch.func transforms (grad, vjp, jvp, jacrev, jacfwd, hessian, vmap) and forward-mode AD: the fused
        # ops have no rules for them (a custom op's autograd formula is reverse mode only; under jvp torch
        # dropped the tangent without a word, under grad it raised). The specification itself, in torch ops,
        # has every rule: the same values to rounding, at the reference loop's speed. Said once per process.
        _warn_reference_chain()
        return wcrnn_chain_ref(u, x0, w_hh, res_kind, res, gamma, lengths, nonlin)
    # The pre-activations are stored only when a backward can follow. A jit trace records the flag as a
    # constant, so there it follows requires_grad alone: the trace, and its check run under no_grad, agree.
    save_a = (torch.is_grad_enabled() or torch.jit.is_tracing()) and (
        u.requires_grad or x0.requires_grad or w_hh.requires_grad or res.requires_grad or gamma.requires_grad)
    args = (u.contiguous(), x0.contiguous(), w_hh.contiguous(), res.contiguous(), gamma.contiguous(), lengths,
            res_kind, nonlin, backend, save_a)
    if not plain:
        out, h_n, _ = _chain_fwd(*args)
    elif save_a:
        out, h_n, _ = _EagerChain.apply(*args)
    else:
        out, h_n, _ = _chain_fwd_impl(*args)
    return out, h_n


_REFERENCE_WARNED = []


def _warn_reference_chain() -> None:
    if not _REFERENCE_WARNED:
        _REFERENCE_WARNED.append(True)
        warn_at_caller(
            "wcrnn_kernels: under torch.func transforms (grad, vjp, jvp, jacrev, jacfwd, hessian, vmap) and "
            "forward-mode AD the WCRNN chain runs as the pure-PyTorch reference (docs/design.md), not the fused "
            "kernels, which have no rules for them: the same values to rounding, several times slower. (Shown "
            "once per process.)")


@assume_constant_result
def _onnx_exporting() -> bool:
    # evaluated eagerly: Dynamo folds torch.onnx.is_in_onnx_export() to False when it traces for the exporter
    return torch.onnx.is_in_onnx_export()
