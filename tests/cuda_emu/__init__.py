"""Build and load the CPU emulator of the CUDA kernels (see include/cuda_runtime.h for what it is).

``load()`` compiles csrc/cuda/*.cu as C++ against the emulated runtime in this directory, with torch's JIT
extension builder (ninja), into a cache keyed by the torch version and a hash of every source it compiles,
and loads it: the ops ``torch.ops.wcrnn_cuda_emu.chain_fwd`` / ``chain_bwd`` then run the CUDA backend's
code on CPU tensors. Returns None and the reason when it cannot be built here.
"""
from __future__ import annotations

import glob
import hashlib
import os

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SOURCES = [os.path.join(HERE, f)
           for f in ("emu_runtime.cpp", "emu_fwd.cpp", "emu_bwd.cpp", "emu_ops.cpp", "emu_selftest.cpp")]

_STATE: dict = {}


def _inputs() -> list[str]:
    files = SOURCES + glob.glob(os.path.join(HERE, "include", "**", "*.h"), recursive=True)
    files += glob.glob(os.path.join(REPO, "csrc", "cuda", "*"))
    files += glob.glob(os.path.join(REPO, "csrc", "*.h"))  # wcrnn_op_signatures.h, wcrnn_checks.h, wcrnn_codes.h
    return sorted(files)


def _key() -> str:
    import torch
    h = hashlib.sha256(torch.__version__.encode())
    for f in _inputs():
        h.update(os.path.relpath(f, REPO).encode())
        with open(f, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:16]


def load(sanitize: bool = False):
    """(True, build directory) once the emulated ops are registered, else (False, reason).

    ``sanitize=True`` builds and loads the AddressSanitizer + UBSan variant instead; only a process that
    started with libasan preloaded can load it (tests/test_cuda_emulated.py runs it in a subprocess).
    """
    if sanitize in _STATE:
        return _STATE[sanitize]
    import torch
    from torch.utils import cpp_extension
    try:
        if not cpp_extension.is_ninja_available():
            raise RuntimeError("ninja is needed to build it: `pip install ninja`")
        cache = os.environ.get("WCRNN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "wcrnn_kernels")
        suffix = "-asan" if sanitize else ""
        build_dir = os.path.join(cache, f"cuda_emu{suffix}-{_key()}")
        os.makedirs(build_dir, exist_ok=True)
        cflags = ["-O2", "-std=c++17", "-Wall", "-Wno-unused-function", "-Wno-unknown-pragmas"]
        ldflags = []
        if sanitize:
            cflags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer",
                       "-g", "-O1"]
            ldflags = ["-fsanitize=address,undefined"]
        cpp_extension.load(
            name=f"wcrnn_cuda_emu{suffix.replace('-', '_')}", sources=SOURCES,
            extra_include_paths=[os.path.join(HERE, "include")], extra_cflags=cflags, extra_ldflags=ldflags,
            build_directory=build_dir, is_python_module=False, verbose=False)
        result = (True, build_dir)
    except Exception as e:  # noqa: BLE001 - the reason is reported by the tests that need it
        result = (False, f"the CUDA emulator did not build: {type(e).__name__}: {str(e).strip()[-2000:]}")
    _STATE[sanitize] = result
    return result
