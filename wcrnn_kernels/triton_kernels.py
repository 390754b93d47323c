"""Persistent Triton kernels for the WCRNN chain: the forward state chain and the backward delta chain.

    forward   x_t = R(x_{t-1}) + gamma * phi(u_t + W_hh x_{t-1})                t = 1..T
    backward  delta_t += e_t;  g_t = gamma * phi'(a_t) * delta_t;  delta_{t-1} = R^T delta_t + W_hh^T g_t

(docs/design.md section 5.) One program owns a tile of BLOCK_B = 16 batch rows and runs the whole time loop:
rows are independent through time, so no program ever waits for another, and the launch cost is paid
once, not T times. The state (x or delta) stays in registers in float32 (float64 for float64 inputs)
for the whole sequence; the next step's inputs are prefetched while the current step computes.

Two ways to feed the recurrent product, chosen per (H, dtype, residual kind, precision) by the autotuner:

* ``W_RESIDENT``: W_hh (and a dense R) are loaded once before the time loop; Triton keeps the
  loop-invariant dot operand in shared memory and each step is one (16 x HP) @ (HP x HP) ``tl.dot``
  plus a pointwise epilogue.
* streamed: W_hh is read in (BLOCK_K x HP) tiles from global memory (hot in L1 / L2) every step, and the
  K-chunks of the state are read back from a small per-row scratch buffer (Triton cannot slice a
  register tile), with one ``tl.debug_barrier`` per step. It runs any H up to ``MAX_HIDDEN`` and is the
  only choice once W no longer fits on chip (H > 256 for 2-byte weights, H > 128 for 4-byte ones).

Sizes are padded to powers of two >= 16 (``tl.dot`` needs tiles of at least 16) and masked. Autotuning is
keyed on H, the residual kind, the dot precisions and the tensors' dtypes, never on T; T and B are not
specialised either (``do_not_specialize``), so a new sequence length or batch size never recompiles.
Time offsets are 64-bit (T * B * H may pass 2^31); offsets inside one (B, H) slab are 32-bit, which the
launchers check.

Numerics. float16 / bfloat16 tensors: the W_hh product runs on the tensor cores with an fp32 accumulator;
the fp32 state is split into two half-precision operands hi + lo, so the product sees ~16 bits of the
state (cuDNN rounds its state to 8 bits in bf16) at the cost of one extra MMA per step. A dense residual
R x runs in fp32, because with r ~ 1 the residual path carries the state. float32: the precision of the
fp32 products follows ``torch.get_float32_matmul_precision()`` ("highest" -> exact fp32 FMA, "high" ->
3xTF32, "medium" -> TF32), so the default matches torch's own fp32 matmul. float16 weights in the
backward: g_t is scaled per row by a power of two before it is rounded to fp16 (g often lies far below
fp16's normal range) and the product is scaled back, both exactly. tanh is built from exp (portable).

Under ``TRITON_INTERPRET=1`` the same kernels run on CPU tensors (slowly) for exact testing. Two
interpreter quirks are emulated there so that bfloat16 is tested as GPUs compute it: its bf16 ``tl.dot``
multiplies raw bit patterns (upstream limitation) and its fp32 -> bf16 cast truncates; under the
interpreter the kernels round to nearest-even bf16 with integer ops and multiply in fp32 (exactly what
the tensor cores do, bf16 products being exact in fp32).

Reading order: helpers (tanh, phi, phi', pair swap, residuals, the split product), the forward kernel,
the backward kernel, config selection, then the launchers ``wcrnn_fwd`` / ``wcrnn_bwd``.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import time
from typing import NamedTuple

import torch
import triton
import triton.language as tl

BLOCK_B = 16          # batch rows per program: the smallest tl.dot M, hence the most programs in flight
MAX_HIDDEN = 1024     # the state, its accumulator and one W tile must fit in registers


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------

@triton.jit
def _tanh(a):
    # tanh from exp: portable to the interpreter and every GPU (tl.exp lowers to ex2 on NVIDIA). tl.exp
    # rather than exp2 so that float64 needs no rounded log2(e) constant. For |a| >= 1/8,
    # tanh|a| = (1 - e) / (1 + e) with e = exp(-2|a|) <= 0.78: the cancellation in 1 - e costs at most
    # a factor 3.5 and e -> 0 gives exactly 1 for large |a| (no inf / inf). Below 1/8 the odd Taylor
    # series to z^15 (remainder < 3e-18 relative) replaces the cancelling form. Coefficients are built
    # with tl.full in a's dtype so float64 keeps them exact.
    z = tl.abs(a)
    e = tl.exp(-2.0 * z)
    big = (1.0 - e) / (1.0 + e)
    zs = tl.minimum(z, 0.125)       # the series is only used below 1/8; no overflow above
    w = zs * zs
    p = tl.full((), -929569.0 / 638512875.0, a.dtype)
    p = p * w + tl.full((), 21844.0 / 6081075.0, a.dtype)
    p = p * w + tl.full((), -1382.0 / 155925.0, a.dtype)
    p = p * w + tl.full((), 62.0 / 2835.0, a.dtype)
    p = p * w + tl.full((), -17.0 / 315.0, a.dtype)
    p = p * w + tl.full((), 2.0 / 15.0, a.dtype)
    p = p * w + tl.full((), -1.0 / 3.0, a.dtype)
    small = zs + zs * (p * w)
    t = tl.where(z < 0.125, small, big)
    return tl.where(a < 0, -t, t)


@triton.jit
def _phi(a, NONLIN: tl.constexpr):
    if NONLIN == 0:
        y = _tanh(a)
    else:
        y = tl.maximum(a, 0.0)
    return y


@triton.jit
def _phi_grad(a, NONLIN: tl.constexpr):
    if NONLIN == 0:
        y = _tanh(a)
        d = 1.0 - y * y
    else:
        d = tl.where(a > 0, 1.0, 0.0).to(a.dtype)
    return d


@triton.jit
def _swap_pairs(x, BLOCK: tl.constexpr, HP: tl.constexpr):
    # Exchange units 2k and 2k+1 of a register tile. reshape / split / join only move data, so the
    # result is exact everywhere (a permutation by tl.dot with a 0/1 matrix would round through TF32 on
    # a GPU); on a GPU the pair lands in one thread's registers and the swap costs a layout shuffle.
    ev, od = tl.split(tl.reshape(x, (BLOCK, HP // 2, 2)))
    return tl.reshape(tl.join(od, ev), (BLOCK, HP))


@triton.jit
def _residual(x, res0, res1, RES_KIND: tl.constexpr, BLOCK: tl.constexpr, HP: tl.constexpr):
    # R x for the per-unit forms (RES_DIAG, RES_ROT); the dense form is a tl.dot in the kernels.
    if RES_KIND == 0:
        r = x * res0[None, :]
    else:
        r = x * res0[None, :] + _swap_pairs(x, BLOCK, HP) * res1[None, :]
    return r


@triton.jit
def _residual_t(d, res0, res1, RES_KIND: tl.constexpr, BLOCK: tl.constexpr, HP: tl.constexpr):
    # R^T d for the per-unit forms: swap_pairs(res1 * d) since the pair block is [[a, -b], [b, a]].
    if RES_KIND == 0:
        r = d * res0[None, :]
    else:
        r = d * res0[None, :] + _swap_pairs(d * res1[None, :], BLOCK, HP)
    return r


@triton.jit
def _load_res_vectors(res_ptr, cols, col_ok, H, RES_KIND: tl.constexpr, CD: tl.constexpr):
    # The per-unit residual rows (res0 = diagonal, res1 = pair-swap coefficient); unused for dense.
    res0 = tl.load(res_ptr + cols, mask=col_ok, other=0.0).to(CD)   # R's first row if dense: unused
    if RES_KIND == 1:
        res1 = tl.load(res_ptr + H + cols, mask=col_ok, other=0.0).to(CD)
    else:
        res1 = res0
    return res0, res1


@triton.jit
def _dot_w(x, w, acc, PREC: tl.constexpr, EMULATE_BF16: tl.constexpr, SPLIT: tl.constexpr):
    # acc + x @ w for the fp32 / fp64 state x and the weights w in their own dtype. For bf16 / fp16 w
    # the state is split into two operands of w's dtype, x = hi + lo (hi = x rounded, lo = the rounding
    # error rounded), and both run on the tensor cores into the fp32 accumulator: the product then sees
    # ~16 bits of the state instead of 8 (bf16) for one extra MMA per step, and the kernel keeps the
    # fp32-state accuracy of the torch backend instead of cuDNN's bf16-state accuracy.
    # out_dtype is passed explicitly: Triton 3.6 defaults it to float32 (3.8+: acc's dtype) and then
    # rejects a float64 accumulator (an assertion in tl.dot, compiled or interpreted).
    if EMULATE_BF16:
        # Interpreter only: its bf16 tl.dot multiplies raw bit patterns and its fp32 -> bf16 cast
        # truncates. Operands rounded to nearest-even bf16 and multiplied in fp32 are exactly what the
        # tensor cores compute (bf16 products are exact in fp32).
        hi = _round_bf16(x.to(tl.float32))
        r = tl.dot(hi, w.to(tl.float32), acc=acc, input_precision="ieee", out_dtype=acc.dtype)
        if SPLIT:
            lo = _round_bf16(x.to(tl.float32) - hi)
            r = tl.dot(lo, w.to(tl.float32), acc=r, input_precision="ieee", out_dtype=acc.dtype)
    else:
        hi = x.to(w.dtype)
        r = tl.dot(hi, w, acc=acc, input_precision=PREC, out_dtype=acc.dtype)
        if SPLIT:
            lo = (x - hi.to(x.dtype)).to(w.dtype)
            r = tl.dot(lo, w, acc=r, input_precision=PREC, out_dtype=acc.dtype)
    return r


@triton.jit
def _round_bf16(x):
    # fp32 -> the nearest bf16 value (ties to even), kept in fp32; integer ops, exact in the interpreter.
    b = x.to(tl.int32, bitcast=True)
    b = (b + 0x7FFF + ((b >> 16) & 1)) & -65536
    return b.to(tl.float32, bitcast=True)


@triton.jit
def _to_out(x, dtype: tl.constexpr, EMULATE_BF16: tl.constexpr):
    # The cast of a stored result; under the interpreter bf16 rounds to nearest-even as GPUs do.
    if EMULATE_BF16:
        y = _round_bf16(x.to(tl.float32)).to(dtype)
    else:
        y = x.to(dtype)
    return y


@triton.jit
def _row_pow2_scale(g):
    # Largest power of two <= max_j |g[b, j]| per row, from the exponent bits (exact on every target;
    # exp2(floor(log2 m)) is approximate on GPUs). 1 for all-zero or subnormal rows.
    m = tl.max(tl.abs(g), axis=1)
    s = (m.to(tl.int32, bitcast=True) & 0x7F800000).to(tl.float32, bitcast=True)
    return tl.where(s > 0, s, 1.0)


# --------------------------------------------------------------------------------------------------
# Forward: x_1..x_T, h_n
# --------------------------------------------------------------------------------------------------

@triton.jit
def _mask_if(row_ok, cols, H, cond):
    # the tile mask, all-false unless cond (the scalar is folded into the column bound: the interpreter
    # cannot AND a bool tile with a bool scalar)
    return row_ok[:, None] & (cols < tl.where(cond, H, 0))[None, :]


@triton.jit
def _fwd_update(x, r, a, gamma, t, lens, a_ptr, t_off, tile, mask, NONLIN: tl.constexpr,
                HAS_LENGTHS: tl.constexpr, SAVE_A: tl.constexpr, EMULATE_BF16: tl.constexpr):
    # x_t = R x_{t-1} + gamma phi(a_t); past a row's length the state is kept and the output is 0.
    # SAVE_A: store a_t for the backward (0 past the length).
    x_new = r + gamma[None, :] * _phi(a, NONLIN)
    if HAS_LENGTHS:
        valid = (t < lens)[:, None]
        x = tl.where(valid, x_new, x)
        o = tl.where(valid, x, 0.0)
        if SAVE_A:
            a = tl.where(valid, a, 0.0)
    else:
        x = x_new
        o = x
    if SAVE_A:
        tl.store(a_ptr + t_off + tile, _to_out(a, a_ptr.dtype.element_ty, EMULATE_BF16), mask=mask)
    return x, o


@triton.jit(do_not_specialize=["T", "B"])
def _wcrnn_fwd_kernel(
    u_ptr, x0_ptr, wt_ptr, res_ptr, gamma_ptr, len_ptr, out_ptr, hn_ptr, a_ptr, scr_ptr,
    T, B, H,
    RES_KIND: tl.constexpr, NONLIN: tl.constexpr, HAS_LENGTHS: tl.constexpr, SAVE_A: tl.constexpr,
    CD: tl.constexpr,
    PREC: tl.constexpr, PREC_CD: tl.constexpr, EMULATE_BF16: tl.constexpr, SPLIT: tl.constexpr,
    HP: tl.constexpr, BLOCK: tl.constexpr, W_RESIDENT: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # u, out: (T, B, H); x0, hn: (B, H); wt = W_hh^T (H, H); res: (H,), (2, H) or R^T (H, H);
    # gamma: (H,); len: (B,) int64; a: (T, B, H) saved pre-activations (SAVE_A; else a dummy);
    # scr: (2, B, HP) CD scratch for the streamed variant.
    pid = tl.program_id(0)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, HP)
    row_ok = rows < B
    col_ok = cols < H
    mask = row_ok[:, None] & col_ok[None, :]
    tile = rows[:, None] * H + cols[None, :]           # within one (B, H) slab; B * H < 2^31
    slab = B * H

    gamma = tl.load(gamma_ptr + cols, mask=col_ok, other=0.0).to(CD)
    res0, res1 = _load_res_vectors(res_ptr, cols, col_ok, H, RES_KIND, CD)
    if HAS_LENGTHS:
        lens = tl.load(len_ptr + rows, mask=row_ok, other=0)
    else:
        lens = tl.zeros((BLOCK,), dtype=tl.int64)
    # padded rows and columns start at 0 and stay 0: every padded weight, u, gamma and res entry is 0
    x = tl.load(x0_ptr + tile, mask=mask, other=0.0).to(CD)

    if W_RESIDENT:
        wmask = col_ok[:, None] & col_ok[None, :]
        wsq = cols[:, None] * H + cols[None, :]
        wt = tl.load(wt_ptr + wsq, mask=wmask, other=0.0)
        if RES_KIND == 2:
            rt = tl.load(res_ptr + wsq, mask=wmask, other=0.0).to(CD)
        u_t = tl.load(u_ptr + tile, mask=mask, other=0.0).to(CD)
        for t in tl.range(0, T):
            t_off = tl.cast(t, tl.int64) * slab
            # prefetch u_{t+1}: its load latency hides behind this step instead of stalling the next
            nxt = _mask_if(row_ok, cols, H, t + 1 < T)
            u_next = tl.load(u_ptr + (t_off + slab) + tile, mask=nxt, other=0.0).to(CD)
            a = _dot_w(x, wt, u_t, PREC, EMULATE_BF16, SPLIT)
            if RES_KIND == 2:
                r = tl.dot(x, rt, input_precision=PREC_CD, out_dtype=CD)
            else:
                r = _residual(x, res0, res1, RES_KIND, BLOCK, HP)
            x, o = _fwd_update(x, r, a, gamma, t, lens, a_ptr, t_off, tile, mask, NONLIN, HAS_LENGTHS, SAVE_A,
                               EMULATE_BF16)
            tl.store(out_ptr + t_off + tile, _to_out(o, out_ptr.dtype.element_ty, EMULATE_BF16), mask=mask)
            u_t = u_next
    else:
        kk = tl.arange(0, BLOCK_K)
        srow = rows[:, None] * HP
        sslab = B * HP
        tl.store(scr_ptr + srow + cols[None, :], x, mask=row_ok[:, None])
        tl.debug_barrier()
        # num_stages=1: the next step's state loads must not be hoisted above this step's barrier.
        u_t = tl.load(u_ptr + tile, mask=mask, other=0.0).to(CD)
        for t in tl.range(0, T, num_stages=1):
            t_off = tl.cast(t, tl.int64) * slab
            cur = scr_ptr + (t % 2) * sslab
            nxt = _mask_if(row_ok, cols, H, t + 1 < T)
            u_next = tl.load(u_ptr + (t_off + slab) + tile, mask=nxt, other=0.0).to(CD)
            a = u_t
            if RES_KIND == 2:
                r = tl.zeros((BLOCK, HP), dtype=CD)
            for k0 in tl.range(0, HP, BLOCK_K):
                ks = k0 + kk
                # .cg: read the state other threads just wrote from L2, never from a stale L1 line
                xk = tl.load(cur + srow + ks[None, :], mask=row_ok[:, None], other=0.0, cache_modifier=".cg")
                kmask = (ks < H)[:, None] & col_ok[None, :]
                koff = ks[:, None] * H + cols[None, :]
                wk = tl.load(wt_ptr + koff, mask=kmask, other=0.0)
                a = _dot_w(xk, wk, a, PREC, EMULATE_BF16, SPLIT)
                if RES_KIND == 2:
                    rk = tl.load(res_ptr + koff, mask=kmask, other=0.0).to(CD)
                    r = tl.dot(xk, rk, acc=r, input_precision=PREC_CD, out_dtype=CD)
            if RES_KIND != 2:
                r = _residual(x, res0, res1, RES_KIND, BLOCK, HP)
            x, o = _fwd_update(x, r, a, gamma, t, lens, a_ptr, t_off, tile, mask, NONLIN, HAS_LENGTHS, SAVE_A,
                               EMULATE_BF16)
            u_t = u_next
            tl.store(out_ptr + t_off + tile, _to_out(o, out_ptr.dtype.element_ty, EMULATE_BF16), mask=mask)
            # double-buffered: nobody still reads buffer (t+1) % 2, it was last read before the
            # previous step's barrier
            tl.store(scr_ptr + ((t + 1) % 2) * sslab + srow + cols[None, :], x, mask=row_ok[:, None])
            tl.debug_barrier()
    tl.store(hn_ptr + tile, _to_out(x, hn_ptr.dtype.element_ty, EMULATE_BF16), mask=mask)


# --------------------------------------------------------------------------------------------------
# Backward: the delta chain in reverse; g_t, dL/dx_0 and (optionally) delta_t
# --------------------------------------------------------------------------------------------------

@triton.jit
def _bwd_step_head(e, a, g_ptr, delta_ptr, t_off, tile, mask, t, lens, gamma, delta,
                   NONLIN: tl.constexpr, HAS_LENGTHS: tl.constexpr, NEED_DELTA: tl.constexpr):
    # delta_t = e_t + (R^T delta_{t+1} + W^T g_{t+1}); g_t = gamma phi'(a_t) delta_t; store g_t, delta_t.
    # Past a row's length the step is the identity: delta passes through, g_t = 0 and e_t is ignored
    # (output is 0 there, so it carries no gradient).
    valid = (t < lens)[:, None]
    if HAS_LENGTHS:
        delta = delta + tl.where(valid, e, 0.0)
        g = tl.where(valid, gamma[None, :] * _phi_grad(a, NONLIN) * delta, 0.0)
    else:
        delta = delta + e
        g = gamma[None, :] * _phi_grad(a, NONLIN) * delta
    tl.store(g_ptr + t_off + tile, g, mask=mask)
    if NEED_DELTA:
        if HAS_LENGTHS:
            tl.store(delta_ptr + t_off + tile, tl.where(valid, delta, 0.0), mask=mask)
        else:
            tl.store(delta_ptr + t_off + tile, delta, mask=mask)
    return delta, g, valid


@triton.jit
def _load_last(go_ptr, a_ptr, slab, tile, mask, T, CD: tl.constexpr):
    off = tl.cast(T - 1, tl.int64) * slab
    e = tl.load(go_ptr + off + tile, mask=mask, other=0.0).to(CD)
    a = tl.load(a_ptr + off + tile, mask=mask, other=0.0).to(CD)
    return e, a


@triton.jit(do_not_specialize=["T", "B"])
def _wcrnn_bwd_kernel(
    go_ptr, ghn_ptr, a_ptr, w_ptr, res_ptr, gamma_ptr, len_ptr, g_ptr, dx0_ptr, delta_ptr, scr_ptr,
    T, B, H,
    RES_KIND: tl.constexpr, NONLIN: tl.constexpr, HAS_LENGTHS: tl.constexpr, NEED_DELTA: tl.constexpr,
    CD: tl.constexpr, PREC: tl.constexpr, PREC_CD: tl.constexpr, EMULATE_BF16: tl.constexpr,
    SPLIT: tl.constexpr, SCALE_G: tl.constexpr,
    HP: tl.constexpr, BLOCK: tl.constexpr, W_RESIDENT: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # go, a, g, delta: (T, B, H) CD; ghn, dx0: (B, H) CD; w = W_hh (H, H) (any float dtype);
    # res: (H,), (2, H) or R (H, H); gamma (H,); len (B,) int64; scr (2, B, HP) CD (streamed dense).
    pid = tl.program_id(0)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, HP)
    row_ok = rows < B
    col_ok = cols < H
    mask = row_ok[:, None] & col_ok[None, :]
    tile = rows[:, None] * H + cols[None, :]
    slab = B * H

    gamma = tl.load(gamma_ptr + cols, mask=col_ok, other=0.0).to(CD)
    res0, res1 = _load_res_vectors(res_ptr, cols, col_ok, H, RES_KIND, CD)
    if HAS_LENGTHS:
        lens = tl.load(len_ptr + rows, mask=row_ok, other=0)
    else:
        lens = tl.zeros((BLOCK,), dtype=tl.int64)
    delta = tl.load(ghn_ptr + tile, mask=mask, other=0.0).to(CD)

    if W_RESIDENT:
        wmask = col_ok[:, None] & col_ok[None, :]
        wsq = cols[:, None] * H + cols[None, :]
        w = tl.load(w_ptr + wsq, mask=wmask, other=0.0)
        if RES_KIND == 2:
            rm = tl.load(res_ptr + wsq, mask=wmask, other=0.0).to(CD)
        e_t, a_t = _load_last(go_ptr, a_ptr, slab, tile, mask, T, CD)
        for i in tl.range(0, T):
            t = T - 1 - i
            t_off = tl.cast(t, tl.int64) * slab
            # prefetch e_{t-1}, a_{t-1}: their load latency hides behind this step
            prv = _mask_if(row_ok, cols, H, t > 0)
            e_prev = tl.load(go_ptr + (t_off - slab) + tile, mask=prv, other=0.0).to(CD)
            a_prev = tl.load(a_ptr + (t_off - slab) + tile, mask=prv, other=0.0).to(CD)
            delta, g, valid = _bwd_step_head(e_t, a_t, g_ptr, delta_ptr, t_off, tile, mask, t, lens, gamma,
                                             delta, NONLIN, HAS_LENGTHS, NEED_DELTA)
            if SCALE_G:
                s = _row_pow2_scale(g)
                wg = _dot_w(g / s[:, None], w, tl.zeros((BLOCK, HP), dtype=CD), PREC, EMULATE_BF16, SPLIT)
                wg = wg * s[:, None]
            else:
                wg = _dot_w(g, w, tl.zeros((BLOCK, HP), dtype=CD), PREC, EMULATE_BF16, SPLIT)
            if RES_KIND == 2:
                rtd = tl.dot(delta, rm, input_precision=PREC_CD, out_dtype=CD)
            else:
                rtd = _residual_t(delta, res0, res1, RES_KIND, BLOCK, HP)
            if HAS_LENGTHS:
                delta = tl.where(valid, rtd + wg, delta)
            else:
                delta = rtd + wg
            e_t = e_prev
            a_t = a_prev
    else:
        kk = tl.arange(0, BLOCK_K)
        srow = rows[:, None] * HP
        sslab = B * HP
        # num_stages=1: the next step's loads of g / delta chunks must stay below this step's barrier.
        e_t, a_t = _load_last(go_ptr, a_ptr, slab, tile, mask, T, CD)
        for i in tl.range(0, T, num_stages=1):
            t = T - 1 - i
            t_off = tl.cast(t, tl.int64) * slab
            # prefetch e_{t-1}, a_{t-1}: their load latency hides behind this step
            prv = _mask_if(row_ok, cols, H, t > 0)
            e_prev = tl.load(go_ptr + (t_off - slab) + tile, mask=prv, other=0.0).to(CD)
            a_prev = tl.load(a_ptr + (t_off - slab) + tile, mask=prv, other=0.0).to(CD)
            delta, g, valid = _bwd_step_head(e_t, a_t, g_ptr, delta_ptr, t_off, tile, mask, t, lens, gamma,
                                             delta, NONLIN, HAS_LENGTHS, NEED_DELTA)
            if SCALE_G:
                s = _row_pow2_scale(g)
            # g_t (just stored) and, for a dense R, delta_t are re-read in K-chunks after one barrier;
            # the delta scratch is double-buffered like the forward's state scratch
            g_t = g_ptr + t_off
            if RES_KIND == 2:
                cur = scr_ptr + (t % 2) * sslab
                tl.store(cur + srow + cols[None, :], delta, mask=row_ok[:, None])
                rtd = tl.zeros((BLOCK, HP), dtype=CD)
            tl.debug_barrier()
            wg = tl.zeros((BLOCK, HP), dtype=CD)
            for k0 in tl.range(0, HP, BLOCK_K):
                ks = k0 + kk
                kmask = (ks < H)[:, None] & col_ok[None, :]
                koff = ks[:, None] * H + cols[None, :]
                gk = tl.load(g_t + rows[:, None] * H + ks[None, :], mask=row_ok[:, None] & (ks < H)[None, :],
                             other=0.0, cache_modifier=".cg")
                if SCALE_G:
                    gk = gk / s[:, None]
                wk = tl.load(w_ptr + koff, mask=kmask, other=0.0)
                wg = _dot_w(gk, wk, wg, PREC, EMULATE_BF16, SPLIT)
                if RES_KIND == 2:
                    dk = tl.load(cur + srow + ks[None, :], mask=row_ok[:, None], other=0.0, cache_modifier=".cg")
                    rk = tl.load(res_ptr + koff, mask=kmask, other=0.0).to(CD)
                    rtd = tl.dot(dk, rk, acc=rtd, input_precision=PREC_CD, out_dtype=CD)
            if SCALE_G:
                wg = wg * s[:, None]
            if RES_KIND != 2:
                rtd = _residual_t(delta, res0, res1, RES_KIND, BLOCK, HP)
            if HAS_LENGTHS:
                delta = tl.where(valid, rtd + wg, delta)
            else:
                delta = rtd + wg
            e_t = e_prev
            a_t = a_prev
    tl.store(dx0_ptr + tile, delta, mask=mask)


# Whether triton.jit produced interpreted kernels: decided by TRITON_INTERPRET when the kernels were defined.
INTERPRETER = type(_wcrnn_fwd_kernel).__name__ == "InterpretedFunction"


# --------------------------------------------------------------------------------------------------
# Config selection: autotuned on a GPU (keyed on H, residual kind, precisions, dtypes; never T)
# --------------------------------------------------------------------------------------------------

# The most shared memory one block may opt in to on sm_90 (H100 / H200): 227 KiB. Every config the
# launchers can choose must stay within it (tests/test_resources.py compiles them all and checks).
SMEM_LIMIT = 232448


class _Problem(NamedTuple):
    """What config selection depends on: one launch situation of one kernel."""
    backward: bool
    HP: int
    w_size: int      # element size of W_hh as the kernel reads it (2, 4 or 8)
    r_size: int      # element size of a dense R as the kernel reads it: the input dtype in the forward,
    #                  the compute dtype in the backward (ops.py passes it so)
    cd_size: int     # the state's (compute) dtype: 4 or 8
    dense: bool      # RES_KIND == 2
    prec: str        # PREC: the W_hh product
    prec_cd: str     # PREC_CD: the fp32 / fp64 products (a dense R)
    split: bool      # SPLIT: half weights multiply the state as hi + lo


def _problem(meta, w_itemsize, backward):
    cd_size = 8 if meta["CD"] == tl.float64 else 4
    return _Problem(backward, meta["HP"], w_itemsize, cd_size if backward else w_itemsize, cd_size,
                    meta["RES_KIND"] == 2, meta["PREC"], meta["PREC_CD"], bool(meta["SPLIT"]))


def _smem_bytes(resident, block_k, num_stages, p):
    """Upper bound on the shared memory of one program, as Triton lays these kernels out on sm_80 / sm_90
    (checked against the compiled kernels by tests/test_resources.py). BLOCK_B = 16 rows make every
    tl.dot an mma.sync whose operands pass through shared memory:

    * resident: W_hh (and a dense R) are loop-invariant dot operands that stay in shared memory for all
      steps. 3xTF32 keeps both halves, hi and lo, of each (twice the bytes); a dense R of a half model is
      converted to fp32 first. Per step, the state operands (16 x HP: hi + lo for 3xTF32 and for split
      half weights) and one layout conversion of a 16 x HP state tile come on top.
    * streamed: the K-chunks of W, R and the state are async copies into ``num_stages - 1`` buffers,
      live during the K loop only (the state tile's layout conversions happen outside it). 3xTF32 splits
      after the copy, in registers. A dense R of a half model whose product runs as exact fp32 FMA
      ("ieee") gets a converted fp32 copy of its chunk. Without pipelining (num_stages=1) the two
      products stage their operands in turn.
    """
    rows, HP = BLOCK_B, p.HP
    w_split = 2 if p.prec == "tf32x3" else 1                  # only for fp32 weights
    r_split = 2 if p.dense and p.prec_cd == "tf32x3" else 1
    convert = rows * HP * p.cd_size
    if resident:
        held = HP * HP * p.w_size * w_split + (HP * HP * p.cd_size * r_split if p.dense else 0)
        # state operands of the W product: the weights' dtype (hi + lo when split) or the fp32 / fp64 state
        a_w = p.w_size * (2 if p.split else 1) if p.w_size == 2 else p.cd_size * w_split
        # the R product reads its own copy unless it multiplies the same fp32 / fp64 tile as W
        same = not p.backward and p.w_size == p.cd_size
        a_r = p.cd_size * r_split if p.dense and not same else 0
        return held + rows * HP * (a_w + a_r) + convert
    K = block_k
    n_state = 2 if p.backward and p.dense else 1               # x (read by both products), or g and delta
    r_copy = K * HP * p.cd_size if p.dense and p.r_size != p.cd_size and p.prec_cd == "ieee" else 0
    # half weights: the state chunk rounded to them (hi, lo) may be staged as well
    a_copy = rows * K * p.w_size * (2 if p.split else 1) if p.w_size == 2 else 0
    if num_stages >= 2:
        per_stage = K * HP * p.w_size + (K * HP * p.r_size if p.dense else 0) + rows * K * p.cd_size * n_state
        loop = (num_stages - 1) * per_stage + r_copy + a_copy
    else:
        w_dot = (rows * K * p.cd_size + K * HP * p.w_size) * w_split + a_copy
        r_dot = (rows * K * p.cd_size + K * HP * p.r_size) * r_split + r_copy if p.dense else 0
        loop = max(w_dot, r_dot)
    return max(loop, convert)


def _configs():
    # Resident: Triton keeps the loop-invariant W operand in shared memory for the whole loop and
    # re-reads it into registers each step. Streamed: small K-chunks bound the register footprint (the
    # fp32 "ieee" FMA product needs a thread's whole K x N slice of W in registers) and run any H; W
    # stays hot in L1 / L2. num_stages=2 double-buffers the chunks with async copies; num_stages=1 does
    # not, which saves the registers of that pipeline (the spill-free or least-spilling choice from
    # H = 128 on, see _default_config): the autotuner weighs one against the other.
    cfgs = [triton.Config({"W_RESIDENT": True, "BLOCK_K": 16}, num_warps=nw, num_stages=2) for nw in (4, 8, 16)]
    cfgs += [triton.Config({"W_RESIDENT": False, "BLOCK_K": bk}, num_warps=nw, num_stages=2)
             for bk, nw in ((16, 4), (16, 8), (16, 16), (32, 4), (32, 8), (32, 16), (64, 8))]
    cfgs += [triton.Config({"W_RESIDENT": False, "BLOCK_K": 16}, num_warps=nw, num_stages=1) for nw in (8, 16, 32)]
    return cfgs


def _valid_config(cfg_kwargs, num_warps, num_stages, p):
    """Whether an autotune candidate is worth compiling and timing for the problem ``p``: the default
    config (measured on the H200); else it fits in shared memory (the _smem_bytes bound) and is not of a
    kind that spills kilobytes per thread on sm_90 (measured with ptxas for Triton 3.6 and 3.9, see
    tests/test_resources.py)."""
    resident, HP = cfg_kwargs["W_RESIDENT"], p.HP
    d = _default_config(p)
    if (resident, num_warps, num_stages) == (d["W_RESIDENT"], d["num_warps"], d["num_stages"]) and (
            resident or cfg_kwargs["BLOCK_K"] == d["BLOCK_K"]):
        return True
    if not resident and cfg_kwargs["BLOCK_K"] >= HP:
        return False            # one chunk would be the whole W: that is the resident variant
    if _smem_bytes(resident, cfg_kwargs["BLOCK_K"], num_stages, p) > SMEM_LIMIT:
        return False
    # an fp32 "ieee" product (FMA, no tensor cores) with W resident spills 1-7 KB per thread from H = 128
    if resident and _is_fma(p.prec, p.w_size) and HP >= 128:
        return False
    # Warps: 4 spill up to 8.6 KB per thread from H = 128 on; 16 and 32 only where a 16 x HP state tile
    # still gives each thread several elements; at least HP / 64 (8 warps spill up to 10 KB at H = 1024).
    if num_warps == 4 and HP > 64 or num_warps == 16 and HP < 128 or num_warps == 32 and HP < 256:
        return False
    if num_warps < HP // 64:
        return False
    # without pipelining only where registers are tight (several K-chunks per step)
    return num_stages >= 2 or HP >= 128


def _is_fma(prec, w_itemsize):
    # exact fp32 products run on the FMA units; fp64 ones on the tensor cores (DMMA), like tf32 and half
    return prec == "ieee" and w_itemsize == 4


def _prune(configs, named_args, **kwargs):
    backward = "w_ptr" in named_args
    w = named_args["w_ptr"] if backward else named_args["wt_ptr"]
    p = _problem(kwargs, w.element_size(), backward)
    kept = [c for c in configs if _valid_config(c.kwargs, c.num_warps, c.num_stages, p)]
    if kept:
        return kept
    d = _default_config(p)
    return [triton.Config({"W_RESIDENT": d["W_RESIDENT"], "BLOCK_K": d["BLOCK_K"]}, num_warps=d["num_warps"],
                          num_stages=d["num_stages"])]


def _default_config(p):
    """The config used where nothing is tuned (the interpreter, WCRNN_TRITON_AUTOTUNE=0; the autotuner always
    has it among its candidates). Chosen from what the H200 measured (benchmarks/results/h200-8527ece-run1
    against h200-fbeda44-run3, the same shapes, default residual):

    * H <= 32: W resident, 4 warps.
    * H = 64: W resident, 8 warps (with 4 the fp32 forward spills up to 3 KB per thread when H % 16 != 0,
      and run 3 measured 8 warps 12-16 % faster at S2); 4 for the backward with fp32 weights and a dense R
      (8 spill up to 16 B there).
    * H >= 128: W (and a dense R) resident where its tiles take at most 128 KB and the product runs on
      tensor cores; else streamed in the widest K-chunk (32, then 16) whose tiles take at most 64 KB,
      pipelined (num_stages=2), 8 warps (4 when streamed at H = 128). These spill (up to kilobytes per
      thread at H = 1024, see tests/test_resources.py), and are still faster than the spill-free or least
      spilling configs (streamed by 16, num_stages=1, 8-32 warps) that commit 1505ea8 made the default:
      run 3 measured those 1.2x slower at S1 / S3 float32 (H = 128, 256), 2.6x at G4 float32 (H = 512),
      3.4x at S3 bfloat16, 2.0x at G4 bfloat16. Losing the software pipeline costs more than the spills.
      Every choice is held to the shared-memory limit (_smem_bytes); the last resort, streamed by 16
      without pipelining, fits every H.
    """
    if p.HP <= 32:
        return {"W_RESIDENT": True, "BLOCK_K": 16, "num_warps": 4, "num_stages": 2}
    if p.HP == 64:
        num_warps = 4 if p.backward and p.dense and p.w_size == 4 else 8
        return {"W_RESIDENT": True, "BLOCK_K": 16, "num_warps": num_warps, "num_stages": 2}
    tile = p.w_size + (p.cd_size if p.dense else 0)      # bytes per W (+ R) element kept on chip
    if (not _is_fma(p.prec, p.w_size) and p.HP * p.HP * tile <= 128 * 1024
            and _smem_bytes(True, 16, 2, p) <= SMEM_LIMIT):
        return {"W_RESIDENT": True, "BLOCK_K": 16, "num_warps": 8, "num_stages": 2}
    for bk in (32, 16):
        if bk < p.HP and bk * p.HP * tile <= 64 * 1024 and _smem_bytes(False, bk, 2, p) <= SMEM_LIMIT:
            return {"W_RESIDENT": False, "BLOCK_K": bk, "num_warps": 8 if p.HP >= 256 else 4, "num_stages": 2}
    return {"W_RESIDENT": False, "BLOCK_K": 16, "num_warps": 8, "num_stages": 1}


def _launch_choices(kind, w_dtype, HP, res_kind, fp32_precision="highest"):
    """What a launcher may run for one situation: (the meta it passes, its default config, the autotune
    candidates _prune keeps), each config a dict with num_warps and num_stages. ``w_dtype`` is W_hh as
    the kernel gets it; ``fp32_precision`` is torch.get_float32_matmul_precision()."""
    cd = _compute_dtype(w_dtype)
    prec, prec_cd = _precisions(w_dtype, cd, fp32_precision)
    meta = dict(HP=HP, RES_KIND=res_kind, CD=_TL_DTYPE[cd], PREC=prec, PREC_CD=prec_cd,
                SPLIT=SPLIT_HALF_STATE and w_dtype in _HALF)
    w_arg = {"w_ptr" if kind == "bwd" else "wt_ptr": torch.empty(0, dtype=w_dtype)}
    kept = [dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
            for c in _prune(_configs(), w_arg, **meta)]
    return meta, _default_config(_problem(meta, w_dtype.itemsize, kind == "bwd")), kept


def _cpu_bench(kernel_call, quantiles=None):
    # The autotuner's benchmark under the interpreter (no CUDA events): one timed call.
    t0 = time.perf_counter()
    kernel_call()
    dt = (time.perf_counter() - t0) * 1e3
    return [dt, dt, dt] if quantiles else dt


def _autotune(kernel):
    # Keyed on H, the residual kind and both dot precisions (PREC_CD decides whether a half model's dense
    # R takes twice the shared memory, so a config tuned under one fp32 precision may not fit under
    # another); the autotuner adds every tensor argument's dtype to the key. Never T or B. Results are
    # cached on disk where this Triton supports it.
    kw = {}
    params = inspect.signature(triton.autotune).parameters
    if INTERPRETER and "do_bench" in params:
        kw["do_bench"] = _cpu_bench
    if not INTERPRETER and "cache_results" in params:
        kw["cache_results"] = True
    return triton.autotune(_configs(), key=["H", "RES_KIND", "PREC", "PREC_CD"],
                           prune_configs_by={"early_config_prune": _prune}, **kw)(kernel)


_wcrnn_fwd_tuned = _autotune(_wcrnn_fwd_kernel)
_wcrnn_bwd_tuned = _autotune(_wcrnn_bwd_kernel)

# On a GPU every new (H, kind, precision, dtypes) key is tuned once per process (each config compiled
# and timed); WCRNN_TRITON_AUTOTUNE=0 uses ``_default_config`` instead (quick test runs). Under the
# interpreter ``_default_config`` is used unless a test sets TUNE_UNDER_INTERPRETER.
AUTOTUNE = os.environ.get("WCRNN_TRITON_AUTOTUNE", "1") != "0"
TUNE_UNDER_INTERPRETER = False


# --------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------

_TL_DTYPE = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
             torch.float64: tl.float64}
_HALF = (torch.float16, torch.bfloat16)
# Split the fp32 state into hi + lo half operands for the W_hh product (see _dot_w);
# WCRNN_TRITON_SPLIT_STATE=0 rounds it once instead (cuDNN-like accuracy, one MMA per step).
SPLIT_HALF_STATE = os.environ.get("WCRNN_TRITON_SPLIT_STATE", "1") != "0"
_FP32_PRECISION = {"highest": "ieee", "high": "tf32x3", "medium": "tf32"}


def padded_hidden(H: int) -> int:
    return max(16, triton.next_power_of_2(H))


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _precisions(w_dtype, cd, fp32_precision=None):
    """(precision of the W_hh product, precision of the fp32 / fp64 products such as a dense R), for
    torch.get_float32_matmul_precision() or the setting ``fp32_precision``."""
    if cd == torch.float64:
        return "ieee", "ieee"
    fp32 = _FP32_PRECISION.get(fp32_precision or torch.get_float32_matmul_precision(), "ieee")
    return (fp32 if w_dtype == torch.float32 else "ieee"), fp32


def _check(name, t, shape, dtype=None, device=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor of shape {shape}, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected device {device}, got {t.device}")


def _check_common(T, B, H, w, res_kind, res, gamma, lengths, nonlin, device):
    if H > MAX_HIDDEN:
        raise ValueError(f"hidden size {H} > {MAX_HIDDEN}: too large for the Triton kernels; use "
                         f"backend='torch' (any H) or backend='cuda'")
    if B * padded_hidden(H) >= 2 ** 31:
        raise ValueError(f"batch {B} x hidden {H} is too large for one time slab (B * H must be < 2^31)")
    if w.dtype not in _TL_DTYPE:
        raise ValueError(f"w_hh: expected float16, bfloat16, float32 or float64, got {w.dtype}")
    _check("w_hh", w, (H, H), device=device)
    if res_kind not in (0, 1, 2):
        raise ValueError(f"res_kind: expected 0 (diagonal), 1 (rotation pairs) or 2 (dense), got {res_kind!r}")
    if res_kind == 1 and H % 2:
        raise ValueError(f"res: rotation pairs need an even hidden size, got H = {H}")
    _check("res", res, {0: (H,), 1: (2, H), 2: (H, H)}[res_kind], device=device)
    _check("gamma", gamma, (H,), device=device)
    if lengths is not None:
        _check("lengths", lengths, (B,), dtype=torch.int64, device=device)
    if nonlin not in (0, 1):
        raise ValueError(f"nonlin: expected 0 (tanh) or 1 (relu), got {nonlin!r}")
    if device.type != "cuda" and not INTERPRETER:
        raise ValueError(f"the Triton kernels run CUDA tensors (CPU tensors only under TRITON_INTERPRET=1), "
                         f"got tensors on {device}")


def _launch(kernel_tuned, kernel, grid, config, args, meta, w_itemsize, backward):
    if config is None and (TUNE_UNDER_INTERPRETER if INTERPRETER else AUTOTUNE):
        kernel_tuned[grid](*args, **meta)
        return
    cfg = dict(config) if config is not None else _default_config(_problem(meta, w_itemsize, backward))
    num_warps = cfg.pop("num_warps", 4)
    # num_stages as in every autotune candidate and in the shared-memory bound (_smem_bytes): Triton's
    # own default (3) pipelines the W chunks one buffer deeper, past an sm_90 block's shared memory
    num_stages = cfg.pop("num_stages", 2)
    kernel[grid](*args, **meta, **cfg, num_warps=num_warps, num_stages=num_stages)


def wcrnn_fwd(u, x0, w_hh, res_kind, res, gamma, lengths=None, nonlin=0, save_a=False, *, config=None):
    """The forward chain. u (T, B, H), x0 (B, H), w_hh (H, H), res canonical, gamma (H,),
    lengths (B,) int64 or None, nonlin 0 tanh / 1 relu; all one dtype, one device, contiguous.

    Returns (output (T, B, H) in u's dtype, zero past each length; h_n (B, H) = x_{L_b}; a: when
    ``save_a`` the pre-activations u_t + W_hh x_{t-1} (T, B, H) in u's dtype, zero past each length,
    else an empty tensor).
    ``config`` ({"W_RESIDENT": bool, "BLOCK_K": int, "num_warps": int}) bypasses the autotuner (tests).
    """
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise ValueError(f"u: expected a 3-D tensor (T, B, H), got {getattr(u, 'shape', type(u).__name__)}")
    T, B, H = u.shape
    dev, dt = u.device, u.dtype
    if dt not in _TL_DTYPE:
        raise ValueError(f"u: expected float16, bfloat16, float32 or float64, got {dt}")
    _check("u", u, (T, B, H))
    _check("x0", x0, (B, H), dtype=dt, device=dev)
    _check_common(T, B, H, w_hh, res_kind, res, gamma, lengths, nonlin, dev)
    cd = _compute_dtype(dt)
    out = torch.empty_like(u)
    hn = torch.empty_like(x0)
    a = torch.empty_like(u) if save_a else u.new_empty((0,))
    if B == 0 or T == 0:
        hn.copy_(x0)
        return out.zero_(), hn, a.zero_()
    HP = padded_hidden(H)
    wt = w_hh.t().contiguous()
    res_k = res.t().contiguous() if res_kind == 2 else res
    scratch = torch.empty((2, B, HP), dtype=cd, device=dev)
    prec, prec_cd = _precisions(w_hh.dtype, cd)
    meta = dict(RES_KIND=res_kind, NONLIN=nonlin, HAS_LENGTHS=lengths is not None, SAVE_A=save_a,
                CD=_TL_DTYPE[cd], PREC=prec, PREC_CD=prec_cd,
                EMULATE_BF16=INTERPRETER and w_hh.dtype == torch.bfloat16,
                SPLIT=SPLIT_HALF_STATE and w_hh.dtype in _HALF, HP=HP, BLOCK=BLOCK_B)
    args = (u, x0, wt, res_k, gamma, lengths if lengths is not None else x0, out, hn, a if save_a else out,
            scratch, T, B, H)
    grid = (triton.cdiv(B, BLOCK_B),)
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        _launch(_wcrnn_fwd_tuned, _wcrnn_fwd_kernel, grid, config, args, meta, w_hh.element_size(), False)
    return out, hn, a


def wcrnn_bwd(grad_out, grad_hn, a, w_hh, res_kind, res, gamma, lengths=None, nonlin=0, need_delta=True,
              *, config=None):
    """The backward delta chain. grad_out, a (T, B, H) and grad_hn (B, H) in the compute dtype
    (float32, or float64); w_hh (H, H) in any float dtype (fp16 / bf16 use the tensor cores); res, gamma
    canonical; lengths (B,) int64 or None.

    Returns (g (T, B, H) = dL/da_t, dx0 (B, H) = dL/dx_0, delta (T, B, H) = dL/dx_t or None), all in
    a's dtype, zero past each length. ``a`` is only read.
    """
    if not isinstance(a, torch.Tensor) or a.dim() != 3:
        raise ValueError(f"a: expected a 3-D tensor (T, B, H), got {getattr(a, 'shape', type(a).__name__)}")
    T, B, H = a.shape
    dev, cd = a.device, a.dtype
    if cd not in (torch.float32, torch.float64):
        raise ValueError(f"a: expected the compute dtype float32 or float64, got {cd}")
    _check("a", a, (T, B, H))
    _check("grad_out", grad_out, (T, B, H), dtype=cd, device=dev)
    _check("grad_hn", grad_hn, (B, H), dtype=cd, device=dev)
    _check_common(T, B, H, w_hh, res_kind, res, gamma, lengths, nonlin, dev)
    g = torch.empty_like(a)
    delta = torch.empty_like(a) if need_delta else None
    dx0 = torch.empty_like(grad_hn)
    if B == 0 or T == 0:
        dx0.copy_(grad_hn)
        return g.zero_(), dx0, (delta.zero_() if need_delta else None)
    HP = padded_hidden(H)
    scratch = torch.empty((2, B, HP) if res_kind == 2 else (1,), dtype=cd, device=dev)
    prec, prec_cd = _precisions(w_hh.dtype, cd)
    meta = dict(RES_KIND=res_kind, NONLIN=nonlin, HAS_LENGTHS=lengths is not None, NEED_DELTA=need_delta,
                CD=_TL_DTYPE[cd], PREC=prec, PREC_CD=prec_cd,
                EMULATE_BF16=INTERPRETER and w_hh.dtype == torch.bfloat16,
                SPLIT=SPLIT_HALF_STATE and w_hh.dtype in _HALF, SCALE_G=w_hh.dtype == torch.float16,
                HP=HP, BLOCK=BLOCK_B)
    args = (grad_out, grad_hn, a, w_hh, res, gamma, lengths if lengths is not None else grad_hn, g, dx0,
            delta if need_delta else g, scratch, T, B, H)
    grid = (triton.cdiv(B, BLOCK_B),)
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        _launch(_wcrnn_bwd_tuned, _wcrnn_bwd_kernel, grid, config, args, meta, w_hh.element_size(), True)
    return g, dx0, delta


# --------------------------------------------------------------------------------------------------
# Cross-compilation without a GPU: what a kernel variant costs on the target (used by the tests and by
# triton_resources; `python -m wcrnn_kernels.triton_kernels` prints the table of every launcher choice)
# --------------------------------------------------------------------------------------------------

_SIG_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


def _compile_source(kind, w_dtype, H, res_kind, config, prec="ieee", prec_cd=None, nonlin=0, lengths=True,
                    arch=90):
    """(ASTSource, GPUTarget, options) of one kernel variant, specialised as a launch specialises it."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    wdt = _SIG_DTYPE[w_dtype]
    cd = "fp64" if w_dtype == torch.float64 else "fp32"
    if kind == "fwd":
        fn, ptrs = _wcrnn_fwd_kernel, [wdt] * 5 + ["i64", wdt, wdt, wdt, cd]
    elif kind == "bwd":
        fn, ptrs = _wcrnn_bwd_kernel, [cd, cd, cd, wdt, cd, cd, "i64", cd, cd, cd, cd]
    else:
        raise ValueError(f"kind: expected 'fwd' or 'bwd', got {kind!r}")
    if prec_cd is None:
        prec_cd = prec
    const = dict(RES_KIND=res_kind, NONLIN=nonlin, HAS_LENGTHS=lengths, CD=tl.float64 if cd == "fp64" else tl.float32,
                 PREC=prec if wdt == "fp32" else "ieee", PREC_CD=prec_cd if cd == "fp32" else "ieee",
                 EMULATE_BF16=False, SPLIT=SPLIT_HALF_STATE and w_dtype in _HALF, HP=padded_hidden(H),
                 BLOCK=BLOCK_B, W_RESIDENT=config["W_RESIDENT"], BLOCK_K=config["BLOCK_K"])
    if kind == "fwd":
        const.update(SAVE_A=True)
    if kind == "bwd":
        const.update(NEED_DELTA=True, SCALE_G=w_dtype == torch.float16)
    sig = dict(zip(fn.arg_names, ["*" + p for p in ptrs] + ["i32"] * 3))
    sig.update({k: "constexpr" for k in const})
    # The specialisation a launch gets: every tensor 16-byte aligned (torch's allocations are), and H
    # marked divisible by 16 when it is (T and B are never specialised). The divisibility matters: at
    # H = 64 the fp32 resident forward needs 80 registers, at H = 63 ptxas spills it.
    aligned = list(range(len(ptrs))) + ([fn.arg_names.index("H")] if H % 16 == 0 else [])
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in const.items()},
                    attrs={(i,): [["tt.divisibility", 16]] for i in aligned})
    options = dict(num_warps=config.get("num_warps", 4), num_stages=config.get("num_stages", 2))
    return src, GPUTarget("cuda", arch, 32), options


