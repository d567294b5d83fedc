// Which kernels run a backward, on which grids: float16 / bfloat16 on tensor
// cores (bwd_mma_kernel.cuh), float32 / float64 on lane groups
// (lane_bwd_kernel.cuh). Both run the dq pass, then the dk/dv pass on the
// same stream; the dq grid has the offsets check's extra blocks
// (offsets_check.cuh), so a bad offset stops the backward before dk/dv. A
// tensor-core dq block serves heads_per_block query heads of one kv group, as
// the forward's does (mma_tiles.cuh); a dk/dv block walks dkdv_tiles_per_block
// consecutive key tiles.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "../capabilities.h"
#include "../fibsparse.h"
#include "../hopper_tiles.h"
#include "../static_switch.h"
#include "bwd_mma_kernel.cuh"
#include "lane_bwd_kernel.cuh"
#include "launch.cuh"
#include "offsets_check.cuh"

namespace fibsparse {

// Key tiles per dk/dv block: hopper_tiles_rule (hopper_tiles.h), the Hopper
// forward's rule, at the blocks of the pass that fit an SM (asked once per
// kernel). FIBSPARSE_DKDV_TILES=n (1 to 64) sets it, for comparisons.
template <typename T, typename OffsetT, int kHeadDim>
int dkdv_tiles_per_block(const Params& p, int key_tiles) {
  if (const char* setting = std::getenv("FIBSPARSE_DKDV_TILES")) {
    char* end = nullptr;
    const long n = std::strtol(setting, &end, 10);
    TORCH_CHECK(end != setting && *end == '\0' && n >= 1 && n <= 64,
                "fibsparse: FIBSPARSE_DKDV_TILES must be a whole number from 1 to 64, got '", setting, "'");
    return int(n);
  }
  static const int blocks_per_sm = [] {
    const auto kernel = mma_bwd::dkdv_mma_kernel<T, OffsetT, kHeadDim>;
    constexpr int kSmemBytes = mma_bwd::kDkdvSmemBytes<kHeadDim>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
    int blocks = 0;
    C10_CUDA_CHECK(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, mma_tiles::kMmaBlockThreads, kSmemBytes));
    return blocks;
  }();
  const int64_t resident = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * blocks_per_sm;
  return hopper_tiles_rule(key_tiles, int64_t(p.heads_kv) * p.batch, resident, p.num_offsets == 0);
}

template <typename T>
void launch_bwd(const Params& p, bool fractional) {
  HEADDIM_SWITCH(p.head_dim, kHeadDim, [&] {
    BOOL_SWITCH(fractional, kFrac, [&] {
      if constexpr (kIsTensorCoreType<T>) {
        using OffsetT = std::conditional_t<kFrac, float, int32_t>;
        using namespace mma_bwd;
        HEADS_PER_BLOCK_SWITCH(heads_per_block<kHeadDim>(p), kMaxHeadsPerBlock<kHeadDim>, kHeads, [&] {
          const dim3 dq_grid(blocks_for(p.seqlen_q, kBlockRows) + kOffsetsCheckBlocks, p.heads / kHeads, p.batch);
          launch_kernel(dq_mma_kernel<T, OffsetT, kHeadDim, kHeads>, dq_grid, kHeads * kMmaBlockThreads,
                        kDqSmemBytes<kHeadDim>, p);
        });
        const auto dkdv = dkdv_mma_kernel<T, OffsetT, kHeadDim>;
        const int key_tiles = int(blocks_for(p.seqlen_k, kBlockRows));
        const int tiles_per_block = dkdv_tiles_per_block<T, OffsetT, kHeadDim>(p, key_tiles);
        const dim3 dkdv_grid(blocks_for(key_tiles, tiles_per_block), p.heads_kv, p.batch);
        launch_kernel(dkdv, dkdv_grid, kMmaBlockThreads, kDkdvSmemBytes<kHeadDim>, p, tiles_per_block);
      } else {
        using OffsetT = std::conditional_t<kFrac, acc_t<T>, int32_t>;
        const dim3 dq_grid(blocks_for(p.seqlen_q, kCudaRowsPerBlock) + kOffsetsCheckBlocks, p.heads, p.batch);
        const dim3 dkdv_grid(blocks_for(p.seqlen_k, kCudaRowsPerBlock), p.heads_kv, p.batch);
        launch_kernel(lane_dq_kernel<T, OffsetT, kHeadDim>, dq_grid, kLaneBlockThreads, 0, p);
        launch_kernel(lane_dkdv_kernel<T, OffsetT, kHeadDim>, dkdv_grid, kLaneBlockThreads, 0, p);
      }
    });
  });
}

}  // namespace fibsparse
