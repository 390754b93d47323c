// The baseline variant: the compiler's default instruction set for the target (SSE2 on x86-64, NEON on
// AArch64). Always built, always safe to run.
#include "chain_kernels_prelude.h"

#define WCRNN_ISA_NS isa_default
#define WCRNN_ISA_NAME "default"
#define WCRNN_VBYTES 16
#if defined(__aarch64__)
#define WCRNN_MR 8  // 32 vector registers with FMA: 8 x 3 accumulators
#define WCRNN_NR 3
#else
#define WCRNN_MR 4  // 16 registers and no FMA on baseline x86-64: room for products as well as 4 x 2 sums
#define WCRNN_NR 2
#endif
#define WCRNN_TABLE_FN isa_table_default
#include "chain_kernels.h"
