// CPU emulator of the part of the CUDA runtime API and device language that csrc/cuda/ uses, so that the
// CUDA kernels' own source runs on a machine without a GPU (tests/test_cuda_emulated.py).
//
// How: the .cu files are compiled as C++ with this include directory first on the path (it shadows
// <cuda_runtime.h>, <cooperative_groups.h> and c10/cuda/*). Every CUDA thread of a launch is a fiber
// (ucontext) on the calling OS thread; __syncthreads() and grid.sync() switch back to a scheduler that
// releases a barrier once every thread of the block (or grid) waits at it. Each block gets its own dynamic
// shared memory, filled with 0xFF bytes (NaN in every float type) at launch.
//
// What it checks beyond the results: a __syncthreads() that not every live thread of the block reaches, or
// that threads reach at different call sites; a grid barrier in a non-cooperative launch or that some
// threads skip; a cooperative launch with more blocks than can be co-resident; dynamic shared memory above
// the 48 KiB default without cudaFuncSetAttribute, or above the device's opt-in limit. The order in which
// threads (and blocks) run between two barriers is forward, reverse or shuffled (WCRNN_EMU_ORDER), so a
// missing barrier that lets one thread read what another writes in the same phase changes the results.
//
// What it cannot show: anything about the memory model or timing of a real GPU (L1/L2 coherence, the
// .cg loads and stores are plain accesses here), register pressure (occupancy counts shared memory and
// threads only), or the accuracy of the device math library (tanhf here is glibc's).
//
// The emulated device (read at each call): WCRNN_EMU_SMS (SMs, default 8), WCRNN_EMU_SMEM_OPTIN (opt-in
// dynamic shared memory per block in bytes, default 232448 as on an H100).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>

#define WCRNN_CUDA_EMULATOR 1

// ---- device language -------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned int x, y, z;
};
struct __align__(16) float4 {
  float x, y, z, w;
};
struct __align__(16) double2 {
  double x, y;
};

namespace wcrnn_emu {
const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();
unsigned char* dynamic_smem();
void syncthreads(const char* file, int line);
void grid_sync(const char* file, int line);
}  // namespace wcrnn_emu

#define threadIdx (::wcrnn_emu::thread_idx())
#define blockIdx (::wcrnn_emu::block_idx())
#define blockDim (::wcrnn_emu::block_dim())
#define gridDim (::wcrnn_emu::grid_dim())
#define __syncthreads() ::wcrnn_emu::syncthreads(__FILE__, __LINE__)
#define WCRNN_DYNAMIC_SMEM(name) unsigned char* const name = ::wcrnn_emu::dynamic_smem()

template <class T>
inline T __ldcg(const T* p) { return *p; }
template <class T>
inline void __stcg(T* p, T v) { *p = v; }

// CUDA's integer min/max overloads (device code calls them unqualified)
inline int min(int a, int b) { return a < b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }

// ---- runtime API -------------------------------------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchFailure = 719,
  cudaErrorCooperativeLaunchTooLarge = 720,
};
using cudaError = cudaError_t;
struct CUstream_st;
using cudaStream_t = CUstream_st*;

enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
  cudaDevAttrCooperativeLaunch = 95,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

namespace wcrnn_emu {
cudaError_t device_attribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t set_max_dynamic_smem(const void* func, int bytes);
cudaError_t occupancy(int* blocks, const void* func, int block_size, size_t smem);
cudaError_t launch(const void* func, dim3 grid, dim3 block, size_t smem, bool cooperative,
                   std::function<void()> body);
cudaError_t last_error(bool reset);
const char* error_string(cudaError_t e);
std::string last_message();  // what the last failed call found, in words
}  // namespace wcrnn_emu

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  return ::wcrnn_emu::device_attribute(value, attr, device);
}
inline cudaError_t cudaGetLastError() { return ::wcrnn_emu::last_error(true); }
inline cudaError_t cudaPeekAtLastError() { return ::wcrnn_emu::last_error(false); }
inline const char* cudaGetErrorString(cudaError_t e) { return ::wcrnn_emu::error_string(e); }

// The template forms of the runtime API (cuda_runtime.h has the same ones): the kernel's own type tells the
// emulator how to call it with the argument array.
template <class P>
cudaError_t cudaFuncSetAttribute(void (*func)(P), cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return ::wcrnn_emu::set_max_dynamic_smem(reinterpret_cast<const void*>(func), value);
}
template <class P>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, void (*func)(P), int block_size,
                                                          size_t smem) {
  return ::wcrnn_emu::occupancy(blocks, reinterpret_cast<const void*>(func), block_size, smem);
}
template <class P>
cudaError_t cudaLaunchKernel(void (*func)(P), dim3 grid, dim3 block, void** args, size_t smem = 0,
                             cudaStream_t = nullptr) {
  const P params = *static_cast<const P*>(args[0]);  // copied at launch, as the driver does
  return ::wcrnn_emu::launch(reinterpret_cast<const void*>(func), grid, block, smem, false,
                             [func, params]() { func(params); });
}
template <class P>
cudaError_t cudaLaunchCooperativeKernel(void (*func)(P), dim3 grid, dim3 block, void** args, size_t smem = 0,
                                        cudaStream_t = nullptr) {
  const P params = *static_cast<const P*>(args[0]);
  return ::wcrnn_emu::launch(reinterpret_cast<const void*>(func), grid, block, smem, true,
                             [func, params]() { func(params); });
}
