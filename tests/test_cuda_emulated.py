"""The CUDA backend's own code, run on this CPU by an emulator, against the float64 reference.

No GPU has been available to this project, so the CUDA kernels (csrc/cuda/) are compiled here a second time,
as C++, against a CPU emulator of the CUDA runtime and device language (tests/cuda_emu/: each CUDA thread a
fiber, __syncthreads() and the cooperative grid barrier real barriers, each block its own shared memory)
and registered for CPU tensors as ``wcrnn_cuda_emu::chain_fwd`` / ``chain_bwd``. Kernels, launch planning,
argument checks and allocation are the unchanged sources of chain_fwd.cu, chain_bwd.cu and chain_ops.cu;
the Python side is the "cuda" backend's class with the op namespace swapped. The suite mirrors
tests/test_cuda.py (the GPU suite) and adds what only an emulator can do: every launch's path is checked
from the emulator's log, and the threads (and blocks) between two barriers run forward, in reverse and
shuffled, so a missing barrier changes the results.

What this does not verify (see tests/cuda_emu/include/cuda_runtime.h): the GPU memory model (the .cg
loads and stores of the grid path's L2 exchange are plain accesses here), register limits, the device
math library's accuracy, speed. tests/test_cuda.py and scripts/gpu_check.sh do that on a GPU.

WCRNN_REQUIRE_CUDA_EMU=1 (set by CI) turns "the emulator did not build" into a failure instead of a skip.
"""
from __future__ import annotations

import os

import pytest
import torch

import cuda_emu
import test_chain
import test_cuda
import test_module
from helpers import DIFF, KINDS, NAMES, assert_all_close, check_saved_preactivations, make_case
from test_cuda import PATHS, SIZES, _errors, compare_with_reference, force_path, on, reference, run_chain, select
from wcrnn_kernels import FusedWCRNN, wcrnn_chain
from wcrnn_kernels.backends import _REGISTRY, _RESOLVED, get_backend, register_backend
from wcrnn_kernels.backends.compiled import WcrnnCOps, register_fakes
from wcrnn_kernels.backends.cuda import CudaBackend

BACKEND = "cuda-emulated"
ORDERS = ("forward", "reverse", "shuffle")
H100 = {"WCRNN_EMU_SMS": "132", "WCRNN_EMU_SMEM_OPTIN": "232448"}
A100 = {"WCRNN_EMU_SMS": "108", "WCRNN_EMU_SMEM_OPTIN": "166912"}


class EmulatedCudaBackend(WcrnnCOps):
    """The "cuda" backend's Python glue on the emulated ops: CPU tensors, the CUDA backend's dtypes and limits."""

    name = BACKEND
    ops_namespace = "wcrnn_cuda_emu"

    def availability(self):
        return True, "the CUDA kernels under the CPU emulator of tests/cuda_emu"

    def supports(self, device, dtype, hidden_size):
        if device.type != "cpu":
            return f"runs CPU tensors only, got a {device.type} tensor"
        return CudaBackend().supports(torch.device("cuda"), dtype, hidden_size)


@pytest.fixture(scope="module", autouse=True)
def emulated_backend():
    ok, why = cuda_emu.load()
    if not ok:
        if os.environ.get("WCRNN_REQUIRE_CUDA_EMU") == "1":
            pytest.fail(f"WCRNN_REQUIRE_CUDA_EMU=1 but {why}")
        pytest.skip(why)
    register_fakes("wcrnn_cuda_emu")
    register_backend(EmulatedCudaBackend())
    yield
    _REGISTRY.pop(BACKEND, None)
    _RESOLVED.clear()


