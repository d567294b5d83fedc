// Lane-group backward kernels for float32 / float64 (16-bit types take the
// tensor-core kernels of bwd_mma_kernel.cuh): deterministic, no float atomics.
//
// Every gradient is gathered by the thread group that owns its row, in a
// fixed order, so two runs give bitwise-identical results:
//   lane_dq_kernel   (one group per query i): forms delta_i = <dout_i, out_i> -
//               dlse_i for both passes, walks i's distances like the forward,
//               recomputes p = exp(score - lse) and ds = p * (dp - delta),
//               and sums dq_i. On the fractional path it also forms each
//               offset's term of d loss / d position and sums it over the
//               block's 16 queries in shared memory, in row order, into one
//               partial per (batch, head, block, offset); the host sums the
//               partials with a fixed-order reduction.
//   lane_dkdv_kernel (one group per key row j of a kv head): the queries that read
//               j are the mirror of the forward pattern, {j + d : d in D}
//               (plus j + floor(p) + 1 for a fractional p), over every query
//               head of the GQA group; readers_of_row and weight_of_row in
//               pattern.h name them, so the pattern is defined in one place.
#pragma once

#include "../fibsparse.h"
#include "../capabilities.h"
#include "../online_softmax.h"
#include "../pattern.h"
#include "lane_group.cuh"
#include "offsets_check.cuh"

