"""The CUDA backend ("cuda") on a GPU, against the float64 reference.

Every comparison uses autograd through the reference loop (on the CPU, in float64) with one shared upstream
gradient for output and h_n, and checks output, h_n and the gradients of u, x0, W_hh, the canonical
residual and gamma. Both execution paths are forced at small sizes (WCRNN_CUDA_PATH=block / grid), so the
cooperative grid path with its L2 exchange is checked at awkward H and B as well as at H = 512 / 1024 where
``auto`` picks it. Outputs and the grid path's exchange buffers start as NaN (WCRNN_POISON_OUTPUTS=1), and
Python-side empties are NaN-poisoned too, so an element a kernel forgets to write fails.

Tolerances: float64 1e-10 relative. float32: at most 4x the reference's own float32 error (both measured
against float64), floor 1e-5. float16 / bfloat16: at most 2x the "torch" backend's error in the same dtype
(it also keeps float32 state), plus one rounding step of the dtype.

Without a CUDA device every test here is skipped with the reason; WCRNN_REQUIRE_CUDA=1 (set by
scripts/gpu_check.sh) turns a missing GPU or a missing CUDA build into a failure instead.
"""
from __future__ import annotations

import os

import pytest
import torch

from helpers import DIFF, KINDS, NAMES, assert_all_close, make_case, max_rel_err
from wcrnn_kernels import wcrnn_chain
from wcrnn_kernels.backends import available_backends

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("poison_empty")]

# Forced execution paths: the block path, the grid path as planned, and the grid path with one row group
# (every block walks all rows in chunks of BT).
PATHS = ("block", "grid", "grid-1group")

_READY: list = []


def _cuda_reason():
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    info = available_backends()["cuda"]
    if not info["available"]:
        return f"backend 'cuda' unavailable: {info['reason']}"
    return None


@pytest.fixture(autouse=True)
def cuda_ready(monkeypatch):
    """Skip (or fail under WCRNN_REQUIRE_CUDA=1) without a GPU and the CUDA kernels; poison C++ outputs."""
    if not _READY:
        _READY.append(_cuda_reason())  # checked lazily: never at import / collection time
    why = _READY[0]
    if why is not None:
        if os.environ.get("WCRNN_REQUIRE_CUDA") == "1":
            pytest.fail(f"WCRNN_REQUIRE_CUDA=1 but {why}")
        pytest.skip(why)
    monkeypatch.setenv("WCRNN_POISON_OUTPUTS", "1")
    for var in ("WCRNN_CUDA_PATH", "WCRNN_CUDA_ROWS", "WCRNN_CUDA_ROW_GROUPS"):
        monkeypatch.delenv(var, raising=False)


def force_path(monkeypatch, path):
    monkeypatch.setenv("WCRNN_CUDA_PATH", "block" if path == "block" else "grid")
    if path == "grid-1group":
        monkeypatch.setenv("WCRNN_CUDA_ROW_GROUPS", "1")


def on(case, device=None, dtype=None):
    out = {}
    for k, v in case.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device=device or v.device)
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out


def run_chain(case, backend, nonlinearity, diff=DIFF, upstream_seed=1):
    """Forward, then backward of <output, G_out> + <h_n, G_h>; returns CPU (output, h_n, *grads)."""
    inputs = {k: (v.detach().clone().requires_grad_(k in diff) if k in DIFF else v) for k, v in case.items()}
    out, h_n = wcrnn_chain(inputs["u"], inputs["x0"], inputs["w_hh"], inputs["res_kind"], inputs["res"],
                           inputs["gamma"], inputs["lengths"], nonlinearity, backend)
    g = torch.Generator().manual_seed(upstream_seed)
    g_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(device=out.device, dtype=out.dtype)
    g_h = torch.randn(h_n.shape, generator=g, dtype=torch.float64).to(device=out.device, dtype=out.dtype)
    wrt = [inputs[k] for k in diff]
    grads = torch.autograd.grad((out * g_out).sum() + (h_n * g_h).sum(), wrt)
    full = dict(zip(diff, grads))
    return tuple(t.detach().cpu() for t in (out, h_n)) + tuple(
        full[k].detach().cpu() if k in full else None for k in DIFF)


def reference(case, nonlinearity, diff=DIFF):
    return run_chain(on(case, "cpu", torch.float64), "reference", nonlinearity, diff)


def block_path_refused(path, kind, H, dtype=torch.float64):
    """True where the forced block path cannot hold W_hh (and a dense R) in one block's shared memory on any
    sm_80 / sm_90 GPU (at most 227 KiB): then the op must refuse with the planner's message, not run."""
    words = H * H * (2 if kind == "dense" else 1)
    return path == "block" and words * torch.finfo(dtype).bits // 8 > 227 * 1024


