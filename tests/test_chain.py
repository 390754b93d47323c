"""The fused op against its specification, on every target: autograd through the reference loop, gradcheck,
the low-precision rule, the backend contract, cross-kind identities.

The tests taking `target` run once per backend-and-device that can run in this process (tests/helpers.py:
TARGETS; torch and cpp on CPU tensors, the Triton kernels under the interpreter, the CUDA kernels under the
CPU emulator, cuda and triton on CUDA tensors); the run's summary names the targets it covered and why not
the others. Each is compared with the float64 reference on output, h_n and every gradient (u, x0, W_hh, the
canonical residual, gamma), for every residual kind, both nonlinearities, with and without lengths, at
awkward sizes, with one shared upstream gradient for output and h_n. float32 and float16 / bfloat16 results
are held to helpers.check_low_precision (a small multiple of the reference's own error in that dtype).
What is particular to one backend (forced CUDA paths, Triton variants, C++ instruction sets, the emulator's
launch checks) lives in that backend's file.
"""
from __future__ import annotations

import pytest
import torch

from helpers import (DIFF, FLOAT64_RTOL, KINDS, NAMES, assert_all_close, check_low_precision,
                     check_saved_preactivations, make_case, on, reference, run_chain, select, setup_target)
from wcrnn_kernels import RES_DENSE, RES_DIAG, canonical_residual, wcrnn_chain, wcrnn_chain_ref

pytestmark = pytest.mark.usefixtures("poison_empty")

# (T, B, H): T = 1, B = 1 and 3, H = 1, 3, 17, 130 (odd H become even for the rotational kind)
SIZES = ((1, 1, 1), (4, 3, 3), (6, 3, 17), (3, 2, 130), (1, 3, 17), (9, 1, 3))


@pytest.fixture(autouse=True)
def _target_setup(request, monkeypatch):
    if "target" in request.fixturenames:
        setup_target(request.getfixturevalue("target"), monkeypatch)


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T,B,H", SIZES)
def test_backend_matches_reference_float64(target, kind, nonlinearity, lengths, T, B, H):
    target.require(hidden_size=H)
    case = make_case(kind, T, B, H, lengths=lengths)
    expected = reference(case, nonlinearity)
    actual = run_chain(on(case, target.device), target.backend, nonlinearity)
    assert_all_close(actual, expected, rtol=FLOAT64_RTOL, names=NAMES)


# float32: one case per kind on CPU targets; on CUDA tensors realistic sizes (H = 512 and 1024 take the CUDA
# kernels' grid path under "auto") and both nonlinearities
F32_SIZES = {"cpu": [((50, 4, 64), "tanh")],
             "cuda": [(s, nl) for s in ((24, 32, 128), (16, 8, 512), (8, 3, 1024), (12, 70, 256), (9, 5, 17))
                      for nl in ("tanh", "relu")]}


@pytest.mark.parametrize("kind", KINDS)
def test_float32_error_within_reference_float32_error(target, kind):
    """float32 kernels may be at most a small multiple worse than the reference's own float32 error."""
    for (T, B, H), nonlinearity in F32_SIZES[target.device]:
        target.require(torch.float32, H)
        seed = 3 if target.device == "cpu" else 6
        check_low_precision(make_case(kind, T, B, H, lengths=True, seed=seed), target.backend, torch.float32,
                            nonlinearity, target.device)


HALF_SIZES = {"cpu": [(20, 3, 16)], "cuda": [(20, 16, 64), (10, 4, 300), (6, 8, 512)]}


@pytest.mark.target_dtypes(torch.float16, torch.bfloat16)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("kind", KINDS)
def test_half_precision_tracks_float64(target, kind, dtype):
    """bf16/fp16 inputs run with float32 state: within the torch backend's error (which keeps float32 state
    too) and the reference loop's own error in that dtype."""
    for T, B, H in HALF_SIZES[target.device]:
        target.require(dtype, H)
        check_low_precision(make_case(kind, T, B, H, lengths=True, seed=7), target.backend, dtype, "tanh",
                            target.device)