def cross_compile(kind, w_dtype, H, res_kind, config, *, prec="ieee", prec_cd=None, nonlin=0, lengths=True,
                  arch=90):
    """Compile one variant of ``_wcrnn_{kind}_kernel`` for ``sm_{arch}`` through Triton's NVIDIA pipeline
    (no GPU needed). ``config``: {"W_RESIDENT", "BLOCK_K", "num_warps", "num_stages"}. ``prec``: the fp32
    precision ("ieee", "tf32x3", "tf32"), PREC for float32 weights and PREC_CD (a dense R) unless
    ``prec_cd`` says otherwise; float64 is always "ieee". The backward's state dtype is float32 (float64
    for float64 weights), as the op passes it. Returns the CompiledKernel."""
    src, target, options = _compile_source(kind, w_dtype, H, res_kind, config, prec, prec_cd, nonlin, lengths,
                                           arch)
    return triton.compile(src, target=target, options=options)


def resource_usage(compiled):
    """(registers per thread, stack bytes per thread, shared memory bytes) of a cross-compiled kernel,
    read from its cubin with the cuobjdump that ships with Triton (None where unavailable)."""
    import re
    import subprocess
    import tempfile
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    regs = stack = None
    if os.path.exists(tool):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "k.cubin")
            with open(path, "wb") as f:
                f.write(compiled.asm["cubin"])
            txt = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True).stdout
        m_regs, m_stack = re.search(r"REG:(\d+)", txt), re.search(r"STACK:(\d+)", txt)
        regs = int(m_regs.group(1)) if m_regs else None
        stack = int(m_stack.group(1)) if m_stack else None
    return regs, stack, compiled.metadata.shared


def _print_resource_table(argv=None):
    """The table of every config the launchers can choose, cross-compiled for sm_90 (see triton_resources)."""
    from wcrnn_kernels import triton_resources
    triton_resources.main(argv)


if __name__ == "__main__":
    _print_resource_table()
