"""The fused C++ CPU backend ("cpp") against its specification, per instruction-set variant.

What the generic suite (test_chain.py) does not cover: every compiled variant of the kernels (AVX-512, AVX2,
the baseline; forced with WCRNN_CPU_ISA), sizes that hit every register-tile and vector-tail path, the
vectorised tanh's accuracy, bitwise determinism across thread counts, non-contiguous and batch_first
inputs, the wcrnn_C ops' own argument checks, fake-tensor / torch.compile tracing of those ops, and the
loader's refusals (no build allowed, no compiler, a library built for another torch).

Every comparison is against autograd through the float64 reference loop with one shared upstream gradient
for output and h_n; float64 tolerance 1e-10 relative. Outputs of the C++ ops start as NaN
(WCRNN_POISON_OUTPUTS=1), so an element a kernel forgets to write fails the comparison.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from helpers import DIFF, KINDS, NAMES, assert_all_close, check_low_precision, make_case, run_chain
from wcrnn_kernels import FusedWCRNN, wcrnn_chain
from wcrnn_kernels.backends import BackendUnavailableError, available_backends, resolve_backend

_CPP = available_backends().get("cpp", {"available": False, "reason": "no wcrnn_kernels.backends.cpp module"})
if not _CPP["available"]:
    pytest.skip(f"backend 'cpp' unavailable here: {_CPP['reason']}", allow_module_level=True)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cpu_info() -> dict:
    return dict(kv.split("=", 1) for kv in torch.ops.wcrnn_C.cpu_info().split())


_ISA_ORDER = ("default", "avx2", "avx512")
_BEST = _cpu_info()["best_isa"]
ISAS = [pytest.param(isa, id=isa, marks=() if _ISA_ORDER.index(isa) <= _ISA_ORDER.index(_BEST) else
                     pytest.mark.skip(reason=f"this CPU runs at most the {_BEST!r} kernels"))
        for isa in _ISA_ORDER]


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    monkeypatch.setenv("WCRNN_POISON_OUTPUTS", "1")


@pytest.fixture
def isa(request, monkeypatch):
    monkeypatch.setenv("WCRNN_CPU_ISA", request.param)
    assert _cpu_info()["isa"] == request.param
    return request.param


# (T, B, H). The kernels pad H to the vector length (2-16 lanes) and tile rows by 4-8 and H by 2-3 vectors:
# H = 1, 3 (less than a vector), 17 (one lane past), 48 (exact vectors), 130 (several panels and a
# narrower last panel); B = 1, 3, 9 and 17 (a full row tile plus a remainder, split over threads); T = 1.
SIZES = ((1, 1, 1), (1, 3, 17), (5, 3, 3), (4, 9, 17), (3, 17, 48), (3, 9, 130), (2, 1, 130))


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference_float64(isa, kind, nonlinearity, lengths):
    for T, B, H in SIZES:
        case = make_case(kind, T, B, H, lengths=lengths, seed=T * 1000 + B * 10 + H)
        expected = run_chain(case, "reference", nonlinearity)
        actual = run_chain(case, "cpp", nonlinearity)
        assert_all_close(actual, expected, rtol=1e-10, names=[f"{n} (T,B,H)={T, B, H}" for n in NAMES])


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("kind,nonlinearity", [("none", "tanh"), ("scalar", "relu"), ("diagonal", "tanh"),
                                               ("rotational", "relu"), ("dense", "tanh"), ("dense", "relu")])
def test_gradcheck(isa, kind, nonlinearity):
    """gradcheck in float64 with lengths (fast mode; test_chain.py runs the full one on the default variant)."""
    case = make_case(kind, 3, 3, 5, lengths=True, seed=5)
    case["lengths"] = torch.tensor([3, 1, 2])
    if nonlinearity == "relu":  # keep pre-activations off relu's kink, where finite differences lie
        case["u"] = case["u"] + torch.sign(case["u"]) * 0.5
    tensors = [case[k].detach().clone().requires_grad_(True) for k in DIFF]

    def f(u, x0, w_hh, res, gamma):
        return wcrnn_chain(u, x0, w_hh, case["res_kind"], res, gamma, case["lengths"], nonlinearity, "cpp")

    assert torch.autograd.gradcheck(f, tensors, eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=True)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("kind", KINDS)
def test_float32_error_within_reference_float32_error(isa, kind):
    """float32 kernels are at most a small multiple worse than the reference's own float32 error."""
    check_low_precision(make_case(kind, 40, 5, 37, lengths=True, seed=3), "cpp", torch.float32)


