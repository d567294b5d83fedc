// What the kernels support, stated once: the host's checks and buffer sizes
// and the kernels' dispatch all read these.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace fibsparse {

// float16 and bfloat16 run on the tensor-core kernels (mma.sync, fp32
// accumulation); float32 and float64 on the lane-group kernels.
constexpr bool uses_tensor_cores(c10::ScalarType t) { return t == c10::kHalf || t == c10::kBFloat16; }
template <typename T>
constexpr bool kIsTensorCoreType = uses_tensor_cores(c10::CppTypeToScalarType<T>::value);

// The head dims the CUDA kernels are compiled for: HEADDIM_SWITCH
// (static_switch.h) has one case for each, and the host refuses the others.
constexpr int kCudaHeadDims[] = {16, 32, 64, 128};
constexpr bool is_cuda_head_dim(int64_t d) {
  for (int x : kCudaHeadDims) {
    if (x == d) return true;
  }
  return false;
}

// Query rows of one partial sum of d loss / d position on CUDA (a lane-group
// block's 16 queries, a tensor-core warp's 16): the host sizes the partials
// with it, the kernels index them with it. The CPU kernels make one per query.
constexpr int kCudaQueriesPerPartial = 16;

}  // namespace fibsparse