@pytest.fixture(autouse=True)
def emulated_device(monkeypatch, poison_empty):
    """A small emulated GPU (8 SMs, an H100's shared memory per block), NaN-poisoned outputs, no path forced."""
    monkeypatch.setenv("WCRNN_POISON_OUTPUTS", "1")
    for var in ("WCRNN_CUDA_PATH", "WCRNN_CUDA_ROWS", "WCRNN_CUDA_ROW_GROUPS", "WCRNN_EMU_ORDER", "WCRNN_EMU_SEED"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WCRNN_EMU_SMS", "8")
    monkeypatch.setenv("WCRNN_EMU_SMEM_OPTIN", "232448")
    launches()  # drop earlier records


def launches() -> list[str]:
    """The emulator's record of the kernel launches since the last call, one line each."""
    return list(torch.ops.wcrnn_cuda_emu.take_log())


def assert_path(log, path, n_min=2, several_blocks=True):
    """Every launch in `log` took the expected path (the grid path on more than one block unless H <= 2,
    a single unit slice)."""
    assert len(log) >= n_min, log
    for line in log:
        assert "FAILED" not in line, line
        if path == "block":
            assert line.startswith("ordinary"), line
        else:
            assert line.startswith("cooperative"), line
            if several_blocks:
                assert line.split()[1] != "grid=1x1x1", f"the grid path ran on a single block: {line}"


def check_launches(ran, path, several_blocks=True):
    """The case ran on the forced path, or (refused by the planner) launched nothing."""
    log = launches()
    if not ran:
        assert log == [], log
        return
    assert_path(log, "block" if path == "block" else "grid", several_blocks=several_blocks)


# ----------------------------------------------------------------------------------------------------------
# The emulator catches what it claims to (positive controls: small kernels with the bugs)

@pytest.mark.parametrize("name,message", [
    ("divergent_barrier", r"__syncthreads\(\) at .* is reached by 128 threads while 128 have returned"),
    ("two_barrier_sites", r"threads wait at different __syncthreads\(\)"),
    ("grid_barrier_ordinary_launch", r"grid.sync\(\) at .* in a launch that is not cooperative"),
    ("block_exits_before_grid_barrier", r"reached by 768 threads while 256 have returned \(a GPU would hang\)"),
    ("deep_stack", r"block \(0, 0, 0\): thread 0 overflowed its 128 KiB emulator stack"),
    ("smem_over_default_limit", r"65536 bytes of dynamic shared memory, the kernel's limit is 49152"),
    ("cooperative_too_large", r"cooperative launch of 65 blocks, at most 8 per SM x 8 SMs fit"),
])
def test_emulator_reports_launch_bugs(name, message):
    import re
    out = torch.zeros(8 * 256 * 9)
    result = torch.ops.wcrnn_cuda_emu.selftest(name, out)
    assert re.search(message, result), result


def test_emulator_exposes_a_missing_barrier(monkeypatch):
    """With the barrier every order gives the right answer; without it, every order gives a wrong one."""
    expected = torch.cat([torch.roll(torch.arange(1, 257, dtype=torch.float32), -1)] * 4)
    for order in ORDERS:
        monkeypatch.setenv("WCRNN_EMU_ORDER", order)
        out = torch.zeros(1024)
        assert torch.ops.wcrnn_cuda_emu.selftest("neighbour", out) == "ok"
        assert torch.equal(out, expected), order
        out = torch.zeros(1024)
        assert torch.ops.wcrnn_cuda_emu.selftest("neighbour_no_barrier", out) == "ok"
        assert not torch.equal(out, expected), f"{order}: a missing barrier went unnoticed"


# ----------------------------------------------------------------------------------------------------------
# float64: both paths, every residual kind, both nonlinearities, with and without lengths, awkward sizes

@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T,B,H", SIZES)
def test_matches_reference_float64(monkeypatch, path, kind, nonlinearity, lengths, T, B, H):
    force_path(monkeypatch, path)
    case = make_case(kind, T, B, H, lengths=lengths)
    ran = compare_with_reference(case, BACKEND, "cpu", path, kind, H, nonlinearity)
    check_launches(ran, path, several_blocks=H > 2)


@pytest.mark.parametrize("rows", ["1", "4", "8"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["diagonal", "rotational", "dense"])
def test_every_tile_height(monkeypatch, rows, path, kind):
    """Each compiled tile height; B = 13, H = 130: 8-row tiles hold more than 4 x 256 epilogue elements (the
    late-load tail), partial tiles / chunks (one row group: 13, 4 or 2 chunks per step)."""
    force_path(monkeypatch, path)
    monkeypatch.setenv("WCRNN_CUDA_ROWS", rows)
    case = make_case(kind, 5, 13, 130, lengths=True, seed=3)
    ran = compare_with_reference(case, BACKEND, "cpu", path, kind, 130, "tanh")
    check_launches(ran, path)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["rotational", "dense"])
def test_thread_and_block_order_does_not_matter(monkeypatch, path, kind):
    """Between two barriers the threads (and the blocks of the grid path) run forward, in reverse and
    shuffled: a read of something another thread writes in the same phase would change the result."""
    force_path(monkeypatch, path)
    case = make_case(kind, 6, 11, 34, lengths=True, seed=13)
    expected = reference(case, "tanh")
    results = []
    for order in ORDERS:
        monkeypatch.setenv("WCRNN_EMU_ORDER", order)
        results.append(run_chain(case, BACKEND, "tanh"))
        assert_all_close(results[-1], expected, rtol=1e-10, names=NAMES)
    for other in results[1:]:
        for n, a, b in zip(NAMES, results[0], other):
            assert torch.equal(a, b), f"{n}: the result depends on the thread order"


@pytest.mark.parametrize("path", PATHS)
def test_only_some_gradients(monkeypatch, path):
    """Without residual / gamma gradients the op asks for no delta (need_delta=False)."""
    force_path(monkeypatch, path)
    case = make_case("rotational", 7, 5, 24, lengths=True, seed=4)
    diff = ("u", "x0", "w_hh")
    expected, names = select(reference(case, "relu", diff), diff)
    actual, _ = select(run_chain(case, BACKEND, "relu", diff), diff)
    assert_all_close(actual, expected, rtol=1e-10, names=names)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["scalar", "rotational", "dense"])
