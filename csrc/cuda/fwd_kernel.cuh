// Forward kernel for float32 / float64 (16-bit types take the tensor-core
// kernel of fwd_mma_kernel.cuh). Block = 16 consecutive queries of one (batch, head); each
// query is a group of kLanes threads holding a slice of q and of the running
// output. The group walks the query's distances (pattern.h) with an online
// softmax; nothing of size seqlen x (window + K) ever reaches global memory.
// Neighbouring queries read neighbouring key rows at each step, so the band
// is served from L1/L2.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "../fibsparse.h"
#include "../kernels.h"
#include "../online_softmax.h"
#include "../pattern.h"
#include "../static_switch.h"
#include "fwd_mma_kernel.cuh"
#include "lane_group.cuh"
#include "offsets_check.cuh"

namespace fibsparse {

// One query row's walk over its distances, as a group of kLanes threads
// keeps it: this lane's slice of q (pre-multiplied by the softmax scale) and
// of the running output, the online softmax, and where the query's pattern
// and its kv head's rows are. The forward and decode kernels differ only in
// which distances each group walks.
template <typename T, typename OffsetT, int kHeadDim>
struct QueryWalk {
  using Acc = acc_t<T>;
  static constexpr int kElems = kHeadDim / kLanes;
  int64_t pos;
  const OffsetT* offs;
  const T* k;
  const T* v;
  Acc q[kElems];
  Acc acc[kElems] = {};
  OnlineSoftmax<Acc> softmax;

  __device__ QueryWalk(const Params& p, int b, int i, int h, int lane) {
    const int hk = h / (p.heads / p.heads_kv);
    pos = query_position(p, b, i);
    offs = static_cast<const OffsetT*>(p.offsets) + h * p.offsets_head_stride;
    k = static_cast<const T*>(p.k) + b * p.k_batch_stride + hk * p.k_head_stride + lane * kElems;
    v = static_cast<const T*>(p.v) + b * p.v_batch_stride + hk * p.v_head_stride + lane * kElems;
    load_slice<kElems>(static_cast<const T*>(p.q) + b * p.q_batch_stride + int64_t(i) * p.q_row_stride +
                           h * p.q_head_stride + lane * kElems,
                       q);
#pragma unroll
    for (int e = 0; e < kElems; ++e) q[e] *= Acc(p.softmax_scale);
  }

  // Scores the (interpolated) key of distance index t, stored in rows
  // key_row(j0), key_row(j1) of k and v, and folds it into the running softmax
  // and output. Every lane of the warp must call it (the score is reduced with
  // shuffles); an inactive step or an invalid sample changes nothing.
  __device__ __forceinline__ void step(const Params& p, int t, bool active) {
    const auto s = sample_key<Acc>(pos, t, p.window, offs);
    const bool interp = !std::is_integral_v<OffsetT> && s.frac != Acc(0);
    const int64_t row0 = key_row(p, s.j0), row1 = key_row(p, s.j1);
    Acc row_k[kElems], diff[kElems];
    load_interp<kElems>(k, p.k_row_stride, row0, row1, s.frac, interp, row_k, diff);
    const Acc score = group_sum(slice_dot(q, row_k));
    if (active && s.valid) {
      Acc weight;
      const Acc rescale = softmax.add(score, weight);
      Acc row_v[kElems];
      load_interp<kElems>(v, p.v_row_stride, row0, row1, s.frac, interp, row_v, diff);
#pragma unroll
      for (int e = 0; e < kElems; ++e) acc[e] = acc[e] * rescale + weight * row_v[e];
    }
  }
};

template <typename T, typename OffsetT, int kHeadDim>
__global__ void __launch_bounds__(kThreads) fwd_kernel(const Params p) {
  using Walk = QueryWalk<T, OffsetT, kHeadDim>;
  if (is_offsets_check_block()) return check_offsets_on_device<OffsetT>(p, blockIdx.y);
  const int lane = threadIdx.x % kLanes;
  const int row = blockIdx.x * kCudaRowsPerBlock + threadIdx.x / kLanes;
  const int h = blockIdx.y, b = blockIdx.z;
  // Rows past the end compute a copy of the last query and store nothing, so
  // every lane takes part in the group shuffles.
  const bool in_range = row < p.seqlen_q;
  const int i = in_range ? row : p.seqlen_q - 1;
  Walk walk(p, b, i, h, lane);
  for (int t = 0; t < num_distances(p.window, p.num_offsets); ++t) walk.step(p, t, true);
  if (!in_range) return;
  store_slice<Walk::kElems>(static_cast<T*>(p.out) + b * p.o_batch_stride + int64_t(i) * p.o_row_stride +
                                h * p.o_head_stride + lane * Walk::kElems,
                            walk.acc, walk.softmax.normalizer());
  if (lane == 0) {
    static_cast<typename Walk::Acc*>(p.lse)[(int64_t(b) * p.heads + h) * p.seqlen_q + i] = walk.softmax.lse();
  }
}

template <typename T>
void launch_fwd(const Params& p, bool fractional) {
  if constexpr (kIsTensorCoreType<T>) {
    mma_fwd::launch<T>(p, fractional);
  } else {  // the lane-group kernels, instantiated for 32/64-bit types only
    const dim3 grid((p.seqlen_q + kCudaRowsPerBlock - 1) / kCudaRowsPerBlock + kOffsetsCheckBlocks, p.heads, p.batch);
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    HEADDIM_SWITCH(p.head_dim, kHeadDim, [&] {
      BOOL_SWITCH(fractional, kFrac, [&] {
        using OffsetT = std::conditional_t<kFrac, acc_t<T>, int32_t>;
        fwd_kernel<T, OffsetT, kHeadDim><<<grid, kThreads, 0, stream>>>(p);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
}

}  // namespace fibsparse
