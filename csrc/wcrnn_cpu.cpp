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
#include "wcrnn_op_signatures.h"

namespace wcrnn_cpu {
namespace {

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

// WCRNN_POISON_OUTPUTS=1 (tests): outputs start as NaN, so any element a kernel forgets to write fails loudly.
bool poison_outputs() {
  const char* v = std::getenv("WCRNN_POISON_OUTPUTS");
  return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
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

void check_float_cpu(const char* op, const char* name, const at::Tensor& t, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, ": expected a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, ": expected dtype ", dtype, " (the dtype of the ",
              "first argument), got ", t.scalar_type());
}

void check_shape(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef expected,
                 const char* desc) {
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, ": expected shape ", desc, " = ", expected, ", got ",
              t.sizes());
}

// The checks both ops share: parameters, codes, lengths. Returns contiguous (w_hh, res, gamma, lengths).
std::tuple<at::Tensor, at::Tensor, at::Tensor, c10::optional<at::Tensor>> check_params(
    const char* op, int64_t T, int64_t B, int64_t H, at::ScalarType dtype, const at::Tensor& w_hh,
    const at::Tensor& res, const at::Tensor& gamma, const c10::optional<at::Tensor>& lengths, int64_t res_kind,
    int64_t nonlin) {
  TORCH_CHECK(res_kind == kResDiag || res_kind == kResRot || res_kind == kResDense, op,
              ": res_kind: expected 0 (diagonal), 1 (rotation pairs) or 2 (dense), got ", res_kind);
  TORCH_CHECK(nonlin == kTanh || nonlin == kRelu, op, ": nonlin: expected 0 (tanh) or 1 (relu), got ", nonlin);
  check_float_cpu(op, "w_hh", w_hh, dtype);
  check_float_cpu(op, "res", res, dtype);
  check_float_cpu(op, "gamma", gamma, dtype);
  check_shape(op, "w_hh", w_hh, {H, H}, "(H, H)");
  check_shape(op, "gamma", gamma, {H}, "(H,)");
  if (res_kind == kResDiag) {
    check_shape(op, "res", res, {H}, "(H,) for res_kind 0");
  } else if (res_kind == kResRot) {
    check_shape(op, "res", res, {2, H}, "(2, H) for res_kind 1");
    TORCH_CHECK(H % 2 == 0, op, ": res: rotation pairs need an even hidden size, got H = ", H);
  } else {
    check_shape(op, "res", res, {H, H}, "(H, H) for res_kind 2");
  }
  c10::optional<at::Tensor> len;
  if (lengths.has_value()) {
    const at::Tensor& l = *lengths;
    TORCH_CHECK(l.device().is_cpu(), op, ": lengths: expected a CPU tensor, got ", l.device());
    TORCH_CHECK(l.scalar_type() == at::kLong, op, ": lengths: expected dtype int64, got ", l.scalar_type());
    check_shape(op, "lengths", l, {B}, "(B,)");
    len = l.contiguous();
    const int64_t* lp = len->data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      TORCH_CHECK(lp[b] >= 0 && lp[b] <= T, op, ": lengths: every entry must lie in [0, T = ", T, "], got ",
                  lp[b], " at index ", b);
    }
  }
  return {w_hh.contiguous(), res.contiguous(), gamma.contiguous(), len};
}

at::ScalarType check_dtype(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
              ": expected float32 or float64 (the CPU kernels' dtypes), got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, ": expected a CPU tensor, got ", t.device());
  return t.scalar_type();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> chain_fwd_cpu(const at::Tensor& u, const at::Tensor& x0,
                                                             const at::Tensor& w_hh, const at::Tensor& res,
                                                             const at::Tensor& gamma,
                                                             const c10::optional<at::Tensor>& lengths,
                                                             int64_t res_kind, int64_t nonlin, bool save_a) {
  constexpr const char* op = "wcrnn_C::chain_fwd";
  TORCH_CHECK(u.dim() == 3, op, ": u: expected a 3-D tensor (T, B, H), got shape ", u.sizes());
  const at::ScalarType dtype = check_dtype(op, "u", u);
  const int64_t T = u.size(0), B = u.size(1), H = u.size(2);
  check_float_cpu(op, "x0", x0, dtype);
  check_shape(op, "x0", x0, {B, H}, "(B, H)");
  at::Tensor w, r, g;
  c10::optional<at::Tensor> len;
  std::tie(w, r, g, len) = check_params(op, T, B, H, dtype, w_hh, res, gamma, lengths, res_kind, nonlin);
  const at::Tensor uc = u.contiguous();
  const at::Tensor xc = x0.contiguous();
  at::Tensor out = at::empty({T, B, H}, u.options());
  at::Tensor h_n = at::empty({B, H}, u.options());
  at::Tensor a = save_a ? at::empty({T, B, H}, u.options()) : at::empty({0}, u.options());
  if (poison_outputs()) {
    out.fill_(std::numeric_limits<double>::quiet_NaN());
    h_n.fill_(std::numeric_limits<double>::quiet_NaN());
    a.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  if (B == 0 || H == 0) return {out, h_n, a};
  const IsaTable& isa = selected_isa();

  AT_DISPATCH_FLOATING_TYPES(dtype, "wcrnn_C::chain_fwd", [&] {
    const Kernels<scalar_t>& k = kernels_of<scalar_t>(isa);
    AlignedBuffer packed(sizeof(scalar_t) * k.packed_elems(H, res_kind, false));
    k.pack(w.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), H, static_cast<int>(res_kind),
           false, static_cast<scalar_t*>(packed.ptr));
    FwdProblem<scalar_t> p{uc.data_ptr<scalar_t>(),
                           xc.data_ptr<scalar_t>(),
                           out.data_ptr<scalar_t>(),
                           h_n.data_ptr<scalar_t>(),
                           save_a ? a.data_ptr<scalar_t>() : nullptr,
                           len.has_value() ? len->data_ptr<int64_t>() : nullptr,
                           T,
                           B,
                           H,
                           static_cast<int>(res_kind),
                           static_cast<int>(nonlin),
                           static_cast<const scalar_t*>(packed.ptr)};
    parallel_rows(B, [&](int64_t rb, int64_t re) {
      AlignedBuffer ws(sizeof(scalar_t) * k.workspace_elems(H, static_cast<int>(res_kind), false, re - rb));
      k.forward_rows(p, rb, re, static_cast<scalar_t*>(ws.ptr));
    });
  });
  return {out, h_n, a};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> chain_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& grad_hn,
                                                             const at::Tensor& a_in, const at::Tensor& w_hh,
                                                             const at::Tensor& res, const at::Tensor& gamma,
                                                             const c10::optional<at::Tensor>& lengths,
                                                             int64_t res_kind, int64_t nonlin, bool need_delta) {
  constexpr const char* op = "wcrnn_C::chain_bwd";
  TORCH_CHECK(a_in.dim() == 3, op, ": a: expected a 3-D tensor (T, B, H), got shape ", a_in.sizes());
  const at::ScalarType dtype = check_dtype(op, "a", a_in);
  const at::Tensor a = a_in.contiguous();
  const int64_t T = a.size(0), B = a.size(1), H = a.size(2);
  check_float_cpu(op, "grad_out", grad_out, dtype);
  check_shape(op, "grad_out", grad_out, {T, B, H}, "(T, B, H) like a");
  check_float_cpu(op, "grad_hn", grad_hn, dtype);
  check_shape(op, "grad_hn", grad_hn, {B, H}, "(B, H)");
  at::Tensor w, r, g;
  c10::optional<at::Tensor> len;
  std::tie(w, r, g, len) = check_params(op, T, B, H, dtype, w_hh, res, gamma, lengths, res_kind, nonlin);
  const at::Tensor eo = grad_out.contiguous();
  const at::Tensor eh = grad_hn.contiguous();
  at::Tensor gt = at::empty({T, B, H}, a.options());
  at::Tensor dx0 = at::empty({B, H}, a.options());
  at::Tensor delta = need_delta ? at::empty({T, B, H}, a.options()) : at::empty({0}, a.options());
  if (poison_outputs()) {
    gt.fill_(std::numeric_limits<double>::quiet_NaN());
    dx0.fill_(std::numeric_limits<double>::quiet_NaN());
    delta.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  if (B == 0 || H == 0) return {gt, dx0, delta};
  const IsaTable& isa = selected_isa();

  AT_DISPATCH_FLOATING_TYPES(dtype, "wcrnn_C::chain_bwd", [&] {
    const Kernels<scalar_t>& k = kernels_of<scalar_t>(isa);
    AlignedBuffer packed(sizeof(scalar_t) * k.packed_elems(H, res_kind, true));
    k.pack(w.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), H, static_cast<int>(res_kind),
           true, static_cast<scalar_t*>(packed.ptr));
    BwdProblem<scalar_t> p{eo.data_ptr<scalar_t>(),
                           eh.data_ptr<scalar_t>(),
                           a.data_ptr<scalar_t>(),
                           gt.data_ptr<scalar_t>(),
                           dx0.data_ptr<scalar_t>(),
                           need_delta ? delta.data_ptr<scalar_t>() : nullptr,
                           len.has_value() ? len->data_ptr<int64_t>() : nullptr,
                           T,
                           B,
                           H,
                           static_cast<int>(res_kind),
                           static_cast<int>(nonlin),
                           static_cast<const scalar_t*>(packed.ptr)};
    parallel_rows(B, [&](int64_t rb, int64_t re) {
      AlignedBuffer ws(sizeof(scalar_t) * k.workspace_elems(H, static_cast<int>(res_kind), true, re - rb));
      k.backward_rows(p, rb, re, static_cast<scalar_t*>(ws.ptr));
    });
  });
  return {gt, dx0, delta};
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
