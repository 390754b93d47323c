// The backward (delta) chain on CUDA, one persistent kernel per call (docs/design.md section 5):
//
//     delta_T = e_T,   g_t = gamma * phi'(a_t) * delta_t,   delta_{t-1} = e_{t-1} + R^T delta_t + W_hh^T g_t
//
// Mirrors TorchBackend.chain_bwd, whose loop body for step t is
//
//   (A) delta = delta + where(v, grad_out[t], 0)          "phase A": elementwise, own units
//       g_t   = where(v, gamma * phi'(a[t]) * delta, 0)
//       d_t   = where(v, delta, 0);  g[t] = g_t;  deltas[t] = d_t
//   (B) delta = where(v, R^T delta + g_t @ W_hh, delta)   "phase B": needs g_t (and for a dense R,
//                                                         delta) of EVERY unit: the matvec
//
// Phase A of step t-1 only needs phase B's result for the same (row, unit), so the kernel runs phase A
// of step T-1 as a prologue and then, for t = T-1 .. 0, phase B of step t with phase A of step t-1
// fused into its epilogue: one barrier per step. `a` is only read; g_t goes to `g`, which on the grid
// path doubles as the exchange buffer for g_t: after the barrier every block stages the g_t rows it
// needs from L2. The delta carried between steps lives in shared memory (block path) or in
// a (2, B, H) global buffer read and written with .cg (grid path); the two halves alternate with the
// parity of t, so a block still reading step t's half never races a block writing step t-1's.
//
// The backward runs in float32 or float64 only: ops.py upcasts float16/bfloat16 before calling it.
#include <cooperative_groups.h>

#include "chain_cuda.cuh"
#include "chain_regs.cuh"

