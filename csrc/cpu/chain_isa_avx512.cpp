// The AVX-512 variant (x86-64 only; chosen at run time when the CPU has AVX-512F, AVX2 and FMA).
#if defined(__x86_64__) || defined(_M_X64)
#define WCRNN_ISA_NS isa_avx512
#define WCRNN_ISA_NAME "avx512"
#define WCRNN_ISA_TARGET "avx512f,avx2,fma"
#define WCRNN_VBYTES 64
#ifndef WCRNN_AVX512_MR
#define WCRNN_AVX512_MR 8
#define WCRNN_AVX512_NR 3
#endif
#define WCRNN_MR WCRNN_AVX512_MR  // 32 zmm registers: 8 x 3 accumulators + 3 B vectors + 1 broadcast
#define WCRNN_NR WCRNN_AVX512_NR
#define WCRNN_TABLE_FN isa_table_avx512
#include "chain_kernels_target.h"
#endif
