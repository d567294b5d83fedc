// Tensor-core forward for float16 / bfloat16 (the training and inference
// dtypes); float32 / float64 keep the lane-group kernel of lane_fwd_kernel.cuh.
//
// A block owns kBlockRows = 64 consecutive queries of one (batch, head); each of
// its 4 warps owns 16 of them, as the A operand of mma.m16n8k16 (mma_tiles.cuh).
// With GQA and one shared row of offsets, a block owns the same 64 queries of
// kHeads heads of one kv group (4 kHeads warps): those heads read the same key
// rows, which the block stages once for all its warps, dividing the k and v
// bytes read from L2 by kHeads. Each warp computes as in a block of one head.
//   Band: the block's band keys [p0 - window + 1, p0 + 63] are a dense strip.
//     It is staged through shared memory 64 key rows at a time; each warp
//     whose band meets the chunk scores all of it (S = Q K^T on tensor cores),
//     masks the sub-tiles on the band's edges, updates its online softmax, and
//     adds P V for the sub-tiles that meet its band.
//   Offsets: for offset distance d, the 16 queries of a warp read the 16
//     consecutive key rows pw - d .. pw - d + 15, and the block's 64 queries
//     64 consecutive rows: one coalesced strip per offset. Scoring the warp's
//     queries against its 16 rows is a 16x16 tile whose diagonal holds the
//     wanted scores; the softmax and P V touch only the diagonal. A fractional
//     position a + f reads two strips (rows pw - a and pw - a - 1) and mixes the
//     scores, and P V, with weights 1 - f and f, as pattern.h defines.
// The steps (band chunks, then one step per offset within the block's reach)
// run as a two-stage cp.async pipeline: the rows of step n + 1 are in flight
// while step n computes, so a block waits on memory about once, not once per
// step.
// Scores are kept in log2 units (scale * log2(e) folded in) for exp2.
#pragma once

#include <cmath>

#include "../fibsparse.h"
#include "../pattern.h"
#include "block_steps.cuh"
#include "mma_tiles.cuh"
#include "offsets_check.cuh"

namespace fibsparse {
namespace mma_fwd {

using namespace mma_tiles;

// Raises the running max of row r (fragment row g + 8r) to new_max[r],
// rescaling its running output and sum. Skipped when no row of the warp
// rose (the common case once the band has been seen: a single offset score
// rarely beats the max of 128 band scores), saving the rescale multiplies.
template <int kDimTiles>
__device__ __forceinline__ void raise_max(const float (&new_max)[2], float (&m)[2], float (&l)[2],
                                          float (&o)[kDimTiles][4]) {
  if (!__any_sync(0xffffffffu, new_max[0] > m[0] || new_max[1] > m[1])) return;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    // A row with nothing attended yet has m = -inf and nothing to rescale.
    const float rescale = new_max[r] == -INFINITY ? 1.f : fast_exp2(m[r] - new_max[r]);
    m[r] = new_max[r];
    l[r] *= rescale;
#pragma unroll
    for (int n = 0; n < kDimTiles; ++n) {
      o[n][2 * r] *= rescale;
      o[n][2 * r + 1] *= rescale;
    }
  }
}

// exp2(score - max) of an online softmax; 0 for masked scores and rows with nothing attended.
__device__ __forceinline__ float prob_of(float score, float max) {
  return fast_exp2(score - (max == -INFINITY ? 0.f : max));
}

// The max / sum of row r's 2N elements of a tile, as a tree: a serial chain
// of 2N dependent instructions is what the warps stalled on ("wait").
template <int N, typename Op>
__device__ __forceinline__ float reduce_row(const float (&s)[N][4], int r, Op op) {
  float v[N];
#pragma unroll
  for (int j = 0; j < N; ++j) v[j] = op(s[j][2 * r], s[j][2 * r + 1]);
#pragma unroll
  for (int width = N / 2; width >= 1; width /= 2)
#pragma unroll
    for (int j = 0; j < width; ++j) v[j] = op(v[j], v[j + width]);
  return v[0];
}

// Online softmax over a tile of masked, log2-scaled scores: rescales the
// running output and sum, and turns s into probabilities relative to the new
// running max. Row r of this thread is fragment row g + 8r; the 4 threads of a
// quad share a row.
template <int N, int kDimTiles>
__device__ __forceinline__ void softmax_update(float (&s)[N][4], float (&m)[2], float (&l)[2],
                                               float (&o)[kDimTiles][4]) {
  static_assert((N & (N - 1)) == 0, "tree reduction over a power of two of tiles");
  const auto max = [](float a, float b) { return fmaxf(a, b); };
  const auto add = [](float a, float b) { return a + b; };
  float new_max[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float tile_max = reduce_row(s, r, max);
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
    new_max[r] = fmaxf(m[r], tile_max);
  }
  raise_max(new_max, m, l, o);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
#pragma unroll
    for (int j = 0; j < N; ++j) {
      s[j][2 * r] = prob_of(s[j][2 * r], m[r]);
      s[j][2 * r + 1] = prob_of(s[j][2 * r + 1], m[r]);
    }
    l[r] += reduce_row(s, r, add);
  }
}

