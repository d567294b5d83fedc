// Turn run-time choices into template parameters, at one place each.
// Usage: BOOL_SWITCH(fractional, kFrac, [&] { launch<kFrac>(params); });
#pragma once

#include <c10/util/Exception.h>

#include "capabilities.h"

#define BOOL_SWITCH(COND, CONST_NAME, ...) \
  [&] {                                    \
    if (COND) {                            \
      constexpr static bool CONST_NAME = true; \
      return __VA_ARGS__();                \
    } else {                               \
      constexpr static bool CONST_NAME = false; \
      return __VA_ARGS__();                \
    }                                      \
  }()

// One case per entry of kCudaHeadDims (capabilities.h).
static_assert(sizeof(fibsparse::kCudaHeadDims) / sizeof(int) == 4 && fibsparse::is_cuda_head_dim(16) &&
                  fibsparse::is_cuda_head_dim(32) && fibsparse::is_cuda_head_dim(64) &&
                  fibsparse::is_cuda_head_dim(128),
              "HEADDIM_SWITCH's cases must be kCudaHeadDims");
#define HEADDIM_SWITCH(HEADDIM, CONST_NAME, ...)                              \
  [&] {                                                                       \
    switch (HEADDIM) {                                                        \
      case 16: { constexpr static int CONST_NAME = 16; return __VA_ARGS__(); } \
      case 32: { constexpr static int CONST_NAME = 32; return __VA_ARGS__(); } \
      case 64: { constexpr static int CONST_NAME = 64; return __VA_ARGS__(); } \
      case 128: { constexpr static int CONST_NAME = 128; return __VA_ARGS__(); } \
      default: TORCH_CHECK(false, "fibsparse: unsupported head_dim ", std::to_string(HEADDIM)); \
    }                                                                         \
  }()

// Query heads per tensor-core block (mma_tiles.cuh's heads_per_block): 1, 2 or
// 4, instantiating only the counts up to MAX_HEADS.
#define HEADS_PER_BLOCK_SWITCH(HEADS, MAX_HEADS, CONST_NAME, ...)                            \
  [&] {                                                                                      \
    const int heads_per_block_ = (HEADS);                                                    \
    if constexpr ((MAX_HEADS) >= 4) {                                                        \
      if (heads_per_block_ == 4) { constexpr static int CONST_NAME = 4; return __VA_ARGS__(); } \
    }                                                                                        \
    if constexpr ((MAX_HEADS) >= 2) {                                                        \
      if (heads_per_block_ == 2) { constexpr static int CONST_NAME = 2; return __VA_ARGS__(); } \
    }                                                                                        \
    TORCH_CHECK(heads_per_block_ == 1, "fibsparse: unsupported heads per block ",            \
                std::to_string(heads_per_block_));                                           \
    constexpr static int CONST_NAME = 1;                                                     \
    return __VA_ARGS__();                                                                    \
  }()
