"""Every CUDA source compiles with nvcc to sm_80 and sm_90 object code, on a machine without a GPU.

The CUDA kernels cannot run in CI (no GPU there), so this is what keeps a syntax, template or ptxas error
from landing: each ``csrc/cuda/*.cu`` is compiled with ``nvcc -c`` against this torch's headers, with the
flags ``torch.utils.cpp_extension`` would use, for both architectures, in parallel. nvcc warnings that point
into csrc/cuda fail the test too.

A CPU-only torch wheel ships the c10/cuda headers but not the one CMake-generated header
``c10/cuda/impl/cuda_cmake_macros.h`` (its only content is the Windows DLL-export switch
``C10_CUDA_BUILD_SHARED_LIBS``). ``c10/cuda/CUDAMacros.h`` skips it when ``C10_CUDA_NO_CMAKE_CONFIGURE_FILE``
is defined, so the check defines that macro exactly when the header is missing; a CUDA torch compiles the
sources unchanged. The kernels include nothing that needs cuBLAS / cuDNN headers (which the toolkit here
lacks), only cuda_runtime, cooperative_groups and c10/cuda.

The objects are then linked into one shared library (duplicate definitions across translation units fail
there). The ``ptxas -v`` report of the same compile is checked for every kernel instantiation and architecture
(no static shared memory; stack and spills printed). A further test compiles a small host program against
csrc/cuda/chain_cuda.cuh and runs its launch planner (block path vs grid path, tile height, units per block,
shared memory) for A100 and H100 device limits.

Without nvcc the tests skip with the reason, unless WCRNN_REQUIRE_NVCC=1 (CI sets it) turns that into a
failure.
"""
from __future__ import annotations

import concurrent.futures
import glob
import json
import os
import re
import shutil
import subprocess

import pytest
import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_DIR = os.path.join(ROOT, "csrc", "cuda")
SOURCES = sorted(glob.glob(os.path.join(CUDA_DIR, "*.cu")))
ARCHS = ("80", "90")


