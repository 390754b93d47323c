"""The Triton backend: kernels against the float64 reference, under the interpreter here and on a GPU there.

Three groups, chosen by the process this file runs in:

* Always: import never fails and availability / refusal messages say why and how to fix; the kernels
  cross-compile for Hopper (sm_90) through Triton's real NVIDIA pipeline without a GPU; and
  ``test_interpreter_suite`` re-runs this file's interpreter tests and test_chain.py's rows for the
  "triton-interpreter" target in a subprocess with ``TRITON_INTERPRET=1`` and fails unless every one of
  them passes (so plain ``pytest tests/`` exercises the kernels).
* Under ``TRITON_INTERPRET=1`` (defined only there), what is particular to the Triton kernels (the generic
  comparisons with the reference run from test_chain.py): forward, h_n and every gradient against the
  float64 reference for any canonical residual values (not only rotations), every residual form, tanh and
  relu, with and without lengths, B = 1, 3, 17, H = 16, 17, 48, 64, T = 1, 5, for both kernel variants (W
  resident, W streamed); float32 / float16 / bfloat16 error per variant, out-of-range float16 entries;
  the fp16 gradient scaling; the autotuner's key; tanh accuracy.
* Marked ``gpu``: the same checks on CUDA tensors plus the no-recompile check; they skip with the reason
  on a machine without CUDA.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import (assert_all_close, assert_low_precision_rule, check_saved_preactivations,
                     interpreter_incompatibility, max_rel_err, on, run_chain, setup_target)
from wcrnn_kernels import BackendUnavailableError, RES_DENSE, RES_DIAG, RES_ROT, wcrnn_chain
from wcrnn_kernels.backends import get_backend, resolve_backend

INTERP = os.environ.get("TRITON_INTERPRET", "0") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_CUDA = torch.cuda.is_available()
NEEDS_TRITON = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install triton)")
DIFF = ("u", "x0", "w_hh", "res", "gamma")
NAMES = ("output", "h_n") + tuple("d" + k for k in DIFF)
KINDS = {"diag": RES_DIAG, "rot": RES_ROT, "dense": RES_DENSE}


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------

def make_case(res_kind, T, B, H, *, lengths=False, dtype=torch.float64, device="cpu", seed=0):
    """Random inputs on the op boundary; any canonical residual values (the kernels do not assume
    rotations), residuals kept below 1 so float16 cannot overflow."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    res = {RES_DIAG: 0.6 + 0.35 * torch.rand(H, generator=g, dtype=torch.float64),
           RES_ROT: torch.stack((0.6 + 0.3 * torch.rand(H, generator=g, dtype=torch.float64),
                                 rnd(H, scale=0.2))),
           RES_DENSE: rnd(H, H, scale=0.7 / H ** 0.5)}[res_kind]
    case = dict(u=rnd(T, B, H), x0=rnd(B, H, scale=0.5), w_hh=rnd(H, H, scale=1.0 / H ** 0.5), res=res,
                gamma=0.2 + 0.6 * torch.rand(H, generator=g, dtype=torch.float64))
    case = {k: v.to(dtype=dtype, device=device) for k, v in case.items()}
    case["res_kind"] = res_kind
    case["lengths"] = None
    if lengths:
        L = torch.randint(0, T + 1, (B,), generator=g)
        L[0] = T            # one full row and, for B > 1, one empty row
        if B > 1:
            L[1] = 0
        case["lengths"] = L.to(device)
    return case


def check_lowp_against_reference(case64, dtype, nonlinearity="tanh"):
    """A low-precision run's error to the float64 result of the same (rounded) inputs, by helpers.LOWP_RULE
    (a small multiple of the reference loop's own error in that dtype, docs/design.md section 8), with
    out-of-range float16 entries compared as such."""
    lo = on(case64, dtype=dtype)
    exact = run_chain(on(lo, dtype=torch.float64), "reference", nonlinearity)
    ref_lo = run_chain(lo, "reference", nonlinearity)
    got = run_chain(lo, "triton", nonlinearity)
    # float16 / bfloat16: the reference loop keeps its state in that dtype, a loose yardstick; the torch
    # backend keeps fp32 state like the kernels, so hold them to a small multiple of its error as well
    torch_lo = run_chain(lo, "torch", nonlinearity) if dtype != torch.float32 else ref_lo
    half_max = torch.finfo(dtype).max / 2
    for n, e, r, t, a in zip(NAMES, exact, ref_lo, torch_lo, got):
        assert a.dtype == dtype, n
        # entries whose exact value is near or past the dtype's range (float16 gradients of a growing chain
        # reach 1e5 > 65504): the right answer there is +-inf or a large value of the same sign; compared
        # as such, and left out of the error measure. Everywhere else the result is finite.
        big = e.abs() > half_max
        assert torch.isfinite(a[~big]).all(), n
        assert (torch.sign(a[big].double()) == torch.sign(e[big])).all(), f"{n}: sign of out-of-range entries"
        assert (a[big].double().abs() > half_max / 2).all(), f"{n}: out-of-range entries came out small"
        if big.any():
            e, r, t, a = (x.masked_fill(big, 0) for x in (e, r, t, a))
        assert_low_precision_rule([a], [e], {"reference": [r], "torch": [t]}, dtype, names=[n], label="triton")
    return got


