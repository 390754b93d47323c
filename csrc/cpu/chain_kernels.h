// The CPU chain kernels, written once and compiled once per instruction set.
//
// chain_isa_<isa>.cpp includes this file (through chain_kernels_target.h, which sets the target pragma, for
// the wide-vector variants) after defining
//   WCRNN_ISA_NS    a namespace of its own (no symbol is shared between the variants: the linker can
//                   never hand a wide-vector copy of an inline function to code running on an older CPU)
//   WCRNN_ISA_NAME  "default", "avx2", "avx512"
//   WCRNN_VBYTES    vector width in bytes (16, 32, 64)
//   WCRNN_MR        micro-tile rows (batch rows per register block)
//   WCRNN_NR        micro-tile width in vectors
//   WCRNN_TABLE_FN  the accessor to define (see chain_kernels_api.h)
//   WCRNN_ISA_TARGET  (wide-vector variants) the target attribute string, e.g. "avx2,fma"
// and after including chain_kernels_prelude.h (the standard headers, outside the target pragma).
//
// Design (docs/design.md section 6): a thread owns a block of batch rows and runs the whole time loop for them.
// W_hh (and a dense residual) is packed once per call into column panels of the micro-tile's width, so
// each step is one small GEMM (rows x H) @ (H x N) straight from L1/L2 into a per-thread scratch, followed
// by a pointwise epilogue (bias add, phi, residual, lengths). Nothing is allocated inside the loop.
//
// Vectors are GCC/Clang vector extensions: the same source becomes SSE2, AVX2+FMA, AVX-512 or NEON code.
// Padding: the hidden axis is padded to Hp (a multiple of the vector length) in every buffer the kernel
// owns; padded lanes of the packed parameters are zero, so padded lanes of the state stay zero and never
// reach real lanes (the GEMM reduces over the H real columns only).

