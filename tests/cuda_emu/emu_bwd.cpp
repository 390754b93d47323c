// The CUDA backward kernels (csrc/cuda/chain_bwd.cu), compiled as C++ for the CPU emulator.
#include "../../csrc/cuda/chain_bwd.cu"
