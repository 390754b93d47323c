// CPU emulator (tests/cuda_emu): C10_CUDA_CHECK for the emulated runtime; the error says what failed.
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#define C10_CUDA_CHECK(EXPR)                                                                          \
  do {                                                                                                \
    const cudaError_t wcrnn_emu_err = (EXPR);                                                          \
    TORCH_CHECK(wcrnn_emu_err == cudaSuccess, "CUDA error (emulated): ", cudaGetErrorString(wcrnn_emu_err), \
                ": ", ::wcrnn_emu::last_message());                                                    \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())