def _bench_shapes():
    import importlib.util
    spec = importlib.util.spec_from_file_location("_bench_config", os.path.join(ROOT, "benchmarks", "bench_config.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.SHAPES


BENCH_SHAPES = _bench_shapes()     # name: (T, B, I, H), the one definition (benchmarks/bench_config.py)


def find_nvcc() -> str | None:
    cands = []
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp_extension.CUDA_HOME,
                 "/usr/local/cuda"):
        if home:
            cands.append(os.path.join(home, "bin", "nvcc"))
    cands.append(shutil.which("nvcc"))
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


NVCC = find_nvcc()


def require_nvcc():
    if NVCC is None:
        msg = "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
        if os.environ.get("WCRNN_REQUIRE_NVCC") == "1":
            pytest.fail(f"{msg}, and WCRNN_REQUIRE_NVCC=1 asks for the CUDA compile check")
        pytest.skip(msg)


def torch_include_dirs() -> list[str]:
    return cpp_extension.include_paths()


def common_flags() -> list[str]:
    flags = ["-std=c++20", "-O3", "-Xcompiler", "-fPIC",
             f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", f"-I{CUDA_DIR}"]
    flags += [f"-I{d}" for d in torch_include_dirs()]
    # The flags torch's CUDAExtension / load() add to every nvcc call (no implicit half conversions, ...).
    flags += list(getattr(cpp_extension, "COMMON_NVCC_FLAGS", []))
    if not any(os.path.isfile(os.path.join(d, "c10", "cuda", "impl", "cuda_cmake_macros.h"))
               for d in torch_include_dirs()):
        flags.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")  # CPU-only wheel: see the module docstring
    return flags


def compile_one(src: str, out_dir: str) -> dict:
    """nvcc -c for every arch in one call (the front end and host compile run once, ptxas per arch)."""
    obj = os.path.join(out_dir, f"{os.path.basename(src)}.o")
    cmd = [NVCC, "-c", src, "-o", obj, "-Xptxas", "-v"]
    cmd += [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS] + common_flags()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    return {"cmd": " ".join(cmd), "rc": proc.returncode, "log": proc.stdout + proc.stderr, "obj": obj}


def build_probe(out_dir: str) -> dict:
    """The host program of test_planner_*: csrc/cuda/chain_cuda.cuh's planner, linked against libc10."""
    src = os.path.join(out_dir, "plan_probe.cu")
    with open(src, "w") as fh:
        fh.write(PROBE)
    exe = os.path.join(out_dir, "plan_probe")
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    cmd = [NVCC, src, "-o", exe, f"-L{torch_lib}", "-lc10", "-Xlinker", f"-rpath,{torch_lib}"]
    cmd += [f for f in common_flags() if f not in ("-Xcompiler", "-fPIC")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    return {"cmd": " ".join(cmd), "rc": proc.returncode, "log": proc.stdout + proc.stderr, "exe": exe}


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Every source and the planner probe, compiled once and in parallel: {name: result}."""
    require_nvcc()
    out_dir = str(tmp_path_factory.mktemp("nvcc"))
    # Largest translation units first, so the pool's tail is short.
    srcs = sorted(SOURCES, key=lambda f: -os.path.getsize(f))
    workers = max(1, min(len(srcs) + 1, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futs = {pool.submit(compile_one, f, out_dir): os.path.basename(f) for f in srcs}
        futs[pool.submit(build_probe, out_dir)] = "probe"
        return {futs[f]: f.result() for f in concurrent.futures.as_completed(futs)}


def test_there_are_cuda_sources():
    names = {os.path.basename(s) for s in SOURCES}
    assert {"chain_fwd.cu", "chain_bwd.cu", "chain_ops.cu"} <= names, names


@pytest.mark.parametrize("src", [os.path.basename(s) for s in SOURCES])
def test_cuda_source_compiles(builds, src):
    r = builds[src]
    assert r["rc"] == 0, f"nvcc failed for {src}:\n{r['cmd']}\n{r['log'][-6000:]}"
    assert os.path.getsize(r["obj"]) > 0
    ours = [ln for ln in r["log"].splitlines() if "warning" in ln.lower() and "csrc/cuda" in ln]
    assert not ours, f"nvcc warnings in csrc/cuda for {src}:\n" + "\n".join(ours)
    # ptxas -v names every kernel it assembled, per architecture: each arch got the same kernels.
    kernels = {a: set(re.findall(rf"Compiling entry function '(\w+)' for 'sm_{a}'", r["log"])) for a in ARCHS}
    assert kernels[ARCHS[0]] == kernels[ARCHS[1]], kernels
    if src in ("chain_fwd.cu", "chain_bwd.cu"):
        # fwd: 4 dtypes x {elementwise, dense} x 3 tile heights x {block, grid}; bwd: 2 dtypes x ...; the register
        # path: 3 tile heights x the (dtype, form, K) that fit (chain_cuda.cuh regs_fit): fwd 10, bwd 4; the
        # tiled register path: 3 tile heights x the (dtype, KS) that fit (tiled_fit): fwd 7, bwd 3
        assert len(kernels[ARCHS[0]]) == (48 + 30 + 21 if src == "chain_fwd.cu" else 24 + 12 + 9), \
            sorted(kernels[ARCHS[0]])


def test_cuda_objects_link_into_one_library(builds, tmp_path):
    """The objects link into one shared library, as setup.py and the JIT build link them: a symbol defined
    in the shared header by every translation unit ("multiple definition of ...", which nvcc 13 produced for
    a non-static __noinline__ device function) fails here, not on the first GPU machine. Unresolved symbols
    (torch, cudart) are left to the loader, as in any shared library."""
    objs = [builds[os.path.basename(s)]["obj"] for s in SOURCES]
    if any(builds[os.path.basename(s)]["rc"] != 0 for s in SOURCES):
        pytest.fail("a CUDA source did not compile (see test_cuda_source_compiles)")
    lib = str(tmp_path / "libwcrnn_link_check.so")
    proc = subprocess.run([NVCC, "-shared", "-Xcompiler", "-fPIC", *objs, "-o", lib], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"linking the CUDA objects failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    # ... but nothing of ours: an entry point one object uses and none defines (kForwardChain, say) would
    # otherwise pass here and fail only when the library is loaded
    nm = subprocess.run(["nm", "-C", "-u", lib], capture_output=True, text=True, timeout=120)
    assert nm.returncode == 0, f"nm could not read the library just linked: {nm.stderr.strip()[:400]}"
    ours = [ln.strip() for ln in nm.stdout.splitlines() if "wcrnn_cuda::" in ln]
    assert not ours, "symbols of csrc/cuda used but defined in no object:\n" + "\n".join(ours)


# ----------------------------------------------------------------------------------------------------------
# The ptxas resource report of the compile above (-Xptxas -v): every kernel instantiation, per architecture.
#
# The kernels take all their shared memory dynamically (WCRNN_DYNAMIC_SMEM), sized by the launch planner
# against the device's opt-in limit (test_planner_fits_every_shape, below); any static shared memory would come on
# top of that, unplanned, so there must be none. Spills are reported in the test output, not failed: every
# instantiation can be chosen by the planner, and there is no measured cost of these few bytes to set a
# threshold by; growth shows up in the printed table.

def ptxas_report(log: str) -> list[dict]:
    """One entry per (kernel, architecture) of a ``ptxas -v`` log: registers, stack frame, spill stores /
    loads and static shared memory, in bytes."""
    out, cur, props = [], None, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)' for 'sm_(\d+)a?'", line)
        if m:
            cur = {"kernel": m.group(1), "arch": m.group(2), "regs": None, "stack": 0, "spill_stores": 0,
                   "spill_loads": 0, "smem": 0}
            out.append(cur)
            continue
        if cur is None:
            continue
        # "Function properties for NAME" precedes each function's stack line: the kernel's own, and those of the
        # functions it calls out of line (tanh_acc(double)), which must not overwrite the kernel's
        m = re.search(r"Function properties for (\w+)", line)
        if m:
            props = m.group(1)
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and props == cur["kernel"]:
            cur["stack"], cur["spill_stores"], cur["spill_loads"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            cur["smem"] = int(s.group(1)) if s else 0
    return out


def demangle(names: list[str]) -> dict[str, str]:
    """Readable kernel names (c++filt where available)."""
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    proc = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, timeout=60)
    lines = proc.stdout.splitlines()
    return dict(zip(names, lines)) if proc.returncode == 0 and len(lines) == len(names) else {n: n for n in names}


def ptxas_table(entries: list[dict], arch: str) -> str:
    names = demangle(sorted({e["kernel"] for e in entries}))
    rows = ["| kernel | regs | stack B | spill stores B | spill loads B | static smem B |",
            "|---|---|---|---|---|---|"]
    for e in sorted((e for e in entries if e["arch"] == arch), key=lambda e: names[e["kernel"]]):
        short = re.sub(r"^(void )?wcrnn_cuda::\(anonymous namespace\)::", "", names[e["kernel"]])
        rows.append(f"| `{short}` | {e['regs']} | {e['stack']} | {e['spill_stores']} | {e['spill_loads']} "
                    f"| {e['smem']} |")
    return "\n".join(rows)


def test_cuda_ptxas_report(builds):
    """Every kernel of chain_fwd.cu / chain_bwd.cu was assembled for sm_80 and sm_90 with a register count
    and no static shared memory (the planner's budget, checked against the opt-in limits of A100 and H100
    above, is then the whole of it); their stack and spills are printed."""
    entries = []
    for src in ("chain_fwd.cu", "chain_bwd.cu"):
        r = builds[src]
        assert r["rc"] == 0, f"nvcc failed for {src} (see test_cuda_source_compiles)"
        entries += ptxas_report(r["log"])
    for a in ARCHS:
        mine = [e for e in entries if e["arch"] == a]
        assert len(mine) == 48 + 24 + 30 + 12 + 21 + 9, len(mine)  # block/grid, register path, tiled: fwd, bwd
        for e in mine:
            assert e["regs"] is not None, e
            assert e["smem"] == 0, e
        spilling = [e for e in mine if e["stack"] or e["spill_stores"] or e["spill_loads"]]
        regs = [e["regs"] for e in mine]
        print(f"\nsm_{a}: {len(mine)} kernels, registers {min(regs)}-{max(regs)}, {len(spilling)} with stack or "
              f"spills" + ("" if not spilling else ":\n" + ptxas_table(spilling, a)))


# ----------------------------------------------------------------------------------------------------------
# The launch planner, run on the host with the limits of real devices.

PROBE = r"""
#include <cstdio>
#include <exception>
#include "chain_cuda.cuh"
using namespace wcrnn_cuda;

// Same sizing as Forward::smem / Backward::smem in chain_fwd.cu / chain_bwd.cu (acc_bytes, w_bytes per dtype).
static size_t fwd_bytes(int H, int U, int BT, bool grid, bool dense, size_t ab, size_t wb) {
  return smem_layout(H, U, BT, dense, grid ? 1 : 2, 0, ab, wb).total;
}
static size_t bwd_bytes(int H, int U, int BT, bool grid, bool dense, size_t ab) {
  return smem_layout(H, U, BT, dense, 1, grid ? (dense ? 1 : 0) : 2, ab, ab).total;
}
// The register path's buffers: Forward::kInfo 2, Backward::kInfo 4.
static size_t regs_bytes(int dir, int H, int K, int BT, size_t ab) {
  return regs_smem_bytes(H, K, BT, dir == 0 ? 2 : 4, ab);
}

int main(int argc, char** argv) {
  // argv: sms smem_optin B H dense acc_bytes w_bytes
  DeviceInfo d; d.sms = atoi(argv[1]); d.smem_optin = atoi(argv[2]); d.coop = 1;
  const long long B = atoll(argv[3]); const int H = atoi(argv[4]); const bool dense = atoi(argv[5]);
  const size_t ab = atoi(argv[6]), wb = atoi(argv[7]);
  std::printf("[");
  for (int dir = 0; dir < 2; ++dir) {
    try {
      const int K = ab == 8 ? regs_slots<double>(H, dense) : regs_slots<float>(H, dense);
      auto regs_smem = [&](int BT) { return regs_bytes(dir, H, K, BT, ab); };
      // The tiled register path: its KS and buffers as plan_chain_call computes them.
      const TiledInfo tiled{ab == 8 ? tiled_slots<double>(H, dense) : tiled_slots<float>(H, dense), dir == 0 ? 2 : 4,
                            ab};
      Plan p = dir == 0
        ? plan_chain("fwd", B, H, d, [&](int U, int BT, bool g) { return fwd_bytes(H, U, BT, g, dense, ab, wb); },
                     K, kAutoRegs && ab == 4, regs_smem, tiled)
        : plan_chain("bwd", B, H, d, [&](int U, int BT, bool g) { return bwd_bytes(H, U, BT, g, dense, ab); },
                     K, kAutoRegs && ab == 4, regs_smem, tiled);
      MatvecShape m = matvec_shape(H, p.U);
      std::printf("%s{\"ok\": true, \"grid\": %d, \"rows\": %d, \"U\": %d, \"blocks\": %lld, \"smem\": %zu, "
                  "\"UP\": %d, \"KS\": %d, \"unit_blocks\": %d, \"row_groups\": %d, \"rows_per_group\": %lld, "
                  "\"regs\": %d, \"tiled\": %d, \"threads\": %d}",
                  dir ? ", " : "", p.grid ? 1 : 0, p.rows, p.U, (long long)p.blocks, p.smem, m.UP, m.KS,
                  p.unit_blocks, p.row_groups, (long long)p.rows_per_group, p.regs, p.tiled, p.threads);
    } catch (const std::exception& e) {
      std::printf("%s{\"ok\": false}", dir ? ", " : "");
    }
  }
  std::printf("]\n");
  return 0;
}
"""

DEVICES = {"A100": (108, 166912), "H100": (132, 232448)}
# (acc_bytes, w_bytes) per dtype; the backward always runs in float32 / float64.
DTYPES = {"float32": (4, 4), "float16": (4, 2), "float64": (8, 8)}


@pytest.fixture(scope="module")
def probe(builds):
    r = builds["probe"]
    assert r["rc"] == 0, f"probe build failed:\n{r['cmd']}\n{r['log'][-6000:]}"
    exe = r["exe"]

    def run(device, B, H, dense, dtype, env=None):
        sms, smem = DEVICES[device]
        ab, wb = DTYPES[dtype]
        e = {k: v for k, v in os.environ.items() if not k.startswith("WCRNN_CUDA_")}
        e.update(env or {})
        out = subprocess.run([exe, str(sms), str(smem), str(B), str(H), str(int(dense)), str(ab), str(wb)],
                             capture_output=True, text=True, timeout=60, env=e)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout), sms, smem

    return run


# docs/design.md's benchmark shapes (B, H) and the large-H targets.
SHAPES = {name: (B, H) for name, (_, B, _, H) in BENCH_SHAPES.items()}
SHAPES.update({"H1024": (8, 1024), "H1024_B64": (64, 1024), "odd": (3, 17), "H1": (1, 1)})


@pytest.mark.parametrize("device", sorted(DEVICES))
def test_planner_fits_every_shape(probe, device):
    for name, (B, H) in SHAPES.items():
        for dtype in DTYPES:
            for dense in (False, True):
                if dtype == "float64" and H > 512:
                    continue  # beyond what the backend's supports() offers for float64
                plans, sms, smem = probe(device, B, H, dense, dtype)
                for p, d in zip(plans, ("fwd", "bwd")):
                    where = f"{device} {name} B={B} H={H} {dtype} dense={dense} {d}: {p}"
                    assert p["ok"], where
                    assert p["smem"] <= smem, where
                    assert p["rows"] in (1, 4, 8), where
                    # "auto" takes the register path wherever it runs with 4-byte accumulators (chain_cuda.cuh
                    # kAutoRegs, measured faster on an H200): H <= 256, H <= 64 with a dense residual; never
                    # in float64 (not measured there)
                    regs = dtype != "float64" and H <= (64 if dense else 256)
                    if regs:
                        assert not p["grid"] and p["regs"] in (64, 128) and p["U"] == H, where
                        assert p["threads"] == -(-H // 32) * 32 and p["blocks"] * p["rows"] >= B, where
                        continue
                    assert p["regs"] == 0 and p["threads"] == 256, where
                    if p["grid"]:
                        nu, ng, rpg = p["unit_blocks"], p["row_groups"], p["rows_per_group"]
                        assert p["blocks"] == nu * ng <= sms and p["U"] % 2 == 0, where
                        assert nu * p["U"] >= H > (nu - 1) * p["U"], where
                        assert ng * rpg >= B > (ng - 1) * rpg, where
                    else:
                        assert p["U"] == H and p["blocks"] * p["rows"] >= B, where
                    assert p["KS"] * p["UP"] <= 256 and p["KS"] <= max(H, 1), where


def test_planner_paths_and_knobs(probe):
    # W_hh of H = 128 fits one block in float32 (float64 under "auto"); H = 512 and 1024 take the grid path.
    assert not probe("H100", 32, 128, False, "float32", {"WCRNN_CUDA_PATH": "block"})[0][0]["grid"]
    q = probe("H100", 32, 128, False, "float64")[0][0]
    assert not q["grid"] and q["regs"] == 0, q
    assert probe("H100", 8, 512, False, "float32")[0][0]["grid"]
    assert probe("A100", 8, 1024, True, "float32")[0][1]["grid"]
    # S3 in float32 (B = 64, H = 256): the register path under "auto"; without it (block forced: does not fit;
    # grid forced, what "auto" planned before the register path) 8 row groups of 8 rows times 16 slices of 16
    # units.
    assert all(q["ok"] and q["regs"] == 128 for q in probe("H100", 64, 256, False, "float32")[0])
    assert not any(q["ok"] for q in probe("H100", 64, 256, False, "float32", {"WCRNN_CUDA_PATH": "block"})[0])
    q = probe("H100", 64, 256, False, "float32", {"WCRNN_CUDA_PATH": "grid"})[0][0]
    assert q["grid"] and (q["row_groups"], q["rows_per_group"], q["unit_blocks"], q["U"]) == (8, 8, 16, 16), q
    # Forcing the grid path at small H (what the GPU tests do), the tile height and the row groups.
    p = probe("H100", 11, 17, False, "float64", {"WCRNN_CUDA_PATH": "grid", "WCRNN_CUDA_ROWS": "4"})[0]
    assert all(q["ok"] and q["grid"] and q["rows"] == 4 and q["U"] == 2 and q["unit_blocks"] == 9
               and q["row_groups"] == 3 and q["rows_per_group"] == 4 for q in p), p
    p = probe("H100", 11, 17, False, "float64", {"WCRNN_CUDA_PATH": "grid", "WCRNN_CUDA_ROW_GROUPS": "1"})[0]
    assert all(q["ok"] and q["row_groups"] == 1 and q["rows_per_group"] == 11 and q["rows"] == 8 for q in p), p
    assert not any(q["ok"] for q in probe("H100", 8, 64, False, "float32", {"WCRNN_CUDA_ROW_GROUPS": "x"})[0])
    # Forcing the block path where W_hh cannot fit is an error, not a silent change of path.
    assert not any(q["ok"] for q in probe("A100", 8, 1024, False, "float32", {"WCRNN_CUDA_PATH": "block"})[0])
    assert not any(q["ok"] for q in probe("A100", 8, 64, False, "float32", {"WCRNN_CUDA_ROWS": "3"})[0])
    # The register path, only when forced: one thread per unit, K = 64 or 128 registers of W_hh per thread,
    # the tile height as on the block path, two (forward) or four (backward) buffers of BT rows of K words
    # (H rounded up to 4 past K), and the rows' words past K in shared memory.
    f, b = probe("H100", 32, 128, False, "float32", {"WCRNN_CUDA_PATH": "regs"})[0]
    assert f["ok"] and (f["regs"], f["threads"], f["rows"], f["blocks"], f["smem"]) == (128, 128, 1, 32, 1024), f
    assert b["ok"] and (b["regs"], b["smem"]) == (128, 2048), b
    f, _ = probe("H100", 200, 17, True, "float32", {"WCRNN_CUDA_PATH": "regs"})[0]
    assert (f["regs"], f["threads"], f["rows"], f["blocks"], f["smem"]) == (64, 32, 4, 50, 2048), f
    assert probe("H100", 8, 64, False, "float64", {"WCRNN_CUDA_PATH": "regs"})[0][1]["regs"] == 64
    f, b = probe("H100", 64, 256, False, "float32", {"WCRNN_CUDA_PATH": "regs"})[0]  # S3: 128 words in registers
    assert (f["regs"], f["threads"], f["blocks"], f["smem"]) == (128, 256, 64, (2 * 256 + 128 * 256) * 4), f
    assert b["smem"] == (4 * 256 + 128 * 256) * 4, b
    f, _ = probe("H100", 3, 101, False, "float64", {"WCRNN_CUDA_PATH": "regs"})[0]
    assert (f["regs"], f["threads"], f["smem"]) == (64, 128, (2 * 104 + 40 * 101) * 8), f
    for H, dense, dtype in ((257, False, "float32"), (65, True, "float32"), (129, False, "float64"),
                            (8, True, "float64")):
        assert not any(q["ok"] for q in probe("H100", 8, H, dense, dtype, {"WCRNN_CUDA_PATH": "regs"})[0]), H
    # The tiled register path, only when forced: 4 KS threads (KS = 16 for H <= 64, 32 up to 128), two (forward)
    # or four (backward) buffers of BT rows of 4 KS words, then BT x 4 slices of 4 KS + 8 words of partial sums.
    f, b = probe("H100", 32, 128, False, "float32", {"WCRNN_CUDA_PATH": "tiled"})[0]  # S1
    assert f["ok"] and (f["tiled"], f["regs"], f["threads"], f["rows"], f["blocks"], f["smem"]) == \
        (32, 0, 128, 1, 32, (2 * 128 + 4 * 136) * 4), f
    assert b["ok"] and (b["tiled"], b["regs"], b["threads"], b["smem"]) == (32, 0, 128, (4 * 128 + 4 * 136) * 4), b
    f, _ = probe("H100", 1000, 6, False, "float64", {"WCRNN_CUDA_PATH": "tiled"})[0]
    assert (f["tiled"], f["threads"], f["rows"], f["blocks"], f["smem"]) == (16, 64, 8, 125, (16 * 64 + 32 * 72) * 8), f
    assert all(q["tiled"] == 0 for q in probe("H100", 32, 128, False, "float32")[0])  # never under "auto"
    for H, dense, dtype in ((129, False, "float32"), (65, False, "float64"), (8, True, "float32")):
        assert not any(q["ok"] for q in probe("H100", 8, H, dense, dtype, {"WCRNN_CUDA_PATH": "tiled"})[0]), H
    # Beyond the shared memory of the device: a clear error (caught here), never a launch.
    assert not any(q["ok"] for q in probe("A100", 8, 8192, True, "float32")[0])


def test_compile_flags_match_torch_extension_build():
    # The check must compile what the real build compiles: torch's nvcc flags, C++20, and no fast math.
    flags = common_flags()
    for f in getattr(cpp_extension, "COMMON_NVCC_FLAGS", []):
        assert f in flags
    assert "--use_fast_math" not in flags and "-use_fast_math" not in " ".join(flags)
    src = "\n".join(open(s).read() for s in SOURCES)
    assert re.search(r"TORCH_LIBRARY_IMPL\(wcrnn_C,\s*CUDA", src)
