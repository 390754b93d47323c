// Shared pieces of the CUDA chain kernels: types, the shared-memory plan, the per-step matvec, and the
// host-side launch planning (block, grid or register path). Included by chain_fwd.cu, chain_bwd.cu and
// chain_ops.cu; the register path's device helpers are in chain_regs.cuh. Nothing here allocates tensors.
//
// Execution paths, one kernel template per direction (template flag GRID) for the first two:
//
// * block path (GRID=false): one thread block owns a tile of BT batch rows and ALL H units. W_hh (and a
//   dense residual) lives in shared memory for the whole sequence, the state rows live in shared memory,
//   and a step needs only __syncthreads. Blocks are independent, so any number of them may run in waves.
// * grid path (GRID=true): for H whose W_hh does not fit one block. Block (x, y) owns the units
//   [x*U, x*U + U) of the batch rows in group y (processed in chunks of BT rows) and keeps only its
//   U-slice of W_hh on chip. Each step a block stages the full previous state of its rows from L2
//   (ld.global.cg), computes its own units, writes them back to L2 (st.global.cg), and the grid meets at
//   one cooperative-groups grid barrier. The launch is cooperative, so every block is resident and the
//   barrier cannot deadlock.
// * register path (WCRNN_CUDA_PATH=regs; "auto" takes it for float32, float16 and bfloat16 wherever it runs, see
//   kAutoRegs, measured on an H200; float64 only when forced): like the block path one block per
//   tile of BT rows, but one thread per unit i keeps row i of W_hh (and of a dense R) in K registers (beyond
//   K words the row is read from shared memory), so a step reads mostly the state rows from shared memory
//   (four words per instruction), u_t is loaded several steps ahead into registers, and a step needs one
//   barrier. H <= 256 (regs_slots below).
// * tiled register path (WCRNN_CUDA_PATH=tiled, opt-in until measured on a GPU): the register path's matvec
//   split two ways, each thread holding a 4-row x H/4-column tile of W_hh (of W_hh^T in the backward), so that
//   a step reads a quarter of the state words from shared memory; the partial sums meet in shared memory (two
//   barriers a step). H <= 128 (64 in float64), elementwise residual forms (tiled_slots below).
//
// Both paths share the per-step structure of the "torch" backend (wcrnn_kernels/backends/pytorch.py):
// the matvec is split into KS partial sums per output (threads ks = 0..KS-1 take every KS-th input
// unit), the partial sums meet in shared memory, and an elementwise epilogue applies the residual,
// gamma, phi and the lengths mask exactly as the torch loop does.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include <cuda_runtime.h>

#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include "../wcrnn_codes.h"

