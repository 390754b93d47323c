"""FusedWCRNN: a drop-in replacement for ``torch.nn.RNN`` that runs a WCRNN (docs/design.md section 3).

Per layer and direction the module computes the input projection with one large GEMM, turns its
user-facing residual parameters into the canonical form with ordinary autograd ops, and hands the
sequential chain to ``wcrnn_chain`` (which picks a backend). Everything ``nn.RNN`` accepts is accepted
here with the same meaning: time-major or ``batch_first``, unbatched input, ``hx``, dropout between layers,
bidirectional layers and ``PackedSequence`` in and out.
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import NamedTuple, Optional

import torch
import torch.autograd.forward_ad as _fwad
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ._lazy_dynamo import compiler_disable
from .backends import backend_names, get_backend
from .contract import check_layer_direction
from .ops import (_chain_bwd_impl, _chain_fwd_impl, _no_double_backward, _plain_eager_mode, _plain_tensors,
                  _preactivations, run_chain)
from .reference import wcrnn_layer_ref
from .residual import NONLIN_CODES, NONLINEARITIES, RESIDUAL_KINDS, canonical_residual, check_residual_args


def _suffix(layer: int, direction: int) -> str:
    """nn.RNN's name suffix of one layer and direction's parameters."""
    return f"_l{layer}" + ("_reverse" if direction else "")


_STATE_NAMES: dict = {}  # (layer, direction) -> _state_names' answer (not functools.lru_cache: Dynamo warns of it)


def _state_names(layer: int, direction: int) -> tuple[str, ...]:
    """The names of one layer and direction's weight_ih, weight_hh, bias_ih, bias_hh, r, theta and gamma
    (cached: a step-by-step call looks them up for every layer)."""
    names = _STATE_NAMES.get((layer, direction))
    if names is None:
        sfx = _suffix(layer, direction)
        names = tuple(n + sfx for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "r", "theta", "gamma"))
        _STATE_NAMES[(layer, direction)] = names
    return names


class ChainWeights(NamedTuple):
    """Everything one layer/direction's chain needs, with the residual in canonical form."""
    w_ih: Tensor
    w_hh: Tensor
    bias: Optional[Tensor]  # b_ih + b_hh, or None without bias
    res_kind: int
    res: Tensor
    gamma: Tensor  # (H,)
    nonlinearity: str


