// The forward chain on CUDA: x_t = R(x_{t-1}) + gamma * phi(u_t + W_hh x_{t-1}), t = 1..T, one
// persistent kernel per call (docs/design.md sections 5-6). Mirrors TorchBackend.chain_fwd step by step:
//
//   torch backend                                  this kernel (per block, per step t)
//   a = addmm(u[t], x, W^T)                        (3) partial dot products + (4) a = u_t + sum
//   x_new = R(x) + gamma * phi(a)                  (4) epilogue, per (row, unit)
//   x = where(valid[t], x_new, x)                  (4) valid = t < lengths[b]
//   out[t] = where(valid[t], x, 0)                 (4)
//   a_all[t] = where(valid[t], a, 0)  (save_a)     (4)
//   return out, x                                  h_n written at t = T-1
//
// The state x and every sum are kept in the accumulation type (float for float/half/bfloat16), as in
// the torch backend; only out, h_n and the saved a are rounded to the storage type.
#include <cooperative_groups.h>

#include "chain_cuda.cuh"
#include "chain_regs.cuh"

namespace wcrnn_cuda {
namespace {

namespace cg = cooperative_groups;

// DENSE: residual kind 2 (a second matvec); otherwise kind 0 or 1, told apart at run time (rot).
template <class S, bool DENSE, int BT, bool GRID>
__global__ void __launch_bounds__(kThreads) chain_fwd_kernel(const FwdParams<S> p) {
  using A = typename AccType<S>::type;
  constexpr int NX = GRID ? 1 : 2;  // block path: double-buffered state rows
  const int H = p.H, U = p.U, nonlin = p.nonlin;
  const bool rot = !DENSE && p.res_kind == kResRot;
  const int64_t T = p.T, B = p.B;
  const int tid = static_cast<int>(threadIdx.x);
  const int u0 = GRID ? static_cast<int>(blockIdx.x) * U : 0;  // first unit this block owns
  const int Ueff = min(U, H - u0);                               // units this block owns
  const MatvecShape ms = matvec_shape(H, U);
  const SmemLayout L = smem_layout(H, U, BT, DENSE, NX, 0, sizeof(A), sizeof(S));

  WCRNN_DYNAMIC_SMEM(smem);
  const BlockSmem<S, A> sm = block_smem<S, A>(smem, L, U);
  A* xs = sm.x;  // [NX][BT][H] state rows

  // Once per kernel: this block's rows of W_hh (and of a dense R), transposed: sm.w[j*U + i] = W[u0+i, j].
  for (int idx = tid; idx < Ueff * H; idx += kThreads) {
    const int i = idx / H, j = idx % H;
    const int64_t src = static_cast<int64_t>(u0 + i) * H + j;
    sm.w[j * U + i] = p.w[src];
    if constexpr (DENSE) sm.r[j * U + i] = p.res[src];
  }
  for (int i = tid; i < Ueff; i += kThreads) {
    sm.gam[i] = static_cast<A>(p.gamma[(u0 + i) * p.gamma_step]);
    if constexpr (!DENSE) {
      sm.res0[i] = static_cast<A>(p.res[(u0 + i) * p.res_step]);  // diagonal: R(x)[i] = res[i] x[i]
      if (rot) sm.res1[i] = static_cast<A>(p.res[H + u0 + i]);  // rotation: + res[1][i] x[i^1]
    }
  }
  // Rows past B are never written but are read by the matvec: keep them zero, not garbage.
  for (int idx = tid; idx < NX * BT * H; idx += kThreads) xs[idx] = A(0);
  __syncthreads();

  // Batch rows of this block: a tile of BT (block path) or a group of rows_per_group (grid path).
  const int64_t row_first = GRID ? static_cast<int64_t>(blockIdx.y) * p.rows_per_group
                                 : static_cast<int64_t>(blockIdx.x) * BT;
  const int64_t row_end = min(B, row_first + (GRID ? p.rows_per_group : static_cast<int64_t>(BT)));
  int cur = 0;  // block path: xs[cur] holds x_{t-1}, the epilogue writes x_t into xs[cur ^ 1]

  for (int64_t t = 0; t < T; ++t) {
    const int64_t par = t & 1;  // grid path: x_t goes to xbuf[par], x_{t-1} is read from xbuf[1 - par]
    for (int64_t b0 = row_first; b0 < row_end; b0 += BT) {
      const int rows = static_cast<int>(min(static_cast<int64_t>(BT), row_end - b0));
      const int nel = rows * Ueff;  // epilogue elements (row r, unit i), e = r * Ueff + i
      const int64_t ubase = (t * B + b0) * H + u0;

      // (1) Issue the epilogue's loads of u_t now; the staging and the matvec hide their latency.
      A early[kEarly];
#pragma unroll
      for (int k = 0; k < kEarly; ++k) {
        const int e = tid + k * kThreads;
        early[k] = e < nel ? static_cast<A>(p.u[ubase + static_cast<int64_t>(e / Ueff) * H + e % Ueff]) : A(0);
      }

      // (2) x_{t-1} rows b0 .. b0+rows-1, all H units, into shared memory: x0 at t = 0; on the grid
      // path the previous step's state from L2 (every block wrote its own units before the barrier).
      A* X = xs + (GRID ? 0 : cur * BT * H);
      if (GRID || t == 0) {
        for (int idx = tid; idx < rows * H; idx += kThreads) {
          const int64_t g = b0 * H + idx;  // (b0 + idx / H) * H + idx % H
          X[idx] = t == 0 ? static_cast<A>(p.x0[g]) : ldcg(p.xbuf + (1 - par) * B * H + g);
        }
      }
      __syncthreads();

      // (3) Partial sums of W_hh x_{t-1} (and R x_{t-1} for a dense residual) for the block's units.
      matvec_partials<BT, DENSE>(sm.w, sm.r, X, X, sm.part, sm.partR, H, U, Ueff, ms);
      __syncthreads();

      // (4) Epilogue for element e = (row r, own unit i).
      A* Xn = xs + (cur ^ 1) * BT * H;
      auto epilogue = [&](int e, A u_val) {
        const int r = e / Ueff, i = e % Ueff, gi = u0 + i;
        const int64_t b = b0 + r;
        const A a = u_val + sum_partials<BT>(sm.part, r, i, U, ms.KS);
        const A xp = X[r * H + gi];
        A rx;
        if constexpr (DENSE) {
          rx = sum_partials<BT>(sm.partR, r, i, U, ms.KS);
        } else {
          rx = rot ? sm.res0[i] * xp + sm.res1[i] * X[r * H + (gi ^ 1)] : sm.res0[i] * xp;
        }
        const A x_new = rx + sm.gam[i] * phi(a, nonlin);
        const bool valid = p.lengths == nullptr || t < p.lengths[b];
        const A x = valid ? x_new : xp;  // past the length the state is kept
        const int64_t o = b * H + gi;
        p.out[t * B * H + o] = valid ? static_cast<S>(x) : static_cast<S>(A(0));
        if (p.a_out != nullptr) p.a_out[t * B * H + o] = valid ? static_cast<S>(a) : static_cast<S>(A(0));
        if constexpr (GRID) {
          stcg(p.xbuf + par * B * H + o, x);
        } else {
          Xn[r * H + gi] = x;
        }
        if (t == T - 1) p.hn[o] = static_cast<S>(x);
      };
      for (int e = tid, k = 0; e < nel; e += kThreads, ++k) {  // one call site: one copy of the body
        A u_val = A(0);
        bool early_hit = false;
#pragma unroll
        for (int q = 0; q < kEarly; ++q) {  // register select, no dynamically indexed (local) array
          if (q == k) {
            u_val = early[q];
            early_hit = true;
          }
        }
        if (!early_hit) u_val = static_cast<A>(p.u[ubase + static_cast<int64_t>(e / Ueff) * H + e % Ueff]);
        epilogue(e, u_val);
      }
      __syncthreads();  // X, sm.part and Xn are reused by the next chunk / step
    }
    if constexpr (GRID) {
      cg::this_grid().sync();  // x_t of every unit is in L2 before anyone stages it
    } else {
      cur ^= 1;
    }
  }
}

// The register path (chain_cuda.cuh): thread i owns unit i of BT batch rows. Row i of W_hh (and of a dense R)
// stays in registers, its words past K (no dense R then) in a shared-memory tail Wt[(j - K) * H + i]; the
// state rows x_{t-1} / x_t alternate between two shared-memory buffers of XS words per row, zero past H, and
// the thread's own x_{t-1}[i] is also kept in a register. u_t of the thread's units is
// loaded PF steps ahead (the time loop is unrolled by PF so that every prefetch slot is a fixed register).
// Same step as the block path: a = u_t + W_hh x_{t-1}, x_t = R(x_{t-1}) + gamma * phi(a), masked by lengths.
// KS > 0: the tiled register path (chain_cuda.cuh tiled_slots; K unused, no dense form): thread i = 4g + s keeps
// a 4 x KS tile of W_hh (tiled_load), a step first stores its partial sums (tiled_matvec), then after a barrier
// adds unit i's (tiled_sum) and runs the same epilogue; the state rows are 4 KS words, the partial sums take
// the place of the tail.
template <class S, bool DENSE, int BT, int K, int KS = 0>
__global__ void __launch_bounds__(KS > 0 ? 128 : kRegsThreads) chain_fwd_regs_kernel(const FwdParams<S> p) {
  using A = typename AccType<S>::type;
  constexpr bool TILED = KS > 0;
  constexpr int PF = regs_prefetch<A>(BT, 1);
  const RegsTile tile = regs_tile<BT, TILED ? 4 * KS : K>(p, DENSE);
  const int H = tile.H, i = tile.unit, XS = tile.XS;
  const int64_t T = tile.T, BH = tile.BH, b0 = tile.b0;
  WCRNN_DYNAMIC_SMEM(smem);
  A* xs = reinterpret_cast<A*>(smem);  // [2][BT][XS] state rows
  A* Wt = xs + 2 * BT * XS;            // [tail][H] the rows' words past K; tiled: [BT][4][P] partial sums

  A w[TILED ? 1 : K];  // w[k] = W_hh[i, k]
  A rw[DENSE ? K : 1];
  A wt[TILED ? 4 : 1][TILED ? KS : 1];  // the tiled path's tile
  if constexpr (TILED) {
    tiled_load<KS, false>(p.w, H, i >> 2, i & 3, wt);
  } else {
    regs_load<K, DENSE, false>(p.w, p.res, H, i, tile.own, tile.tail, w, rw, Wt);
  }
  const A gam = tile.own ? static_cast<A>(p.gamma[i * p.gamma_step]) : A(0);
  A res0 = A(0), res1 = A(0);
  if constexpr (!DENSE) {
    if (tile.own) {
      res0 = static_cast<A>(p.res[i * p.res_step]);   // diagonal: R(x)[i] = res[i] x[i]
      if (tile.rot) res1 = static_cast<A>(p.res[H + i]);  // rotation: + res[1][i] x[i^1]
    }
  }
  // Zero both buffers (padding past H and rows past B are read by the matvec), then x0 of the own unit.
  for (int idx = i; idx < 2 * BT * XS; idx += static_cast<int>(blockDim.x)) xs[idx] = A(0);
  __syncthreads();
  int64_t len[BT];
  A xo[BT];  // x_{t-1}[i] of each row
#pragma unroll
  for (int r = 0; r < BT; ++r) {
    const bool live = tile.own && r < tile.rows;
    len[r] = p.lengths == nullptr || !live ? T : p.lengths[b0 + r];
    xo[r] = live ? static_cast<A>(p.x0[(b0 + r) * H + i]) : A(0);
    if (live) xs[r * XS + i] = xo[r];
  }
  auto load_u = [&](int64_t t, int r) {  // u_t[b0 + r][i], 0 past T or for a row / unit not owned
    return tile.own && r < tile.rows && t < T ? static_cast<A>(p.u[t * BH + (b0 + r) * H + i]) : A(0);
  };
  A up[PF][BT];  // up[q][r] = u_t[b0 + r][i] for the step t = q (mod PF) to come
#pragma unroll
  for (int q = 0; q < PF; ++q) {
#pragma unroll
    for (int r = 0; r < BT; ++r) up[q][r] = load_u(q, r);
  }
  __syncthreads();

  int cur = 0;  // xs[cur] holds x_{t-1}, the step writes x_t into xs[cur ^ 1]
  for (int64_t t0 = 0; t0 < T; t0 += PF) {
#pragma unroll
    for (int q = 0; q < PF; ++q) {
      const int64_t t = t0 + q;
      if (t >= T) break;  // the same for every thread of the block
      const A* X = xs + cur * BT * XS;
      A* Xn = xs + (cur ^ 1) * BT * XS;
      A mv[BT], mvR[BT];  // (W_hh x_{t-1})[i], (R x_{t-1})[i] per row
      if constexpr (TILED) {
        tiled_matvec<BT, KS>(wt, X, Wt, i >> 2, i & 3);
        __syncthreads();  // every slice's partial sums stored; the epilogue adds its unit's (tiled_sum)
      } else {
        regs_matvec<BT, K, DENSE>(w, rw, X, X, Wt, XS, tile.tail, H, i, tile.own, mv, mvR);
      }
#pragma unroll
      for (int r = 0; r < BT; ++r) {
        if (tile.own && r < tile.rows) {
          const A a = up[q][r] + (TILED ? tiled_sum<KS>(Wt, r, i) : mv[r]);
          const A xp = xo[r];
          const A rx = regs_residual<DENSE>(TILED ? A(0) : mvR[r], tile.rot, res0, res1, xp, X + r * XS, i);
          const bool valid = t < len[r];
          const A x = valid ? rx + gam * phi(a, tile.nonlin) : xp;  // past the length the state is kept
          const int64_t o = (b0 + r) * H + i;
          p.out[t * BH + o] = valid ? static_cast<S>(x) : static_cast<S>(A(0));
          if (p.a_out != nullptr) p.a_out[t * BH + o] = valid ? static_cast<S>(a) : static_cast<S>(A(0));
          if (t == T - 1) p.hn[o] = static_cast<S>(x);
          Xn[r * XS + i] = x;
          xo[r] = x;
        }
        up[q][r] = load_u(t + PF, r);  // this slot's next step
      }
      __syncthreads();  // x_t complete before the next step reads it; x_{t-1} (tiled: the partial sums) read before
                        // it is overwritten
      cur ^= 1;
    }
  }
}

struct Forward {
  using Call = FwdCall;
  // half types instantiated; the register path's buffers: x_{t-1} and x_t rows
  static constexpr DirInfo kInfo{true, "wcrnn_C::chain_fwd", 2};

  template <class S>
  static size_t smem(int H, int U, int BT, bool grid, bool dense) {  // block path: double-buffered state rows
    using A = typename AccType<S>::type;
    return smem_layout(H, U, BT, dense, grid ? 1 : 2, 0, sizeof(A), sizeof(S)).total;
  }
  template <class S>
  static FwdParams<S> params(const ChainParams<S>& chain, const FwdCall& c) {
    return {chain, static_cast<const S*>(c.u), static_cast<const S*>(c.x0), static_cast<S*>(c.out),
            static_cast<S*>(c.hn), static_cast<S*>(c.a_out), static_cast<typename AccType<S>::type*>(c.exchange)};
  }
  template <class S, bool D, int BT, bool GRID> static auto kernel() { return chain_fwd_kernel<S, D, BT, GRID>; }
  template <class S, bool D, int BT, int K> static auto regs_kernel() { return chain_fwd_regs_kernel<S, D, BT, K>; }
  template <class S, int BT, int KS> static auto tiled_kernel() { return chain_fwd_regs_kernel<S, false, BT, 0, KS>; }
};

}  // namespace

const ChainEntry<FwdCall> kForwardChain{plan_chain_call<Forward>, launch_chain_call<Forward>};

}  // namespace wcrnn_cuda
