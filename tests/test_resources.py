"""Every Triton config a launcher can choose fits an sm_90 (H100 / H200) block, checked without a GPU.

The launchers of ``wcrnn_kernels.triton_kernels`` run ``_default_config`` where nothing is tuned and one
of the autotune candidates that ``_prune`` keeps otherwise. ``triton_resources.launcher_variants()``
lists every distinct compile those choices produce (kernel, weight dtype, fp32 matmul precision,
residual form, padded H from 16 to 1024, H % 16 == 0 or not, config); this file cross-compiles them for
sm_90 through Triton's NVIDIA pipeline (its own ptxas and cuobjdump) and fails when

* a variant needs more shared memory than an sm_90 block may opt in to (232,448 B): a default would
  fail to launch, a candidate would only be skipped by the autotuner, but neither should be offered;
* the ``_smem_bytes`` bound that the pruning relies on is below what Triton actually allocates;
* a default config up to H = 64 spills (stack > 0). Above, the defaults are what the H200 measured
  fastest, and those spill (see ``_default_config``): their stack is printed, and fails only above a
  ceiling per bucket (STACK_CEILING: the worst measured with Triton 3.6 and 3.9, rounded up to a power
  of two).

The nonlinearity and the lengths are fixed at tanh with lengths, the most code. Checked on a sample
here and measured on every default up to H = 128 when this was written: no other choice needs more
shared memory; ptxas does settle on a lower register count and a few bytes of stack (8-40 B) for about
1 in 100 of the other specialisations, which this check does not see.

Cost: the defaults (about 600 variants) go through ptxas; the autotune candidates only as far as their
shared memory is known. Candidates whose ``_smem_bytes`` bound is under half the limit are not compiled
by default: the bound is checked against every compiled variant here (defaults and candidates), so
one of them would need twice the shared memory of its bound to exceed the limit.
``WCRNN_RESOURCE_CHECK_ALL=1`` compiles every candidate as well. Results are cached on disk
(``WCRNN_RESOURCE_CACHE``, default ~/.cache/wcrnn_kernels; empty: no cache), keyed by the Triton and
ptxas versions and the kernel sources.

The CUDA kernels' ptxas report is checked in test_nvcc_compile.py, which compiles them.

Where Triton's NVIDIA toolchain is unusable the tests skip with the reason, unless
WCRNN_REQUIRE_TRITON_RESOURCES=1 (CI sets it) turns that into a failure.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import time

import pytest

REQUIRE = os.environ.get("WCRNN_REQUIRE_TRITON_RESOURCES") == "1"
CHECK_ALL = os.environ.get("WCRNN_RESOURCE_CHECK_ALL") == "1"
SPILL_FREE_UP_TO = 64       # defaults up to this padded H must not spill
# (HP, float64) -> most stack per thread a default above SPILL_FREE_UP_TO may have: the worst measured with
# Triton 3.6 / 3.9 for the defaults the H200 measured fastest (see _default_config), rounded up to a power
# of two. Measured (B, fp16/bf16/fp32 and fp64): HP 128: 1008 / 1048 and 1088 / 1208; 256: 992 / 1040 and
# 880 / 1080; 512: 1704 / 1672 and 2832 / 2624; 1024: 7488 / 5264 and 7208 / 9568. They spill: the spill-free configs of 1505ea8 were 1.2-3.4x slower on the GPU. A regression past
# these (say, a default that loses its K-chunking) fails.
STACK_CEILING = {(128, False): 2048, (128, True): 2048, (256, False): 2048, (256, True): 2048,
                 (512, False): 2048, (512, True): 4096, (1024, False): 8192, (1024, True): 16384}


def _toolchain_problem():
    """Why this process cannot cross-compile the Triton kernels for sm_90, or None."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return "TRITON_INTERPRET=1: the kernels are interpreted in this process, not compiled"
    try:
        import torch
        from triton.backends.nvidia.compiler import get_ptxas
        from wcrnn_kernels import triton_resources as tr
        get_ptxas(90)
        regs, stack, smem = tr.resource_usage(tr.cross_compile(
            "fwd", torch.float32, 16, 0, {"W_RESIDENT": True, "BLOCK_K": 16, "num_warps": 4}))
    except Exception as e:  # noqa: BLE001 - any failure here means: no usable toolchain; say which
        return f"Triton cannot cross-compile for sm_90 here ({type(e).__name__}: {str(e)[:300]})"
    if regs is None or stack is None:
        return "Triton's cuobjdump is missing or printed no register / stack counts"
    return None


