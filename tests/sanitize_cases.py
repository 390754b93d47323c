"""The AddressSanitizer (+ UBSan) sweeps' cases, in one importable module (not Python source in strings).

Two sweeps run these, each in a child Python that preloads libasan (helpers.run_under_asan):

* ``cpp`` (tests/test_cpp_memsafety.py): the wcrnn_C library built with -fsanitize=address,undefined, every
  compiled instruction-set variant, float32 and float64, every residual kind, both nonlinearities, with and
  without lengths, forward and backward through the public op, compared with the torch backend.
* ``cuda-emulated`` (tests/test_cuda_emulated.py): the CUDA kernels under the CPU emulator, built with the
  sanitizers, on every path and forced tile heights, in every dtype, compared with the torch backend; or
  one of the emulator's self-test kernels (``--selftest NAME``, the positive control).

The CUDA kernels' cases (``cuda_cases``) are also those of compute-sanitizer on the GPU
(scripts/gpu_sanitize_cases.py imports them): one list for both sanitizers.

    python tests/sanitize_cases.py cpp
    python tests/sanitize_cases.py cuda-emulated [--selftest NAME]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# cpp: (T, B, H): a hidden axis ending mid-vector (17, 1, 130, 34, 260), one row and a remainder of a row tile;
# H = 260: the pack shared among threads (H >= 256), its transposed tiles and their tail
CPP_SIZES = ((3, 5, 17), (2, 3, 1), (1, 9, 130), (4, 1, 34), (1, 3, 260))
CPP_KINDS = ("none", "scalar", "diagonal", "rotational", "dense")  # scalar: 0-d res and gamma, as the module passes
CPP_DTYPES = ("float32", "float64")

# cuda-emulated: (path, WCRNN_CUDA_ROWS, WCRNN_CUDA_ROW_GROUPS) x dtype x kind x (T, B, H)
CUDA_PLANS = (("block", "", ""), ("grid", "", ""), ("grid", "8", "1"), ("block", "8", ""), ("regs", "", ""),
              ("regs", "8", ""), ("tiled", "", ""), ("tiled", "8", ""))
CUDA_DTYPES = ("float64", "float32", "float16", "bfloat16")
CUDA_KINDS = ("diagonal", "rotational", "dense")
CUDA_SIZES = ((3, 5, 17), (1, 1, 2), (2, 13, 130))
# the register path's wide rows (K = 128 in float32, a shared-memory tail in float64) and a tail in float32;
# T past its deepest prefetch (8 steps)
REGS_SIZES = ((10, 3, 100), (3, 2, 202))
_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}


def cuda_path_refused(path, kind, H, dtype="float64"):
    """The planner's refusal message (a regular expression) for a forced CUDA path that cannot run (kind, H,
    dtype) on any sm_80 / sm_90 GPU, else None. dtype: a name or a torch dtype. The block path: W_hh (and a
    dense R) must fit one block's shared memory (at most 227 KiB). The register path (chain_cuda.cuh
    regs_slots): 128 32-bit registers of matrix per thread hold K = 64 or 128 words of a row, at most K more
    in shared memory without a dense residual: H <= 256 in float32 / float16 / bfloat16, H <= 128 in float64,
    H <= 64 with a dense residual and never float64 with one. The tiled register path (chain_cuda.cuh tiled_slots):
    a 4 x H/4 tile of W_hh per thread, the elementwise forms only, H <= 128 (float64: 64)."""
    nbytes = _BYTES[str(dtype).rsplit(".", 1)[-1]]
    dense = kind == "dense"
    if path == "block" and H * H * (2 if dense else 1) * nbytes > 227 * 1024:
        return f"WCRNN_CUDA_PATH=block but H={H} needs .* bytes of shared memory"
    if path == "regs" and (H > (128 if nbytes == 8 else 256) or (dense and (H > 64 or nbytes == 8))):
        return f"WCRNN_CUDA_PATH=regs but H={H} does not fit the register path"
    if path == "tiled" and (dense or H > (64 if nbytes == 8 else 128)):
        return f"WCRNN_CUDA_PATH=tiled but H={H} does not fit the tiled register path"
    return None


def cuda_cases(dtypes=CUDA_DTYPES):
    """The CUDA kernels' sanitizer cases: ((path, WCRNN_CUDA_ROWS, WCRNN_CUDA_ROW_GROUPS), dtype name, kind, T, B,
    H, lengths, nonlinearity code), the ASan run on the emulator and compute-sanitizer on the GPU alike. Some
    forced plans cannot run their case (cuda_path_refused: the block path at float64 dense H = 130, the register
    path past its sizes); each sweep expects the planner's refusal there."""
    n = 0
    for plan in CUDA_PLANS:
        for dt in dtypes:
            for kind in CUDA_KINDS:
                for T, B, H in CUDA_SIZES + (REGS_SIZES if plan[0] in ("regs", "tiled") else ()):
                    if kind == "rotational" and H % 2:
                        H += 1  # rotation pairs need an even H
                    yield plan, dt, kind, T, B, H, (T + B) % 2 == 0, n % 2
                    n += 1


