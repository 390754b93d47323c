// The register path's device code shared by its forward and backward kernels (chain_fwd.cu, chain_bwd.cu):
// the thread's tile, its matrix row or column in registers with the shared-memory tail, the matvec and the
// residual term. Its sizing (regs_slots, regs_row_words, regs_smem_bytes) is in chain_cuda.cuh, where the
// planner uses it. See chain_cuda.cuh's opening comment for the three paths.
#pragma once

#include "chain_cuda.cuh"

namespace wcrnn_cuda {

// Independent partial sums per row of the matvec (dependency chains of K / NA FMAs): 4, 2 for 8 rows.
constexpr int regs_accumulators(int BT) { return BT >= 8 ? 2 : 4; }
template <int NA, class A>
__host__ __device__ __forceinline__ A sum_acc(const A (&acc)[NA]) {
  if constexpr (NA == 4) {
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
  } else {
    return acc[0] + acc[1];
  }
}
// Steps loaded ahead into registers (forward: u_t, one stream; backward: grad_out and a, two), so that a
// load stays in flight for PF steps before it is used: about 8 registers of them per thread.
template <class A>
constexpr int regs_prefetch(int BT, int streams) {
  const int pf = 8 / (BT * streams * static_cast<int>(sizeof(A) / 4));
  return pf < 1 ? 1 : pf;
}

// Four consecutive shared-memory words (16-byte aligned) in one float4 / two double2 loads: the register
// path's state reads.
__device__ __forceinline__ void lds4(const float* p, float (&v)[4]) {
  const float4 q = *reinterpret_cast<const float4*>(p);
  v[0] = q.x;
  v[1] = q.y;
  v[2] = q.z;
  v[3] = q.w;
}
__device__ __forceinline__ void lds4(const double* p, double (&v)[4]) {
  const double2 q0 = *reinterpret_cast<const double2*>(p);
  const double2 q1 = *reinterpret_cast<const double2*>(p + 2);
  v[0] = q0.x;
  v[1] = q0.y;
  v[2] = q1.x;
  v[3] = q1.y;
}

// The same four words stored at once (the tiled path's partial sums).
__device__ __forceinline__ void sts4(float* p, const float (&v)[4]) {
  *reinterpret_cast<float4*>(p) = float4{v[0], v[1], v[2], v[3]};
}
__device__ __forceinline__ void sts4(double* p, const double (&v)[4]) {
  *reinterpret_cast<double2*>(p) = double2{v[0], v[1]};
  *reinterpret_cast<double2*>(p + 2) = double2{v[2], v[3]};
}

// One row's residual term for the thread's unit on the register path: R(x)[unit] in the forward,
// (R^T delta)[unit] in the backward. Dense: the matvec's result `dense_part`; otherwise res0 * v[unit] +
// res1 * v[unit ^ 1] for rotation pairs and res0 * v[unit] for a diagonal R, where `mine` = v[unit] (kept in
// a register) and `row` is v in shared memory. (The backward passes its partner's res1.)
template <bool DENSE, class A>
__device__ __forceinline__ A regs_residual(A dense_part, bool rot, A res0, A res1, A mine, const A* row, int unit) {
  if constexpr (DENSE) {
    return dense_part;
  } else {
    return rot ? res0 * mine + res1 * row[unit ^ 1] : res0 * mine;
  }
}

// The register path's matrices for the thread's unit `unit`: w[k] = M(unit, k) and with DENSE rw[k] likewise from
// R, for k < K (zero past H or when the thread owns no unit); the words past K into the shared-memory tail,
// Wt[m * H + u] = M(u, K + m) for m < tail (zero past H), filled by every thread of the block. M(u, k) is
// W_hh[u, k] (the forward's rows) or with COLUMN W_hh[k, u] (the backward's columns).
template <int K, bool DENSE, bool COLUMN, class S, class A>
__device__ __forceinline__ void regs_load(const S* W, const S* R, int H, int unit, bool own, int tail, A (&w)[K],
                                          A (&rw)[DENSE ? K : 1], A* Wt) {
  auto at = [&](int u, int k) { return COLUMN ? k * H + u : u * H + k; };
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const bool in = own && k < H;
    w[k] = in ? static_cast<A>(W[at(unit, k)]) : A(0);
    if constexpr (DENSE) rw[k] = in ? static_cast<A>(R[at(unit, k)]) : A(0);
  }
  for (int idx = static_cast<int>(threadIdx.x); idx < tail * H; idx += static_cast<int>(blockDim.x)) {
    const int k = K + idx / H, u = idx % H;
    Wt[idx] = k < H ? static_cast<A>(W[at(u, k)]) : A(0);
  }
}