# --------------------------------------------------------------------------------------------------
# Always: import, availability, refusals, cross-compilation, and the interpreter suite in a subprocess
# --------------------------------------------------------------------------------------------------

def test_backend_registered_and_reports_a_reason():
    ok, why = get_backend("triton").availability()   # not available_backends(): that builds the cpp backend
    info = {"available": ok, "reason": why}
    assert isinstance(info["available"], bool) and info["reason"]
    if not HAS_TRITON:
        assert not info["available"] and "pip install triton" in info["reason"]
    elif INTERP:
        assert info["available"] and "TRITON_INTERPRET" in info["reason"]
    elif not HAS_CUDA:
        assert not info["available"] and "TRITON_INTERPRET" in info["reason"]


@pytest.mark.skipif(INTERP, reason="the interpreter runs CPU tensors by design")
def test_cpu_tensors_refused_with_the_fix():
    case = make_case(RES_DIAG, 2, 2, 16)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET|pip install triton"):
        wcrnn_chain(case["u"], case["x0"], case["w_hh"], RES_DIAG, case["res"], case["gamma"], backend="triton")
    # "auto" never picks triton for CPU tensors
    assert resolve_backend("auto", torch.device("cpu"), torch.float32, 16) != "triton"


def test_missing_triton_is_reported_not_raised():
    """With triton unimportable, importing the package and the backend works and says how to fix it."""
    code = ("import sys; sys.modules['triton'] = None\n"
            "import wcrnn_kernels, wcrnn_kernels.backends.triton_backend\n"
            "from wcrnn_kernels.backends import backend_names, get_backend\n"
            "assert 'triton' in backend_names()\n"
            "ok, why = get_backend('triton').availability()\n"
            "assert not ok and 'pip install triton' in why, why\n"
            "why = get_backend('triton').supports(__import__('torch').device('cuda'), "
            "__import__('torch').float32, 64)\n"
            "assert 'pip install triton' in why, why\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_child_env({}),
                       timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


def _child_env(extra):
    """Environment for a child Python that imports the same wcrnn_kernels as this process."""
    import wcrnn_kernels
    env = dict(os.environ)
    pkg_root = str(Path(wcrnn_kernels.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


@NEEDS_TRITON
@pytest.mark.skipif(INTERP, reason="the interpreter replaces the compiler in this process")
def test_kernels_cross_compile_for_hopper():
    """Both kernels, both variants, compile to a cubin for sm_90 through Triton's NVIDIA pipeline with no
    GPU present (catches layout / type errors the interpreter cannot see); T and B stay runtime values."""
    from wcrnn_kernels import triton_kernels as tk, triton_resources as tr

    for kern in (tk._wcrnn_fwd_kernel, tk._wcrnn_bwd_kernel):
        params = {p.name: p for p in kern.params}
        assert params["T"].do_not_specialize and params["B"].do_not_specialize

    variants = [("fwd", torch.bfloat16, 128, RES_ROT, True, 16, "ieee"),
                ("fwd", torch.float32, 256, RES_DENSE, False, 32, "ieee"),
                ("bwd", torch.float32, 64, RES_DIAG, True, 16, "tf32x3"),
                ("bwd", torch.float16, 512, RES_ROT, False, 32, "ieee"),
                # float64: tl.dot with a float64 accumulator (Triton 3.6 needs out_dtype spelled out)
                ("fwd", torch.float64, 64, RES_DENSE, False, 16, "ieee")]
    for kind, wdt, H, res_kind, resident, block_k, prec in variants:
        cfg = {"W_RESIDENT": resident, "BLOCK_K": block_k, "num_warps": 4}
        try:
            ck = tr.cross_compile(kind, wdt, H, res_kind, cfg, prec=prec)
        except (RuntimeError, FileNotFoundError) as e:
            msg = str(e).lower()
            if "ptxas" in msg and ("not found" in msg or "no such file" in msg):
                pytest.skip(f"Triton's ptxas is not usable here: {e}")
            raise
        assert len(ck.asm["cubin"]) > 0
        regs, stack, smem = tr.resource_usage(ck)
        assert smem <= 227 * 1024, (kind, wdt, H, smem)   # fits one H100 / H200 SM
        assert regs is None or regs <= 255


INTERP_BROKEN = interpreter_incompatibility() if HAS_TRITON else None


@NEEDS_TRITON
@pytest.mark.skipif(INTERP, reason="this is the interpreter suite itself")
@pytest.mark.skipif(INTERP_BROKEN is not None, reason=str(INTERP_BROKEN))
def test_interpreter_suite(tmp_path):
    """Runs, on CPU tensors in a child with TRITON_INTERPRET=1, the interpreter tests of this file and the
    generic suite's rows for the "triton-interpreter" target (test_chain.py; WCRNN_TEST_TARGETS makes it the
    only target there, and a required one), from a scratch directory, so that the child imports the same
    wcrnn_kernels as this process, not ./wcrnn_kernels. (In-process is not possible: TRITON_INTERPRET is
    read when triton.jit defines the kernels, and this process needs the compiler for the cross-compile
    and resource checks.)"""
    here = Path(__file__).resolve().parent
    cmd = [sys.executable, "-m", "pytest", str(here / "test_chain.py"), str(Path(__file__).resolve()), "-q",
           "-p", "no:cacheprovider", "-m", "not gpu", "-rs", "-k", "triton-interpreter or test_interp_"]
    env = _child_env({"TRITON_INTERPRET": "1", "WCRNN_TEST_TARGETS": "triton-interpreter"})
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=1200)
    out = r.stdout + r.stderr
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    print(summary)
    assert r.returncode == 0, out[-6000:]
    m = re.search(r"(\d+) passed", summary)
    assert m and int(m.group(1)) >= 250, f"too few interpreter tests ran: {summary}"
    assert "wcrnn targets covered: triton-interpreter" in out, out[-3000:]
    assert not re.search(r"\d+ (failed|skipped|error)", summary), summary


# --------------------------------------------------------------------------------------------------
# Interpreter suite (CPU tensors, TRITON_INTERPRET=1)
# --------------------------------------------------------------------------------------------------

# (T, B, H): T = 1 and 5; B = 1, 3, 17 (17 rows = two programs, the second mostly padding);
# H = 16, 17, 48, 64 (17 pads to 32). The rotational form needs even H: 17 becomes 18 there.
SIZES = ((1, 1, 17), (5, 3, 16), (5, 17, 48), (1, 3, 64), (5, 17, 17), (5, 1, 64))
COMBOS = [(k, nl, ln) for k in KINDS for nl in ("tanh", "relu") for ln in (False, True)]


def _even(kind, H):
    return H + 1 if KINDS[kind] == RES_ROT and H % 2 else H


if INTERP and HAS_TRITON:
    from wcrnn_kernels import triton_jit, triton_kernels as tk

    pytestmark = [pytest.mark.usefixtures("poison_empty"),
                  pytest.mark.skipif(INTERP_BROKEN is not None, reason=str(INTERP_BROKEN))]

    def _force_variant(monkeypatch, variant):
        """Force one kernel variant (the launchers' default config is what the interpreter runs)."""
        if variant == "streamed":
            monkeypatch.setattr(tk, "_default_config", lambda HP, *a: {"W_RESIDENT": False, "BLOCK_K": 16})

    @pytest.fixture(params=["resident", "streamed"])
    def variant(request, monkeypatch):
        _force_variant(monkeypatch, request.param)
        return request.param

    # the resident variant at every size; the streamed one (two or more K-chunks of 16, so H > 16) at
    # three that still cover T = 1 and 5, B = 3 and 17 and H = 17, 48, 64
    STREAMED_SIZES = ((5, 17, 48), (1, 3, 64), (5, 17, 17))
    F64_PARAMS = [pytest.param(k, nl, ln, T, B, H, v, id=f"{v}-{k}-{nl}-{'len' if ln else 'full'}-{T}x{B}x{H}")
                  for v in ("resident", "streamed") for (k, nl, ln) in COMBOS
                  for (T, B, H) in (SIZES if v == "resident" else STREAMED_SIZES)]

    @pytest.mark.parametrize("kind,nonlinearity,lengths,T,B,H,variant_name", F64_PARAMS)
    def test_interp_matches_reference_float64(kind, nonlinearity, lengths, T, B, H, variant_name, monkeypatch):
        _force_variant(monkeypatch, variant_name)
        H = _even(kind, H)
        case = make_case(KINDS[kind], T, B, H, lengths=lengths, seed=T * 100 + B * 10 + H)
        expected = run_chain(case, "reference", nonlinearity)
        actual = run_chain(case, "triton", nonlinearity)
        assert_all_close(actual, expected, rtol=1e-10, names=NAMES)

    @pytest.mark.parametrize("kind", KINDS)
    def test_interp_saved_preactivations(kind, variant):
        """save_a: the forward stores a_t (zero past each length) and changes nothing else; the backward
        only reads it."""
        check_saved_preactivations(get_backend("triton"),
                                   make_case(KINDS[kind], 5, 17, _even(kind, 33), lengths=True, seed=12))

    @pytest.mark.parametrize("kind", KINDS)
    def test_interp_float32_within_reference_error(kind, variant):
        check_lowp_against_reference(make_case(KINDS[kind], 12, 5, 48, lengths=True, seed=3), torch.float32)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
    @pytest.mark.parametrize("kind", KINDS)
    def test_interp_half_within_reference_error(kind, dtype, variant):
        """fp16 runs the interpreter's faithful fp16 tl.dot; bf16 runs the emulation of the tensor-core
        product (operands rounded to bf16, fp32 products), the interpreter's bf16 tl.dot being unfaithful."""
        check_lowp_against_reference(make_case(KINDS[kind], 12, 5, 48, lengths=True, seed=4), dtype)

    @pytest.mark.parametrize("kind", KINDS)
    def test_interp_fp16_weights_scale_small_gradients(kind, variant):
        """With fp16 W_hh the backward rounds g_t to fp16 for the tensor cores. g ~ 1e-9 lies far below
        fp16's normal range, so unscaled rounding loses it; the per-row power-of-two scaling keeps fp16's
        relative precision. The test checks both: the kernel is accurate, plain rounding is not."""
        T, B, H = 6, 3, 48
        case = make_case(KINDS[kind], T, B, H, seed=5)
        w16 = case["w_hh"].half()
        a = torch.randn(T, B, H, dtype=torch.float64)
        go = torch.randn(T, B, H, dtype=torch.float64) * 1e-9
        ghn = torch.randn(B, H, dtype=torch.float64) * 1e-9
        tb = get_backend("torch")
        exact = tb.chain_bwd(go, ghn, a.clone(), w16.double(), KINDS[kind], case["res"], case["gamma"], None, 0, True)
        f = torch.float32
        g, dx0, delta = tk.wcrnn_bwd(go.to(f), ghn.to(f), a.to(f), w16, KINDS[kind], case["res"].to(f),
                                     case["gamma"].to(f), None, 0, True)
        for n, got, e in (("g", g, exact[0]), ("dx0", dx0, exact[1]), ("delta", delta, exact[2])):
            assert max_rel_err(got, e) < 3e-3, (n, max_rel_err(got, e))
        # plain fp16 rounding of g (what an unscaled kernel would feed the tensor cores) fails this bound
        naive = exact[0][0].half().double() @ w16.double()
        assert max_rel_err(naive, exact[0][0] @ w16.double()) > 3e-2

    def test_interp_launcher_direct_need_delta_false():
        case = make_case(RES_ROT, 5, 17, 48, lengths=True, seed=8)
        a = torch.randn(5, 17, 48, dtype=torch.float64)
        go, ghn = torch.randn_like(a), torch.randn(17, 48, dtype=torch.float64)
        a_before = a.clone()
        args = (go, ghn, a, case["w_hh"], RES_ROT, case["res"], case["gamma"], case["lengths"], 1)
        g1, dx1, d1 = tk.wcrnn_bwd(*args, True)
        g2, dx2, d2 = tk.wcrnn_bwd(*args, False)
        assert d2 is None and d1 is not None
        assert torch.equal(g1, g2) and torch.equal(dx1, dx2)
        assert torch.equal(a, a_before)  # a is read, never written

    def test_interp_autotuner_key_excludes_T(monkeypatch):
        """Through the autotuner (timed on the CPU here): one tuning per (H, kind, precision, dtypes);
        new sequence lengths and batch sizes reuse it, and every config it may pick is exact."""
        monkeypatch.setattr(tk, "TUNE_UNDER_INTERPRETER", True)
        for tuned in (tk._wcrnn_fwd_tuned, tk._wcrnn_bwd_tuned):
            monkeypatch.setattr(tuned, "cache", {})
        for T, B in ((1, 3), (5, 3), (3, 17)):
            case = make_case(RES_DENSE, T, B, 48, seed=T + B)
            assert_all_close(run_chain(case, "triton", "tanh"), run_chain(case, "reference", "tanh"), rtol=1e-10,
                             names=NAMES)
        for tuned in (tk._wcrnn_fwd_tuned, tk._wcrnn_bwd_tuned):
            assert len(tuned.cache) == 1, list(tuned.cache)
            key = next(iter(tuned.cache))
            assert 48 in key and RES_DENSE in key

    def test_interp_prune_keeps_configs_that_fit():
        cfgs = tk._configs()

        def kept(wdt, HP, res_kind=RES_DIAG, prec="highest", kind="bwd"):
            return [(c.kwargs["W_RESIDENT"], c.kwargs["BLOCK_K"], c.num_warps)
                    for c in tk._prune(cfgs, {"w_ptr" if kind == "bwd" else "wt_ptr": torch.empty(0, dtype=wdt)},
                                       **tk._launch_choices(kind, wdt, HP, res_kind, prec)[0])]
        assert (True, 16, 16) in kept(torch.bfloat16, 256)             # 128 KiB of bf16 W fits on chip
        assert not any(r for r, _, _ in kept(torch.bfloat16, 256, RES_DENSE))   # + fp32 R does not
        assert not any(r for r, _, _ in kept(torch.float32, 256, prec="high"))  # 3xTF32: 512 KiB of W does not
        assert not any(r for r, _, _ in kept(torch.float32, 128))       # FMA product: resident W spills
        assert any(r for r, _, _ in kept(torch.float32, 128, prec="high"))
        # 3xTF32 keeps W and R as hi + lo: 256 KiB at H = 128, the default that needed 278,528 B before
        assert not any(r for r, _, _ in kept(torch.float32, 128, RES_DENSE, prec="high", kind="fwd"))
        assert all(nw >= 8 for _, _, nw in kept(torch.bfloat16, 128))   # 4 warps spill from H = 128
        assert all(r for r, _, _ in kept(torch.float32, 16, RES_DENSE))   # one K-chunk: resident only
        assert kept(torch.float64, 1024, RES_DENSE)                     # never empty (num_stages=1)

    def test_interp_defaults_and_candidates_fit_shared_memory():
        """For every launch situation the default and every kept candidate are within the shared-memory
        bound (tests/test_resources.py checks the bound and the defaults against compiled kernels), and
        the default is one of the candidates, so tuning can only improve on it."""
        for kind in ("fwd", "bwd"):
            for wdt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
                for prec in ("highest", "high", "medium"):
                    for res_kind in (RES_DIAG, RES_ROT, RES_DENSE):
                        for HP in (16, 32, 64, 128, 256, 512, 1024):
                            meta, default, cands = tk._launch_choices(kind, wdt, HP, res_kind, prec)
                            p = tk._problem(meta, wdt.itemsize, kind == "bwd")
                            for c in [default] + cands:
                                assert tk._smem_bytes(c["W_RESIDENT"], c["BLOCK_K"], c["num_stages"], p) \
                                    <= tk.SMEM_LIMIT, (kind, wdt, prec, res_kind, HP, c)
                            assert default in cands, (kind, wdt, prec, res_kind, HP, default, cands)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_interp_tanh_accuracy(dtype):
        """Near 0 (relative), around the 1/8 switch, and saturated (exactly +-1, no inf/inf NaN)."""
        import triton
        import triton.language as tl

        @triton.jit
        def tanh_kernel(x_ptr, y_ptr, N, BLOCK: tl.constexpr):
            o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            tl.store(y_ptr + o, triton_jit._tanh(tl.load(x_ptr + o, mask=o < N, other=0.0)), mask=o < N)

        x = torch.cat([torch.logspace(-30, 1.5, 4000, dtype=torch.float64), torch.linspace(0.1, 0.15, 2000,
                       dtype=torch.float64), torch.tensor([0.0, 0.125, 19.0, 40.0, 1e4], dtype=torch.float64)])
        x = torch.cat([x, -x]).to(dtype)
        y = torch.empty_like(x)
        tanh_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), BLOCK=1024)
        ref = torch.tanh(x.double())
        ulps = ((y.double() - ref).abs() / (ref.abs() * torch.finfo(dtype).eps).clamp_min(1e-300))
        ulps[ref == 0] = (y[ref == 0] != 0).double()
        assert ulps.max() <= (6.0 if dtype == torch.float32 else 4.0), float(ulps.max())
        assert (y[x.abs() >= 40] == torch.sign(x[x.abs() >= 40])).all()

    def test_interp_launcher_errors_name_the_argument():
        case = make_case(RES_DIAG, 3, 2, 16)
        u, x0, w, res, gamma = (case[k] for k in DIFF)
        with pytest.raises(ValueError, match="u: expected a contiguous"):
            tk.wcrnn_fwd(u.transpose(0, 1).contiguous().transpose(0, 1), x0, w, RES_DIAG, res, gamma)
        with pytest.raises(ValueError, match="lengths: expected dtype torch.int64"):
            tk.wcrnn_fwd(u, x0, w, RES_DIAG, res, gamma, torch.tensor([1, 2], dtype=torch.int32))
        with pytest.raises(ValueError, match="res: expected shape"):
            tk.wcrnn_fwd(u, x0, w, RES_ROT, res, gamma)
        with pytest.raises(ValueError, match="backend='torch'"):
            big = torch.zeros(1, 1, tk.MAX_HIDDEN + 2, dtype=torch.float64)
            tk.wcrnn_fwd(big, big[0], torch.zeros(tk.MAX_HIDDEN + 2, tk.MAX_HIDDEN + 2, dtype=torch.float64),
                         RES_DIAG, big[0, 0], big[0, 0])
        why = get_backend("triton").supports(torch.device("cpu"), torch.float32, tk.MAX_HIDDEN + 1)
        assert "backend='torch'" in why

    def test_interp_availability_and_auto_choice():
        ok, why = get_backend("triton").availability()
        assert ok and "interpreter" in why.lower()
        b = get_backend("triton")
        assert b.supports(torch.device("cpu"), torch.float64, 64) is None
        assert "TRITON_INTERPRET" in b.supports(torch.device("cuda"), torch.float32, 64)
        assert resolve_backend("auto", torch.device("cpu"), torch.float64, 64) != "triton"


