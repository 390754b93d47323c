"""Launchers and config selection for the persistent Triton kernels of ``triton_jit.py``.

    wcrnn_fwd(u, x0, w_hh, res_kind, res, gamma, lengths, nonlin, save_a)      -> (output, h_n, a)
    wcrnn_bwd(grad_out, grad_hn, a, w_hh, res_kind, res, gamma, lengths, nonlin, need_delta) -> (g, dx0, delta)

(docs/design.md section 5 for the equations, section 9 for the contract.) Reading order: the config
selection (the shared-memory bound every config is held to, the autotune candidates and their pruning, the
default config measured on the H200), then the launchers. The kernels themselves, and the numerics, are
described in ``triton_jit.py``; ``python -m wcrnn_kernels.triton_resources`` prints what every config a
launcher can choose costs on sm_90.
"""
from __future__ import annotations

import contextlib
import inspect
import time
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import _env
from .contract import check_kernel_bwd, check_kernel_fwd
from .reference import compute_dtype as _compute_dtype
from .triton_jit import _wcrnn_bwd_kernel, _wcrnn_fwd_kernel

BLOCK_B = 16          # batch rows per program: the smallest tl.dot M, hence the most programs in flight
MAX_HIDDEN = 1024     # the state, its accumulator and one W tile must fit in registers

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
AUTOTUNE = _env.flag("WCRNN_TRITON_AUTOTUNE", True)
TUNE_UNDER_INTERPRETER = False


# --------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------

_TL_DTYPE = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
             torch.float64: tl.float64}
_HALF = (torch.float16, torch.bfloat16)
# Split the fp32 state into hi + lo half operands for the W_hh product (see _dot_w);
# WCRNN_TRITON_SPLIT_STATE=0 rounds it once instead (cuDNN-like accuracy, one MMA per step).
SPLIT_HALF_STATE = _env.flag("WCRNN_TRITON_SPLIT_STATE", True)
_FP32_PRECISION = {"highest": "ieee", "high": "tf32x3", "medium": "tf32"}


def padded_hidden(H: int) -> int:
    return max(16, triton.next_power_of_2(H))


def _precisions(w_dtype, cd, fp32_precision=None):
    """(precision of the W_hh product, precision of the fp32 / fp64 products such as a dense R), for
    torch.get_float32_matmul_precision() or the setting ``fp32_precision``."""
    if cd == torch.float64:
        return "ieee", "ieee"
    fp32 = _FP32_PRECISION.get(fp32_precision or torch.get_float32_matmul_precision(), "ieee")
    return (fp32 if w_dtype == torch.float32 else "ieee"), fp32


def _check_backend_limits(B, H, seq_name, dtype, w_dtype, device):
    """What only the Triton kernels add to the op contract (contract.py): size, dtypes, device."""
    for name, dt in ((seq_name, dtype), ("w_hh", w_dtype)):
        if dt not in _TL_DTYPE:
            raise ValueError(f"{name}: expected float16, bfloat16, float32 or float64, got {dt}")
    if H > MAX_HIDDEN:
        raise ValueError(f"hidden size {H} > {MAX_HIDDEN}: too large for the Triton kernels; use "
                         f"backend='torch' (any H) or backend='cuda'")
    if B * padded_hidden(H) >= 2 ** 31:
        raise ValueError(f"batch {B} x hidden {H} is too large for one time slab (B * H must be < 2^31)")
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


def _per_unit(res, gamma, H):
    """The kernels read res and gamma as (H,) rows: a 0-d one (one value for every unit) expanded."""
    return tuple(t.expand(H).contiguous() if t.dim() == 0 else t for t in (res, gamma))


def wcrnn_fwd(u, x0, w_hh, res_kind, res, gamma, lengths=None, nonlin=0, save_a=False, *, config=None):
    """The forward chain. u (T, B, H), x0 (B, H), w_hh (H, H), res canonical, gamma (H,) (res for res_kind 0
    and gamma also 0-d: one value for every unit),
    lengths (B,) int64 or None, nonlin 0 tanh / 1 relu; all one dtype, one device, contiguous.

    Returns (output (T, B, H) in u's dtype, zero past each length; h_n (B, H) = x_{L_b}; a: when
    ``save_a`` the pre-activations u_t + W_hh x_{t-1} (T, B, H) in u's dtype, zero past each length,
    else an empty tensor).
    ``config`` ({"W_RESIDENT": bool, "BLOCK_K": int, "num_warps": int}) bypasses the autotuner (tests).
    """
    res_kind, nonlin = check_kernel_fwd(u, x0, w_hh, res_kind, res, gamma, lengths, nonlin)
    T, B, H = u.shape
    res, gamma = _per_unit(res, gamma, H)
    dev, dt = u.device, u.dtype
    _check_backend_limits(B, H, "u", dt, w_hh.dtype, dev)
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
    res_kind, nonlin = check_kernel_bwd(grad_out, grad_hn, a, w_hh, res_kind, res, gamma, lengths, nonlin)
    T, B, H = a.shape
    res, gamma = _per_unit(res, gamma, H)
    dev, cd = a.device, a.dtype
    if cd not in (torch.float32, torch.float64):
        raise ValueError(f"a: expected the compute dtype float32 or float64, got {cd}")
    _check_backend_limits(B, H, "a", cd, w_hh.dtype, dev)
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
