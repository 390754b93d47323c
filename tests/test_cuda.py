"""The CUDA backend's kernels and ops (csrc/cuda/): what is particular to them, on every CUDA target.

The generic suite (test_chain.py, test_module.py) compares the "cuda" backend with the float64 reference like
every other backend. This file checks the CUDA kernels' own machinery, on the targets that run them here:
"cuda" (CUDA tensors, on a GPU) and "cuda-emulated" (the same sources compiled against the CPU emulator of
tests/cuda_emu, on CPU tensors; tests/test_cuda_emulated.py holds what only the emulator can check). Every
execution path is forced at small sizes (WCRNN_CUDA_PATH=block / grid / regs, and the grid path with one row
group), so the cooperative grid path with its L2 exchange is checked at awkward H and B; every compiled tile
height; the ops' schema, fake tensors, argument errors, strided inputs and empty sizes. On the emulator every
launch's path is also checked from the emulator's log. GPU-only: cuDNN equivalence, streams, a second
device, 64-bit offsets.

Outputs and the grid path's exchange buffers start as NaN (WCRNN_POISON_OUTPUTS=1), and Python-side empties
are NaN-poisoned too, so an element a kernel forgets to write fails. Tolerances: float64 1e-10 relative;
float32 by helpers.LOWP_RULE.

Without a CUDA device the "cuda" rows are not generated (the run's summary says so); WCRNN_REQUIRE_CUDA=1
(set by scripts/gpu_check.sh) makes them run, and fail, without one.
"""
from __future__ import annotations

import pytest
import torch

from helpers import (CUDA_PATHS, DIFF, EMULATED, FLOAT64_RTOL, KINDS, NAMES, assert_all_close, assert_launch_path,
                     assert_low_precision_rule, check_low_precision, check_saved_preactivations,
                     emulator_launches, force_cuda_path, make_case, on, reference, run_chain, select, setup_target)
from sanitize_cases import cuda_path_refused
from wcrnn_kernels import wcrnn_chain
from wcrnn_kernels.backends import get_backend

pytestmark = [pytest.mark.usefixtures("poison_empty"), pytest.mark.targets(EMULATED, "cuda")]
GPU_ONLY = pytest.mark.targets("cuda")

PATHS = CUDA_PATHS  # block, grid, the grid path with one row group, regs (helpers.force_cuda_path)
force_path = force_cuda_path
assert_path = assert_launch_path


@pytest.fixture(autouse=True)
def _target_setup(request, monkeypatch):
    if "target" in request.fixturenames:
        setup_target(request.getfixturevalue("target"), monkeypatch)


def ops_of(target):
    return torch.ops.wcrnn_cuda_emu if target.name == EMULATED else torch.ops.wcrnn_C


def check_launches(target, ran, path, several_blocks=True):
    """On the emulator: the case ran on the forced path (every launch in its log), or, refused by the
    planner, launched nothing. (A GPU keeps no such log.)"""
    if target.name != EMULATED:
        return
    log = emulator_launches()
    if not ran:
        assert log == [], log
        return
    assert_path(log, path if path in ("block", "regs", "tiled") else "grid", several_blocks=several_blocks)


def compare_with_reference(case, target, path, kind, H, nonlinearity):
    """Runs the float64 case on the target (path already forced) against the reference; where the forced
    path cannot run it (sanitize_cases.cuda_path_refused), expects the planner's refusal instead. Returns whether
    the chain ran."""
    refusal = cuda_path_refused(path, kind, H)
    if refusal:
        with pytest.raises(RuntimeError, match=refusal):
            run_chain(on(case, target.device), target.backend, nonlinearity)
        return False
    expected = reference(case, nonlinearity)
    actual = run_chain(on(case, target.device), target.backend, nonlinearity)
    assert_all_close(actual, expected, rtol=FLOAT64_RTOL, names=NAMES)
    return True


# ----------------------------------------------------------------------------------------------------------
# float64: both paths, every residual kind, both nonlinearities, with and without lengths, awkward sizes

