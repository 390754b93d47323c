"""Every environment variable the package reads, in one place (the table of docs/design.md section 11).

Python code reads them through ``get`` / ``flag`` below, never through ``os.environ`` directly (a test
checks), so that this table, the design doc and the code cannot drift apart. The C++ and CUDA sources read
theirs with ``getenv`` at each call (the table names them too); everything else named ``WCRNN_*`` belongs to
the test suite, the benchmarks or the GPU script and is documented where it is read.
"""
from __future__ import annotations

import os

# name, read by, purpose ("user": documented for users; "testing": tests and tuning only)
_TABLE = """
WCRNN_CACHE_DIR            _build.py               user
WCRNN_NO_BUILD             _build.py,setup.py      user
WCRNN_NO_CUDA              _build.py               user
WCRNN_CUDA_ARCH            _build.py               user
WCRNN_CPU_ISA              csrc/wcrnn_cpu.cpp      testing
WCRNN_TRITON_AUTOTUNE      triton_kernels.py       user
WCRNN_TRITON_SPLIT_STATE   triton_kernels.py       user
WCRNN_RESOURCE_CACHE       triton_resources.py     testing
WCRNN_CUDA_PATH            csrc/cuda               testing
WCRNN_CUDA_ROWS            csrc/cuda               testing
WCRNN_CUDA_ROW_GROUPS      csrc/cuda               testing
WCRNN_POISON_OUTPUTS       csrc/                   testing
"""
# name -> (read by, purpose)
VARIABLES = {name: (where.replace(",", ", "), purpose)
             for name, where, purpose in (line.split() for line in _TABLE.strip().splitlines())}


def get(name: str, default: str | None = None) -> str | None:
    """The variable's value (read now, so that tests may set it), or ``default`` when unset."""
    if name not in VARIABLES:
        raise KeyError(f"{name} is not one of the package's environment variables (wcrnn_kernels/_env.py)")
    return os.environ.get(name, default)


def flag(name: str, default: bool) -> bool:
    """A switch: unset or empty gives ``default``; "0" is off; anything else is on."""
    v = get(name)
    return default if v is None or v == "" else v != "0"