# --------------------------------------------------------------------------------------------------
# GPU suite (CUDA tensors), on the "triton-gpu" target; no rows elsewhere. Nothing here has run yet: no GPU was
# available to the session that wrote it. Kept to about a hundred kernel compilations: the matrix runs
# fixed configs (WCRNN_TRITON_AUTOTUNE off), one test runs the autotuner.
# --------------------------------------------------------------------------------------------------

def on_gpu(f):
    """The GPU tests run on the "triton-gpu" target (helpers.TARGETS): their rows exist only where it can run,
    and the run's summary says why not elsewhere."""
    return pytest.mark.targets("triton-gpu")(f)


@pytest.fixture(autouse=True)
def _target_setup(request, monkeypatch):
    if "target" in request.fixturenames:
        setup_target(request.getfixturevalue("target"), monkeypatch)


GPU_SIZES = ((1, 1, 17), (7, 17, 48), (6, 5, 130), (3, 3, 512))
GPU_COMBOS = [(k, nl, ln) for k in KINDS for nl, ln in (("tanh", True), ("relu", False))]
GPU_CONFIGS = {"default": None, "resident": {"W_RESIDENT": True, "BLOCK_K": 16, "num_warps": 4},
               "streamed": {"W_RESIDENT": False, "BLOCK_K": 16, "num_warps": 4}}