# (T, B, H): T = 1; B = 1, 3, 11 (grid path: a chunk of 8 rows and a partial one); H = 1, 3, 17, 33, 130
SIZES = ((1, 1, 1), (4, 3, 3), (6, 3, 17), (3, 2, 130), (5, 11, 33), (2, 1, 130))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T,B,H", SIZES)
def test_matches_reference_float64(target, monkeypatch, path, kind, nonlinearity, lengths, T, B, H):
    force_path(monkeypatch, path)
    ran = compare_with_reference(make_case(kind, T, B, H, lengths=lengths), target, path, kind, H, nonlinearity)
    check_launches(target, ran, path, several_blocks=H > 2)


@pytest.mark.parametrize("rows", ["1", "4", "8"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["diagonal", "rotational", "dense"])
def test_every_tile_height(target, monkeypatch, rows, path, kind):
    """Each compiled tile height; B = 13, H = 130 makes 8-row tiles hold more than 4 x 256 epilogue elements
    (the late-load tail) and leaves partial tiles / chunks (one row group: 13, 4 or 2 chunks per step)."""
    force_path(monkeypatch, path)
    monkeypatch.setenv("WCRNN_CUDA_ROWS", rows)
    ran = compare_with_reference(make_case(kind, 5, 13, 130, lengths=True, seed=3), target, path, kind, 130, "tanh")
    check_launches(target, ran, path)


# The register path in the dtypes that reach its wide rows (K = 128 for 64 < H <= 256, the words past 128 in
# shared memory, and the dense form at H <= 64, none of which float64 runs) with every tile height. T = 11 is longer than every prefetch depth
# (8, 4, 2, 1 steps) and not a multiple of any, so the unrolled time loop ends mid-round.
@pytest.mark.parametrize("rows", ["1", "4", "8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["scalar", "rotational", "dense"])
@pytest.mark.parametrize("H", [6, 64, 100, 128, 202])
def test_register_path_low_precision(target, monkeypatch, rows, dtype, kind, H):
    low_precision_on_path(target, monkeypatch, "regs", rows, dtype, kind, H, seed=8)


def low_precision_on_path(target, monkeypatch, path, rows, dtype, kind, H, seed):
    """A case (T = 11, B = 13, lengths) on a forced path and tile height against helpers.LOWP_RULE, or, where the
    path cannot run it, the planner's refusal (and no launch). Returns whether it ran."""
    force_path(monkeypatch, path)
    monkeypatch.setenv("WCRNN_CUDA_ROWS", rows)
    case = make_case(kind, 11, 13, H, lengths=True, seed=seed)
    refusal = cuda_path_refused(path, kind, H, dtype)
    if refusal:
        with pytest.raises(RuntimeError, match=refusal):
            run_chain(on(case, target.device, dtype), target.backend, "tanh")
    else:
        check_low_precision(case, target.backend, dtype, "tanh", device=target.device)
    check_launches(target, not refusal, path)
    return not refusal


@pytest.mark.parametrize("rows", ["1", "4", "8"])
@pytest.mark.parametrize("kind", ["scalar", "rotational"])
def test_register_path_float64_tail(target, monkeypatch, rows, kind):
    """float64 rows past the 64 words in registers come from shared memory (H = 102: 38 of them)."""
    force_path(monkeypatch, "regs")
    monkeypatch.setenv("WCRNN_CUDA_ROWS", rows)
    ran = compare_with_reference(make_case(kind, 9, 13, 102, lengths=True, seed=9), target, "regs", kind, 102, "relu")
    check_launches(target, ran, "regs")
    assert ran


# The tiled register path (forced), both directions: a 4-row tile of W_hh (the backward: of W_hh^T) per thread over
# a quarter of the columns (chain_cuda.cuh tiled_slots). H = 6 and 100 leave rows and columns of the
# padded tile (64 or 128) empty; every tile height, rows past B in the last tile (B = 13); T = 11 past every
# prefetch depth and not a multiple of any. float64 runs H <= 64, the dense form never.
@pytest.mark.parametrize("rows", ["1", "4", "8"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("kind", ["scalar", "diagonal", "rotational", "dense"])
@pytest.mark.parametrize("H", [6, 64, 100])
def test_tiled_path_float64(target, monkeypatch, rows, nonlinearity, kind, H):
    force_path(monkeypatch, "tiled")
    monkeypatch.setenv("WCRNN_CUDA_ROWS", rows)
    ran = compare_with_reference(make_case(kind, 11, 13, H, lengths=True, seed=21), target, "tiled", kind, H,
                                 nonlinearity)
    check_launches(target, ran, "tiled")
    assert ran == (kind != "dense" and H <= 64)


@pytest.mark.parametrize("rows", ["1", "4", "8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["scalar", "rotational", "dense"])
@pytest.mark.parametrize("H", [6, 64, 100, 128, 130])
def test_tiled_path_low_precision(target, monkeypatch, rows, dtype, kind, H):
    ran = low_precision_on_path(target, monkeypatch, "tiled", rows, dtype, kind, H, seed=22)
    assert ran == (kind != "dense" and H <= 128)


@pytest.mark.parametrize("path", PATHS)
def test_only_some_gradients(target, monkeypatch, path):
    """Without residual / gamma gradients the op asks for no delta (need_delta=False)."""
    force_path(monkeypatch, path)
    case = make_case("rotational", 7, 5, 24, lengths=True, seed=4)
    diff = ("u", "x0", "w_hh")
    expected, names = select(reference(case, "relu", diff), diff)
    actual, _ = select(run_chain(on(case, target.device), target.backend, "relu", diff), diff)
    assert_all_close(actual, expected, rtol=FLOAT64_RTOL, names=names)


def path_kinds(kinds, H):
    """(path, kind) of PATHS x kinds that the planner runs in float64 at H (the register path has no float64
    dense form; test_register_path_low_precision checks its dense kernels in float32)."""
    return [(p, k) for p in PATHS for k in kinds if not cuda_path_refused(p, k, H)]


@pytest.mark.parametrize("path,kind", path_kinds(["scalar", "rotational", "dense"], 6))
def test_gradcheck(target, monkeypatch, path, kind):
    force_path(monkeypatch, path)
    case = on(make_case(kind, 3, 2, 6, lengths=True, seed=5), target.device)
    args = [case[k].detach().clone().requires_grad_(True) for k in DIFF]

    def f(u, x0, w, res, gamma):
        return wcrnn_chain(u, x0, w, case["res_kind"], res, gamma, case["lengths"], "tanh", target.backend)

    assert torch.autograd.gradcheck(f, args, fast_mode=True)


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("path,kind", path_kinds(["diagonal", "rotational", "dense"], 10))
def test_backend_contract_saved_preactivations(target, monkeypatch, path, kind, lengths):
    force_path(monkeypatch, path)
    check_saved_preactivations(get_backend(target.backend),
                               on(make_case(kind, 7, 4, 10, lengths=lengths, seed=5), target.device))


# ----------------------------------------------------------------------------------------------------------
# GPU only: cuDNN

@GPU_ONLY
def test_elman_rnn_equivalence_with_cudnn(target, monkeypatch):
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
    assert_low_precision_rule(ours, expected, {"reference": cudnn}, torch.float32, names=names,
                              label="cuda backend (cuDNN as the yardstick)")


# ----------------------------------------------------------------------------------------------------------
# The ops themselves: schema / fake tensors, errors, streams, determinism, devices

def _op_args(T=5, B=3, H=8, dtype=torch.float32, res_kind=1, seed=10, device="cuda"):
    """Op arguments with a contracting residual (every |eigenvalue| < 1), so that long chains stay finite:
    diagonal values in [0, 1), rotation-pair entries in [0, 0.45) (a unit's two coefficients, its own and its
    partner's, sum under 0.9: every row of R does, so ||R||_inf < 0.9), a dense R with row sums under 0.9.
    (rand(2, H) * 0.7 left independent pair entries with a spectral radius up to 1.4: 1.16 at the 64-bit offset
    test's seed, NaN long before its 2^18 steps.)
    (H200 run 3: rand(H, H) and rotation pairs up to sqrt(2) overflowed to NaN, and NaN != NaN.)"""
    g = torch.Generator().manual_seed(seed)
    res_shape, res_scale = {0: ((H,), 1.0), 1: ((2, H), 0.45), 2: ((H, H), 0.9 / H)}[res_kind]
    t = [torch.randn(T, B, H, generator=g), torch.randn(B, H, generator=g),
         torch.randn(H, H, generator=g) / H ** 0.5, torch.rand(*res_shape, generator=g) * res_scale,
         torch.rand(H, generator=g)]
    return [x.to(device, dtype) for x in t]


@pytest.mark.parametrize("path", PATHS)
def test_opcheck(target, monkeypatch, path):
    force_path(monkeypatch, path)
    ops, device = ops_of(target), target.device
    u, x0, w, res, gamma = _op_args(device=device)
    L = torch.tensor([5, 1, 0], device=device)
    torch.library.opcheck(ops.chain_fwd.default, (u, x0, w, res, gamma, L, 1, 0, True))
    torch.library.opcheck(ops.chain_fwd.default, (u, x0, w, res, gamma, None, 1, 1, False))
    for need_delta in (False, True):
        args = (torch.randn_like(u), torch.randn_like(x0), u.clone(), w, res, gamma, L, 1, 0, need_delta)
        torch.library.opcheck(ops.chain_bwd.default, args)


def test_errors_name_the_argument(target, monkeypatch):
    ops, device = ops_of(target), target.device
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
    if device == "cuda":
        u, x0, w, res, gamma = _op_args()
        with pytest.raises(RuntimeError, match="w_hh: expected a tensor on"):
            fwd(u, x0, w.cpu(), res, gamma, None, 1, 0, False)
    else:
        assert emulator_launches() == []  # no failing call launched anything


def test_non_contiguous_inputs_are_accepted(target):
    """Read-only inputs may be strided (the op copies them); results equal the contiguous call."""
    ops, device = ops_of(target), target.device
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


@pytest.mark.parametrize("path", PATHS)
def test_zero_dim_res_and_gamma_read_without_a_copy(target, monkeypatch, path):
    """A 0-d diagonal res and a 0-d gamma (what the module passes for scalar r and gamma) give, on every path,
    forward and backward, bitwise the results of (H,) tensors holding the same value; the op reads the one
    value in the kernels and copies nothing: the profiler sees no tensor op inside it that (H,) ones do not
    cost. Positive control: a strided (H,) gamma costs a copy that the profiler sees."""
    from torch.profiler import profile
    force_path(monkeypatch, path)
    ops, device = ops_of(target), target.device
    T, B, H = 5, 3, 12
    g = torch.Generator().manual_seed(5)
    u, x0, go, ghn = (torch.randn(*s, generator=g, dtype=torch.float64).to(device)
                      for s in ((T, B, H), (B, H), (T, B, H), (B, H)))
    w = (torch.randn(H, H, generator=g, dtype=torch.float64) / H ** 0.5).to(device)
    L = torch.tensor([5, 2, 0], device=device)

    def run(res, gamma):
        with profile() as prof:
            fwd = ops.chain_fwd(u, x0, w, res, gamma, L, 0, 0, True)
            bwd = ops.chain_bwd(go, ghn, fwd[2], w, res, gamma, L, 0, 0, True)
        inner = sorted(e.name for e in prof.events() if e.name.startswith("aten::"))
        return inner, fwd + bwd

    vec = lambda v: torch.full((H,), v, dtype=torch.float64, device=device)  # noqa: E731
    ops_vector, want = run(vec(0.9), vec(0.3))
    ops_scalar, got = run(torch.tensor(0.9, dtype=torch.float64, device=device),
                          torch.tensor(0.3, dtype=torch.float64, device=device))
    for a, e in zip(got, want):
        assert torch.equal(a, e)
    assert ops_scalar == ops_vector, "0-d res and gamma cost tensor ops inside the op"
    ops_strided, _ = run(vec(0.9), torch.full((2 * H,), 0.3, dtype=torch.float64, device=device)[::2])
    assert "aten::copy_" in ops_strided and "aten::copy_" not in ops_vector
    check_launches(target, True, path)


def test_empty_sizes(target):
    ops, device = ops_of(target), target.device
    u, x0, w, res, gamma = _op_args(T=4, B=3, H=8, device=device)
    out, hn, a = ops.chain_fwd(u[:0], x0, w, res, gamma, None, 1, 0, True)
    assert out.shape == (0, 3, 8) and a.shape == (0, 3, 8) and torch.equal(hn, x0)
    g, dx0, delta = ops.chain_bwd(u[:0], x0, u[:0].clone(), w, res, gamma, None, 1, 0, True)
    assert torch.equal(dx0, x0) and g.shape == (0, 3, 8) and delta.shape == (0, 3, 8)
    out, hn, a = ops.chain_fwd(u[:, :0], x0[:0], w, res, gamma, None, 1, 0, False)
    assert out.shape == (4, 0, 8) and hn.shape == (0, 8) and a.numel() == 0
    if target.name == EMULATED:
        assert emulator_launches() == []


@GPU_ONLY
@pytest.mark.parametrize("path", PATHS)
def test_bitwise_deterministic_and_stream_aware(target, monkeypatch, path):
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


@GPU_ONLY
@pytest.mark.parametrize("path", PATHS)
def test_training_step_in_a_cuda_graph(target, monkeypatch, path):
    """A FusedWCRNN training step (forward, backward into the input, the state and every parameter) captured
    in a CUDA graph replays what eager mode computes, on new data each replay: what torch.cuda.graphs and
    torch.compile(mode="reduce-overhead") need to take the host out of a short sequence's step. Nothing in the
    op may wait for the host, allocate outside the caching allocator or launch outside the current stream."""
    from wcrnn_kernels import FusedWCRNN
    force_path(monkeypatch, path)
    torch.manual_seed(12)
    T, B, I, H = 7, 5, 3, 24
    model = FusedWCRNN(I, H, residual="rotational", r=0.9, learn_residual=True, learn_gamma=True,
                       backend="cuda", device="cuda", dtype=torch.float64)
    x = torch.randn(T, B, I, device="cuda", dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, B, H, device="cuda", dtype=torch.float64, requires_grad=True)
    g_out = torch.randn(T, B, H, device="cuda", dtype=torch.float64)
    params = [p for _, p in sorted(model.named_parameters())]
    leaves = [x, h0, *params]

    def step():
        for t in leaves:
            t.grad = None
        out, hn = model(x, h0)
        torch.autograd.backward([out, hn], [g_out, torch.ones_like(hn)])
        return out, hn

    side = torch.cuda.Stream()  # warm-up off the capture stream, as torch.cuda.graphs asks
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    for t in leaves:
        t.grad = None
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.current_stream()
    try:
        with torch.cuda.graph(graph):
            static_out, static_hn = step()
    finally:  # a failed capture leaves its side stream current: later tests in this worker would run there
        torch.cuda.set_stream(stream)
    static_grads = [t.grad for t in leaves]
    names = ["output", "h_n", "dx", "dh0"] + [n for n, _ in sorted(model.named_parameters())]
    outputs = []
    for seed in (13, 14):
        gen = torch.Generator(device="cuda").manual_seed(seed)
        with torch.no_grad():
            x.copy_(torch.randn(x.shape, generator=gen, device="cuda", dtype=torch.float64))
            g_out.copy_(torch.randn(g_out.shape, generator=gen, device="cuda", dtype=torch.float64))
        graph.replay()
        replayed = [t.clone() for t in (static_out, static_hn, *static_grads)]
        eager_out, eager_hn = step()
        eager = [eager_out.detach(), eager_hn.detach(), *[t.grad for t in leaves]]
        assert_all_close(replayed, eager, rtol=1e-12, names=names)
        outputs.append(replayed[0])
    assert not torch.equal(outputs[0], outputs[1])  # each replay read its own input


@GPU_ONLY
def test_second_device(target):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices (checks the device guard)")
    case = make_case("rotational", 6, 3, 20, lengths=True, seed=11)
    expected = reference(case, "tanh")
    actual = run_chain(on(case, "cuda:1"), "cuda", "tanh")
    assert_all_close(actual, expected, rtol=FLOAT64_RTOL, names=NAMES)


# ----------------------------------------------------------------------------------------------------------
# 64-bit indexing: T * B * H past 2^31 elements

def _need_gib(gib):
    free, _ = torch.cuda.mem_get_info()
    if free < gib * 2 ** 30:
        pytest.skip(f"needs {gib} GiB of free GPU memory, {free / 2 ** 30:.1f} GiB free")


@GPU_ONLY
@pytest.mark.slow
@pytest.mark.parametrize("path", ["block", "grid"])
def test_offsets_past_2_pow_31(target, path, monkeypatch):
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