def _phi_through_op(a, nonlin):
    """One step from x0 = 0 with W = 0, R = 0, gamma = 1 (H = 1, one row per value): output = phi(a), and
    the backward with upstream gradient 1 gives g = phi'(a)."""
    n, dt = a.numel(), a.dtype
    z, one = torch.zeros(1, dtype=dt), torch.ones(1, dtype=dt)
    out, _, saved = torch.ops.wcrnn_C.chain_fwd(a.reshape(1, n, 1), torch.zeros(n, 1, dtype=dt), z.reshape(1, 1),
                                                z, one, None, 0, nonlin, True)
    torch.testing.assert_close(saved.reshape(-1), a, rtol=0, atol=0, equal_nan=True)  # a_1 = u_1 when x_0 = 0
    g, _, _ = torch.ops.wcrnn_C.chain_bwd(torch.ones_like(saved), torch.zeros(n, 1, dtype=dt), saved, z.reshape(1, 1),
                                          z, one, None, 0, nonlin, False)
    return out.reshape(-1), g.reshape(-1)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("dtype,max_ulp", [(torch.float32, 4), (torch.float64, 4)])
def test_vector_tanh_accuracy(isa, dtype, max_ulp):
    """The kernels' tanh (and 1 - tanh^2) in ulp of the exact value; 0 at 0, +-1 when saturated, NaN in."""
    g = torch.Generator().manual_seed(0)
    mags = torch.logspace(-30, 1.6, 4000, dtype=torch.float64)
    a64 = torch.cat([mags, -mags, torch.rand(2000, generator=g, dtype=torch.float64) * 24 - 12,
                     torch.tensor([0.0, -0.0, 1e-45, 9.0, 9.5, 10.0, 19.0, 20.0, 21.0, 50.0, -50.0, 1e30])])
    a = a64.to(dtype)
    y, dy = _phi_through_op(a, 0)
    exact = torch.tanh(a.double())
    tiny = torch.finfo(dtype).tiny
    ulp = (exact.abs().clamp_min(tiny) * torch.finfo(dtype).eps)
    err = ((y.double() - exact).abs() / ulp).max().item()
    assert err <= max_ulp, f"tanh error {err:.2f} ulp"
    # 1 - y^2 inherits y's error times 2|y| (as 1 - tanh(a)^2 from torch.tanh does), plus its own rounding
    dexact = 1 - exact * exact
    dtol = torch.finfo(dtype).eps * (2 * max_ulp * exact * exact + 2 * dexact)
    assert ((dy.double() - dexact).abs() <= dtol).all(), "tanh' = 1 - tanh^2 off by more than tanh's error"
    assert (y[a == 0] == 0).all()
    assert (y[a >= 20] == 1).all() and (y[a <= -20] == -1).all()
    special = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=dtype)
    ys, _ = _phi_through_op(special, 0)
    assert torch.isnan(ys[0]) and ys[1] == 1 and ys[2] == -1
    yr, gr = _phi_through_op(torch.tensor([float("nan"), -2.0, 0.0, 3.0], dtype=dtype), 1)
    assert torch.isnan(yr[0]) and yr[1:].tolist() == [0.0, 0.0, 3.0]
    assert gr[1:].tolist() == [0.0, 0.0, 1.0]  # relu'(0) = 0, as the torch backend


@pytest.mark.parametrize("kind", KINDS)
def test_identical_results_with_one_and_two_threads(kind):
    """Rows never interact and each row's arithmetic does not depend on its thread: bitwise equal."""
    saved = torch.get_num_threads()
    results = {}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            assert int(_cpu_info()["parallel_chunks"]) == n, "the kernels' thread pool ignored set_num_threads"
            for dtype in (torch.float32, torch.float64):
                case = make_case(kind, 30, 13, 37, dtype=dtype, lengths=True, seed=11)
                results[n, dtype] = run_chain(case, "cpp", "tanh")
    finally:
        torch.set_num_threads(saved)
    for dtype in (torch.float32, torch.float64):
        for name, a, b in zip(NAMES, results[1, dtype], results[2, dtype]):
            assert torch.equal(a, b), f"{name} ({dtype}) differs between 1 and 2 threads"


