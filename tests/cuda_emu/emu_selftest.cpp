// Positive controls for the CPU emulator: small kernels with the bugs it claims to catch (a missing
// barrier, barriers not every thread reaches, a grid barrier in an ordinary launch, too much shared
// memory, a cooperative launch too large to be co-resident, a stack overflow). tests/test_cuda_emulated.py
// runs each one through wcrnn_cuda_emu::selftest(name, out) and checks that the emulator reports it (or,
// for the missing barrier, that the result depends on the thread order). "ok" means the launch succeeded.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <string>

namespace {

namespace cg = cooperative_groups;

struct P {
  float* out;
  int64_t n;  // elements of out
};

// Each thread writes its slot of shared memory, then reads its neighbour's: correct only with the barrier.
template <bool BARRIER>
__global__ void neighbour(P p) {
  WCRNN_DYNAMIC_SMEM(smem);
  float* s = reinterpret_cast<float*>(smem);
  const unsigned t = threadIdx.x;
  s[t] = static_cast<float>(t + 1);
  if constexpr (BARRIER) __syncthreads();
  p.out[blockIdx.x * blockDim.x + t] = s[(t + 1) % blockDim.x];
}

__global__ void divergent_barrier(P p) {
  if (threadIdx.x < 128) __syncthreads();
  p.out[threadIdx.x] = 1.0f;
}

__global__ void two_barrier_sites(P p) {
  if (threadIdx.x % 2) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  p.out[threadIdx.x] = 1.0f;
}

__global__ void grid_barrier(P p) {
  p.out[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f;
  cg::this_grid().sync();
}

__global__ void block_exits_before_grid_barrier(P p) {
  if (blockIdx.x == 0) return;
  cg::this_grid().sync();
  p.out[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f;
}

// Uses more stack than the emulator gives a thread (128 KiB); one thread, so only the spare stack below is hit.
__global__ void deep_stack(P p) {
  volatile unsigned char buf[160 * 1024];
  for (size_t i = 0; i < sizeof(buf); ++i) buf[i] = static_cast<unsigned char>(i);
  p.out[0] = buf[12345];
}

// Writes one element past the end of `out`: only ever run under AddressSanitizer, which must report it.
__global__ void write_past_end(P p) {
  if (threadIdx.x == 0) p.out[p.n] = 1.0f;
}

std::string outcome(cudaError_t e) {
  return e == cudaSuccess ? std::string("ok") : std::string(cudaGetErrorString(e)) + ": " + ::wcrnn_emu::last_message();
}

std::string selftest(const std::string& name, const at::Tensor& out) {
  TORCH_CHECK(out.is_contiguous() && out.scalar_type() == at::kFloat && out.numel() >= 4 * 256,
              "selftest: out: expected a contiguous float32 tensor of at least 1024 elements");
  P p{out.data_ptr<float>(), out.numel()};
  void* args[] = {&p};
  const size_t smem = 256 * sizeof(float);
  cudaGetLastError();
  if (name == "neighbour") return outcome(cudaLaunchKernel(neighbour<true>, dim3(4), dim3(256), args, smem));
  if (name == "neighbour_no_barrier") {
    return outcome(cudaLaunchKernel(neighbour<false>, dim3(4), dim3(256), args, smem));
  }
  if (name == "divergent_barrier") return outcome(cudaLaunchKernel(divergent_barrier, dim3(1), dim3(256), args, 0));
  if (name == "two_barrier_sites") return outcome(cudaLaunchKernel(two_barrier_sites, dim3(1), dim3(256), args, 0));
  if (name == "grid_barrier") return outcome(cudaLaunchCooperativeKernel(grid_barrier, dim3(4), dim3(256), args, 0));
  if (name == "grid_barrier_ordinary_launch") {
    return outcome(cudaLaunchKernel(grid_barrier, dim3(4), dim3(256), args, 0));
  }
  if (name == "block_exits_before_grid_barrier") {
    return outcome(cudaLaunchCooperativeKernel(block_exits_before_grid_barrier, dim3(4), dim3(256), args, 0));
  }
  if (name == "write_past_end") return outcome(cudaLaunchKernel(write_past_end, dim3(1), dim3(32), args, 0));
  if (name == "deep_stack") return outcome(cudaLaunchKernel(deep_stack, dim3(1), dim3(1), args, 0));
  if (name == "smem_over_default_limit") {  // 64 KiB without cudaFuncSetAttribute
    return outcome(cudaLaunchKernel(neighbour<true>, dim3(1), dim3(256), args, 64 * 1024));
  }
  if (name == "cooperative_too_large") {  // more blocks than 8 per SM (2048 threads / 256) x the SMs
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    return outcome(cudaLaunchCooperativeKernel(grid_barrier, dim3(8 * sms + 1), dim3(256), args, 0));
  }
  TORCH_CHECK(false, "selftest: unknown name '", name, "'");
  return "";
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(wcrnn_cuda_emu, m) { m.def("selftest(str name, Tensor out) -> str", &selftest); }
