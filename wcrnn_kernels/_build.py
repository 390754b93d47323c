"""Find, build and load the compiled extension: the ``wcrnn_C`` operator library (CPU and CUDA kernels).

``load_extension() -> (ok, reason)`` is the one entry point; every compiled backend ("cpp", "cuda") calls it.
It loads the library into the process at most once and prefers, in order:

1. the extension ``setup.py`` compiled at install time (``wcrnn_kernels/_C*.so``), only if the build
   record beside it (``_C_build.json``) names this torch, this Python and, when the sources are at hand,
   these sources - a library built against another torch is never loaded (it would fail with undefined
   symbols, or worse, load and misbehave);
2. a build on first use with ninja (``torch.utils.cpp_extension.load``) into a cache directory keyed by the
   torch version, the Python version and a hash of the sources' contents, the compiler and the flags
   (``cache_entry``). It is compiled once per machine, announced by one line on stderr with the reason, and
   loaded as it is by every later process of every environment with that torch and Python: a finished build
   carries a record (``build_record.json``) and is never handed to ninja again, so other absolute paths (a
   second virtual environment, the source tree) cannot rebuild it.

If neither works (no compiler, no ninja, ``WCRNN_NO_BUILD=1``), ``ok`` is False and ``reason`` says why and
how to fix it; ``available_backends()`` shows that reason and the "torch" backend keeps working.

One library: the C++ sources (``csrc/*.cpp``, ``csrc/cpu/*.cpp``) always, plus ``csrc/cuda/*.cu`` when torch
has CUDA, nvcc is found and ``WCRNN_NO_CUDA`` is unset (archs from ``WCRNN_CUDA_ARCH``, default "8.0;9.0+PTX").
``extension_info()`` says what was loaded, from where, and whether it carries CUDA kernels.

Environment variables (WCRNN_CACHE_DIR, WCRNN_NO_BUILD, WCRNN_NO_CUDA, WCRNN_CUDA_ARCH): the table of
docs/design.md section 11, read through ``_env.py``.

This module imports only the standard library and ``_env.py`` at import time (torch lazily), because
``setup.py`` loads it by file path to share the source list, flags and hash with the install-time build.
"""
from __future__ import annotations

import glob
import hashlib
import importlib.machinery
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import traceback


def _env_module():
    # the package's environment variables (wcrnn_kernels/_env.py); by file path when setup.py loads this file
    try:
        from . import _env
        return _env
    except ImportError:
        import importlib.util
        spec = importlib.util.spec_from_file_location("_wcrnn_env", os.path.join(os.path.dirname(__file__), "_env.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


_env = _env_module()

BUILD_RECORD = "_C_build.json"
DEFAULT_CUDA_ARCH = "8.0;9.0+PTX"  # + PTX of compute_90: newer GPUs JIT it

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_lock = threading.Lock()
_state: dict = {}  # filled once by load_extension()


# --------------------------------------------------------------------------------------------------------
# Sources, flags, hash (shared with setup.py)

def source_root() -> str | None:
    """The csrc/ directory: packaged beside this file as ``_csrc`` (installed), or ``../csrc`` (checkout)."""
    for cand in (os.path.join(_PKG_DIR, "_csrc"), os.path.join(os.path.dirname(_PKG_DIR), "csrc")):
        if os.path.isfile(os.path.join(cand, "wcrnn_ops.cpp")):
            return cand
    return None


def cpp_sources(root: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, "*.cpp")) + glob.glob(os.path.join(root, "cpu", "*.cpp")))


def cuda_sources(root: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, "cuda", "*.cu")))


def _hashed_files(root: str, with_cuda: bool) -> list[str]:
    files = [f for f in glob.glob(os.path.join(root, "**", "*"), recursive=True)
             if os.path.isfile(f) and f.endswith((".cpp", ".h", ".hpp", ".cu", ".cuh"))]
    if not with_cuda:
        cuda_dir = os.path.join(root, "cuda") + os.sep
        files = [f for f in files if not f.startswith(cuda_dir)]
    return sorted(files)


_COMPILER_ID: dict = {}


