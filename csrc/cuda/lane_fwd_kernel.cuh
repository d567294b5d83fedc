// Lane-group forward kernel for float32 / float64 (16-bit types take the
// tensor-core kernel of fwd_mma_kernel.cuh). Block = 16 consecutive queries
// of one (batch, head); each query is a group of kLanes threads holding a
// slice of q and of the running output. The group walks the query's
// distances (pattern.h) with an online softmax; nothing of size
// seqlen x (window + K) ever reaches global memory. Neighbouring queries read
// neighbouring key rows at each step, so the band is served from L1/L2.
#pragma once

#include "../fibsparse.h"
#include "../pattern.h"
#include "lane_group.cuh"
#include "offsets_check.cuh"
#include "query_walk.cuh"

namespace fibsparse {

template <typename T, typename OffsetT, int kHeadDim>
__global__ void __launch_bounds__(kLaneBlockThreads) lane_fwd_kernel(const Params p) {
  using Walk = QueryWalk<T, OffsetT, kHeadDim>;
  if (is_offsets_check_block()) return check_offsets_on_device<OffsetT>(p, blockIdx.y);
  const int h = blockIdx.y, b = blockIdx.z;
  const Sequence seq = sequence_of(p, b);
  if (int64_t(blockIdx.x) * kCudaRowsPerBlock >= seq.seqlen_q) return;  // past a packed sequence's end
  const int lane = threadIdx.x % kLanes;
  const int row = blockIdx.x * kCudaRowsPerBlock + threadIdx.x / kLanes;
  // Rows past the end compute a copy of the last query and store nothing, so
  // every lane takes part in the group shuffles.
  const bool in_range = row < seq.seqlen_q;
  const int i = in_range ? row : seq.seqlen_q - 1;
  Walk walk(p, seq, b, i, h, lane);
  for (int t = 0; t < num_distances(p.band, p.num_offsets); ++t) walk.step(p, t, true);
  if (!in_range) return;
  store_slice<Walk::kElems>(static_cast<T*>(p.out) + seq.q_start(b, p.o_batch_stride, p.o_row_stride) +
                                int64_t(i) * p.o_row_stride + h * p.o_head_stride + lane * Walk::kElems,
                            walk.acc, walk.softmax.normalizer());
  if (lane == 0) static_cast<typename Walk::Acc*>(p.lse)[stats_index(p, seq, b, h, i)] = walk.softmax.lse();
}

}  // namespace fibsparse
