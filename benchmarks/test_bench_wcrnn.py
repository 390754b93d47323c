"""Throughput of one WCRNN layer per backend, beside nn.RNN, the reference loop and the GEMM floor.

    pytest benchmarks/ --benchmark-only                     # measure (CPU, float32, shapes S1-S4)
    pytest benchmarks/ --benchmark-only --benchmark-json=out.json
    WCRNN_BENCH_DEVICE=cuda WCRNN_BENCH_DTYPE=bfloat16 pytest benchmarks/ --benchmark-only
    pytest benchmarks/ --benchmark-disable                  # CI: every benchmark runs once, as a test

Each WCRNN measurement is a full ``FusedWCRNN`` layer (input projection + chain) with the default
residual (scalar r = 1, gamma = 0.01), against ``nn.RNN`` with the same (T, B, I, H). ``forward`` runs
under ``torch.no_grad()``; ``forward+backward`` backpropagates one upstream gradient into output and h_n
(input, weights and biases all require grad, as in training).
"""
from __future__ import annotations

import time

import pytest
import torch

from bench_config import SHAPES, STEP_SHAPES, bench_device, bench_dtype, bench_shapes, layer_call, step_call
from wcrnn_kernels import available_backends
from wcrnn_kernels.backends import get_backend

KERNEL_BACKENDS = ("torch", "cpp", "triton", "cuda")
IMPLS = ("nn.RNN", "reference") + KERNEL_BACKENDS
MODES = ("forward", "forward+backward")
TARGET_SECONDS = 1.5  # per benchmark, split over rounds


def _sync():
    if bench_device() == "cuda":
        torch.cuda.synchronize()


def _skip_unless_runs(impl, H):
    if bench_device() == "cuda" and not torch.cuda.is_available():
        pytest.skip("WCRNN_BENCH_DEVICE=cuda but no CUDA device is visible")
    if impl in ("nn.RNN", "reference", "gemm-floor"):
        return
    report = available_backends()
    if impl not in report:
        pytest.skip(f"backend {impl!r} is not part of this build")
    if not report[impl]["available"]:
        pytest.skip(f"backend {impl!r} unavailable: {report[impl]['reason']}")
    why = get_backend(impl).supports(torch.device(bench_device()), bench_dtype(), H)
    if why is not None:
        pytest.skip(f"backend {impl!r} does not run this shape/dtype: {why}")


def _run(benchmark, fn, info):
    """Time fn with as many rounds as fit TARGET_SECONDS (at least 3), after warm-up calls."""
    _sync()
    if benchmark.disabled:
        benchmark(fn)
        return
    fn()  # the first call may build, compile or autotune: never part of the estimate
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    rounds = max(3, min(50, int(TARGET_SECONDS / max(once, 1e-6))))
    benchmark.extra_info.update(info)
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info["tokens_per_s"] = round(info["T"] * info["B"] / benchmark.stats.stats.mean, 1)


def _info(shape, mode, impl):
    T, B, I, H = SHAPES[shape]
    return dict(shape=shape, mode=mode, impl=impl, T=T, B=B, I=I, H=H, device=bench_device(),
                dtype=str(bench_dtype()).replace("torch.", ""), threads=torch.get_num_threads())


@pytest.mark.parametrize("shape", bench_shapes())
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS)
def test_layer(benchmark, shape, mode, impl):
    T, B, I, H = SHAPES[shape]
    _skip_unless_runs(impl, H)
    fn = layer_call(impl, mode, T, B, I, H, bench_device(), bench_dtype())

    def timed():
        fn()
        _sync()

    _run(benchmark, timed, _info(shape, mode, impl))


@pytest.mark.parametrize("shape", bench_shapes())
def test_gemm_floor(benchmark, shape):
    """The forward chain's floor: T dependent-size products (B x H) @ (H x H), nothing else."""
    T, B, I, H = SHAPES[shape]
    _skip_unless_runs("gemm-floor", H)
    floor = layer_call("gemm-floor", "floor", T, B, I, H, bench_device(), bench_dtype())

    def fn():
        floor()
        _sync()

    _run(benchmark, fn, _info(shape, "floor", "gemm-floor"))


@pytest.mark.parametrize("shape", list(STEP_SHAPES))
@pytest.mark.parametrize("impl", ("nn.RNN",) + KERNEL_BACKENDS)
def test_step_by_step(benchmark, shape, impl):
    """Generation-style use: one T = 1 call per step (STEP_SHAPES), where the host cost of a call counts."""
    calls, B, I, H = STEP_SHAPES[shape]
    _skip_unless_runs(impl, H)
    fn = step_call(impl, calls, B, I, H, bench_device(), bench_dtype())

    def timed():
        fn()
        _sync()

    info = dict(shape=shape, mode="step-by-step", impl=impl, T=calls, B=B, I=I, H=H, device=bench_device(),
                dtype=str(bench_dtype()).replace("torch.", ""), threads=torch.get_num_threads())
    _run(benchmark, timed, info)
