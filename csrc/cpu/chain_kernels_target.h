// chain_kernels.h compiled for the instruction set WCRNN_ISA_TARGET (a target attribute string such as
// "avx2,fma"): included by chain_isa_avx2.cpp and chain_isa_avx512.cpp after they define the macros
// chain_kernels.h documents. The standard headers come first, outside the target pragma
// (chain_kernels_prelude.h), then the kernels under it.
#include "chain_kernels_prelude.h"

#define WCRNN_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define WCRNN_TARGET_PUSH(t) WCRNN_PRAGMA(clang attribute push(__attribute__((target(t))), apply_to = function))
#else
#define WCRNN_TARGET_PUSH(t) WCRNN_PRAGMA(GCC push_options) WCRNN_PRAGMA(GCC target(t))
#endif
WCRNN_TARGET_PUSH(WCRNN_ISA_TARGET)

#include "chain_kernels.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