def compiler_id() -> str:
    """The first line of `$CXX --version` (c++ by default): part of the cache key, and says gcc or clang."""
    cxx = os.environ.get("CXX", "c++")
    if cxx not in _COMPILER_ID:
        try:
            out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
            _COMPILER_ID[cxx] = (out.strip().splitlines() or ["unknown"])[0]
        except (OSError, subprocess.SubprocessError):
            _COMPILER_ID[cxx] = "unknown"
    return _COMPILER_ID[cxx]


def _use_openmp() -> bool:
    # GCC on Linux: the library then shares torch's libgomp (same soname, already loaded), so
    # torch.set_num_threads governs the kernels too. Clang would pull in a second OpenMP runtime (or find no
    # omp.h); there the kernels start std::threads themselves (csrc/wcrnn_cpu.cpp, parallel_rows).
    return sys.platform.startswith("linux") and "clang" not in compiler_id().lower()


BRANCH_ALIGN_FLAG = "-Wa,-mbranches-within-32B-boundaries"
_BRANCH_ALIGN: dict = {}


def branch_alignment_flags() -> list[str]:
    """x86-64: the assembler keeps every jump, and every compare fused with its jump, inside one 32-byte block.

    Intel cores with the JCC-erratum microcode (Skylake to Cascade Lake) serve a loop whose jump crosses such a
    block from the legacy decoders instead of the uop cache. Which loops cross is an accident of code layout:
    a change that only moved the C++ pack's inner loop made a T = 1 call 1.4x slower (B = 1, H = 128: 14.5 ->
    20 us; the same instructions, its compare-and-jump across a boundary). With the padding, layout no
    longer decides. Probed once per compiler (binutils >= 2.34 has the option); left out where it fails, and
    on other architectures."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    cxx = os.environ.get("CXX", "c++")
    if cxx not in _BRANCH_ALIGN:
        ok = False
        try:
            r = subprocess.run([cxx, BRANCH_ALIGN_FLAG, "-x", "c++", "-c", "-", "-o", os.devnull],
                               input="int f(int x) { return x ? 1 : 2; }\n", capture_output=True, text=True,
                               timeout=60)
            ok = r.returncode == 0
        except (OSError, subprocess.SubprocessError):
            pass
        _BRANCH_ALIGN[cxx] = [BRANCH_ALIGN_FLAG] if ok else []
    return list(_BRANCH_ALIGN[cxx])


def cxx_flags() -> list[str]:
    # -ffp-contract=fast lets the kernels' a * b + c become FMA instructions in the AVX2 / AVX-512 variants.
    flags = ["-O3", "-ffp-contract=fast"] + branch_alignment_flags()
    if _use_openmp():
        flags.append("-fopenmp")
    return flags


def ld_flags() -> list[str]:
    flags = ["-fopenmp"] if _use_openmp() else []
    if sys.platform.startswith("linux"):
        # The C++ runtime by its shared library's name, before the driver's own -lstdc++. Where a toolchain
        # offers only the archive libstdc++.a for -lstdc++, the linker silently copies the runtime into the
        # library; beside the process's libstdc++.so.6 (loaded by torch) the two copies disagree about locale
        # facets, and an error message that formats an integer drops the number or crashes the process. The
        # first GPU machine run (Ubuntu 24.04, g++ 13.3) crashed so in every such message. See
        # static_cxx_runtime(), which refuses a library built that way.
        flags.append("-l:libstdc++.so.6")
    return flags


def nvcc_flags() -> list[str]:
    return ["-O3"]


def cuda_arch_list() -> str:
    return (_env.get("WCRNN_CUDA_ARCH") or "").strip() or DEFAULT_CUDA_ARCH


# The CUDA compiler from pip, for machines with no CUDA toolkit (torch's CUDA wheels bring the runtime, not
# nvcc). From CUDA 13 on NVIDIA's wheels install into one tree, site-packages/nvidia/cu<major>, laid out like a
# toolkit: the runtime headers and libcudart come with torch; these add what compiling needs. (CUDA 12's
# nvidia-cuda-nvcc-cu12 ships ptxas without nvcc: nothing to find there.)
PIP_CUDA_PARTS = (("bin/nvcc", "nvidia-cuda-nvcc"), ("include/crt/host_config.h", "nvidia-cuda-crt"),
                  ("include/nv/target", "nvidia-cuda-cccl"), ("nvvm/bin/cicc", "nvidia-nvvm"),
                  ("include/cuda_runtime.h", "nvidia-cuda-runtime"))


def pip_cuda_home(cuda_version: str | None) -> str | None:
    """site-packages/nvidia/cu<major> when it holds nvcc (pip install nvidia-cuda-nvcc), else None."""
    if not cuda_version:
        return None
    try:
        import nvidia  # the namespace package of NVIDIA's wheels
    except ImportError:
        return None
    for base in getattr(nvidia, "__path__", []):
        home = os.path.join(base, f"cu{cuda_version.split('.')[0]}")
        if os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return home
    return None


def pip_cuda_install_hint(cuda_version: str, packages=None) -> str:
    """The pip command for `packages` (default: the compiler wheels) pinned to torch's CUDA major.minor."""
    pin = ".".join(cuda_version.split(".")[:2]) + ".*"
    packages = packages or [pkg for _, pkg in PIP_CUDA_PARTS[:4]]
    return "pip install " + " ".join(f"'{pkg}=={pin}'" for pkg in packages)


