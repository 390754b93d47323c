// The argument checks of the wcrnn_C::chain_fwd / chain_bwd ops, written once for both implementations:
// wcrnn_cpu.cpp (CPU) and cuda/chain_ops.cu (CUDA, and CPU tensors under the emulator of tests/cuda_emu).
// Every message names the op and the argument; tests match their wording (tests/test_cpp.py,
// tests/test_cuda.py, tests/test_cuda_emulated.py). Where the two implementations differ, a Policy says how:
//
// * device: the sequence argument (u forward, a backward) must be a CPU tensor / a CUDA tensor (any device
//   under the emulator); every other tensor must be on the sequence's device;
// * dtypes: the sequence's dtype is float32 or float64, plus float16 / bfloat16 where the kernels take them
//   (the CUDA forward); every other floating-point tensor must have the sequence's dtype;
// * lengths range: entries outside [0, T] are rejected where lengths live in host memory (the CPU op). The
//   CUDA op would need a device-to-host copy, i.e. a synchronisation, per call; its kernels treat such lengths
//   as clamped, and wcrnn_kernels.ops rejects them before any backend runs.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <optional>
#include <tuple>
#include <utility>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/DeviceType.h>
#include <c10/util/Exception.h>

#include "wcrnn_codes.h"

namespace wcrnn_checks {

using at::Tensor;
using namespace wcrnn_codes;

struct Policy {
  std::optional<c10::DeviceType> device_type;  // of the sequence argument; nullopt: any (the CUDA emulator)
  bool half_types;                             // float16 / bfloat16 accepted besides float32 / float64
  const char* dtype_note;                      // appended to the dtype error: why these dtypes ("" for none)
  bool check_lengths_range;                    // lengths are in host memory: entries outside [0, T] rejected
  int64_t max_hidden;                          // the largest H the kernels index
  bool scalar_per_unit;                        // a 0-d res / gamma is passed on 0-d (the op spreads it itself)
};

// The op's sequence argument, u (forward) or a (backward), of shape (T, B, H): it fixes the sizes, the
// device and the dtype that every other argument is checked against.
struct Sequence {
  const char* op;    // "wcrnn_C::chain_fwd"
  const char* name;  // "u" or "a"
  Tensor t;
  int64_t T, B, H;
};

inline Sequence check_sequence(const char* op, const char* name, const Tensor& t, const Policy& policy) {
  if (policy.device_type.has_value()) {
    TORCH_CHECK(t.device().type() == *policy.device_type, op, ": ", name, ": expected a ",
                c10::DeviceTypeName(*policy.device_type), " tensor, got ", t.device());
  }
  TORCH_CHECK(t.dim() == 3, op, ": ", name, ": expected a 3-D tensor (T, B, H), got shape ", t.sizes());
  const at::ScalarType st = t.scalar_type();
  const bool ok = st == at::kFloat || st == at::kDouble ||
                  (policy.half_types && (st == at::kHalf || st == at::kBFloat16));
  TORCH_CHECK(ok, op, ": ", name, ": expected ",
              policy.half_types ? "float32, float64, float16 or bfloat16" : "float32 or float64",
              policy.dtype_note, ", got ", st);
  TORCH_CHECK(t.size(2) <= policy.max_hidden, op, ": hidden size ", t.size(2), " is out of range");
  return {op, name, t, t.size(0), t.size(1), t.size(2)};
}

inline void check_device(const Sequence& s, const char* name, const Tensor& t) {
  TORCH_CHECK(t.device() == s.t.device(), s.op, ": ", name, ": expected a tensor on ", s.t.device(),
              " (the device of ", s.name, "), got ", t.device());
}

inline void check_shape(const Sequence& s, const char* name, const Tensor& t, at::IntArrayRef shape,
                        const char* desc) {
  TORCH_CHECK(t.sizes() == shape, s.op, ": ", name, ": expected shape ", desc, " = ", shape, ", got ", t.sizes());
}

// Same device and dtype as the sequence, the given shape; returns a contiguous version (a copy only if
// needed).
inline Tensor checked(const Sequence& s, const char* name, const Tensor& t, at::IntArrayRef shape,
                      const char* desc) {
  check_device(s, name, t);
  TORCH_CHECK(t.scalar_type() == s.t.scalar_type(), s.op, ": ", name, ": expected dtype ", s.t.scalar_type(),
              " (the dtype of ", s.name, "), got ", t.scalar_type());
  check_shape(s, name, t, shape, desc);
  return t.contiguous();
}

// A per-unit vector: (H,), or a 0-d tensor standing for H equal entries (a scalar residual or coupling, as the
// module passes them). With policy.scalar_per_unit the 0-d tensor comes back as it is (the CPU op spreads its
// value in host memory: a T = 1 call spent a third of its time on the two copies an expand costs); else it is
// expanded into a contiguous (H,) copy.
inline Tensor checked_per_unit(const Sequence& s, const Policy& policy, const char* name, const Tensor& t,
                               const char* desc) {
  if (t.dim() == 0 && policy.scalar_per_unit) return checked(s, name, t, {}, desc);
  return checked(s, name, t.dim() == 0 ? t.expand({s.H}) : t, {s.H}, desc);
}

// The checked parameters both ops share, contiguous.
struct Params {
  Tensor w_hh, res, gamma;
  std::optional<Tensor> lengths;  // int64 (B,)