@pytest.mark.targets("torch", "cpp")
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(target, kind, nonlinearity, lengths):
    """Finite differences on the CPU backends (the CUDA kernels' gradcheck per forced path: test_cuda.py)."""
    target.require(hidden_size=4)
    case = make_case(kind, 4, 3, 4, lengths=lengths, seed=5)
    if nonlinearity == "relu":  # keep pre-activations away from relu's kink, where finite differences lie
        case["u"] = case["u"] + torch.sign(case["u"]) * 0.5
    tensors = [case[k].detach().clone().requires_grad_(True) for k in DIFF]

    def f(u, x0, w_hh, res, gamma):
        return wcrnn_chain(u, x0, w_hh, case["res_kind"], res, gamma, case["lengths"], nonlinearity, target.backend)

    assert torch.autograd.gradcheck(f, tensors, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("kind", ["diagonal", "rotational", "dense"])
def test_only_some_gradients_and_scalar_gamma(target, kind):
    """res and gamma not differentiated: the op asks the backend for no delta (need_delta=False); a 0-d gamma
    is broadcast by the op."""
    case = make_case(kind, 5, 3, 18, lengths=True, seed=11)
    case["gamma"] = torch.tensor(0.45, dtype=torch.float64)
    diff = ("u", "x0", "w_hh")
    expected, names = select(reference(case, "tanh", diff), diff)
    actual, _ = select(run_chain(on(case, target.device), target.backend, "tanh", diff), diff)
    assert_all_close(actual, expected, rtol=FLOAT64_RTOL, names=names)


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
def test_zero_dim_residual_and_gamma(target, lengths):
    """A 0-d res (res_kind 0) and a 0-d gamma, as FusedWCRNN passes a scalar residual and coupling: every backend
    broadcasts them, and their gradients are the sums over the units (as the reference's autograd has them)."""
    case = make_case("scalar", 6, 3, 17, lengths=lengths, seed=12)
    case["res"], case["gamma"] = torch.tensor(0.97, dtype=torch.float64), torch.tensor(0.45, dtype=torch.float64)
    expected = reference(case, "tanh")
    actual = run_chain(on(case, target.device), target.backend, "tanh")
    assert actual[5].shape == () and actual[6].shape == ()  # dres, dgamma: 0-d like res and gamma
    assert_all_close(actual, expected, rtol=FLOAT64_RTOL, names=NAMES)
    # the same values as (H,) tensors give the same forward, bit for bit
    full = dict(case, res=case["res"].expand(17).clone(), gamma=case["gamma"].expand(17).clone())
    expanded = run_chain(on(full, target.device), target.backend, "tanh")
    assert torch.equal(actual[0], expanded[0]) and torch.equal(actual[1], expanded[1])
    torch.testing.assert_close(actual[5], expanded[5].sum(), rtol=1e-12, atol=0)
    torch.testing.assert_close(actual[6], expanded[6].sum(), rtol=1e-12, atol=0)


@pytest.mark.targets("torch", "cpp")
def test_gradcheck_zero_dim_residual_and_gamma(target):
    target.require(hidden_size=4)
    case = make_case("scalar", 4, 3, 4, lengths=True, seed=5)
    case["res"], case["gamma"] = torch.tensor(0.9, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
    tensors = [case[k].detach().clone().requires_grad_(True) for k in DIFF]

    def f(u, x0, w_hh, res, gamma):
        return wcrnn_chain(u, x0, w_hh, RES_DIAG, res, gamma, case["lengths"], "tanh", target.backend)

    assert torch.autograd.gradcheck(f, tensors, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_scalar_gamma_and_needs_input_grad():
    """A 0-d gamma broadcasts; only requested gradients are computed, and they match the reference."""
    case = make_case("scalar", 5, 3, 6)
    w = case["w_hh"].clone().requires_grad_(True)
    gamma = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    for backend in ("reference", "torch"):
        out, h = wcrnn_chain(case["u"], case["x0"], w, case["res_kind"], case["res"], gamma, backend=backend)
        gw, gg = torch.autograd.grad(out.sum() + h.sum(), [w, gamma])
        if backend == "reference":
            ref = (out, gw, gg)
        else:
            assert_all_close((out, gw, gg), ref, rtol=1e-12, names=("output", "dw_hh", "dgamma"))


def test_residual_kinds_are_consistent():
    """scalar == diagonal(r) == dense(r I) and rotational == dense(block rotation), through the op."""
    T, B, H = 6, 2, 6
    g = torch.Generator().manual_seed(0)
    u = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    x0 = torch.randn(B, H, generator=g, dtype=torch.float64)
    w = torch.randn(H, H, generator=g, dtype=torch.float64) / H ** 0.5
    gamma = torch.full((H,), 0.2, dtype=torch.float64)

    def chain(kind, r, theta=None):
        rk, res = canonical_residual(kind, H, r, theta, dtype=torch.float64)
        return wcrnn_chain(u, x0, w, rk, res, gamma, backend="torch")[0]

    base = chain("scalar", 0.93)
    torch.testing.assert_close(chain("diagonal", torch.full((H,), 0.93, dtype=torch.float64)), base)
    torch.testing.assert_close(chain("dense", 0.93 * torch.eye(H, dtype=torch.float64)), base)
    rho = torch.tensor([0.9, 1.0, 1.05], dtype=torch.float64)
    theta = torch.tensor([0.3, 1.2, 2.9], dtype=torch.float64)
    blocks = [rho[k] * torch.tensor([[theta[k].cos(), -theta[k].sin()], [theta[k].sin(), theta[k].cos()]],
                                    dtype=torch.float64) for k in range(3)]
    torch.testing.assert_close(chain("rotational", rho, theta), chain("dense", torch.block_diag(*blocks)))
    assert not torch.allclose(chain("rotational", rho, theta), chain("rotational", rho, -theta))


def test_lengths_semantics():
    """Past its length a row keeps its state, outputs zero, and h_n is the state at its length."""
    case = make_case("diagonal", 7, 3, 5)
    L = torch.tensor([7, 3, 0])
    out, h = wcrnn_chain(case["u"], case["x0"], case["w_hh"], case["res_kind"], case["res"], case["gamma"],
                         L, backend="torch")
    full, _ = wcrnn_chain(case["u"], case["x0"], case["w_hh"], case["res_kind"], case["res"], case["gamma"],
                          backend="torch")
    torch.testing.assert_close(out[:3, 1], full[:3, 1])
    assert (out[3:, 1] == 0).all() and (out[:, 2] == 0).all()
    torch.testing.assert_close(h[0], full[-1, 0])
    torch.testing.assert_close(h[1], full[2, 1])
    torch.testing.assert_close(h[2], case["x0"][2])


def test_dense_residual_is_transposed_correctly():
    """The column-vector convention: a forward chain link R[i+1, i] moves activity from unit i to i+1."""
    H = 4
    R = torch.zeros(H, H, dtype=torch.float64)
    R[1, 0] = 1.0
    x0 = torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64)
    u = torch.zeros(1, 1, H, dtype=torch.float64)
    w = torch.zeros(H, H, dtype=torch.float64)
    gamma = torch.zeros(H, dtype=torch.float64)
    for backend in ("reference", "torch"):
        out, _ = wcrnn_chain(u, x0, w, RES_DENSE, R, gamma, backend=backend)
        torch.testing.assert_close(out[0, 0], torch.tensor([0.0, 1.0, 0, 0], dtype=torch.float64))


def test_reference_loop_does_not_index_per_step():
    """The reference iterates with unbind: per-step indexing (SelectBackward nodes) makes backward O(T^2)."""
    T = 12
    u = torch.randn(T, 2, 8, dtype=torch.float64, requires_grad=True)
    out, _ = wcrnn_chain_ref(u, torch.zeros(2, 8, dtype=torch.float64), torch.eye(8, dtype=torch.float64),
                             RES_DIAG, torch.ones(8, dtype=torch.float64), torch.full((8,), 0.1, dtype=torch.float64))
    seen, stack, names = set(), [out.grad_fn], []
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.append(type(fn).__name__)
        stack.extend(f for f, _ in fn.next_functions)
    assert "UnbindBackward0" in names
    assert not [n for n in names if n.startswith(("SelectBackward", "SliceBackward", "IndexBackward"))]


def test_poison_fixture_poisons(poison_empty):
    """The NaN-poisoning fixture is live in this module: fresh allocations hold NaN, not zeros."""
    assert torch.isnan(torch.empty(3)).all() and torch.isnan(torch.empty_like(torch.ones(2))).all()
    assert torch.isnan(torch.ones(1).new_empty(4)).all()


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("kind", ["diagonal", "rotational", "dense"])
def test_backend_contract_saved_preactivations(target, kind, lengths):
    """chain_fwd(save_a=True) returns a_t = u_t + W_hh x_{t-1} (zero past each length) and the same output
    as save_a=False, which returns an empty a; chain_bwd only reads a and returns a fresh g (C++ / CUDA
    outputs start as NaN)."""
    from wcrnn_kernels.backends import get_backend
    check_saved_preactivations(get_backend(target.backend),
                               on(make_case(kind, 7, 4, 10, lengths=lengths, seed=5), target.device))


def test_second_backward_with_retain_graph(target):
    """The saved pre-activations survive a backward: backward twice (retain_graph) gives the same gradients,
    and an inference forward (no grad) gives the same output."""
    c = on(make_case("rotational", 6, 3, 8, lengths=True, seed=9), target.device)
    inputs = {k: (v.detach().clone().requires_grad_(True) if k in DIFF else v) for k, v in c.items()}
    out, h_n = wcrnn_chain(inputs["u"], inputs["x0"], inputs["w_hh"], inputs["res_kind"], inputs["res"],
                           inputs["gamma"], inputs["lengths"], "tanh", target.backend)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).reshape(out.shape)
    loss = (out * weights).sum() + h_n.sum()
    first = torch.autograd.grad(loss, [inputs[k] for k in DIFF], retain_graph=True)
    second = torch.autograd.grad(loss, [inputs[k] for k in DIFF])
    for n, a, b in zip(DIFF, first, second):
        assert torch.equal(a, b), f"d{n} differs on the second backward"
    with torch.no_grad():
        out_ng, h_ng = wcrnn_chain(c["u"], c["x0"], c["w_hh"], c["res_kind"], c["res"], c["gamma"], c["lengths"],
                                   "tanh", target.backend)
    assert torch.equal(out_ng, out.detach()) and torch.equal(h_ng, h_n.detach())