// One offset step's online-softmax update: score[r] is the diagonal element
// of the warp's 16 x 16 tile for row r (valid in its owner lane), for distance
// index t. Takes it from the owner, masks rows the offset cannot pair
// (pattern.h's sample_key), raises the running max and sum, and gives the
// rows' probabilities (the diagonal of P, for add_diag_times_rows). Row r
// sits at warp_pos + g + kRowStep r (mma_tiles.cuh's element_distance).
template <int kRowStep = 8, typename OffsetT, int kDimTiles>
__device__ __forceinline__ void offset_softmax(float (&score)[2], int64_t warp_pos, int t, const Params& p,
                                               const OffsetT* offs, float scale_log2, float (&m)[2], float (&l)[2],
                                               float (&o)[kDimTiles][4], int lane, float (&prob)[2]) {
  const int g = lane / 4, c = lane % 4;
  float new_max[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    score[r] = __shfl_sync(0xffffffffu, score[r], diagonal_owner(lane));
    const bool valid = sample_key<float>(warp_pos + g + kRowStep * r, t, p.band, offs).valid;
    score[r] = valid ? score[r] * scale_log2 : -INFINITY;
    new_max[r] = fmaxf(m[r], score[r]);
  }
  raise_max(new_max, m, l, o);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    prob[r] = prob_of(score[r], m[r]);
    if (c == 0) l[r] += prob[r];  // l is summed over the quad at the end
  }
}

// The forward's end for the warp's 16 queries from row warp_q0 of head h,
// before their output is stored: each row's sum over its quad, its lse, and
// the factor `inv` that normalizes its output. With kInterleavedHeads,
// fragment row g + 8 r is query warp_q0 + g of head h + r (the Hopper
// forward's interleaved heads, fwd_hopper_kernel.cuh), else query
// warp_q0 + g + 8 r of head h.
template <bool kInterleavedHeads>
__device__ __forceinline__ void normalize_and_store_lse(const Params& p, const Sequence& seq, int b, int h,
                                                        int warp_q0, const float (&m)[2], float (&l)[2], int lane,
                                                        float (&inv)[2]) {
  const int g = lane / 4, c = lane % 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    // A query whose every score is -inf has l = 0: its output is 0 (and its lse -inf).
    inv[r] = l[r] == 0.f ? 0.f : 1.f / l[r];
    const int head = kInterleavedHeads ? h + r : h;
    const int i = kInterleavedHeads ? warp_q0 + g : warp_q0 + g + 8 * r;
    if (c == 0 && i < seq.seqlen_q) {
      static_cast<float*>(p.lse)[stats_index(p, seq, b, head, i)] = m[r] * float(M_LN2) + logf(l[r]);
    }
  }
}