def test_rows_past_their_length_in_a_whole_thread_block():
    """Sorted lengths (as a PackedSequence gives): late steps where a thread's every row has ended."""
    case = make_case("rotational", 12, 6, 20, lengths=True, seed=4)
    case["lengths"] = torch.tensor([12, 11, 9, 3, 2, 0])
    for nonlinearity in ("tanh", "relu"):
        assert_all_close(run_chain(case, "cpp", nonlinearity), run_chain(case, "reference", nonlinearity),
                         rtol=1e-10, names=NAMES)


def test_non_contiguous_inputs_to_the_op():
    """The C++ op accepts strided views of every input (it makes them contiguous itself)."""
    case = make_case("dense", 6, 4, 10, seed=8)
    lengths = torch.tensor([6, 2, 5, 0, 1, 6, 3, 4])[::2]
    u_nc = case["u"].transpose(0, 1).contiguous().transpose(0, 1)  # (T, B, H) view with B-major strides
    w_nc = case["w_hh"].t().contiguous().t()
    res_nc = case["res"].t().contiguous().t()
    x0_nc = torch.stack([case["x0"], case["x0"]], -1)[..., 0]
    gamma_nc = torch.stack([case["gamma"], case["gamma"]], -1)[:, 1]
    assert not (u_nc.is_contiguous() or w_nc.is_contiguous() or res_nc.is_contiguous()
                or x0_nc.is_contiguous() or gamma_nc.is_contiguous() or lengths.is_contiguous())
    got = torch.ops.wcrnn_C.chain_fwd(u_nc, x0_nc, w_nc, res_nc, gamma_nc, lengths, 2, 0, True)
    ref = torch.ops.wcrnn_C.chain_fwd(case["u"], case["x0"], case["w_hh"], case["res"], case["gamma"],
                                      lengths.contiguous(), 2, 0, True)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)
    exp = wcrnn_chain(case["u"], case["x0"], case["w_hh"], 2, case["res"], case["gamma"], lengths,
                      backend="reference")
    assert_all_close(got[:2], exp, rtol=1e-10, names=("output", "h_n"))
    # the backward reads strided a and grad_out too
    go = torch.randn_like(got[0])
    args = (case["w_hh"], case["res"], case["gamma"], lengths.contiguous(), 2, 0, True)
    bwd_nc = torch.ops.wcrnn_C.chain_bwd(go.transpose(0, 1).contiguous().transpose(0, 1), case["x0"],
                                         got[2].transpose(0, 1).contiguous().transpose(0, 1), *args)
    bwd = torch.ops.wcrnn_C.chain_bwd(go, case["x0"], got[2], *args)
    for a, b in zip(bwd_nc, bwd):
        assert torch.equal(a, b)


def test_zero_dim_res_and_gamma_cost_the_op_no_tensor_copy():
    """A 0-d res / gamma (the module's scalar r and gamma at every step-by-step call) costs the op no tensor op
    that contiguous (H,) ones do not (the outputs' allocation; their NaN poisoning under the tests): the CPU op
    spreads the value while packing. Positive control: a strided (H,) gamma costs a copy, which the profiler
    sees inside the op."""
    from torch.profiler import ProfilerActivity, profile

    H = 16
    u, x0, w = torch.randn(2, 3, H), torch.zeros(3, H), torch.randn(H, H) / 4

    def inner_ops(res, gamma):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = torch.ops.wcrnn_C.chain_fwd(u, x0, w, res, gamma, None, 0, 0, False)
        return sorted(e.name for e in prof.events()), out

    ops_vector, out_vector = inner_ops(torch.full((H,), 0.9), torch.full((H,), 0.1))
    ops_scalar, out_scalar = inner_ops(torch.tensor(0.9), torch.tensor(0.1))
    assert ops_scalar == ops_vector, "0-d res and gamma cost tensor ops inside the op"
    ops_strided, out_strided = inner_ops(torch.full((H,), 0.9), torch.full((2 * H,), 0.1)[::2])
    assert "aten::copy_" in ops_strided and "aten::copy_" not in ops_vector  # the profiler sees inner copies
    for a, b, c in zip(out_scalar[:2], out_vector[:2], out_strided[:2]):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("residual", ["rotational", "dense"])
