// The CUDA ops (csrc/cuda/chain_ops.cu: checks, allocation, planning, launch), compiled as C++ for the CPU
// emulator and registered for CPU tensors as wcrnn_cuda_emu::chain_fwd / chain_bwd (the schemas of
// wcrnn_C), plus wcrnn_cuda_emu::take_log, the emulator's record of the launches since the last call.
#include "../../csrc/cuda/chain_ops.cu"

#include <string>
#include <vector>

namespace wcrnn_emu {
std::vector<std::string> take_log();  // emu_runtime.cpp
}

TORCH_LIBRARY(wcrnn_cuda_emu, m) {
  m.def(wcrnn_sig::kChainFwdSchema);
  m.def(wcrnn_sig::kChainBwdSchema);
  m.def("take_log() -> str[]", &wcrnn_emu::take_log);
}

TORCH_LIBRARY_IMPL(wcrnn_cuda_emu, CPU, m) {
  m.impl("chain_fwd", &wcrnn_cuda::chain_fwd_cuda);
  m.impl("chain_bwd", &wcrnn_cuda::chain_bwd_cuda);
}