def cuda_home() -> tuple[str | None, bool]:
    """(the CUDA toolkit root a build uses, whether it is the pip one): torch's CUDA_HOME (the CUDA_HOME
    variable, nvcc on PATH, /usr/local/cuda) when it has nvcc, else site-packages/nvidia/cu<major>."""
    import torch
    from torch.utils import cpp_extension
    home = cpp_extension.CUDA_HOME
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return home, False
    pip = pip_cuda_home(torch.version.cuda)
    return (pip, True) if pip else (home, False)


class _CudaHome:
    """Within: torch.utils.cpp_extension builds with the CUDA toolkit at `home` (it reads its module-level
    CUDA_HOME whenever it needs a path)."""

    def __init__(self, home):
        self.home = home

    def __enter__(self):
        from torch.utils import cpp_extension
        self.saved = cpp_extension.CUDA_HOME
        cpp_extension.CUDA_HOME = self.home
        return self

    def __exit__(self, *exc):
        from torch.utils import cpp_extension
        cpp_extension.CUDA_HOME = self.saved


def cudart_link_flags(home: str, scratch: str) -> list[str]:
    """Linker flags that let torch's `-lcudart` resolve against `home`. The pip runtime ships only the
    versioned libcudart.so.<N> (no libcudart.so): a link-time symlink to it in `scratch`. The library then
    needs libcudart.so.<N>, which torch has loaded already."""
    for sub in ("lib64", "lib"):
        d = os.path.join(home, sub)
        if os.path.exists(os.path.join(d, "libcudart.so")):
            return []
        versioned = sorted(glob.glob(os.path.join(d, "libcudart.so.[0-9]*")), key=len)
        if versioned:
            shim = os.path.join(scratch, "cudart_link")
            os.makedirs(shim, exist_ok=True)
            link = os.path.join(shim, "libcudart.so")
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(versioned[0], link)
            return [f"-L{shim}"]
    return []


def cuda_build_decision(root: str | None = None) -> tuple[bool, str]:
    """Whether the CUDA kernels join the build, and why (not). Imports torch."""
    import torch
    root = root or source_root()
    if _env.get("WCRNN_NO_CUDA"):
        return False, "WCRNN_NO_CUDA is set"
    if torch.version.cuda is None:
        return False, f"this torch ({torch.__version__}) is built without CUDA"
    if root is None or not cuda_sources(root):
        return False, "no CUDA sources (csrc/cuda/*.cu) in this build"
    CUDA_HOME, from_pip = cuda_home()
    if from_pip:
        missing = [pkg for path, pkg in PIP_CUDA_PARTS if not os.path.exists(os.path.join(CUDA_HOME, path))]
        if missing:
            return False, (f"nvcc from pip at {CUDA_HOME}/bin/nvcc, but compiling also needs {', '.join(missing)}: "
                           f"{pip_cuda_install_hint(torch.version.cuda, missing)}")
        return True, f"nvcc from pip at {CUDA_HOME}/bin/nvcc, archs {cuda_arch_list()}"
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None
    if nvcc is None or not os.path.exists(nvcc):
        return False, ("nvcc not found (set CUDA_HOME to a CUDA toolkit matching torch's CUDA "
                       f"{torch.version.cuda}, or {pip_cuda_install_hint(torch.version.cuda)})")
    if not (os.path.isfile(os.path.join(CUDA_HOME, "include", "cuda_runtime.h"))
            or glob.glob(os.path.join(CUDA_HOME, "targets", "*", "include", "cuda_runtime.h"))):
        # e.g. nvcc on PATH is a wrapper script in /usr/local/bin: torch then guesses CUDA_HOME=/usr/local
        return False, (f"CUDA_HOME={CUDA_HOME} (nvcc at {nvcc}) has no include/cuda_runtime.h: set CUDA_HOME to "
                       f"the root of a CUDA toolkit matching torch's CUDA {torch.version.cuda}")
    return True, f"nvcc at {nvcc}, archs {cuda_arch_list()}"