namespace wcrnn_cuda {

// The block's dynamic shared memory, 16-byte aligned. The CPU emulator that runs these kernels in the
// tests (tests/cuda_emu) hands each emulated block its own buffer through this macro instead.
#ifndef WCRNN_DYNAMIC_SMEM
#define WCRNN_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

constexpr int kThreads = 256;  // threads per block, every kernel of the block and grid paths
constexpr int kRegsThreads = 256;  // at most, the register path (one thread per unit, H <= 256)
constexpr int kEarly = 4;      // epilogue operands a thread loads before the matvec (the rest load late)

using namespace wcrnn_codes;  // kResDiag / kResRot / kResDense, kTanh / kRelu
enum class DType : int { kFloat, kDouble, kHalf, kBFloat16 };

// State and accumulation type: float for float/half/bfloat16 storage, double for double.
template <class S> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

// ---------------------------------------------------------------------------------------------------
// Host-side dispatch from run-time values to kernel template arguments, written once for both chains.

template <class S> struct TypeTag { using type = S; };

// f(TypeTag<S>{}) for the storage type of `dtype`; the half types only where WITH_HALF (the backward
// chain runs float32 / float64: ops.py upcasts half models' tensors, and no half backward is compiled).
template <bool WITH_HALF, class F>
decltype(auto) dispatch_dtype(DType dtype, const char* op, F&& f) {
  if (dtype == DType::kFloat) return f(TypeTag<float>{});
  if (dtype == DType::kDouble) return f(TypeTag<double>{});
  if constexpr (WITH_HALF) {
    if (dtype == DType::kHalf) return f(TypeTag<c10::Half>{});
    if (dtype == DType::kBFloat16) return f(TypeTag<c10::BFloat16>{});
  }
  TORCH_CHECK(false, op, ": unsupported dtype (the CUDA ", op, " runs ",
              WITH_HALF ? "float32, float64, float16 and bfloat16" : "float32 and float64", ")");
  return f(TypeTag<float>{});  // not reached
}

// f(std::bool_constant<DENSE>{}, std::integral_constant<int, BT>{}) for a residual form and a tile height.
template <class F>
void dispatch_variant(int res_kind, int rows, const char* op, F&& f) {
  TORCH_CHECK(res_kind == kResDiag || res_kind == kResRot || res_kind == kResDense, op,
              ": res_kind must be 0, 1 or 2, got ", res_kind);
  auto with_rows = [&](auto dense) {
    switch (rows) {
      case 1: return f(dense, std::integral_constant<int, 1>{});
      case 4: return f(dense, std::integral_constant<int, 4>{});
      case 8: return f(dense, std::integral_constant<int, 8>{});
    }
    TORCH_CHECK(false, op, ": internal error: unsupported tile height ", rows);
  };
  if (res_kind == kResDense) {
    with_rows(std::true_type{});
  } else {
    with_rows(std::false_type{});
  }
}

// The register path: K registers per thread hold the first K words of a row of W_hh (and K more a dense R's),
// K in {64, 128}: at most 128 32-bit registers of matrix per thread. Without a dense residual the rest of the
// row, up to K more words, is read from shared memory (the "tail"), so the path runs H <= 256 in float32 /
// float16 / bfloat16 (K = 128) and H <= 128 in float64 (K = 64); with a dense residual H <= 64 in float32 and
// the half types (no tail), never in float64. regs_slots: the K for H, 0 if the path cannot run it.
template <class A>
constexpr bool regs_fit(int K, bool dense) {
  return K * static_cast<int>(sizeof(A) / 4) * (dense ? 2 : 1) <= 128;
}
template <class A>
constexpr int regs_slots(int H, bool dense) {
  if (dense) return H <= 64 && regs_fit<A>(64, true) ? 64 : 0;
  const int kmax = regs_fit<A>(128, false) ? 128 : 64;
  if (H <= 64) return 64;
  if (H <= kmax) return kmax;
  return H <= 2 * kmax ? kmax : 0;
}
// Words per state row in shared memory (H rounded up to 4, at least K: the register part reads K of them) and
// rows of the tail (columns K .. XS-1 of W_hh, zero past H).
__host__ __device__ constexpr int regs_row_words(int H, int K) {
  const int h4 = (H + 3) / 4 * 4;
  return h4 > K ? h4 : K;
}
__host__ __device__ constexpr int regs_tail_rows(int H, int K) { return regs_row_words(H, K) - K; }
// Its dynamic shared memory: `buffers` buffers of BT state rows, then the tail of W_hh, in the accumulation type.
inline size_t regs_smem_bytes(int H, int K, int BT, int buffers, size_t acc_bytes) {
  return (static_cast<size_t>(buffers) * BT * regs_row_words(H, K) + static_cast<size_t>(regs_tail_rows(H, K)) * H) *
         acc_bytes;
}
// The tiled register path (WCRNN_CUDA_PATH=tiled, opt-in until measured on a GPU): the block's Hp = 4 * KS
// threads (Hp = H rounded up to 64 or 128) split the matvec two ways. Thread t = 4 g + s keeps the 4 x KS tile
// of W_hh (the backward: of W_hh^T) made of rows 4g .. 4g+3 and of the KS columns in the state-row quads s,
// s + 4, s + 8, ...
// So a thread reads KS state words per row and step (KS / 4 shared-memory loads, against H on the register
// path: a quarter of the shared-memory traffic at H = 128, which is what bounds the register path at large
// batches) and makes 4 rows' partial sums, which meet in shared memory (one more barrier per step); the
// epilogue is the register path's, thread t owning unit t. Elementwise residual forms only; KS in {16, 32}:
// H <= 128 in float32 / float16 / bfloat16 and H <= 64 in float64 (128 32-bit registers of matrix per thread).
template <class A>
constexpr bool tiled_fit(int KS) {
  return 4 * KS * static_cast<int>(sizeof(A) / 4) <= 128;
}
template <class A>
constexpr int tiled_slots(int H, bool dense) {
  if (dense) return 0;
  if (H <= 64) return 16;
  return H <= 128 && tiled_fit<A>(32) ? 32 : 0;
}
// Words between the four slices' partial sums of one state row: Hp + 8, so that the quads the 8 threads of a
// quarter warp store (two row groups x four slices) fall in 8 different bank quads.
__host__ __device__ constexpr int tiled_partial_stride(int KS) { return 4 * KS + 8; }
// Its dynamic shared memory: `buffers` buffers of BT state rows (Hp words each, zero past H; the forward two,
// the backward four: g and delta rows, double-buffered), then BT x 4 slices of partial sums, in the accumulation
// type.
inline size_t tiled_smem_bytes(int KS, int BT, int buffers, size_t acc_bytes) {
  return (static_cast<size_t>(buffers) * BT * 4 * KS + static_cast<size_t>(BT) * 4 * tiled_partial_stride(KS)) *
         acc_bytes;
}
// ---------------------------------------------------------------------------------------------------
// Device math. tanhf/tanh are the accurate library functions (about 2 ulp); the approximate hardware
// tanh would not meet the float32 tolerances, so never build these files with --use_fast_math.

// The double version is kept out of line: it is long, and the epilogues call it from several
// unrolled sites (the float one is short and inlined). It is static because every .cu file includes
// this header: with external linkage each object gets a host-side definition of it (seen with nvcc
// 13.0) and linking the library fails with "multiple definition of wcrnn_cuda::tanh_acc(double)".
__device__ __forceinline__ float tanh_acc(float a) { return tanhf(a); }
static __device__ __noinline__ double tanh_acc(double a) { return tanh(a); }

template <class A>
__device__ __forceinline__ A phi(A a, int nonlin) {
  if (nonlin == kTanh) return tanh_acc(a);
  return (a > A(0) || a != a) ? a : A(0);  // relu; NaN propagates as in torch.relu
}

template <class A>
__device__ __forceinline__ A phi_prime(A a, int nonlin) {
  if (nonlin == kTanh) {
    const A y = tanh_acc(a);
    return A(1) - y * y;  // pytorch.py phi_prime: 1 - tanh(a)^2
  }
  return a > A(0) ? A(1) : A(0);
}

// Exchange through L2 on the grid path: .cg bypasses L1, which is not coherent between SMs.
__device__ __forceinline__ float ldcg(const float* p) { return __ldcg(p); }
__device__ __forceinline__ double ldcg(const double* p) { return __ldcg(p); }
__device__ __forceinline__ void stcg(float* p, float v) { __stcg(p, v); }
__device__ __forceinline__ void stcg(double* p, double v) { __stcg(p, v); }

// ---------------------------------------------------------------------------------------------------
// Matvec thread layout. A block computes, for BT rows r and its units i < U,
//     out[r][i] = sum_j M[j][i] * X[r][j]          (j = 0..H-1)
// Thread tid works on unit i = tid % UP (then i + UP, ...) and on the reduction slice ks = tid / UP,
// i.e. on j = ks, ks + KS, ks + 2 KS, ...; threads with ks >= KS idle. With M stored transposed
// (M[j*U + i]), consecutive threads read consecutive words: no shared-memory bank conflicts.

struct MatvecShape {
  int UP;  // threads along the unit axis
  int KS;  // reduction slices (partial sums per output)
};

__host__ __device__ inline MatvecShape matvec_shape(int H, int U) {
  MatvecShape m;
  m.UP = U < kThreads ? U : kThreads;
  m.KS = kThreads / m.UP;
  if (m.KS > H) m.KS = H;
  if (m.KS < 1) m.KS = 1;
  return m;
}

__host__ __device__ inline size_t align16(size_t n) { return (n + 15) & ~static_cast<size_t>(15); }

// Byte offsets into the dynamic shared memory of one block. Same function on host (sizing) and device
// (carving), so the two can never disagree.
//   part, partR : KS x BT x U accumulators (partR: the dense residual's matvec)
//   x           : nx  x BT x H accumulators (state rows; backward: g rows)
//   x2          : nx2 x BT x H accumulators (backward: delta rows)
//   params      : 3 x U accumulators (gamma, res0, res1 of the block's units)
//   w, r        : U x H storage-type words (W_hh slice; dense residual slice)
struct SmemLayout {
  size_t part, partR, x, x2, params, w, r, total;
};

__host__ __device__ inline SmemLayout smem_layout(int H, int U, int BT, bool dense, int nx, int nx2,
                                                  size_t acc_bytes, size_t w_bytes) {
  const MatvecShape m = matvec_shape(H, U);
  const size_t nh = static_cast<size_t>(BT) * static_cast<size_t>(H);
  const size_t npart = static_cast<size_t>(m.KS) * BT * U;
  const size_t nw = static_cast<size_t>(U) * static_cast<size_t>(H);
  SmemLayout L;
  size_t o = 0;
  L.part = o;   o = align16(o + acc_bytes * npart);
  L.partR = o;  o = align16(o + (dense ? acc_bytes * npart : 0));
  L.x = o;      o = align16(o + acc_bytes * nx * nh);
  L.x2 = o;     o = align16(o + acc_bytes * nx2 * nh);
  L.params = o; o = align16(o + acc_bytes * 3 * static_cast<size_t>(U));
  L.w = o;      o = align16(o + w_bytes * nw);
  L.r = o;      o = align16(o + (dense ? w_bytes * nw : 0));
  L.total = o;
  return L;
}

// A block / grid kernel's dynamic shared memory, carved as smem_layout places it.
template <class S, class A>
struct BlockSmem {
  A *part, *partR;       // matvec partial sums (partR: a dense residual's)
  A *x, *x2;             // state rows: the forward's x; the backward's g and delta
  A *gam, *res0, *res1;  // the block's U units of gamma and of a diagonal / rotation residual
  S *w, *r;              // the block's slice of W_hh and of a dense R
};

template <class S, class A>
__device__ __forceinline__ BlockSmem<S, A> block_smem(unsigned char* smem, const SmemLayout& L, int U) {
  A* gam = reinterpret_cast<A*>(smem + L.params);
  return {reinterpret_cast<A*>(smem + L.part), reinterpret_cast<A*>(smem + L.partR),
          reinterpret_cast<A*>(smem + L.x), reinterpret_cast<A*>(smem + L.x2),
          gam, gam + U, gam + 2 * U,
          reinterpret_cast<S*>(smem + L.w), reinterpret_cast<S*>(smem + L.r)};
}

// part[(ks*BT + r)*U + i] = sum_{j = ks, ks+KS, ...} M[j*U + i] * X[r*H + j], for r < BT, i < Ueff;
// with DUAL also part2 from (M2, X2) in the same pass. X and X2 may alias (forward dense residual).
template <int BT, bool DUAL, class S, class A>
__device__ __forceinline__ void matvec_partials(const S* __restrict__ M, const S* __restrict__ M2,
                                                const A* X, const A* X2, A* part, A* part2, int H, int U,
                                                int Ueff, MatvecShape m) {
  const int tid = static_cast<int>(threadIdx.x);
  const int ks = tid / m.UP;
  if (ks >= m.KS) return;
  for (int i = tid % m.UP; i < Ueff; i += m.UP) {
    A acc[BT];
    A acc2[BT];
#pragma unroll
    for (int r = 0; r < BT; ++r) {
      acc[r] = A(0);
      acc2[r] = A(0);
    }
    for (int j = ks; j < H; j += m.KS) {
      const A w = static_cast<A>(M[j * U + i]);
#pragma unroll
      for (int r = 0; r < BT; ++r) acc[r] += w * X[r * H + j];
      if constexpr (DUAL) {
        const A w2 = static_cast<A>(M2[j * U + i]);
#pragma unroll
        for (int r = 0; r < BT; ++r) acc2[r] += w2 * X2[r * H + j];
      }
    }
#pragma unroll
    for (int r = 0; r < BT; ++r) {
      part[(ks * BT + r) * U + i] = acc[r];
      if constexpr (DUAL) part2[(ks * BT + r) * U + i] = acc2[r];
    }
  }
}

// sum_ks part[(ks*BT + r)*U + i], four independent accumulators to shorten the dependency chain.
template <int BT, class A>
__device__ __forceinline__ A sum_partials(const A* part, int r, int i, int U, int KS) {
  const int stride = BT * U;
  const A* p = part + r * U + i;
  A s0 = A(0), s1 = A(0), s2 = A(0), s3 = A(0);
  int ks = 0;
  for (; ks + 4 <= KS; ks += 4) {
    s0 += p[ks * stride];
    s1 += p[(ks + 1) * stride];
    s2 += p[(ks + 2) * stride];
    s3 += p[(ks + 3) * stride];
  }
  for (; ks < KS; ++ks) s0 += p[ks * stride];
  return (s0 + s1) + (s2 + s3);
}

// ---------------------------------------------------------------------------------------------------
// Kernel parameters (passed by value). All pointers are contiguous device tensors.

template <class S>
struct ChainParams {        // what both chains read
  const S* w;               // (H, H) W_hh
  const S* res;             // canonical residual: (H,), (2, H) or (H, H); a 0-d diagonal one with res_step 0
  const S* gamma;           // (H,), or 0-d with gamma_step 0
  const int64_t* lengths;   // (B,) or nullptr: every row runs all T steps
  int64_t T, B;
  int64_t rows_per_group;   // grid path: batch rows per blockIdx.y
  int H, U, nonlin, res_kind;
  int res_step, gamma_step;  // 1, or 0 for a 0-d res (diagonal) / gamma: unit i reads entry i * step
};

template <class S>
struct FwdParams : ChainParams<S> {
  const S* u;               // (T, B, H) input projection
  const S* x0;              // (B, H)
  S* out;                   // (T, B, H)
  S* hn;                    // (B, H)
  S* a_out;                 // (T, B, H) pre-activations a_t (0 past a row's length), or nullptr
  typename AccType<S>::type* xbuf;  // grid path: (2, B, H) state exchange; unused on the block path
};

template <class S>
struct BwdParams : ChainParams<S> {
  const S* grad_out;        // (T, B, H) dL/d output
  const S* grad_hn;         // (B, H)    dL/d h_n
  const S* a;               // (T, B, H) pre-activations a_t (read only)
  S* g;                     // (T, B, H) g_t; on the grid path also the exchange buffer for g_t
  S* dx0;                   // (B, H)
  S* deltas;                // (T, B, H) or nullptr when delta is not asked for
  S* dbuf;                  // grid path: (2, B, H) delta exchange; unused on the block path
};

// ---------------------------------------------------------------------------------------------------
// Host-side planning.

struct DeviceInfo {
  int sms = 0;         // streaming multiprocessors
  int smem_optin = 0;  // max dynamic shared memory per block after opting in
  int coop = 0;        // cooperative launch supported
};

inline DeviceInfo device_info(int device) {
  DeviceInfo d;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.coop, cudaDevAttrCooperativeLaunch, device));
  return d;
}

