// The CUDA forward kernels (csrc/cuda/chain_fwd.cu), compiled as C++ for the CPU emulator.
#include "../../csrc/cuda/chain_fwd.cu"