def test_gradcheck(monkeypatch, path, kind):
    force_path(monkeypatch, path)
    case = make_case(kind, 3, 2, 6, lengths=True, seed=5)
    args = [case[k].detach().clone().requires_grad_(True) for k in DIFF]

    def f(u, x0, w, res, gamma):
        return wcrnn_chain(u, x0, w, case["res_kind"], res, gamma, case["lengths"], "tanh", BACKEND)

    assert torch.autograd.gradcheck(f, args, fast_mode=True)


# ----------------------------------------------------------------------------------------------------------
# float32, float16, bfloat16 with the plans of a real H100 / A100 (132 / 108 SMs): H = 512 and 1024 take
# the grid path under "auto", as they would on the GPU

@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("kind", ["scalar", "rotational", "dense"])
@pytest.mark.parametrize("T,B,H,device", [(12, 32, 128, "H100"), (5, 3, 1024, "H100"), (6, 70, 256, "A100"),
                                           (9, 5, 17, "H100")])
def test_float32_within_reference_float32_error(monkeypatch, kind, nonlinearity, T, B, H, device):
    for k, v in (H100 if device == "H100" else A100).items():
        monkeypatch.setenv(k, v)
    case = make_case(kind, T, B, H, lengths=True, seed=6)
    c32 = on(case, dtype=torch.float32)
    expected = reference(c32, nonlinearity)  # float64 reference of the float32-rounded inputs
    actual = run_chain(c32, BACKEND, nonlinearity)
    log = launches()
    if H == 1024:
        assert_path(log, "grid")
    ref32 = run_chain(c32, "reference", nonlinearity)  # the reference loop itself in float32
    for n, ea, er in zip(NAMES, _errors(actual, expected), _errors(ref32, expected)):
        assert ea <= max(4 * er, 1e-5), f"{n}: emulated cuda float32 error {ea:.2e}, reference float32 error {er:.2e}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["none", "rotational", "dense"])
@pytest.mark.parametrize("T,B,H", [(20, 16, 64), (6, 4, 300), (4, 8, 512)])
def test_half_precision_within_torch_backend_error(monkeypatch, dtype, kind, T, B, H):
    for k, v in H100.items():
        monkeypatch.setenv(k, v)
    case = make_case(kind, T, B, H, lengths=True, seed=7)
    ch = on(case, dtype=dtype)
    expected = reference(ch, "tanh")
    actual = run_chain(ch, BACKEND, "tanh")
    other = run_chain(ch, "torch", "tanh")
    step = torch.finfo(dtype).eps
    for n, ea, eo in zip(NAMES, _errors(actual, expected), _errors(other, expected)):
        assert ea <= 2 * eo + step, f"{n}: emulated cuda {dtype} error {ea:.2e}, torch backend error {eo:.2e}"