enum class PathChoice { kAuto, kBlock, kGrid, kRegs, kTiled };

// Whether "auto" takes the register path wherever it runs with 4-byte accumulators (float32, bfloat16, float16).
// Measured on an H200 (benchmarks/results/h200-ec2fdbb-run4, scripts/gpu_check.sh tier 1): at S1-S4 (B 16-100,
// H 64-256) 1.5-3.8x faster than the block and grid paths forward in float32 and bfloat16, 1.04-3.4x forward and
// backward. float64 is not measured and keeps the block / grid paths under "auto" (forcing regs still runs it).
// tests/test_nvcc_compile.py's planner test states the same.
constexpr bool kAutoRegs = true;

// WCRNN_CUDA_PATH=auto|block|grid|regs|tiled forces a path (tests use it to run every path at small H).
inline PathChoice path_from_env() {
  const char* v = std::getenv("WCRNN_CUDA_PATH");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return PathChoice::kAuto;
  if (std::strcmp(v, "block") == 0) return PathChoice::kBlock;
  if (std::strcmp(v, "grid") == 0) return PathChoice::kGrid;
  if (std::strcmp(v, "regs") == 0) return PathChoice::kRegs;
  if (std::strcmp(v, "tiled") == 0) return PathChoice::kTiled;
  TORCH_CHECK(false, "WCRNN_CUDA_PATH: expected 'auto', 'block', 'grid', 'regs' or 'tiled', got '", v, "'");
  return PathChoice::kAuto;
}

