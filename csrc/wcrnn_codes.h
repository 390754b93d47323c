// The integer codes the wcrnn_C ops take for the residual form and the nonlinearity (the codes of
// wcrnn_kernels/residual.py, RES_DIAG / RES_ROT / RES_DENSE, and of ops.py's nonlinearity), written once for
// the argument checks (wcrnn_checks.h), the CPU kernels (cpu/) and the CUDA kernels (cuda/). Plain C++ with
// no includes: the CPU kernels' instruction-set translation units and the CUDA device code include it.
#pragma once

namespace wcrnn_codes {

enum ResKind : int { kResDiag = 0, kResRot = 1, kResDense = 2 };
enum Nonlin : int { kTanh = 0, kRelu = 1 };

}  // namespace wcrnn_codes
