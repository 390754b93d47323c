"""The examples in --quick mode, each in a subprocess as a user runs it: exit status, the PNG, the JSON
with the measured numbers, and (for the Lyapunov example) the paper's claim on the numbers it printed."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
EXAMPLES = os.path.join(ROOT, "examples")


def _run(script, tmp_path, *extra):
    pytest.importorskip("matplotlib", reason="the examples plot with matplotlib (pip install matplotlib)")
    pytest.importorskip("tqdm", reason="the examples show progress with tqdm (pip install tqdm)")
    out = tmp_path / (script.replace(".py", ".png"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), "--quick", "--threads", "1",
                           "--out", str(out), *extra], capture_output=True, text=True, timeout=240, env=env,
                          cwd=ROOT)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", f"{out} is not a PNG"
    assert out.stat().st_size > 10_000
    with open(out.with_suffix(".json")) as f:
        return json.load(f), proc.stdout


def test_lyapunov_example(tmp_path):
    data, stdout = _run("lyapunov_spectrum.py", tmp_path)
    res = {r["name"]: r for r in data["results"]}
    assert len(res) == 7 and "| scalar r=1.01 |" in stdout
    for r in (0.95, 0.995, 1.0, 1.0025, 1.01):
        row = res[f"scalar r={r:g}"]
        assert len(row["exponents_mean"]) == 32
        assert all(abs(p - math.log(r)) < 1e-12 for p in row["predicted"])
        assert row["max_abs_dev"] < 0.02 and row["mean_dev"] < 1e-3  # the paper's claim, on the example's run
    assert res["diagonal tau~logU(10,1000)"]["max_abs_dev"] < 0.02


def test_adding_example(tmp_path):
    data, stdout = _run("adding_problem.py", tmp_path)
    assert [r["r"] for r in data["results"]] == [0.95, 1.0, 1.01]
    for r in data["results"]:
        assert r["steps"][-1] == r["steps_run"] and len(r["steps"]) == len(r["test_rms"])
        assert all(math.isfinite(v) for v in r["test_rms"])
        assert r["steps_to_threshold"] is None or r["test_rms"][-1] < 0.05
    assert data["meta"]["T"] == 30 and "steps to RMS < 0.05" in stdout


def test_sequential_digits_example(tmp_path):
    data, stdout = _run("sequential_digits.py", tmp_path, "--permuted")
    (res,) = data["results"]
    assert len(res["test_acc"]) == 2 and all(0.0 <= a <= 1.0 for a in res["test_acc"])
    assert data["meta"]["permuted"] is True and "psDigits" in stdout


def test_stateful_lm_example(tmp_path):
    """docs/from_nn_rnn.md's advice, on the example's quick run: FusedWCRNN.from_rnn(rnn) trains exactly as the
    nn.RNN does with the state carried over the epoch; with r = 1 the carried state drifts past any bound, with
    r < 1 it stays within gamma / (1 - r)."""
    out = tmp_path / "stateful_lm.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, "stateful_lm.py"), "--quick", "--threads", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    rnn, fused = res["nn.RNN"], res["fused none gamma=1"]
    assert all(abs(a - b) < 1e-3 for a, b in zip(rnn["loss_per_tenth"], fused["loss_per_tenth"]))
    for name, bound in (("fused r=0.995 gamma=0.01", 2.0), ("fused r=0.95 gamma=0.1", 2.0),
                        ("fused r=0.995 gamma=0.1", 20.0)):
        assert res[name]["max_abs_h_epoch"] <= bound * (1 + 1e-5), name
    assert res["fused r=1 gamma=0.01 (default)"]["max_abs_h_epoch"] > 2.0  # no bound: it integrates
    assert res["fused r=1 gamma=0.1"]["max_abs_h_epoch"] > 20.0
    assert "| model |" in proc.stdout


def test_weak_coupling_limit_example(tmp_path):
    data, stdout = _run("weak_coupling_limit.py", tmp_path)
    res = {r["name"]: r for r in data["results"]}
    assert len(res) == 5 and "| scalar r=0.9 |" in stdout
    sc = res["scalar r=0.9"]
    assert abs(sc["log_rho"] - math.log(0.9)) < 1e-12
    # normal residual: on the prediction at small gamma; chain with feedback: far above it at gamma 0.1
    assert abs(sum(sc["measured"][-1]) / 2 - math.log(0.9)) < 0.01
    fb = res["fbchain alpha=0.99 beta=0.04 H=8"]
    assert sum(fb["measured"][0]) / 2 - fb["log_rho"] > 0.3


def test_sweep_runner_appends_and_resumes(tmp_path):
    pytest.importorskip("tqdm", reason="the sweep runner shows progress with tqdm (pip install tqdm)")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(EXAMPLES, "sweep.py"), "--results-dir", str(tmp_path), "run",
           "elman_init", "op_chain", "--quick", "--workers", "2"]

    def lines():
        out = []
        for name in ("elman_init", "op_chain"):
            p = tmp_path / f"{name}.jsonl"
            if p.exists():
                out += [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]
        return out

    proc = subprocess.run(cmd + ["--max-runs", "2"], capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = lines()
    assert len(first) == 2 and first[0]["seed"] == 0 and all(len(r["test_rms"]) == 3 for r in first)
    assert "runs still to do" in proc.stdout and "all runs done" not in proc.stdout, proc.stdout[-500:]
    proc = subprocess.run(cmd + ["--max-runs", "1"], capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = lines()
    ids = [r["id"] for r in second]
    assert len(second) == 3 and len(set(ids)) == 3  # resumed: one new run, none repeated
    assert {r["id"] for r in first} <= set(ids)


@pytest.mark.parametrize("script,name", [("lyapunov_spectrum.py", "lyapunov_spectrum.png"),
                                         ("adding_problem.py", "adding_problem.png"),
                                         ("weak_coupling_limit.py", "weak_coupling_limit.png"),
                                         ("sequential_digits.py", "sequential_digits.png")])
def test_quick_runs_write_beside_the_committed_results_not_over_them(script, name):
    """From a client test: `--quick` overwrote examples/results/, the committed figures the README shows, with a
    tiny run's. Its default is now examples/results/quick/ (git-ignored); a full run's default is unchanged."""
    import importlib.util
    sys.path.insert(0, EXAMPLES)
    try:
        spec = importlib.util.spec_from_file_location(script[:-3], os.path.join(EXAMPLES, script))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(EXAMPLES)
    results = os.path.join(EXAMPLES, "results")
    assert os.path.abspath(mod.parse_args(["--quick"]).out) == os.path.abspath(os.path.join(results, "quick", name))
    assert os.path.abspath(mod.parse_args([]).out) == os.path.abspath(os.path.join(results, name))
    with open(os.path.join(ROOT, ".gitignore")) as f:
        assert "examples/results/quick/" in f.read().split()

