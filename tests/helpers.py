"""Everything the test files share: the case builder and chain runner, the tolerance rules, the targets the
generic suites run on, the emulated CUDA backend, the AddressSanitizer runner. (Import them from here, not
from conftest: conftest modules of tests/ and benchmarks/ share one module name when both are collected.)"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest
import torch

from wcrnn_kernels import available_backends, canonical_residual, wcrnn_chain


def require_backend(name: str, device: str = "cpu", dtype=torch.float64, hidden_size: int = 8):
    """Skip, with the backend's own reason, when `name` cannot run tensors of this kind here."""
    from wcrnn_kernels.backends import get_backend
    report = available_backends()
    if name not in report:
        pytest.skip(f"backend {name!r} is not part of this build (no wcrnn_kernels.backends module for it)")
    info = report[name]
    if not info["available"]:
        pytest.skip(f"backend {name!r} unavailable here: {info['reason']}")
    why = get_backend(name).supports(torch.device(device), dtype, hidden_size)
    if why is not None:
        pytest.skip(f"backend {name!r} cannot run {device} {dtype} tensors here: {why}")


def max_rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max(max |expected|, tiny): one number per tensor."""
    actual, expected = actual.detach(), expected.detach()
    scale = expected.abs().max().clamp_min(1e-30) if expected.numel() else torch.tensor(1.0)
    return float((actual.to(expected.dtype) - expected).abs().max() / scale) if expected.numel() else 0.0


def assert_all_close(actual, expected, rtol, names=None):
    """Each pair agrees to `rtol` relative to the expected tensor's max magnitude; NaN never passes."""
    assert len(actual) == len(expected)
    names = names or [str(i) for i in range(len(expected))]
    for n, a, e in zip(names, actual, expected):
        assert a is not None and e is not None, f"{n}: missing gradient"
        assert a.shape == e.shape, f"{n}: shape {tuple(a.shape)} != {tuple(e.shape)}"
        assert torch.isfinite(a).all(), f"{n}: non-finite values"
        err = max_rel_err(a, e)
        assert err <= rtol, f"{n}: relative error {err:.3e} > {rtol:.1e}"


# One chain case and one forward+backward with a shared upstream gradient, used by the backend suites.
KINDS = ("none", "scalar", "diagonal", "rotational", "dense")


def make_case(kind, T, B, H, dtype=torch.float64, lengths=False, seed=0):
    """Random inputs for one chain: u, x0, w_hh, (res_kind, res), gamma, lengths."""
    if kind == "rotational" and H % 2:
        H += 1
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    r = {"none": 0.0, "scalar": 0.97, "diagonal": 0.8 + 0.25 * torch.rand(H, generator=g, dtype=torch.float64),
         "rotational": 0.9 + 0.15 * torch.rand(H // 2, generator=g, dtype=torch.float64),
         "dense": rnd(H, H, scale=0.9 / H ** 0.5).double()}[kind]
    theta = torch.rand(H // 2, generator=g, dtype=torch.float64) * 3.0 if kind == "rotational" else None
    res_kind, res = canonical_residual(kind, H, r, theta, dtype=dtype)
    case = dict(
        u=rnd(T, B, H), x0=rnd(B, H, scale=0.5), w_hh=rnd(H, H, scale=1.0 / H ** 0.5), res_kind=res_kind,
        res=res.detach().clone(), gamma=(0.3 + 0.5 * torch.rand(H, generator=g, dtype=torch.float64)).to(dtype),
        lengths=None)
    if lengths:
        L = torch.randint(0, T + 1, (B,), generator=g)
        L[0] = T  # one full-length row, and (for B > 1) one empty row
        if B > 1:
            L[1] = 0
        case["lengths"] = L
    return case


DIFF = ("u", "x0", "w_hh", "res", "gamma")


def on(case, device=None, dtype=None):
    """The case with every tensor moved to `device` and every floating tensor cast to `dtype` (each optional)."""
    out = {}
    for k, v in case.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device=device or v.device)
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out


def run_chain(case, backend, nonlinearity, diff=DIFF, upstream_seed=1):
    """Forward, then backward of <output, G_out> + <h_n, G_h> with respect to the inputs named in `diff`;
    returns detached CPU tensors (output, h_n, *grads), None for each input not in `diff`."""
    inputs = {k: (v.detach().clone().requires_grad_(k in diff) if k in DIFF else v) for k, v in case.items()}
    out, h_n = wcrnn_chain(inputs["u"], inputs["x0"], inputs["w_hh"], inputs["res_kind"], inputs["res"],
                           inputs["gamma"], inputs["lengths"], nonlinearity, backend)
    g = torch.Generator().manual_seed(upstream_seed)
    g_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device, out.dtype)
    g_h = torch.randn(h_n.shape, generator=g, dtype=torch.float64).to(out.device, out.dtype)
    grads = dict(zip(diff, torch.autograd.grad((out * g_out).sum() + (h_n * g_h).sum(),
                                               [inputs[k] for k in diff])))
    return tuple(t.detach().cpu() for t in (out, h_n)) + tuple(
        grads[k].detach().cpu() if k in grads else None for k in DIFF)


