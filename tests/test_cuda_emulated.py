"""What only the CPU emulator of the CUDA kernels can check (tests/cuda_emu).

No GPU has been available to this project, so the CUDA kernels (csrc/cuda/) are compiled here a second time,
as C++, against a CPU emulator of the CUDA runtime and device language (tests/cuda_emu/: each CUDA thread a
fiber, __syncthreads() and the cooperative grid barrier real barriers, each block its own shared memory)
and registered for CPU tensors as backend "cuda-emulated" (tests/helpers.py: register_emulated_cuda), one of
the targets of the generic suite (test_chain.py, test_module.py) and of the CUDA kernels' own tests
(test_cuda.py: forced paths, tile heights, the ops). This file keeps what needs the emulator itself: its
self-tests (positive controls: small kernels with the bugs it claims to catch), the threads (and blocks)
between two barriers run forward, in reverse and shuffled, so a missing barrier changes the results, the
plans of a real H100 / A100 (emulated SM counts) at float32 / float16 / bfloat16, every launch's path from
the emulator's log, and the kernels under AddressSanitizer.

What this does not verify (see tests/cuda_emu/include/cuda_runtime.h): the GPU memory model (the .cg
loads and stores of the grid path's L2 exchange are plain accesses here), register limits, the device
math library's accuracy, speed. tests/test_cuda.py and scripts/gpu_check.sh do that on a GPU.

WCRNN_REQUIRE_CUDA_EMU=1 (set by CI) turns "the emulator did not build" into a failure instead of a skip.
"""
from __future__ import annotations

import os

import pytest
import torch

from helpers import (CUDA_PATHS, EMU_DEFAULTS, FLOAT64_RTOL, NAMES, asan_setup, assert_all_close, assert_launch_path,
                     check_low_precision, emulator_launches, force_cuda_path, make_case, on, reference,
                     register_emulated_cuda, run_chain, run_under_asan)
from sanitize_cases import cuda_path_refused
from wcrnn_kernels import FusedWCRNN

BACKEND = "cuda-emulated"
ORDERS = ("forward", "reverse", "shuffle")
H100 = {"WCRNN_EMU_SMS": "132", "WCRNN_EMU_SMEM_OPTIN": "232448"}
A100 = {"WCRNN_EMU_SMS": "108", "WCRNN_EMU_SMEM_OPTIN": "166912"}
PATHS = CUDA_PATHS
force_path = force_cuda_path
assert_path = assert_launch_path
launches = emulator_launches


@pytest.fixture(scope="module", autouse=True)
def emulated_backend():
    ok, why = register_emulated_cuda()
    if not ok:
        if os.environ.get("WCRNN_REQUIRE_CUDA_EMU") == "1":
            pytest.fail(f"WCRNN_REQUIRE_CUDA_EMU=1 but {why}")
        pytest.skip(why)


@pytest.fixture(autouse=True)
def emulated_device(monkeypatch, poison_empty):
    """A small emulated GPU (8 SMs, an H100's shared memory per block), NaN-poisoned outputs, no path forced."""
    monkeypatch.setenv("WCRNN_POISON_OUTPUTS", "1")
    for var in ("WCRNN_CUDA_PATH", "WCRNN_CUDA_ROWS", "WCRNN_CUDA_ROW_GROUPS", "WCRNN_EMU_ORDER", "WCRNN_EMU_SEED"):
        monkeypatch.delenv(var, raising=False)
    for k, v in EMU_DEFAULTS.items():
        monkeypatch.setenv(k, v)
    launches()  # drop earlier records


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
# Thread and block order between barriers