def compare_with_reference(case, backend, device, path, kind, H, nonlinearity):
    """Runs the float64 case on `device` (path already forced) against the reference; where the forced block
    path cannot hold it, expects the planner's refusal instead. Returns whether the chain ran."""
    if block_path_refused(path, kind, H):
        with pytest.raises(RuntimeError, match=f"WCRNN_CUDA_PATH=block but H={H} needs .* bytes of shared memory"):
            run_chain(on(case, device), backend, nonlinearity)
        return False
    expected = reference(case, nonlinearity)
    actual = run_chain(on(case, device), backend, nonlinearity)
    assert_all_close(actual, expected, rtol=1e-10, names=NAMES)
    return True


def select(results, diff):
    keep = [0, 1] + [2 + DIFF.index(k) for k in diff]
    return [results[i] for i in keep], [NAMES[i] for i in keep]


# ----------------------------------------------------------------------------------------------------------
# float64: both paths, every residual kind, both nonlinearities, with and without lengths, awkward sizes

# (T, B, H): T = 1; B = 1, 3, 11 (grid path: a chunk of 8 rows and a partial one); H = 1, 3, 17, 33, 130
SIZES = ((1, 1, 1), (4, 3, 3), (6, 3, 17), (3, 2, 130), (5, 11, 33), (2, 1, 130))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T,B,H", SIZES)
def test_matches_reference_float64(monkeypatch, path, kind, nonlinearity, lengths, T, B, H):
    force_path(monkeypatch, path)
    compare_with_reference(make_case(kind, T, B, H, lengths=lengths), "cuda", "cuda", path, kind, H, nonlinearity)


@pytest.mark.parametrize("rows", ["1", "4", "8"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["diagonal", "rotational", "dense"])
def test_every_tile_height(monkeypatch, rows, path, kind):
    """Each compiled tile height; B = 13, H = 130 makes 8-row tiles hold more than 4 x 256 epilogue elements
    (the late-load tail) and leaves partial tiles / chunks (one row group: 13, 4 or 2 chunks per step)."""
    force_path(monkeypatch, path)
    monkeypatch.setenv("WCRNN_CUDA_ROWS", rows)
    compare_with_reference(make_case(kind, 5, 13, 130, lengths=True, seed=3), "cuda", "cuda", path, kind, 130, "tanh")


@pytest.mark.parametrize("path", PATHS)
def test_only_some_gradients(monkeypatch, path):
    """Without residual / gamma gradients the op asks for no delta (need_delta=False)."""
    force_path(monkeypatch, path)
    case = make_case("rotational", 7, 5, 24, lengths=True, seed=4)
    diff = ("u", "x0", "w_hh")
    expected, names = select(reference(case, "relu", diff), diff)
    actual, _ = select(run_chain(on(case, "cuda"), "cuda", "relu", diff), diff)
    assert_all_close(actual, expected, rtol=1e-10, names=names)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["scalar", "rotational", "dense"])
def test_gradcheck(monkeypatch, path, kind):
    force_path(monkeypatch, path)
    case = on(make_case(kind, 3, 2, 6, lengths=True, seed=5), "cuda")
    args = [case[k].detach().clone().requires_grad_(True) for k in DIFF]

    def f(u, x0, w, res, gamma):
        return wcrnn_chain(u, x0, w, case["res_kind"], res, gamma, case["lengths"], "tanh", "cuda")

    assert torch.autograd.gradcheck(f, args, fast_mode=True)


# ----------------------------------------------------------------------------------------------------------
# float32, float16, bfloat16 at realistic sizes; H = 512 and 1024 run the grid path under "auto"

def _errors(actual, expected):
    return [max_rel_err(a, e) if e is not None else 0.0 for a, e in zip(actual, expected)]


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("kind", ["scalar", "rotational", "dense"])
@pytest.mark.parametrize("T,B,H", [(24, 32, 128), (16, 8, 512), (8, 3, 1024), (12, 70, 256), (9, 5, 17)])
def test_float32_within_reference_float32_error(kind, nonlinearity, T, B, H):
    case = make_case(kind, T, B, H, lengths=True, seed=6)
    c32 = on(on(case, "cuda"), dtype=torch.float32)
    expected = reference(on(c32, "cpu"), nonlinearity)  # float64 reference of the float32-rounded inputs
    actual = run_chain(c32, "cuda", nonlinearity)
    ref32 = run_chain(c32, "reference", nonlinearity)  # the reference loop itself in float32 (cuBLAS)
    for n, ea, er in zip(NAMES, _errors(actual, expected), _errors(ref32, expected)):
        assert ea <= max(4 * er, 1e-5), f"{n}: cuda float32 error {ea:.2e}, reference float32 error {er:.2e}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["none", "diagonal", "rotational", "dense"])
