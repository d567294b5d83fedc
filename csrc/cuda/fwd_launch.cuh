// Which kernel runs a forward, on which grid: float16 / bfloat16 on Hopper's
// warpgroup products where tensor_maps.h's hopper_forward_applies
// (fwd_hopper_kernel.cuh), else on mma.sync tensor cores (fwd_mma_kernel.cuh);
// float32 / float64 on lane groups (lane_fwd_kernel.cuh). A tensor-core block
// serves one or several query heads of one kv group (several when GQA heads
// share one row of offsets). Every grid has the offsets check's extra blocks
// (offsets_check.cuh).
#pragma once

#include <ATen/ops/empty.h>

#include <cstdint>
#include <type_traits>

#include "../capabilities.h"
#include "../env_switches.h"
#include "../fibsparse.h"
#include "../static_switch.h"
#include "fwd_hopper_kernel.cuh"
#include "fwd_mma_kernel.cuh"
#include "lane_fwd_kernel.cuh"
#include "launch.cuh"
#include "offsets_check.cuh"
#include "sequence_maps.cuh"
#include "tensor_maps.h"

namespace fibsparse {

// The Hopper forward's blocks of kWarpgroups consumer warpgroups of
// kHeadsPerWarpgroup heads each (in clusters of kCluster blocks), after its
// offsets check, a launch of its own, and for a packed batch the launch that
// makes each sequence's maps into `sequence_maps`. A block walks several
// consecutive tiles (hopper_tiles_per_block); the grid covers the longest
// sequence.
template <typename T, int kHeadDim, int kWarpgroups, int kHeadsPerWarpgroup, int kCluster, bool kFractional,
          bool kTwoDiagonals = false, bool kPvTwoDiagonals = false>
void launch_hopper_blocks(const Params& p, const HopperForwardMaps<kFractional>& maps,
                          HopperForwardMaps<kFractional>* sequence_maps) {
  using S = hopper_fwd::Shape<kHeadDim, kWarpgroups, kHeadsPerWarpgroup, kFractional>;
  using OffsetT = std::conditional_t<kFractional, float, int32_t>;
  const auto kernel = hopper_fwd::fwd_hopper_kernel<T, kHeadDim, kWarpgroups, kHeadsPerWarpgroup, kCluster, kFractional,
                                                    kTwoDiagonals, kPvTwoDiagonals>;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int tiles = int(blocks_for(p.seqlen_q, S::kTileQueries));
  const int64_t kv_head_bytes = int64_t(p.seqlen_k) * kHeadDim * 2 * int64_t(sizeof(T));  // its k and v rows
  const int tiles_per_block = hopper_tiles_per_block(tiles, kHeadsPerWarpgroup, int64_t(p.heads / S::kHeads) * p.batch,
                                                     S::kMinBlocks, p.num_offsets == 0, kFractional, kv_head_bytes);
  // One sequence's blocks check the offsets; a packed batch's blocks of head 0
  // check their sequence's boundaries, so it has a block per sequence.
  const int check_sequences = sequence_maps != nullptr ? p.batch : 1;
  offsets_check_kernel<OffsetT, S::kHeads>
      <<<dim3(kOffsetsCheckBlocks, p.heads / S::kHeads, check_sequences), 128, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (sequence_maps != nullptr) {
    sequence_maps_kernel<kFractional><<<p.batch, 32, 0, stream>>>(p, maps, sequence_maps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  allow_dynamic_smem(kernel, S::kSmemBytes);
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(blocks_for(tiles, tiles_per_block), p.heads / S::kHeads, p.batch);
  config.blockDim = dim3(S::kThreads);
  config.dynamicSmemBytes = S::kSmemBytes;
  config.stream = stream;
  cudaLaunchAttribute cluster_shape;
  cluster_shape.id = cudaLaunchAttributeClusterDimension;
  cluster_shape.val.clusterDim.x = 1;
  cluster_shape.val.clusterDim.y = kCluster;  // blocks y and y + 1: the two pairs of one kv group
  cluster_shape.val.clusterDim.z = 1;
  config.attrs = &cluster_shape;
  config.numAttrs = kCluster > 1 ? 1 : 0;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, p, maps, sequence_maps, tiles_per_block));
}

// The Hopper forward. Where the kv group's heads share one row of offsets,
// a block takes two warpgroups of them: with offsets and four heads to a group
// (or a multiple), two heads a warpgroup (32-query tiles, each strip read once
// for four heads; FIBSPARSE_HOPPER_PACK=0 turns that off), else one head a
// warpgroup (64-query tiles; the window alone, whose band bytes per query are
// the same either way, stays there). Where the group holds two such pairs,
// FIBSPARSE_HOPPER_CLUSTER=1 runs their two blocks of one head a warpgroup as
// a cluster that loads each stage once for both (integer offsets only); off
// by default, as it measured slower. Heads with rows of their own take one
// head a block. With two heads a warpgroup a fractional strip's P V is one
// product over its rows and the rows one back (add_two_diagonals_times_8_rows);
// FIBSPARSE_FWD_TWO_DIAGONALS=0 takes two diagonal products, for comparisons.
// With one head a warpgroup a fractional strip's scores against the rows one
// back come from its own tile's subdiagonal (scores_one_back: the same bits,
// a quarter fewer score products); FIBSPARSE_FWD_SUBDIAGONAL=0 takes a second
// 16 x 16 product instead, for comparisons. At head_dim 64 such a strip's
// P V is one two-diagonal product as well, with query 15's first row in a
// 16 x 8 one (fwd_hopper_kernel's kPvTwoDiagonals);
// FIBSPARSE_FWD_PV_TWO_DIAGONALS=0 takes two diagonal products, for comparisons.
template <typename T, bool kFractional>
void launch_fwd_hopper(const Params& p) {
  constexpr bool kBf16 = std::is_same_v<T, at::BFloat16>;
  const int group = p.heads / p.heads_kv;
  const bool pairs = p.offsets_head_stride == 0 && group % 2 == 0;
  const bool clusters = !kFractional && hopper_clusters_asked() && pairs && group % 4 == 0;
  const bool packed = !clusters && pairs && group % 4 == 0 && p.num_offsets > 0 && hopper_packing_allowed();
  const bool two_diagonals = !switched_off("FIBSPARSE_FWD_TWO_DIAGONALS");
  const bool subdiagonal = !switched_off("FIBSPARSE_FWD_SUBDIAGONAL");
  const bool pv_two_diagonals = !switched_off("FIBSPARSE_FWD_PV_TWO_DIAGONALS");
  const int tile_queries = packed ? hopper_fwd::kTileRows / 2 : hopper_fwd::kTileRows;
  HopperForwardMaps<kFractional> maps;
  // Two heads a warpgroup interleave their queries in the q tile (fwd_hopper_kernel.cuh).
  static_assert(hopper_fwd::kInterleavedHeads<2>);
  const int q_box_rows = packed ? hopper_fwd::kInterleavedRows : tile_queries;
  if constexpr (kFractional) {
    maps = make_fractional_forward_maps(p, kBf16, tile_queries, q_box_rows);
  } else {
    maps = make_forward_maps(p, kBf16, tile_queries, q_box_rows);
  }
  // A packed batch: room for each sequence's maps (TMA wants them 64-byte
  // aligned; the caching allocator's blocks are 512-byte aligned). The launches
  // below are queued on the allocator's stream, so the buffer may be freed
  // when this function returns.
  at::Tensor sequence_maps_buffer;
  HopperForwardMaps<kFractional>* sequence_maps = nullptr;
  if (p.cu_seqlens_q != nullptr) {
    const int64_t bytes = int64_t(p.batch) * int64_t(sizeof(maps));
    sequence_maps_buffer = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).device(at::kCUDA));
    sequence_maps = reinterpret_cast<HopperForwardMaps<kFractional>*>(sequence_maps_buffer.data_ptr());
  }
  const auto launch_dim = [&](auto head_dim) {
    constexpr int kHeadDim = decltype(head_dim)::value;
    if constexpr (!kFractional) {
      if (clusters) return launch_hopper_blocks<T, kHeadDim, 2, 1, 2, false>(p, maps, sequence_maps);
    }
    if constexpr (kFractional) {  // no integer instantiation
      if (packed && two_diagonals) {
        return launch_hopper_blocks<T, kHeadDim, 2, 2, 1, true, true>(p, maps, sequence_maps);
      }
      if (!packed && subdiagonal) {
        if constexpr (kHeadDim == 64) {
          if (pv_two_diagonals) {
            if (pairs) return launch_hopper_blocks<T, kHeadDim, 2, 1, 1, true, true, true>(p, maps, sequence_maps);
            return launch_hopper_blocks<T, kHeadDim, 1, 1, 1, true, true, true>(p, maps, sequence_maps);
          }
        }
        if (pairs) return launch_hopper_blocks<T, kHeadDim, 2, 1, 1, true, true>(p, maps, sequence_maps);
        return launch_hopper_blocks<T, kHeadDim, 1, 1, 1, true, true>(p, maps, sequence_maps);
      }
    }
    if (packed) {
      launch_hopper_blocks<T, kHeadDim, 2, 2, 1, kFractional>(p, maps, sequence_maps);
    } else if (pairs) {
      launch_hopper_blocks<T, kHeadDim, 2, 1, 1, kFractional>(p, maps, sequence_maps);
    } else {
      launch_hopper_blocks<T, kHeadDim, 1, 1, 1, kFractional>(p, maps, sequence_maps);
    }
  };
  if (p.head_dim == 64) {
    launch_dim(std::integral_constant<int, 64>{});
  } else {
    TORCH_CHECK(p.head_dim == 128, "fibsparse: the Hopper forward takes head_dim 64 or 128, got ", p.head_dim);
    launch_dim(std::integral_constant<int, 128>{});
  }
}

template <typename T>
void launch_fwd(const Params& p, bool fractional) {
  if constexpr (kIsTensorCoreType<T> && kHopperForwardBuilt) {
    if (hopper_forward_applies(p, true)) {
      return fractional ? launch_fwd_hopper<T, true>(p) : launch_fwd_hopper<T, false>(p);
    }
  }
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
