// The dk/dv pass of the backward with stored dS (DkdvRoute::kBeforeDq) for
// integer offsets, with each warp's work split between two warps: a pair.
//
// The one-warp pass (dkdv_mma_kernel) holds k and v fragments and both
// accumulators, 192 registers of state a thread at head_dim 128, so an SM
// holds 8 of its warps, and its profile is waits: on dependent products, on
// copies, at barriers. Here warp w and warp w + 4 share the 16 keys of w:
//   the score warp (role 0) holds k's fragments and dV: S^T = K Q^T,
//     P = exp(S - lse), dV += P^T dO;
//   the gradient warp (role 1) holds v's fragments and dK: dP^T = V dO^T,
//     then, with P from its partner, dS = P (dP - delta), dK += dS^T Q, and
//     it stores dS for the dq pass.
// P crosses in shared memory, as fp32 in the C layout both warps' products
// share, so every value is what the one-warp pass computes, bit for bit.
// Each warp holds half the state, the tensor work is the same, and the rows
// each warp reads from shared memory are the same in number: the pair reads
// q for a dot and dO for an add (role 0), dO for a dot and q for an add
// (role 1), where one warp read each twice.
#pragma once

#include <cmath>
#include <cstdint>

#include "../fibsparse.h"
#include "../pattern.h"
#include "block_steps.cuh"
#include "bwd_mma_kernel.cuh"
#include "mma_tiles.cuh"

