// The C++ signatures of the wcrnn_C kernels (schemas in wcrnn_ops.cpp). The CPU (wcrnn_cpu.cpp) and CUDA
// (cuda/chain_ops.cu) implementations of one op must have exactly the same C++ type: when two registrations
// of an op differ (even in const-ness of a reference), the dispatcher terminates the process while the
// library loads ("Mismatch in kernel C++ signatures"), which no Python code can catch. Both files
// static_assert against these types, so a mismatch fails the build instead (CI compiles both).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace wcrnn_sig {

using at::Tensor;

// The schemas (wcrnn_ops.cpp defines the ops with them; the CPU emulator of the CUDA kernels in
// tests/cuda_emu defines the same ops under its own namespace with them).
inline constexpr char kChainFwdSchema[] =
    "chain_fwd(Tensor u, Tensor x0, Tensor w_hh, Tensor res, Tensor gamma, Tensor? lengths, int res_kind, "
    "int nonlin, bool save_a) -> (Tensor, Tensor, Tensor)";
inline constexpr char kChainBwdSchema[] =
    "chain_bwd(Tensor grad_out, Tensor grad_hn, Tensor a, Tensor w_hh, Tensor res, Tensor gamma, "
    "Tensor? lengths, int res_kind, int nonlin, bool need_delta) -> (Tensor, Tensor, Tensor)";

// chain_fwd(u, x0, w_hh, res, gamma, lengths, res_kind, nonlin, save_a) -> (output, h_n, a)
using ChainFwd = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                    const Tensor&, const std::optional<Tensor>&, int64_t, int64_t,
                                                    bool);
// chain_bwd(grad_out, grad_hn, a, w_hh, res, gamma, lengths, res_kind, nonlin, need_delta) -> (g, dx0, delta)
using ChainBwd = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                    const Tensor&, const Tensor&, const std::optional<Tensor>&,
                                                    int64_t, int64_t, bool);

}  // namespace wcrnn_sig
