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

This file holds the ``@triton.jit`` code only, in reading order: helpers (tanh, phi, phi', pair swap,
residuals, the split product), the forward kernel, the backward kernel. Config selection and the
launchers ``wcrnn_fwd`` / ``wcrnn_bwd`` are in ``triton_kernels.py``; what each config costs on sm_90
(cross-compiled without a GPU) in ``triton_resources.py``.
"""
from __future__ import annotations

import triton
import triton.language as tl


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


@triton.jit
def _program_setup(state_ptr, gamma_ptr, res_ptr, len_ptr, B, H, RES_KIND: tl.constexpr,
                   HAS_LENGTHS: tl.constexpr, CD: tl.constexpr, BLOCK: tl.constexpr, HP: tl.constexpr):
    # This program's BLOCK rows and the HP padded columns (offsets within one (B, H) slab: B * H < 2^31),
    # the slab's size (one step's offset), gamma, the residual's vectors, the rows' lengths (zeros, unused,
    # without lengths) and the chain's starting (B, H) state of these rows in CD (forward x_0, backward
    # grad_hn). Padded rows and columns start at 0 and stay 0: every padded weight, input, gamma and res
    # entry is 0.
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, HP)
    row_ok = rows < B
    col_ok = cols < H
    mask = row_ok[:, None] & col_ok[None, :]
    tile = rows[:, None] * H + cols[None, :]
    gamma = tl.load(gamma_ptr + cols, mask=col_ok, other=0.0).to(CD)
    res0, res1 = _load_res_vectors(res_ptr, cols, col_ok, H, RES_KIND, CD)
    if HAS_LENGTHS:
        lens = tl.load(len_ptr + rows, mask=row_ok, other=0)
    else:
        lens = tl.zeros((BLOCK,), dtype=tl.int64)
    state = tl.load(state_ptr + tile, mask=mask, other=0.0).to(CD)
    return rows, cols, row_ok, col_ok, mask, tile, B * H, gamma, res0, res1, lens, state


@triton.jit
def _load_square(w_ptr, res_ptr, cols, col_ok, H, RES_KIND: tl.constexpr, CD: tl.constexpr):
    # the whole (H, H) weight (in its dtype) and, for a dense residual, the whole R in CD (else w again)
    wmask = col_ok[:, None] & col_ok[None, :]
    wsq = cols[:, None] * H + cols[None, :]
    w = tl.load(w_ptr + wsq, mask=wmask, other=0.0)
    if RES_KIND == 2:
        rm = tl.load(res_ptr + wsq, mask=wmask, other=0.0).to(CD)
    else:
        rm = w
    return w, rm


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
    rows, cols, row_ok, col_ok, mask, tile, slab, gamma, res0, res1, lens, x = _program_setup(
        x0_ptr, gamma_ptr, res_ptr, len_ptr, B, H, RES_KIND, HAS_LENGTHS, CD, BLOCK, HP)

    if W_RESIDENT:
        wt, rt = _load_square(wt_ptr, res_ptr, cols, col_ok, H, RES_KIND, CD)
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


@triton.jit
def _load_prev(go_ptr, a_ptr, t_off, slab, tile, row_ok, cols, H, t, CD: tl.constexpr):
    # prefetch e_{t-1}, a_{t-1} (nothing at t = 0): their load latency hides behind step t
    prv = _mask_if(row_ok, cols, H, t > 0)
    e_prev = tl.load(go_ptr + (t_off - slab) + tile, mask=prv, other=0.0).to(CD)
    a_prev = tl.load(a_ptr + (t_off - slab) + tile, mask=prv, other=0.0).to(CD)
    return e_prev, a_prev


@triton.jit
def _wt_g_resident(g, w, CD: tl.constexpr, PREC: tl.constexpr, EMULATE_BF16: tl.constexpr, SPLIT: tl.constexpr,
                   SCALE_G: tl.constexpr, BLOCK: tl.constexpr, HP: tl.constexpr):
    # W_hh^T g_t with the whole W_hh resident (w holds W_hh: g @ w). SCALE_G (a float16 W_hh): each row of g
    # is divided by a power of two before the product and the product multiplied back (both exact), so that
    # g's float16 operands stay within float16's range.
    zero = tl.zeros((BLOCK, HP), dtype=CD)
    if SCALE_G:
        s = _row_pow2_scale(g)
        wg = _dot_w(g / s[:, None], w, zero, PREC, EMULATE_BF16, SPLIT) * s[:, None]
    else:
        wg = _dot_w(g, w, zero, PREC, EMULATE_BF16, SPLIT)
    return wg


@triton.jit
def _bwd_step_tail(delta, rtd, wg, valid, HAS_LENGTHS: tl.constexpr):
    # delta_{t-1} = R^T delta_t + W_hh^T g_t; past a row's length delta passes through unchanged
    if HAS_LENGTHS:
        delta = tl.where(valid, rtd + wg, delta)
    else:
        delta = rtd + wg
    return delta


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
    rows, cols, row_ok, col_ok, mask, tile, slab, gamma, res0, res1, lens, delta = _program_setup(
        ghn_ptr, gamma_ptr, res_ptr, len_ptr, B, H, RES_KIND, HAS_LENGTHS, CD, BLOCK, HP)

    if W_RESIDENT:
        w, rm = _load_square(w_ptr, res_ptr, cols, col_ok, H, RES_KIND, CD)
        e_t, a_t = _load_last(go_ptr, a_ptr, slab, tile, mask, T, CD)
        for i in tl.range(0, T):
            t = T - 1 - i
            t_off = tl.cast(t, tl.int64) * slab
            e_prev, a_prev = _load_prev(go_ptr, a_ptr, t_off, slab, tile, row_ok, cols, H, t, CD)
            delta, g, valid = _bwd_step_head(e_t, a_t, g_ptr, delta_ptr, t_off, tile, mask, t, lens, gamma,
                                             delta, NONLIN, HAS_LENGTHS, NEED_DELTA)
            wg = _wt_g_resident(g, w, CD, PREC, EMULATE_BF16, SPLIT, SCALE_G, BLOCK, HP)
            if RES_KIND == 2:
                rtd = tl.dot(delta, rm, input_precision=PREC_CD, out_dtype=CD)
            else:
                rtd = _residual_t(delta, res0, res1, RES_KIND, BLOCK, HP)
            delta = _bwd_step_tail(delta, rtd, wg, valid, HAS_LENGTHS)
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
            e_prev, a_prev = _load_prev(go_ptr, a_ptr, t_off, slab, tile, row_ok, cols, H, t, CD)
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
            delta = _bwd_step_tail(delta, rtd, wg, valid, HAS_LENGTHS)
            e_t = e_prev
            a_t = a_prev
    tl.store(dx0_ptr + tile, delta, mask=mask)