@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["rotational", "dense"])
def test_thread_and_block_order_does_not_matter(monkeypatch, path, kind):
    """Between two barriers the threads (and the blocks of the grid path) run forward, in reverse and
    shuffled: a read of something another thread writes in the same phase would change the result."""
    force_path(monkeypatch, path)
    case = make_case(kind, 6, 11, 34, lengths=True, seed=13)
    # the register path has no float64 dense form: float32, within the low-precision rule
    lowp = cuda_path_refused(path, kind, 34) is not None
    expected = None if lowp else reference(case, "tanh")
    results = []
    for order in ORDERS:
        monkeypatch.setenv("WCRNN_EMU_ORDER", order)
        if lowp:
            results.append(check_low_precision(case, BACKEND, torch.float32, "tanh")[0])
        else:
            results.append(run_chain(case, BACKEND, "tanh"))
            assert_all_close(results[-1], expected, rtol=FLOAT64_RTOL, names=NAMES)
    for other in results[1:]:
        for n, a, b in zip(NAMES, results[0], other):
            assert torch.equal(a, b), f"{n}: the result depends on the thread order"


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
    check_low_precision(make_case(kind, T, B, H, lengths=True, seed=6), BACKEND, torch.float32, nonlinearity)
    log = launches()
    if H == 1024:
        assert_path(log, "grid")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["none", "rotational", "dense"])
@pytest.mark.parametrize("T,B,H", [(20, 16, 64), (6, 4, 300), (4, 8, 512)])
def test_half_precision_within_torch_backend_error(monkeypatch, dtype, kind, T, B, H):
    for k, v in H100.items():
        monkeypatch.setenv(k, v)
    check_low_precision(make_case(kind, T, B, H, lengths=True, seed=7), BACKEND, dtype, "tanh")


# ----------------------------------------------------------------------------------------------------------
# Launch logs of a whole model; the planner on a small device

@pytest.mark.parametrize("kind", ["scalar", "rotational", "dense"])
def test_barriers_per_step(monkeypatch, kind):
    """What each path costs in barriers, from the emulator's count over one block (B = 1): the block path three
    per step (after staging, after the partial sums, after the epilogue); the register path one per step, plus
    two at the start, in both directions; the tiled register path two per step (after the partial sums, after the
    epilogue) plus two, in both directions (the dense form: no tiled path). A change
    that adds a barrier to a step shows here (on the GPU a barrier is a visible part of a step of a few hundred
    cycles)."""
    T = 12
    case = on(make_case(kind, T, 1, 32, seed=16), "cpu", torch.float32)  # float32: the register path's dense form
    counts = {}
    for path in ("block", "regs") + (("tiled",) if kind != "dense" else ()):
        force_path(monkeypatch, path)
        run_chain(case, BACKEND, "tanh")
        (fwd, fwd_threads), (bwd, bwd_threads) = [(int(line.split("block_barriers=")[1].split()[0]),
                                                   int(line.split("block=")[1].split()[0])) for line in launches()]
        counts[path] = (fwd, bwd)
        if path == "tiled":  # H = 32: one thread per word of the 64-word padded row
            assert (fwd_threads, bwd_threads) == (64, 64)
    assert counts["regs"] == (T + 2, T + 2), counts
    assert counts["block"] == (3 * T + 1, 3 * T + 2), counts
    if kind != "dense":
        assert counts["tiled"] == (2 * T + 2, 2 * T + 2), counts


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
    assert_all_close(results[1], results[0], rtol=FLOAT64_RTOL, names=names)


def test_device_too_small_for_the_grid_path(monkeypatch):
    """A device too small for the grid path: the planner says so, naming the backends that run it, and
    launches nothing."""
    u = torch.zeros(2, 2, 1024)
    args = (u, torch.zeros(2, 1024), torch.zeros(1024, 1024), torch.zeros(1024, 1024), torch.zeros(1024))
    monkeypatch.setenv("WCRNN_EMU_SMS", "2")
    with pytest.raises(RuntimeError, match=r"too large for the CUDA kernels on this device.*backend='triton'"):
        torch.ops.wcrnn_cuda_emu.chain_fwd(*args, None, 2, 0, False)
    assert launches() == []


# ----------------------------------------------------------------------------------------------------------
# Memory safety: the emulated kernels under AddressSanitizer + UBSan. Every global-memory access of the CUDA
# kernels is then a checked access to a CPU tensor (allocated to its exact size), and every block's shared
# memory is its own exact-size allocation, so an index past the end of either aborts the run with a report.



def _asan_run(mode, timeout):
    _, skip = asan_setup()
    if skip is not None:
        pytest.skip(skip)
    args = ["sanitize_cases.py", "cuda-emulated"] + ([] if mode == "cases" else ["--selftest", mode])
    return run_under_asan(script=args, timeout=timeout)  # the cases: tests/sanitize_cases.py


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