def test_module_bidirectional_packed_matches_reference():
    """FusedWCRNN on the emulated backend: two layers, both directions, a PackedSequence, every gradient."""
    torch.manual_seed(14)
    T, B, I, H = 7, 4, 3, 10
    kw = dict(num_layers=2, bidirectional=True, residual="rotational", r=0.97, gamma=0.4, learn_residual=True,
              learn_gamma=True, dtype=torch.float64)
    ref = FusedWCRNN(I, H, backend="reference", **kw)
    emu = FusedWCRNN(I, H, backend=BACKEND, **kw)
    emu.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = torch.tensor([7, 5, 2, 1])
    results = []
    for model in (ref, emu):
        xi = x.clone().requires_grad_(True)
        packed = torch.nn.utils.rnn.pack_padded_sequence(xi, lengths, enforce_sorted=False)
        out, hn = model(packed)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out)
        g = torch.Generator().manual_seed(15)
        loss = (out * torch.randn(out.shape, generator=g, dtype=torch.float64)).sum() + \
            (hn * torch.randn(hn.shape, generator=g, dtype=torch.float64)).sum()
        params = [p for _, p in sorted(model.named_parameters())]
        results.append([out.detach(), hn.detach(), *torch.autograd.grad(loss, [xi] + params)])
    assert_path(launches(), "block", n_min=8)  # 2 layers x 2 directions x (forward + backward)
    names = ["output", "h_n", "dx"] + [n for n, _ in sorted(ref.named_parameters())]
    assert_all_close(results[1], results[0], rtol=1e-10, names=names)


# ----------------------------------------------------------------------------------------------------------
# The generic backend suites (test_chain.py, test_module.py) on the emulated backend

@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("kind", ["diagonal", "rotational", "dense"])
def test_backend_contract_saved_preactivations(monkeypatch, path, kind, lengths):
    force_path(monkeypatch, path)
    check_saved_preactivations(get_backend(BACKEND), make_case(kind, 7, 4, 10, lengths=lengths, seed=5))


def test_second_backward_with_retain_graph():
    test_chain.test_second_backward_with_retain_graph(BACKEND)


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "packed"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T,B,H", [(4, 3, 17), (3, 2, 130)])
def test_module_every_gradient_matches_reference(kind, nonlinearity, lengths, T, B, H):
    test_module.test_module_every_gradient_matches_reference(BACKEND, kind, nonlinearity, lengths, T, B, H)


# ----------------------------------------------------------------------------------------------------------
# The ops themselves: schema / fake tensors, errors, strided inputs, empty sizes (as in test_cuda.py)

OPS_ARGS = (torch.ops.wcrnn_cuda_emu, "cpu")


@pytest.mark.parametrize("path", PATHS)
def test_opcheck(monkeypatch, path):
    force_path(monkeypatch, path)
    test_cuda.check_opcheck(*OPS_ARGS)


def test_errors_name_the_argument(monkeypatch):
    test_cuda.check_errors_name_the_argument(monkeypatch, *OPS_ARGS)
    # a device too small for the grid path: the planner says so, naming the backends that run it
    big = test_cuda._op_args(T=2, B=2, H=1024, res_kind=2, device="cpu")
    monkeypatch.setenv("WCRNN_EMU_SMS", "2")
    with pytest.raises(RuntimeError, match=r"too large for the CUDA kernels on this device.*backend='triton'"):
        torch.ops.wcrnn_cuda_emu.chain_fwd(*big, None, 2, 0, False)
    assert launches() == []  # no failing call launched anything


def test_non_contiguous_inputs_are_accepted():
    test_cuda.check_non_contiguous_inputs_are_accepted(*OPS_ARGS)


def test_empty_sizes():
    test_cuda.check_empty_sizes(*OPS_ARGS)
    assert launches() == []


# ----------------------------------------------------------------------------------------------------------
# Memory safety: the emulated kernels under AddressSanitizer + UBSan. Every global-memory access of the CUDA
# kernels is then a checked access to a CPU tensor (allocated to its exact size), and every block's shared
# memory is its own exact-size allocation, so an index past the end of either aborts the run with a report.