def source_hash(root: str, with_cuda: bool, extra: tuple = ()) -> str:
    """sha256 over the sources that go into the build, their relative paths, the flags and `extra`."""
    h = hashlib.sha256()
    for f in _hashed_files(root, with_cuda):
        h.update(os.path.relpath(f, root).replace(os.sep, "/").encode())
        with open(f, "rb") as fh:
            h.update(hashlib.sha256(fh.read()).digest())
    h.update(repr((compiler_id(), cxx_flags(), ld_flags(), with_cuda, nvcc_flags() if with_cuda else None,
                   cuda_arch_list() if with_cuda else None, extra)).encode())
    return h.hexdigest()


def build_record(root: str, with_cuda: bool) -> dict:
    """What setup.py writes beside the installed library, and what loading checks against."""
    import torch
    return {"torch": torch.__version__, "torch_git": getattr(torch.version, "git_version", None),
            "python": f"{sys.version_info[0]}.{sys.version_info[1]}", "cuda": bool(with_cuda),
            "source_hash": source_hash(root, with_cuda)}


# --------------------------------------------------------------------------------------------------------
# The built library must use the process's C++ runtime, not a copy of its own

# Functions that live in libstdc++'s own sources (not in headers): a library that defines one of them carries a
# static copy of the C++ runtime.
_CXX_RUNTIME_SYMBOLS = (b"_ZNSt8ios_base4InitC1Ev", b"_ZNSt6locale5classicEv", b"_ZNSt6locale7_ImplC1Em",
                        b"_ZNKSt7codecvtIDsc11__mbstate_tE10do_unshiftERS0_PcS3_RS3_")


def static_cxx_runtime(path: str) -> str | None:
    """The first C++-runtime function the shared library at ``path`` defines itself (a static copy of
    libstdc++ linked into it), or None. Reads the ELF dynamic symbol table (64-bit little-endian; None for any
    other file)."""
    import struct
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    for sh in sections:
        if sh[1] != 11:  # SHT_DYNSYM
            continue
        sym_off, sym_size, strtab = sh[4], sh[5], sections[sh[6]]
        str_off = strtab[4]
        for k in range(sym_off, sym_off + sym_size, 24):
            st_name, _, _, st_shndx = struct.unpack_from("<IBBH", data, k)
            if st_shndx == 0:  # undefined: imported, as it should be
                continue
            end = data.index(b"\0", str_off + st_name)
            name = data[str_off + st_name:end]
            if name in _CXX_RUNTIME_SYMBOLS:
                return name.decode()
    return None


def _static_cxx_runtime_reason(lib: str) -> str | None:
    sym = static_cxx_runtime(lib)
    if sym is None:
        return None
    return (f"{lib} carries its own static copy of the C++ runtime (it defines {sym}): the linker took "
            "libstdc++.a instead of libstdc++.so, and beside the process's libstdc++.so.6 error messages that "
            "format numbers would crash the process; install your g++'s libstdc++ development package (the "
            "libstdc++.so link) and rebuild")


# --------------------------------------------------------------------------------------------------------
# Loading

def _ops_registered() -> bool:
    import torch
    try:
        torch.ops.wcrnn_C.chain_fwd  # noqa: B018 - attribute lookup raises if the library is not loaded
        return True
    except (AttributeError, RuntimeError):
        return False