// The forward's end: normalize_and_store_lse, then the output's rows to
// global memory.
template <typename T, bool kInterleavedHeads = false, int kDimTiles>
__device__ __forceinline__ void store_output_and_lse(const Params& p, const Sequence& seq, int b, int h, int warp_q0,
                                                     const float (&o)[kDimTiles][4], const float (&m)[2],
                                                     float (&l)[2], int lane) {
  const int g = lane / 4, c = lane % 4;
  float inv[2];
  normalize_and_store_lse<kInterleavedHeads>(p, seq, b, h, warp_q0, m, l, lane, inv);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int head = kInterleavedHeads ? h + r : h;
    uint16_t* out = bits<T>(p.out, seq.q_start(b, p.o_batch_stride, p.o_row_stride) + head * p.o_head_stride);
    const int i = kInterleavedHeads ? warp_q0 + g : warp_q0 + g + 8 * r;
    if (i >= seq.seqlen_q) continue;
    uint16_t* row = out + int64_t(i) * p.o_row_stride;
#pragma unroll
    for (int n = 0; n < kDimTiles; ++n) {
      *reinterpret_cast<uint32_t*>(row + 8 * n + 2 * c) = pack2<T>(o[n][2 * r] * inv[r], o[n][2 * r + 1] * inv[r]);
    }
  }
}

// Dynamic shared memory: two pipeline stages of k and v rows.
template <int kHeadDim>
constexpr int kFwdSmemBytes = 2 * 2 * kStageBytes<kHeadDim>;

