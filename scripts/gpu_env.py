"""The environment of a GPU run (tier 1 of scripts/gpu_check.sh): versions, and the device attributes the
kernels plan with (multiprocessors, shared memory per block with opt-in, cooperative launch, L2, registers),
read from the driver API through ctypes so that nothing here needs a build. Prints JSON."""
from __future__ import annotations

import ctypes
import json
import os
import platform
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# CUdevice_attribute values (cuda.h)
ATTRS = {"multiprocessors": 16, "max_shared_memory_per_block_optin": 97, "shared_memory_per_multiprocessor": 81,
         "cooperative_launch": 95, "l2_cache_bytes": 38, "registers_per_block": 12,
         "registers_per_multiprocessor": 82, "clock_khz": 13, "memory_clock_khz": 36,
         "compute_capability_major": 75, "compute_capability_minor": 76}


def driver_attributes(ordinal=0):
    try:
        cu = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        return {"error": f"libcuda.so.1: {e}"}
    if cu.cuInit(0) != 0:
        return {"error": "cuInit failed"}
    dev = ctypes.c_int()
    if cu.cuDeviceGet(ctypes.byref(dev), ordinal) != 0:
        return {"error": "cuDeviceGet failed"}
    out = {}
    for name, code in ATTRS.items():
        v = ctypes.c_int()
        rc = cu.cuDeviceGetAttribute(ctypes.byref(v), code, dev)
        out[name] = v.value if rc == 0 else f"error {rc}"
    ver = ctypes.c_int()
    if cu.cuDriverGetVersion(ctypes.byref(ver)) == 0:
        out["driver_api_version"] = ver.value
    return out


def tool_version(cmd):
    path = shutil.which(cmd[0])
    if path is None:
        for root in (os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"):
            cand = os.path.join(root, "bin", cmd[0])
            if root and os.path.exists(cand):
                path = cand
                break
    if path is None:
        return None
    try:
        out = subprocess.run([path] + cmd[1:], capture_output=True, text=True, timeout=30).stdout.strip()
        return f"{path}: {out.splitlines()[-1] if out else '?'}"
    except (OSError, subprocess.SubprocessError) as e:
        return f"{path}: {e}"


def main():
    import torch
    info = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
            "commit": os.environ.get("WCRNN_COMMIT", "unknown")}
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001
        info["triton"] = f"unavailable: {e}"
    import numpy
    info["numpy"] = numpy.__version__
    info["nvcc"] = tool_version(["nvcc", "--version"])
    info["compute-sanitizer"] = tool_version(["compute-sanitizer", "--version"])
    info["ncu"] = tool_version(["ncu", "--version"])
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["device"] = {"name": p.name, "capability": f"{p.major}.{p.minor}",
                          "total_memory_gib": round(p.total_memory / 2 ** 30, 1),
                          "multiprocessors": p.multi_processor_count, "count": torch.cuda.device_count()}
        info["driver"] = driver_attributes()
    else:
        info["device"] = None
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
