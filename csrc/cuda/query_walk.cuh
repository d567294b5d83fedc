// One query's walk over its distances by a lane group (lane_group.cuh): the
// state the lane-group forward and the decode kernel share.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../fibsparse.h"
#include "../online_softmax.h"
#include "../pattern.h"
#include "lane_group.cuh"

namespace fibsparse {

// One query row's walk over its distances, as a group of kLanes threads
// keeps it: this lane's slice of q (pre-multiplied by the softmax scale) and
// of the running output, the online softmax, and where the query's pattern
// and its kv head's rows are. The forward and decode kernels differ only in
// which distances each group walks.
// kPaged: k and v are a paged cache's pool (decode with a block table).
template <typename T, typename OffsetT, int kHeadDim, bool kPaged = false>
struct QueryWalk {
  using Acc = acc_t<T>;
  static constexpr int kElems = kHeadDim / kLanes;
  int64_t pos;
  int b;  // the sequence's batch entry (a paged cache's block table row)
  const OffsetT* offs;
  const T* k;
  const T* v;
  Acc q[kElems];
  Acc acc[kElems] = {};
  OnlineSoftmax<Acc> softmax;

  __device__ QueryWalk(const Params& p, const Sequence& seq, int b, int i, int h, int lane) {
    const int hk = h / (p.heads / p.heads_kv);
    pos = query_position(p, seq, b, i);
    this->b = b;
    offs = static_cast<const OffsetT*>(p.offsets) + h * p.offsets_head_stride;
    k = static_cast<const T*>(p.k) + seq.k_start(b, p.k_batch_stride, p.k_row_stride) + hk * p.k_head_stride +
        lane * kElems;
    v = static_cast<const T*>(p.v) + seq.k_start(b, p.v_batch_stride, p.v_row_stride) + hk * p.v_head_stride +
        lane * kElems;
    load_slice<kElems>(static_cast<const T*>(p.q) + seq.q_start(b, p.q_batch_stride, p.q_row_stride) +
                           int64_t(i) * p.q_row_stride + h * p.q_head_stride + lane * kElems,
                       q);
#pragma unroll
    for (int e = 0; e < kElems; ++e) q[e] *= Acc(p.softmax_scale);
  }

  // Scores the (interpolated) key of distance index t, stored in rows
  // key_row(b, j0), key_row(b, j1) of k and v, and folds it into the running softmax
  // and output. Every lane of the warp must call it (the score is reduced with
  // shuffles); an inactive step or an invalid sample changes nothing.
  __device__ __forceinline__ void step(const Params& p, int t, bool active) {
    const auto s = sample_key<Acc>(pos, t, p.band, offs);
    const bool interp = !std::is_integral_v<OffsetT> && s.frac != Acc(0);
    const int64_t row0 = key_row<kPaged>(p, b, s.j0), row1 = key_row<kPaged>(p, b, s.j1);
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

}  // namespace fibsparse
