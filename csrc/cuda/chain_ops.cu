// CUDA implementations of the wcrnn_C::chain_fwd / wcrnn_C::chain_bwd ops (schemas in
// csrc/wcrnn_ops.cpp): argument checks with messages that name the argument, output allocation through
// the caching allocator, the choice between the block path and the grid path, and the launch on the
// current stream. The kernels are in chain_fwd.cu and chain_bwd.cu.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "chain_cuda.cuh"
#include "../wcrnn_op_signatures.h"

namespace wcrnn_cuda {
namespace {

using at::Tensor;

// WCRNN_POISON_OUTPUTS=1 (tests, as for the CPU kernels): outputs and the grid path's exchange buffers start
// as NaN, so an element a kernel forgets to write, or a state read before anyone wrote it, fails loudly.
bool poison_outputs() {
  const char* v = std::getenv("WCRNN_POISON_OUTPUTS");
  return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
}

void poison(const std::initializer_list<Tensor*>& ts) {
  if (!poison_outputs()) return;
  for (Tensor* t : ts) {
    if (t->defined() && t->numel() > 0) t->fill_(std::numeric_limits<double>::quiet_NaN());
  }
}

DType dtype_code(const char* op, const char* name, at::ScalarType st, bool backward) {
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
  TORCH_CHECK(false, op, ": ", name, ": expected ",
              backward ? "float32 or float64 (the backward chain runs in float32 for float16/bfloat16 "
                         "models; wcrnn_kernels.ops upcasts before calling it)"
                       : "float32, float64, float16 or bfloat16",
              ", got ", st);
  return DType::kFloat;
}

// Same device and dtype as `like` (the op's sequence argument u or a), the given shape; returns a contiguous
// version (a copy only if needed: the copy is stream-ordered before the kernel like every allocation here).
Tensor checked(const char* op, const char* name, const Tensor& t, const Tensor& like, at::IntArrayRef shape,
               const char* desc) {
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, ": expected a tensor on ", like.device(),
              " (the device of the sequence argument), got ", t.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, ": expected dtype ", like.scalar_type(),
              " (the dtype of the sequence argument), got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, ": expected shape ", desc, " = ", shape, ", got ", t.sizes());
  return t.contiguous();
}

struct Common {
  Tensor w_hh, res, gamma;
  std::optional<Tensor> lengths;
};

// Checks shared by both ops. `seq` is u (forward) or a (backward): (T, B, H), already checked to be 3-D.
// Lengths outside [0, T] are not rejected here (that would cost a device-to-host copy); the kernels treat
// them as clamped, and wcrnn_kernels.ops rejects them before any backend runs.
Common check_common(const char* op, const Tensor& seq, const Tensor& w_hh, const Tensor& res,
                    const Tensor& gamma, const std::optional<Tensor>& lengths, int64_t res_kind, int64_t nonlin) {
  const int64_t B = seq.size(1), H = seq.size(2);
  TORCH_CHECK(H <= (int64_t{1} << 20), op, ": hidden size ", H, " is out of range");
  TORCH_CHECK(res_kind == kResDiag || res_kind == kResRot || res_kind == kResDense, op,
              ": res_kind: expected 0 (diagonal), 1 (rotation pairs) or 2 (dense), got ", res_kind);
  TORCH_CHECK(nonlin == kTanh || nonlin == kRelu, op, ": nonlin: expected 0 (tanh) or 1 (relu), got ", nonlin);
  Common c;
  c.w_hh = checked(op, "w_hh", w_hh, seq, {H, H}, "(H, H)");
  if (res_kind == kResDiag) c.res = checked(op, "res", res, seq, {H}, "(H,) for res_kind 0");
  if (res_kind == kResRot) {
    TORCH_CHECK(H % 2 == 0, op, ": res: rotation pairs need an even hidden size, got H = ", H);
    c.res = checked(op, "res", res, seq, {2, H}, "(2, H) for res_kind 1");
  }
  if (res_kind == kResDense) c.res = checked(op, "res", res, seq, {H, H}, "(H, H) for res_kind 2");
  c.gamma = checked(op, "gamma", gamma, seq, {H}, "(H,)");
  if (lengths.has_value()) {
    const Tensor& L = *lengths;
    TORCH_CHECK(L.device() == seq.device(), op, ": lengths: expected a tensor on ", seq.device(), ", got ",
                L.device());
    TORCH_CHECK(L.scalar_type() == at::kLong, op, ": lengths: expected dtype int64, got ", L.scalar_type());
    TORCH_CHECK(L.sizes() == at::IntArrayRef{B}, op, ": lengths: expected shape (B,) = [", B, "], got ",
                L.sizes());
    c.lengths = L.contiguous();
  }
  return c;
}

#ifdef WCRNN_CUDA_EMULATOR
constexpr bool kDeviceTensors = false;  // tests/cuda_emu: CPU tensors, kernels run by the CPU emulator
#else
constexpr bool kDeviceTensors = true;
#endif

void check_sequence(const char* op, const char* name, const Tensor& t) {
  TORCH_CHECK(!kDeviceTensors || t.is_cuda(), op, ": ", name, ": expected a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.dim() == 3, op, ": ", name, ": expected a 3-D tensor (T, B, H), got shape ", t.sizes());
}

// The fields both calls share, from the checked arguments; `on` is the tensor whose device runs the chain.
void set_chain_call(ChainCall& c, DType dt, int64_t res_kind, int64_t nonlin, int64_t T, int64_t B, int64_t H,
                    const Common& cm, const Tensor& on) {
  c.dtype = dt;
  c.res_kind = static_cast<int>(res_kind);
  c.nonlin = static_cast<int>(nonlin);
  c.T = T;
  c.B = B;
  c.H = static_cast<int>(H);
  c.w = cm.w_hh.data_ptr();
  c.res = cm.res.data_ptr();
  c.gamma = cm.gamma.data_ptr();
  c.lengths = cm.lengths.has_value() ? cm.lengths->data_ptr<int64_t>() : nullptr;
  c.device = on.get_device();
  c.stream = c10::cuda::getCurrentCUDAStream(c.device).stream();
}

std::tuple<Tensor, Tensor, Tensor> chain_fwd_cuda(const Tensor& u_in, const Tensor& x0_in, const Tensor& w_hh,
                                                  const Tensor& res, const Tensor& gamma,
                                                  const std::optional<Tensor>& lengths, int64_t res_kind,
                                                  int64_t nonlin, bool save_a) {
  const char* op = "wcrnn_C::chain_fwd";
  check_sequence(op, "u", u_in);
  const DType dt = dtype_code(op, "u", u_in.scalar_type(), false);
  const int64_t T = u_in.size(0), B = u_in.size(1), H = u_in.size(2);
  const Common cm = check_common(op, u_in, w_hh, res, gamma, lengths, res_kind, nonlin);
  const Tensor x0 = checked(op, "x0", x0_in, u_in, {B, H}, "(B, H)");
  const Tensor u = u_in.contiguous();

  c10::cuda::CUDAGuard guard(u.device());
  Tensor out = at::empty({T, B, H}, u.options());
  Tensor a = save_a ? at::empty({T, B, H}, u.options()) : at::empty({0}, u.options());
  if (T == 0 || B == 0 || H == 0) return {out, x0.clone(), a};  // nothing to run; h_n = x_0
  Tensor hn = at::empty({B, H}, u.options());

  FwdCall c{};
  set_chain_call(c, dt, res_kind, nonlin, T, B, H, cm, u);
  c.u = u.data_ptr();
  c.x0 = x0.data_ptr();
  c.out = out.data_ptr();
  c.hn = hn.data_ptr();
  c.a_out = save_a ? a.data_ptr() : nullptr;
  c.xbuf = nullptr;

  const DeviceInfo dev = device_info(c.device);
  const Plan plan = plan_fwd(c, dev);
  Tensor xbuf;  // grid path: (2, B, H) state exchange in the accumulation type
  if (plan.grid) {
    xbuf = at::empty({2, B, H}, u.options().dtype(dt == DType::kDouble ? at::kDouble : at::kFloat));
    c.xbuf = xbuf.data_ptr();
  }
  poison({&out, &hn, &a, &xbuf});
  launch_fwd(c, plan, dev);
  return {out, hn, a};
}

std::tuple<Tensor, Tensor, Tensor> chain_bwd_cuda(const Tensor& grad_out_in, const Tensor& grad_hn_in,
                                                  const Tensor& a_in, const Tensor& w_hh, const Tensor& res,
                                                  const Tensor& gamma, const std::optional<Tensor>& lengths,
                                                  int64_t res_kind, int64_t nonlin, bool need_delta) {
  const char* op = "wcrnn_C::chain_bwd";
  check_sequence(op, "a", a_in);
  const DType dt = dtype_code(op, "a", a_in.scalar_type(), true);
  const Tensor a = a_in.contiguous();
  const int64_t T = a.size(0), B = a.size(1), H = a.size(2);
  const Common cm = check_common(op, a, w_hh, res, gamma, lengths, res_kind, nonlin);
  const Tensor grad_out = checked(op, "grad_out", grad_out_in, a, {T, B, H}, "(T, B, H) like a");
  const Tensor grad_hn = checked(op, "grad_hn", grad_hn_in, a, {B, H}, "(B, H)");

  c10::cuda::CUDAGuard guard(a.device());
  Tensor g = at::empty({T, B, H}, a.options());
  Tensor deltas = need_delta ? at::empty({T, B, H}, a.options()) : at::empty({0}, a.options());
  if (T == 0 || B == 0 || H == 0) return {g, grad_hn.clone(), deltas};  // dL/dx_0 = dL/dh_n
  Tensor dx0 = at::empty({B, H}, a.options());

  BwdCall c{};
  set_chain_call(c, dt, res_kind, nonlin, T, B, H, cm, a);
  c.grad_out = grad_out.data_ptr();
  c.grad_hn = grad_hn.data_ptr();
  c.a = a.data_ptr();
  c.g = g.data_ptr();
  c.dx0 = dx0.data_ptr();
  c.deltas = need_delta ? deltas.data_ptr() : nullptr;
  c.dbuf = nullptr;

  const DeviceInfo dev = device_info(c.device);
  const Plan plan = plan_bwd(c, dev);
  Tensor dbuf;  // grid path: (2, B, H) delta exchange
  if (plan.grid) {
    dbuf = at::empty({2, B, H}, a.options());
    c.dbuf = dbuf.data_ptr();
  }
  poison({&g, &dx0, &deltas, &dbuf});
  launch_bwd(c, plan, dev);
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