// Batch-tile heights BT that are compiled (each one is an instantiation of every kernel; BT = 2 is left
// out to keep the build short).
constexpr int kRowChoices[] = {1, 4, 8};

// WCRNN_CUDA_ROWS=1|4|8 forces the batch-tile height BT (unset: choose automatically).
inline int rows_from_env() {
  const char* v = std::getenv("WCRNN_CUDA_ROWS");
  if (v == nullptr || *v == '\0') return 0;
  const std::string s(v);
  if (s == "1" || s == "4" || s == "8") return std::atoi(v);
  TORCH_CHECK(false, "WCRNN_CUDA_ROWS: expected 1, 4 or 8, got '", v, "'");
  return 0;
}

// WCRNN_CUDA_ROW_GROUPS=n forces the grid path's number of row groups (tests use 1 to get several chunks).
inline int row_groups_from_env() {
  const char* v = std::getenv("WCRNN_CUDA_ROW_GROUPS");
  if (v == nullptr || *v == '\0') return 0;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  TORCH_CHECK(end != v && *end == '\0' && n >= 1 && n <= 65535,
              "WCRNN_CUDA_ROW_GROUPS: expected a positive integer, got '", v, "'");
  return static_cast<int>(n);
}

struct Plan {
  bool grid = false;
  int regs = 0;             // register path: K, the registers per thread that hold a row of W_hh; 0 otherwise
  int tiled = 0;            // tiled register path: KS, the columns of its W_hh tile; 0 otherwise
  int threads = kThreads;   // threads per block
  int rows = 1;             // BT (one of kRowChoices): batch rows per tile (block path) / per chunk (grid)
  int U = 0;                // units per block (H on the block path)
  int64_t blocks = 0;       // block path: batch tiles; grid path: unit_blocks * row_groups
  int unit_blocks = 1;      // grid path: blockIdx.x, slices of U units
  int row_groups = 1;       // grid path: blockIdx.y, groups of rows_per_group batch rows
  int64_t rows_per_group = 0;
  size_t smem = 0;          // dynamic shared memory bytes per block
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int even_up(int64_t n) { return static_cast<int>(n + (n & 1)); }

// smem_of(U, BT, grid) -> bytes. Block path when W_hh (plus a dense residual) fits one block. Otherwise the
// grid path: at most one block per SM, split two ways, over units (blockIdx.x: the fewest slices whose
// W_hh rows fit shared memory, more if SMs are left) and over batch rows (blockIdx.y: up to one group per
// BT rows). Each block then runs ceil(rows_per_group / BT) chunks per step.
//
// The register path when forced (WCRNN_CUDA_PATH=regs), and under "auto" where regs_auto (kAutoRegs and 4-byte
// accumulators) and it runs: regs_k is its K for this H, dtype and residual form (0: it cannot run them),
// regs_smem_of(BT) its shared memory. The tiled register path only when forced (WCRNN_CUDA_PATH=tiled): tiled.ks
// is its KS for this H, dtype and residual form (0: it cannot run them).
struct TiledInfo {
  int ks;           // tiled_slots
  int buffers;      // state buffers (Dir::kInfo.regs_buffers)
  size_t acc_bytes;
};
template <class SmemOf, class RegsSmemOf>
Plan plan_chain(const char* op, int64_t B, int H, const DeviceInfo& dev, SmemOf smem_of, int regs_k,
                bool regs_auto, RegsSmemOf regs_smem_of, TiledInfo tiled) {
  const PathChoice choice = path_from_env();
  const int env_rows = rows_from_env();
  const int env_groups = row_groups_from_env();
  const size_t optin = static_cast<size_t>(dev.smem_optin);
  Plan p;
  if (choice != PathChoice::kGrid) {
    // Smallest tile that still gives one block per SM: the chain is latency bound, so fewer rows per
    // block means a shorter step as long as SMs are left idle otherwise.
    int bt = 8;
    for (int cand : kRowChoices) {
      if (ceil_div(B, cand) <= dev.sms) {
        bt = cand;
        break;
      }
    }
    if (env_rows) bt = env_rows;
    if (choice == PathChoice::kTiled) {
      TORCH_CHECK(tiled.ks > 0, op, ": WCRNN_CUDA_PATH=tiled but H=", H, " does not fit the tiled register path ",
                  "in this dtype and residual form (elementwise residual forms only; H <= 128 in float32, float16 ",
                  "and bfloat16; H <= 64 in float64)");
      p.tiled = tiled.ks;
      p.threads = 4 * tiled.ks;
      p.rows = bt;
      p.U = H;
      p.blocks = ceil_div(B, bt);
      p.smem = tiled_smem_bytes(tiled.ks, bt, tiled.buffers, tiled.acc_bytes);
      TORCH_CHECK(p.smem <= optin, op, ": WCRNN_CUDA_PATH=tiled but H=", H, " with ", bt, "-row tiles needs ",
                  p.smem, " bytes of shared memory per block and this device allows ", dev.smem_optin);
      return p;
    }
    if (choice == PathChoice::kRegs ||
        (regs_auto && choice == PathChoice::kAuto && regs_k > 0 && regs_smem_of(bt) <= optin)) {
      TORCH_CHECK(regs_k > 0, op, ": WCRNN_CUDA_PATH=regs but H=", H, " does not fit the register path in this ",
                  "dtype and residual form (H <= 256 in float32, float16 and bfloat16; H <= 128 in float64; H <= 64 ",
                  "with a dense residual, not in float64)");
      p.regs = regs_k;
      p.threads = static_cast<int>(ceil_div(H, 32) * 32);
      p.rows = bt;
      p.U = H;
      p.blocks = ceil_div(B, bt);
      p.smem = regs_smem_of(bt);
      TORCH_CHECK(p.smem <= optin, op, ": WCRNN_CUDA_PATH=regs but H=", H, " with ", bt, "-row tiles needs ", p.smem,
                  " bytes of shared memory per block and this device allows ", dev.smem_optin);
      return p;
    }
    const size_t smem = smem_of(H, bt, false);
    if (smem <= optin) {
      p.grid = false;
      p.rows = bt;
      p.U = H;
      p.blocks = ceil_div(B, bt);
      p.smem = smem;
      return p;
    }
    TORCH_CHECK(choice == PathChoice::kAuto, op, ": WCRNN_CUDA_PATH=block but H=", H, " needs ", smem,
                " bytes of shared memory per block and this device allows ", dev.smem_optin);
  }
  TORCH_CHECK(dev.coop, op, ": the grid path (H=", H,
              " does not fit one thread block) needs cooperative launch, which this device does not "
              "support");
  // Rows per chunk, then the fewest unit slices whose shared memory fits (fewer staged rows if needed).
  int bt = env_rows ? env_rows : (B <= 1 ? 1 : (B <= 4 ? 4 : 8));
  int min_slices = 0;
  while (true) {
    for (int n = 1; n <= dev.sms; ++n) {
      const int U = even_up(ceil_div(H, n));  // even: rotation pairs never straddle two blocks
      if (smem_of(U, bt, true) <= optin) {
        min_slices = static_cast<int>(ceil_div(H, U));
        break;
      }
    }
    if (min_slices > 0 || env_rows || bt == 1) break;
    bt = bt == 8 ? 4 : 1;
  }
  TORCH_CHECK(min_slices > 0, op, ": H=", H, " is too large for the CUDA kernels on this device: even ",
              dev.sms, " slices of W_hh need ", smem_of(even_up(ceil_div(H, dev.sms)), bt, true),
              " bytes of shared memory per block and the device allows ", dev.smem_optin,
              " (use backend='triton' or 'torch')");
  int64_t groups = std::min<int64_t>(ceil_div(B, bt), std::max(1, dev.sms / min_slices));
  if (env_groups) groups = std::min<int64_t>(env_groups, B);
  if (groups < 1) groups = 1;
  const int slices_wanted = std::max<int>(min_slices, static_cast<int>(dev.sms / groups));
  p.U = std::max(2, even_up(ceil_div(H, slices_wanted)));
  p.unit_blocks = static_cast<int>(ceil_div(H, p.U));
  p.rows_per_group = ceil_div(B, groups);
  p.row_groups = static_cast<int>(ceil_div(B, p.rows_per_group));
  p.grid = true;
  p.rows = bt;
  p.blocks = static_cast<int64_t>(p.unit_blocks) * p.row_groups;
  p.smem = smem_of(p.U, bt, true);
  TORCH_CHECK(p.smem <= optin, op, ": internal error: planned ", p.smem, " bytes of shared memory, the device ",
              "allows ", dev.smem_optin);
  return p;
}

// Launch one instantiation: the attribute call lifts the 48 KiB default shared-memory limit; the grid
// path is launched cooperatively after checking that every block can be resident at once. Both launches
// go through the runtime API (cudaLaunchKernel is what <<<...>>> compiles to), which the CPU emulator of
// tests/cuda_emu implements too: the tests run exactly these lines.
template <class Kernel, class Params>
void launch_kernel(const char* op, Kernel kernel, const Plan& plan, const DeviceInfo& dev, Params params,
                   cudaStream_t stream) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(plan.smem)));
  void* args[] = {&params};
  if (!plan.grid) {
    TORCH_CHECK(plan.blocks <= 0x7fffffff, op, ": ", plan.blocks, " thread blocks exceed the grid limit");
    C10_CUDA_CHECK(cudaLaunchKernel(kernel, dim3(static_cast<unsigned int>(plan.blocks)), dim3(plan.threads), args,
                                    plan.smem, stream));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, plan.smem));
  TORCH_CHECK(plan.blocks <= static_cast<int64_t>(per_sm) * dev.sms, op, ": the grid path needs ",
              plan.blocks, " co-resident blocks of ", plan.smem, " bytes of shared memory, the device holds ",
              per_sm, " per SM x ", dev.sms, " SMs");
  C10_CUDA_CHECK(cudaLaunchCooperativeKernel(kernel,
                                             dim3(static_cast<unsigned int>(plan.unit_blocks),
                                                  static_cast<unsigned int>(plan.row_groups)),
                                             dim3(kThreads), args, plan.smem, stream));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------------------------------