_ASAN_CASES = r"""
import os, subprocess, sys
os.environ.pop("LD_PRELOAD", None)  # the compiler and ninja run without the sanitizer runtime
sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
import torch
import cuda_emu
ok, where = cuda_emu.load(sanitize=True)
assert ok, where
lib = [os.path.join(where, f) for f in os.listdir(where) if f.endswith(".so")][0]
syms = subprocess.run(["nm", "-D", lib], capture_output=True, text=True).stdout
assert "__asan_report" in syms and "__ubsan_handle" in syms, "the library is not instrumented"
print("instrumented library:", lib, flush=True)
MODE = {mode!r}
if MODE != "cases":
    out = torch.zeros(1024)
    print(torch.ops.wcrnn_cuda_emu.selftest(MODE, out), flush=True)
    sys.exit(0)

from wcrnn_kernels import canonical_residual
from wcrnn_kernels.backends import get_backend
ops, ref = torch.ops.wcrnn_cuda_emu, get_backend("torch")
os.environ["WCRNN_POISON_OUTPUTS"] = "1"
g = torch.Generator().manual_seed(0)
n = 0
def run(dtype, kind, T, B, H, lengths, nonlin):
    global n
    if kind == "rotational" and H % 2:
        H += 1
    r = {{"diagonal": torch.rand(H, generator=g, dtype=torch.float64),
         "rotational": torch.rand(H // 2, generator=g, dtype=torch.float64),
         "dense": torch.randn(H, H, generator=g, dtype=torch.float64) / H}}[kind]
    theta = torch.rand(H // 2, generator=g, dtype=torch.float64) if kind == "rotational" else None
    rk, res = canonical_residual(kind, H, r, theta, dtype=dtype)
    u, x0 = torch.randn(T, B, H, generator=g).to(dtype), torch.randn(B, H, generator=g).to(dtype)
    w, gam = (torch.randn(H, H, generator=g) / H ** 0.5).to(dtype), torch.rand(H, generator=g).to(dtype)
    L = torch.randint(0, T + 1, (B,), generator=g) if lengths else None
    out, hn, a = ops.chain_fwd(u, x0, w, res, gam, L, rk, nonlin, True)
    cd = torch.float64 if dtype == torch.float64 else torch.float32
    f = lambda t: t.to(cd)
    go, gh = torch.randn(T, B, H, generator=g).to(cd), torch.randn(B, H, generator=g).to(cd)
    got = ops.chain_bwd(go, gh, f(a), f(w), f(res), f(gam), L, rk, nonlin, True)
    want_f = ref.chain_fwd(f(u), f(x0), f(w), rk, f(res), f(gam), L, nonlin, True)
    want_b = ref.chain_bwd(go, gh, want_f[2], f(w), rk, f(res), f(gam), L, nonlin, True)
    # measured worst |x - y| / (1 + |y|) against the torch backend: 1.4e-15, 1.1e-6, 4.1e-4 (float16), 3.0e-3
    # (bfloat16: half its epsilon, the rounding of the outputs)
    tol = {{torch.float64: 1e-12, torch.float32: 1e-5}}.get(dtype, torch.finfo(dtype).eps)
    for x, y in zip((out, hn, a) + tuple(got), tuple(want_f) + tuple(want_b)):
        assert torch.allclose(f(x), y, rtol=tol, atol=tol), (dtype, kind, T, B, H, lengths, nonlin)
    n += 1

for path, rows, groups in (("block", "", ""), ("grid", "", ""), ("grid", "8", "1"), ("block", "8", "")):
    os.environ["WCRNN_CUDA_PATH"], os.environ["WCRNN_CUDA_ROWS"] = path, rows
    os.environ["WCRNN_CUDA_ROW_GROUPS"] = groups
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        for kind in ("diagonal", "rotational", "dense"):
            for T, B, H in ((3, 5, 17), (1, 1, 2), (2, 13, 130)):
                if dtype == torch.float64 and kind == "dense" and H == 130 and path == "block":
                    continue  # does not fit one block (the planner refuses; tested above)
                run(dtype, kind, T, B, H, lengths=(T + B) % 2 == 0, nonlin=(n % 2))
for k in ("WCRNN_CUDA_PATH", "WCRNN_CUDA_ROWS", "WCRNN_CUDA_ROW_GROUPS"):
    os.environ.pop(k)
os.environ["WCRNN_EMU_SMS"] = "132"  # an H100's plan for H = 1024: 128 blocks of the grid path
run(torch.float32, "dense", 2, 3, 1024, lengths=True, nonlin=0)
print(f"clean: {{n}} forward+backward cases", flush=True)
"""


def _asan_run(mode, timeout):
    from test_cpp_memsafety import SKIP, _run
    if SKIP is not None:
        pytest.skip(SKIP)
    return _run(_ASAN_CASES.format(mode=mode), timeout=timeout)


def test_sanitizer_catches_a_kernel_writing_past_a_tensor():
    """Positive control: an emulated kernel that writes one float past its output is reported."""
    proc = _asan_run("write_past_end", timeout=600)
    assert "instrumented library" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.returncode == 86 and "heap-buffer-overflow" in proc.stderr, proc.stderr[-4000:]


def test_kernels_under_address_sanitizer():
    proc = _asan_run("cases", timeout=900)
    report = proc.stdout[-2000:] + proc.stderr[-6000:]
    assert proc.returncode == 0, f"sanitizer run failed (exit {proc.returncode}):\n{report}"
    assert "ERROR: AddressSanitizer" not in proc.stderr and "runtime error:" not in proc.stderr, report
    assert "clean:" in proc.stdout, report