def test_module_batch_first_non_contiguous_against_reference(residual):
    """FusedWCRNN(batch_first=True) on a non-contiguous input: output, h_n and every gradient."""
    torch.manual_seed(0)
    kw = dict(num_layers=2, bidirectional=True, batch_first=True, residual=residual, r=0.95, gamma=0.4,
              learn_residual=True, learn_gamma=True, dtype=torch.float64)
    cpp = FusedWCRNN(5, 6, backend="cpp", **kw)
    ref = FusedWCRNN(5, 6, backend="reference", **kw)
    ref.load_state_dict(cpp.state_dict())
    x = torch.randn(7, 3, 5, dtype=torch.float64).transpose(0, 1)  # (B, T, I), not contiguous
    assert not x.is_contiguous()
    h0 = torch.randn(4, 3, 6, dtype=torch.float64)
    outs = []
    for m in (cpp, ref):
        xi = x.detach().clone().requires_grad_(True)
        out, h_n = m(xi, h0)
        g = torch.Generator().manual_seed(1)
        loss = (out * torch.randn(out.shape, generator=g, dtype=torch.float64)).sum() + \
            (h_n * torch.randn(h_n.shape, generator=g, dtype=torch.float64)).sum()
        grads = torch.autograd.grad(loss, [xi] + list(m.parameters()))
        outs.append((out, h_n) + grads)
    names = ["output", "h_n", "dinput"] + [n for n, _ in cpp.named_parameters()]
    assert_all_close(outs[0], outs[1], rtol=1e-10, names=names)