@pytest.fixture(scope="module")
def toolchain():
    why = _toolchain_problem()
    if why is not None:
        if REQUIRE:
            pytest.fail(f"{why}; WCRNN_REQUIRE_TRITON_RESOURCES=1 asks for the resource check")
        pytest.skip(why)
    from wcrnn_kernels import triton_kernels as tk, triton_resources as tr
    return tk, tr


@pytest.fixture(scope="module")
def report(toolchain):
    """(uses, usage, seconds): every launcher-choosable variant and what it costs on sm_90."""
    tk, tr = toolchain
    uses = tr.launcher_variants()
    chosen = [v for v in uses if uses[v].is_default or CHECK_ALL or 2 * v.smem_bound() > tk.SMEM_LIMIT]
    t0 = time.perf_counter()
    usage = tr.measure(chosen, full=lambda v: uses[v].is_default, cache_dir=tr.default_cache_dir())
    seconds = time.perf_counter() - t0
    n_def = sum(uses[v].is_default for v in usage)
    print(f"\n{len(uses)} launcher-choosable variants: {n_def} defaults compiled through ptxas, "
          f"{len(usage) - n_def} candidates to their shared memory, {len(uses) - len(usage)} candidates covered "
          f"by the bound; {seconds:.0f} s")
    return uses, usage, seconds


def test_every_variant_fits_sm90_shared_memory(report, toolchain):
    tk, tr = toolchain
    uses, usage, _ = report
    over = sorted((v for v in usage if usage[v].smem > tk.SMEM_LIMIT), key=str)
    role = {True: "default", False: "candidate"}
    assert not over, (f"{len(over)} launcher-choosable variants need more than {tk.SMEM_LIMIT} B of shared memory:\n"
                      + "\n".join(f"  {v}: {usage[v].smem} B ({role[uses[v].is_default]})" for v in over[:40]))
    # the variants not compiled: their bound is under half the limit (and the next test checks the bound)
    for v in uses:
        if v not in usage:
            assert 2 * v.smem_bound() <= tk.SMEM_LIMIT, v


def test_shared_memory_bound_holds(report):
    """_smem_bytes, which the pruning and the defaults rely on, is at least what Triton allocates."""
    _, usage, _ = report
    under = sorted((v for v in usage if usage[v].smem > v.smem_bound()), key=str)
    assert not under, "\n".join(f"{v}: allocates {usage[v].smem} B, bound {v.smem_bound()} B" for v in under[:40])
    slack = [v.smem_bound() - usage[v].smem for v in usage]
    print(f"\nbound - allocated: median {sorted(slack)[len(slack) // 2]} B, max {max(slack)} B")


def test_defaults_do_not_spill(report, toolchain):
    """No default up to H = 64 has a stack frame (spills); above, none exceeds STACK_CEILING."""
    tk, tr = toolchain
    uses, usage, _ = report
    defaults = [v for v in usage if uses[v].is_default]
    assert defaults and all(usage[v].stack is not None for v in defaults)
    worst = {}
    for v in defaults:
        if v.HP > SPILL_FREE_UP_TO:
            key = (v.HP, v.w_dtype == "fp64")
            worst[key] = max(worst.get(key, (0, "")), (usage[v].stack, str(v)))
    print(f"\ndefaults above H = {SPILL_FREE_UP_TO}, most stack per thread:\n" + "\n".join(
        f"  HP={hp} {'fp64' if f64 else 'fp16/bf16/fp32'}: {s} B ({v})"
        for (hp, f64), (s, v) in sorted(worst.items())))
    bad = sorted((v for v in defaults if v.HP <= SPILL_FREE_UP_TO and usage[v].stack), key=str)
    assert not bad, "defaults that spill:\n" + "\n".join(
        f"  {v}: {usage[v].regs} registers, {usage[v].stack} B stack" for v in bad)
    over = {k: w for k, w in worst.items() if w[0] > STACK_CEILING[k]}
    assert not over, f"defaults spill more than STACK_CEILING: {over}"