// Entry points implemented in chain_fwd.cu / chain_bwd.cu and called by chain_ops.cu.

struct ChainCall {  // what both chains' calls share
  DType dtype;       // the backward: kFloat or kDouble
  int res_kind, nonlin;
  int64_t T, B;
  int H;
  const void *w, *res, *gamma;
  int res_step, gamma_step;  // 0 for a 0-d res / gamma (one value for every unit), else 1
  const int64_t* lengths;
  int device;
  cudaStream_t stream;
  void* exchange;  // grid path: set by the caller after planning; forward (2, B, H) states in the accumulation
                   // type, backward (2, B, H) deltas
};

struct FwdCall : ChainCall {
  const void *u, *x0;
  void *out, *hn;
  void* a_out;  // nullptr unless the forward saves the pre-activations
};

struct BwdCall : ChainCall {
  const void *grad_out, *grad_hn;
  const void* a;
  void* g;
  void *dx0, *deltas;
};

// The shared kernel parameters from a call and its plan: written once for both chains.
template <class S>
ChainParams<S> chain_params(const ChainCall& c, const Plan& plan) {
  ChainParams<S> p;
  p.w = static_cast<const S*>(c.w);
  p.res = static_cast<const S*>(c.res);
  p.gamma = static_cast<const S*>(c.gamma);
  p.lengths = c.lengths;
  p.T = c.T;
  p.B = c.B;
  p.H = c.H;
  p.U = plan.U;
  p.rows_per_group = plan.rows_per_group;
  p.nonlin = c.nonlin;
  p.res_kind = c.res_kind;
  p.res_step = c.res_step;
  p.gamma_step = c.gamma_step;
  return p;
}