def reference(case, nonlinearity, diff=DIFF):
    """The float64 reference loop on the CPU, for the case's values (rounded already if the case is)."""
    return run_chain(on(case, "cpu", torch.float64), "reference", nonlinearity, diff)


def select(results, diff):
    """The entries of a run_chain result (and their names) for output, h_n and the gradients in `diff`."""
    keep = [0, 1] + [2 + DIFF.index(k) for k in diff]
    return [results[i] for i in keep], [NAMES[i] for i in keep]


NAMES = ("output", "h_n") + tuple("d" + k for k in DIFF)


def check_saved_preactivations(be, c, nonlin=0):
    """The backend contract for the saved pre-activations (backends/__init__.py), on one float64 case (on
    any device): chain_fwd(save_a=True) returns a_t = u_t + W_hh x_{t-1}, zero past each length, and the
    same output and h_n as save_a=False, which returns an empty a; chain_bwd only reads a and returns a
    fresh g."""
    from wcrnn_kernels import wcrnn_chain_ref
    T, B, H = c["u"].shape
    gamma = c["gamma"].reshape(-1).expand(H).contiguous()
    args = (c["u"], c["x0"], c["w_hh"], c["res_kind"], c["res"], gamma, c["lengths"], nonlin)
    out, h_n, a = be.chain_fwd(*args, True)
    out2, h_n2, a2 = be.chain_fwd(*args, False)
    assert a2.numel() == 0, "save_a=False must store nothing"
    assert torch.equal(out, out2) and torch.equal(h_n, h_n2), "save_a changed the forward's results"
    cpu = on(c, "cpu")
    L = cpu["lengths"]
    ref, _ = wcrnn_chain_ref(cpu["u"], cpu["x0"], cpu["w_hh"], c["res_kind"], cpu["res"], gamma.cpu(), L,
                             ("tanh", "relu")[nonlin])
    expect = cpu["u"] + torch.cat([cpu["x0"][None], ref[:-1]]) @ cpu["w_hh"].t()
    if L is not None:
        expect = torch.where((torch.arange(T)[:, None] < L[None, :])[..., None], expect, 0.0)
    assert a.shape == (T, B, H) and a.dtype == c["u"].dtype and a.device == c["u"].device
    assert_all_close([a.cpu()], [expect], rtol=1e-12, names=["a"])
    a_before = a.clone()
    g, _, _ = be.chain_bwd(torch.randn_like(out), torch.randn_like(h_n), a, c["w_hh"], c["res_kind"], c["res"],
                           gamma, c["lengths"], nonlin, True)
    assert torch.equal(a, a_before), "chain_bwd wrote into a"
    assert g.data_ptr() != a.data_ptr() and g.shape == a.shape and torch.isfinite(g).all()


# ----------------------------------------------------------------------------------------------------------
# One tolerance rule for low-precision results: relative to the reference loop's own error in that dtype

