"""The "cuda" backend: persistent CUDA kernels of csrc/cuda/ (float32, float64, float16, bfloat16).

The chains run in the ``wcrnn_C`` operator library, registered for the CUDA dispatch key of the same ops
the C++ CPU kernels implement (``wcrnn_C::chain_fwd`` / ``wcrnn_C::chain_bwd``). ``wcrnn_kernels._build``
compiles ``csrc/cuda/*.cu`` into that library only where torch has CUDA, nvcc is found and
``WCRNN_NO_CUDA`` is unset. Importing this module never compiles and never raises: a CPU-only torch, a
machine without a GPU or a library built without the CUDA kernels shows up in ``available_backends()``
with the reason and the fix.

Kernel design (csrc/cuda/chain_cuda.cuh): one persistent kernel per call and direction. When W_hh fits
one thread block's shared memory (H up to 201 in float32 and 282 in float16 on an A100, 238 and 334 on an
H100; about 30 % less with a dense residual, whose matrix is on chip too), each block owns a tile of batch
rows and runs all T steps with W_hh on chip (the "block path"). Beyond that,
W_hh is split across the blocks of a cooperative launch, a block owns a slice of the units for a group of
rows, and the blocks exchange the new state through L2 and meet at a grid-wide barrier once per step
(the "grid path"). State and accumulation are float32 for float16/bfloat16 (float64 for float64). The
backward chain receives float32 tensors for float16/bfloat16 models (ops.py upcasts). A third path, the
"register path" (one thread per unit keeps its row of W_hh in registers, past 128 words, 64 in float64, in
shared memory; H <= 256, 128 in float64, 64 with a dense residual), is what "auto" takes wherever it runs in
float32, float16 and bfloat16: on an H200 it measured 1.0-3.9x faster than the block and grid paths
(benchmarks/results/h200-ec2fdbb-run4 and the run after it). float64 keeps the other paths unless forced.

Environment variables, read at each call, for tests and tuning: ``WCRNN_CUDA_PATH=auto|block|grid|regs``
forces a path (an error if it cannot run the shape), ``WCRNN_CUDA_ROWS=1|4|8`` the batch rows per tile /
chunk, ``WCRNN_CUDA_ROW_GROUPS=n`` the grid path's row groups, and ``WCRNN_POISON_OUTPUTS=1`` fills the
op's outputs and exchange buffers with NaN before the kernels run (as the CPU kernels do).

Status: compiled for sm_80 / sm_90 in CI, and its source (kernels, planner, launches) runs in CI on CPU
tensors under the emulator of tests/cuda_emu (tests/test_cuda_emulated.py, against the float64 reference and
under AddressSanitizer). On an H200 (scripts/gpu_check.sh, benchmarks/results/h200-*): every path against the
float64 reference and under compute-sanitizer; tests/test_cuda.py is the GPU test file of tier 3.
"""
from __future__ import annotations

import torch

from .. import _build
from ._registry import register_backend
from .compiled import WcrnnCOps, load

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# Largest hidden size the kernels are sized for on sm_80 / sm_90 class GPUs (the grid path's W_hh slice,
# staged rows and partial sums fit shared memory up to here even for a dense residual). Larger H may run
# and otherwise fails with an error naming the shared memory needed; "triton" / "torch" run it.
_MAX_HIDDEN = {torch.float64: 512}
_MAX_HIDDEN_DEFAULT = 1024

_INSTALL_HINT = ("install a CUDA build of torch (https://pytorch.org/get-started/locally/) and nvcc matching "
                 "torch.version.cuda (a CUDA toolkit, or for CUDA 13 NVIDIA's wheels: pip install "
                 "nvidia-cuda-nvcc nvidia-cuda-crt nvidia-cuda-cccl nvidia-nvvm, pinned to that version); the "
                 "kernels then compile on first use (or at install time with `pip install --no-build-isolation .`)")


class CudaBackend(WcrnnCOps):
    name = "cuda"

    def availability(self):
        if torch.version.cuda is None:
            return False, f"this torch ({torch.__version__}) is built without CUDA: {_INSTALL_HINT}"
        if not torch.cuda.is_available():
            return False, ("no CUDA device is visible to torch (torch.cuda.is_available() is False); check the "
                           "driver and CUDA_VISIBLE_DEVICES")
        ok, why = load()
        if not ok:
            return False, why
        if not torch._C._dispatch_has_kernel_for_dispatch_key("wcrnn_C::chain_fwd", "CUDA"):
            decision = _build.extension_info().get("cuda_decision")
            detail = f" ({decision})" if decision else ""
            return False, (f"the loaded wcrnn_C library was built without the CUDA kernels{detail}: unset "
                           f"WCRNN_NO_CUDA, make nvcc findable (CUDA_HOME), and rebuild; {why}")
        return True, f"persistent CUDA kernels (csrc/cuda); {why}"

    def supports(self, device, dtype, hidden_size):
        if device.type != "cuda":
            return f"runs CUDA tensors only, got a {device.type} tensor"
        if dtype not in _DTYPES:
            return f"runs float32, float64, float16 and bfloat16, got {dtype}"
        limit = _MAX_HIDDEN.get(dtype, _MAX_HIDDEN_DEFAULT)
        if hidden_size > limit:
            return (f"hidden size {hidden_size} is beyond the {limit} the CUDA kernels are sized for in {dtype} "
                    "(backend='triton' or 'torch' runs it)")
        return None


register_backend(CudaBackend())
