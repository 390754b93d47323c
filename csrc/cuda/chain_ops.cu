// CUDA implementations of the wcrnn_C::chain_fwd / wcrnn_C::chain_bwd ops (schemas in
// csrc/wcrnn_ops.cpp): argument checks with messages that name the argument, output allocation through
// the caching allocator, the choice between the block path and the grid path, and the launch on the
// current stream. The kernels are in chain_fwd.cu and chain_bwd.cu.
#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "chain_cuda.cuh"

namespace wcrnn_cuda {
namespace {

using at::Tensor;

DType dtype_code(const char* op, at::ScalarType st, bool backward) {
  switch (st) {
    case at::kFloat: return DType::kFloat;
    case at::kDouble: return DType::kDouble;
    case at::kHalf:
      if (!backward) return DType::kHalf;
      break;
    case at::kBFloat16:
      if (!backward) return DType::kBFloat16;
      break;
    default: break;
  }
  TORCH_CHECK(false, op, ": expected ",
              backward ? "float32 or float64 tensors (the backward chain runs in float32 for "
                         "float16/bfloat16 models; wcrnn_kernels.ops upcasts before calling it)"
                       : "float32, float64, float16 or bfloat16 tensors",
              ", got ", st);
  return DType::kFloat;
}

void check_tensor(const char* op, const char* name, const Tensor& t, const Tensor& like,
                  at::IntArrayRef shape) {
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(), " but u is on ",
              like.device(), "; every tensor must be on the same CUDA device");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              ", expected ", like.scalar_type(), " like the first argument");
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

// Checks shared by both ops. `seq` is u (forward) or grad_out (backward): (T, B, H).
void check_common(const char* op, const Tensor& seq, const Tensor& w_hh, const Tensor& res,
                  const Tensor& gamma, const std::optional<Tensor>& lengths, int64_t res_kind, int64_t nonlin) {
  TORCH_CHECK(seq.is_cuda(), op, ": expected CUDA tensors, got ", seq.device());
  TORCH_CHECK(seq.dim() == 3, op, ": the sequence argument must be (T, B, H), got shape ", seq.sizes());
  const int64_t B = seq.size(1), H = seq.size(2);
  TORCH_CHECK(H <= (int64_t{1} << 20), op, ": hidden size ", H, " is out of range");
  TORCH_CHECK(seq.is_contiguous(), op, ": the sequence argument must be contiguous");
  check_tensor(op, "w_hh", w_hh, seq, {H, H});
  TORCH_CHECK(res_kind == kResDiag || res_kind == kResRot || res_kind == kResDense, op,
              ": res_kind must be 0 (diagonal), 1 (rotation pairs) or 2 (dense), got ", res_kind);
  if (res_kind == kResDiag) check_tensor(op, "res", res, seq, {H});
  if (res_kind == kResRot) {
    TORCH_CHECK(H % 2 == 0, op, ": res_kind 1 (rotation pairs) needs an even hidden size, got H = ", H);
    check_tensor(op, "res", res, seq, {2, H});
  }
  if (res_kind == kResDense) check_tensor(op, "res", res, seq, {H, H});
  check_tensor(op, "gamma", gamma, seq, {H});
  TORCH_CHECK(nonlin == kTanh || nonlin == kRelu, op, ": nonlin must be 0 (tanh) or 1 (relu), got ", nonlin);
  if (lengths.has_value()) {
    const Tensor& L = *lengths;
    TORCH_CHECK(L.scalar_type() == at::kLong, op, ": lengths must be int64, got ", L.scalar_type());
    TORCH_CHECK(L.device() == seq.device(), op, ": lengths is on ", L.device(), ", expected ", seq.device());
    TORCH_CHECK(L.dim() == 1 && L.size(0) == B, op, ": lengths must have shape (B,) = (", B, "), got ",
                L.sizes());
    TORCH_CHECK(L.is_contiguous(), op, ": lengths must be contiguous");
  }
}

std::tuple<Tensor, Tensor> chain_fwd_cuda(const Tensor& u, const Tensor& x0, const Tensor& w_hh,
                                          const Tensor& res, const Tensor& gamma,
                                          const std::optional<Tensor>& lengths, int64_t res_kind,
                                          int64_t nonlin) {
  const char* op = "wcrnn_C::chain_fwd";
  check_common(op, u, w_hh, res, gamma, lengths, res_kind, nonlin);
  const int64_t T = u.size(0), B = u.size(1), H = u.size(2);
  check_tensor(op, "x0", x0, u, {B, H});
  const DType dt = dtype_code(op, u.scalar_type(), false);

  c10::cuda::CUDAGuard guard(u.device());
  Tensor out = at::empty({T, B, H}, u.options());
  if (T == 0 || B == 0 || H == 0) return {out, x0.clone()};  // nothing to run; h_n = x_0
  Tensor hn = at::empty({B, H}, u.options());

  FwdCall c{};
  c.dtype = dt;
  c.res_kind = static_cast<int>(res_kind);
  c.nonlin = static_cast<int>(nonlin);
  c.T = T;
  c.B = B;
  c.H = static_cast<int>(H);
  c.u = u.data_ptr();
  c.x0 = x0.data_ptr();
  c.w = w_hh.data_ptr();
  c.res = res.data_ptr();
  c.gamma = gamma.data_ptr();
  c.lengths = lengths.has_value() ? lengths->data_ptr<int64_t>() : nullptr;
  c.out = out.data_ptr();
  c.hn = hn.data_ptr();
  c.xbuf = nullptr;
  c.device = u.get_device();
  c.stream = c10::cuda::getCurrentCUDAStream(c.device).stream();

  const DeviceInfo dev = device_info(c.device);
  const Plan plan = plan_fwd(c, dev);
  Tensor xbuf;  // grid path: (2, B, H) state exchange in the accumulation type
  if (plan.grid) {
    xbuf = at::empty({2, B, H}, u.options().dtype(dt == DType::kDouble ? at::kDouble : at::kFloat));
    c.xbuf = xbuf.data_ptr();
  }
  launch_fwd(c, plan, dev);
  return {out, hn};
}

std::tuple<Tensor, Tensor> chain_bwd_cuda(const Tensor& grad_out, const Tensor& grad_hn, const Tensor& a,
                                          const Tensor& w_hh, const Tensor& res, const Tensor& gamma,
                                          const std::optional<Tensor>& lengths, int64_t res_kind,
                                          int64_t nonlin, bool need_delta) {
  const char* op = "wcrnn_C::chain_bwd";
  check_common(op, grad_out, w_hh, res, gamma, lengths, res_kind, nonlin);
  const int64_t T = grad_out.size(0), B = grad_out.size(1), H = grad_out.size(2);
  check_tensor(op, "grad_hn", grad_hn, grad_out, {B, H});
  check_tensor(op, "a", a, grad_out, {T, B, H});
  const DType dt = dtype_code(op, grad_out.scalar_type(), true);

  c10::cuda::CUDAGuard guard(grad_out.device());
  Tensor deltas = need_delta ? at::empty({T, B, H}, grad_out.options()) : at::empty({0}, grad_out.options());
  if (T == 0 || B == 0 || H == 0) return {grad_hn.clone(), deltas};  // dL/dx_0 = dL/dh_n
  Tensor dx0 = at::empty({B, H}, grad_out.options());

  BwdCall c{};
  c.dtype = dt;
  c.res_kind = static_cast<int>(res_kind);
  c.nonlin = static_cast<int>(nonlin);
  c.T = T;
  c.B = B;
  c.H = static_cast<int>(H);
  c.grad_out = grad_out.data_ptr();
  c.grad_hn = grad_hn.data_ptr();
  c.a = a.data_ptr();
  c.w = w_hh.data_ptr();
  c.res = res.data_ptr();
  c.gamma = gamma.data_ptr();
  c.lengths = lengths.has_value() ? lengths->data_ptr<int64_t>() : nullptr;
  c.dx0 = dx0.data_ptr();
  c.deltas = need_delta ? deltas.data_ptr() : nullptr;
  c.dbuf = nullptr;
  c.device = grad_out.get_device();
  c.stream = c10::cuda::getCurrentCUDAStream(c.device).stream();

  const DeviceInfo dev = device_info(c.device);
  const Plan plan = plan_bwd(c, dev);
  Tensor dbuf;  // grid path: (2, B, H) delta exchange
  if (plan.grid) {
    dbuf = at::empty({2, B, H}, grad_out.options());
    c.dbuf = dbuf.data_ptr();
  }
  launch_bwd(c, plan, dev);
  return {dx0, deltas};
}

}  // namespace
}  // namespace wcrnn_cuda

TORCH_LIBRARY_IMPL(wcrnn_C, CUDA, m) {
  m.impl("chain_fwd", &wcrnn_cuda::chain_fwd_cuda);
  m.impl("chain_bwd", &wcrnn_cuda::chain_bwd_cuda);
}
