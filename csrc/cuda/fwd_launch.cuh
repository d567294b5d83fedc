// Which kernel runs a forward, on which grid: float16 / bfloat16 on tensor
// cores (fwd_mma_kernel.cuh), float32 / float64 on lane groups
// (lane_fwd_kernel.cuh). A tensor-core block serves heads_per_block query
// heads of one kv group (mma_tiles.cuh: several when GQA heads share one row
// of offsets). Every grid has the offsets check's extra blocks
// (offsets_check.cuh).
#pragma once

#include <cstdint>
#include <type_traits>

#include "../capabilities.h"
#include "../fibsparse.h"
#include "../static_switch.h"
#include "fwd_mma_kernel.cuh"
#include "lane_fwd_kernel.cuh"
#include "launch.cuh"
#include "offsets_check.cuh"

namespace fibsparse {

template <typename T>
void launch_fwd(const Params& p, bool fractional) {
  HEADDIM_SWITCH(p.head_dim, kHeadDim, [&] {
    BOOL_SWITCH(fractional, kFrac, [&] {
      if constexpr (kIsTensorCoreType<T>) {
        using OffsetT = std::conditional_t<kFrac, float, int32_t>;
        using namespace mma_tiles;
        HEADS_PER_BLOCK_SWITCH(heads_per_block<kHeadDim>(p), kMaxHeadsPerBlock<kHeadDim>, kHeads, [&] {
          const dim3 grid(blocks_for(p.seqlen_q, kBlockRows) + kOffsetsCheckBlocks, p.heads / kHeads, p.batch);
          launch_kernel(mma_fwd::fwd_mma_kernel<T, OffsetT, kHeadDim, kHeads>, grid, kHeads * kMmaBlockThreads,
                        mma_fwd::kFwdSmemBytes<kHeadDim>, p);
        });
      } else {
        using OffsetT = std::conditional_t<kFrac, acc_t<T>, int32_t>;
        const dim3 grid(blocks_for(p.seqlen_q, kCudaRowsPerBlock) + kOffsetsCheckBlocks, p.heads, p.batch);
        launch_kernel(lane_fwd_kernel<T, OffsetT, kHeadDim>, grid, kLaneBlockThreads, 0, p);
      }
    });
  });
}

}  // namespace fibsparse
