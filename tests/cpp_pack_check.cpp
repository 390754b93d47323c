// pack() of every instruction-set variant against the definition of the packed layout, element by element, in
// float and double, packed in two panel ranges as two threads would, with a guard past the buffer. Built and
// run by tests/test_cpp.py (test_pack_matches_its_layout) with the system's C++ compiler and, where one is
// found, with clang too: the register-tile transpose has a GCC and a clang spelling (vector shuffles).
// Usage: cpp_pack_check [isas]   (isas: a comma-separated subset of default,avx2,avx512 this CPU runs)
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <vector>
#include <random>
#include "chain_kernels_api.h"
using namespace wcrnn_cpu;

// The panel width in vectors (WCRNN_NR of the ISA file), from how many panels pack_panels reports.
template <typename T>
int infer_nr(const Kernels<T>& k, int L) {
  for (int r = 1; r <= 16; ++r) {
    bool ok = true;
    for (int64_t nv = 1; nv <= 64 && ok; ++nv) ok = k.pack_panels(nv * L, 0, true) == (nv + r - 1) / r;
    if (ok) return r;
  }
  return -1;
}

template <typename T>
int check(const Kernels<T>& k, const char* isa, int L) {
  const int NR = infer_nr(k, L);
  if (NR < 1) { std::printf("%s: no panel width fits pack_panels\n", isa); return 1; }
  int bad = 0;
  std::mt19937 rng(1);
  std::uniform_real_distribution<double> U(-1, 1);
  for (int64_t H : {1, 2, 3, 7, 16, 17, 31, 64, 100, 127, 128, 129, 256, 300, 520}) {
    for (int kind = 0; kind < 3; ++kind) {
      if (kind == 1 && H % 2) continue;
      std::vector<T> w(H * H), res(kind == 2 ? H * H : 2 * H), g(H);
      for (auto& v : w) v = T(U(rng));
      for (auto& v : res) v = T(U(rng));
      for (auto& v : g) v = T(U(rng));
      for (bool bwd : {false, true}) {
        const int64_t n = k.packed_elems(H, kind, bwd), np = k.pack_panels(H, kind, bwd);
        std::vector<T> out(n + 64, T(-7));
        T* o = out.data();
        // pack in two ranges, as two threads would
        k.pack(w.data(), res.data(), g.data(), H, kind, bwd, 0, np / 2, o);
        k.pack(w.data(), res.data(), g.data(), H, kind, bwd, np / 2, np, o);
        const int64_t Hp = (H + L - 1) / L * L;
        const T* panels = o + 3 * Hp;
        const int64_t N = (!bwd && kind == 2) ? 2 * Hp : Hp;
        const int64_t segs = (bwd && kind == 2) ? 2 : 1;
        const int64_t nv = N / L;
        const T* dst = panels;
        for (int64_t v0 = 0; v0 < nv; v0 += NR) {
          const int64_t width = std::min<int64_t>(NR, nv - v0) * L, c0 = v0 * L;
          for (int64_t s = 0; s < segs; ++s)
            for (int64_t kk = 0; kk < H; ++kk)
              for (int64_t c = 0; c < width; ++c) {
                const int64_t col = c0 + c;
                T want;
                if (!bwd) {
                  const int64_t m = col < Hp ? col : col - Hp;
                  want = m >= H ? T(0) : (col < Hp ? w[m * H + kk] : res[m * H + kk]);
                } else {
                  const T* M = s == 0 ? w.data() : res.data();
                  want = col >= H ? T(0) : M[kk * H + col];
                }
                if (dst[(s * H + kk) * width + c] != want) ++bad;
              }
          dst += segs * H * width;
        }
        if (o + n != dst) { std::printf("%s: size mismatch H=%ld\n", isa, (long)H); ++bad; }
        for (int64_t i = n; i < n + 64; ++i) if (out[i] != T(-7)) ++bad;  // nothing past the buffer
      }
    }
  }
  return bad;
}

int main(int argc, char** argv) {
  const char* only = argc > 1 ? argv[1] : "default,avx2,avx512";  // the ISAs this CPU runs
  struct { const IsaTable& (*fn)(); int vbytes; } isas[] = {
#if defined(__x86_64__) || defined(_M_X64)
    {isa_table_avx2, 32}, {isa_table_avx512, 64},
#endif
    {isa_table_default, 16}};
  int total = 0;
  for (auto& i : isas) {
    const IsaTable& t = i.fn();
    if (!std::strstr(only, t.name)) continue;
    int bf = check<float>(t.f32, t.name, i.vbytes / 4);
    int bd = check<double>(t.f64, t.name, i.vbytes / 8);
    std::printf("%s: float %d bad, double %d bad\n", t.name, bf, bd);
    total += bf + bd;
  }
  return total != 0;
}