@pytest.mark.parametrize("T,B,H", [(20, 16, 64), (10, 4, 300), (6, 8, 512)])
def test_half_precision_within_torch_backend_error(dtype, kind, T, B, H):
    case = make_case(kind, T, B, H, lengths=True, seed=7)
    ch = on(on(case, "cuda"), dtype=dtype)
    expected = reference(on(ch, "cpu"), "tanh")
    actual = run_chain(ch, "cuda", "tanh")
    other = run_chain(ch, "torch", "tanh")
    step = torch.finfo(dtype).eps
    for n, ea, eo in zip(NAMES, _errors(actual, expected), _errors(other, expected)):
        assert ea <= 2 * eo + step, f"{n}: cuda {dtype} error {ea:.2e}, torch backend error {eo:.2e}"


def test_elman_rnn_equivalence_with_cudnn(monkeypatch):
    """residual='none', gamma=1 is nn.RNN: our float32 kernels are as close to a float64 nn.RNN as cuDNN is."""
    from wcrnn_kernels import FusedWCRNN
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # compare with cuDNN in true float32
    torch.manual_seed(8)
    T, B, I, H = 30, 6, 5, 96
    rnn64 = torch.nn.RNN(I, H, num_layers=2, nonlinearity="tanh").double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(2, B, H, dtype=torch.float64)

    def copy32():
        r = torch.nn.RNN(I, H, num_layers=2, nonlinearity="tanh").to("cuda", torch.float32)
        r.load_state_dict({k: v.float() for k, v in rnn64.state_dict().items()})
        return r

    def run(model, device, dtype):
        xi = x.to(device, dtype).requires_grad_(True)
        hi = h0.to(device, dtype).requires_grad_(True)
        out, hn = model(xi, hi)
        g = torch.Generator().manual_seed(9)
        loss = (out * torch.randn(out.shape, generator=g, dtype=torch.float64).to(device, dtype)).sum() + \
            (hn * torch.randn(hn.shape, generator=g, dtype=torch.float64).to(device, dtype)).sum()
        names = [n for n, _ in rnn64.named_parameters()]  # nn.RNN's names, which FusedWCRNN keeps
        params = dict(model.named_parameters())
        grads = torch.autograd.grad(loss, [xi, hi] + [params[n] for n in names])
        return [t.detach().cpu() for t in (out, hn, *grads)], ["output", "h_n", "dx", "dh0"] + names

    expected, names = run(rnn64, "cpu", torch.float64)
    cudnn, _ = run(copy32(), "cuda", torch.float32)
    ours, _ = run(FusedWCRNN.from_rnn(copy32(), residual="none", gamma=1.0, backend="cuda"), "cuda",
                  torch.float32)
    for n, eo, ec in zip(names, _errors(ours, expected), _errors(cudnn, expected)):
        assert eo <= max(4 * ec, 1e-5), f"{n}: cuda backend error {eo:.2e}, cuDNN error {ec:.2e}"


# ----------------------------------------------------------------------------------------------------------
# The ops themselves: schema / fake tensors, errors, streams, determinism, devices

def _op_args(T=5, B=3, H=8, dtype=torch.float32, res_kind=1, seed=10, device="cuda"):
    """Op arguments with a contracting residual (every |eigenvalue| < 1), so that long chains stay finite:
    diagonal values in [0, 1), rotation pairs with a^2 + b^2 < 1, a dense R with row sums under 0.9.
    (H200 run 3: rand(H, H) and rotation pairs up to sqrt(2) overflowed to NaN, and NaN != NaN.)"""
    g = torch.Generator().manual_seed(seed)
    res_shape, res_scale = {0: ((H,), 1.0), 1: ((2, H), 0.7), 2: ((H, H), 0.9 / H)}[res_kind]
    t = [torch.randn(T, B, H, generator=g), torch.randn(B, H, generator=g),
         torch.randn(H, H, generator=g) / H ** 0.5, torch.rand(*res_shape, generator=g) * res_scale,
         torch.rand(H, generator=g)]
    return [x.to(device, dtype) for x in t]


# The op-level checks take the op namespace and the device: tests/test_cuda_emulated.py runs them on the CPU
# emulation of these kernels (torch.ops.wcrnn_cuda_emu, CPU tensors).

