// CUDA implementations of the wcrnn_C::chain_fwd / wcrnn_C::chain_bwd ops (schemas in
// csrc/wcrnn_ops.cpp): argument checks (the shared ones of ../wcrnn_checks.h), output allocation through
// the caching allocator, the choice between the block path and the grid path, and the launch on the
// current stream. The kernels are in chain_fwd.cu and chain_bwd.cu.
#include <initializer_list>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "chain_cuda.cuh"
#include "../wcrnn_checks.h"
#include "../wcrnn_op_signatures.h"

namespace wcrnn_cuda {
namespace {

using at::Tensor;
using wcrnn_checks::Args;
using wcrnn_checks::check_args;
using wcrnn_checks::checked;
using wcrnn_checks::new_outputs;
using wcrnn_checks::poison;

#ifdef WCRNN_CUDA_EMULATOR
constexpr bool kDeviceTensors = false;  // tests/cuda_emu: CPU tensors, kernels run by the CPU emulator
#else
constexpr bool kDeviceTensors = true;
#endif

// The CUDA op's side of the shared checks (wcrnn_checks.h): CUDA tensors; float16 / bfloat16 in the forward
// only; lengths outside [0, T] are not rejected here (that would cost a device-to-host copy): the kernels
// treat them as clamped, and wcrnn_kernels.ops rejects them before any backend runs. H is an int in the
// kernels' indexing.
wcrnn_checks::Policy cuda_policy(bool backward) {
  return {kDeviceTensors ? std::optional<c10::DeviceType>(c10::DeviceType::CUDA) : std::nullopt, !backward,
          backward ? " (the backward chain runs in float32 for float16/bfloat16 models; wcrnn_kernels.ops "
                     "upcasts before calling it)"
                   : "",
          false, int64_t{1} << 20, true};
}

DType dtype_code(const char* op, at::ScalarType st) {
  switch (st) {
    case at::kFloat: return DType::kFloat;
    case at::kDouble: return DType::kDouble;
    case at::kHalf: return DType::kHalf;
    case at::kBFloat16: return DType::kBFloat16;
    default: break;
  }
  TORCH_CHECK(false, op, ": internal error: no CUDA kernels for dtype ", st);
  return DType::kFloat;
}

// The fields both calls share, from the checked arguments; `on` is the tensor whose device runs the chain.
ChainCall chain_call(const Args& k, int64_t res_kind, int64_t nonlin, const Tensor& on) {
  ChainCall c;
  c.dtype = dtype_code(k.seq.op, k.seq.t.scalar_type());
  c.res_kind = static_cast<int>(res_kind);
  c.nonlin = static_cast<int>(nonlin);
  c.T = k.seq.T;
  c.B = k.seq.B;
  c.H = static_cast<int>(k.seq.H);
  c.w = k.params.w_hh.data_ptr();
  c.res = k.params.res.data_ptr();
  c.gamma = k.params.gamma.data_ptr();
  // a 0-d res (diagonal) or gamma comes through as it is (Policy::scalar_per_unit): the kernels read its one
  // value for every unit, with no (H,) copy per call
  c.res_step = k.params.res.dim() == 0 ? 0 : 1;
  c.gamma_step = k.params.gamma.dim() == 0 ? 0 : 1;
  c.lengths = k.params.lengths_data();
  c.device = on.get_device();
  c.stream = c10::cuda::getCurrentCUDAStream(c.device).stream();
  c.exchange = nullptr;
  return c;
}

// Plans the call, gives the grid path its (2, B, H) exchange buffer (dtype of `exchange_options`; NaN under
// WCRNN_POISON_OUTPUTS), launches.
template <class Call>
void plan_and_launch(Call& c, const ChainEntry<Call>& entry, const at::TensorOptions& exchange_options) {
  const DeviceInfo dev = device_info(c.device);
  const Plan plan = entry.plan(c, dev);
  Tensor exchange;
  if (plan.grid) {
    exchange = at::empty({2, c.B, c.H}, exchange_options);
    poison({&exchange});
    c.exchange = exchange.data_ptr();
  }
  entry.launch(c, plan, dev);
}

std::tuple<Tensor, Tensor, Tensor> chain_fwd_cuda(const Tensor& u_in, const Tensor& x0_in, const Tensor& w_hh,
                                                  const Tensor& res, const Tensor& gamma,
                                                  const std::optional<Tensor>& lengths, int64_t res_kind,
                                                  int64_t nonlin, bool save_a) {
  const Args k = check_args("wcrnn_C::chain_fwd", "u", u_in, cuda_policy(false), w_hh, res, gamma, lengths, res_kind,
                            nonlin);
  const int64_t T = k.seq.T, B = k.seq.B, H = k.seq.H;
  const Tensor x0 = checked(k.seq, "x0", x0_in, {B, H}, "(B, H)");
  const Tensor u = u_in.contiguous();

  c10::cuda::CUDAGuard guard(u.device());
  Tensor out, hn, a;
  std::tie(out, hn, a) = new_outputs(k.seq, save_a);
  if (T == 0 || B == 0 || H == 0) return {out, x0.clone(), a};  // nothing to run; h_n = x_0

  FwdCall c{chain_call(k, res_kind, nonlin, u), u.data_ptr(), x0.data_ptr(), out.data_ptr(), hn.data_ptr(),
            save_a ? a.data_ptr() : nullptr};
  // the grid path's state exchange is in the accumulation type
  const at::ScalarType acc = c.dtype == DType::kDouble ? at::kDouble : at::kFloat;
  plan_and_launch(c, kForwardChain, u.options().dtype(acc));
  return {out, hn, a};
}

std::tuple<Tensor, Tensor, Tensor> chain_bwd_cuda(const Tensor& grad_out_in, const Tensor& grad_hn_in,
                                                  const Tensor& a_in, const Tensor& w_hh, const Tensor& res,
                                                  const Tensor& gamma, const std::optional<Tensor>& lengths,
                                                  int64_t res_kind, int64_t nonlin, bool need_delta) {
  const Args k = check_args("wcrnn_C::chain_bwd", "a", a_in, cuda_policy(true), w_hh, res, gamma, lengths, res_kind,
                            nonlin);
  const int64_t T = k.seq.T, B = k.seq.B, H = k.seq.H;
  const Tensor grad_out = checked(k.seq, "grad_out", grad_out_in, {T, B, H}, "(T, B, H) like a");
  const Tensor grad_hn = checked(k.seq, "grad_hn", grad_hn_in, {B, H}, "(B, H)");
  const Tensor a = a_in.contiguous();

  c10::cuda::CUDAGuard guard(a.device());
  Tensor g, dx0, deltas;
  std::tie(g, dx0, deltas) = new_outputs(k.seq, need_delta);
  if (T == 0 || B == 0 || H == 0) return {g, grad_hn.clone(), deltas};  // dL/dx_0 = dL/dh_n

  BwdCall c{chain_call(k, res_kind, nonlin, a), grad_out.data_ptr(), grad_hn.data_ptr(), a.data_ptr(), g.data_ptr(),
            dx0.data_ptr(), need_delta ? deltas.data_ptr() : nullptr};
  plan_and_launch(c, kBackwardChain, a.options());
  return {g, dx0, deltas};
}

}  // namespace
}  // namespace wcrnn_cuda

// the CPU kernels register the same C++ types (wcrnn_cpu.cpp): see wcrnn_op_signatures.h
static_assert(std::is_same_v<decltype(wcrnn_cuda::chain_fwd_cuda), wcrnn_sig::ChainFwd>,
              "chain_fwd_cuda must have the signature of wcrnn_op_signatures.h");
static_assert(std::is_same_v<decltype(wcrnn_cuda::chain_bwd_cuda), wcrnn_sig::ChainBwd>,
              "chain_bwd_cuda must have the signature of wcrnn_op_signatures.h");

#ifndef WCRNN_CUDA_EMULATOR  // the emulator registers these functions for its own op namespace
TORCH_LIBRARY_IMPL(wcrnn_C, CUDA, m) {
  m.impl("chain_fwd", &wcrnn_cuda::chain_fwd_cuda);
  m.impl("chain_bwd", &wcrnn_cuda::chain_bwd_cuda);
}
#endif