def test_positive_control_over_budget_is_caught(toolchain):
    """What the launcher used to run (Triton's default num_stages=3) for a float64 dense R at H = 512,
    streamed: 266,240 B of shared memory. The compile says so, and so does the bound that prunes it."""
    tk, tr = toolchain
    v = tr.Variant("fwd", "fp64", 512, True, 2, "ieee", "ieee", False, 16, 8, 3)
    smem, how = tr.shared_memory_only(v)
    assert smem == 266240, (smem, how)
    assert smem > tk.SMEM_LIMIT and v.smem_bound() >= smem
    assert not tk._valid_config({"W_RESIDENT": False, "BLOCK_K": 16}, 8, 3, v.problem())
    # and the same config with the launcher's num_stages=2 fits
    assert tr.shared_memory_only(dataclasses.replace(v, num_stages=2))[0] <= tk.SMEM_LIMIT


def test_fast_shared_memory_path_matches_full_compile(report, toolchain):
    """shared_memory_only (Triton's passes up to the allocation) reports what a full compile reports."""
    tk, tr = toolchain
    uses, usage, _ = report
    sample = sorted((v for v in usage if uses[v].is_default), key=lambda v: (-usage[v].smem, str(v)))[:3]
    sample += [tr.Variant("fwd", "fp16", 1024, True, 2, "ieee", "ieee", False, 32, 8, 2),   # R copied to fp32
               tr.Variant("bwd", "fp32", 128, False, 2, "tf32x3", "tf32x3", True, 16, 8, 2)]  # hi + lo resident
    for v in sample:
        full = tr.measure_one(v, True).smem
        assert tr.shared_memory_only(v)[0] == full, v


# Variant fields for the nonlinearity / lengths claim: a small backward whose shared memory does depend on
# them (Triton 3.6: 3072 B with tanh and lengths, 2048 B without), and two defaults.
HEAVIEST_SAMPLE = (("bwd", "fp32", 16, False, 0, "tf32", "ieee", True, 16, 4, 2),
                   ("bwd", "fp32", 128, False, 2, "tf32x3", "tf32x3", False, 16, 16, 1),
                   ("fwd", "bf16", 256, False, 2, "ieee", "tf32x3", False, 16, 8, 1))


@pytest.mark.parametrize("fields", HEAVIEST_SAMPLE, ids=lambda f: f"{f[0]}-{f[1]}-HP{f[2]}")
def test_tanh_with_lengths_needs_the_most_shared_memory(toolchain, fields):
    """The check compiles tanh with lengths only: relu, or no lengths, needs no more shared memory
    (checked here on a few variants). Registers and stack are printed: ptxas may pick another register
    target for them (see the module docstring)."""
    tk, tr = toolchain
    v = tr.Variant(*fields)
    heavy = tr.measure_one(v, True, nonlin=0, lengths=True)
    lines = [f"{v}: tanh+lengths {heavy.regs} regs / {heavy.stack} B stack / {heavy.smem} B smem"]
    for nonlin, lengths in ((1, True), (0, False), (1, False)):
        u = tr.measure_one(v, True, nonlin=nonlin, lengths=lengths)
        lines.append(f"  {('tanh', 'relu')[nonlin]}{'+lengths' if lengths else ''}: {u.regs} regs / {u.stack} B "
                     f"stack / {u.smem} B smem")
        assert u.smem <= heavy.smem, (str(v), nonlin, lengths, u, heavy)
    print("\n" + "\n".join(lines))
