// CPU implementations of wcrnn_C::chain_fwd / chain_bwd: argument checks, output allocation, packing of
// W_hh, and the split of the batch rows over threads. The kernels themselves live in cpu/chain_kernels.h,
// compiled once per instruction set; the best one this CPU runs is picked at first use (the environment
// variable WCRNN_CPU_ISA = default | avx2 | avx512 forces a narrower one, e.g. for testing).
//
// Threads: each thread gets one contiguous block of batch rows and runs the whole time loop for it; there is
// no synchronisation per step. Rows never interact and each row's arithmetic does not depend on which block
// it lands in, so results are bitwise identical for any number of threads. The number of threads is
// torch's (torch.set_num_threads): with OpenMP (GCC builds) through at::parallel_for on torch's own OpenMP
// pool; without it (clang / Apple builds) with std::threads started per call.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <type_traits>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>
#include <string>
#include <tuple>

#include "cpu/chain_kernels_api.h"
#include "wcrnn_checks.h"
#include "wcrnn_op_signatures.h"

namespace wcrnn_cpu {
namespace {

using wcrnn_checks::Args;
using wcrnn_checks::check_args;
using wcrnn_checks::checked;
using wcrnn_checks::new_outputs;
using wcrnn_checks::Params;
using wcrnn_checks::Sequence;

// The CPU op's side of the shared checks: CPU tensors, the dtypes the CPU kernels are compiled for, lengths
// read in place.
const wcrnn_checks::Policy kCpuPolicy{c10::DeviceType::CPU, false, " (the CPU kernels' dtypes)", true,
                                      std::numeric_limits<int64_t>::max(), true};

const IsaTable& best_isa() {
  static const IsaTable& best = []() -> const IsaTable& {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (avx2 && __builtin_cpu_supports("avx512f")) return isa_table_avx512();
    if (avx2) return isa_table_avx2();
#endif
    return isa_table_default();
  }();
  return best;
}

int isa_rank(const std::string& name) {
  if (name == "default") return 0;
  if (name == "avx2") return 1;
  if (name == "avx512") return 2;
  return -1;
}

const IsaTable& selected_isa() {
  const char* req = std::getenv("WCRNN_CPU_ISA");
  if (req == nullptr || *req == '\0' || std::strcmp(req, "auto") == 0) return best_isa();
  const std::string name(req);
  const int rank = isa_rank(name);
  TORCH_CHECK(rank >= 0, "WCRNN_CPU_ISA: expected one of auto, default, avx2, avx512, got '", name, "'");
  TORCH_CHECK(rank <= isa_rank(best_isa().name), "WCRNN_CPU_ISA=", name,
              ": this CPU (or this build) cannot run it; the widest it runs is ", best_isa().name);
  if (rank == 0) return isa_table_default();
#if defined(__x86_64__) || defined(_M_X64)
  if (rank == 1) return isa_table_avx2();
  return isa_table_avx512();
#else
  return isa_table_default();
#endif
}

template <typename T>
const Kernels<T>& kernels_of(const IsaTable& isa);
template <>
const Kernels<float>& kernels_of<float>(const IsaTable& isa) {
  return isa.f32;
}
template <>
const Kernels<double>& kernels_of<double>(const IsaTable& isa) {
  return isa.f64;
}

// f(row_begin, row_end) on disjoint blocks of [0, B), one per thread.
template <typename F>
void parallel_rows(int64_t B, const F& f) {
#ifdef _OPENMP
  at::parallel_for(0, B, 1, f);
#else
  const int64_t nt = std::min<int64_t>(at::get_num_threads(), B);
  if (nt <= 1 || at::in_parallel_region()) {
    f(0, B);
    return;
  }
  const int64_t chunk = (B + nt - 1) / nt;
  std::exception_ptr err;
  std::mutex mu;
  auto run = [&](int64_t rb) {
    try {
      f(rb, std::min(B, rb + chunk));
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!err) err = std::current_exception();
    }
  };
  std::vector<std::thread> threads;
  for (int64_t rb = chunk; rb < B; rb += chunk) threads.emplace_back(run, rb);
  run(0);
  for (auto& t : threads) t.join();
  if (err) std::rethrow_exception(err);
#endif
}

// Per-thread scratch, 64-byte aligned (the widest vector), allocated once per thread per call.
struct AlignedBuffer {
  void* ptr = nullptr;
  explicit AlignedBuffer(size_t bytes) {
    const size_t rounded = (std::max<size_t>(bytes, 64) + 63) / 64 * 64;
    ptr = std::aligned_alloc(64, rounded);
    TORCH_CHECK(ptr != nullptr, "wcrnn_C: could not allocate ", rounded, " bytes of kernel workspace");
  }
  ~AlignedBuffer() { std::free(ptr); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
};

template <typename T>
void run_rows(const Kernels<T>& k, const FwdProblem<T>& p, int64_t rb, int64_t re, T* ws) {
  k.forward_rows(p, rb, re, ws);
}
template <typename T>
void run_rows(const Kernels<T>& k, const BwdProblem<T>& p, int64_t rb, int64_t re, T* ws) {
  k.backward_rows(p, rb, re, ws);
}

// The H values of a checked res or gamma: its own data, or for a 0-d one (one value for every unit, which
// check_params passes on 0-d for this op) `units` filled with that value.
template <typename T>
const T* per_unit(const at::Tensor& t, int64_t H, std::vector<T>& units) {
  if (t.dim() != 0) return t.data_ptr<T>();
  units.assign(H, *t.data_ptr<T>());
  return units.data();
}

// One chain on the checked arguments: allocates the op's three outputs (new_outputs: a (T, B, H) sequence, a
// (B, H) state and, with `with_extra`, a second (T, B, H) sequence), packs (w_hh, res, gamma) once for the
// chain's direction, then runs it on blocks of batch rows, one per thread, each with its own workspace.
// problem(chain, seq, state, extra) completes the shared fields `chain` (a ChainProblem<scalar_t>) and the
// outputs' data (extra: null without `with_extra`) into the direction's FwdProblem / BwdProblem.
template <typename MakeProblem>
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_chain(const Args& k, int64_t res_kind, int64_t nonlin,
                                                         bool backward, bool with_extra,
                                                         const MakeProblem& problem) {
  const Sequence& s = k.seq;
  const Params& prm = k.params;
  const int64_t T = s.T, B = s.B, H = s.H;
  at::Tensor seq, state, extra;
  std::tie(seq, state, extra) = new_outputs(s, with_extra);
  if (B == 0 || H == 0) return {seq, state, extra};
  const IsaTable& isa = selected_isa();
  const int kind = static_cast<int>(res_kind);
  AT_DISPATCH_FLOATING_TYPES(s.t.scalar_type(), "wcrnn_C chain (CPU)", [&] {
    const Kernels<scalar_t>& kern = kernels_of<scalar_t>(isa);
    // One forward step of a few rows (generation): no panels, the GEMM reads W_hh (and a dense R) as they are,
    // with the same arithmetic (chain_kernels.h, step_gemm_direct); only the vectors are packed: pack(0, 0).
    const bool direct = !backward && T == 1 && B <= kDirectRows;
    AlignedBuffer packed(sizeof(scalar_t) *
                         (direct ? kern.direct_packed_elems(H) : kern.packed_elems(H, kind, backward)));
    std::vector<scalar_t> res_units, gamma_units;
    const scalar_t* res_p = per_unit(prm.res, H, res_units);
    const scalar_t* gamma_p = per_unit(prm.gamma, H, gamma_units);
    const auto pack = [&](int64_t pb, int64_t pe) {
      kern.pack(prm.w_hh.data_ptr<scalar_t>(), res_p, gamma_p, H, kind, backward, pb, pe,
                static_cast<scalar_t*>(packed.ptr));
    };
    // The pack is a strided copy of H^2 elements: on one thread it was a T = 1 call's largest cost at H >= 256
    // (B = 32, H = 256: 38 us of 105), while the other threads waited for the chain. At H = 128 sharing it
    // cost more than it saved (2 threads: a T = 1 call 13-16 us -> 19-22); from 256 it saves 8-11 us
    // (B = 32), 40 (H = 512, B = 1) and 230-400 (H = 1024, B = 8).
    const int64_t panels = direct ? 0 : kern.pack_panels(H, kind, backward);
    if (H >= 256 && !direct) {
      parallel_rows(panels, pack);
    } else {
      pack(0, panels);
    }
    ChainProblem<scalar_t> chain{prm.lengths_data(), T, B, H, kind, static_cast<int>(nonlin),
                                 static_cast<const scalar_t*>(packed.ptr)};
    if (direct) {
      chain.w_direct = prm.w_hh.data_ptr<scalar_t>();
      chain.r_direct = kind == kResDense ? prm.res.data_ptr<scalar_t>() : nullptr;
    }
    const auto p = problem(chain, seq.data_ptr<scalar_t>(), state.data_ptr<scalar_t>(),
                           with_extra ? extra.data_ptr<scalar_t>() : nullptr);
    parallel_rows(B, [&](int64_t rb, int64_t re) {
      AlignedBuffer ws(sizeof(scalar_t) * kern.workspace_elems(H, kind, backward, re - rb));
      run_rows(kern, p, rb, re, static_cast<scalar_t*>(ws.ptr));
    });
  });
  return {seq, state, extra};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> chain_fwd_cpu(const at::Tensor& u, const at::Tensor& x0,
                                                             const at::Tensor& w_hh, const at::Tensor& res,
                                                             const at::Tensor& gamma,
                                                             const c10::optional<at::Tensor>& lengths,
                                                             int64_t res_kind, int64_t nonlin, bool save_a) {
  const Args k = check_args("wcrnn_C::chain_fwd", "u", u, kCpuPolicy, w_hh, res, gamma, lengths, res_kind, nonlin);
  const at::Tensor xc = checked(k.seq, "x0", x0, {k.seq.B, k.seq.H}, "(B, H)");
  const at::Tensor uc = u.contiguous();
  return run_chain(k, res_kind, nonlin, false, save_a, [&](const auto& chain, auto* out, auto* h_n, auto* a) {
    using S = typename std::decay_t<decltype(chain)>::Elem;
    return FwdProblem<S>{chain, uc.data_ptr<S>(), xc.data_ptr<S>(), out, h_n, a};
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> chain_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& grad_hn,
                                                             const at::Tensor& a_in, const at::Tensor& w_hh,
                                                             const at::Tensor& res, const at::Tensor& gamma,
                                                             const c10::optional<at::Tensor>& lengths,
                                                             int64_t res_kind, int64_t nonlin, bool need_delta) {
  const Args k = check_args("wcrnn_C::chain_bwd", "a", a_in, kCpuPolicy, w_hh, res, gamma, lengths, res_kind,
                            nonlin);
  const Sequence& s = k.seq;
  const at::Tensor eo = checked(s, "grad_out", grad_out, {s.T, s.B, s.H}, "(T, B, H) like a");
  const at::Tensor eh = checked(s, "grad_hn", grad_hn, {s.B, s.H}, "(B, H)");
  const at::Tensor a = a_in.contiguous();
  return run_chain(k, res_kind, nonlin, true, need_delta, [&](const auto& chain, auto* g, auto* dx0, auto* delta) {
    using S = typename std::decay_t<decltype(chain)>::Elem;
    return BwdProblem<S>{chain, eo.data_ptr<S>(), eh.data_ptr<S>(), a.data_ptr<S>(), g, dx0, delta};
  });
}

}  // namespace

std::string cpu_info() {
  // How many threads the kernels really get: checks that torch.set_num_threads governs them (with OpenMP:
  // that this library shares torch's OpenMP runtime).
  std::atomic<int> chunks{0};
  parallel_rows(1 << 12, [&](int64_t, int64_t) { chunks.fetch_add(1); });
  std::string s = "isa=";
  s += selected_isa().name;
  s += " best_isa=";
  s += best_isa().name;
  s += " parallel_chunks=" + std::to_string(chunks.load());
  s += " at_num_threads=" + std::to_string(at::get_num_threads());
#ifdef _OPENMP
  s += " openmp=1";
#else
  s += " openmp=0";
#endif
  return s;
}

}  // namespace wcrnn_cpu

// the CUDA kernels register the same C++ types (cuda/chain_ops.cu): see wcrnn_op_signatures.h
static_assert(std::is_same_v<decltype(wcrnn_cpu::chain_fwd_cpu), wcrnn_sig::ChainFwd>,
              "chain_fwd_cpu must have the signature of wcrnn_op_signatures.h");
static_assert(std::is_same_v<decltype(wcrnn_cpu::chain_bwd_cpu), wcrnn_sig::ChainBwd>,
              "chain_bwd_cpu must have the signature of wcrnn_op_signatures.h");

TORCH_LIBRARY_IMPL(wcrnn_C, CPU, m) {
  m.impl("chain_fwd", &wcrnn_cpu::chain_fwd_cpu);
  m.impl("chain_bwd", &wcrnn_cpu::chain_bwd_cpu);
}