// What a direction states about itself (Dir::kInfo).
struct DirInfo {
  bool half_types;   // float16 / bfloat16 instantiations exist
  const char* op;    // "wcrnn_C::chain_fwd", for messages
  int regs_buffers;  // the register path's state buffers (regs_smem_bytes)
};

// Planning and launching, written once for both directions. Dir describes one direction
// (chain_fwd.cu: Forward, chain_bwd.cu: Backward):
//   using Call                                  FwdCall or BwdCall
//   static constexpr DirInfo kInfo              above
//   static size_t smem<S>(H, U, BT, grid, dense)  dynamic shared memory per block
//   static params<S>(chain, call)               the kernel parameters: `chain` plus the direction's own
//   static kernel<S, DENSE, BT, GRID>()         the kernel instantiation
//   static regs_kernel<S, DENSE, BT, K>()       the register path's (called only where regs_fit)
//   static tiled_kernel<S, BT, KS>()            the tiled register path's (called only where tiled_fit)
template <class Dir>
Plan plan_chain_call(const typename Dir::Call& c, const DeviceInfo& dev) {
  return dispatch_dtype<Dir::kInfo.half_types>(c.dtype, Dir::kInfo.op, [&](auto tag) {
    using S = typename decltype(tag)::type;
    using A = typename AccType<S>::type;
    const bool dense = c.res_kind == kResDense;
    const int regs_k = regs_slots<A>(c.H, dense);
    const auto block_bytes = [&](int U, int BT, bool grid) { return Dir::template smem<S>(c.H, U, BT, grid, dense); };
    const auto regs_bytes = [&](int BT) {
      return regs_smem_bytes(c.H, regs_k, BT, Dir::kInfo.regs_buffers, sizeof(A));
    };
    const TiledInfo tiled{tiled_slots<A>(c.H, dense), Dir::kInfo.regs_buffers, sizeof(A)};
    return plan_chain(Dir::kInfo.op, c.B, c.H, dev, block_bytes, regs_k, kAutoRegs && sizeof(A) == 4, regs_bytes,
                      tiled);
  });
}

