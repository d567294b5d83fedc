// Which kernels run a backward, on which grids: float16 / bfloat16 on tensor
// cores (bwd_mma_kernel.cuh), float32 / float64 on lane groups
// (lane_bwd_kernel.cuh). Both run the dq pass, then the dk/dv pass on the
// same stream; the dq grid has the offsets check's extra blocks
// (offsets_check.cuh), so a bad offset stops the backward before dk/dv. A
// tensor-core dq block serves heads_per_block query heads of one kv group, as
// the forward's does (mma_tiles.cuh).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "../capabilities.h"
#include "../fibsparse.h"
#include "../static_switch.h"
#include "bwd_mma_kernel.cuh"
#include "lane_bwd_kernel.cuh"
#include "launch.cuh"
#include "offsets_check.cuh"

namespace fibsparse {

// The dq pass's prefetch distance (Params::dq_prefetch_ahead): the blocks the
// GPU holds at once, on dense batches; FIBSPARSE_DQ_PREFETCH=0 turns it off for
// comparisons.
template <typename Kernel>
int64_t dq_prefetch_ahead(const Params& p, Kernel kernel, int threads, int smem_bytes) {
  const char* setting = std::getenv("FIBSPARSE_DQ_PREFETCH");
  if ((setting != nullptr && std::strcmp(setting, "0") == 0) || p.cu_seqlens_q != nullptr) return 0;
  if (smem_bytes > 0) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
  }
  int blocks_per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, threads, smem_bytes));
  return int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * blocks_per_sm;
}

template <typename T>
void launch_bwd(const Params& p, bool fractional) {
  HEADDIM_SWITCH(p.head_dim, kHeadDim, [&] {
    BOOL_SWITCH(fractional, kFrac, [&] {
      if constexpr (kIsTensorCoreType<T>) {
        using OffsetT = std::conditional_t<kFrac, float, int32_t>;
        using namespace mma_bwd;
        HEADS_PER_BLOCK_SWITCH(heads_per_block<kHeadDim>(p), kMaxHeadsPerBlock<kHeadDim>, kHeads, [&] {
          const auto kernel = dq_mma_kernel<T, OffsetT, kHeadDim, kHeads>;
          const dim3 dq_grid(blocks_for(p.seqlen_q, kBlockRows) + kOffsetsCheckBlocks, p.heads / kHeads, p.batch);
          Params dq_params = p;
          dq_params.dq_prefetch_ahead = dq_prefetch_ahead(p, kernel, kHeads * kMmaBlockThreads, kDqSmemBytes<kHeadDim>);
          launch_kernel(kernel, dq_grid, kHeads * kMmaBlockThreads, kDqSmemBytes<kHeadDim>, dq_params);
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
