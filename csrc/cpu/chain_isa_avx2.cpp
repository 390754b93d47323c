// The AVX2 + FMA variant (x86-64 only; chosen at run time when the CPU has both).
#if defined(__x86_64__) || defined(_M_X64)
#define WCRNN_ISA_NS isa_avx2
#define WCRNN_ISA_NAME "avx2"
#define WCRNN_ISA_TARGET "avx2,fma"
#define WCRNN_VBYTES 32
#define WCRNN_MR 6  // 16 ymm registers: 6 x 2 accumulators + 2 B vectors + 1 broadcast
#define WCRNN_NR 2
#define WCRNN_TABLE_FN isa_table_avx2
#include "chain_kernels_target.h"
#endif