def _reverse_time(x: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """Reverse every sequence in time; with lengths, only each sequence's valid part (an involution). With
    lengths, an index_select of the (T * B) rows, whose backward keeps the index only (gather's keeps its input
    too: a T x B x H tensor more for the backward where x is a layer's projection)."""
    if lengths is None:
        return x.flip(0)
    T, B = x.shape[:2]
    t = torch.arange(T, device=x.device)[:, None]
    L = lengths.to(x.device)[None, :]
    rows = torch.where(t < L, L - 1 - t, t) * B + torch.arange(B, device=x.device)  # (T, B): source row of each
    return x.reshape(T * B, *x.shape[2:]).index_select(0, rows.reshape(-1)).view(x.shape)


# Input widths for which the CPU projection's weight gradient is computed as input^T @ grad (see below).
_SKINNY_INPUT = range(2, 13)


def _input_projection(inp: Tensor, w_ih: Tensor, bias: Optional[Tensor], width: int) -> Tensor:
    """u = F.linear(inp, w_ih, bias) over (T, B, I), I = `width` (a Python int: under torch.jit.trace a tensor's
    size would be traced, and testing it would warn). On the CPU with 2 <= I <= 12 the weight is passed as a
    transposed view of a contiguous copy of w_ih^T (the same values): F.linear then multiplies by that copy as
    it is, and its backward computes the weight's gradient as input^T @ grad (an I x H product) instead of
    grad^T @ input, which CPU BLAS runs slower at these widths. Measured with
    benchmarks/bench_projection.py at S4's T x B x H (2-core VM): the projection's forward and backward 2.3-2.6x
    faster in float32 at I = 2-8 (1.3x at 12), 1.1-1.3x in bfloat16, the same at I = 1 and I >= 16; a whole
    float32 training step 1.02-1.14x (its controls at I = 1, 16, 32: 0.97-1.03). The copy (I x H words) and the
    input made contiguous (a batch_first input is a transposed view) are one small op each per call. Both are
    made with grad or without: with either missing, F.linear's grad and no-grad forms round differently (1 ulp),
    and a call's result must not depend on the mode."""
    if inp.device.type == "cpu" and width in _SKINNY_INPUT:
        inp = inp.contiguous()
        w_ih = w_ih.t().contiguous().t()
    return F.linear(inp, w_ih, bias)


# torch.export (which the ONNX exporter uses) traces the default path: the lean layer op has no ONNX translation.
# (A torch without torch.compiler.is_exporting: the lean op in eager calls only.)
_IS_EXPORTING = getattr(torch.compiler, "is_exporting", None)


def _reverses_projection(reverse: bool, width: int, hidden: int) -> bool:
    """Whether the second direction (`reverse`) reverses its projection u rather than its input: where the input
    is at least as wide as u (every layer after the first of a bidirectional model, width 2H). Then the
    projection saves the layer's input, which the first direction's projection saves too, instead of a reversed
    copy of it, and the reversal moves H words a row instead of `width`. (Reversal permutes the (t, b) rows;
    a matrix product treats every row alike, so either order computes the same u.)"""
    return reverse and width >= hidden


def _direction_projection(inp: Tensor, w_ih: Tensor, bias: Optional[Tensor], width: int, reverse: bool,
                          lengths: Optional[Tensor], hidden: int) -> Tensor:
    """u of one direction from the layer's input in time order: reversed in time for the second direction
    (`reverse`), on the cheaper side (_reverses_projection)."""
    if not reverse:
        return _input_projection(inp, w_ih, bias, width)
    if _reverses_projection(reverse, width, hidden):
        return _reverse_time(_input_projection(inp, w_ih, bias, width), lengths)
    return _input_projection(_reverse_time(inp, lengths), w_ih, bias, width)


def _lean_applies(inp: Tensor, x0: Tensor, cw: "ChainWeights", plain: bool) -> bool:
    """Whether a layer runs without saved pre-activations (the lean op): something requires grad, and, in a plain
    eager call (`plain`; False under torch.compile), no argument is a tensor subclass."""
    ts = (inp, x0, cw.w_ih, cw.bias, cw.w_hh, cw.res, cw.gamma)
    return (not plain or _plain_tensors(*ts)) and any(t is not None and t.requires_grad for t in ts)


# ---------------------------------------------------------------- the layer without saved pre-activations
# save_preactivations=False: one layer and direction, input projection and chain, keeping only its output for the
# backward. The backward recomputes u (the same projection) and the pre-activations a_t = u_t + W_hh x_{t-1} (one
# GEMM over the saved states: docs/design.md section 5), then runs the chain's own backward and F.linear's backward
# formulas, so every gradient is formed as on the default path, from pre-activations equal to rounding.
#
# Activation memory between forward and backward: the output (T x B x H) instead of the output and a; the layer's
# input is saved either way (F.linear saves it on the default path). With `reverse` (the second direction) the op
# takes the layer's input in time order and reverses the input or u itself (_direction_projection), in the forward
# and again in the backward, so that it saves the input the first direction saves too, never a reversed copy. Price:
# the projection (and the reversal) and one T*B x H x H GEMM again in the backward.
#
# As the chain (ops.py): custom ops wcrnn_kernels::lean_layer_fwd / _bwd, which torch.compile keeps opaque (traced
# as one op, the backward's recompute cannot be merged with the forward's projection and saved instead), and, for
# plain eager calls, _LeanLayer, the same implementation and formula without the custom-op dispatch. `amp`: the
# autocast dtype under autocast, which the op applies itself as autocast applies it to F.linear (float32 tensors
# cast to it); the chain then runs in x0's dtype (float32).

def _lean_projection(inp: Tensor, w_ih: Tensor, bias: Optional[Tensor], width: int, reverse: bool,
                     lengths: Optional[Tensor], hidden: int, amp: Optional[torch.dtype]) -> Tensor:
    """_direction_projection as the default path computes it, under autocast (`amp`) too: in amp's dtype."""
    if amp is not None:
        def cast(t):
            return t.to(amp) if t is not None and t.dtype == torch.float32 else t
        inp, w_ih, bias = cast(inp), cast(w_ih), cast(bias)
    with torch.autocast(inp.device.type, enabled=False):
        return _direction_projection(inp, w_ih, bias, width, reverse, lengths, hidden)


def _lean_fwd_impl(inp: Tensor, w_ih: Tensor, bias: Optional[Tensor], x0: Tensor, w_hh: Tensor, res: Tensor,
                   gamma: Tensor, lengths: Optional[Tensor], width: int, res_kind: int, nonlin: int, backend: str,
                   amp: Optional[torch.dtype], reverse: bool) -> tuple[Tensor, Tensor]:
    u = _lean_projection(inp, w_ih, bias, width, reverse, lengths, x0.shape[-1], amp).to(x0.dtype)
    with torch.autocast(inp.device.type, enabled=False):
        out, h_n, _ = _chain_fwd_impl(u, x0, w_hh, res, gamma, lengths, res_kind, nonlin, backend, False)
    return out, h_n


def _lean_bwd_impl(grad_out: Tensor, grad_hn: Tensor, inp: Tensor, w_ih: Tensor, bias: Optional[Tensor], x0: Tensor,
                   out: Tensor, w_hh: Tensor, res: Tensor, gamma: Tensor, lengths: Optional[Tensor], width: int,
                   res_kind: int, nonlin: int, backend: str, amp: Optional[torch.dtype], reverse: bool,
                   need: list[bool]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The gradients of inp, w_ih, bias, x0, w_hh, res, gamma (each an empty tensor where `need` says no)."""
    T, B, H = out.shape
    rev_u = _reverses_projection(reverse, width, H)  # else the input is reversed (when `reverse`)
    # (autocast off: the chain's arithmetic is float32 under autocast, and _lean_projection applies amp itself)
    with torch.no_grad(), torch.autocast(inp.device.type, enabled=False):
        x = _reverse_time(inp, lengths) if reverse and not rev_u else inp
        u = _lean_projection(x, w_ih, bias, width, False, None, H, amp)  # as the forward made it
        pdt = u.dtype  # the projection's dtype (the autocast dtype under autocast)
        if rev_u:
            u = _reverse_time(u, lengths)
        a = _preactivations(u.to(x0.dtype), x0, out, w_hh)
        del u
        g, gx0, gw, gres, ggamma = _chain_bwd_impl(grad_out, grad_hn, a, x0, out, w_hh, res, gamma, lengths,
                                                   res_kind, nonlin, backend, need[4], need[5], need[6])
        del a
        # the projection's backward, as F.linear's (in its dtype; the weight's gradient of a narrow CPU input as
        # input^T @ grad, see _input_projection), each gradient then in its tensor's dtype. (The reversal is a
        # permutation of the (t, b) rows and an involution: its own adjoint.)
        gu = g.to(pdt)
        gu = (_reverse_time(gu, lengths) if rev_u else gu).view(T * B, H)
        wp = w_ih.to(pdt)
        g_inp, g_w_ih, g_bias = (out.new_empty((0,)) for _ in range(3))  # custom-op outputs never alias
        if need[0]:
            g_inp = gu.mm(wp).view(inp.shape).to(inp.dtype)
            if reverse and not rev_u:
                g_inp = _reverse_time(g_inp, lengths)
        if need[1]:
            x2 = x.reshape(T * B, width).to(pdt)
            narrow = inp.device.type == "cpu" and width in _SKINNY_INPUT
            g_w_ih = (x2.t().mm(gu).t() if narrow else gu.t().mm(x2)).to(w_ih.dtype)
        if need[2]:
            g_bias = gu.sum(0).to(bias.dtype)
    # each gradient contiguous, as the fake says (the narrow weight gradient is a transposed product, an input's
    # gradient is contiguous whatever the input's layout: the fake cannot follow either)
    grads = (g_inp, g_w_ih, g_bias, gx0, gw, gres, ggamma)
    return tuple(g.contiguous() if n else out.new_empty((0,)) for g, n in zip(grads, need))


_lean_fwd = torch.library.custom_op("wcrnn_kernels::lean_layer_fwd", _lean_fwd_impl, mutates_args=())
_lean_bwd = torch.library.custom_op("wcrnn_kernels::lean_layer_bwd", _lean_bwd_impl, mutates_args=())


@_lean_fwd.register_fake
def _lean_fwd_fake(inp, w_ih, bias, x0, w_hh, res, gamma, lengths, width, res_kind, nonlin, backend, amp, reverse):
    T, B = inp.shape[:2]
    return x0.new_empty((T, B, x0.shape[-1])), x0.new_empty(x0.shape)  # contiguous, as the chain's outputs


@_lean_bwd.register_fake
def _lean_bwd_fake(grad_out, grad_hn, inp, w_ih, bias, x0, out, w_hh, res, gamma, lengths, width, res_kind, nonlin,
                   backend, amp, reverse, need):
    like = (inp, w_ih, bias, x0, w_hh, res, gamma)
    return tuple(t.new_empty(t.shape) if n else out.new_empty((0,)) for t, n in zip(like, need))  # contiguous


def _lean_setup(ctx, inputs, output, eager=False):
    inp, w_ih, bias, x0, w_hh, res, gamma, lengths, *meta = inputs
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(inp, w_ih, bias, x0, output[0], w_hh, res, gamma, lengths)
    ctx.meta = tuple(meta)  # width, res_kind, nonlin, backend, amp, reverse
    ctx.eager = eager


def _lean_backward(ctx, grad_out, grad_hn):
    inp, w_ih, bias, x0, out, w_hh, res, gamma, lengths = ctx.saved_tensors
    need = [bool(n) for n in ctx.needs_input_grad[:7]]
    grad_out = torch.zeros_like(out) if grad_out is None else grad_out.contiguous()
    grad_hn = torch.zeros_like(x0) if grad_hn is None else grad_hn.contiguous()
    # As ops._backward: the implementation itself only from the eager fast path with grad mode off. Under
    # create_graph=True (grad mode on here) the backward op, which says plainly that a gradient of these gradients
    # is not implemented when one is asked for; under torch.compile the op, opaque to AOT autograd (traced into,
    # the implementation ran under the forward's autocast state: W_hh's gradient in bfloat16).
    bwd = _lean_bwd_impl if ctx.eager and not torch.is_grad_enabled() else _lean_bwd
    grads = bwd(grad_out, grad_hn, inp, w_ih, bias, x0, out, w_hh, res, gamma, lengths, *ctx.meta, need)
    return tuple(g if n else None for g, n in zip(grads, need)) + (None,) * 7


torch.library.register_autograd("wcrnn_kernels::lean_layer_fwd", _lean_backward, setup_context=_lean_setup)
torch.library.register_autograd("wcrnn_kernels::lean_layer_bwd", _no_double_backward,
                                setup_context=lambda ctx, inputs, output: None)


class _LeanLayer(torch.autograd.Function):
    """The lean op's eager fast path (as ops._EagerChain for the chain): the same implementation, setup and
    backward without the custom-op dispatch."""

    @staticmethod
    def forward(ctx, *inputs):
        output = _lean_fwd_impl(*inputs)
        _lean_setup(ctx, inputs, output, eager=True)
        return output

    backward = staticmethod(_lean_backward)


def _show(v) -> str:
    if isinstance(v, torch.Tensor):
        return f"{v.item():g}" if v.numel() == 1 else f"<tensor of shape {tuple(v.shape)}>"
    return repr(v)


def _check_finite(name: str, v) -> None:
    """Raise ValueError naming `name` when the number or tensor `v` holds NaN or an infinity."""
    if v is None:
        return
    if isinstance(v, torch.Tensor):
        if v.device.type == "meta" or not v.is_floating_point():
            return
        bad = ~torch.isfinite(v.detach())
        if bool(bad.any()):
            idx = tuple(int(i) for i in bad.nonzero()[0])
            where = f" at index {idx}" if v.dim() else ""
            raise ValueError(f"{name}: expected finite values, got {v.detach()[idx].item()}{where}")
    elif not math.isfinite(float(v)):
        raise ValueError(f"{name}: expected a finite number, got {v!r}")


def _min_value(v) -> float:
    if isinstance(v, torch.Tensor):
        return float(v.detach().min()) if v.device.type != "meta" and v.numel() else 0.0
    return float(v)


@compiler_disable("a PackedSequence's layout has data-dependent sizes (batch_sizes): torch.compile runs it "
                  "eagerly, a graph break, so fullgraph=True cannot take packed input")
def _packed_layout(batch_sizes: Tensor, device: torch.device) -> tuple[int, int, Tensor, Tensor]:
    """T, B, the lengths (B,) and, for each packed row, its row in the padded time-major (T * B) layout, in the
    packed (length-sorted) batch order. Worked out on the CPU from batch_sizes (a CPU tensor) and moved once
    without waiting: indexing a GPU tensor with a GPU mask, or checking GPU lengths, would make the host wait
    for the device at every call. Data-dependent sizes, which torch.compile cannot trace: it runs this eagerly
    (a graph break, as for nn.RNN, which Dynamo does not trace at all; fullgraph=True refuses packed input)."""
    T, B = batch_sizes.shape[0], int(batch_sizes[0])
    valid = torch.arange(B)[None, :] < batch_sizes[:, None]  # (T, B) on CPU
    rows = valid.reshape(-1).nonzero().squeeze(1).to(device, non_blocking=True)  # packed -> T*B
    return T, B, valid.sum(0), rows


def _check_packed(data: Tensor, batch_sizes: Tensor) -> None:
    """A PackedSequence's batch_sizes must describe its data (as pack_padded_sequence makes them)."""
    if not isinstance(batch_sizes, torch.Tensor) or batch_sizes.dim() != 1 or batch_sizes.dtype != torch.int64 \
            or batch_sizes.device.type != "cpu":
        raise ValueError("input: a PackedSequence's batch_sizes must be a 1-D int64 CPU tensor, got "
                         f"{batch_sizes!r}")
    if data.dim() != 2:
        raise ValueError(f"input: a PackedSequence's data must be 2-D (sum of lengths, input_size), got shape "
                         f"{tuple(data.shape)}")
    if batch_sizes.numel():
        total = int(batch_sizes.sum())
        if total != data.shape[0]:
            raise ValueError(f"input: the PackedSequence's batch_sizes add up to {total} steps (its lengths "
                             f"run over T = {batch_sizes.numel()} steps), but its data has {data.shape[0]} rows; "
                             "build it with torch.nn.utils.rnn.pack_padded_sequence or pack_sequence")
        if int(batch_sizes.min()) < 1 or bool((batch_sizes[1:] > batch_sizes[:-1]).any()):
            raise ValueError("input: a PackedSequence's batch_sizes must be positive and non-increasing, got "
                             f"{batch_sizes.tolist()}")


class _DefaultGamma(float):
    """The constructor's default coupling (0.01, and shown as 0.01): a float, told apart from a gamma the caller
    passed, so that residual="none" without one can warn (it is the most common slip of a literal swap)."""

    def __repr__(self) -> str:
        return repr(float(self))


_DEFAULT_GAMMA = _DefaultGamma(0.01)


class _BiasSum(torch.autograd.Function):
    """b_ih + b_hh whose backward gives each bias a gradient tensor of its own."""
    @staticmethod
    def forward(ctx, b_ih, b_hh):
        return b_ih + b_hh

    @staticmethod
    def backward(ctx, grad):
        return grad, grad.clone()


def _sum_biases(b_ih: Tensor, b_hh: Tensor) -> Tensor:
    """b_ih + b_hh; under torch.compile through _BiasSum. A compiled backward of a plain sum returns one tensor as
    both biases' gradient (torch 2.13, any module: F.linear(x, w, b1 + b2) does it), autograd then stores that one
    tensor as both .grad, and every later in-place update of one (gradient accumulation over micro-batches, which
    then counted a bias's gradient 3x over two backwards; clip_grad_norm_ scaling both) changes the other. A
    clone of H words in the backward gives each its own; eager autograd already does (a plain sum there)."""
    if torch.compiler.is_compiling():
        return _BiasSum.apply(b_ih, b_hh)
    return b_ih + b_hh


class FusedWCRNN(nn.Module):
    r"""Weakly coupled residual RNN with ``torch.nn.RNN``'s interface.

    .. math::  x_t = R(x_{t-1}) + \gamma \, \phi(W_{ih} s_t + b_{ih} + W_{hh} x_{t-1} + b_{hh})

    Args (beyond ``nn.RNN``'s ``input_size, hidden_size, num_layers, nonlinearity, bias, batch_first,
    dropout, bidirectional``):
        residual: ``"none"``, ``"scalar"``, ``"diagonal"``, ``"rotational"`` or ``"dense"`` (docs/design.md section 2).
        r: residual strength: a number, or a tensor of the kind's shape (() scalar, (H,) diagonal,
            (H/2,) rotational magnitudes rho, (H, H) dense). A number means r*I for dense. Default (None):
            1, the paper's critical network. Must be finite; ``residual="none"`` takes no ``r``.
        gamma: coupling, a number or an (H,) tensor, finite and >= 0. Default 0.01. (A negative coupling
            is refused: for tanh it is the same network as a positive one with W_ih, W_hh and both biases
            negated, so it only ever arises by mistake. Values learned with ``learn_gamma=True`` are not
            constrained.)
        theta: rotational angles (H/2,), finite; None draws them uniformly from [0, pi).
        learn_residual, learn_gamma: make r/theta and gamma trainable ``nn.Parameter``s (default: buffers).
        backend: ``"auto"`` (fastest available for the tensors' device), ``"reference"``, ``"torch"``,
            ``"cpp"``, ``"triton"`` or ``"cuda"``. See ``wcrnn_kernels.available_backends()``.
        save_preactivations: True (default): each layer and direction keeps its output and its
            pre-activations a_t (T x B x H each) from forward to backward. False: only the output, as
            ``nn.RNN`` keeps on the CPU; the backward recomputes the input projection and a_t (one GEMM over
            the saved states, docs/design.md section 5), which costs backward time
            (benchmarks/bench_memory.py measures both; README, Benchmarks). The same values; gradients equal
            to rounding (the recomputed a_t is rounded as a GEMM rounds, not as the chain's kernel).
            In eager calls and under ``torch.compile``; under ``torch.func``, forward-mode AD, jit tracing
            and export the layers save a_t as by default.

    Parameter names and default initialisation are ``nn.RNN``'s. ``load_state_dict`` accepts an
    ``nn.RNN`` state_dict, also with ``strict=True``: the weights and biases come from it, and the residual
    and gamma keep the values given to the constructor (a state_dict holds none of ``r_l{k}``,
    ``theta_l{k}``, ``gamma_l{k}``: all of them missing is read as "an nn.RNN state_dict"; some but not all
    missing is an error as usual). Residual and coupling live in ``r_l{k}``, ``theta_l{k}``,
    ``gamma_l{k}`` (``_reverse`` for the second direction).

    Under ``torch.autocast`` (CPU bfloat16, CUDA float16 / bfloat16) a float32 module behaves as ``nn.RNN``
    does: the input projection runs in the autocast dtype, ``output`` and ``h_n`` come back in the autocast
    dtype, the parameters get float32 gradients, and ``input`` / ``hx`` may be float32 or the autocast
    dtype. The recurrent chain itself runs in float32 (state, accumulation, W_hh, r and gamma), so a
    residual such as r = 0.999 is not rounded to bfloat16's 1.0.
    """

    @property
    def save_preactivations(self) -> bool:
        # (a module pickled before the argument existed has no _save_preactivations: the default)
        return self.__dict__.get("_save_preactivations", True)

    @save_preactivations.setter
    def save_preactivations(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"save_preactivations: expected a bool, got {type(value).__name__} {value!r}")
        self.__dict__["_save_preactivations"] = value

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, residual: str = "scalar", r=None, gamma=_DEFAULT_GAMMA, theta=None,
                 learn_residual: bool = False, learn_gamma: bool = False, backend: str = "auto",
                 device=None, dtype=None, proj_size=None, save_preactivations: bool = True):
        super().__init__()
        for name, v in (("bias", bias), ("batch_first", batch_first), ("bidirectional", bidirectional),
                        ("save_preactivations", save_preactivations)):
            # nn.RNN: a TypeError for bias and batch_first; it takes any bidirectional, where "False" (from a config
            # file or a command line) is truthy: refused too, an integer 0 / 1 allowed
            if not isinstance(v, bool) and not (name == "bidirectional" and isinstance(v, int) and v in (0, 1)):
                raise TypeError(f"{name}: expected a bool, got {type(v).__name__} {v!r}")
        for name, v, lo in (("input_size", input_size, 1), ("hidden_size", hidden_size, 1),
                            ("num_layers", num_layers, 1)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):  # nn.RNN: TypeError too
                raise TypeError(f"{name}: expected an integer >= {lo}, got {type(v).__name__} {v!r}")
            if v < lo:
                raise ValueError(f"{name}: expected an integer >= {lo}, got {v!r}")
        if proj_size is not None:  # named, so that it gets nn.RNN's answer instead of "unexpected keyword"
            raise ValueError(f"proj_size: only supported for LSTM, not RNN (as in nn.RNN), got {proj_size!r}")
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        if not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1 or isinstance(dropout, bool):
            raise ValueError(f"dropout: expected a number in [0, 1], got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            # nn.RNN's own warning, word for word
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                          f"expects num_layers greater than 1, but got dropout={dropout} and "
                          f"num_layers={num_layers}", stacklevel=2)
        if residual not in RESIDUAL_KINDS:
            raise ValueError(f"residual: expected one of {RESIDUAL_KINDS}, got {residual!r}")
        if residual == "none":
            if r is not None:
                raise ValueError(f"r: residual='none' has no residual map, so r={_show(r)} would be ignored; "
                                 "leave r out, or choose a residual kind that uses it (e.g. residual='scalar')")
            if learn_residual:
                raise ValueError("learn_residual: residual='none' has no residual parameters to learn; "
                                 "leave learn_residual=False, or choose a residual kind that has them")
            if gamma is _DEFAULT_GAMMA:
                warnings.warn("FusedWCRNN(residual='none') with the default gamma=0.01 is x_t = 0.01 * phi(...), not "
                              "an Elman RNN: pass gamma=1.0 for what nn.RNN computes (or FusedWCRNN.from_rnn(rnn)), "
                              "or gamma=0.01 to keep this network without this warning", stacklevel=2)
        elif r is None:
            r = 1.0
        check_residual_args(residual, hidden_size, 0.0 if r is None else r, theta)
        _check_finite("r", r)
        _check_finite("theta", theta)
        if isinstance(gamma, torch.Tensor):
            if gamma.numel() != 1 and tuple(gamma.shape) != (hidden_size,):
                raise ValueError(f"gamma: expected a number or a tensor of shape () or ({hidden_size},), "
                                 f"got shape {tuple(gamma.shape)}")
            if not gamma.is_floating_point():
                raise ValueError(f"gamma: expected a floating-point tensor, got dtype {gamma.dtype}")
        elif isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
            raise TypeError(f"gamma: expected a number or a tensor, got {type(gamma).__name__}")
        _check_finite("gamma", gamma)
        if _min_value(gamma) < 0:
            raise ValueError(f"gamma: expected a coupling >= 0, got {_show(gamma)} (min {_min_value(gamma):g}); "
                             "a negative coupling with tanh is the same network as a positive one with W_ih, "
                             "W_hh and both biases negated")
        if backend != "auto" and backend not in backend_names():
            raise ValueError(f"backend: expected 'auto' or one of {backend_names()}, got {backend!r}")
        if backend not in ("auto", "reference"):
            ok, why = get_backend(backend).availability()
            if not ok:
                from .backends import BackendUnavailableError
                raise BackendUnavailableError(f"backend={backend!r} is not available here: {why}")

        self.input_size = int(input_size)
        self.hidden_size = H = int(hidden_size)
        self.num_layers = int(num_layers)
        self.nonlinearity = nonlinearity
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.residual = residual
        self.learn_residual = bool(learn_residual)
        self.learn_gamma = bool(learn_gamma)
        self.backend = backend
        self.save_preactivations = save_preactivations
        self.proj_size = 0  # nn.RNN compatibility
        num_dir = 2 if bidirectional else 1
        fk = {"device": device, "dtype": dtype}

        # nn.RNN's parameters, registered in nn.RNN's order so reset_parameters draws identical weights.
        self._flat_weights_names = []
        for layer in range(num_layers):
            for d in range(num_dir):
                sfx = _suffix(layer, d)
                layer_in = input_size if layer == 0 else H * num_dir
                names = [("weight_ih" + sfx, (H, layer_in)), ("weight_hh" + sfx, (H, H))]
                if bias:
                    names += [("bias_ih" + sfx, (H,)), ("bias_hh" + sfx, (H,))]
                for n, shape in names:
                    setattr(self, n, nn.Parameter(torch.empty(shape, **fk)))
                    self._flat_weights_names.append(n)
        self._reset_weights()

        # Residual and coupling, per layer and direction, after the weights (they do not shift the RNG
        # stream that nn.RNN's initialisation uses), in the weights' dtype. What they were made from is kept
        # (a copy of a tensor), so that reset_parameters() makes them again, as nn.RNN's resets every parameter
        # (e.g. after to_empty() of a module built on the meta device).
        fk["dtype"] = self.weight_ih_l0.dtype
        # (plain floats: a pickled module must load with torch.load(weights_only=True) and only FusedWCRNN allowed)
        self._state_init = tuple(v.detach().clone() if isinstance(v, torch.Tensor) else
                                 None if v is None else float(v) for v in (r, gamma, theta))
        for kind, name, value in self._initial_states(fk):
            self._register_state(name, value, learn_gamma if kind == "gamma" else learn_residual)

    # ----------------------------------------------------------------------------------- construction
    def _register_state(self, name, value, learnable):
        if learnable:
            setattr(self, name, nn.Parameter(value))
        else:
            self.register_buffer(name, value)

    def _gamma_init(self, gamma, fk):
        if isinstance(gamma, torch.Tensor):
            g = gamma.detach().clone()
            g = g.reshape(()) if g.numel() == 1 else g
            return g.to(dtype=fk["dtype"], device=fk["device"] or g.device)
        return torch.tensor(float(gamma), **fk)

    def _r_init(self, kind, r, fk):
        H = self.hidden_size
        if isinstance(r, torch.Tensor) and r.numel() != 1:
            return r.detach().clone().to(dtype=fk["dtype"], device=fk["device"] or r.device)
        val = float(r)
        if kind == "scalar":
            return torch.tensor(val, **fk)
        if kind == "diagonal":
            return torch.full((H,), val, **fk)
        if kind == "rotational":
            return torch.full((H // 2,), val, **fk)
        return val * torch.eye(H, **fk)  # dense

    def _initial_states(self, fk):
        """(kind, name, value) of every layer and direction's residual and coupling states as constructed, in
        construction order: per layer and direction gamma, then r and theta (drawn uniformly from [0, pi) unless
        given) for the residual kinds that have them."""
        r, gamma, theta = self._state_init
        for layer in range(self.num_layers):
            for d in range(2 if self.bidirectional else 1):
                sfx = _suffix(layer, d)
                yield "gamma", "gamma" + sfx, self._gamma_init(gamma, fk)
                if self.residual != "none":
                    yield "r", "r" + sfx, self._r_init(self.residual, 1.0 if r is None else r, fk)
                if self.residual == "rotational":
                    yield "theta", "theta" + sfx, (theta.detach().clone().to(**fk) if theta is not None
                                                   else torch.rand(self.hidden_size // 2, **fk) * math.pi)

    def _reset_weights(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for n in self._flat_weights_names:
            nn.init.uniform_(getattr(self, n), -stdv, stdv)

    def reset_parameters(self) -> None:
        """nn.RNN's initialisation of every weight and bias (uniform in [-1/sqrt(H), 1/sqrt(H)], the same draws
        for the same seed), then the residual and coupling states as the constructor made them (r and gamma
        from its arguments, theta drawn again unless it was given), learned values included."""
        self._reset_weights()
        w = self.weight_ih_l0
        with torch.no_grad():
            for _, name, value in self._initial_states({"dtype": w.dtype, "device": w.device}):
                getattr(self, name).copy_(value)

    def flatten_parameters(self) -> None:
        """No-op, for nn.RNN compatibility (the fused op needs no flat weight buffer)."""

    @property
    def all_weights(self) -> list[list[Tensor]]:
        return [[getattr(self, n) for n in names] for names in self._all_weights]

    # nn.RNNBase's names for the same things, which client code reads (weight-drop wrappers, init loops)
    @property
    def _flat_weights(self) -> list[Tensor]:
        return [getattr(self, n) for n in self._flat_weights_names]

    @property
    def _all_weights(self) -> list[list[str]]:
        per = 4 if self.bias else 2
        return [self._flat_weights_names[i:i + per] for i in range(0, len(self._flat_weights_names), per)]

    @property
    def mode(self) -> str:
        return "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU"

    @classmethod
    def from_rnn(cls, rnn: nn.RNN, **overrides) -> "FusedWCRNN":
        """A FusedWCRNN with ``rnn``'s configuration and a copy of its weights.

        Without overrides the result computes exactly what ``rnn`` computes: ``residual="none"``,
        ``gamma=1.0`` (an Elman RNN). Every constructor argument can be overridden; a weakly coupled network
        from an ``nn.RNN``'s weights is ``from_rnn(rnn, residual="scalar", r=1.0, gamma=0.01)`` (name
        ``gamma`` too: an override of ``residual`` alone keeps ``rnn``'s coupling, gamma = 1).
        """
        if not isinstance(rnn, nn.RNN):
            raise TypeError(f"rnn: expected a torch.nn.RNN, got {type(rnn).__name__}")
        if getattr(rnn, "proj_size", 0):
            raise ValueError("rnn: nn.RNN with proj_size > 0 is not supported")
        w = rnn.weight_ih_l0
        cfg = dict(input_size=rnn.input_size, hidden_size=rnn.hidden_size, num_layers=rnn.num_layers,
                   nonlinearity=rnn.nonlinearity, bias=rnn.bias, batch_first=rnn.batch_first,
                   dropout=float(rnn.dropout), bidirectional=rnn.bidirectional, residual="none", gamma=1.0,
                   device=w.device, dtype=w.dtype)
        cfg.update(overrides)
        with warnings.catch_warnings():
            if (cfg["num_layers"], cfg["dropout"]) == (rnn.num_layers, float(rnn.dropout)):
                # rnn's constructor already warned about this dropout
                warnings.filterwarnings("ignore", message="dropout option adds dropout")
            model = cls(**cfg)
        parametrized = sorted(getattr(rnn, "parametrizations", {}).keys())
        if parametrized:
            warnings.warn(
                f"FusedWCRNN.from_rnn: rnn has parametrizations on {', '.join(parametrized)}; the new module takes "
                "their current values as plain parameters (its state_dict has no 'parametrizations.' keys). "
                "Register them again on the result (e.g. torch.nn.utils.parametrizations.weight_norm(model, "
                "'weight_hh_l0')) to keep them", stacklevel=2)
        with torch.no_grad():
            for n in model._flat_weights_names:
                getattr(model, n).copy_(getattr(rnn, n))
        return model.train(rnn.training)  # an eval-mode rnn gives an eval-mode module (dropout off)

    def _extra_state_names(self) -> list[str]:
        """Names of the residual / coupling tensors, which an nn.RNN state_dict does not have."""
        return [n for n, _ in self.named_parameters(recurse=False) if n.startswith(("r_l", "theta_l", "gamma_l"))] + \
            [n for n, _ in self.named_buffers(recurse=False) if n.startswith(("r_l", "theta_l", "gamma_l"))]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        extra = [prefix + n for n in self._extra_state_names()]
        if not any(k in state_dict for k in extra):
            # an nn.RNN state_dict: weights from it, residual and gamma as constructed
            drop = set(extra)
            missing_keys[:] = [k for k in missing_keys if k not in drop]

    # ------------------------------------------------------------------------------------- forward
    def chain_weights(self, layer: int = 0, direction: int = 0) -> ChainWeights:
        """Weights of one layer/direction with the residual in canonical form (differentiable)."""
        check_layer_direction(layer, direction, self.num_layers, self.bidirectional)
        return self._chain_weights(layer, direction)

    def _chain_weights(self, layer: int, direction: int, for_kernels: bool = False) -> ChainWeights:
        # checked indices. `for_kernels`: res and gamma as the chain op takes them, a scalar r or gamma left 0-d
        # (the op broadcasts it): at T = 1 every torch op made here is a noticeable part of a call
        w_ih, w_hh, b_ih, b_hh, r, theta, gamma = self._layer_state(layer, direction)
        bias = _sum_biases(b_ih, b_hh) if self.bias else None
        res_kind, res = canonical_residual(self.residual, self.hidden_size, 0.0 if r is None else r, theta,
                                           dtype=w_hh.dtype, device=w_hh.device, keep_scalar=for_kernels)
        if not for_kernels and gamma.dim() == 0:  # the chain op takes a 0-d gamma (and makes both contiguous)
            gamma = gamma.expand(self.hidden_size)
        return ChainWeights(w_ih, w_hh, bias, res_kind, res, gamma, self.nonlinearity)

    def _layer_state(self, layer: int, direction: int) -> tuple:
        """weight_ih, weight_hh, bias_ih, bias_hh, r, theta, gamma of one layer and direction (None where absent).

        The states this module's configuration never has (biases without bias, r for residual "none", theta
        but for "rotational") are None without a lookup: nothing would use them, and a lookup of an absent
        name costs an AttributeError, noticeable in a step-by-step call."""
        n_ih, n_hh, n_bih, n_bhh, n_r, n_theta, n_gamma = _state_names(layer, direction)
        st, kind = self._state, self.residual
        return (st(n_ih), st(n_hh), st(n_bih) if self.bias else None, st(n_bhh) if self.bias else None,
                st(n_r) if kind != "none" else None, st(n_theta) if kind == "rotational" else None, st(n_gamma))

    def _state(self, name: str):
        # Module.__getattr__'s own lookups (parameters, then buffers) without its cost, which a step-by-step
        # call pays for every weight; getattr for what they do not hold (a parametrization's property, an
        # attribute a hook sets, a state this module kind has not: None)
        v = self._parameters.get(name)
        if v is None:
            v = self._buffers.get(name)
            if v is None:
                v = getattr(self, name, None)
        return v

    def _autocast_dtype(self, device: torch.device) -> Optional[torch.dtype]:
        """The autocast dtype when autocast is on for `device` and would cast this module (float32 weights),
        else None: nn.RNN's rule (autocast casts float32 tensors only)."""
        if device.type == "meta" or not torch.is_autocast_enabled(device.type) or \
                self._state("weight_ih_l0").dtype != torch.float32:
            return None  # (autocast has no meta device: is_autocast_enabled("meta") raises)
        dt = torch.get_autocast_dtype(device.type)
        return dt if dt in (torch.float16, torch.bfloat16) else None

    def _check_input(self, x: Tensor, hx: Optional[Tensor], batched: bool, amp: Optional[torch.dtype]):
        w = self._state("weight_ih_l0")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input: expected input.size(-1) == input_size = {self.input_size}, "
                             f"got {x.shape[-1]}")
        if x.dtype != w.dtype and not (amp is not None and x.dtype == amp):
            also = f" or, under autocast, {amp}" if amp is not None else ""
            model = f" or the model with model.to({x.dtype})" if x.is_floating_point() else ""  # (floats only)
            raise ValueError(f"input: dtype {x.dtype} does not match the module's parameters ({w.dtype}{also}); "
                             f"convert the input with input.to({w.dtype}){model}")
        if x.device != w.device:
            raise ValueError(f"input: on {x.device} but the module's parameters are on {w.device}")
        if hx is None:
            return
        if not isinstance(hx, torch.Tensor):
            raise TypeError(f"hx: expected a tensor or None, got {type(hx).__name__}")
        if not batched and hx.dim() != 2:
            raise ValueError(f"hx: for unbatched 2-D input, hx should also be 2-D "
                             f"(num_layers * num_directions, hidden_size), got a {hx.dim()}-D tensor")
        if batched and hx.dim() != 3:
            raise ValueError(f"hx: for batched 3-D input, hx should also be 3-D "
                             f"(num_layers * num_directions, batch, hidden_size), got a {hx.dim()}-D tensor")
        if amp is not None:
            if hx.dtype not in (w.dtype, amp):
                raise ValueError(f"hx: dtype {hx.dtype}: under autocast expected {w.dtype} or {amp}")
        elif hx.dtype != x.dtype:
            raise ValueError(f"hx: dtype {hx.dtype} does not match the input's dtype {x.dtype}")
        if hx.device != x.device:
            raise ValueError(f"hx: on {hx.device} but the input is on {x.device}")

    def forward(self, input, hx: Optional[Tensor] = None):
        num_dir = 2 if self.bidirectional else 1
        H = self.hidden_size
        lengths = None
        data = input.data if isinstance(input, PackedSequence) else input
        if not isinstance(data, torch.Tensor):
            raise TypeError(f"input: expected a tensor or a PackedSequence, got {type(input).__name__}")
        amp = self._autocast_dtype(data.device)
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if not torch.compiler.is_compiling():  # data-dependent checks: eager only
                _check_packed(data, batch_sizes)
            self._check_input(data, hx, batched=True, amp=amp)
            T, B, lengths, rows = _packed_layout(batch_sizes, data.device)
            x = data.new_zeros((T * B, data.shape[-1])).index_copy_(0, rows, data).view(T, B, data.shape[-1])
            if hx is not None and sorted_indices is not None:
                hx = hx.index_select(1, sorted_indices)
            batched = True
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"input: expected a 2-D (unbatched) or 3-D tensor, got {input.dim()}-D "
                                 f"with shape {tuple(input.shape)}")
            batched = input.dim() == 3
            self._check_input(input, hx, batched, amp)
            if not batched:
                x = input.unsqueeze(1)
                hx = hx.unsqueeze(1) if hx is not None else None
            else:
                x = input.transpose(0, 1) if self.batch_first else input
            T, B = x.shape[0], x.shape[1]
        if T == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        expected_hx = (self.num_layers * num_dir, B, H)
        if hx is not None and tuple(hx.shape) != expected_hx:
            shown = expected_hx if batched else (expected_hx[0], H)
            got = tuple(hx.shape) if batched else (hx.shape[0], hx.shape[2])
            raise ValueError(f"hx: expected shape {shown}, got {got}")

        out, h_n = self._run_layers(x, hx, lengths, amp)

        if isinstance(input, PackedSequence):
            out = PackedSequence(out.reshape(T * B, -1).index_select(0, rows), batch_sizes, sorted_indices,
                                 unsorted_indices)
            if unsorted_indices is not None:
                h_n = h_n.index_select(1, unsorted_indices)
            return out, h_n
        if not batched:
            return out.squeeze(1), h_n.squeeze(1)
        return (out.transpose(0, 1) if self.batch_first else out), h_n

    def _run_layers(self, x: Tensor, hx: Optional[Tensor], lengths: Optional[Tensor], amp: Optional[torch.dtype]):
        """All layers and directions. Under autocast (`amp` = its dtype) the input projection runs in `amp`
        (autocast casts it), the chain in float32 with autocast off, and each layer's output is cast to `amp`."""
        num_dir = 2 if self.bidirectional else 1
        T, B = x.shape[:2]
        sdt = self._state("weight_hh_l0").dtype  # the chain's dtype (float32 under autocast)
        if hx is None:
            hx = x.new_zeros((self.num_layers * num_dir, B, self.hidden_size), dtype=sdt)
        elif amp is not None:
            hx = hx.to(sdt)
        # lengths come from batch_sizes (in [0, T] by construction), moved once without waiting
        dev_lengths = lengths.to(x.device, non_blocking=True) if lengths is not None else None
        h_n = []
        layer_in = x
        # Every layer's weights up front: under torch.compile their small elementwise preparations (bias sums,
        # residual and gamma in canonical form) then fuse into one generated kernel instead of one per layer.
        cws = None if self.backend == "reference" else \
            [self._chain_weights(layer, d, True) for layer in range(self.num_layers) for d in range(num_dir)]
        # The chain's arguments meet its contract by construction (run_chain skips wcrnn_chain's checks), and
        # whether this call is plain eager code (ops.py's fast path) is worked out once for every layer.
        plain_mode = _plain_eager_mode()
        nonlin = NONLIN_CODES[self.nonlinearity]
        # save_preactivations=False: each layer keeps only its output for the backward (the lean op), where a
        # backward can follow, in plain eager calls (_LeanLayer) and under torch.compile (the custom op); not under
        # forward-mode AD (run_chain runs the reference, which has its rules), torch.func, tracing or export
        compiling = not plain_mode and torch.compiler.is_compiling() and _IS_EXPORTING is not None and \
            not _IS_EXPORTING()
        lean = not self.save_preactivations and (plain_mode or compiling) and torch.is_grad_enabled() and \
            _fwad._current_level < 0
        for layer in range(self.num_layers):
            outs = []
            width = self.input_size if layer == 0 else self.hidden_size * num_dir  # the layer's input width
            for d in range(num_dir):
                x0 = hx[layer * num_dir + d]
                cw = cws[layer * num_dir + d] if cws is not None else None
                if lean and cw is not None and _lean_applies(layer_in, x0, cw, plain_mode):
                    # the second direction reverses in time itself, so that it saves layer_in
                    out, h = (_LeanLayer.apply if plain_mode else _lean_fwd)(
                        layer_in, cw.w_ih, cw.bias, x0.contiguous(), cw.w_hh.contiguous(), cw.res.contiguous(),
                        cw.gamma.contiguous(), dev_lengths, width, cw.res_kind, nonlin, self.backend, amp, d == 1)
                elif self.backend == "reference":
                    inp = layer_in if d == 0 else _reverse_time(layer_in, dev_lengths)
                    if amp is None:
                        out, h = self._reference_layer(inp, x0, layer, d, dev_lengths)
                    else:  # the specification, in float32 throughout
                        with torch.autocast(x.device.type, enabled=False):
                            out, h = self._reference_layer(inp.to(sdt), x0, layer, d, dev_lengths)
                else:
                    # under autocast: in the autocast dtype
                    u = _direction_projection(layer_in, cw.w_ih, cw.bias, width, d == 1, dev_lengths,
                                              self.hidden_size)
                    if amp is None:
                        plain = plain_mode and _plain_tensors(u, x0, cw.w_hh, cw.res, cw.gamma)
                        out, h = run_chain(u, x0, cw.w_hh, cw.res_kind, cw.res, cw.gamma, dev_lengths, nonlin,
                                           self.backend, plain)
                    else:
                        with torch.autocast(x.device.type, enabled=False):
                            u = u.to(sdt)
                            plain = plain_mode and _plain_tensors(u, x0, cw.w_hh, cw.res, cw.gamma)
                            out, h = run_chain(u, x0, cw.w_hh, cw.res_kind, cw.res, cw.gamma, dev_lengths,
                                               nonlin, self.backend, plain)
                if amp is not None:
                    out, h = out.to(amp), h.to(amp)
                outs.append(out if d == 0 else _reverse_time(out, dev_lengths))
                h_n.append(h)
            layer_in = outs[0] if num_dir == 1 else torch.cat(outs, dim=-1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_in = F.dropout(layer_in, self.dropout, training=True)
        return layer_in, torch.stack(h_n)  # a fresh tensor, as nn.RNN's h_n (a view could not be detach_()-ed)

    def _reference_layer(self, inp, x0, layer, d, lengths):
        # backend="reference": the specification itself, from the user-facing parameters
        w_ih, w_hh, b_ih, b_hh, r, theta, gamma = self._layer_state(layer, d)
        return wcrnn_layer_ref(inp, x0, w_ih, w_hh, b_ih, b_hh, residual=self.residual, r=0.0 if r is None else r,
                               theta=theta, gamma=gamma, nonlinearity=self.nonlinearity, lengths=lengths)

    def __prepare_scriptable__(self):
        # torch.jit.script calls this first: say plainly what works instead of failing deep inside TorchScript
        raise RuntimeError(
            "FusedWCRNN does not support torch.jit.script (TorchScript cannot compile its backend dispatch). "
            "Use torch.compile or torch.export; torch.jit.trace also works (the trace records the fused op, "
            "whose sequence length and batch stay dynamic)")

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        s += f", residual={self.residual!r}"
        if self.residual != "none":
            r = self.r_l0
            s += f", r={r.item():g}" if r.numel() == 1 else f", r=<{tuple(r.shape)} tensor>"
        g = self.gamma_l0
        s += f", gamma={g.item():g}" if g.numel() == 1 else f", gamma=<{tuple(g.shape)} tensor>"
        if self.learn_residual:
            s += ", learn_residual=True"
        if self.learn_gamma:
            s += ", learn_gamma=True"
        s += f", backend={self.backend!r}"
        if not self.save_preactivations:
            s += ", save_preactivations=False"
        return s