def check_opcheck(ops, device):
    u, x0, w, res, gamma = _op_args(device=device)
    L = torch.tensor([5, 1, 0], device=device)
    torch.library.opcheck(ops.chain_fwd.default, (u, x0, w, res, gamma, L, 1, 0, True))
    torch.library.opcheck(ops.chain_fwd.default, (u, x0, w, res, gamma, None, 1, 1, False))
    for need_delta in (False, True):
        args = (torch.randn_like(u), torch.randn_like(x0), u.clone(), w, res, gamma, L, 1, 0, need_delta)
        torch.library.opcheck(ops.chain_bwd.default, args)


def check_errors_name_the_argument(monkeypatch, ops, device):
    u, x0, w, res, gamma = _op_args(device=device)
    fwd, bwd = ops.chain_fwd, ops.chain_bwd
    with pytest.raises(RuntimeError, match=r"x0: expected shape \(B, H\)"):
        fwd(u, x0[:, :-1].contiguous(), w, res, gamma, None, 1, 0, False)
    with pytest.raises(RuntimeError, match="lengths: expected dtype int64"):
        fwd(u, x0, w, res, gamma, torch.tensor([1, 2, 3], device=device, dtype=torch.int32), 1, 0, False)
    with pytest.raises(RuntimeError, match=r"res: expected shape \(2, H\)"):
        fwd(u, x0, w, res[0].contiguous(), gamma, None, 1, 0, False)
    with pytest.raises(RuntimeError, match="nonlin: expected 0"):
        fwd(u, x0, w, res, gamma, None, 1, 2, False)
    with pytest.raises(RuntimeError, match="gamma: expected dtype"):
        fwd(u, x0, w, res, gamma.double(), None, 1, 0, False)
    with pytest.raises(RuntimeError, match=r"grad_out: expected shape \(T, B, H\)"):
        bwd(u[:1].contiguous(), x0, u, w, res, gamma, None, 1, 0, False)
    h = [t.half() for t in (u, x0, w, res, gamma)]
    with pytest.raises(RuntimeError, match="float32 or float64"):
        bwd(h[0], h[1], h[0].clone(), h[2], h[3], h[4], None, 1, 0, False)
    monkeypatch.setenv("WCRNN_CUDA_PATH", "sideways")
    with pytest.raises(RuntimeError, match="WCRNN_CUDA_PATH"):
        fwd(u, x0, w, res, gamma, None, 1, 0, False)
    monkeypatch.setenv("WCRNN_CUDA_PATH", "block")
    big = _op_args(T=2, B=2, H=1024, res_kind=2, device=device)
    with pytest.raises(RuntimeError, match="shared memory"):
        fwd(*big, None, 2, 0, False)
    monkeypatch.delenv("WCRNN_CUDA_PATH")


def check_non_contiguous_inputs_are_accepted(ops, device):
    """Read-only inputs may be strided (the op copies them); results equal the contiguous call."""
    u, x0, w, res, gamma = _op_args(T=6, B=4, H=10, res_kind=2, device=device)
    fwd = ops.chain_fwd
    expected = fwd(u, x0, w, res, gamma, None, 2, 0, True)
    wt = w.t().contiguous().t()  # same values, column-major
    actual = fwd(u.transpose(0, 1).contiguous().transpose(0, 1), x0, wt, res.t().contiguous().t(), gamma, None, 2, 0,
                 True)
    for a, e in zip(actual, expected):
        assert torch.equal(a, e)
    go, a = torch.randn_like(u), expected[2]
    bwd = ops.chain_bwd
    expected = bwd(go, x0, a, w, res, gamma, None, 2, 0, True)
    actual = bwd(go.transpose(0, 1).contiguous().transpose(0, 1), x0, a.transpose(0, 1).contiguous().transpose(0, 1),
                 wt, res, gamma, None, 2, 0, True)
    for a, e in zip(actual, expected):
        assert torch.equal(a, e)


def check_empty_sizes(ops, device):
    u, x0, w, res, gamma = _op_args(T=4, B=3, H=8, device=device)
    out, hn, a = ops.chain_fwd(u[:0], x0, w, res, gamma, None, 1, 0, True)
    assert out.shape == (0, 3, 8) and a.shape == (0, 3, 8) and torch.equal(hn, x0)
    g, dx0, delta = ops.chain_bwd(u[:0], x0, u[:0].clone(), w, res, gamma, None, 1, 0, True)
    assert torch.equal(dx0, x0) and g.shape == (0, 3, 8) and delta.shape == (0, 3, 8)
    out, hn, a = ops.chain_fwd(u[:, :0], x0[:0], w, res, gamma, None, 1, 0, False)
    assert out.shape == (4, 0, 8) and hn.shape == (0, 8) and a.numel() == 0


