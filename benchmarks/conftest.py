"""Benchmark harness plumbing: device/dtype selection, baselines in the same run, ratios in every result.

Environment:
    WCRNN_BENCH_DEVICE   cpu (default) or cuda
    WCRNN_BENCH_DTYPE    float32 (default), bfloat16 or float16
    WCRNN_BENCH_SHAPES   comma-separated subset of S1,S2,S3,S4,G4 (default S1-S4; G4 added on cuda)

Every result carries in ``extra_info``: the shape, tokens per second (T*B / mean time), the ratio to
``nn.RNN`` at the same shape, mode, device and dtype (> 1 means faster than nn.RNN), the ratio to the
reference loop and, for forward results, the multiple of the per-step GEMM floor (T x one (B x H) @ (H x H)
``torch.mm``). Ratios are filled in once every benchmark of the run has been measured, so they always
compare numbers taken in one run. A summary table is printed at the end of the run.
"""
from __future__ import annotations

import os
import platform

import torch

from bench_config import bench_device, bench_dtype


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["torch_num_threads"] = torch.get_num_threads()
    machine_info["bench_device"] = bench_device()
    machine_info["bench_dtype"] = str(bench_dtype())
    try:
        import triton
        machine_info["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001 - only reporting
        machine_info["triton"] = f"unavailable ({type(e).__name__})"
    if bench_device() == "cuda" and torch.cuda.is_available():
        machine_info["device_name"] = torch.cuda.get_device_name()
        machine_info["cuda"] = torch.version.cuda
    else:
        machine_info["device_name"] = f"CPU: {_cpu_model()}, {os.cpu_count()} logical cores"
    from wcrnn_kernels import available_backends
    machine_info["wcrnn_backends"] = {k: v["available"] for k, v in available_backends().items()}


def _fill_ratios(benchmarks):
    """extra_info ratios against nn.RNN, the reference loop and the GEMM floor of the same run."""
    by_key = {}
    for b in benchmarks:
        info = b["extra_info"] if isinstance(b, dict) else b.extra_info
        stats = b["stats"] if isinstance(b, dict) else b.stats
        mean = stats["mean"] if isinstance(stats, dict) else stats.mean
        by_key[(info.get("shape"), info.get("mode"), info.get("impl"))] = (info, mean)
    for (shape, mode, impl), (info, mean) in by_key.items():
        if impl is None:
            continue
        for base, key in (("nn.RNN", "ratio_vs_nn_rnn"), ("reference", "ratio_vs_reference")):
            if (shape, mode, base) in by_key:
                info[key] = round(by_key[(shape, mode, base)][1] / mean, 3)
        if mode == "forward" and (shape, "floor", "gemm-floor") in by_key:
            info["multiple_of_gemm_floor"] = round(mean / by_key[(shape, "floor", "gemm-floor")][1], 3)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    _fill_ratios(output_json["benchmarks"])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks or session.disabled:
        return
    rows = [b for b in session.benchmarks if getattr(b, "stats", None) is not None]
    if not rows:
        return
    _fill_ratios(rows)
    tr = terminalreporter
    tr.write_sep("=", f"WCRNN benchmark summary ({bench_device()}, {bench_dtype()}, "
                      f"{torch.get_num_threads()} threads)")
    tr.write_line(f"{'shape':5} {'mode':16} {'impl':10} {'mean ms':>10} {'us/step':>9} {'tokens/s':>12} "
                  f"{'vs nn.RNN':>9} {'vs ref':>8} {'x floor':>8}")
    order = {"nn.RNN": 0, "reference": 1, "gemm-floor": 9}
    for b in sorted(rows, key=lambda b: (b.extra_info.get("shape"), b.extra_info.get("mode"),
                                         order.get(b.extra_info.get("impl"), 5), b.extra_info.get("impl"))):
        i = b.extra_info
        T = i.get("T", 1)
        tr.write_line(f"{i.get('shape', ''):5} {i.get('mode', ''):16} {i.get('impl', ''):10} "
                      f"{b.stats.mean * 1e3:10.2f} {b.stats.mean * 1e6 / T:9.1f} "
                      f"{i.get('tokens_per_s', 0):12.0f} {i.get('ratio_vs_nn_rnn', float('nan')):9.2f} "
                      f"{i.get('ratio_vs_reference', float('nan')):8.2f} "
                      f"{i.get('multiple_of_gemm_floor', float('nan')):8.2f}")
