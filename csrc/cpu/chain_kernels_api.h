// The boundary between the ATen-facing op (wcrnn_cpu.cpp) and the per-instruction-set kernels
// (chain_kernels.h, compiled once per ISA by chain_isa_*.cpp). Plain C++ only: no ATen types cross it, so
// the ISA translation units never include ATen headers under wide-vector target flags.
#pragma once

#include <cstdint>

#include "../wcrnn_codes.h"

namespace wcrnn_cpu {

// Canonical residual kinds and nonlinearities: the integer codes of wcrnn_kernels/residual.py.
using namespace wcrnn_codes;

// What both chains read: lengths (B,) or null; the sizes; the codes; `packed`, what Kernels::pack wrote for
// (w_hh, res, gamma) in the chain's direction.
template <typename T>
struct ChainProblem {
  using Elem = T;
  const int64_t* lengths;
  int64_t steps, batch, hidden;
  int res_kind, nonlin;
  const T* packed;
  // Forward only, non-null for a direct call (one step, a few rows: step-by-step generation): the GEMM reads
  // W_hh (and a dense residual, r_direct) as they are, and `packed` holds only the vectors (gamma, p0, q).
  const T* w_direct = nullptr;
  const T* r_direct = nullptr;
};

// One forward chain: x_t = R(x_{t-1}) + gamma * phi(u_t + W_hh x_{t-1}), rows independent.
// All tensors contiguous, row-major: u / out (T, B, H); x0 / h_n (B, H); lengths (B,) or null.
// a_out (T, B, H), when non-null, receives a_t = u_t + W_hh x_{t-1} (zero past a row's length).
// `packed` is Kernels::pack with backward = false.
template <typename T>
struct FwdProblem : ChainProblem<T> {
  const T *u, *x0;
  T *out, *h_n, *a_out;
};

// One backward delta chain (docs/design.md section 5), rows independent:
//   delta_t = e_t + carry;  g_t = gamma * phi'(a_t) * delta_t;  carry = R^T delta_t + W_hh^T g_t.
// a (T, B, H) holds a_t and is only read; g (T, B, H) receives g_t; delta (T, B, H) is written when
// non-null; dx0 (B, H) receives the final carry. `packed` is Kernels::pack with backward = true.
template <typename T>
struct BwdProblem : ChainProblem<T> {
  const T *grad_out, *grad_hn, *a;
  T *g, *dx0, *delta;
};

// The entry points of one ISA for one dtype. A caller packs once per call (O(H^2); the pack_panels panels
// in disjoint ranges, which may run on several threads, the range starting at 0 also packing the vectors),
// then runs *_rows on disjoint row ranges, one per thread, each with its own workspace of
// workspace_elems(rows) elements aligned to 64 bytes. *_rows run the whole time loop without
// synchronisation and without allocating.
template <typename T>
struct Kernels {
  int64_t (*packed_elems)(int64_t hidden, int res_kind, bool backward);
  int64_t (*pack_panels)(int64_t hidden, int res_kind, bool backward);
  void (*pack)(const T* w_hh, const T* res, const T* gamma, int64_t hidden, int res_kind, bool backward,
               int64_t panel_begin, int64_t panel_end, T* packed);
  int64_t (*workspace_elems)(int64_t hidden, int res_kind, bool backward, int64_t rows);
  void (*forward_rows)(const FwdProblem<T>& p, int64_t row_begin, int64_t row_end, T* workspace);
  void (*backward_rows)(const BwdProblem<T>& p, int64_t row_begin, int64_t row_end, T* workspace);
  int64_t (*direct_packed_elems)(int64_t hidden);  // what `pack` writes for a direct call: the vectors only
};

// A one-step forward of at most this many rows runs direct (ChainProblem::w_direct; chain_kernels.h,
// step_gemm_direct, takes its rows in blocks of this many).
constexpr int64_t kDirectRows = 4;

struct IsaTable {
  const char* name;  // "default", "avx2" or "avx512"
  Kernels<float> f32;
  Kernels<double> f64;
};

// Defined by chain_isa_default.cpp (every platform) and, on x86-64, chain_isa_avx2.cpp / chain_isa_avx512.cpp.
const IsaTable& isa_table_default();
#if defined(__x86_64__) || defined(_M_X64)
const IsaTable& isa_table_avx2();
const IsaTable& isa_table_avx512();
#endif

}  // namespace wcrnn_cpu