# The rule, per dtype: a list of (yardstick, factor, floor); a low-precision result's max relative error to
# the float64 result of the same (rounded) inputs must be at most max(factor x the yardstick's error, floor)
# for every entry. Yardsticks: "reference" is the reference loop run in that dtype (for float16 / bfloat16
# it keeps its state in that dtype, a loose yardstick); "torch" is the torch backend in that dtype, which
# keeps float32 state like the kernels. Each entry is at least as strict as one of the rules the test files
# used to restate with their own floors (float32: 4 x reference + 1e-6 in test_chain, test_cpp and
# test_triton, max(4 x reference, 1e-5) in test_cuda*; float16 / bfloat16: 2 x torch + eps in test_cuda*,
# max(2 x reference, 1e-2) in test_chain, 4 x reference + 1e-6 and 4 x torch + 1e-6 in test_triton), so
# every test is now held to all of them at once.
LOWP_RULE = {torch.float32: [("reference", 4.0, 1e-6)]}
for _dt in (torch.float16, torch.bfloat16):
    LOWP_RULE[_dt] = [("torch", 2.0, torch.finfo(_dt).eps), ("torch", 4.0, 1e-6),
                      ("reference", 2.0, 1e-2), ("reference", 4.0, 1e-6)]
FLOAT64_RTOL = 1e-10


def errors(actual, expected):
    """max_rel_err of each pair; 0 where the expected entry is None (an input not differentiated)."""
    return [max_rel_err(a, e) if e is not None else 0.0 for a, e in zip(actual, expected)]


def assert_within_reference_error(actual, exact, yardstick, factor, floor, names=NAMES, label="result"):
    """Each of `actual`'s errors to `exact` is at most max(factor x `yardstick`'s error to `exact`, floor)."""
    for n, ea, ey in zip(names, errors(actual, exact), errors(yardstick, exact)):
        assert ea <= max(factor * ey, floor), f"{n}: {label} error {ea:.2e} > max({factor} x {ey:.2e}, {floor:.0e})"


def assert_low_precision_rule(actual, exact, yardsticks, dtype, names=NAMES, label="result"):
    """LOWP_RULE[dtype] with the yardsticks' results by name ({"reference": ..., "torch": ...})."""
    for which, factor, floor in LOWP_RULE[dtype]:
        assert_within_reference_error(actual, exact, yardsticks[which], factor, floor, names,
                                      f"{label} (vs {which} {str(dtype).replace('torch.', '')})")


def check_low_precision(case64, backend, dtype, nonlinearity="tanh", device="cpu"):
    """The backend on `case64` rounded to `dtype` (on `device`) against the float64 reference of the rounded
    inputs, by LOWP_RULE; returns (actual, exact)."""
    lo = on(case64, device, dtype)
    exact = reference(lo, nonlinearity)
    actual = run_chain(lo, backend, nonlinearity)
    for n, a in zip(NAMES, actual):
        assert a.dtype == dtype, n
    yard = {"reference": run_chain(lo, "reference", nonlinearity)}
    if any(which == "torch" for which, _, _ in LOWP_RULE[dtype]):
        yard["torch"] = actual if backend == "torch" else run_chain(lo, "torch", nonlinearity)
    assert_low_precision_rule(actual, exact, yard, dtype, label=backend)
    return actual, exact


# ----------------------------------------------------------------------------------------------------------
# Targets: a backend on one kind of tensor. The generic suites (test_chain.py, test_module.py) take a
# `target` argument; tests/conftest.py generates one row per target that can run in this process (and none
# for the others: the session header says which ran and why the others did not).

@dataclass(frozen=True)
class Target:
    name: str      # the test id
    backend: str   # the name passed to wcrnn_chain / FusedWCRNN
    device: str    # where its tensors live

    def __str__(self):
        return self.name

    def supports(self, dtype=torch.float64, hidden_size=8):
        """None, or why this backend cannot run such tensors (a test then skips that one row)."""
        from wcrnn_kernels.backends import get_backend
        return get_backend(self.backend).supports(torch.device(self.device), dtype, hidden_size)

    def require(self, dtype=torch.float64, hidden_size=8):
        why = self.supports(dtype, hidden_size)
        if why is not None:
            pytest.skip(f"{self.name} cannot run {dtype} at H = {hidden_size}: {why}")