template <typename T, typename OffsetT, int kHeadDim, int kHeads>
__global__ void __launch_bounds__(kHeads * kMmaBlockThreads, kMinBlocksOfHeads<kHeadDim, kHeads>)
    fwd_mma_kernel(const Params p) {
  static_assert(kMinBlocks<kHeadDim> % kHeads == 0, "heads per block within the register budget (mma_tiles.cuh)");
  constexpr int kDimTiles = kHeadDim / 8, kChunkTiles = kChunk / 8, kThreads = kHeads * kMmaBlockThreads;
  if (is_offsets_check_block()) return check_offsets_of_heads<OffsetT, kHeads>(p);
  extern __shared__ __align__(16) uint16_t smem[];
  // Stage s of the pipeline: k rows stage_k(s), v rows stage_v(s).
  const auto stage_k = [&](int s) { return stage_buffer<kHeadDim>(smem, s, 0); };
  const auto stage_v = [&](int s) { return stage_buffer<kHeadDim>(smem, s, 1); };

  // The block's heads are first_head .. first_head + kHeads - 1, all of kv head hk.
  const int first_head = blockIdx.y * kHeads, b = blockIdx.z, hk = first_head / (p.heads / p.heads_kv);
  const Sequence seq = sequence_of(p, b);
  if (int64_t(blockIdx.x) * kBlockRows >= seq.seqlen_q) return;  // past a packed sequence's end
  // This warp serves head h; `warp` counts it among that head's 4 warps.
  const int warp = kHeads == 1 ? threadIdx.x / 32 : threadIdx.x / 32 % kWarps;
  const int h = kHeads == 1 ? first_head : first_head + threadIdx.x / kMmaBlockThreads;
  const int lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int warp_q0 = blockIdx.x * kBlockRows + 16 * warp;  // the warp's first query row
  const int64_t warp_pos = warp_q0 + int64_t(seq.q_pos_shift);
  const float scale_log2 = float(p.softmax_scale) * float(M_LOG2E);
  const uint16_t* k_src = bits<T>(p.k, seq.k_start(b, p.k_batch_stride, p.k_row_stride) + hk * p.k_head_stride);
  const uint16_t* v_src = bits<T>(p.v, seq.k_start(b, p.v_batch_stride, p.v_row_stride) + hk * p.v_head_stride);
  // The steps are the block's: with kHeads > 1 its heads share one row of offsets (heads_per_block).
  const OffsetT* offs = static_cast<const OffsetT*>(p.offsets) + first_head * p.offsets_head_stride;
  const KeySteps<OffsetT, kHeadDim, kThreads> steps(p, seq, offs, int64_t(blockIdx.x) * kBlockRows + seq.q_pos_shift);
  steps.issue(0, k_src, v_src, stage_k(0), stage_v(0));

  uint32_t qf[kHeadDim / 16][4];
  load_a_fragments<kHeadDim>(bits<T>(p.q, seq.q_start(b, p.q_batch_stride, p.q_row_stride) + h * p.q_head_stride),
                             p.q_row_stride, warp_q0, seq.seqlen_q, g, c, qf);
  float o[kDimTiles][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  for (int n = 0; n < steps.num_steps; ++n) {
    steps.issue(n + 1, k_src, v_src, stage_k((n + 1) % 2), stage_v((n + 1) % 2));
    wait_async<1>();
    __syncthreads();  // step n's rows, copied by every thread, are in place
    RowPtr<kHeadDim> rows_k = stage_k(n % 2), rows_v = stage_v(n % 2);
    if (steps.is_band(n)) {
      const int64_t chunk = steps.chunk(n);
      if (band_meets(warp_pos, chunk, p.band, kChunk)) {  // warp-uniform
        float s[kChunkTiles][4];
        // Every sub-tile, even one outside the band (masked below): without a
        // branch per sub-tile the 8 accumulator chains interleave.
#pragma unroll
        for (int t16 = 0; t16 < kChunk / 16; ++t16) dot_16_rows<T, kHeadDim>(qf, rows_k + 16 * t16, s, 2 * t16, lane);
        mask_band_chunk</*kKeysBeforeStart=*/false>(s, warp_pos, chunk, p.band, scale_log2, g, c);
        softmax_update(s, m, l, o);
#pragma unroll
        for (int t16 = 0; t16 < kChunk / 16; ++t16) {
          if (band_meets(warp_pos, chunk + 16 * t16, p.band)) {
            add_tile_times_rows<T, kHeadDim>(s, 2 * t16, 1.f, rows_v + 16 * t16, o, lane);
          }
        }
      }
    } else {
      const int t = distance_of_offset(steps.offset_index(n), p.band);
      const OffsetSplit split = split_offset(offs, steps.offset_index(n));
      if (split.whole >= 0) {  // not padding (the same for the whole block)
        RowPtr<kHeadDim> strip_k = rows_k + 16 * warp, strip_v = rows_v + 16 * warp;
        // Only the diagonal (query x, strip key x) of the 16 x 16 tile is a
        // pair of the pattern: one score per row, taken from its owner lane.
        float s[2][4], score[2];
        dot_16_rows<T, kHeadDim>(qf, strip_k + 1, s, 0, lane);
        if (split.frac != 0.f) {
          float s1[2][4];
          dot_16_rows<T, kHeadDim>(qf, strip_k, s1, 0, lane);
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const float first = diagonal_element(s, r, g);
            score[r] = first + split.frac * (diagonal_element(s1, r, g) - first);
          }
        } else {
#pragma unroll
          for (int r = 0; r < 2; ++r) score[r] = diagonal_element(s, r, g);
        }
        float prob[2];
        offset_softmax(score, warp_pos, t, p, offs, scale_log2, m, l, o, lane, prob);
        add_diag_times_rows<T, kHeadDim>((1.f - split.frac) * prob[0], (1.f - split.frac) * prob[1], strip_v + 1, o,
                                         lane);
        if (split.frac != 0.f) {
          add_diag_times_rows<T, kHeadDim>(split.frac * prob[0], split.frac * prob[1], strip_v, o, lane);
        }
      }
    }
    __syncthreads();  // stage n % 2 is refilled by the next iteration's issue
  }

  store_output_and_lse<T>(p, seq, b, h, warp_q0, o, m, l, lane);
}

}  // namespace mma_fwd
}  // namespace fibsparse
