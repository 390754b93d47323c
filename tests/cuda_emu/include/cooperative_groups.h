// CPU emulator (tests/cuda_emu): the grid group of a cooperative launch; sync() is the emulator's grid
// barrier (the caller's file and line identify the barrier).
#pragma once

#include <cuda_runtime.h>

namespace cooperative_groups {
struct grid_group {
  void sync(const char* file = __builtin_FILE(), int line = __builtin_LINE()) const {
    ::wcrnn_emu::grid_sync(file, line);
  }
};
inline grid_group this_grid() { return grid_group{}; }
}  // namespace cooperative_groups