TARGETS = {t.name: t for t in (
    Target("torch", "torch", "cpu"), Target("cpp", "cpp", "cpu"),
    Target("triton-interpreter", "triton", "cpu"), Target("cuda-emulated", "cuda-emulated", "cpu"),
    Target("cuda", "cuda", "cuda"), Target("triton-gpu", "triton", "cuda"))}

# Environment (the test suite's own variables, read here):
#   WCRNN_TEST_TARGETS=a,b   generate rows for these targets only; one of them that cannot run here fails.
#   WCRNN_REQUIRE_CUDA=1     the "cuda" target must run (scripts/gpu_check.sh); WCRNN_REQUIRE_CUDA_EMU=1 the
#                            "cuda-emulated" one (CI).
REQUIRE_VARS = {"cuda": "WCRNN_REQUIRE_CUDA", "cuda-emulated": "WCRNN_REQUIRE_CUDA_EMU"}


def interpreter_incompatibility():
    """Why this triton's interpreter cannot run here, or None. Triton < 3.8 turns runtime scalars into ints
    with int() on a 1-element array, which numpy >= 2.4 rejects (tl.range(0, T) raises TypeError); 3.8
    squeezes first. The GPU machine's triton 3.6 meets this with its numpy; the compiled kernels do not."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        tv, nv = version("triton"), version("numpy")
    except PackageNotFoundError:
        return None

    def major_minor(v):
        return tuple(int(p) for p in re.findall(r"\d+", v)[:2])
    if major_minor(tv) < (3, 8) and major_minor(nv) >= (2, 4):
        return (f"triton {tv}'s interpreter cannot run with numpy {nv} (int() of a 1-element array, rejected "
                f"since numpy 2.4; fixed in triton 3.8): use numpy < 2.4 or triton >= 3.8 for the interpreter suite")
    return None


def _why_not(name):
    """None when the target can run in this process, else the reason (each check as cheap as it can be)."""
    from wcrnn_kernels.backends import get_backend
    interp = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if name in ("cuda", "triton-gpu") and not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    if name == "triton-gpu" and interp:
        return "TRITON_INTERPRET=1: this process interprets Triton on the CPU"
    if name == "triton-interpreter":
        if not interp:
            return ("needs TRITON_INTERPRET=1 before triton is imported: tests/test_triton.py::"
                    "test_interpreter_suite runs these rows in a child process")
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed (pip install triton)"
        why = interpreter_incompatibility()
        if why:
            return why
    if name == "cuda-emulated":
        if torch.cuda.is_available() and name not in required_targets():
            # the emulator stands in for a GPU on machines without one; on the H200 (2026-11-30) a test run that
            # generated its rows beside the "cuda" ones died of a segfault in the first emulated case (not
            # reproduced without a GPU, same torch, CUDA-built wcrnn_C loaded): opt in to run it there
            return ("a CUDA device is present: the real \"cuda\" target runs instead (WCRNN_TEST_TARGETS="
                    "cuda-emulated or WCRNN_REQUIRE_CUDA_EMU=1 runs the emulator anyway)")
        ok, why = register_emulated_cuda()
        return None if ok else why
    ok, why = get_backend(TARGETS[name].backend).availability()
    return None if ok else f"backend {TARGETS[name].backend!r} unavailable: {why}"


_STATUS: dict = {}
_FAKES: list = []


def target_status():
    """{target name: None (runs here) or the reason it cannot}, decided once per process."""
    if not _STATUS:
        only = [n.strip() for n in os.environ.get("WCRNN_TEST_TARGETS", "").split(",") if n.strip()]
        unknown = [n for n in only if n not in TARGETS]
        if unknown:
            raise ValueError(f"WCRNN_TEST_TARGETS names unknown targets {unknown}; known: {list(TARGETS)}")
        for name in TARGETS:
            _STATUS[name] = "not in WCRNN_TEST_TARGETS" if only and name not in only else _why_not(name)
    return dict(_STATUS)


def required_targets():
    only = [n.strip() for n in os.environ.get("WCRNN_TEST_TARGETS", "").split(",") if n.strip()]
    return set(only) | {n for n, var in REQUIRE_VARS.items() if os.environ.get(var) == "1"}


def target_params(names=None, dtypes=()):
    """pytest.param rows for the targets (of `names`, default all) that run here and run every dtype of
    `dtypes`, plus those that are required but cannot run (their rows fail with the reason); GPU rows carry
    the `gpu` mark."""
    status, required = target_status(), required_targets()
    rows = []
    for name in names or TARGETS:
        if status[name] is None and any(TARGETS[name].supports(dt) is not None for dt in dtypes):
            continue  # e.g. cpp has no float16 / bfloat16 kernels
        if status[name] is None or name in required:
            marks = [pytest.mark.gpu] if TARGETS[name].device == "cuda" else []
            rows.append(pytest.param(TARGETS[name], id=name, marks=marks))
    return rows


def target_summary():
    status = target_status()
    status = {n: why for n, why in status.items() if not n.startswith("_")}
    ran = [n for n, why in status.items() if why is None]
    lines = [f"wcrnn targets covered: {', '.join(ran) or 'none'}"]
    lines += [f"  not covered: {n}: {why}" for n, why in status.items() if why is not None]
    return lines


# ----------------------------------------------------------------------------------------------------------
# The CUDA backend's code under the CPU emulator of tests/cuda_emu, registered as backend "cuda-emulated"

EMULATED = "cuda-emulated"
EMU_DEFAULTS = {"WCRNN_EMU_SMS": "8", "WCRNN_EMU_SMEM_OPTIN": "232448"}  # a small GPU, an H100's shared memory
CUDA_VARS = ("WCRNN_CUDA_PATH", "WCRNN_CUDA_ROWS", "WCRNN_CUDA_ROW_GROUPS")
EMU_VARS = ("WCRNN_EMU_ORDER", "WCRNN_EMU_SEED")


def register_emulated_cuda():
    """Build (cached) and load the emulated ops and register the "cuda-emulated" backend: (ok, why)."""
    import cuda_emu
    from wcrnn_kernels.backends import _REGISTRY, _RESOLVED, register_backend
    from wcrnn_kernels.backends.compiled import WcrnnCOps, register_fakes
    from wcrnn_kernels.backends.cuda import CudaBackend
    ok, why = cuda_emu.load()
    if not ok or EMULATED in _REGISTRY:
        return ok, why

    class EmulatedCudaBackend(WcrnnCOps):
        """The "cuda" backend's Python glue on the emulated ops: CPU tensors, the CUDA backend's dtypes and
        limits."""

        name = EMULATED
        ops_namespace = "wcrnn_cuda_emu"

        def availability(self):
            return True, "the CUDA kernels under the CPU emulator of tests/cuda_emu"

        def supports(self, device, dtype, hidden_size):
            if device.type != "cpu":
                return f"runs CPU tensors only, got a {device.type} tensor"
            return CudaBackend().supports(torch.device("cuda"), dtype, hidden_size)

    if not _FAKES:
        register_fakes("wcrnn_cuda_emu")
        _FAKES.append(True)
    register_backend(EmulatedCudaBackend())
    _RESOLVED.clear()
    return ok, why


# The CUDA kernels' forced execution paths: the block path, the grid path as planned, the grid path with
# one row group (every block walks all rows in chunks of BT), and the register path (opt-in).
CUDA_PATHS = ("block", "grid", "grid-1group", "regs")


def force_cuda_path(monkeypatch, path):
    monkeypatch.setenv("WCRNN_CUDA_PATH", "grid" if path == "grid-1group" else path)
    if path == "grid-1group":
        monkeypatch.setenv("WCRNN_CUDA_ROW_GROUPS", "1")


def assert_launch_path(log, path, n_min=2, several_blocks=True):
    """Every launch in the emulator's `log` took the expected path (the grid path on more than one block,
    unless `several_blocks` is False: H <= 2 is a single unit slice)."""
    assert len(log) >= n_min, log
    for line in log:
        assert "FAILED" not in line, line
        if path == "regs":  # one thread per unit, in whole warps: at most 256 threads
            threads = int(line.split("block=")[1].split()[0])
            assert line.startswith("ordinary") and threads <= 256 and threads % 32 == 0, line
        elif path == "tiled":  # one thread per word of the padded row: 64 or 128
            assert line.startswith("ordinary") and int(line.split("block=")[1].split()[0]) in (64, 128), line
        elif path == "block":
            assert line.startswith("ordinary") and " block=256 " in line, line
        else:
            assert line.startswith("cooperative"), line
            if several_blocks:
                assert line.split()[1] != "grid=1x1x1", f"the grid path ran on a single block: {line}"


def emulator_launches() -> list[str]:
    """The emulator's record of the kernel launches since the last call, one line each."""
    return list(torch.ops.wcrnn_cuda_emu.take_log())