namespace wcrnn_cpu {
namespace WCRNN_ISA_NS {
namespace {

#define WCRNN_INLINE inline __attribute__((always_inline))

// The vector math's constants tuned per precision (tanh saturation, the exp argument reduction, the number of
// expm1 Taylor terms).
template <typename T>
struct MathConsts;

template <>
struct MathConsts<float> {
  static constexpr float kTanhSat = 10.0f;               // beyond this |x|, tanh(x) rounds to +-1 in float
  static constexpr float kLn2Hi = 0.693359375f;          // ln 2 with trailing zero bits: k * kLn2Hi is exact
  static constexpr float kLn2Lo = -2.12194440e-4f;
  static constexpr int kExpm1Terms = 8;                  // Taylor terms r^2/2! .. r^8/8!
};

template <>
struct MathConsts<double> {
  static constexpr double kTanhSat = 20.0;
  static constexpr double kLn2Hi = 6.93147180369123816490e-01;
  static constexpr double kLn2Lo = 1.90821492927058770002e-10;
  static constexpr int kExpm1Terms = 13;
};

// One vector of T (V), its integer twin (I) and the format's constants.
template <typename T>
struct Vec : MathConsts<T> {
  static_assert(std::numeric_limits<T>::is_iec559, "the vector math assumes IEEE float / double");
  using IScalar = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef T V __attribute__((vector_size(WCRNN_VBYTES)));
  typedef IScalar I __attribute__((vector_size(WCRNN_VBYTES)));
  static constexpr int kMantBits = std::numeric_limits<T>::digits - 1;  // 23, 52
  static constexpr IScalar kExpBias = std::numeric_limits<T>::max_exponent - 1;  // 127, 1023
  // 1.5 * 2^kMantBits: adding it rounds |y| < 2^(kMantBits - 1) to an integer held in the low mantissa bits.
  static constexpr T kRoundMagic = T(3) * T(IScalar(1) << (kMantBits - 1));
};
static_assert(Vec<float>::kRoundMagic == 12582912.0f && Vec<double>::kRoundMagic == 6755399441055744.0,
              "1.5 * 2^23 and 1.5 * 2^52");

template <typename T>
constexpr int64_t kLanes = WCRNN_VBYTES / static_cast<int64_t>(sizeof(T));

template <typename T>
constexpr int64_t padded(int64_t h) {
  return (h + kLanes<T> - 1) / kLanes<T> * kLanes<T>;
}

// ---------------------------------------------------------------------------------------------------------
// Vector helpers. memcpy-based loads and stores are exact about aliasing and compile to single moves.

template <typename T, typename V = typename Vec<T>::V>
WCRNN_INLINE V load(const T* p) {  // p aligned to WCRNN_VBYTES
  V v;
  std::memcpy(&v, __builtin_assume_aligned(p, WCRNN_VBYTES), sizeof(V));
  return v;
}

template <typename T, typename V = typename Vec<T>::V>
WCRNN_INLINE void store(T* p, V v) {
  std::memcpy(__builtin_assume_aligned(p, WCRNN_VBYTES), &v, sizeof(V));
}

template <typename T, typename V = typename Vec<T>::V>
WCRNN_INLINE V loadu(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename T, typename V = typename Vec<T>::V>
WCRNN_INLINE void storeu(T* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

// The last vector of a row of a caller's tensor: reads / writes only the n < lanes real elements.
template <typename T, typename V = typename Vec<T>::V>
WCRNN_INLINE V load_tail(const T* p, int64_t n, int64_t lanes) {
  if (n >= lanes) return loadu<T>(p);
  V v = {};
  for (int64_t i = 0; i < n; ++i) v[i] = p[i];
  return v;
}

template <typename T, typename V = typename Vec<T>::V>
WCRNN_INLINE void store_tail(T* p, V v, int64_t n, int64_t lanes) {
  if (n >= lanes) {
    storeu<T>(p, v);
    return;
  }
  for (int64_t i = 0; i < n; ++i) p[i] = v[i];
}

template <typename T, typename V = typename Vec<T>::V>
WCRNN_INLINE V splat(T s) {
  return s - V{};  // s - (+0) == s for every s (signed zeros and NaN included), so this folds to a broadcast
}

// Exchange lanes 2k and 2k+1: the partner of a unit in the rotation residual.
template <typename T, size_t... Is>
WCRNN_INLINE typename Vec<T>::V swap_pairs_impl(typename Vec<T>::V x, std::index_sequence<Is...>) {
#if defined(__clang__)
  return __builtin_shufflevector(x, x, static_cast<int>(Is ^ 1u)...);
#else
  using I = typename Vec<T>::I;
  using S = typename Vec<T>::IScalar;
  return __builtin_shuffle(x, I{static_cast<S>(Is ^ 1u)...});
#endif
}

template <typename T>
WCRNN_INLINE typename Vec<T>::V swap_pairs(typename Vec<T>::V x) {
  return swap_pairs_impl<T>(x, std::make_index_sequence<static_cast<size_t>(kLanes<T>)>{});
}

// One butterfly of an L x L transpose in registers: lanes l with bit B set trade places with lanes l - B of the
// partner row. lo takes a's lanes without bit B and b's lanes l - B; hi takes a's lanes l + B and b's lanes
// with bit B. After the stages B = 1, 2, .., L/2 over all row pairs (i, i + B), row j holds lane j of every
// row: a transpose, exact (pure data movement).
template <typename T, size_t B, size_t... Is>
WCRNN_INLINE void butterfly_impl(typename Vec<T>::V& a, typename Vec<T>::V& b, std::index_sequence<Is...>) {
  constexpr size_t L = sizeof...(Is);
#if defined(__clang__)
  const auto lo = __builtin_shufflevector(a, b, static_cast<int>((Is & B) ? L + Is - B : Is)...);
  const auto hi = __builtin_shufflevector(a, b, static_cast<int>((Is & B) ? L + Is : Is + B)...);
#else
  using I = typename Vec<T>::I;
  using S = typename Vec<T>::IScalar;
  const auto lo = __builtin_shuffle(a, b, I{static_cast<S>((Is & B) ? L + Is - B : Is)...});
  const auto hi = __builtin_shuffle(a, b, I{static_cast<S>((Is & B) ? L + Is : Is + B)...});
#endif
  a = lo;
  b = hi;
}

template <typename T, size_t B = 1>
WCRNN_INLINE void transpose_tile(typename Vec<T>::V* v) {
  constexpr size_t L = static_cast<size_t>(kLanes<T>);
  for (size_t i = 0; i < L; ++i) {
    if ((i & B) == 0) butterfly_impl<T, B>(v[i], v[i + B], std::make_index_sequence<L>{});
  }
  if constexpr (2 * B < L) transpose_tile<T, 2 * B>(v);
}

template <typename T>
constexpr T inv_factorial(int n) {
  T f = 1;
  for (int i = 2; i <= n; ++i) f *= T(i);
  return T(1) / f;
}

// 1/N! + r/(N+1)! + ... + r^(kExpm1Terms-N)/kExpm1Terms!, by Horner with compile-time coefficients.
template <typename T, int N>
WCRNN_INLINE typename Vec<T>::V expm1_tail(typename Vec<T>::V r) {
  constexpr T c = inv_factorial<T>(N);
  if constexpr (N == Vec<T>::kExpm1Terms) {
    return splat<T>(c);
  } else {
    return expm1_tail<T, N + 1>(r) * r + splat<T>(c);
  }
}

// tanh(x) = sign(x) * (-e / (2 + e)) with e = expm1(-2|x|): no cancellation near 0 (expm1 is evaluated
// directly there), saturates cleanly for large |x|, propagates NaN. expm1(z) = 2^k (expm1(r) + 1) - 1
// with z = k ln2 + r, |r| <= ln2 / 2, expm1(r) by its Taylor series (truncation below 0.15 ulp).
// Accuracy: a few ulp in float and double (tests/test_cpp.py measures it against torch.tanh).
template <typename T>
WCRNN_INLINE typename Vec<T>::V vtanh(typename Vec<T>::V x) {
  using W = Vec<T>;
  using V = typename W::V;
  using I = typename W::I;
  using S = typename W::IScalar;
  const I sign_mask = I{} + std::numeric_limits<S>::min();
  const I xi = (I)x;
  V ax = (V)(xi & ~sign_mask);
  ax = ax > splat<T>(W::kTanhSat) ? splat<T>(W::kTanhSat) : ax;  // NaN compares false and stays NaN
  const V z = splat<T>(T(-2)) * ax;
  const V magic = splat<T>(W::kRoundMagic);
  const V tk = z * splat<T>(T(1.4426950408889634)) + magic;  // k = round(z / ln 2), in the low bits of tk
  const V kf = tk - magic;
  const V r = (z - kf * splat<T>(W::kLn2Hi)) - kf * splat<T>(W::kLn2Lo);
  const V p = r + (r * r) * expm1_tail<T, 2>(r);  // expm1(r)
  const I ki = (I)tk - (I)magic;
  const V scale = (V)((ki + S(W::kExpBias)) << W::kMantBits);  // 2^k, k in [-60, 0]
  const V e = scale * p + (scale - splat<T>(T(1)));
  const V t = -e / (splat<T>(T(2)) + e);
  return (V)((I)t | (xi & sign_mask));
}

template <typename T, int NONLIN>
WCRNN_INLINE typename Vec<T>::V phi(typename Vec<T>::V a) {
  using V = typename Vec<T>::V;
  if constexpr (NONLIN == kTanh) {
    return vtanh<T>(a);
  } else {
    return a < V{} ? V{} : a;  // torch.relu: NaN stays NaN
  }
}

template <typename T, int NONLIN>
WCRNN_INLINE typename Vec<T>::V phi_prime(typename Vec<T>::V a) {
  using V = typename Vec<T>::V;
  using I = typename Vec<T>::I;
  if constexpr (NONLIN == kTanh) {
    const V y = vtanh<T>(a);
    return splat<T>(T(1)) - y * y;
  } else {
    return (V)((I)(a > V{}) & (I)splat<T>(T(1)));  // 1 where a > 0, else 0 (as the torch backend)
  }
}

// ---------------------------------------------------------------------------------------------------------
// The per-step GEMM: C (n x N) = A1 (n x K) @ B_seg0 [+ A2 (n x K) @ B_seg1], B packed in column panels.
// A panel of w vectors holds SEGS * K rows of w * lanes contiguous values; C and the A rows are aligned.

template <typename T, int M, int NV, int SEGS>
WCRNN_INLINE void micro_tile(int64_t K, const T* __restrict A1, const T* __restrict A2, int64_t lda,
                             const T* __restrict Bp, T* __restrict C, int64_t ldc) {
  using V = typename Vec<T>::V;
  constexpr int64_t L = kLanes<T>;
  V acc[M][NV];
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[m][v] = V{};
#pragma GCC unroll 2
  for (int s = 0; s < SEGS; ++s) {
    const T* A = s == 0 ? A1 : A2;
    const T* B = Bp + s * K * NV * L;
    for (int64_t k = 0; k < K; ++k) {
      V b[NV];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) b[v] = load<T>(B + (k * NV + v) * L);
#pragma GCC unroll 16
      for (int m = 0; m < M; ++m) {
        const V a = splat<T>(A[m * lda + k]);
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) acc[m][v] += a * b[v];
      }
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) store<T>(C + m * ldc + v * L, acc[m][v]);
}

template <typename T, int NV, int SEGS, int M>
WCRNN_INLINE void rows_remainder(int64_t rem, int64_t K, const T* A1, const T* A2, int64_t lda, const T* Bp,
                                 T* C, int64_t ldc) {
  if constexpr (M >= 1) {
    if (rem == M) {
      micro_tile<T, M, NV, SEGS>(K, A1, A2, lda, Bp, C, ldc);
    } else {
      rows_remainder<T, NV, SEGS, M - 1>(rem, K, A1, A2, lda, Bp, C, ldc);
    }
  }
}

template <typename T, int NV, int SEGS>
void panel_rows(int64_t n, int64_t K, const T* A1, const T* A2, int64_t lda, const T* Bp, T* C, int64_t ldc) {
  int64_t m = 0;
  for (; m + WCRNN_MR <= n; m += WCRNN_MR) {
    micro_tile<T, WCRNN_MR, NV, SEGS>(K, A1 + m * lda, SEGS == 2 ? A2 + m * lda : nullptr, lda, Bp,
                                      C + m * ldc, ldc);
  }
  if (m < n) {
    rows_remainder<T, NV, SEGS, WCRNN_MR - 1>(n - m, K, A1 + m * lda, SEGS == 2 ? A2 + m * lda : nullptr,
                                              lda, Bp, C + m * ldc, ldc);
  }
}

template <typename T, int SEGS, int NV>
WCRNN_INLINE void panel_width(int w, int64_t n, int64_t K, const T* A1, const T* A2, int64_t lda,
                              const T* Bp, T* C, int64_t ldc) {
  if constexpr (NV >= 1) {
    if (w == NV) {
      panel_rows<T, NV, SEGS>(n, K, A1, A2, lda, Bp, C, ldc);
    } else {
      panel_width<T, SEGS, NV - 1>(w, n, K, A1, A2, lda, Bp, C, ldc);
    }
  }
}

// Panel by panel: one panel of B (SEGS * K * w * lanes values) stays in L1 while every row block of A
// streams past it.
template <typename T, int SEGS>
void step_gemm(int64_t n, int64_t K, const T* A1, const T* A2, int64_t lda, const T* panels, int64_t N, T* C,
               int64_t ldc) {
  constexpr int64_t L = kLanes<T>;
  const int64_t nv = N / L;
  const T* Bp = panels;
  for (int64_t v0 = 0; v0 < nv; v0 += WCRNN_NR) {
    const int w = static_cast<int>(std::min<int64_t>(WCRNN_NR, nv - v0));
    panel_width<T, SEGS, WCRNN_NR>(w, n, K, A1, A2, lda, Bp, C + v0 * L, ldc);
    Bp += SEGS * K * w * L;
  }
}

// The forward's step GEMM straight from W_hh (and, for the columns past Hp, a dense R), unpacked: each L x L tile
// of L rows of W (L columns of W^T) is transposed in registers exactly as pack() would store it, and used at
// once. Every output lane sums the same products in the same order as micro_tile does on the packed panels
// (zero from k = 0 up, acc += a * b), so the results are bitwise a packed call's (test_cpp's one-step-at-a-time
// test). For one step of a few rows (generation, T = 1): W is read once, where packing reads it, writes the
// panels, and the GEMM reads them again (the pack was about 29 of a 36.5 us call at H = 512, B = 1). Rows in
// blocks of kDirectRows (chain_kernels_api.h), the tiles transposed once per block: callers take it for at most
// that many rows.

template <typename T>
void step_gemm_direct(int64_t n, int64_t H, const T* A, int64_t lda, const T* W, const T* R, int64_t N, T* C,
                      int64_t ldc) {
  using V = typename Vec<T>::V;
  constexpr int64_t L = kLanes<T>;
  const int64_t Hp = padded<T>(H), kfull = H / L * L;
  for (int64_t c0 = 0; c0 < N; c0 += L) {
    const T* rows[L];
    for (int64_t i = 0; i < L; ++i) {
      const int64_t col = c0 + i, m = col < Hp ? col : col - Hp;
      rows[i] = m >= H ? nullptr : (col < Hp ? W : R) + m * H;
    }
    for (int64_t r0 = 0; r0 < n; r0 += kDirectRows) {
      const int64_t nr = std::min<int64_t>(kDirectRows, n - r0);
      const T* Ar = A + r0 * lda;
      V acc[kDirectRows];
      for (int64_t m = 0; m < kDirectRows; ++m) acc[m] = V{};
      for (int64_t k0 = 0; k0 < kfull; k0 += L) {
        V v[L];
        for (int64_t i = 0; i < L; ++i) v[i] = rows[i] != nullptr ? loadu<T>(rows[i] + k0) : V{};
        transpose_tile<T>(v);
        for (int64_t j = 0; j < L; ++j) {
          for (int64_t m = 0; m < nr; ++m) {
            const V a = splat<T>(Ar[m * lda + k0 + j]);
            acc[m] += a * v[j];
          }
        }
      }
      for (int64_t k = kfull; k < H; ++k) {
        alignas(64) T lanes[L];
        for (int64_t i = 0; i < L; ++i) lanes[i] = rows[i] != nullptr ? rows[i][k] : T(0);
        const V b = load<T>(lanes);
        for (int64_t m = 0; m < nr; ++m) {
          const V a = splat<T>(Ar[m * lda + k]);
          acc[m] += a * b;
        }
      }
      for (int64_t m = 0; m < nr; ++m) store<T>(C + (r0 + m) * ldc + c0, acc[m]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Packing (once per call). Layout: gamma (Hp) | p0 (Hp) | q (Hp) | GEMM panels.
// Residual epilogue: R x = p0 * x + q * swap_pairs(x) (diagonal: q unused; dense: in the GEMM).
//   forward:  rotation p0 = res[0], q = res[1]           (R x  = res0 * x + res1 * swap(x))
//   backward: rotation p0 = res[0], q[i] = res[1][i ^ 1]  (R^T d = res0 * d + swap(res1 * d))
// GEMM right-hand side, K = H rows (reduction) by N columns:
//   forward:  N = Hp: W_hh^T;  dense: N = 2 Hp: [W_hh^T | R^T]   (a_t and R x_{t-1} in one product)
//   backward: N = Hp: W_hh;    dense: two K-segments [W_hh ; R] against [g_t ; delta_t]

// The epilogue's R v (forward) or R^T v (backward) for one lane block, from that block's p0 and q.
template <typename T, int KIND>
WCRNN_INLINE typename Vec<T>::V residual_epilogue(const T* p0, const T* q, typename Vec<T>::V v) {
  static_assert(KIND != kResDense, "a dense residual is applied in the GEMM");
  if constexpr (KIND == kResRot) return load<T>(p0) * v + load<T>(q) * swap_pairs<T>(v);
  return load<T>(p0) * v;
}

// Whether any of rows [rb, rb + n) is within its length at step t (no lengths: all are).
inline bool any_row_active(const int64_t* len, int64_t rb, int64_t n, int64_t t) {
  if (len == nullptr) return true;
  for (int64_t m = 0; m < n; ++m)
    if (t < len[rb + m]) return true;
  return false;
}

// A step writes zeros past a row's length (docs/design.md). rows_done: whether every one of rows [rb, rb + n)
// is past its length at step t; if so, it zeroes o1 and, where non-null, o2 (`count` elements each: the
// step's outputs of those rows).
template <typename T>
inline bool rows_done(const int64_t* len, int64_t rb, int64_t n, int64_t t, T* o1, T* o2, int64_t count) {
  if (any_row_active(len, rb, n, t)) return false;
  std::memset(o1, 0, sizeof(T) * count);
  if (o2 != nullptr) std::memset(o2, 0, sizeof(T) * count);
  return true;
}

template <typename T>
int64_t gemm_segments(int res_kind, bool backward) {
  return backward && res_kind == kResDense ? 2 : 1;
}

template <typename T>
int64_t gemm_columns(int64_t hidden, int res_kind, bool backward) {
  return !backward && res_kind == kResDense ? 2 * padded<T>(hidden) : padded<T>(hidden);
}

template <typename T>
int64_t packed_elems(int64_t hidden, int res_kind, bool backward) {
  return 3 * padded<T>(hidden) +
         gemm_segments<T>(res_kind, backward) * hidden * gemm_columns<T>(hidden, res_kind, backward);
}

// Column panels of the packed GEMM operand: all but the last are WCRNN_NR vectors wide.
template <typename T>
int64_t pack_panels(int64_t hidden, int res_kind, bool backward) {
  const int64_t nv = gemm_columns<T>(hidden, res_kind, backward) / kLanes<T>;
  return (nv + WCRNN_NR - 1) / WCRNN_NR;
}

// The parts of a packed buffer (layout above): gamma, p0, q (Hp each), then the GEMM panels. P: T* or const T*.
template <typename P>
struct PackedParts {
  P gam, p0, q, panels;
};
template <typename P>
WCRNN_INLINE PackedParts<P> packed_parts(P packed, int64_t Hp) {
  return {packed, packed + Hp, packed + 2 * Hp, packed + 3 * Hp};
}

// Packs panels [pb, pe) and, with pb == 0, the vectors (gamma, p0, q). Disjoint ranges write disjoint parts
// of `out`, so a caller may pack the panels on several threads.
template <typename T>
void pack(const T* w_hh, const T* res, const T* gamma, int64_t H, int res_kind, bool backward, int64_t pb,
          int64_t pe, T* out) {
  constexpr int64_t L = kLanes<T>;
  const int64_t Hp = padded<T>(H);
  const PackedParts<T*> pk = packed_parts(out, Hp);
  if (pb == 0) {
    std::memset(out, 0, sizeof(T) * 3 * Hp);  // the panels below are written in full, padding included
    for (int64_t i = 0; i < H; ++i) {
      pk.gam[i] = gamma[i];
      if (res_kind == kResDiag || res_kind == kResRot) pk.p0[i] = res[i];
      if (res_kind == kResRot) pk.q[i] = backward ? res[H + (i ^ 1)] : res[H + i];
    }
  }
  // Panel element (s, k, c) of the panel that starts at column c0 sits at dst[(s * K + k) * width + c].
  // Forward: column col of [W_hh^T | R^T] is row col of W_hh (col < Hp) or of R: read along that row,
  // write down the panel. Backward: row k of segment s is row k of W_hh or R, columns c0 ..: one copy.
  // Columns past H (padding) are zero. Written so for speed: the pack runs once per call, and at T = 1 or
  // large H its cost is the call's (an element-wise gather took 300 us at H = 512).
  const int64_t segs = gemm_segments<T>(res_kind, backward);
  const int64_t N = gemm_columns<T>(H, res_kind, backward);
  const int64_t K = H;
  T* dst = pk.panels + pb * segs * K * WCRNN_NR * L;  // every panel before the last is WCRNN_NR vectors wide
  const int64_t nv = N / L;
  for (int64_t v0 = pb * WCRNN_NR; v0 < std::min<int64_t>(nv, pe * WCRNN_NR); v0 += WCRNN_NR) {
    const int64_t width = std::min<int64_t>(WCRNN_NR, nv - v0) * L, c0 = v0 * L;
    if (!backward) {
      // L source rows at a time (L panel columns): L x L tiles transposed in registers, each stored as L
      // vectors down the panel; the k past the last full tile element by element.
      using V = typename Vec<T>::V;
      const int64_t kfull = K / L * L;
      for (int64_t c = 0; c < width; c += L) {
        const T* rows[L];
        for (int64_t i = 0; i < L; ++i) {
          const int64_t col = c0 + c + i, m = col < Hp ? col : col - Hp;
          rows[i] = m >= H ? nullptr : (col < Hp ? w_hh : res) + m * H;
        }
        T* d = dst + c;
        for (int64_t k0 = 0; k0 < kfull; k0 += L) {
          V v[L];
          for (int64_t i = 0; i < L; ++i) v[i] = rows[i] != nullptr ? loadu<T>(rows[i] + k0) : V{};
          transpose_tile<T>(v);
          for (int64_t j = 0; j < L; ++j) storeu<T>(d + (k0 + j) * width, v[j]);
        }
        for (int64_t i = 0; i < L; ++i) {
          for (int64_t k = kfull; k < K; ++k) d[k * width + i] = rows[i] != nullptr ? rows[i][k] : T(0);
        }
      }
    } else {
      const int64_t n = std::max<int64_t>(0, std::min<int64_t>(width, H - c0));
      for (int64_t s = 0; s < segs; ++s) {
        const T* M = s == 0 ? w_hh : res;
        for (int64_t k = 0; k < K; ++k) {
          T* d = dst + (s * K + k) * width;
          std::memcpy(d, M + k * H + c0, sizeof(T) * n);
          std::memset(d + n, 0, sizeof(T) * (width - n));
        }
      }
    }
    dst += segs * K * width;
  }
}

template <typename T>
int64_t workspace_elems(int64_t hidden, int res_kind, bool backward, int64_t rows) {
  const int64_t Hp = padded<T>(hidden);
  if (backward) return 4 * rows * Hp;                                  // g, delta, carry, GEMM out
  return 2 * rows * Hp + rows * gemm_columns<T>(hidden, res_kind, false);  // state x2, GEMM out
}

// ---------------------------------------------------------------------------------------------------------
// Forward chain for rows [rb, re).

template <typename T, int KIND, int NONLIN>
void forward_rows_impl(const FwdProblem<T>& p, int64_t rb, int64_t re, T* ws) {
  using V = typename Vec<T>::V;
  constexpr int64_t L = kLanes<T>;
  const int64_t H = p.hidden, B = p.batch, n = re - rb, Hp = padded<T>(H);
  const int64_t N = gemm_columns<T>(H, KIND, false);
  T* xa = ws;           // x_{t-1}, rows of Hp
  T* xb = xa + n * Hp;  // x_t
  T* C = xb + n * Hp;   // [W_hh x_{t-1} | R x_{t-1}], rows of N
  std::memset(ws, 0, sizeof(T) * 2 * n * Hp);
  for (int64_t m = 0; m < n; ++m) std::memcpy(xa + m * Hp, p.x0 + (rb + m) * H, sizeof(T) * H);
  const PackedParts<const T*> pk = packed_parts(p.packed, Hp);
  const int64_t* len = p.lengths;

  for (int64_t t = 0; t < p.steps; ++t) {
    const int64_t base = (t * B + rb) * H;
    T* out_t = p.out + base;
    T* a_t = p.a_out != nullptr ? p.a_out + base : nullptr;
    if (rows_done(len, rb, n, t, out_t, a_t, n * H)) continue;  // every row past its length: state kept
    if (p.w_direct != nullptr) {
      step_gemm_direct<T>(n, H, xa, Hp, p.w_direct, p.r_direct, N, C, N);
    } else {
      step_gemm<T, 1>(n, H, xa, nullptr, Hp, pk.panels, N, C, N);
    }
    const T* u_t = p.u + base;
    for (int64_t m = 0; m < n; ++m) {
      const T* ur = u_t + m * H;
      const T* cr = C + m * N;  // [W_hh x_{t-1} | R x_{t-1}] of this row
      const T* xr = xa + m * Hp;
      T* xn = xb + m * Hp;
      T* orow = out_t + m * H;
      T* arow = a_t != nullptr ? a_t + m * H : nullptr;
      if (rows_done(len, rb + m, 1, t, orow, arow, H)) {  // past its length: state kept
        std::memcpy(xn, xr, sizeof(T) * Hp);
        continue;
      }
      for (int64_t j = 0; j < Hp; j += L) {
        const int64_t left = H - j;
        const V a = load<T>(cr + j) + load_tail<T>(ur + j, left, L);
        if (arow != nullptr) store_tail<T>(arow + j, a, left, L);
        const V ph = phi<T, NONLIN>(a);
        V rx;
        if constexpr (KIND == kResDense) {
          rx = load<T>(cr + Hp + j);
        } else {
          rx = residual_epilogue<T, KIND>(pk.p0 + j, pk.q + j, load<T>(xr + j));
        }
        const V xv = rx + load<T>(pk.gam + j) * ph;
        store<T>(xn + j, xv);
        store_tail<T>(orow + j, xv, left, L);
      }
    }
    std::swap(xa, xb);
  }
  for (int64_t m = 0; m < n; ++m) std::memcpy(p.h_n + (rb + m) * H, xa + m * Hp, sizeof(T) * H);
}

// ---------------------------------------------------------------------------------------------------------
// Backward delta chain for rows [rb, re), t = T-1 .. 0.

template <typename T, int KIND, int NONLIN>
void backward_rows_impl(const BwdProblem<T>& p, int64_t rb, int64_t re, T* ws) {
  using V = typename Vec<T>::V;
  constexpr int64_t L = kLanes<T>;
  constexpr int SEGS = KIND == kResDense ? 2 : 1;
  const int64_t H = p.hidden, B = p.batch, n = re - rb, Hp = padded<T>(H);
  T* G = ws;            // g_t, rows of Hp (GEMM left operand)
  T* D = G + n * Hp;    // delta_t (second GEMM operand for a dense residual)
  T* c = D + n * Hp;    // carry: R^T delta_{t+1} + W_hh^T g_{t+1}, starts as grad_hn
  T* C = c + n * Hp;    // GEMM out
  std::memset(ws, 0, sizeof(T) * 4 * n * Hp);
  for (int64_t m = 0; m < n; ++m) std::memcpy(c + m * Hp, p.grad_hn + (rb + m) * H, sizeof(T) * H);
  const PackedParts<const T*> pk = packed_parts(p.packed, Hp);
  const int64_t* len = p.lengths;

  for (int64_t t = p.steps - 1; t >= 0; --t) {
    const int64_t base = (t * B + rb) * H;
    const T* a_t = p.a + base;
    T* g_t = p.g + base;
    T* d_t = p.delta != nullptr ? p.delta + base : nullptr;
    // every row past its length: identity Jacobian, carry unchanged
    if (rows_done(len, rb, n, t, g_t, d_t, n * H)) continue;
    const T* e_t = p.grad_out + base;
    for (int64_t m = 0; m < n; ++m) {
      const T* erow = e_t + m * H;
      const T* cr = c + m * Hp;
      const T* arow = a_t + m * H;
      T* Gr = G + m * Hp;
      T* Dr = D + m * Hp;
      T* grow = g_t + m * H;
      T* drow = d_t != nullptr ? d_t + m * H : nullptr;
      if (rows_done(len, rb + m, 1, t, grow, drow, H)) {  // past its length: identity Jacobian, GEMM rows zero
        std::memset(Gr, 0, sizeof(T) * Hp);
        std::memset(Dr, 0, sizeof(T) * Hp);
        continue;
      }
      for (int64_t j = 0; j < Hp; j += L) {
        const int64_t left = H - j;
        const V d = load<T>(cr + j) + load_tail<T>(erow + j, left, L);
        const V g = load<T>(pk.gam + j) * phi_prime<T, NONLIN>(load_tail<T>(arow + j, left, L)) * d;
        store<T>(Gr + j, g);
        store<T>(Dr + j, d);
        store_tail<T>(grow + j, g, left, L);
        if (drow != nullptr) store_tail<T>(drow + j, d, left, L);
      }
    }
    step_gemm<T, SEGS>(n, H, G, D, Hp, pk.panels, Hp, C, Hp);
    for (int64_t m = 0; m < n; ++m) {
      if (len != nullptr && t >= len[rb + m]) continue;
      T* cr = c + m * Hp;
      const T* Cr = C + m * Hp;
      const T* Dr = D + m * Hp;
      for (int64_t j = 0; j < Hp; j += L) {
        V v = load<T>(Cr + j);
        if constexpr (KIND != kResDense) v = residual_epilogue<T, KIND>(pk.p0 + j, pk.q + j, load<T>(Dr + j)) + v;
        store<T>(cr + j, v);
      }
    }
  }
  for (int64_t m = 0; m < n; ++m) std::memcpy(p.dx0 + (rb + m) * H, c + m * Hp, sizeof(T) * H);
}

// ---------------------------------------------------------------------------------------------------------
// Runtime (kind, nonlinearity) -> compiled specialisation.

// f(kind, nonlin) with both as std::integral_constant<int, code>: one specialisation per pair of codes.
template <typename F>
void with_variant(int res_kind, int nonlin, const F& f) {
  auto with_kind = [&](auto kind) {
    if (nonlin == kTanh) return f(kind, std::integral_constant<int, kTanh>{});
    return f(kind, std::integral_constant<int, kRelu>{});
  };
  switch (res_kind) {
    case kResDiag: return with_kind(std::integral_constant<int, kResDiag>{});
    case kResRot: return with_kind(std::integral_constant<int, kResRot>{});
    default: return with_kind(std::integral_constant<int, kResDense>{});
  }
}

template <typename T>
void forward_rows(const FwdProblem<T>& p, int64_t rb, int64_t re, T* ws) {
  with_variant(p.res_kind, p.nonlin, [&](auto kind, auto nonlin) {
    forward_rows_impl<T, decltype(kind)::value, decltype(nonlin)::value>(p, rb, re, ws);
  });
}

template <typename T>
void backward_rows(const BwdProblem<T>& p, int64_t rb, int64_t re, T* ws) {
  with_variant(p.res_kind, p.nonlin, [&](auto kind, auto nonlin) {
    backward_rows_impl<T, decltype(kind)::value, decltype(nonlin)::value>(p, rb, re, ws);
  });
}

template <typename T>
Kernels<T> make_kernels() {
  Kernels<T> k;
  k.packed_elems = &packed_elems<T>;
  k.pack_panels = &pack_panels<T>;
  k.pack = &pack<T>;
  k.workspace_elems = &workspace_elems<T>;
  k.direct_packed_elems = [](int64_t hidden) { return 3 * padded<T>(hidden); };
  k.forward_rows = &forward_rows<T>;
  k.backward_rows = &backward_rows<T>;
  return k;
}

#undef WCRNN_INLINE

}  // namespace
}  // namespace WCRNN_ISA_NS

const IsaTable& WCRNN_TABLE_FN() {
  static const IsaTable table{WCRNN_ISA_NAME, WCRNN_ISA_NS::make_kernels<float>(),
                              WCRNN_ISA_NS::make_kernels<double>()};
  return table;
}

}  // namespace wcrnn_cpu
