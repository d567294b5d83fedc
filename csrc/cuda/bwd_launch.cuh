// Which kernels run a backward, on which grids: float16 / bfloat16 on tensor
// cores (bwd_mma_kernel.cuh), float32 / float64 on lane groups
// (lane_bwd_kernel.cuh). Both run the dq pass, then the dk/dv pass on the
// same stream; the dq grid has the offsets check's extra blocks
// (offsets_check.cuh), so a bad offset stops the backward before dk/dv. A
// tensor-core dq block serves heads_per_block query heads of one kv group, as
// the forward's does (mma_tiles.cuh).
#pragma once

#include <cstdint>
#include <type_traits>

#include "../capabilities.h"
#include "../fibsparse.h"
#include "../static_switch.h"
#include "bwd_mma_kernel.cuh"
#include "lane_bwd_kernel.cuh"
#include "launch.cuh"
#include "offsets_check.cuh"

namespace fibsparse {

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
        const dim3 dkdv_grid(blocks_for(p.seqlen_k, kBlockRows), p.heads_kv, p.batch);
        launch_kernel(dkdv_mma_kernel<T, OffsetT, kHeadDim>, dkdv_grid, kMmaBlockThreads, kDkdvSmemBytes<kHeadDim>, p);
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