def _installed_library() -> str | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(_PKG_DIR, "_C" + suffix)
        if os.path.isfile(path):
            return path
    return None


def _check_record(path: str) -> str | None:
    """None if the installed library at `path` was built for this torch / Python / sources, else why not."""
    import torch
    rec_path = os.path.join(os.path.dirname(path), BUILD_RECORD)
    try:
        with open(rec_path) as fh:
            rec = json.load(fh)
    except (OSError, ValueError):
        return f"it has no readable build record ({rec_path})"
    if rec.get("torch") != torch.__version__ or rec.get("torch_git") != getattr(torch.version, "git_version", None):
        return f"it was built for torch {rec.get('torch')}, this is torch {torch.__version__}"
    py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if rec.get("python") != py:
        return f"it was built for Python {rec.get('python')}, this is Python {py}"
    root = source_root()
    if root is not None and rec.get("source_hash") != source_hash(root, bool(rec.get("cuda"))):
        return f"the sources in {root} changed since it was built"
    return None


def cache_root() -> str:
    env = _env.get("WCRNN_CACHE_DIR")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "wcrnn_kernels")


def jit_build_and_load(build_dir: str, name: str, *, with_cuda: bool, extra_cflags=(), extra_ldflags=(),
                       verbose: bool = False) -> str:
    """Compile the library with ninja into `build_dir` (if not up to date) and load it into this process.

    Also used by the memory-safety test to build an AddressSanitizer variant. Returns the library's path.
    """
    from torch.utils import cpp_extension
    root = source_root()
    if root is None:
        raise RuntimeError("the C++ sources (csrc/) are not installed with this package")
    sources = cpp_sources(root) + (cuda_sources(root) if with_cuda else [])
    os.makedirs(build_dir, exist_ok=True)
    saved_arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
    home = cuda_home()[0] if with_cuda else cpp_extension.CUDA_HOME
    extra_ldflags = list(extra_ldflags) + (cudart_link_flags(home, build_dir) if with_cuda and home else [])
    if with_cuda:
        os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list()
    try:
        with _CudaHome(home):
            cpp_extension.load(
                name=name, sources=sources, extra_include_paths=[root],
                extra_cflags=cxx_flags() + list(extra_cflags), extra_ldflags=ld_flags() + extra_ldflags,
                extra_cuda_cflags=nvcc_flags() if with_cuda else None, with_cuda=with_cuda,
                build_directory=build_dir, verbose=verbose, is_python_module=False)
    finally:
        if with_cuda:
            if saved_arch is None:
                os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
            else:
                os.environ["TORCH_CUDA_ARCH_LIST"] = saved_arch
    return os.path.join(build_dir, f"{name}.so")


_DIAGNOSTICS = (re.compile(r"\berror\b\s*:", re.IGNORECASE),
                re.compile(r"fatal|undefined reference|multiple definition|cannot find -l", re.IGNORECASE))


def first_error_line(lines: list[str]) -> str | None:
    """The first compiler / linker diagnostic in a failed build's output ("file:line: error: ...", "multiple
    definition of ...", "cannot find -lcudart"), skipping ninja's step lines and the command lines, whose
    flags (-Werror, --display_error_number) mention "error" too."""
    for ln in lines:
        text = ln.strip()
        if text.startswith("[") or " -o " in text or text.startswith(("FAILED:", "ninja:")):
            continue
        if any(p.search(text) for p in _DIAGNOSTICS):
            return text
    return None


def _missing_build_tool() -> str | None:
    """Why nothing can be compiled here (no compiler, no ninja), or None."""
    from torch.utils import cpp_extension
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return (f"no C++ compiler ({cxx!r} not found): install g++ or clang (or set CXX), or install "
                "a build made elsewhere; the 'torch' backend runs meanwhile")
    if not cpp_extension.is_ninja_available():
        return "ninja is needed to compile the kernels on first use: `pip install ninja`"
    return None