namespace wcrnn_cuda {
namespace {

namespace cg = cooperative_groups;

// DENSE: residual kind 2 (a second matvec); otherwise kind 0 or 1, told apart at run time (rot).
template <class S, bool DENSE, int BT, bool GRID>
__global__ void __launch_bounds__(kThreads) chain_bwd_kernel(const BwdParams<S> p) {
  using A = S;
  constexpr int NX2 = GRID ? (DENSE ? 1 : 0) : 2;
  const int H = p.H, U = p.U, nonlin = p.nonlin;
  const bool rot = !DENSE && p.res_kind == kResRot;
  const int64_t T = p.T, B = p.B, BH = p.B * p.H;
  const int tid = static_cast<int>(threadIdx.x);
  const int u0 = GRID ? static_cast<int>(blockIdx.x) * U : 0;  // first unit j this block owns
  const int Ueff = min(U, H - u0);
  const MatvecShape ms = matvec_shape(H, U);
  const SmemLayout L = smem_layout(H, U, BT, DENSE, 1, NX2, sizeof(A), sizeof(S));

  WCRNN_DYNAMIC_SMEM(smem);
  const BlockSmem<S, A> sm = block_smem<S, A>(smem, L, U);
  A* sg = sm.x;   // [BT][H] g_t rows
  A* sd = sm.x2;  // block path: [2][BT][H] delta rows; grid + dense: [BT][H]

  // Once per kernel: columns u0.. of W_hh (rows of W_hh^T), sm.w[k*U + jj] = W[k, u0+jj], so that the
  // shared matvec computes (W^T g)[j] = sum_k W[k, j] g[k]; the same for a dense R (R^T delta).
  for (int idx = tid; idx < Ueff * H; idx += kThreads) {
    const int k = idx / Ueff, jj = idx % Ueff;
    const int64_t src = static_cast<int64_t>(k) * H + u0 + jj;
    sm.w[k * U + jj] = p.w[src];
    if constexpr (DENSE) sm.r[k * U + jj] = p.res[src];
  }
  for (int jj = tid; jj < Ueff; jj += kThreads) {
    const int j = u0 + jj;
    sm.gam[jj] = p.gamma[j * p.gamma_step];
    if constexpr (!DENSE) {
      sm.res0[jj] = p.res[j * p.res_step];
      // R^T d = res[0] * d + swap_pairs(res[1] * d): unit j takes res[1] of its partner j^1.
      if (rot) sm.res1[jj] = p.res[H + (j ^ 1)];
    }
  }
  for (int idx = tid; idx < BT * H; idx += kThreads) sg[idx] = A(0);
  for (int idx = tid; idx < NX2 * BT * H; idx += kThreads) sd[idx] = A(0);
  __syncthreads();

  // Batch rows of this block: a tile of BT (block path) or a group of rows_per_group (grid path).
  const int64_t row_first = GRID ? static_cast<int64_t>(blockIdx.y) * p.rows_per_group
                                 : static_cast<int64_t>(blockIdx.x) * BT;
  const int64_t row_end = min(B, row_first + (GRID ? p.rows_per_group : static_cast<int64_t>(BT)));

  // Where the carried delta of (local row r / batch row b, unit j) lives in half `half`.
  auto dslot = [&](int half, int r, int64_t b, int j) -> A* {
    if constexpr (GRID) {
      return p.dbuf + half * BH + b * H + j;
    } else {
      return sd + (half * BT + r) * H + j;
    }
  };
  auto load_delta = [&](const A* q) -> A {
    if constexpr (GRID) {
      return ldcg(q);
    } else {
      return *q;
    }
  };

  // Phase A of step t for (r, b, own unit jj): carry is dL/dx_t from the steps after t (grad_hn at
  // t = T-1); go = grad_out[t], av = a[t] at this element.
  auto phase_a = [&](int64_t t, int r, int64_t b, int jj, A carry, A go, A av) {
    const int j = u0 + jj;
    const bool valid = p.lengths == nullptr || t < p.lengths[b];
    const A delta = valid ? carry + go : carry;
    const A g = valid ? sm.gam[jj] * phi_prime(av, nonlin) * delta : A(0);
    const int64_t o = t * BH + b * H + j;
    if (p.deltas != nullptr) p.deltas[o] = valid ? delta : A(0);
    A* slot = dslot(static_cast<int>(t & 1), r, b, j);
    if constexpr (GRID) {
      stcg(p.g + o, g);  // other blocks stage g_t from here after the barrier
      stcg(slot, delta);
    } else {
      p.g[o] = g;
      *slot = delta;
      sg[r * H + j] = g;
    }
  };

  // Prologue: phase A of step T-1, carry = grad_hn.
  for (int64_t b0 = row_first; b0 < row_end; b0 += BT) {
    const int rows = static_cast<int>(min(static_cast<int64_t>(BT), row_end - b0));
    for (int e = tid; e < rows * Ueff; e += kThreads) {
      const int r = e / Ueff, jj = e % Ueff;
      const int64_t b = b0 + r;
      const int64_t o = b * H + u0 + jj;
      phase_a(T - 1, r, b, jj, p.grad_hn[o], p.grad_out[(T - 1) * BH + o], p.a[(T - 1) * BH + o]);
    }
  }
  if constexpr (GRID) {
    cg::this_grid().sync();
  } else {
    __syncthreads();
  }

  for (int64_t t = T - 1; t >= 0; --t) {
    const int cur = static_cast<int>(t & 1);  // half holding delta_t
    for (int64_t b0 = row_first; b0 < row_end; b0 += BT) {
      const int rows = static_cast<int>(min(static_cast<int64_t>(BT), row_end - b0));
      const int nel = rows * Ueff;
      const int64_t prev = (t - 1) * BH + b0 * H + u0;  // [t-1, b0, u0]: phase A operands of step t-1

      // (1) Issue the loads phase A of step t-1 needs; the staging and the matvec hide their latency.
      A early_go[kEarly], early_a[kEarly];
#pragma unroll
      for (int k = 0; k < kEarly; ++k) {
        const int e = tid + k * kThreads;
        const bool live = t > 0 && e < nel;
        const int64_t o = live ? prev + static_cast<int64_t>(e / Ueff) * H + e % Ueff : 0;
        early_go[k] = live ? p.grad_out[o] : A(0);
        early_a[k] = live ? p.a[o] : A(0);
      }

      // (2) Grid path: stage g_t (and for a dense R, delta_t) of rows b0.. for all H units from L2.
      if constexpr (GRID) {
        for (int idx = tid; idx < rows * H; idx += kThreads) {
          const int64_t g = b0 * H + idx;
          sg[idx] = ldcg(p.g + t * BH + g);
          if constexpr (DENSE) sd[idx] = ldcg(p.dbuf + cur * BH + g);
        }
      }
      __syncthreads();

      // (3) Partial sums of (W^T g_t)[j] and, for a dense R, (R^T delta_t)[j] for the block's units.
      const A* D = GRID ? sd : sd + cur * BT * H;
      matvec_partials<BT, DENSE>(sm.w, sm.r, sg, D, sm.part, sm.partR, H, U, Ueff, ms);
      __syncthreads();

      // (4) Epilogue: phase B of step t for (row r, own unit jj), then phase A of step t-1.
      auto epilogue = [&](int e, A go, A av) {
        const int r = e / Ueff, jj = e % Ueff, j = u0 + jj;
        const int64_t b = b0 + r;
        const A d = load_delta(dslot(cur, r, b, j));
        A rt;
        if constexpr (DENSE) {
          rt = sum_partials<BT>(sm.partR, r, jj, U, ms.KS);
        } else {
          // j^1 belongs to this block too: slices start at even units and have even length.
          rt = rot ? sm.res0[jj] * d + sm.res1[jj] * load_delta(dslot(cur, r, b, j ^ 1)) : sm.res0[jj] * d;
        }
        const bool valid = p.lengths == nullptr || t < p.lengths[b];
        const A carry = valid ? rt + sum_partials<BT>(sm.part, r, jj, U, ms.KS) : d;  // dL/dx_{t-1}
        if (t == 0) {
          p.dx0[b * H + j] = carry;
        } else {
          phase_a(t - 1, r, b, jj, carry, go, av);
        }
      };
      for (int e = tid, k = 0; e < nel; e += kThreads, ++k) {  // one call site: one copy of the body
        A go = A(0), av = A(0);
        bool early_hit = false;
#pragma unroll
        for (int q = 0; q < kEarly; ++q) {  // register select, no dynamically indexed (local) array
          if (q == k) {
            go = early_go[q];
            av = early_a[q];
            early_hit = true;
          }
        }
        if (!early_hit && t > 0) {
          const int64_t o = prev + static_cast<int64_t>(e / Ueff) * H + e % Ueff;
          go = p.grad_out[o];
          av = p.a[o];
        }
        epilogue(e, go, av);
      }
      __syncthreads();  // sg, sd, sm.part are reused by the next chunk / step
    }
    if constexpr (GRID) cg::this_grid().sync();  // g_{t-1} and delta_{t-1} of every unit are in L2
  }
}

// The register path (chain_cuda.cuh): thread j owns unit j of BT batch rows and keeps column j of W_hh (and
// of a dense R) in registers, its words past K (no dense R then) in a shared-memory tail Wt[(k - K) * H + j],
// so (W_hh^T g_t)[j] and (R^T delta_t)[j] need only the g_t / delta_t rows, which alternate between two
// shared-memory buffers each (XS words per row, zero past H); its own delta_t[j] is also kept in a register.
// grad_out and a of step t-1 are loaded PF steps ahead. The same phases as the block path: phase A of step
// T-1 as a prologue, then for t = T-1 .. 0 phase B of step t and phase A of step t-1, one barrier.
// KS > 0: the tiled register path, as in the forward (chain_fwd.cu) on W_hh^T: thread j = 4g + s keeps the tile of
// columns 4g .. 4g+3 of W_hh, and a step's partial sums of (W_hh^T g_t) meet in shared memory before phase B.
template <class S, bool DENSE, int BT, int K, int KS = 0>
__global__ void __launch_bounds__(KS > 0 ? 128 : kRegsThreads) chain_bwd_regs_kernel(const BwdParams<S> p) {
  using A = S;
  constexpr bool TILED = KS > 0;
  constexpr int PF = regs_prefetch<A>(BT, 2);
  const RegsTile tile = regs_tile<BT, TILED ? 4 * KS : K>(p, DENSE);
  const int H = tile.H, j = tile.unit, XS = tile.XS;
  const int64_t T = tile.T, BH = tile.BH, b0 = tile.b0;
  WCRNN_DYNAMIC_SMEM(smem);
  A* sg = reinterpret_cast<A*>(smem);  // [2][BT][XS] g rows, the half t & 1 holds g_t
  A* sd = sg + 2 * BT * XS;            // [2][BT][XS] delta rows, likewise
  A* Wt = sd + 2 * BT * XS;            // [tail][H] the columns' words past K: Wt[(k - K) * H + j] = W[k, j];
                                       // tiled: [BT][4][P] partial sums

  A w[TILED ? 1 : K];  // w[k] = W_hh[k, j]
  A rw[DENSE ? K : 1];
  A wt[TILED ? 4 : 1][TILED ? KS : 1];  // the tiled path's tile
  if constexpr (TILED) {
    tiled_load<KS, true>(p.w, H, j >> 2, j & 3, wt);
  } else {
    regs_load<K, DENSE, true>(p.w, p.res, H, j, tile.own, tile.tail, w, rw, Wt);
  }
  const A gam = tile.own ? p.gamma[j * p.gamma_step] : A(0);
  A res0 = A(0), res1 = A(0);
  if constexpr (!DENSE) {
    if (tile.own) {
      res0 = p.res[j * p.res_step];
      // R^T d = res[0] * d + swap_pairs(res[1] * d): unit j takes res[1] of its partner j^1.
      if (tile.rot) res1 = p.res[H + (j ^ 1)];
    }
  }
  for (int idx = j; idx < 4 * BT * XS; idx += static_cast<int>(blockDim.x)) sg[idx] = A(0);
  __syncthreads();

  int64_t len[BT];
  A dl[BT];  // delta_t[j] of each row
#pragma unroll
  for (int r = 0; r < BT; ++r) {
    len[r] = p.lengths == nullptr || !(tile.own && r < tile.rows) ? T : p.lengths[b0 + r];
    dl[r] = A(0);
  }
  // Phase A of step t for row r: carry is dL/dx_t from the steps after t (grad_hn at t = T-1).
  auto phase_a = [&](int64_t t, int r, A carry, A go, A av) {
    const bool valid = t < len[r];
    const A delta = valid ? carry + go : carry;
    const A g = valid ? gam * phi_prime(av, tile.nonlin) * delta : A(0);
    const int64_t o = t * BH + (b0 + r) * H + j;
    if (p.deltas != nullptr) p.deltas[o] = valid ? delta : A(0);
    p.g[o] = g;
    const int half = static_cast<int>(t & 1);
    sg[(half * BT + r) * XS + j] = g;
    sd[(half * BT + r) * XS + j] = delta;
    dl[r] = delta;
  };
#pragma unroll
  for (int r = 0; r < BT; ++r) {
    if (tile.own && r < tile.rows) {
      const int64_t o = (b0 + r) * H + j;
      phase_a(T - 1, r, p.grad_hn[o], p.grad_out[(T - 1) * BH + o], p.a[(T - 1) * BH + o]);
    }
  }
  // go[q][r], av[q][r]: grad_out and a of step T-2-n at iteration n = q (mod PF) to come
  A go[PF][BT], av[PF][BT];
  auto load_ops = [&](int64_t s, int q, int r) {  // step s's operands into slot q; 0 before step 0
    const bool live = tile.own && r < tile.rows && s >= 0;
    const int64_t o = live ? s * BH + (b0 + r) * H + j : 0;
    go[q][r] = live ? p.grad_out[o] : A(0);
    av[q][r] = live ? p.a[o] : A(0);
  };
#pragma unroll
  for (int q = 0; q < PF; ++q) {
#pragma unroll
    for (int r = 0; r < BT; ++r) load_ops(T - 2 - q, q, r);
  }
  __syncthreads();

  for (int64_t n0 = 0; n0 < T; n0 += PF) {
#pragma unroll
    for (int q = 0; q < PF; ++q) {
      const int64_t n = n0 + q;
      if (n >= T) break;  // the same for every thread of the block
      const int64_t t = T - 1 - n;
      const int cur = static_cast<int>(t & 1);
      const A* G = sg + cur * BT * XS;
      const A* D = sd + cur * BT * XS;
      A mv[BT], mvR[BT];  // (W_hh^T g_t)[j], (R^T delta_t)[j] per row
      if constexpr (TILED) {
        tiled_matvec<BT, KS>(wt, G, Wt, j >> 2, j & 3);
        __syncthreads();  // every slice's partial sums stored; the epilogue adds its unit's (tiled_sum)
      } else {
        regs_matvec<BT, K, DENSE>(w, rw, G, D, Wt, XS, tile.tail, H, j, tile.own, mv, mvR);
      }
#pragma unroll
      for (int r = 0; r < BT; ++r) {
        if (tile.own && r < tile.rows) {
          const A d = dl[r];
          const A rt = regs_residual<DENSE>(TILED ? A(0) : mvR[r], tile.rot, res0, res1, d, D + r * XS, j);
          const bool valid = t < len[r];
          const A carry = valid ? rt + (TILED ? tiled_sum<KS>(Wt, r, j) : mv[r]) : d;  // dL/dx_{t-1}
          if (t == 0) {
            p.dx0[(b0 + r) * H + j] = carry;
          } else {
            phase_a(t - 1, r, carry, go[q][r], av[q][r]);
          }
        }
        load_ops(t - 1 - PF, q, r);  // this slot's next step: iteration n + PF needs step T-2-(n+PF)
      }
      __syncthreads();  // g_{t-1}, delta_{t-1} complete before the next step reads them (tiled: and the partial
                        // sums read before the next step overwrites them)
    }
  }
}

struct Backward {
  using Call = BwdCall;
  // no half types (ops.py upcasts float16 / bfloat16 before the backward); the register path's buffers: two
  // halves each of g rows and delta rows
  static constexpr DirInfo kInfo{false, "wcrnn_C::chain_bwd", 4};

  template <class S>
  static size_t smem(int H, int U, int BT, bool grid, bool dense) {
    return smem_layout(H, U, BT, dense, 1, grid ? (dense ? 1 : 0) : 2, sizeof(S), sizeof(S)).total;
  }
  template <class S>
  static BwdParams<S> params(const ChainParams<S>& chain, const BwdCall& c) {
    return {chain, static_cast<const S*>(c.grad_out), static_cast<const S*>(c.grad_hn), static_cast<const S*>(c.a),
            static_cast<S*>(c.g), static_cast<S*>(c.dx0), static_cast<S*>(c.deltas), static_cast<S*>(c.exchange)};
  }
  template <class S, bool D, int BT, bool GRID> static auto kernel() { return chain_bwd_kernel<S, D, BT, GRID>; }
  template <class S, bool D, int BT, int K> static auto regs_kernel() { return chain_bwd_regs_kernel<S, D, BT, K>; }
  template <class S, int BT, int KS> static auto tiled_kernel() { return chain_bwd_regs_kernel<S, false, BT, 0, KS>; }
};

}  // namespace

const ChainEntry<BwdCall> kBackwardChain{plan_chain_call<Backward>, launch_chain_call<Backward>};

}  // namespace wcrnn_cuda