namespace fibsparse {

static_assert(kCudaRowsPerBlock == kCudaQueriesPerPartial, "the dq pass writes one partial of d(position) per block");

template <typename T, typename OffsetT, int kHeadDim>
__global__ void __launch_bounds__(kLaneBlockThreads) lane_dq_kernel(const Params p) {
  using Acc = acc_t<T>;
  constexpr int kElems = kHeadDim / kLanes;
  constexpr bool kFrac = !std::is_integral_v<OffsetT>;
  // The backward's check: the dq pass runs before the dk/dv pass on the stream.
  if (is_offsets_check_block()) return check_offsets_on_device<OffsetT>(p, blockIdx.y);
  __shared__ Acc dpos_rows[kCudaRowsPerBlock];

  const int h = blockIdx.y, b = blockIdx.z, hk = h / (p.heads / p.heads_kv);
  const Sequence seq = sequence_of(p, b);
  if (int64_t(blockIdx.x) * kCudaRowsPerBlock >= seq.seqlen_q) return;  // past a packed sequence's end
  const int lane = threadIdx.x % kLanes, row_in_block = threadIdx.x / kLanes;
  const int row = blockIdx.x * kCudaRowsPerBlock + row_in_block;
  const bool in_range = row < seq.seqlen_q;
  const int i = in_range ? row : seq.seqlen_q - 1;
  const int64_t pos = i + seq.q_pos_shift;
  const int64_t stat = stats_index(p, seq, b, h, i);
  const OffsetT* offs = static_cast<const OffsetT*>(p.offsets) + h * p.offsets_head_stride;
  const T* k = static_cast<const T*>(p.k) + seq.k_start(b, p.k_batch_stride, p.k_row_stride) + hk * p.k_head_stride +
               lane * kElems;
  const T* v = static_cast<const T*>(p.v) + seq.k_start(b, p.v_batch_stride, p.v_row_stride) + hk * p.v_head_stride +
               lane * kElems;
  const Acc scale = Acc(p.softmax_scale);

  Acc q[kElems], dout[kElems];
  load_slice<kElems>(static_cast<const T*>(p.q) + seq.q_start(b, p.q_batch_stride, p.q_row_stride) +
                         int64_t(i) * p.q_row_stride + h * p.q_head_stride + lane * kElems,
                     q);
  load_slice<kElems>(static_cast<const T*>(p.dout) + seq.q_start(b, p.do_batch_stride, p.do_row_stride) +
                         int64_t(i) * p.do_row_stride + h * p.do_head_stride + lane * kElems,
                     dout);
  Acc out[kElems];
  load_slice<kElems>(static_cast<const T*>(p.out) + seq.q_start(b, p.o_batch_stride, p.o_row_stride) +
                         int64_t(i) * p.o_row_stride + h * p.o_head_stride + lane * kElems,
                     out);
  const Acc lse = static_cast<const Acc*>(p.lse)[stat];
  const Acc delta = group_sum(slice_dot(dout, out)) - (p.dlse ? static_cast<const Acc*>(p.dlse)[stat] : Acc(0));
  if (in_range && lane == 0) static_cast<Acc*>(p.delta)[stat] = delta;

  Acc dq[kElems] = {};
  for (int t = 0; t < num_distances(p.band, p.num_offsets); ++t) {
    const auto s = sample_key<Acc>(pos, t, p.band, offs);
    // d/d(position) needs row j1 even where frac == 0.
    const bool is_position = kFrac && is_offset_distance(t, p.band);
    const bool read_j1 = is_position || (kFrac && s.frac != Acc(0));
    Acc row_k[kElems], dk_dpos[kElems], row_v[kElems], dv_dpos[kElems];
    load_interp<kElems>(k, p.k_row_stride, s.j0, s.j1, s.frac, read_j1, row_k, dk_dpos);
    load_interp<kElems>(v, p.v_row_stride, s.j0, s.j1, s.frac, read_j1, row_v, dv_dpos);
    // An invalid sample reads clamped rows and contributes nothing at all.
    const Acc score = scale * group_sum(slice_dot(q, row_k));
    const Acc dp = group_sum(slice_dot(dout, row_v));
    const Acc prob = s.valid ? prob_from_lse(score, lse) : Acc(0);
    const Acc dscore = s.valid ? dscore_from(prob, dp, delta, lse) : Acc(0);
    if (s.valid) {
#pragma unroll
      for (int e = 0; e < kElems; ++e) dq[e] += dscore * row_k[e];
    }

    if (is_position) {  // uniform across the block: same head, same t
      const Acc dscore_dpos = scale * group_sum(slice_dot(q, dk_dpos));
      const Acc ddp_dpos = group_sum(slice_dot(dout, dv_dpos));
      if (lane == 0) {
        dpos_rows[row_in_block] = in_range && s.valid ? dscore * dscore_dpos + prob * ddp_dpos : Acc(0);
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        Acc sum = Acc(0);
        for (int r = 0; r < kCudaRowsPerBlock; ++r) sum += dpos_rows[r];
        static_cast<Acc*>(p.doffsets_partial)[doffsets_partial_index(p, offset_of_distance(t, p.band), b, h,
                                                                     blockIdx.x)] = sum;
      }
      __syncthreads();
    }
  }
  if (!in_range) return;
  store_slice<kElems>(static_cast<T*>(p.dq) + seq.q_start(b, p.dq_batch_stride, p.dq_row_stride) +
                          int64_t(i) * p.dq_row_stride + h * p.dq_head_stride + lane * kElems,
                      dq, scale);
}

template <typename T, typename OffsetT, int kHeadDim>
__global__ void __launch_bounds__(kLaneBlockThreads) lane_dkdv_kernel(const Params p) {
  using Acc = acc_t<T>;
  constexpr int kElems = kHeadDim / kLanes;
  constexpr bool kFrac = !std::is_integral_v<OffsetT>;
  const int hk = blockIdx.y, b = blockIdx.z, group = p.heads / p.heads_kv;
  const Sequence seq = sequence_of(p, b);
  if (int64_t(blockIdx.x) * kCudaRowsPerBlock >= seq.seqlen_k) return;  // past a packed sequence's end
  const int lane = threadIdx.x % kLanes;
  const int row = blockIdx.x * kCudaRowsPerBlock + threadIdx.x / kLanes;
  const bool in_range = row < seq.seqlen_k;
  const int64_t j = in_range ? row : seq.seqlen_k - 1;
  const T* k = static_cast<const T*>(p.k) + seq.k_start(b, p.k_batch_stride, p.k_row_stride) + hk * p.k_head_stride +
               lane * kElems;
  const T* v = static_cast<const T*>(p.v) + seq.k_start(b, p.v_batch_stride, p.v_row_stride) + hk * p.v_head_stride +
               lane * kElems;
  const Acc scale = Acc(p.softmax_scale);

  Acc dk[kElems] = {}, dv[kElems] = {};
  for (int h = hk * group; h < (hk + 1) * group; ++h) {
    const OffsetT* offs = static_cast<const OffsetT*>(p.offsets) + h * p.offsets_head_stride;
    const T* q_head = static_cast<const T*>(p.q) + seq.q_start(b, p.q_batch_stride, p.q_row_stride) +
                      h * p.q_head_stride + lane * kElems;
    const T* do_head = static_cast<const T*>(p.dout) + seq.q_start(b, p.do_batch_stride, p.do_row_stride) +
                       h * p.do_head_stride + lane * kElems;
    const int64_t stats = stats_index(p, seq, b, h, 0);
    for (int t = 0; t < num_distances(p.band, p.num_offsets); ++t) {
      int64_t readers[2];
      // The reader count depends only on (head, t): uniform across the block.
      const int num_readers = readers_of_row<Acc>(j, t, p.band, offs, readers);
      for (int r = 0; r < num_readers; ++r) {
        const int64_t i_raw = readers[r] - seq.q_pos_shift;
        const bool reads = i_raw >= 0 && i_raw < seq.seqlen_q;
        // A query out of range is replaced by query 0 with weight 0, so all
        // loads stay in bounds and the shuffles stay uniform.
        const int64_t i = reads ? i_raw : 0;
        const auto s = sample_key<Acc>(i + seq.q_pos_shift, t, p.band, offs);
        const Acc w = reads ? weight_of_row(s, j) : Acc(0);
        const bool interp = kFrac && s.frac != Acc(0);
        Acc q[kElems], dout[kElems], row_k[kElems], row_v[kElems], diff[kElems];
        load_slice<kElems>(q_head + i * p.q_row_stride, q);
        load_slice<kElems>(do_head + i * p.do_row_stride, dout);
        load_interp<kElems>(k, p.k_row_stride, s.j0, s.j1, s.frac, interp, row_k, diff);
        load_interp<kElems>(v, p.v_row_stride, s.j0, s.j1, s.frac, interp, row_v, diff);
        const Acc score = scale * group_sum(slice_dot(q, row_k));
        const Acc dp = group_sum(slice_dot(dout, row_v));
        if (w != Acc(0)) {
          const Acc lse = static_cast<const Acc*>(p.lse)[stats + i];
          const Acc prob = prob_from_lse(score, lse);
          const Acc dscore = dscore_from(prob, dp, static_cast<const Acc*>(p.delta)[stats + i], lse);
#pragma unroll
          for (int e = 0; e < kElems; ++e) {
            dv[e] += w * prob * dout[e];
            dk[e] += w * dscore * q[e];
          }
        }
      }
    }
  }
  if (!in_range) return;
  store_slice<kElems>(static_cast<T*>(p.dk) + seq.k_start(b, p.dk_batch_stride, p.dk_row_stride) +
                          j * p.dk_row_stride + hk * p.dk_head_stride + lane * kElems,
                      dk, scale);
  store_slice<kElems>(static_cast<T*>(p.dv) + seq.k_start(b, p.dv_batch_stride, p.dv_row_stride) +
                          j * p.dv_row_stride + hk * p.dv_head_stride + lane * kElems,
                      dv, Acc(1));
}

}  // namespace fibsparse