def _jit(notes: list[str]) -> tuple[bool, str]:
    root = source_root()
    if root is None:
        return False, ("the C++ sources (csrc/) are not part of this installation, so nothing can be compiled; "
                       "reinstall from the source tree")
    if _env.get("WCRNN_NO_BUILD"):
        return False, "WCRNN_NO_BUILD is set, so nothing is compiled at run time; unset it, or install " \
                      "with `pip install --no-build-isolation .` to compile at install time"
    with_cuda, cuda_why = cuda_build_decision(root)
    _state["cuda_decision"] = cuda_why
    ok, why = _jit_build(root, with_cuda)
    if not ok and with_cuda and why.startswith("compiling"):
        # One library holds both: a CUDA compile or link failure must not take the C++ CPU kernels down too.
        _state["cuda_decision"] = f"the build with the CUDA kernels failed, built without them: {why}"
        print(f"wcrnn_kernels: {why}; building the C++ kernels without CUDA", file=sys.stderr, flush=True)
        ok, why = _jit_build(root, False)
    if not ok:
        return False, why
    notes.append(why)
    return True, "; ".join(notes)


CACHE_RECORD = "build_record.json"


def cache_entry(root: str, with_cuda: bool) -> tuple[str, str, dict]:
    """(directory, library path, record) of the cached first-use build for these sources, this torch, this
    Python, this compiler and these flags. Every environment on the machine with the same torch and Python maps
    to the same entry, wherever its copy of the sources lives (the hash covers the files' contents and
    relative paths, never absolute ones)."""
    import torch
    # torch's git revision too: two builds may share a version string (local or nightly builds)
    digest = source_hash(root, with_cuda, extra=(getattr(torch.version, "git_version", None),))
    py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    name = f"wcrnn_C_{digest[:16]}"
    build_dir = os.path.join(cache_root(), f"torch-{torch.__version__}-py{py.replace('.', '')}", name)
    record = {"digest": digest, "torch": torch.__version__,
              "torch_git": getattr(torch.version, "git_version", None), "python": py, "cuda": bool(with_cuda),
              "compiler": compiler_id(), "cxx_flags": cxx_flags(), "ld_flags": ld_flags()}
    return build_dir, os.path.join(build_dir, f"{name}.so"), record


def _cached_build_problem(lib: str, record: dict) -> str | None:
    """None when the cache entry holds a finished build for exactly `record`, else why it cannot be used."""
    rec_path = os.path.join(os.path.dirname(lib), CACHE_RECORD)
    if not os.path.isfile(lib):
        return "no build in the cache for these sources, this torch, Python, compiler and flags yet"
    try:
        with open(rec_path) as fh:
            have = json.load(fh)
    except (OSError, ValueError):
        return f"the cached library has no readable build record ({rec_path}): an interrupted or older build"
    for k in record:
        if have.get(k) != record[k]:
            return f"the cached build record differs in {k!r} ({have.get(k)!r}, need {record[k]!r})"
    return None


class _FileLock:
    """An exclusive lock on `path` across processes (fcntl; a no-op where fcntl does not exist)."""

    def __init__(self, path: str):
        self.path, self.fh = path, None

    def __enter__(self):
        self.fh = open(self.path, "a")
        try:
            import fcntl
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX)
        except ImportError:
            pass
        return self

    def __exit__(self, *exc):
        self.fh.close()  # closing releases the lock


def _jit_build(root: str, with_cuda: bool) -> tuple[bool, str]:
    """Load the cached library, compiling it first if the cache has no finished build: (True, where) or
    (False, why not).

    A finished build (the library plus a build record naming the full hash, torch, Python, compiler and
    flags) is loaded as it is: ninja never runs for it, so another environment or a source checkout with
    other absolute paths cannot trigger a rebuild. A build happens under a lock in a private staging
    directory and is moved into place with its record only when it succeeded; every build prints one line
    on stderr with its reason."""
    import torch
    build_dir, lib, record = cache_entry(root, with_cuda)
    what = "C++/CUDA" if with_cuda else "C++"
    problem = _cached_build_problem(lib, record)
    if problem is not None:
        missing = _missing_build_tool()  # only a compile needs them: a finished build loads without
        if missing is not None:
            return False, missing
        os.makedirs(build_dir, exist_ok=True)
        with _FileLock(os.path.join(build_dir, ".lock")):
            problem = _cached_build_problem(lib, record)  # another process may have built it meanwhile
            if problem is not None:
                ok, why = _compile_into_cache(root, with_cuda, build_dir, lib, record, problem, what)
                if not ok:
                    return False, why
    if not _ops_registered():
        bad = _static_cxx_runtime_reason(lib)
        if bad is not None:
            return False, bad
        try:
            torch.ops.load_library(lib)
        except OSError as e:
            return False, f"loading the cached library {lib} failed ({e}); delete {build_dir} to rebuild it"
    bad = _static_cxx_runtime_reason(lib)
    if bad is not None:
        return False, bad
    _state.update(origin="jit", path=lib, cuda_built=with_cuda)
    return True, f"compiled on first use, cached at {lib}"