// The register path's matvec for the thread's unit `unit` and its BT rows r: sum[r] = sum_k w_k X[r][k] with
// w_0..w_{K-1} = w[] (registers) and w_{K+k} = Wt[k * H + unit] (the shared-memory tail of `tail` words, none
// with DENSE), and with DENSE sumR[r] = sum_k rw[k] XR[r][k]. X and XR: BT rows of XS words (XR may be X).
template <int BT, int K, bool DENSE, class A>
__device__ __forceinline__ void regs_matvec(const A (&w)[K], const A (&rw)[DENSE ? K : 1], const A* X, const A* XR,
                                            const A* Wt, int XS, int tail, int H, int unit, bool own, A (&sum)[BT],
                                            A (&sumR)[BT]) {
  constexpr int NA = regs_accumulators(BT);
  A acc[BT][NA];
  A accR[DENSE ? BT : 1][NA];
#pragma unroll
  for (int r = 0; r < BT; ++r) {
#pragma unroll
    for (int c = 0; c < NA; ++c) {
      acc[r][c] = A(0);
      if constexpr (DENSE) accR[r][c] = A(0);
    }
  }
#pragma unroll
  for (int k = 0; k < K; k += 4) {
#pragma unroll
    for (int r = 0; r < BT; ++r) {
      A v[4];
      lds4(X + r * XS + k, v);
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[r][c % NA] += w[k + c] * v[c];
      if constexpr (DENSE) {
        lds4(XR + r * XS + k, v);  // the same registers when XR is X: the compiler drops the second load
#pragma unroll
        for (int c = 0; c < 4; ++c) accR[r][c % NA] += rw[k + c] * v[c];
      }
    }
  }
  if constexpr (!DENSE) {
    for (int k = 0; k < tail; k += 4) {  // the words past K, from shared memory
      A wt[4];
#pragma unroll
      for (int c = 0; c < 4; ++c) wt[c] = own ? Wt[(k + c) * H + unit] : A(0);
#pragma unroll
      for (int r = 0; r < BT; ++r) {
        A v[4];
        lds4(X + r * XS + K + k, v);
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[r][c % NA] += wt[c] * v[c];
      }
    }
  }
#pragma unroll
  for (int r = 0; r < BT; ++r) {
    sum[r] = sum_acc<NA>(acc[r]);
    if constexpr (DENSE) {
      sumR[r] = sum_acc<NA>(accR[r]);
    } else {
      sumR[r] = A(0);
    }
  }
}

// The tiled register path's matrix tile for thread 4g + s: w[j][4m + c] = M(4g + j, 4(4m + s) + c) for j < 4,
// m < KS / 4, c < 4 (zero past H), M(u, k) = W_hh[u, k] (the forward's rows) or with COLUMN W_hh[k, u] (the
// backward's columns).
template <int KS, bool COLUMN, class S, class A>
__device__ __forceinline__ void tiled_load(const S* W, int H, int g, int s, A (&w)[4][KS]) {
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int u = 4 * g + j;
#pragma unroll
    for (int m = 0; m < KS / 4; ++m) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int k = 4 * (4 * m + s) + c;
        w[j][4 * m + c] = u < H && k < H ? static_cast<A>(W[COLUMN ? k * H + u : u * H + k]) : A(0);
      }
    }
  }
}

// The tiled register path's matvec, up to the partial sums: for each of the BT rows of X (4 KS words each),
// the thread's sums of rows 4g .. 4g+3 over its columns into part[(r * 4 + s) * P + 4g + j] (P =
// tiled_partial_stride), one 4-word store per row. The caller's barrier must follow before tiled_sum.
template <int BT, int KS, class A>
__device__ __forceinline__ void tiled_matvec(const A (&w)[4][KS], const A* X, A* part, int g, int s) {
  constexpr int NA = BT == 1 ? 2 : 1;  // accumulators per (batch row, matrix row): 8 or 4 BT FMA chains
  constexpr int P = tiled_partial_stride(KS);
#pragma unroll
  for (int r = 0; r < BT; ++r) {
    A acc[4][NA];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int n = 0; n < NA; ++n) acc[j][n] = A(0);
    }
#pragma unroll
    for (int m = 0; m < KS / 4; ++m) {
      A v[4];
      lds4(X + r * 4 * KS + 4 * (4 * m + s), v);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[j][(m * 4 + c) % NA] += w[j][4 * m + c] * v[c];
      }
    }
    A sum[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      sum[j] = acc[j][0];
#pragma unroll
      for (int n = 1; n < NA; ++n) sum[j] += acc[j][n];
    }
    sts4(part + (r * 4 + s) * P + 4 * g, sum);
  }
}

// Unit u's sum of row r: its four slices' partial sums, in slice order.
template <int KS, class A>
__device__ __forceinline__ A tiled_sum(const A* part, int r, int u) {
  constexpr int P = tiled_partial_stride(KS);
  const A* pr = part + r * 4 * P + u;
  return ((pr[0] + pr[P]) + pr[2 * P]) + pr[3 * P];
}

// What a thread of the register path works on: its unit (threadIdx.x) of the BT batch rows from b0, and the
// sizes every step uses.
struct RegsTile {
  int H, nonlin;
  bool rot;            // rotation-pair residual (not dense)
  int64_t T, BH;       // BH = B * H, one step of a (T, B, H) tensor
  int unit;            // threadIdx.x
  bool own;            // unit < H (the block has whole warps)
  int64_t b0;          // first batch row of the block
  int rows;            // batch rows of the block, at most BT
  int XS, tail;        // words per state row in shared memory; rows of the W_hh tail
};

template <int BT, int K, class S>
__device__ __forceinline__ RegsTile regs_tile(const ChainParams<S>& p, bool dense) {
  RegsTile g;
  g.H = p.H;
  g.nonlin = p.nonlin;
  g.rot = !dense && p.res_kind == kResRot;
  g.T = p.T;
  g.BH = p.B * p.H;
  g.unit = static_cast<int>(threadIdx.x);
  g.own = g.unit < p.H;
  g.b0 = static_cast<int64_t>(blockIdx.x) * BT;
  g.rows = static_cast<int>(min(static_cast<int64_t>(BT), p.B - g.b0));
  g.XS = regs_row_words(p.H, K);
  g.tail = regs_tail_rows(p.H, K);
  return g;
}

}  // namespace wcrnn_cuda