def setup_target(target, monkeypatch):
    """Per test: fail (a required target that cannot run) or set the target up: NaN-poisoned C++ / CUDA
    outputs, no forced CUDA path, the emulated device's defaults and an empty launch log."""
    why = target_status()[target.name]
    if why is not None:
        pytest.fail(f"target {target.name} is required here (WCRNN_TEST_TARGETS / WCRNN_REQUIRE_*) but {why}")
    monkeypatch.setenv("WCRNN_POISON_OUTPUTS", "1")
    for var in CUDA_VARS + EMU_VARS:
        monkeypatch.delenv(var, raising=False)
    if target.name == EMULATED:
        for k, v in EMU_DEFAULTS.items():
            monkeypatch.setenv(k, v)
        emulator_launches()
    if target.name == "triton-gpu":
        # Fixed configurations: autotuning tries 2-10 candidates for every new (H, residual form, dtype), 6-20 s
        # each on the H200 (smoke runs 3 and 4), which would take the generic suites' rows past tier 3's per-test
        # timeout; test_triton.py's autotune test turns it back on.
        from wcrnn_kernels import triton_kernels
        monkeypatch.setattr(triton_kernels, "AUTOTUNE", False)


# ----------------------------------------------------------------------------------------------------------
# AddressSanitizer runs (tests/test_cpp_memsafety.py, tests/test_cuda_emulated.py): a child Python with the
# compiler's libasan preloaded

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _runtime(name: str) -> str | None:
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return None
    out = subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return out if os.path.isabs(out) and os.path.exists(out) else None