def _instrumented(lib):
    syms = subprocess.run(["nm", "-D", lib], capture_output=True, text=True).stdout
    assert "__asan_report" in syms and "__ubsan_handle" in syms, "the library is not instrumented"
    print("instrumented library:", lib, flush=True)


def run_cpp():
    import torch
    from wcrnn_kernels import _build
    root = _build.source_root()
    key = _build.source_hash(root, False, extra=("asan",))[:16]
    build_dir = os.path.join(_build.cache_root(), f"torch-{torch.__version__}-asan", key)
    # -O0: compiles in a fraction of -O1's time (this runs in CI) and keeps every access the source makes
    flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-O0",
             "-g"]
    lib = _build.jit_build_and_load(build_dir, f"wcrnn_C_asan_{key}", with_cuda=False, extra_cflags=flags,
                                    extra_ldflags=["-fsanitize=address,undefined"])
    _instrumented(lib)

    from wcrnn_kernels import canonical_residual, wcrnn_chain
    torch.set_num_threads(2)
    info = dict(kv.split("=", 1) for kv in torch.ops.wcrnn_C.cpu_info().split())
    isas = ["default", "avx2", "avx512"][: ["default", "avx2", "avx512"].index(info["best_isa"]) + 1]
    g = torch.Generator().manual_seed(0)
    n = 0
    for isa in isas:
        os.environ["WCRNN_CPU_ISA"] = isa
        for dtype in (getattr(torch, d) for d in CPP_DTYPES):
            for kind in CPP_KINDS:
                for T, B, H in CPP_SIZES:
                    if kind == "rotational" and H % 2:
                        H += 1
                    r = {"none": 0.0, "scalar": torch.rand((), generator=g, dtype=torch.float64),
                         "diagonal": torch.rand(H, generator=g, dtype=torch.float64),
                         "rotational": torch.rand(H // 2, generator=g, dtype=torch.float64),
                         "dense": torch.randn(H, H, generator=g, dtype=torch.float64) / H}[kind]
                    theta = torch.rand(H // 2, generator=g, dtype=torch.float64) if kind == "rotational" else None
                    rk, res = canonical_residual(kind, H, r, theta, dtype=dtype, keep_scalar=kind == "scalar")
                    gamma_shape = () if kind == "scalar" else (H,)
                    for nonlin in ("tanh", "relu"):
                        for lengths in (None, torch.randint(0, T + 1, (B,), generator=g)):
                            args = [torch.randn(T, B, H, generator=g, dtype=torch.float64).to(dtype),
                                    torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype),
                                    (torch.randn(H, H, generator=g, dtype=torch.float64) / H ** 0.5).to(dtype),
                                    res.detach().clone(),
                                    torch.rand(gamma_shape, generator=g, dtype=torch.float64).to(dtype)]
                            args = [a.requires_grad_(True) for a in args]
                            out, h = wcrnn_chain(args[0], args[1], args[2], rk, args[3], args[4], lengths, nonlin,
                                                 backend="cpp")
                            ref = wcrnn_chain(args[0], args[1], args[2], rk, args[3], args[4], lengths, nonlin,
                                              backend="torch")
                            (out.sum() + 2 * h.sum()).backward()
                            tol = 1e-4 if dtype == torch.float32 else 1e-10
                            assert torch.allclose(out, ref[0], rtol=tol, atol=tol), (isa, dtype, kind, T, B, H)
                            assert torch.allclose(h, ref[1], rtol=tol, atol=tol), (isa, dtype, kind, T, B, H)
                            n += 1
    print(f"clean: {n} forward+backward cases over ISAs {isas}", flush=True)


def run_cuda_emulated(selftest=None):
    sys.path.insert(0, HERE)
    import torch
    import cuda_emu
    ok, where = cuda_emu.load(sanitize=True)
    assert ok, where
    _instrumented([os.path.join(where, f) for f in os.listdir(where) if f.endswith(".so")][0])
    if selftest is not None:
        out = torch.zeros(1024)
        print(torch.ops.wcrnn_cuda_emu.selftest(selftest, out), flush=True)
        return

    from wcrnn_kernels import canonical_residual
    from wcrnn_kernels.backends import get_backend
    ops, ref = torch.ops.wcrnn_cuda_emu, get_backend("torch")
    os.environ["WCRNN_POISON_OUTPUTS"] = "1"
    g = torch.Generator().manual_seed(0)
    n = 0

    def run(dtype, kind, T, B, H, lengths, nonlin):
        nonlocal n
        r = {"diagonal": torch.rand(H, generator=g, dtype=torch.float64),
             "rotational": torch.rand(H // 2, generator=g, dtype=torch.float64),
             "dense": torch.randn(H, H, generator=g, dtype=torch.float64) / H}[kind]
        theta = torch.rand(H // 2, generator=g, dtype=torch.float64) if kind == "rotational" else None
        rk, res = canonical_residual(kind, H, r, theta, dtype=dtype)
        u, x0 = torch.randn(T, B, H, generator=g).to(dtype), torch.randn(B, H, generator=g).to(dtype)
        w, gam = (torch.randn(H, H, generator=g) / H ** 0.5).to(dtype), torch.rand(H, generator=g).to(dtype)
        L = torch.randint(0, T + 1, (B,), generator=g) if lengths else None
        out, hn, a = ops.chain_fwd(u, x0, w, res, gam, L, rk, nonlin, True)
        cd = torch.float64 if dtype == torch.float64 else torch.float32
        f = lambda t: t.to(cd)  # noqa: E731
        go, gh = torch.randn(T, B, H, generator=g).to(cd), torch.randn(B, H, generator=g).to(cd)
        got = ops.chain_bwd(go, gh, f(a), f(w), f(res), f(gam), L, rk, nonlin, True)
        want_f = ref.chain_fwd(f(u), f(x0), f(w), rk, f(res), f(gam), L, nonlin, True)
        want_b = ref.chain_bwd(go, gh, want_f[2], f(w), rk, f(res), f(gam), L, nonlin, True)
        # measured worst |x - y| / (1 + |y|) against the torch backend: 1.4e-15, 1.1e-6, 4.1e-4 (float16),
        # 3.0e-3 (bfloat16: half its epsilon, the rounding of the outputs)
        tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, torch.finfo(dtype).eps)
        for x, y in zip((out, hn, a) + tuple(got), tuple(want_f) + tuple(want_b)):
            assert torch.allclose(f(x), y, rtol=tol, atol=tol), (dtype, kind, T, B, H, lengths, nonlin)
        n += 1

    for (path, rows, groups), dt, kind, T, B, H, lengths, nonlin in cuda_cases():
        os.environ["WCRNN_CUDA_PATH"], os.environ["WCRNN_CUDA_ROWS"] = path, rows
        os.environ["WCRNN_CUDA_ROW_GROUPS"] = groups
        if cuda_path_refused(path, kind, H, dt):
            continue  # the planner refuses (tests/test_cuda.py checks that)
        run(getattr(torch, dt), kind, T, B, H, lengths, nonlin)
    for k in ("WCRNN_CUDA_PATH", "WCRNN_CUDA_ROWS", "WCRNN_CUDA_ROW_GROUPS"):
        os.environ.pop(k)
    os.environ["WCRNN_EMU_SMS"] = "132"  # an H100's plan for H = 1024: 128 blocks of the grid path
    run(torch.float32, "dense", 2, 3, 1024, lengths=True, nonlin=0)
    print(f"clean: {n} forward+backward cases", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", choices=["cpp", "cuda-emulated"])
    ap.add_argument("--selftest", help="cuda-emulated: run this emulator self-test kernel instead of the cases")
    args = ap.parse_args(argv)
    os.environ.pop("LD_PRELOAD", None)  # the compiler and ninja (children of this one) run without libasan
    if args.sweep == "cpp":
        run_cpp()
    else:
        run_cuda_emulated(args.selftest)


if __name__ == "__main__":
    main()