def _compile_into_cache(root, with_cuda, build_dir, lib, record, reason, what) -> tuple[bool, str]:
    import torch
    name = os.path.basename(lib)[:-len(".so")]
    staging = os.path.join(build_dir, f"staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    print(f"wcrnn_kernels: compiling the {what} kernels for torch {torch.__version__}, Python {record['python']} "
          f"into {build_dir} ({reason}; seconds to a minute, once for every environment on this machine)",
          file=sys.stderr, flush=True)
    try:
        built = jit_build_and_load(staging, name, with_cuda=with_cuda)
    except Exception as e:  # noqa: BLE001 - any build failure becomes the backend's reason
        log = os.path.join(build_dir, "build_error.log")
        try:
            with open(log, "w") as fh:
                fh.write(traceback.format_exc())
        except OSError:
            log = "(could not write a log)"
        lines = str(e).strip().splitlines()
        summary = first_error_line(lines) or (lines[-1] if lines else type(e).__name__)
        return False, f"compiling the {what} kernels failed ({summary[:300]}); full log: {log}"
    os.replace(built, lib)  # the loaded library stays mapped; later processes load it from `lib`
    tmp = os.path.join(build_dir, f".{CACHE_RECORD}.{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(record, fh, indent=1)
    os.replace(tmp, os.path.join(build_dir, CACHE_RECORD))
    shutil.rmtree(staging, ignore_errors=True)
    return True, "compiled"


def load_extension() -> tuple[bool, str]:
    """Load the wcrnn_C library once per process: (True, where it came from) or (False, why not + fix)."""
    with _lock:
        if "ok" not in _state:
            try:
                ok, why = _load()
            except Exception as e:  # noqa: BLE001 - never let a loader bug break `import wcrnn_kernels`
                ok, why = False, f"loading the compiled extension failed: {type(e).__name__}: {e}"
            _state.update(ok=ok, reason=why)
        return _state["ok"], _state["reason"]


def _load() -> tuple[bool, str]:
    import torch
    if _ops_registered():
        _state.update(origin="preloaded", path=None, cuda_built=None)
        return True, "the wcrnn_C library was already loaded in this process"
    notes = []
    lib = _installed_library()
    if lib is not None:
        why_not = _check_record(lib) or _static_cxx_runtime_reason(lib)
        if why_not is None:
            try:
                torch.ops.load_library(lib)
                with open(os.path.join(os.path.dirname(lib), BUILD_RECORD)) as fh:
                    rec = json.load(fh)
                _state.update(origin="installed", path=lib, cuda_built=bool(rec.get("cuda")),
                              cuda_decision=rec.get("cuda_decision"))
                return True, f"installed extension {lib}"
            except OSError as e:
                why_not = f"loading it failed ({e})"
        notes.append(f"installed extension {lib} not used: {why_not}")
    ok, why = _jit(notes)
    if not ok and notes:
        why = "; ".join(notes + [why])
    return ok, why


def extension_info() -> dict:
    """What load_extension() did: ok, reason, origin ('installed' | 'jit' | 'preloaded'), path, whether the
    library carries CUDA kernels (cuda_kernels) and why CUDA was or was not built (cuda_decision)."""
    ok, reason = load_extension()
    info = {"ok": ok, "reason": reason, "origin": _state.get("origin"), "path": _state.get("path"),
            "cuda_decision": _state.get("cuda_decision"), "cuda_kernels": False}
    if ok:
        import torch
        info["cuda_kernels"] = bool(torch._C._dispatch_has_kernel_for_dispatch_key("wcrnn_C::chain_fwd", "CUDA"))
    return info