@pytest.fixture
def fixed_config(monkeypatch):
    """No autotuning; optionally force one config for every launch."""
    from wcrnn_kernels import triton_kernels as tk
    monkeypatch.setattr(tk, "AUTOTUNE", False)

    def force(cfg):
        if cfg is not None:
            monkeypatch.setattr(tk, "_default_config", lambda *a: dict(cfg))
    return force


# forced variants run at H = 48 and 130 only (the default config covers the rest)
GPU_F64 = [pytest.param(k, nl, ln, T, B, H, c, id=f"{k}-{nl}-{ln}-{T}x{B}x{H}-{c}") for (k, nl, ln) in GPU_COMBOS
           for (T, B, H) in GPU_SIZES for c in GPU_CONFIGS if c == "default" or H in (48, 130)]


@on_gpu
@pytest.mark.parametrize("kind,nonlinearity,lengths,T,B,H,config", GPU_F64)
def test_gpu_matches_reference_float64(target, kind, nonlinearity, lengths, T, B, H, config, fixed_config):
    from wcrnn_kernels import triton_kernels as tk
    H = _even(kind, H)
    cfg = GPU_CONFIGS[config]
    if cfg is not None:
        p = tk._problem(tk._launch_choices("bwd", torch.float64, tk.padded_hidden(H), KINDS[kind])[0], 8, True)
        if tk._smem_bytes(cfg["W_RESIDENT"], cfg["BLOCK_K"], 2, p) > tk.SMEM_LIMIT:
            pytest.skip(f"{config} float64 at H = {H} exceeds the on-chip budget (the autotuner prunes it)")
    fixed_config(cfg)
    case = make_case(KINDS[kind], T, B, H, lengths=lengths, device="cuda", seed=T + B + H)
    assert_all_close(run_chain(case, "triton", nonlinearity), run_chain(case, "reference", nonlinearity),
                     rtol=1e-10, names=NAMES)