def test_auto_picks_cpp_for_cpu_floating_dtypes():
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        assert resolve_backend("auto", torch.device("cpu"), dtype, 64) == "cpp"
    with pytest.raises(BackendUnavailableError, match="float16, bfloat16, float32 and float64 only"):
        resolve_backend("cpp", torch.device("cpu"), torch.complex64, 64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", [0, 1, 2])
def test_half_inputs_run_the_float32_kernels_and_round_once(dtype, kind):
    """float16 / bfloat16 on CPU: the forward is the float32 chain on float32 copies, each output rounded once
    to the input dtype (bitwise that), and within rounding of the torch backend, which keeps the same float32
    state."""
    from wcrnn_kernels.backends import get_backend
    cpp, ref = get_backend("cpp"), get_backend("torch")
    torch.manual_seed(kind)
    T, B, H = 9, 3, 16
    res = {0: torch.rand(H) * 0.9, 1: torch.rand(2, H) * 0.6, 2: torch.randn(H, H) * 0.2}[kind]
    args32 = [torch.randn(T, B, H), torch.randn(B, H) * 0.5, torch.randn(H, H) / H ** 0.5, kind, res,
              torch.rand(H) * 0.5 + 0.1, torch.tensor([9, 4, 6]), 0]
    half = [t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in args32]
    up = [t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in half]
    got = cpp.chain_fwd(*half, True)
    want = [t.to(dtype) for t in cpp.chain_fwd(*up, True)]
    for name, a, b in zip(("out", "h_n", "a"), got, want):
        assert a.dtype == dtype and torch.equal(a, b), name
    eps = torch.finfo(dtype).eps
    for name, a, b in zip(("out", "h_n", "a"), got, ref.chain_fwd(*half, True)):
        torch.testing.assert_close(a.float(), b.float(), rtol=2 * eps, atol=2 * eps, msg=name)
    # the backward of a half model reaches the backend in float32 (ops.py): test_chain.py's half-precision
    # suite checks it against float64 through the public op


def _args(T=3, B=2, H=4, dtype=torch.float64):
    return [torch.randn(T, B, H, dtype=dtype), torch.randn(B, H, dtype=dtype), torch.randn(H, H, dtype=dtype),
            torch.randn(H, dtype=dtype), torch.randn(H, dtype=dtype), None, 0, 0, True]


@pytest.mark.parametrize("mutate,match", [
    (lambda a: a.__setitem__(0, a[0].half()), r"u: expected float32 or float64"),
    (lambda a: a.__setitem__(1, a[1].float()), r"x0: expected dtype Double"),
    (lambda a: a.__setitem__(1, a[1][:1]), r"x0: expected shape \(B, H\)"),
    (lambda a: a.__setitem__(2, a[2][:, :3]), r"w_hh: expected shape \(H, H\)"),
    (lambda a: a.__setitem__(3, torch.randn(2, 4, dtype=torch.float64)), r"res: expected shape \(H,\)"),
    (lambda a: a.__setitem__(4, a[4][:2]), r"gamma: expected shape \(H,\)"),
    (lambda a: a.__setitem__(5, torch.tensor([1, 2], dtype=torch.int32)), r"lengths: expected dtype int64"),
    (lambda a: a.__setitem__(5, torch.tensor([1, 4])), r"lengths: every entry must lie in \[0, T = 3\]"),
    (lambda a: a.__setitem__(5, torch.tensor([1, 2, 3])), r"lengths: expected shape \(B,\)"),
    (lambda a: a.__setitem__(6, 3), r"res_kind: expected 0 \(diagonal\), 1 \(rotation pairs\) or 2"),
    (lambda a: a.__setitem__(7, 2), r"nonlin: expected 0 \(tanh\) or 1 \(relu\)"),
    (lambda a: a.__setitem__(0, a[0][0]), r"u: expected a 3-D tensor"),
])
def test_op_argument_errors_name_the_argument(mutate, match):
    args = _args()
    mutate(args)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.wcrnn_C.chain_fwd(*args)


def test_op_argument_errors_rotation_and_backward():
    u, x0, w, _, gamma, *_ = _args(H=5)
    with pytest.raises(RuntimeError, match="res: rotation pairs need an even hidden size"):
        torch.ops.wcrnn_C.chain_fwd(u, x0, w, torch.randn(2, 5, dtype=torch.float64), gamma, None, 1, 0, False)
    a = torch.randn(3, 2, 5, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="a: expected float32 or float64"):
        torch.ops.wcrnn_C.chain_bwd(u, x0, a.half(), w, gamma, gamma, None, 0, 0, False)
    with pytest.raises(RuntimeError, match=r"grad_out: expected shape \(T, B, H\) like a"):
        torch.ops.wcrnn_C.chain_bwd(u, x0[:1], a.transpose(0, 1).contiguous(), w, gamma, gamma, None, 0, 0, False)


def test_forced_isa_errors(monkeypatch):
    monkeypatch.setenv("WCRNN_CPU_ISA", "sse9")
    with pytest.raises(RuntimeError, match="WCRNN_CPU_ISA: expected one of auto, default, avx2, avx512"):
        torch.ops.wcrnn_C.chain_fwd(*_args())
    if _BEST != "avx512":
        monkeypatch.setenv("WCRNN_CPU_ISA", "avx512")
        with pytest.raises(RuntimeError, match="cannot run it"):
            torch.ops.wcrnn_C.chain_fwd(*_args())


def test_opcheck_and_fake_tensors():
    """Schema, fake implementations and AOT dispatch of the wcrnn_C ops are consistent (torch.library)."""
    torch.library.opcheck(torch.ops.wcrnn_C.chain_fwd.default, tuple(_args(dtype=torch.float32)))
    torch.library.opcheck(torch.ops.wcrnn_C.chain_fwd.default,
                          tuple(_args()[:5] + [torch.tensor([3, 1]), 0, 1, False]))
    for need_delta in (False, True):
        u, x0, w, res, gamma, *_ = _args()
        args = (torch.randn_like(u), torch.randn_like(x0), u.clone(), w, res, gamma, torch.tensor([2, 3]), 0, 0,
                need_delta)
        torch.library.opcheck(torch.ops.wcrnn_C.chain_bwd.default, args)


def _transposed(t):
    """The same values in a transposed layout (the first two dimensions' strides swapped)."""
    return t.transpose(0, 1).contiguous().transpose(0, 1)


@pytest.mark.parametrize("save", [False, True])
def test_fake_outputs_are_contiguous_as_the_library_allocates_them(save):
    """The library's outputs are contiguous whatever its inputs' layout (new_outputs); the fakes said the inputs'
    layout (empty_like), which inductor asserts (assert_size_stride) against the real strides."""
    u, x0, w, res, gamma, *_ = _args(T=5, B=3)
    torch.library.opcheck(torch.ops.wcrnn_C.chain_fwd.default,
                          (_transposed(u), _transposed(x0), w, res, gamma, None, 0, 0, save),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.wcrnn_C.chain_bwd.default,
                          (torch.randn_like(u), _transposed(torch.randn_like(x0)), _transposed(u), w, res, gamma,
                           None, 0, 0, save), test_utils=("test_schema", "test_faketensor"))


def test_ops_trace_under_torch_compile():
    """A graph that calls the wcrnn_C ops directly compiles with fullgraph=True and matches eager."""
    torch._dynamo.reset()
    u, x0, w, res, gamma, *_ = _args(T=5, B=3, H=6)

    def f(u, x0):
        out, h, _ = torch.ops.wcrnn_C.chain_fwd(u * 2, x0, w, res, gamma, None, 0, 0, False)
        return out.sum(0) + h

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(u, x0), f(u, x0), rtol=0, atol=0)


