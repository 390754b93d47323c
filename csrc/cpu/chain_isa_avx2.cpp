// The AVX2 + FMA variant (x86-64 only; chosen at run time when the CPU has both).
#if defined(__x86_64__) || defined(_M_X64)
#include "chain_kernels_prelude.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#define WCRNN_ISA_NS isa_avx2
#define WCRNN_ISA_NAME "avx2"
#define WCRNN_VBYTES 32
#define WCRNN_MR 6  // 16 ymm registers: 6 x 2 accumulators + 2 B vectors + 1 broadcast
#define WCRNN_NR 2
#define WCRNN_TABLE_FN isa_table_avx2
#include "chain_kernels.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
