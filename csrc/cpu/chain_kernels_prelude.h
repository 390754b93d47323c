// Everything chain_kernels.h needs from outside, included by each chain_isa_*.cpp BEFORE its target pragma,
// so that no standard-library inline function is ever compiled with wide-vector instructions.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "chain_kernels_api.h"