// The register path's kernel for K, instantiated only where regs_fit.
template <class Dir, class S, bool DENSE, int BT, int K, class Params>
void launch_regs(const Plan& plan, const DeviceInfo& dev, const Params& p, cudaStream_t stream) {
  if constexpr (regs_fit<typename AccType<S>::type>(K, DENSE)) {
    launch_kernel(Dir::kInfo.op, Dir::template regs_kernel<S, DENSE, BT, K>(), plan, dev, p, stream);
  } else {
    TORCH_CHECK(false, Dir::kInfo.op, ": internal error: the register path planned K=", K, " where it does not fit");
  }
}

// The tiled register path's kernel for KS, instantiated only for the elementwise forms and where tiled_fit.
template <class Dir, class S, bool DENSE, int BT, int KS, class Params>
void launch_tiled(const Plan& plan, const DeviceInfo& dev, const Params& p, cudaStream_t stream) {
  if constexpr (!DENSE && tiled_fit<typename AccType<S>::type>(KS)) {
    launch_kernel(Dir::kInfo.op, Dir::template tiled_kernel<S, BT, KS>(), plan, dev, p, stream);
  } else {
    TORCH_CHECK(false, Dir::kInfo.op, ": internal error: the tiled path planned KS=", KS, " where it does not run");
  }
}

