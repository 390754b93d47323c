// The schemas of the wcrnn_C operator library: the ONE TORCH_LIBRARY block of the extension. The CPU
// kernels (wcrnn_cpu.cpp) and the CUDA kernels (cuda/*.cu) register implementations of these ops with
// TORCH_LIBRARY_IMPL(wcrnn_C, CPU / CUDA, m). Shapes and semantics: wcrnn_kernels/backends/__init__.py.
//
//   chain_fwd -> (output (T, B, H), h_n (B, H), a (T, B, H) when save_a, else an empty tensor)
//   chain_bwd -> (g (T, B, H), dx0 (B, H), delta (T, B, H) or an empty tensor when not need_delta);
//                `a` (the pre-activations the forward saved) is only read.
//   cpu_info  -> a one-line description of the CPU kernels in this process (instruction set, threads).
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "wcrnn_op_signatures.h"

namespace wcrnn_cpu {
std::string cpu_info();  // wcrnn_cpu.cpp
}

TORCH_LIBRARY(wcrnn_C, m) {
  m.def(wcrnn_sig::kChainFwdSchema);
  m.def(wcrnn_sig::kChainBwdSchema);
  m.def("cpu_info() -> str", &wcrnn_cpu::cpu_info);
}

// setup.py builds this library as the Python extension module wcrnn_kernels._C; it is loaded with
// torch.ops.load_library and has no Python-level contents, but a module init keeps it importable.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr, nullptr, nullptr, nullptr,
                               nullptr};
  return PyModule_Create(&module);
}