@on_gpu
@pytest.mark.parametrize("dtype,precision", [(torch.float32, "highest"), (torch.float32, "high"),
                                             (torch.bfloat16, "highest"), (torch.float16, "highest")],
                         ids=["fp32", "fp32-3xtf32", "bf16", "fp16"])
@pytest.mark.parametrize("H", [128, 512])
@pytest.mark.parametrize("kind", KINDS)
def test_gpu_low_precision_within_reference_error(target, kind, H, dtype, precision, fixed_config):
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        check_lowp_against_reference(make_case(KINDS[kind], 64, 9, H, lengths=True, device="cuda", seed=H), dtype)
    finally:
        torch.set_float32_matmul_precision(old)


def _compiled_variants(kernel):
    caches = getattr(kernel, "device_caches", None)
    if caches is None:
        pytest.skip("this Triton keeps no device_caches on JITFunction; cannot count compiled variants")
    return sum(len(v[0]) for v in caches.values())


@on_gpu
def test_gpu_autotuned_new_sequence_length_or_batch_does_not_recompile(target, monkeypatch):
    """Through the autotuner: exact float64 results, and after the first call neither a new T nor a new
    B compiles or tunes anything."""
    from wcrnn_kernels import triton_kernels as tk
    monkeypatch.setattr(tk, "AUTOTUNE", True)  # (setup_target turns it off for the triton-gpu rows)
    counts = []
    for T, B in ((5, 3), (7, 3), (64, 3), (100, 17), (1, 40)):
        case = make_case(RES_ROT, T, B, 64, device="cuda", seed=T)
        assert_all_close(run_chain(case, "triton", "tanh"), run_chain(case, "reference", "tanh"), rtol=1e-10,
                         names=NAMES)
        counts.append((_compiled_variants(tk._wcrnn_fwd_kernel), _compiled_variants(tk._wcrnn_bwd_kernel),
                       len(tk._wcrnn_fwd_tuned.cache), len(tk._wcrnn_bwd_tuned.cache)))
    assert all(c == counts[0] for c in counts), counts


@on_gpu
def test_gpu_auto_order_and_triton_agrees_with_torch(target, fixed_config):
    # "auto" prefers the cuda backend (measured faster on an H200); triton where cuda is not available
    from wcrnn_kernels.backends import available_backends
    expect = "cuda" if available_backends()["cuda"]["available"] else "triton"
    assert resolve_backend("auto", torch.device("cuda"), torch.bfloat16, 256) == expect
    case = on(make_case(RES_DIAG, 50, 8, 256, device="cuda", seed=2), dtype=torch.bfloat16)
    got = run_chain(case, "triton", "tanh")
    ref = run_chain(case, "torch", "tanh")
    for n, a, r in zip(NAMES, got, ref):
        assert max_rel_err(a.float(), r.float()) < 3e-2, n