def _run_python(code, env_update, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WCRNN_")}
    env.update(env_update)
    env["PYTHONPATH"] = cwd
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


_REPORT = """
    import json, torch
    from wcrnn_kernels import available_backends, wcrnn_chain
    from wcrnn_kernels.backends import BackendUnavailableError
    info = available_backends()["cpp"]
    u = torch.randn(4, 2, 3, dtype=torch.float64)
    out, _ = wcrnn_chain(u, torch.zeros(2, 3, dtype=torch.float64), torch.eye(3, dtype=torch.float64), 0,
                         torch.ones(3, dtype=torch.float64), 0.5)  # auto: must fall back to torch
    try:
        wcrnn_chain(u, torch.zeros(2, 3, dtype=torch.float64), torch.eye(3, dtype=torch.float64), 0,
                    torch.ones(3, dtype=torch.float64), 0.5, backend="cpp")
        raised = ""
    except BackendUnavailableError as e:
        raised = str(e)
    print(json.dumps({"info": info, "raised": raised, "finite": bool(torch.isfinite(out).all())}))
"""


def _loader_report(tmp_path, env, package_dir=None):
    cwd = str(package_dir or REPO)
    env = {"WCRNN_CACHE_DIR": str(tmp_path / "empty-cache"), **env}
    return json.loads(_run_python(_REPORT, env, cwd).strip().splitlines()[-1])


def test_loader_without_a_build_reports_why_and_falls_back(tmp_path):
    rep = _loader_report(tmp_path, {"WCRNN_NO_BUILD": "1"})
    assert not rep["info"]["available"] and "WCRNN_NO_BUILD is set" in rep["info"]["reason"]
    assert "WCRNN_NO_BUILD is set" in rep["raised"] and rep["finite"]


def test_loader_without_a_compiler_reports_why(tmp_path):
    rep = _loader_report(tmp_path, {"CXX": str(tmp_path / "no-such-compiler")})
    assert not rep["info"]["available"] and "no C++ compiler" in rep["info"]["reason"]
    assert "no C++ compiler" in rep["raised"] and rep["finite"]
    assert not (tmp_path / "empty-cache").exists() or not any((tmp_path / "empty-cache").rglob("*.so"))


def test_loader_never_loads_a_library_built_for_another_torch(tmp_path):
    """An installed _C library whose build record names another torch is skipped, never dlopen'ed."""
    pkg = tmp_path / "site"
    shutil.copytree(os.path.join(REPO, "wcrnn_kernels"), pkg / "wcrnn_kernels",
                    ignore=shutil.ignore_patterns("__pycache__", "_C*"))
    import importlib.machinery
    (pkg / "wcrnn_kernels" / ("_C" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(b"not a library")
    (pkg / "wcrnn_kernels" / "_C_build.json").write_text(json.dumps(
        {"torch": "1.0.0", "torch_git": "x", "python": "3.0", "cuda": False, "source_hash": "0"}))
    rep = _loader_report(tmp_path, {"WCRNN_NO_BUILD": "1"}, package_dir=pkg)
    reason = rep["info"]["reason"]
    assert not rep["info"]["available"]
    assert "built for torch 1.0.0" in reason and "not used" in reason, reason
    assert "ELF" not in reason and "invalid" not in reason.lower(), reason


def test_cache_key_covers_sources_flags_and_torch(tmp_path):
    """The first-use build cache is keyed by torch version and a hash of exactly what goes into the build."""
    from wcrnn_kernels import _build
    info = _build.extension_info()
    if info["origin"] == "jit":
        assert f"torch-{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}" in info["path"]
    root = tmp_path / "csrc"
    shutil.copytree(_build.source_root(), root)
    h0 = _build.source_hash(str(root), False)
    header = root / "cpu" / "chain_kernels.h"
    header.write_text(header.read_text() + "\n// an edit\n")
    h1 = _build.source_hash(str(root), False)
    assert h1 != h0
    (root / "cuda").mkdir(exist_ok=True)
    (root / "cuda" / "new_kernel.cu").write_text("// CUDA sources count only when they are built\n")
    assert _build.source_hash(str(root), False) == h1 and _build.source_hash(str(root), True) != h1
    assert _build.source_hash(str(root), False, extra=("git-a",)) != _build.source_hash(str(root), False,
                                                                                       extra=("git-b",))


def test_build_failure_summary_is_the_compiler_diagnostic():
    """A failed build's reason quotes the compiler's or linker's message, not ninja's command line (whose flags
    say "error" too)."""
    from wcrnn_kernels._build import first_error_line
    out = ["ninja: build stopped: subcommand failed.",
           "[1/3] /usr/bin/nvcc --display_error_number -Werror=return-type -c chain_ops.cu -o chain_ops.cuda.o",
           "FAILED: wcrnn_C.so",
           "c++ chain_fwd.cuda.o chain_ops.cuda.o -shared -lcudart -o wcrnn_C.so",
           "/usr/bin/ld: chain_ops.cuda.o: multiple definition of `wcrnn_cuda::tanh_acc(double)'",
           "collect2: error: ld returned 1 exit status"]
    assert first_error_line(out).endswith("multiple definition of `wcrnn_cuda::tanh_acc(double)'")
    assert first_error_line(out[5:]) == "collect2: error: ld returned 1 exit status"
    assert first_error_line(["csrc/x.cpp:3:1: error: expected ';'"]) == "csrc/x.cpp:3:1: error: expected ';'"
    assert first_error_line(out[:4]) is None


@pytest.mark.parametrize("H", [16, 130, 260])
@pytest.mark.parametrize("kind", [0, 1, 2])
def test_one_step_at_a_time_equals_the_whole_sequence_bitwise(kind, H):
    """Generation (T = 1 calls carrying the state) and one call over the sequence run the same per-step
    arithmetic: bitwise equal outputs and state, whatever the pack does per call (shared among threads from
    H = 256, register-tile transposes)."""
    from wcrnn_kernels import wcrnn_chain
    torch.manual_seed(kind)
    T, B = 7, 3
    u, x0, w = torch.randn(T, B, H), torch.randn(B, H), torch.randn(H, H) / H ** 0.5
    res = {0: torch.rand(H), 1: torch.rand(2, H) * 0.6, 2: torch.randn(H, H) / H ** 0.5}[kind]
    g = torch.rand(H)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            out, h_n = wcrnn_chain(u, x0, w, kind, res, g, backend="cpp")
            h, steps = x0, []
            for t in range(T):
                o, h = wcrnn_chain(u[t:t + 1], h, w, kind, res, g, backend="cpp")
                steps.append(o)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out, torch.cat(steps)) and torch.equal(h_n, h)



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", [0, 1, 2])
def test_one_step_of_a_few_rows_reads_w_hh_directly_with_the_packed_arithmetic(kind, dtype):
    """A forward of T = 1 and B <= 4 (generation) skips the pack and transposes W_hh's tiles as it multiplies
    (chain_kernels.h, step_gemm_direct): bitwise the first step of a packed call (T = 2), for H around the
    vector length and its tails, every B up to 4 and B = 5 (packed, the control), with lengths and a_out."""
    from wcrnn_kernels import wcrnn_chain
    for H in (1, 2, 9, 16, 33, 100):
        if kind == 1 and H % 2:
            continue
        for B in (1, 2, 3, 4, 5):
            g = torch.Generator().manual_seed(100 * H + B)
            u = torch.randn(2, B, H, generator=g, dtype=dtype)
            x0 = torch.randn(B, H, generator=g, dtype=dtype)
            w = (torch.randn(H, H, generator=g, dtype=dtype) / H ** 0.5).requires_grad_()
            res = {0: torch.rand(H, generator=g, dtype=dtype), 1: torch.rand(2, H, generator=g, dtype=dtype) * 0.5,
                   2: torch.randn(H, H, generator=g, dtype=dtype) / H ** 0.5}[kind]
            gam = torch.rand(H, generator=g, dtype=dtype)
            lengths = torch.randint(0, 3, (B,), generator=g)
            two, _ = wcrnn_chain(u, x0, w, kind, res, gam, lengths=lengths, backend="cpp")
            one, h1 = wcrnn_chain(u[:1], x0, w, kind, res, gam, lengths=lengths.clamp(max=1), backend="cpp")
            assert torch.equal(one[0], two[0]), (H, B)
            g2, = torch.autograd.grad(two[0].sum(), w)  # through the saved pre-activations (a_out) of each
            g1, = torch.autograd.grad(one[0].sum(), w)
            assert torch.equal(g1, g2), (H, B)


def _clang_command():
    import importlib.util
    if shutil.which("clang++"):
        return ["clang++"]
    if importlib.util.find_spec("ziglang") is not None:  # pip install ziglang: `python -m ziglang c++` is clang
        return [sys.executable, "-m", "ziglang", "c++"]
    return None


@pytest.mark.parametrize("triple", ["aarch64-linux-gnu", "aarch64-macos"], ids=["linux-arm64", "macos-arm64"])
def test_cpu_library_compiles_for_arm64(triple, tmp_path):
    """Every C++ source of the library compiles for 64-bit ARM (Grace / Graviton Linux, Apple silicon macOS):
    zig's clang cross-compiles them here against this torch's headers, the flags of a real build included.
    Only x86-64 has the AVX2 / AVX-512 variants (their files compile to nothing there), and the kernels' default
    variant is plain vector code. Compiled, never run: no ARM machine has run them."""
    import importlib.util
    import sysconfig
    from torch.utils.cpp_extension import include_paths
    from wcrnn_kernels import _build
    if importlib.util.find_spec("ziglang") is None:
        msg = "zig's clang cross-compiles the ARM check (pip install ziglang)"
        if os.environ.get("WCRNN_REQUIRE_CLANG") == "1":
            pytest.fail(msg + "; WCRNN_REQUIRE_CLANG=1 (CI) asks for it")
        pytest.skip(msg)
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
    incs = [f"-I{p}" for p in include_paths() + [sysconfig.get_paths()["include"], root]]
    flags = ["-std=c++17", "-O3", "-ffp-contract=fast"]  # cxx_flags() less the x86 assembler padding and OpenMP
    for src in _build.cpp_sources(root):
        r = subprocess.run([sys.executable, "-m", "ziglang", "c++", "-target", triple, *flags, *incs, "-c", src,
                            "-o", str(tmp_path / (os.path.basename(src) + ".o"))],
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{os.path.basename(src)} for {triple}:\n{r.stderr[-3000:]}"


@pytest.mark.parametrize("compiler", ["c++", "clang"])
def test_pack_matches_its_layout(compiler, tmp_path):
    """The packed GEMM operand of every ISA variant equals its layout's definition element by element
    (tests/cpp_pack_check.cpp), compiled by the system compiler and by clang, whose vector-shuffle spelling of
    the register-tile transpose differs from GCC's. A broken transpose fails it by millions of elements."""
    cmd = [os.environ.get("CXX", "c++")] if compiler == "c++" else _clang_command()
    if cmd is None or shutil.which(cmd[0]) is None:
        msg = f"no {compiler} compiler here (clang: clang++ on PATH or `pip install ziglang`)"
        if compiler == "clang" and os.environ.get("WCRNN_REQUIRE_CLANG") == "1":
            pytest.fail(msg + "; WCRNN_REQUIRE_CLANG=1 (CI) asks for the clang build of the pack check")
        pytest.skip(msg)
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "cpu")
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    objs = []
    for isa in (["default", "avx2", "avx512"] if x86 else ["default"]):
        obj = str(tmp_path / f"{isa}.o")
        r = subprocess.run(cmd + ["-std=c++17", "-O1", "-I", src, "-c", os.path.join(src, f"chain_isa_{isa}.cpp"),
                                  "-o", obj], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        objs.append(obj)
    exe = str(tmp_path / "pack_check")
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run(cmd + ["-std=c++17", "-O1", "-I", src, os.path.join(here, "cpp_pack_check.cpp"), *objs,
                              "-o", exe], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = ["default"]
    if x86:
        from wcrnn_kernels.backends import get_backend
        ok, why = get_backend("cpp").availability()
        best = torch.ops.wcrnn_C.cpu_info().split("best_isa=")[1].split()[0] if ok else "default"
        runs = ["default", "avx2", "avx512"][: ["default", "avx2", "avx512"].index(best) + 1]
    r = subprocess.run([exe, ",".join(runs)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(r.stdout.splitlines()) == sorted(f"{isa}: float 0 bad, double 0 bad" for isa in runs), r.stdout