@pytest.mark.parametrize("path", PATHS)
def test_opcheck(monkeypatch, path):
    force_path(monkeypatch, path)
    check_opcheck(torch.ops.wcrnn_C, "cuda")


def test_errors_name_the_argument(monkeypatch):
    check_errors_name_the_argument(monkeypatch, torch.ops.wcrnn_C, "cuda")
    u, x0, w, res, gamma = _op_args()
    with pytest.raises(RuntimeError, match="w_hh: expected a tensor on"):
        torch.ops.wcrnn_C.chain_fwd(u, x0, w.cpu(), res, gamma, None, 1, 0, False)


def test_non_contiguous_inputs_are_accepted():
    check_non_contiguous_inputs_are_accepted(torch.ops.wcrnn_C, "cuda")


def test_empty_sizes():
    check_empty_sizes(torch.ops.wcrnn_C, "cuda")


@pytest.mark.parametrize("path", PATHS)
def test_bitwise_deterministic_and_stream_aware(monkeypatch, path):
    force_path(monkeypatch, path)
    u, x0, w, res, gamma = _op_args(T=40, B=9, H=40, res_kind=2)
    first = torch.ops.wcrnn_C.chain_fwd(u, x0, w, res, gamma, None, 2, 0, True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        second = torch.ops.wcrnn_C.chain_fwd(u, x0, w, res, gamma, None, 2, 0, True)
    torch.cuda.current_stream().wait_stream(side)
    for a, b in zip(first, second):
        assert torch.isfinite(a).all() and torch.equal(a, b)


def test_second_device():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices (checks the device guard)")
    case = make_case("rotational", 6, 3, 20, lengths=True, seed=11)
    expected = reference(case, "tanh")
    actual = run_chain(on(case, "cuda:1"), "cuda", "tanh")
    assert_all_close(actual, expected, rtol=1e-10, names=NAMES)


# ----------------------------------------------------------------------------------------------------------
# 64-bit indexing: T * B * H past 2^31 elements

def _need_gib(gib):
    free, _ = torch.cuda.mem_get_info()
    if free < gib * 2 ** 30:
        pytest.skip(f"needs {gib} GiB of free GPU memory, {free / 2 ** 30:.1f} GiB free")


@pytest.mark.slow
@pytest.mark.parametrize("path", ["block", "grid"])
def test_offsets_past_2_pow_31(path, monkeypatch):
    """A float32 chain with T*B*H > 2^31: the first and the last steps equal short runs of the same kernel
    (whose offsets are small) bit for bit, forward and backward."""
    _need_gib(44)
    force_path(monkeypatch, path)
    monkeypatch.delenv("WCRNN_POISON_OUTPUTS")
    B, H = 64, 128
    T = 2 ** 31 // (B * H) + 3
    torch.manual_seed(12)
    _, x0, w, res, gamma = _op_args(T=1, B=B, H=H, res_kind=1)
    u = torch.randn(T, B, H, device="cuda")
    fwd, bwd = torch.ops.wcrnn_C.chain_fwd, torch.ops.wcrnn_C.chain_bwd
    out, hn, a = fwd(u, x0, w, res, gamma, None, 1, 0, True)
    assert torch.isfinite(out[-3:]).all() and torch.isfinite(hn).all()
    head, _, a_head = fwd(u[:3].contiguous(), x0, w, res, gamma, None, 1, 0, True)
    tail, hn_tail, a_tail = fwd(u[-3:].contiguous(), out[-4].contiguous(), w, res, gamma, None, 1, 0, True)
    assert torch.equal(out[:3], head) and torch.equal(out[-3:], tail) and torch.equal(hn, hn_tail)
    assert torch.equal(a[:3], a_head) and torch.equal(a[-3:], a_tail)
    del out, head, tail, a_head, a_tail

    go = u  # reuse the memory: any values do as upstream gradients
    ghn = torch.randn(B, H, device="cuda")
    g, dx0, delta = bwd(go, ghn, a, w, res, gamma, None, 1, 0, True)
    g_tail, _, delta_tail = bwd(go[-3:].contiguous(), ghn, a[-3:].contiguous(), w, res, gamma, None, 1, 0, True)
    assert torch.equal(g[-3:], g_tail) and torch.equal(delta[-3:], delta_tail)
    assert torch.isfinite(dx0).all() and torch.isfinite(delta[:3]).all() and torch.isfinite(g[:3]).all()