template <class Dir>
void launch_chain_call(const typename Dir::Call& c, const Plan& plan, const DeviceInfo& dev) {
  dispatch_dtype<Dir::kInfo.half_types>(c.dtype, Dir::kInfo.op, [&](auto tag) {
    using S = typename decltype(tag)::type;
    dispatch_variant(c.res_kind, plan.rows, Dir::kInfo.op, [&](auto dense, auto rows) {
      constexpr bool DENSE = decltype(dense)::value;
      constexpr int BT = decltype(rows)::value;
      const auto p = Dir::template params<S>(chain_params<S>(c, plan), c);
      if (plan.tiled == 16) {
        launch_tiled<Dir, S, DENSE, BT, 16>(plan, dev, p, c.stream);
      } else if (plan.tiled == 32) {
        launch_tiled<Dir, S, DENSE, BT, 32>(plan, dev, p, c.stream);
      } else if (plan.regs == 64) {
        launch_regs<Dir, S, DENSE, BT, 64>(plan, dev, p, c.stream);
      } else if (plan.regs == 128) {
        launch_regs<Dir, S, DENSE, BT, 128>(plan, dev, p, c.stream);
      } else if (plan.grid) {
        TORCH_CHECK(c.exchange != nullptr, Dir::kInfo.op,
                    ": internal error: the grid path needs its exchange buffer");
        launch_kernel(Dir::kInfo.op, Dir::template kernel<S, DENSE, BT, true>(), plan, dev, p, c.stream);
      } else {
        launch_kernel(Dir::kInfo.op, Dir::template kernel<S, DENSE, BT, false>(), plan, dev, p, c.stream);
      }
    });
  });
}

// One direction's entry points: plan_chain_call<Dir> and launch_chain_call<Dir>, instantiated in the direction's
// file (kForwardChain in chain_fwd.cu, kBackwardChain in chain_bwd.cu) and called by chain_ops.cu.
template <class Call>
struct ChainEntry {
  Plan (*plan)(const Call& c, const DeviceInfo& dev);
  void (*launch)(const Call& c, const Plan& plan, const DeviceInfo& dev);
};
extern const ChainEntry<FwdCall> kForwardChain;
extern const ChainEntry<BwdCall> kBackwardChain;

}  // namespace wcrnn_cuda