  const int64_t* lengths_data() const { return lengths.has_value() ? lengths->data_ptr<int64_t>() : nullptr; }
};

inline Params check_params(const Sequence& s, const Policy& policy, const Tensor& w_hh, const Tensor& res,
                           const Tensor& gamma, const std::optional<Tensor>& lengths, int64_t res_kind,
                           int64_t nonlin) {
  const char* op = s.op;
  const int64_t T = s.T, B = s.B, H = s.H;
  TORCH_CHECK(res_kind == kResDiag || res_kind == kResRot || res_kind == kResDense, op,
              ": res_kind: expected 0 (diagonal), 1 (rotation pairs) or 2 (dense), got ", res_kind);
  TORCH_CHECK(nonlin == kTanh || nonlin == kRelu, op, ": nonlin: expected 0 (tanh) or 1 (relu), got ", nonlin);
  Params p;
  p.w_hh = checked(s, "w_hh", w_hh, {H, H}, "(H, H)");
  if (res_kind == kResDiag) {
    p.res = checked_per_unit(s, policy, "res", res, "(H,) or () for res_kind 0");
  } else if (res_kind == kResRot) {
    TORCH_CHECK(H % 2 == 0, op, ": res: rotation pairs need an even hidden size, got H = ", H);
    p.res = checked(s, "res", res, {2, H}, "(2, H) for res_kind 1");
  } else {
    p.res = checked(s, "res", res, {H, H}, "(H, H) for res_kind 2");
  }
  p.gamma = checked_per_unit(s, policy, "gamma", gamma, "(H,) or ()");
  if (lengths.has_value()) {
    const Tensor& L = *lengths;
    check_device(s, "lengths", L);
    TORCH_CHECK(L.scalar_type() == at::kLong, op, ": lengths: expected dtype int64, got ", L.scalar_type());
    check_shape(s, "lengths", L, {B}, "(B,)");
    p.lengths = L.contiguous();
    if (policy.check_lengths_range) {
      const int64_t* lp = p.lengths_data();
      for (int64_t b = 0; b < B; ++b) {
        TORCH_CHECK(lp[b] >= 0 && lp[b] <= T, op, ": lengths: every entry must lie in [0, T = ", T, "], got ",
                    lp[b], " at index ", b);
      }
    }
  }
  return p;
}

// Every check of one op's shared arguments: the sequence argument `seq` (u forward, a backward), then the
// parameters. The op checks its own remaining tensors (x0; grad_out, grad_hn) with checked().
struct Args {
  Sequence seq;
  Params params;
};

inline Args check_args(const char* op, const char* seq_name, const Tensor& seq, const Policy& policy,
                       const Tensor& w_hh, const Tensor& res, const Tensor& gamma,
                       const std::optional<Tensor>& lengths, int64_t res_kind, int64_t nonlin) {
  Sequence s = check_sequence(op, seq_name, seq, policy);
  Params p = check_params(s, policy, w_hh, res, gamma, lengths, res_kind, nonlin);
  return {std::move(s), std::move(p)};
}

// WCRNN_POISON_OUTPUTS=1 (tests): outputs (and the CUDA grid path's exchange buffers) start as NaN, so an
// element a kernel forgets to write, or a state read before anyone wrote it, fails loudly.
inline bool poison_outputs() {
  const char* v = std::getenv("WCRNN_POISON_OUTPUTS");
  return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
}

inline void poison(std::initializer_list<Tensor*> ts) {
  if (!poison_outputs()) return;
  for (Tensor* t : ts) {
    if (t->defined() && t->numel() > 0) t->fill_(std::numeric_limits<double>::quiet_NaN());
  }
}

// The outputs of both ops, on the sequence's device with its dtype: a (T, B, H) sequence, a (B, H) state and,
// when `with_extra` (the forward's a, the backward's delta), a second (T, B, H) sequence, else an empty
// tensor. Uninitialised; NaN under WCRNN_POISON_OUTPUTS.
inline std::tuple<Tensor, Tensor, Tensor> new_outputs(const Sequence& s, bool with_extra) {
  const at::TensorOptions options = s.t.options();
  Tensor seq = at::empty({s.T, s.B, s.H}, options);
  Tensor state = at::empty({s.B, s.H}, options);
  Tensor extra = with_extra ? at::empty({s.T, s.B, s.H}, options) : at::empty({0}, options);
  poison({&seq, &state, &extra});
  return {seq, state, extra};
}

}  // namespace wcrnn_checks