namespace fibsparse {
namespace mma_bwd {

constexpr int kPairBlockThreads = 2 * kMmaBlockThreads;
// P of one 16 x 16 tile a pair, in two slots used in turn (pair_exchange):
// per slot 32 lanes x 8 floats, each lane's as two float4 half a slot apart.
constexpr int kExchangeFloats = 2 * 32 * 8;
template <int kHeadDim>
constexpr int kDkdvPairsSmemBytes = kDkdvSmemBytes<kHeadDim> + kWarps * kExchangeFloats * int(sizeof(float));
// Two blocks of eight warps an SM: 16 warps, twice the one-warp pass's at
// head_dim 128, within 128 registers a thread.
template <int kHeadDim>
constexpr int kMinBlocksDkdvPairs = 2;

// The 8 floats of a lane's C-layout tile in exchange slot `slot` of its pair.
__device__ __forceinline__ float4* exchange_half(float* pair_slots, int slot, int half, int lane) {
  return reinterpret_cast<float4*>(pair_slots + slot * 256 + half * 128) + lane;
}

// Step s's rows and statistics for the pair layout (QuerySteps::issue's, with
// 256 threads for a band chunk, and an offset strip of 16 rows staged by the
// pair that reads it).
template <typename T, int kHeadDim>
__device__ __forceinline__ void issue_pair_step(const QuerySteps<int32_t, kHeadDim>& steps,
                                                typename QuerySteps<int32_t, kHeadDim>::Step s, bool exists, int b,
                                                Rows<kHeadDim> q_dst, Rows<kHeadDim> do_dst, float* lse_dst,
                                                float* delta_dst, int32_t offset, int key_group, int role) {
  const Params& p = steps.p;
  const Sequence& seq = steps.seq;
  if (exists) {
    const int h = s.head;
    const uint16_t* q_src = bits<T>(p.q, seq.q_start(b, p.q_batch_stride, p.q_row_stride) + h * p.q_head_stride);
    const uint16_t* do_src =
        bits<T>(p.dout, seq.q_start(b, p.do_batch_stride, p.do_row_stride) + h * p.do_head_stride);
    const int64_t stats = stats_index(p, seq, b, h, 0);
    const float* lse = static_cast<const float*>(p.lse);
    const float* delta = static_cast<const float*>(p.delta);
    if (steps.is_band(s)) {
      const int64_t first = steps.chunk_row(s);
      stage_rows<kHeadDim, kChunk, kPairBlockThreads>(q_dst, q_src, p.q_row_stride, first, steps.band_last_row);
      stage_rows<kHeadDim, kChunk, kPairBlockThreads>(do_dst, do_src, p.do_row_stride, first, steps.band_last_row);
      if (threadIdx.x < 2 * kChunk) {
        const int r = threadIdx.x % kChunk;
        const int64_t i = first + r;
        const bool valid = i <= steps.band_last_row;
        const float* src = threadIdx.x < kChunk ? lse : delta;
        copy_async_4((threadIdx.x < kChunk ? lse_dst : delta_dst) + r, src + (valid ? stats + i : 0), valid);
      }
    } else if (offset >= 0) {
      const int lane = threadIdx.x % 32, row0 = 16 * key_group;
      const int64_t first = steps.block_key + offset - seq.q_pos_shift + 16 * key_group;
      stage_row_pair<kHeadDim, 16, 64>(q_dst + row0, q_src, p.q_row_stride, do_dst + row0, do_src, p.do_row_stride,
                                       first, seq.seqlen_q - 1, unsigned(32 * role + lane));
      if (lane < 16) {
        const int64_t i = first + lane;
        const bool valid = i >= 0 && i < seq.seqlen_q;
        copy_async_4((role == 0 ? lse_dst : delta_dst) + row0 + lane, (role == 0 ? lse : delta) + (valid ? stats + i : 0),
                     valid);
      }
    }
  }
  commit_async();
}

template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kPairBlockThreads, kMinBlocksDkdvPairs<kHeadDim>) dkdv_pairs_kernel(const Params p) {
  using Steps = QuerySteps<int32_t, kHeadDim>;
  extern __shared__ __align__(16) uint16_t smem[];
  const auto stage_q = [&](int s) { return stage_buffer<kHeadDim>(smem, s, 0); };
  const auto stage_do = [&](int s) { return stage_buffer<kHeadDim>(smem, s, 1); };
  float* stats_smem = reinterpret_cast<float*>(smem + 4 * kBufRows * (kHeadDim + 8));
  const auto stage_stat = [&](int s, int which) { return stats_smem + (2 * s + which) * kBufRows; };
  float* exchange_smem = reinterpret_cast<float*>(reinterpret_cast<char*>(smem) + kDkdvSmemBytes<kHeadDim>);

  const int hk = blockIdx.y, b = blockIdx.z;
  const Sequence seq = sequence_of(p, b);
  if (int64_t(blockIdx.x) * kBlockRows >= seq.seqlen_k) return;  // past a packed sequence's end
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int key_group = warp % kWarps, role = warp / kWarps;  // role 0: S, P, dV; role 1: dP, dS, dK
  float* pair_slots = exchange_smem + key_group * kExchangeFloats;
  const int warp_k0 = blockIdx.x * kBlockRows + 16 * key_group;
  const float scale = float(p.softmax_scale), scale_log2 = scale * float(M_LOG2E);
  const Steps steps(p, seq, int64_t(blockIdx.x) * kBlockRows, hk);

  // An offset step's offset, read when the step is queued and kept for its
  // products (dkdv_mma_kernel's kKeepsOffsets).
  const auto read_offset = [&](auto s, bool exists) {
    return exists && !steps.is_band(s) ? steps.offsets(s.head)[steps.offset_index(s)] : -1;
  };
  auto issued = steps.first();
  int32_t issued_offset = read_offset(issued, steps.num_steps > 0);
  issue_pair_step<T, kHeadDim>(steps, issued, steps.num_steps > 0, b, stage_q(0), stage_do(0), stage_stat(0, 0),
                               stage_stat(0, 1), issued_offset, key_group, role);

  // Role 0 dots k with q and adds P into dV from dO rows; role 1 dots v with
  // dO and adds dS into dK from q rows.
  uint32_t frag[kHeadDim / 16][4];
  {
    const void* src = role == 0 ? p.k : p.v;
    const int64_t batch_stride = role == 0 ? p.k_batch_stride : p.v_batch_stride;
    const int64_t row_stride = role == 0 ? p.k_row_stride : p.v_row_stride;
    const int64_t head_stride = role == 0 ? p.k_head_stride : p.v_head_stride;
    load_a_fragments<kHeadDim>(bits<T>(src, seq.k_start(b, batch_stride, row_stride) + hk * head_stride), row_stride,
                               warp_k0, seq.seqlen_k, g, c, frag);
  }
  // This lane's ldmatrix rows of its pair's strip in stage 0 (dkdv_mma_kernel's kKeptRows).
  constexpr uint32_t kBufferBytes = kStageBytes<kHeadDim>;
  uint32_t strip_dot_row, strip_add_row;
  {
    RowPtr<kHeadDim> strip = stage_q(0) + 16 * key_group;
    strip_dot_row = __shfl_sync(0xffffffffu, dot_16_rows_lane_row<kHeadDim>(strip, lane), lane) + role * kBufferBytes;
    strip_add_row =
        __shfl_sync(0xffffffffu, add_rows_lane_row<kHeadDim>(strip, lane), lane) + (1 - role) * kBufferBytes;
  }
  float acc[kHeadDim / 8][4] = {};  // dV (role 0) or dK (role 1)
  int slot = 0;                     // the pair's exchange slot of its next tile
  auto step = steps.first();
  const auto by_pair = [&](auto s, bool exists) { return steps.by_warp(s, exists); };
  bool step_by_pair = by_pair(step, steps.num_steps > 0);
  for (int n = 0; n < steps.num_steps; ++n, step = steps.next(step)) {
    const int32_t step_offset = issued_offset;
    issued = steps.next(issued);
    issued_offset = read_offset(issued, n + 1 < steps.num_steps);
    issue_pair_step<T, kHeadDim>(steps, issued, n + 1 < steps.num_steps, b, stage_q((n + 1) % 2),
                                 stage_do((n + 1) % 2), stage_stat((n + 1) % 2, 0), stage_stat((n + 1) % 2, 1),
                                 issued_offset, key_group, role);
    wait_async<1>();
    if (step_by_pair) {
      sync_strip_group<2>(key_group);
    } else {
      __syncthreads();
    }
    const float* lse = stage_stat(n % 2, 0);
    const float* dlt = stage_stat(n % 2, 1);
    if (steps.is_band(step)) {
      RowPtr<kHeadDim> dot_rows = role == 0 ? stage_q(n % 2) : stage_do(n % 2);
      RowPtr<kHeadDim> add_rows = role == 0 ? stage_do(n % 2) : stage_q(n % 2);
      const int64_t chunk_row = steps.chunk_row(step);
      const int last_row = int(steps.band_last_row - chunk_row);  // of the chunk's rows
#pragma unroll
      for (int t16 = 0; t16 < kChunk / 16; ++t16) {
        const int64_t pos0 = chunk_row + 16 * t16 + seq.q_pos_shift;
        if (!band_meets(pos0, warp_k0, p.band)) continue;  // uniform over the pair
        float x[2][4];  // S^T (role 0) or dP^T (role 1): rows the pair's keys, columns the sub-tile's queries
        dot_16_rows<T, kHeadDim>(frag, dot_rows + 16 * t16, x, 0, lane);
        const int distance0 = thread_distance<true>(warp_k0, pos0, g, c);
        if (role == 0) {
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const float2 row_lse = backward_lse(*reinterpret_cast<const float2*>(lse + 16 * t16 + 8 * j + 2 * c));
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int col = 8 * j + 2 * c + e % 2;
              const bool attended = 16 * t16 + col <= last_row &&
                                    in_band(element_distance<true>(distance0, j, e), p.band);
              const float lse_log2 = (e % 2 ? row_lse.y : row_lse.x) * float(M_LOG2E);
              x[j][e] = attended ? fast_exp2(x[j][e] * scale_log2 - lse_log2) : 0.f;
            }
          }
          *exchange_half(pair_slots, slot, 0, lane) = make_float4(x[0][0], x[0][1], x[0][2], x[0][3]);
          *exchange_half(pair_slots, slot, 1, lane) = make_float4(x[1][0], x[1][1], x[1][2], x[1][3]);
          sync_strip_group<2>(key_group);
          add_tile_times_rows<T, kHeadDim>(x, 0, 1.f, add_rows + 16 * t16, acc, lane);
        } else {
          sync_strip_group<2>(key_group);
          const float4 p0 = *exchange_half(pair_slots, slot, 0, lane), p1 = *exchange_half(pair_slots, slot, 1, lane);
          const float prob[2][4] = {{p0.x, p0.y, p0.z, p0.w}, {p1.x, p1.y, p1.z, p1.w}};
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const float2 row_dlt = *reinterpret_cast<const float2*>(dlt + 16 * t16 + 8 * j + 2 * c);
#pragma unroll
            for (int e = 0; e < 4; ++e) x[j][e] = prob[j][e] * (x[j][e] - (e % 2 ? row_dlt.y : row_dlt.x));
          }
          uint32_t ds_a[4];  // the A fragment of dK's product is the one stored
          c_to_a_fragment<T>(x, 0, 1.f, ds_a);
          uint16_t* tile = bits<T>(p.band_dscores, band_dscore_index(p, seq, b, step.head, blockIdx.x, step.index));
          *reinterpret_cast<uint4*>(tile + dscore_subtile_offset(t16, key_group) + 8 * lane) =
              make_uint4(ds_a[0], ds_a[1], ds_a[2], ds_a[3]);
          add_a_times_rows<T, kHeadDim>(ds_a, add_rows + 16 * t16, acc, lane);
        }
        slot ^= 1;
      }
    } else if (step_offset >= 0) {
      // Key x of the pair pairs with strip row x: the diagonals of K Q^T and
      // V dO^T are its scores and dP, the staged statistics of row x its
      // query's lse and delta.
      const int o = steps.offset_index(step);
      const uint32_t stage_bytes = uint32_t(n % 2) * 2 * kBufferBytes;
      float x[2][4];
      dot_16_rows_at<T, kHeadDim, 2, kOffsetChains<kHeadDim>>(frag, strip_dot_row + stage_bytes, x, 0);
      const int row0 = 16 * key_group;
      float prob[2];
      bool valid[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = g + 8 * r;
        const int64_t query = warp_k0 + row + step_offset;  // q_pos_shift 0 on this route
        valid[r] = query < seq.seqlen_q &&
                   sample_key<float>(query, distance_of_offset(0, p.band), p.band, &step_offset).valid;
      }
      float4* slot_lane = exchange_half(pair_slots, slot, 0, lane);
      if (role == 0) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const float lse_log2 = backward_lse(lse[row0 + g + 8 * r]) * float(M_LOG2E);
          prob[r] = valid[r] ? fast_exp2(diagonal_element(x, r, g) * scale_log2 - lse_log2) : 0.f;
        }
        *reinterpret_cast<float2*>(slot_lane) = make_float2(prob[0], prob[1]);
        sync_strip_group<2>(key_group);
        add_diag_times_rows_at<T, kHeadDim>(prob[0], prob[1], strip_add_row + stage_bytes, acc, lane);
      } else {
        sync_strip_group<2>(key_group);
        const float2 from_pair = *reinterpret_cast<const float2*>(slot_lane);
        prob[0] = from_pair.x;
        prob[1] = from_pair.y;
        float dscore[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int row = g + 8 * r;
          dscore[r] = valid[r] ? prob[r] * (diagonal_element(x, r, g) - dlt[row0 + row]) : 0.f;
          if (valid[r] && owns_diagonal(lane)) {
            static_cast<float*>(p.offset_dscores)[offset_term_index(p, seq, b, step.head, o, warp_k0 + row +
                                                                                                 step_offset)] =
                dscore[r];
          }
        }
        add_diag_times_rows_at<T, kHeadDim>(dscore[0], dscore[1], strip_add_row + stage_bytes, acc, lane);
      }
      slot ^= 1;
    }
    // The next iteration queues step n + 2 into this stage: if step n and
    // step n + 2 are both the pair's own, only the pair read the rows it will
    // overwrite; otherwise the whole block must be done with them.
    const bool next_by_pair = by_pair(issued, n + 1 < steps.num_steps);
    if (step_by_pair && by_pair(steps.next(issued), n + 2 < steps.num_steps)) {
      sync_strip_group<2>(key_group);
    } else {
      __syncthreads();
    }
    step_by_pair = next_by_pair;
  }
  if (role == 0) {
    store_rows<T, kHeadDim>(bits<T>(p.dv, seq.k_start(b, p.dv_batch_stride, p.dv_row_stride) + hk * p.dv_head_stride),
                            p.dv_row_stride, warp_k0, seq.seqlen_k, acc, 1.f, g, c);
  } else {
    store_rows<T, kHeadDim>(bits<T>(p.dk, seq.k_start(b, p.dk_batch_stride, p.dk_row_stride) + hk * p.dk_head_stride),
                            p.dk_row_stride, warp_k0, seq.seqlen_k, acc, scale, g, c);
  }
}

}  // namespace mma_bwd
}  // namespace fibsparse
