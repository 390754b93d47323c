"""Build (or load from the cache) the wcrnn_C library with the CUDA kernels and report what was loaded.

Exit status 0 only when the "cuda" backend is available afterwards. --dry-run (CPU): reports the C++ library
and the CUDA emulator of tests/cuda_emu instead (gpu_check.sh --dry-run sets WCRNN_NO_BUILD=1, so only the
emulator), and succeeds when the emulator loads."""
from __future__ import annotations

import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]


def main():
    t0 = time.time()
    from wcrnn_kernels import _build, available_backends
    info = _build.extension_info()
    print(json.dumps(info, indent=1, default=str))
    report = available_backends()
    print(json.dumps(report, indent=1))
    if "--dry-run" in sys.argv:
        import cuda_emu
        ok, why = cuda_emu.load()
        print(f"CUDA emulator: {'built' if ok else 'FAILED'}: {why}")
        print(f"build/load took {time.time() - t0:.0f} s")
        sys.exit(0 if ok else 1)  # the dry run builds no wcrnn_C (WCRNN_NO_BUILD=1): the emulator is the build
    print(f"build/load took {time.time() - t0:.0f} s")
    if not info.get("cuda_kernels") or not report["cuda"]["available"]:
        sys.exit("the CUDA kernels are not available: " + report["cuda"]["reason"])


if __name__ == "__main__":
    main()