def asan_setup():
    """(libasan path, reason to skip or None)."""
    if not sys.platform.startswith("linux"):
        return None, "the sanitizer run is set up for Linux (LD_PRELOAD of the compiler's libasan)"
    from torch.utils.cpp_extension import is_ninja_available
    if not is_ninja_available():
        return None, "ninja is needed to build the sanitizer variant: `pip install ninja`"
    asan = _runtime("libasan.so")
    if asan is None:
        return None, f"no AddressSanitizer runtime (libasan.so) next to the C++ compiler {os.environ.get('CXX', 'c++')}"
    return asan, None



_ENV_SANITIZER = {
    # Python and torch allocate for good at exit: leak reports would only be noise here.
    "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86:allocator_may_return_null=1",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1:exitcode=87",
}


def run_under_asan(code: str | None = None, timeout: int = 900, script: list[str] | None = None):
    """Runs `code`, or the script under tests/ with its arguments (`script`: [file, *args]), in a child Python
    with libasan preloaded and the sanitizers set to halt on the first report."""
    asan, _ = asan_setup()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WCRNN_")}
    env.update(_ENV_SANITIZER)
    # libstdc++ too, right after libasan: Python does not link it, so without it ASan finds no real __cxa_throw
    # to forward to and aborts ("CHECK failed ... real___cxa_throw") at the first C++ exception thrown in the
    # process, e.g. by Triton 3.8's libtriton at import (torch 2.14 imports triton from torch._dynamo).
    env["LD_PRELOAD"] = " ".join(p for p in (asan, _runtime("libstdc++.so")) if p)
    env["PYTHONPATH"] = _REPO
    if "WCRNN_CACHE_DIR" in os.environ:
        env["WCRNN_CACHE_DIR"] = os.environ["WCRNN_CACHE_DIR"]
    cmd = [sys.executable, os.path.join(_REPO, "tests", script[0]), *script[1:]] if script else \
        [sys.executable, "-c", textwrap.dedent(code)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env,
                          cwd=_REPO, timeout=timeout)

