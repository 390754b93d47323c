"""The GPU session's script, dry-run on this CPU machine so that it cannot rot between GPU draws.

``bash scripts/gpu_check.sh --dry-run`` runs tiers 1 and 2 with the Triton kernels under the interpreter and the
CUDA kernels under the CPU emulator of tests/cuda_emu (planned as for an H100): the same scripts, steps,
timeouts and result files a GPU run makes, at small sizes. This checks the plumbing (every step runs, every
result file is written and parses, the smoke passes, every benchmark line is measured, a refused plan is
recorded and skipped), not the GPU. WCRNN_REQUIRE_CUDA_EMU=1 (CI) turns a missing prerequisite into a failure.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def _missing():
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        return "bash and coreutils' timeout are needed"
    try:
        import triton  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"triton cannot be imported ({e})"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler for the CUDA emulator"
    return None


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    why = _missing()
    if why is not None:
        if os.environ.get("WCRNN_REQUIRE_CUDA_EMU") == "1":
            pytest.fail(f"WCRNN_REQUIRE_CUDA_EMU=1 but {why}")
        pytest.skip(why)
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    env.pop("TRITON_INTERPRET", None)
    t0 = time.time()
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=env, timeout=900)
    return r, out, time.time() - t0


def test_dry_run_passes_and_writes_every_file(dry_run):
    r, out, seconds = dry_run
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert "gpu_check: all steps passed" in r.stdout
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["summary.txt", "env.txt", "build.log", "smoke.jsonl", "bench.jsonl", "sanitize.log",
                            "full.log"]), files
    assert len(files) <= 8  # what the device tool brings back
    summary = (out / "summary.txt").read_text()
    for stepname in ("env", "build", "smoke-triton-float64", "smoke-triton-float32", "smoke-triton-bfloat16",
                     "smoke-cuda-float64", "smoke-cuda-float32", "smoke-cuda-bfloat16", "prewarm-triton", "bench",
                     "fp32-precision", "cuda-paths", "trace", "profile", "memcheck-cuda", "memcheck-triton"):
        line = next((ln for ln in summary.splitlines() if ln.split()[:1] == [stepname]), None)
        assert line is not None and line.split()[1] == "ok", f"{stepname}: {line}\n{summary}"
    # the trace's per-call lines reach the summary: S1 and S4, both modes, nn.RNN and the CUDA backend
    traced = [ln for ln in summary.splitlines() if ln.startswith("trace S")]
    assert len(traced) == 8, traced
    assert all("host" in ln and "busy" in ln and "CUDA graph replay" in ln for ln in traced), traced
    # the CUDA paths table: S2 (the dry run's shape), both dtypes and modes, every column filled (every path
    # runs S2), lean (save_preactivations=False) last
    head = summary.splitlines().index(next(ln for ln in summary.splitlines() if ln.startswith("dtype ") and
                                           "tiled" in ln and "lean" in ln))
    table = [ln.split() for ln in summary.splitlines()[head + 1:head + 5]]
    assert [(t[0], t[1]) for t in table] == [(d, "S2") for d in ("bfloat16",) * 2 + ("float32",) * 2], table
    assert all(len(t) == 14 and "-" not in t[3:] for t in table), table
    # the GPU memory block (on the CPU the allocator's counters stand at 0): kept / peak of cuDNN, auto and
    # lean (at S1-S4 only: the cuda-paths step) in both dtypes
    lines = summary.splitlines()
    head = lines.index(next(ln for ln in lines if ln.startswith("GPU memory of")))
    mem = {tuple(ln.split()[:2]): re.findall(r"([\d.]+)/\s*([\d.]+)", ln) for ln in lines[head + 3:head + 7]}
    assert set(mem) == {(d, s) for d in ("bfloat16", "float32") for s in ("S2", "G4")}, mem
    assert all(len(v) == (3 if k[1] == "S2" else 2) and {x for c in v for x in c} == {"0.0"} for k, v in mem.items())
    print(f"dry run: {seconds:.0f} s\n{summary}")


def test_dry_run_smoke_covers_both_backends_and_records_refusals(dry_run):
    _, out, _ = dry_run
    rows = [json.loads(ln) for ln in (out / "smoke.jsonl").read_text().splitlines() if ln.strip()]
    statuses = {r["status"] for r in rows}
    assert statuses <= {"pass", "refused"}, [r for r in rows if r["status"] not in ("pass", "refused")]
    for backend in ("triton", "cuda-emulated"):
        mine = [r for r in rows if r["backend"] == backend]
        assert {r["kind"] for r in mine} == {"none", "scalar", "diagonal", "rotational", "dense"}, backend
        assert {r["dtype"] for r in mine} == {"float64", "float32", "bfloat16"}, backend
        assert {r["nonlinearity"] for r in mine} == {"tanh", "relu"}, backend
        assert any(r.get("check") == "bitwise-repeat" and r["status"] == "pass" for r in mine), backend
    cuda = [r for r in rows if r["backend"] == "cuda-emulated"]
    assert {r["path"] for r in cuda} == {"block", "grid", "regs", "tiled"}
    # the dense float64 H = 130 block path does not fit an H100 block, the register path has no float64 dense
    # form: recorded, not fatal
    assert any(r["status"] == "refused" and r["path"] == "block" and r["kind"] == "dense" for r in cuda)
    assert any(r["status"] == "refused" and r["path"] == "regs" and r["kind"] == "dense" for r in cuda)
    regs = [r for r in cuda if r["path"] == "regs" and r["status"] == "pass"]
    assert {r["kind"] for r in regs} >= {"scalar", "rotational", "dense"}, regs
    assert any(r.get("check") == "bitwise-repeat" for r in regs)
    tiled = [r for r in cuda if r["path"] == "tiled"]  # the tiled register path: no dense form
    assert {r["kind"] for r in tiled if r["status"] == "pass"} >= {"scalar", "rotational"}, tiled
    assert all(r["status"] == "refused" for r in tiled if r["kind"] == "dense"), tiled
    # float64 within 1e-10, and the tolerances are the reference-relative ones, never looser than documented
    for r in rows:
        if r["status"] == "pass" and "errors" in r and r["dtype"] == "float64":
            assert max(r["errors"].values()) <= 1e-10 and max(r["tolerances"].values()) == 1e-10


def test_dry_run_benchmark_lines_and_sanitizer_cases(dry_run):
    _, out, _ = dry_run
    rows = [json.loads(ln) for ln in (out / "bench.jsonl").read_text().splitlines() if ln.strip()]
    assert rows[0].get("meta") and rows[0]["commit"]
    # one metadata line per gpu_bench run: the main table, the float32 precision comparison, the register path
    assert sum(1 for r in rows if r.get("meta")) == 3
    assert all("float32_matmul_precision" in r for r in rows if r.get("meta"))
    lines = [r for r in rows if not r.get("meta")]
    assert all(r["status"] == "ok" for r in lines), [r for r in lines if r["status"] != "ok"]
    main = [r for r in lines if r["tag"] == ""]
    impls = {r["impl"] for r in main}
    assert impls == {"nn.RNN", "triton", "cuda-emulated", "gemm-floor"}, impls
    assert {(r["dtype"], r["mode"]) for r in main if r["impl"] == "triton"} == {
        (d, m) for d in ("float32", "bfloat16") for m in ("forward", "forward+backward")}
    precision = [r for r in lines if r["tag"] == "fp32-precision"]
    assert {r["impl"] for r in precision} == {"nn.RNN-noTF32", "triton@high", "triton@medium"}
    assert {r["dtype"] for r in precision} == {"float32"}
    paths = [r for r in lines if r["tag"] == "cuda-paths"]
    assert {r["impl"] for r in paths} == {"cuda-emulated:block", "cuda-emulated:grid", "cuda-emulated:tiled",
                                          "cuda-emulated/chain", "cuda-emulated+lean"}, paths
    assert {r["dtype"] for r in paths} == {"float32", "bfloat16"}
    assert all(r["us_per_step"] > 0 for r in lines)
    san = (out / "sanitize.log").read_text()
    assert "refused (planner)" in san and san.count("sanitizer cases done") == 2


def test_script_rejects_unknown_arguments():
    r = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown argument" in r.stdout


def test_bench_records_only_predicted_refusals_as_refused(monkeypatch):
    """gpu_bench's cuda-paths lines: a forced path the planner refuses where sanitize_cases predicts it is
    'refused' (the backward of a bfloat16 layer runs in float32, so its block path at H = 256 is refused);
    an unpredicted refusal or any other error stays an error, which fails the step."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    import gpu_bench

    bwd = RuntimeError("wcrnn_C::chain_bwd: WCRNN_CUDA_PATH=block but H=256 needs 269312 bytes of shared memory "
                       "per block and this device allows 232448")
    assert gpu_bench.predicted_refusal(bwd, "cuda:block", "forward+backward", "bfloat16", 256)
    assert gpu_bench.predicted_refusal(bwd, "cuda:block", "forward", "float32", 256)
    assert not gpu_bench.predicted_refusal(bwd, "cuda:block", "forward", "bfloat16", 256)  # 128 KiB fits
    assert not gpu_bench.predicted_refusal(bwd, "cuda:block", "forward", "float32", 128)
    assert not gpu_bench.predicted_refusal(bwd, "cuda", "forward", "float32", 256)  # no forced path
    assert not gpu_bench.predicted_refusal(ValueError("bad"), "cuda:block", "forward", "float32", 256)
    assert [gpu_bench.backend_of(i) for i in ("cuda", "cuda:block", "cuda/chain", "triton@high",
                                              "cuda-emulated:grid")] == ["cuda"] * 3 + ["triton", "cuda-emulated"]
