// Tensor-core backward for float16 / bfloat16; float32 / float64 keep the
// lane-group kernels of lane_bwd_kernel.cuh. Two passes, no atomics, deterministic:
//
//   dq pass (a block = 64 queries of one head, or of several GQA heads sharing
//     one row of offsets, the forward's geometry and step plan, mma_tiles.cuh
//     and block_steps.cuh): per 16 x 16 tile of the warp's queries against
//     staged keys, P = exp(S - lse) from recomputed scores, dP = dO V^T,
//     dS = P (dP - delta), dq += dS K. An offset's strip is staged per warp
//     (a query's key rows are its warp's alone), the band's per block. It
//     forms delta = <dO, O> - dlse for both
//     passes (the window alone's dk/dv pass, which runs first, forms its own),
//     and for every offset within the block's reach it stores each
//     query's P and dS (offset_probs / offset_dscores) and, for fractional
//     positions, sums the warp's d loss / d position into one partial per
//     (warp, offset); the partials of offsets out of reach are zero. The
//     statistics of those are never written, and never read: the dk/dv pass
//     reads (query, offset) only where the query's position is >= the offset.
//   dk/dv pass (a block = 64 keys of one kv head; every query head of its GQA
//     group in turn): the band's readers of a key tile are a dense strip of
//     queries (the band mirrored), so the same tiles run with keys as rows:
//     S^T = K Q^T, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q. An offset's
//     readers of the warp's 16 keys are 16 (17 when fractional) consecutive
//     queries, whose P and dS the dq pass stored: dV and dK take them as a
//     diagonal tile times the strip of dO or Q rows, with weights 1 - f (the
//     query reading the key as its first row) and f (as its second).
// The backward with stored dS (bwd_stored_dscores_kernel.cuh) runs the dk/dv
// pass first instead (DkdvRoute, block_steps.cuh), with its own dq pass.
#pragma once

#include <cmath>
#include <type_traits>

#include "../fibsparse.h"
#include "../capabilities.h"
#include "../pattern.h"
#include "block_steps.cuh"
#include "mma_tiles.cuh"
#include "offsets_check.cuh"

namespace fibsparse {
namespace mma_bwd {

using namespace mma_tiles;

// Dynamic shared memory of the two passes: two pipeline stages of two row
// buffers; the dk/dv pass adds two statistics per staged row.
template <int kHeadDim>
constexpr int kDqSmemBytes = 2 * 2 * kStageBytes<kHeadDim>;
template <int kHeadDim>
constexpr int kDkdvSmemBytes = 2 * 2 * kStageBytes<kHeadDim> + 2 * 2 * kBufRows * int(sizeof(float));
// The window alone's dk/dv pass also stages O rows (two stages, after the rest).
template <int kHeadDim>
constexpr int kDkdvWindowSmemBytes = kDkdvSmemBytes<kHeadDim> + 2 * kStageBytes<kHeadDim>;
// The dk/dv pass that runs first with fractional offsets also stages each
// warp's edge rows (fractional_offset_step), after the rest: k, then v, of
// the key before the warp's first, its last key and the key after that.
constexpr int kEdgeRows = 6;
template <int kHeadDim>
constexpr int kDkdvFractionalSmemBytes =
    kDkdvSmemBytes<kHeadDim> + kWarps * kEdgeRows * kHeadDim * int(sizeof(uint16_t));
// The block's v rows, where the dk/dv pass keeps them in shared memory
// (dkdv_mma_kernel's kVInSmem), after the rest.
template <int kHeadDim>
constexpr int kDkdvVRowBytes = kBlockRows * (kHeadDim + 8) * int(sizeof(uint16_t));
static_assert(kCudaQueriesPerPartial == 16, "the dq pass writes one partial of d(position) per warp's 16 queries");

// The lse with which the backward recomputes P = exp(S - lse): a query whose
// every score is -inf has lse -inf, and +inf in its place makes each P 0
// instead of exp(-inf - -inf) = NaN (FlashAttention does the same).
__device__ __forceinline__ float backward_lse(float lse) { return lse == -INFINITY ? INFINITY : lse; }
__device__ __forceinline__ float2 backward_lse(float2 lse) { return {backward_lse(lse.x), backward_lse(lse.y)}; }

// Stores the warp's 16 rows of acc * scale (C layout) into rows first_row..
// of a (batch, head) slice, skipping rows at or past `rows`.
template <typename T, int kHeadDim>
__device__ __forceinline__ void store_rows(uint16_t* dst, int64_t row_stride, int first_row, int rows,
                                           const float (&acc)[kHeadDim / 8][4], float scale, int g, int c) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = first_row + g + 8 * r;
    if (i >= rows) continue;
    uint16_t* row = dst + int64_t(i) * row_stride;
#pragma unroll
    for (int n = 0; n < kHeadDim / 8; ++n) {
      *reinterpret_cast<uint32_t*>(row + 8 * n + 2 * c) = pack2<T>(acc[n][2 * r] * scale, acc[n][2 * r + 1] * scale);
    }
  }
}

// Where a sequence's band dS tiles start among a query head's
// p.band_dscore_tiles: a dense batch's sequences have ceil(seqlen_k / 64)
// tiles each; packed sequence b's start at tile k_row0 / 64 + b, which is
// never before the previous sequence's last tile ends (for a sequence of
// length n from row s, s / 64 + ceil(n / 64) <= (s + n) / 64 + 1, rounding
// down), so the buffer holds total_k / 64 + batch tiles per head
// (band_dscore_tiles in bwd_launch.cuh).
__device__ __forceinline__ int64_t band_dscore_first_tile(const Params& p, const Sequence& seq, int b) {
  if (p.cu_seqlens_k != nullptr) return seq.k_row0 / kBlockRows + b;
  return int64_t(b) * ((p.seqlen_k + kBlockRows - 1) / kBlockRows);
}

// The first element of the dS tile (bf16 / fp16, 64 keys x 64 queries in
// sub-tiles of 16 x 16, dscore_subtile_offset) of key tile `key_tile` and its
// band step `step` (query chunk key_tile + step) of (sequence b, query head
// h), in p.band_dscores.
__device__ __forceinline__ int64_t band_dscore_index(const Params& p, const Sequence& seq, int b, int h,
                                                     int64_t key_tile, int step) {
  const int64_t tile = h * p.band_dscore_tiles + band_dscore_first_tile(p, seq, b) + key_tile;
  return (tile * p.band_dscore_steps + step) * kBlockRows * kChunk;
}

// Within a stored dS tile, the sub-tile of 16 queries from column
// 16 query_sub and 16 keys from row 16 key_sub: 256 contiguous values in the
// order of the dk/dv pass's A fragment of its dS^T (c_to_a_fragment), lane l's
// four registers at values 8 l .. 8 l + 7. So the dk/dv pass writes a sub-tile
// with one 16-byte store a lane, four whole 128-byte lines a warp (in key rows
// each of its four stores a lane would touch half of 8 sectors), and a dq lane
// copies in, and reads back, only its own 16 bytes, with no barrier and no
// ldmatrix for them (transpose_8x8 turns them into the A fragment of dS). A
// query sub-tile's key sub-tiles lie together: one dq warp reads them in turn.
__device__ __forceinline__ int dscore_subtile_offset(int query_sub, int key_sub) {
  return (query_sub * (kChunk / 16) + key_sub) * 256;
}

// <O, dO> over one half (`half`, 0 or 1) of a row's columns, for delta: the
// caller adds the two halves (warp_row_deltas, and the window alone's dk/dv
// pass, which forms delta from staged rows), so both routes give delta the
// same bits. All loads are issued before any is used (a loop of
// 16-bit loads cost one L2 round trip per element). Each half is kHeadDim / 16
// vectors of 8 elements; at head_dim 128 the halves interleave vector by
// vector, so that the two lanes reading a row take one whole 32-byte sector
// per load: that made the backward with offsets ~2% faster there, and at
// head_dim 64 it measured no faster than each lane reading its half row
// (docs/performance.md), which the smaller head_dims keep.
template <typename T, int kHeadDim>
__device__ __forceinline__ float half_row_dot(const uint16_t* o_row, const uint16_t* do_row, int half) {
  constexpr int kVecs = kHeadDim / 16;
  constexpr int kVecStride = kHeadDim >= 128 ? 16 : 8;
  const int first = half * (kHeadDim >= 128 ? 8 : kHeadDim / 2);
  uint4 o_vec[kVecs], do_vec[kVecs];
#pragma unroll
  for (int x = 0; x < kVecs; ++x) {
    o_vec[x] = *reinterpret_cast<const uint4*>(o_row + first + kVecStride * x);
    do_vec[x] = *reinterpret_cast<const uint4*>(do_row + first + kVecStride * x);
  }
  float sum = 0.f;
#pragma unroll
  for (int x = 0; x < kVecs; ++x) {
    const uint32_t o_bits[4] = {o_vec[x].x, o_vec[x].y, o_vec[x].z, o_vec[x].w};
    const uint32_t do_bits[4] = {do_vec[x].x, do_vec[x].y, do_vec[x].z, do_vec[x].w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float2 o2 = unpack2<T>(o_bits[e]), do2 = unpack2<T>(do_bits[e]);
      sum += o2.x * do2.x + o2.y * do2.y;
    }
  }
  return sum;
}

// delta = <dO, O> - dlse for a warp's 16 query rows warp_q0.. of head h,
// written to p.delta; each lane gets the delta and the lse (backward_lse, in
// log2 units) of its rows g and g + 8. do_src points at head h's dout rows.
// Lanes 2r and 2r + 1 share row r (half_row_dot).
template <typename T, int kHeadDim>
__device__ __forceinline__ void warp_row_deltas(const Params& p, const Sequence& seq, int b, int h, int warp_q0,
                                                const uint16_t* do_src, int64_t stats, int lane, float (&delta)[2],
                                                float (&lse_log2)[2]) {
  const int g = lane / 4;
  const int r = lane / 2, i = warp_q0 + r;
  float sum = 0.f, row_lse = 0.f;
  if (i < seq.seqlen_q) {
    const uint16_t* o_row = bits<T>(p.out, seq.q_start(b, p.o_batch_stride, p.o_row_stride) +
                                               int64_t(i) * p.o_row_stride + h * p.o_head_stride);
    sum = half_row_dot<T, kHeadDim>(o_row, do_src + int64_t(i) * p.do_row_stride, lane % 2);
    row_lse = static_cast<const float*>(p.lse)[stats + i];
  }
  sum += __shfl_xor_sync(0xffffffffu, sum, 1);
  if (i < seq.seqlen_q) {
    sum -= p.dlse ? static_cast<const float*>(p.dlse)[stats + i] : 0.f;
    if (lane % 2 == 0) static_cast<float*>(p.delta)[stats + i] = sum;
  }
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    delta[rr] = __shfl_sync(0xffffffffu, sum, 2 * (g + 8 * rr));
    lse_log2[rr] = backward_lse(__shfl_sync(0xffffffffu, row_lse, 2 * (g + 8 * rr))) * float(M_LOG2E);
  }
}

// The warp's partial of d loss / d position for offset o, the sum of its 16
// queries' terms (`warp_sum`, the same in every lane): one partial per 16
// queries, which the host sums in a fixed order.
__device__ __forceinline__ void store_warp_doffsets_partial(const Params& p, const Sequence& seq, int o, int b, int h,
                                                            int warp_q0, float warp_sum, int lane) {
  if (lane == 0 && warp_q0 < seq.seqlen_q) {
    const int64_t at = doffsets_partial_index(p, o, b, h, warp_q0 / kCudaQueriesPerPartial);
    static_cast<float*>(p.doffsets_partial)[at] = warp_sum;
  }
}

// The same partial from each lane's share of the 16 queries' terms: a
// fixed-order warp sum first.
__device__ __forceinline__ void store_doffsets_partial(const Params& p, const Sequence& seq, int o, int b, int h,
                                                       int warp_q0, float dpos, int lane) {
#pragma unroll
  for (int x = 16; x > 0; x /= 2) dpos += __shfl_xor_sync(0xffffffffu, dpos, x);
  store_warp_doffsets_partial(p, seq, o, b, h, warp_q0, dpos, lane);
}

// The same partials of the offsets from `first` on, which the block's queries
// cannot reach: zero.
__device__ __forceinline__ void zero_doffsets_partials_from(const Params& p, const Sequence& seq, int first, int b,
                                                            int h, int warp_q0, int lane) {
  if (lane == 0 && warp_q0 < seq.seqlen_q) {
    for (int o = first; o < p.num_offsets; ++o) {
      static_cast<float*>(p.doffsets_partial)[doffsets_partial_index(p, o, b, h, warp_q0 / kCudaQueriesPerPartial)] =
          0.f;
    }
  }
}

template <typename T, typename OffsetT, int kHeadDim, int kHeads>
__global__ void __launch_bounds__(kHeads * kMmaBlockThreads, kMinBlocksOfHeads<kHeadDim, kHeads>)
    dq_mma_kernel(const Params p) {
  static_assert(kMinBlocks<kHeadDim> % kHeads == 0, "heads per block within the register budget (mma_tiles.cuh)");
  constexpr bool kFrac = !std::is_integral_v<OffsetT>;
  constexpr int kThreads = kHeads * kMmaBlockThreads;
  // The backward's check: the dq pass runs before the dk/dv pass on the stream.
  if (is_offsets_check_block()) return check_offsets_of_heads<OffsetT, kHeads>(p);
  extern __shared__ __align__(16) uint16_t smem[];
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
  const int warp_q0 = blockIdx.x * kBlockRows + 16 * warp;
  const int64_t warp_pos = warp_q0 + int64_t(seq.q_pos_shift);
  const float scale = float(p.softmax_scale), scale_log2 = scale * float(M_LOG2E);
  const uint16_t* k_src = bits<T>(p.k, seq.k_start(b, p.k_batch_stride, p.k_row_stride) + hk * p.k_head_stride);
  const uint16_t* v_src = bits<T>(p.v, seq.k_start(b, p.v_batch_stride, p.v_row_stride) + hk * p.v_head_stride);
  // The steps are the block's: with kHeads > 1 its heads share one row of offsets (heads_per_block).
  const OffsetT* offs = static_cast<const OffsetT*>(p.offsets) + first_head * p.offsets_head_stride;
  const int64_t stats = stats_index(p, seq, b, h, 0);  // the (sequence, head) row of lse, delta
  const KeySteps<OffsetT, kHeadDim, kThreads> steps(p, seq, offs, int64_t(blockIdx.x) * kBlockRows + seq.q_pos_shift);
  // An offset step (or none, past the last) is staged and read by warp
  // `warp` of each head alone (issue_warp_strip): its barriers are that
  // group's. A band step reads every row, so its copies stay the block's.
  const auto steps_by_group = [&](int n) { return !steps.is_band(n); };
  // kKeptOffsets (integer offsets): an offset step's offset is read once,
  // when the step is queued, and kept for its products, as the dk/dv
  // passes keep it. Read again after the step's barrier, its first
  // compare waited on memory before the products; kept, the pass took 7.8%
  // less time at 64k GQA 32/8 d 128. With fractional positions it took
  // 0.7-2.1% more at head_dim 64, so they read it again
  // (docs/performance.md, round 72).
  constexpr bool kKeptOffsets = !kFrac;
  const auto read_offset = [&](int n) {
    return n < steps.num_steps && !steps.is_band(n) ? offs[steps.offset_index(n)] : OffsetT(-1);
  };
  OffsetT issued_offset = kKeptOffsets ? read_offset(0) : OffsetT(-1);  // of the step queued last
  const auto issue = [&](int n) {
    if (steps_by_group(n)) {
      steps.template issue_warp_strip<kFrac, 32 * kHeads>(n, k_src, v_src, stage_k(n % 2), stage_v(n % 2), warp,
                                                          unsigned(32 * (threadIdx.x / kMmaBlockThreads) + lane),
                                                          kKeptOffsets ? &issued_offset : nullptr);
    } else {
      steps.issue(n, k_src, v_src, stage_k(n % 2), stage_v(n % 2));
    }
  };
  issue(0);

  const uint16_t* q_src = bits<T>(p.q, seq.q_start(b, p.q_batch_stride, p.q_row_stride) + h * p.q_head_stride);
  const uint16_t* do_src =
      bits<T>(p.dout, seq.q_start(b, p.do_batch_stride, p.do_row_stride) + h * p.do_head_stride);
  uint32_t qf[kHeadDim / 16][4], dof[kHeadDim / 16][4];
  load_a_fragments<kHeadDim>(q_src, p.q_row_stride, warp_q0, seq.seqlen_q, g, c, qf);
  load_a_fragments<kHeadDim>(do_src, p.do_row_stride, warp_q0, seq.seqlen_q, g, c, dof);

  float lse_log2[2], delta[2];
  warp_row_deltas<T, kHeadDim>(p, seq, b, h, warp_q0, do_src, stats, lane, delta, lse_log2);

  const bool row_valid[2] = {warp_q0 + g < seq.seqlen_q, warp_q0 + g + 8 < seq.seqlen_q};

  float dq[kHeadDim / 8][4] = {};
  for (int n = 0; n < steps.num_steps; ++n) {
    const OffsetT step_offset = issued_offset;  // step n's (kKeptOffsets)
    if constexpr (kKeptOffsets) issued_offset = read_offset(n + 1);
    issue(n + 1);
    wait_async<1>();
    sync_step<kHeads>(steps_by_group(n), warp);
    RowPtr<kHeadDim> rows_k = stage_k(n % 2), rows_v = stage_v(n % 2);
    if (steps.is_band(n)) {
      const int64_t chunk = steps.chunk(n);
#pragma unroll
      for (int t16 = 0; t16 < kChunk / 16; ++t16) {
        const int64_t key0 = chunk + 16 * t16;
        if (!band_meets(warp_pos, key0, p.band)) continue;  // warp-uniform
        float s[2][4], dp[2][4];
        dot_16_rows<T, kHeadDim>(qf, rows_k + 16 * t16, s, 0, lane);
        dot_16_rows<T, kHeadDim>(dof, rows_v + 16 * t16, dp, 0, lane);
        const int distance0 = thread_distance<false>(warp_pos, key0, g, c);
        // Only tiles on the band's edges need a mask per score (distances warp_pos - key0 + [-15, 15]).
        const bool inside = band_holds<15>(warp_pos, key0, p.band);
#pragma unroll
        for (int j = 0; j < 2; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int r = e / 2;
            const bool attended =
                row_valid[r] && (inside || in_band(element_distance<false>(distance0, j, e), p.band));
            const float prob = attended ? fast_exp2(s[j][e] * scale_log2 - lse_log2[r]) : 0.f;
            s[j][e] = prob * (dp[j][e] - delta[r]);  // dS
          }
        }
        add_tile_times_rows<T, kHeadDim>(s, 0, 1.f, rows_k + 16 * t16, dq, lane);
      }
    } else {
      // The step's offset, read once: the P and dS stores below go to float
      // memory, which may hold the offsets as far as the compiler knows, so
      // it would read them again for every row's sample_key.
      const int o = steps.offset_index(n);
      const OffsetT offset = kKeptOffsets ? step_offset : offs[o];
      const int t = distance_of_offset(0, p.band);  // of `offset`, as a row of one
      const OffsetSplit split = split_offset(&offset, 0);
      float dpos = 0.f;  // this thread's share of the warp's d loss / d position
      if (split.whole >= 0) {
        // Only the diagonal (query x, strip key x) of each 16 x 16 tile is a
        // pair of the pattern; its owner lane (mma_tiles.cuh) holds it. The
        // warp's strip starts at its first query's second row (fractional
        // positions) or first row (integer offsets).
        const int row0 = warp_strip_row0<kFrac>(warp);
        RowPtr<kHeadDim> strip_k = rows_k + row0, strip_v = rows_v + row0;
        RowPtr<kHeadDim> first_k = strip_k + (kFrac ? 1 : 0), first_v = strip_v + (kFrac ? 1 : 0);
        float s[2][4], dp[2][4];
        dot_16_rows<T, kHeadDim>(qf, first_k, s, 0, lane);
        dot_16_rows<T, kHeadDim>(dof, first_v, dp, 0, lane);
        float score[2], dprob[2], dscore_dpos[2] = {0.f, 0.f}, ddp_dpos[2] = {0.f, 0.f};
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          score[r] = diagonal_element(s, r, g);
          dprob[r] = diagonal_element(dp, r, g);
        }
        if constexpr (kFrac) {  // the second rows; d/d(position) needs them even where frac == 0
          float s1[2][4], dp1[2][4];
          dot_16_rows<T, kHeadDim>(qf, strip_k, s1, 0, lane);
          dot_16_rows<T, kHeadDim>(dof, strip_v, dp1, 0, lane);
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            // No second row before key 0: pattern.h clamps it onto the first,
            // so the derivative there is zero.
            const bool has_second = warp_pos + g + 8 * r - split.whole - 1 >= 0;
            dscore_dpos[r] = has_second ? diagonal_element(s1, r, g) - score[r] : 0.f;
            ddp_dpos[r] = has_second ? diagonal_element(dp1, r, g) - dprob[r] : 0.f;
            // At frac == 0 the second row has weight 0: it must not reach the
            // score (0 times a non-finite row is NaN), only d/d(position).
            if (split.frac != 0.f) {
              score[r] += split.frac * dscore_dpos[r];
              dprob[r] += split.frac * ddp_dpos[r];
            }
          }
        }
        float* probs = static_cast<float*>(p.offset_probs);
        float* dscores = static_cast<float*>(p.offset_dscores);
        const bool owner = owns_diagonal(lane);
        float dscore[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int row = g + 8 * r;
          const bool valid = row_valid[r] && sample_key<float>(warp_pos + row, t, p.band, &offset).valid;
          const float prob = valid ? fast_exp2(score[r] * scale_log2 - lse_log2[r]) : 0.f;
          dscore[r] = prob * (dprob[r] - delta[r]);
          if (kFrac && owner) dpos += dscore[r] * scale * dscore_dpos[r] + prob * ddp_dpos[r];
          if (owner && row_valid[r]) {  // what the dk/dv pass needs of this (query, offset)
            const int64_t at = offset_term_index(p, seq, b, h, o, warp_q0 + row);
            probs[at] = prob;
            dscores[at] = dscore[r];
          }
        }
        const float w0 = 1.f - split.frac;
        add_diag_times_rows<T, kHeadDim>(w0 * dscore[0], w0 * dscore[1], first_k, dq, lane);
        if (split.frac != 0.f) {
          add_diag_times_rows<T, kHeadDim>(split.frac * dscore[0], split.frac * dscore[1], strip_k, dq, lane);
        }
      }
      if constexpr (kFrac) store_doffsets_partial(p, seq, o, b, h, warp_q0, dpos, lane);
    }
    // Stage n % 2 is refilled by the next iteration's issue (step n + 2).
    sync_step<kHeads>(steps_by_group(n) && steps_by_group(n + 2), warp);
  }
  if constexpr (kFrac) zero_doffsets_partials_from(p, seq, steps.offset_steps, b, h, warp_q0, lane);
  store_rows<T, kHeadDim>(bits<T>(p.dq, seq.q_start(b, p.dq_batch_stride, p.dq_row_stride) + h * p.dq_head_stride),
                          p.dq_row_stride, warp_q0, seq.seqlen_q, dq, scale, g, c);
}

// The chains of products in which the dk/dv pass that runs first sums an
// integer offset step's scores and dP (dot_16_rows): two at head_dim 128,
// where the pass's warps wait most on those chains; that took 9-10% off the
// pass (docs/performance.md, round 36). Its band steps, and the fractional
// step, measured slower with two (the fractional kernel then spills).
template <int kHeadDim>
constexpr int kOffsetChains = kHeadDim >= 128 ? 2 : 1;

// This lane's share of <a, b> over two rows of kHeadDim elements in shared
// memory, from the lane's own columns of each: lane l takes the kHeadDim / 32
// columns from l kHeadDim / 32, one load a row (the warp's loads read each
// row once, whole).
// <x, y> over kPairs packed pairs of T, pair after pair (lane_row_dot_at's
// and lane_row_dot_shared's sum).
template <typename T, int kPairs>
__device__ __forceinline__ float packed_pairs_dot(const uint32_t* x_bits, const uint32_t* y_bits) {
  float sum = 0.f;
#pragma unroll
  for (int e = 0; e < kPairs; ++e) {
    const float2 x2 = unpack2<T>(x_bits[e]), y2 = unpack2<T>(y_bits[e]);
    sum += x2.x * y2.x + x2.y * y2.y;
  }
  return sum;
}
template <typename T, int kHeadDim>
__device__ __forceinline__ float lane_row_dot_at(const uint16_t* a_lane, const uint16_t* b_lane) {
  static_assert(kHeadDim == 64 || kHeadDim == 128, "one 4- or 8-byte load a row");
  constexpr int kPairs = kHeadDim / 64;
  using Vec = std::conditional_t<kPairs == 2, uint2, uint32_t>;
  const Vec x = *reinterpret_cast<const Vec*>(a_lane);
  const Vec y = *reinterpret_cast<const Vec*>(b_lane);
  return packed_pairs_dot<T, kPairs>(reinterpret_cast<const uint32_t*>(&x), reinterpret_cast<const uint32_t*>(&y));
}

// N per-lane values (N = 2, 4 or 8) summed across the warp, sum i left in
// the lanes 32 i / N .. 32 (i + 1) / N - 1. Each exchange hands the partner
// the half of its values that the partner keeps: 9 shuffles for eight sums
// (left in quads), where summing each one across the warp takes 40.
template <int N>
__device__ __forceinline__ float warp_sums_spread(const float (&v)[N], int lane) {
  static_assert(N == 2 || N == 4 || N == 8);
  float w[N];
#pragma unroll
  for (int i = 0; i < N; ++i) w[i] = v[i];
#pragma unroll
  for (int n = N, mask = 16; n > 1; n /= 2, mask /= 2) {  // lanes with `mask` set keep the upper half
    const bool upper = lane & mask;
#pragma unroll
    for (int i = 0; i < n / 2; ++i) {
      const float keep = upper ? w[n / 2 + i] : w[i], give = upper ? w[i] : w[n / 2 + i];
      w[i] = keep + __shfl_xor_sync(0xffffffffu, give, mask);
    }
  }
  float sum = w[0];
#pragma unroll
  for (int mask = 16 / N; mask >= 1; mask /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, mask);
  return sum;
}

// acc += w times this lane's columns of a row (lane_row_dot_at's columns).
template <typename T, int kHeadDim>
__device__ __forceinline__ void add_lane_row_times(float w, const uint16_t* a_lane, float (&acc)[kHeadDim / 32]) {
  constexpr int kPairs = kHeadDim / 64;
  using Vec = std::conditional_t<kPairs == 2, uint2, uint32_t>;
  const Vec x = *reinterpret_cast<const Vec*>(a_lane);
  const uint32_t* x_bits = reinterpret_cast<const uint32_t*>(&x);
#pragma unroll
  for (int e = 0; e < kPairs; ++e) {
    const float2 x2 = unpack2<T>(x_bits[e]);
    acc[2 * e] += w * x2.x;
    acc[2 * e + 1] += w * x2.y;
  }
}

// This lane's columns of a row (lane_row_dot_at's) as packed pairs, from
// their shared-memory address: one 4- or 8-byte load.
template <int kHeadDim>
__device__ __forceinline__ void load_lane_columns_at(uint32_t lane_addr, uint32_t (&bits)[kHeadDim / 64]) {
  static_assert(kHeadDim == 64 || kHeadDim == 128, "one 4- or 8-byte load a row");
  if constexpr (kHeadDim == 128) {
    const uint2 x = load_shared_u32x2(lane_addr);
    bits[0] = x.x;
    bits[1] = x.y;
  } else {
    bits[0] = load_shared_u32(lane_addr);
  }
}

// add_lane_row_times from this lane's columns as packed pairs (load_lane_columns_at's).
template <typename T, int kHeadDim>
__device__ __forceinline__ void add_lane_columns_times(float w, const uint32_t (&x_bits)[kHeadDim / 64],
                                                       float (&acc)[kHeadDim / 32]) {
#pragma unroll
  for (int e = 0; e < kHeadDim / 64; ++e) {
    const float2 x2 = unpack2<T>(x_bits[e]);
    acc[2 * e] += w * x2.x;
    acc[2 * e + 1] += w * x2.y;
  }
}

// add_lane_row_times from this lane's columns as a shared-memory address
// (the fractional dq pass with stored dS, head_dim 64 and 128).
template <typename T, int kHeadDim>
__device__ __forceinline__ void add_lane_row_times_at(float w, uint32_t lane_addr, float (&acc)[kHeadDim / 32]) {
  uint32_t x_bits[kHeadDim / 64];
  load_lane_columns_at<kHeadDim>(lane_addr, x_bits);
  add_lane_columns_times<T, kHeadDim>(w, x_bits, acc);
}

// acc's row 15 (fragment row g + 8 of the lanes with g == 7) += a row the
// warp holds in lane_row_dot_at's columns (lane l: the four from 4 l at
// head_dim 128, the two from 2 l at 64), through shuffles.
template <int kHeadDim>
__device__ __forceinline__ void add_lane_columns_to_row15(const float (&columns)[kHeadDim / 32],
                                                          float (&acc)[kHeadDim / 8][4], int lane) {
  static_assert(kHeadDim == 64 || kHeadDim == 128, "two or four columns a lane");
  constexpr int kLaneColumns = kHeadDim / 32;
  const int c = lane % 4;
#pragma unroll
  for (int j = 0; j < kHeadDim / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      // Column 8 j + 2 c + e: lane (8 j + 2 c + e) / kLaneColumns's element
      // (2 c + e) % kLaneColumns, which is e or e + 2 (e at head_dim 64).
      const int from = (8 * j + 2 * c + e) / kLaneColumns;
      float v = 0.f;
#pragma unroll
      for (int i = e; i < kLaneColumns; i += 2) {
        const float x = __shfl_sync(0xffffffffu, columns[i], from);
        if ((2 * c + e) % kLaneColumns == i) v = x;
      }
      if (lane >= 28) acc[j][2 + e] += v;
    }
  }
}

// A warp's share of its neighbour's key in the fractional dk/dv step
// (fractional_offset_step). Strip row 16 of warp w is strip row 0 of warp
// w + 1 (the same query at the same offset), which reads warp w's key 15 as
// its second row. Warp w + 1 forms that row's P and dS anyway; with
// `next_warp_shares` it adds f P dO and f dS q of its row 0 into
// `row0_share_v` and `row0_share_k` (this lane's columns), and warp w skips
// its row 16: the four dot products with edge rows and the row's exponential
// that forming it alone cost. Every warp does the same work, the block's
// last too, whose key 15 takes the next block's warp 0's share: within a
// block the shares pass through shared memory at the pass's end, across
// blocks through p.dkdv_edge_rows (hand_over_row0_shares), and
// add_next_tile_shares_kernel then stores each tile's last key. A warp that formed
// row 16 alone while the others did not would hold its block, and the
// tensor-core pipe its warps share with the other block's, to its pace.
template <int kHeadDim>
struct NeighbourShares {
  static constexpr int kLaneColumns = kHeadDim >= 32 ? kHeadDim / 32 : 1;  // lane_row_dot_at's
  bool next_warp_shares;
  float row0_share_k[kLaneColumns];
  float row0_share_v[kLaneColumns];
};

// The shared-memory addresses a lane reads in the fractional dk/dv step on
// swizzled stages (fractional_offset_step's kKeptFractionalRows), formed
// once per block for stage 0 and passed through a shuffle, whose result
// ptxas cannot recompute, so that it keeps them: a step adds its stage's
// offset (at_stage). Formed in the step, they were rebuilt from the thread index at
// every offset step, an S2R and a chain of ~20 dependent integer instructions
// between the step's barrier and its first ldmatrix, as the integer step's
// were before it kept its rows (docs/performance.md, rounds 68 and 96).
struct FractionalStripRows {
  uint32_t dot_row;       // swizzled_dot_lane_row of the warp's strip in the q buffer
  uint32_t add_row;       // swizzled_add_lane_row of the same rows
  uint32_t row0_columns;  // the lane's columns of the strip's row 0 (lane_row_dot_at's)
  uint32_t lse_row;       // the lse of strip row g; row g + 8's is 32 bytes on
  uint32_t edge_columns;  // the lane's columns of the warp's first edge row (key -1's k)
  // The same addresses in the stage whose row buffers start rows_bytes, and
  // statistics stats_bytes, after stage 0's (rows_bytes whole 128-byte lines,
  // with which the swizzle's XOR of an address commutes).
  __device__ __forceinline__ FractionalStripRows at_stage(uint32_t rows_bytes, uint32_t stats_bytes) const {
    return {dot_row + rows_bytes, add_row + rows_bytes, row0_columns + rows_bytes, lse_row + stats_bytes,
            edge_columns};
  }
};

// lane_row_dot_at from shared-memory addresses (the kept ones of
// FractionalStripRows): the same loads and the same sum.
template <typename T, int kHeadDim>
__device__ __forceinline__ float lane_row_dot_shared(uint32_t a_lane, uint32_t b_lane) {
  constexpr int kPairs = kHeadDim / 64;
  uint32_t x_bits[kPairs], y_bits[kPairs];
  load_lane_columns_at<kHeadDim>(a_lane, x_bits);
  load_lane_columns_at<kHeadDim>(b_lane, y_bits);
  return packed_pairs_dot<T, kPairs>(x_bits, y_bits);
}

// The dk/dv pass's step for a fractional offset when it runs first
// (DkdvRoute::kBeforeDq). The query at strip row x (position warp_k0 + whole
// + x) reads the warp's key x as its first row and key x - 1 as its second:
// its two scores are on the diagonal of K Q^T and just above it, at
// (x - 1, x), and the same for dP in V dO^T. Row 0's second key (the previous
// warp's last) and row 16 (the next warp's row 0, whose P and dS key 15 needs
// as its second row's share) fall outside the tile: their products are dots
// with the warp's edge rows (k rows of keys -1, 15, 16, then the v rows), or
// for row 16 the next warp's share (NeighbourShares). It
// stores each read row's dS and its d loss / d position term (the general dq
// pass's summand) for the dq pass, and adds to key x (1 - f) of row x's P and
// dS and f of row x + 1's, as the general pass does from stored ones. (The
// edge products as two 16 x 8 tensor-core tiles measured slower:
// docs/performance.md, round 33.) `offset` points at offset o's position, kept
// by the caller.
// kSwizzled: strip_q and strip_do are swizzled stages (mma_tiles.cuh's
// swizzled_chunk) whose strip starts at row strip_row.
// kTwoDiagonals (swizzled stages; with the next warp's shares, else as
// without it): key x's two shares in one product a quantity, whose A operand
// holds both diagonals (two_diagonals_a_fragment), where two diagonal products
// took twice the products and transposed loads: 8-9% off the pass
// (docs/performance.md, round 97). Round 33 found no gain in that product when
// row 16's share was a term outside the tile, added by four lanes in the
// step's chain; the next warp's share leaves no term outside.
// kKeptFractionalRows (with kTwoDiagonals, launched only with the next warp's shares):
// the step reads its strip's rows, row 0's columns, its rows' statistics and
// the edge row of key -1 from `kept`, this step's stage's addresses
// (FractionalStripRows), not from addresses it forms; the products, sums and
// stores are the same, so dk, dv and the stored dS are bitwise equal.
template <typename T, int kHeadDim, bool kSwizzled = false, bool kTwoDiagonals = false,
          bool kKeptFractionalRows = false, typename VFragments>
__device__ __forceinline__ void fractional_offset_step(
    const Params& p, const Sequence& seq, int b, int h, int o, const float* offset, OffsetSplit split,
    const uint32_t (&kf)[kHeadDim / 16][4], const VFragments& vf, RowPtr<kHeadDim> strip_q,
    RowPtr<kHeadDim> strip_do, const float* lse, const float* dlt, const uint16_t* edges, int warp_k0,
    float (&dk)[kHeadDim / 8][4], float (&dv)[kHeadDim / 8][4], NeighbourShares<kHeadDim>& shares, int lane,
    int strip_row = 0, FractionalStripRows kept = {}) {
  static_assert(!kKeptFractionalRows || (kSwizzled && kTwoDiagonals),
                "kept rows with the two-diagonal product on swizzled stages only");
  // Where a swizzled stage's dO rows lie after its q rows, and its deltas
  // after its lse values (the dk/dv pass's stage_row_buffer and stage_stat).
  constexpr uint32_t kDoBytes = kBufRows * kHeadDim * sizeof(uint16_t), kDeltaBytes = kBufRows * sizeof(float);
  const int g = lane / 4, c = lane % 4;
  const float scale = float(p.softmax_scale), scale_log2 = scale * float(M_LOG2E);
  const int t = distance_of_offset(0, p.band);  // sample_key's index of *offset, offset o's value
  [[maybe_unused]] const auto stage_of = [](RowPtr<kHeadDim> rows) { return const_cast<Rows<kHeadDim>>(rows); };
  // This lane's columns of strip row x (lane_row_dot_at's).
  const auto lane_columns = [&](RowPtr<kHeadDim> strip, int x) -> const uint16_t* {
    const int col = kHeadDim / 32 * lane;
    if constexpr (kSwizzled) {
      return swizzled_chunk<kHeadDim>(stage_of(strip), strip_row + x, col) + col % 8;
    } else {
      return strip[x] + col;
    }
  };
  // Strip row x's share of <row, edge row>.
  const auto edge_dot = [&](RowPtr<kHeadDim> strip, int x, const uint16_t* edge) {
    return lane_row_dot_at<T, kHeadDim>(lane_columns(strip, x), edge + kHeadDim / 32 * lane);
  };
  // dk or dv += the diagonal d_g, d_g8 times strip rows from x0 (0 or 1).
  const auto add_diag = [&](float d_g, float d_g8, RowPtr<kHeadDim> strip, int x0, float (&acc)[kHeadDim / 8][4]) {
    if constexpr (kSwizzled) {
      add_diag_times_rows_at<T, kHeadDim, true>(
          d_g, d_g8, swizzled_add_lane_row<kHeadDim>(stage_of(strip), lane, strip_row + x0), acc, lane);
    } else {
      add_diag_times_rows<T, kHeadDim>(d_g, d_g8, strip + x0, acc, lane);
    }
  };
  // dk or dv += d_x times strip row x plus e_x times strip row x + 1, for x
  // < 15 (two_diagonals_a_fragment): (1 - f) of row x's values and f of row
  // x + 1's, key 15's of row 16 left to the next warp. Swizzled stages only.
  const auto add_two_diagonals = [&](float d_g, float d_g8, float e_g, float e_g8, RowPtr<kHeadDim> strip,
                                     float (&acc)[kHeadDim / 8][4]) {
    add_two_diagonals_times_rows_at<T, kHeadDim, true>(
        d_g, d_g8, e_g, e_g8, swizzled_add_lane_row<kHeadDim>(stage_of(strip), lane, strip_row), acc, lane);
  };
  float st[2][4], dpt[2][4];
  if constexpr (kKeptFractionalRows) {
    dot_16_rows_at<T, kHeadDim, 2, 1, true>(kf, kept.dot_row, st, 0);
    dot_16_rows_at<T, kHeadDim, 2, 1, true>(vf, kept.dot_row, dpt, 0, kDoBytes);
  } else if constexpr (kSwizzled) {
    dot_16_rows_at<T, kHeadDim, 2, 1, true>(kf, swizzled_dot_lane_row<kHeadDim>(stage_of(strip_q), lane, strip_row),
                                            st, 0);
    dot_16_rows_at<T, kHeadDim, 2, 1, true>(vf, swizzled_dot_lane_row<kHeadDim>(stage_of(strip_do), lane, strip_row),
                                            dpt, 0);
  } else {
    dot_16_rows<T, kHeadDim>(kf, strip_q, st, 0, lane);
    dot_16_rows<T, kHeadDim>(vf, strip_do, dpt, 0, lane);
  }
  // Row 0's second products, with the edge rows of key -1, summed across the
  // warp together (warp_sums_spread): the score's in lanes 0-15, dP's in
  // 16-31, gathered by quad 0.
  float s_row0_second, dp_row0_second;
  {
    float parts[2];
    if constexpr (kKeptFractionalRows) {
      parts[0] = lane_row_dot_shared<T, kHeadDim>(kept.row0_columns, kept.edge_columns);
      parts[1] = lane_row_dot_shared<T, kHeadDim>(kept.row0_columns + kDoBytes,
                                                  kept.edge_columns + 3 * kHeadDim * sizeof(uint16_t));
    } else {
      parts[0] = edge_dot(strip_q, 0, edges);
      parts[1] = edge_dot(strip_do, 0, edges + 3 * kHeadDim);
    }
    const float sum = warp_sums_spread(parts, lane);
    s_row0_second = sum;
    dp_row0_second = __shfl_sync(0xffffffffu, sum, 16 + c);
  }

  // Row x's second products come from the lane holding (x - 1, x): for rows
  // g + 8 r with g >= 1 the one of row g - 1, for row 8 row 7's (lane 28),
  // for row 0 the edge dot.
  const int above = g >= 1 ? 4 * (g - 1) + g / 2 : 28;
  float s1[2], dp1[2];
  {
    const float s_a = __shfl_sync(0xffffffffu, superdiagonal_element(st, 0, g), above);
    const float s_b = __shfl_sync(0xffffffffu, superdiagonal_element(st, 1, g), above);
    const float dp_a = __shfl_sync(0xffffffffu, superdiagonal_element(dpt, 0, g), above);
    const float dp_b = __shfl_sync(0xffffffffu, superdiagonal_element(dpt, 1, g), above);
    s1[0] = g >= 1 ? s_a : s_row0_second;
    s1[1] = g >= 1 ? s_b : s_a;
    dp1[0] = g >= 1 ? dp_a : dp_row0_second;
    dp1[1] = g >= 1 ? dp_b : dp_a;
  }
  // P, dS and the d(position) term of the strip row whose first key is
  // `first_key`, as the general dq pass forms them: no second row before key
  // 0 (its derivative is zero there), and at f == 0 the second row must not
  // reach the score (0 times a non-finite row is NaN), only d/d(position).
  const auto row_terms = [&](int row, float s0, float s_second, float dp0, float dp_second, float& prob,
                             float& dscore, float& term) {
    const int64_t first_key = warp_k0 + row, query = first_key + split.whole;  // q_pos_shift 0 on this route
    const bool valid = query < seq.seqlen_q && sample_key<float>(query, t, p.band, offset).valid;
    const bool has_second = first_key >= 1;
    const float ds_dpos = has_second ? s_second - s0 : 0.f, ddp_dpos = has_second ? dp_second - dp0 : 0.f;
    float score = s0, dprob = dp0;
    if (split.frac != 0.f) {
      score += split.frac * ds_dpos;
      dprob += split.frac * ddp_dpos;
    }
    // kKeptFractionalRows: rows g and g + 8 from the kept address (row 16, formed only
    // without the next warp's shares, from the pointers).
    const bool kept_row = kKeptFractionalRows && row < 16;
    const uint32_t kept_at = kept.lse_row + 32 * (row / 8);
    const float lse_log2 = backward_lse(kept_row ? load_shared_float(kept_at) : lse[row]) * float(M_LOG2E);
    prob = valid ? fast_exp2(score * scale_log2 - lse_log2) : 0.f;
    dscore = valid ? prob * (dprob - (kept_row ? load_shared_float(kept_at + kDeltaBytes) : dlt[row])) : 0.f;
    term = valid ? dscore * scale * ds_dpos + prob * ddp_dpos : 0.f;
    return valid;
  };
  float prob[2], dscore[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = g + 8 * r;
    float term;
    const bool valid = row_terms(row, diagonal_element(st, r, g), s1[r], diagonal_element(dpt, r, g), dp1[r],
                                 prob[r], dscore[r], term);
    if (valid && owns_diagonal(lane)) {
      const int64_t at = offset_term_index(p, seq, b, h, o, warp_k0 + row + split.whole);
      static_cast<float*>(p.offset_dscores)[at] = dscore[r];
      static_cast<float*>(p.offset_probs)[at] = term;  // unused by this route otherwise
    }
  }
  const float w0 = 1.f - split.frac;
  // Row 0's share of the previous warp's key 15 (its row 16's), from row 0's
  // P and dS (lane 0's), with weight f (NeighbourShares).
  const auto add_row0_shares = [&] {
    const float p0 = __shfl_sync(0xffffffffu, prob[0], 0), ds0 = __shfl_sync(0xffffffffu, dscore[0], 0);
    if constexpr (kKeptFractionalRows) {
      add_lane_row_times_at<T, kHeadDim>(split.frac * p0, kept.row0_columns + kDoBytes, shares.row0_share_v);
      add_lane_row_times_at<T, kHeadDim>(split.frac * ds0, kept.row0_columns, shares.row0_share_k);
    } else {
      add_lane_row_times<T, kHeadDim>(split.frac * p0, lane_columns(strip_do, 0), shares.row0_share_v);
      add_lane_row_times<T, kHeadDim>(split.frac * ds0, lane_columns(strip_q, 0), shares.row0_share_k);
    }
  };
  if constexpr (kTwoDiagonals) {
    static_assert(kSwizzled, "two diagonals on swizzled stages only");
    if (shares.next_warp_shares) {
      // Key x's shares, (1 - f) of row x's P and dS and f of row x + 1's, in
      // one product a quantity: row x + 1's from its diagonal's owner (row
      // g + 1's, for row 7 row 8's in lane 0); key 15's of row 16 is the next
      // warp's.
      float p_next[2] = {0.f, 0.f}, ds_next[2] = {0.f, 0.f};
      if (split.frac != 0.f) {
        const float w1 = split.frac;
        const int below = g <= 6 ? 4 * (g + 1) + (g + 1) / 2 : 0;
        const float p_a = __shfl_sync(0xffffffffu, prob[0], below), p_b = __shfl_sync(0xffffffffu, prob[1], below);
        const float ds_a = __shfl_sync(0xffffffffu, dscore[0], below);
        const float ds_b = __shfl_sync(0xffffffffu, dscore[1], below);
        p_next[0] = w1 * (g <= 6 ? p_a : p_b);
        p_next[1] = g <= 6 ? w1 * p_b : 0.f;
        ds_next[0] = w1 * (g <= 6 ? ds_a : ds_b);
        ds_next[1] = g <= 6 ? w1 * ds_b : 0.f;
      }
      if constexpr (kKeptFractionalRows) {
        add_two_diagonals_times_rows_at<T, kHeadDim, true>(w0 * prob[0], w0 * prob[1], p_next[0], p_next[1],
                                                           kept.add_row, dv, lane, kDoBytes);
        add_two_diagonals_times_rows_at<T, kHeadDim, true>(w0 * dscore[0], w0 * dscore[1], ds_next[0], ds_next[1],
                                                           kept.add_row, dk, lane);
      } else {
        add_two_diagonals(w0 * prob[0], w0 * prob[1], p_next[0], p_next[1], strip_do, dv);
        add_two_diagonals(w0 * dscore[0], w0 * dscore[1], ds_next[0], ds_next[1], strip_q, dk);
      }
      if (split.frac != 0.f) add_row0_shares();
      return;
    }
  }
  add_diag(w0 * prob[0], w0 * prob[1], strip_do, 0, dv);
  add_diag(w0 * dscore[0], w0 * dscore[1], strip_q, 0, dk);
  if (split.frac != 0.f) {
    const float w1 = split.frac;
    // Row 16's P and dS: formed here from the edge dots (keys 15 and 16,
    // summed across the warp and gathered by quad 7), or left to the next
    // warp's share (zero here).
    float prob16 = 0.f, dscore16 = 0.f;
    if (!shares.next_warp_shares) {
      const float parts[4] = {edge_dot(strip_q, 16, edges + kHeadDim), edge_dot(strip_q, 16, edges + 2 * kHeadDim),
                              edge_dot(strip_do, 16, edges + 4 * kHeadDim),
                              edge_dot(strip_do, 16, edges + 5 * kHeadDim)};
      const float sum = warp_sums_spread(parts, lane);  // part i in lanes 8 i ..
      const float s_second = __shfl_sync(0xffffffffu, sum, c), s_first = __shfl_sync(0xffffffffu, sum, 8 + c);
      const float dp_second = __shfl_sync(0xffffffffu, sum, 16 + c);
      float term16;
      row_terms(16, s_first, s_second, sum, dp_second, prob16, dscore16, term16);
    }
    // Row x + 1's P and dS from its diagonal's owner: row g + 1's, row 8's
    // (lane 0) for row 7, and row 16's.
    const int below = g <= 6 ? 4 * (g + 1) + (g + 1) / 2 : 0;
    const float p_a = __shfl_sync(0xffffffffu, prob[0], below), p_b = __shfl_sync(0xffffffffu, prob[1], below);
    const float ds_a = __shfl_sync(0xffffffffu, dscore[0], below), ds_b = __shfl_sync(0xffffffffu, dscore[1], below);
    add_diag(w1 * (g <= 6 ? p_a : p_b), w1 * (g <= 6 ? p_b : prob16), strip_do, 1, dv);
    add_diag(w1 * (g <= 6 ? ds_a : ds_b), w1 * (g <= 6 ? ds_b : dscore16), strip_q, 1, dk);
    if (shares.next_warp_shares) add_row0_shares();
  }
}

// Where the fractional dk/dv pass keeps key tile `tile`'s edge rows for kv
// head hk (Params::dkdv_edge_rows): its last key's dk, then dv, as its block
// summed them, then the shares of dk and dv that the next tile's block formed.
__device__ __forceinline__ float* tile_edge_rows(const Params& p, const Sequence& seq, int b, int hk, int64_t tile,
                                                 int head_dim) {
  return p.dkdv_edge_rows + ((hk * p.band_dscore_tiles + band_dscore_first_tile(p, seq, b) + tile) * 4) * head_dim;
}

// At the dk/dv pass's end (NeighbourShares): each warp leaves its row 0
// shares for the warp before, warps 1-3 in their own edge rows in shared
// memory (which no step reads any more), warp 0 in the previous tile's edge
// rows in global memory; warps 0-2 add the next warp's to their key 15
// (fragment row 15: lanes 28-31, elements 2 and 3), and warp 3 leaves its
// key 15's sums to add_next_tile_shares_kernel. `tile_rows`: this tile's edge rows;
// `previous_tile_rows`: the previous tile's (null for a sequence's first).
template <int kHeadDim>
__device__ __forceinline__ void hand_over_row0_shares(const NeighbourShares<kHeadDim>& shares, uint16_t* own_edges,
                                                      const uint16_t* next_edges, float* tile_rows,
                                                      float* previous_tile_rows, int warp, float (&dk)[kHeadDim / 8][4],
                                                      float (&dv)[kHeadDim / 8][4], int lane) {
  constexpr int kLaneColumns = kHeadDim / 32;
  static_assert(kEdgeRows * sizeof(uint16_t) >= 2 * sizeof(float), "a warp's edge rows hold its two shares");
  // The first tile's warp 0 has no key before it to share with.
  float* own = warp > 0 ? reinterpret_cast<float*>(own_edges)
                        : previous_tile_rows != nullptr ? previous_tile_rows + 2 * kHeadDim : nullptr;
  if (own != nullptr) {
#pragma unroll
    for (int i = 0; i < kLaneColumns; ++i) {
      own[kLaneColumns * lane + i] = shares.row0_share_k[i];
      own[kHeadDim + kLaneColumns * lane + i] = shares.row0_share_v[i];
    }
  }
  __syncthreads();
  const int g = lane / 4, c = lane % 4;
  if (g != 7) return;
  const float* next = reinterpret_cast<const float*>(next_edges);
#pragma unroll
  for (int n = 0; n < kHeadDim / 8; ++n) {
    if (warp + 1 < kWarps) {
      const float2 k_share = *reinterpret_cast<const float2*>(next + 8 * n + 2 * c);
      const float2 v_share = *reinterpret_cast<const float2*>(next + kHeadDim + 8 * n + 2 * c);
      dk[n][2] += k_share.x;
      dk[n][3] += k_share.y;
      dv[n][2] += v_share.x;
      dv[n][3] += v_share.y;
    } else {
      *reinterpret_cast<float2*>(tile_rows + 8 * n + 2 * c) = make_float2(dk[n][2], dk[n][3]);
      *reinterpret_cast<float2*>(tile_rows + kHeadDim + 8 * n + 2 * c) = make_float2(dv[n][2], dv[n][3]);
    }
  }
}

// After the fractional dk/dv pass (NeighbourShares): each key tile's last key
// (block (tile, kv head, sequence), a thread per two columns of dk, then of
// dv) is its block's sums plus the next tile's share where that tile exists,
// stored as store_rows stores (dk scaled by the softmax scale).
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kHeadDim) add_next_tile_shares_kernel(const Params p) {
  const int64_t tile = blockIdx.x;
  const int hk = blockIdx.y, b = blockIdx.z;
  const Sequence seq = sequence_of(p, b);
  const int64_t key = tile * kBlockRows + kBlockRows - 1;
  if (key >= seq.seqlen_k) return;  // the tile's last key is past its sequence's end (or no tile)
  const bool is_v = threadIdx.x >= kHeadDim / 2;
  const int col = 2 * (threadIdx.x % (kHeadDim / 2));
  const float* sums = tile_edge_rows(p, seq, b, hk, tile, kHeadDim) + (is_v ? kHeadDim : 0) + col;
  float x = sums[0], y = sums[1];
  if (key + 1 < seq.seqlen_k) {
    const float* share = sums + 2 * kHeadDim;  // formed by the next tile's block
    x += share[0];
    y += share[1];
  }
  const float scale = is_v ? 1.f : float(p.softmax_scale);
  uint16_t* row = is_v ? bits<T>(p.dv, seq.k_start(b, p.dv_batch_stride, p.dv_row_stride) + hk * p.dv_head_stride +
                                           key * p.dv_row_stride)
                       : bits<T>(p.dk, seq.k_start(b, p.dk_batch_stride, p.dk_row_stride) + hk * p.dk_head_stride +
                                           key * p.dk_row_stride);
  *reinterpret_cast<uint32_t*>(row + col) = pack2<T>(x * scale, y * scale);
}

// One band step of the dk/dv pass: the warp's 16 keys (k and v fragments kf,
// vf; position warp_k0) against the staged chunk of 64 query rows from
// chunk_row (rows_q, rows_do and their lse and delta, stat0 and stat1), the
// step `step_index` of key tile `key_tile` for query head `head`: P^T and dS^T
// per 16-query sub-tile the band meets, added into dv and dk, and with
// kStoresDscores each dS stored for the dq pass (dscore_subtile_offset).
// band_last_row: the last query row that reads the key tile.
// kInnerSubtilesUnmasked: sub-tiles inside the band skip the test per pair
// (dkdv_mma_kernel says where that pays).
// kRowsAt: the lane's ldmatrix rows come as shared-memory addresses of its
// rows in the staged chunk (q_dot_row for dot_16_rows_at, q_add_row for
// add_a_times_rows_at; dO's one buffer on), kept by the caller.
// VFragments: vf as registers (uint32_t[kHeadDim / 16][4]) or in shared
// memory (SharedFragments).
// kSwizzled (with kRowsAt): the staged chunk is a swizzled stage (mma_tiles.cuh's swizzled_chunk).
template <typename T, int kHeadDim, bool kStoresDscores, bool kInnerSubtilesUnmasked, bool kRowsAt = false,
          bool kSwizzled = false, typename VFragments>
__device__ __forceinline__ void dkdv_band_step(const Params& p, const Sequence& seq, int b, int head, int64_t key_tile,
                                               int step_index, int64_t chunk_row, int64_t band_last_row, int warp_k0,
                                               const uint32_t (&kf)[kHeadDim / 16][4],
                                               const VFragments& vf, RowPtr<kHeadDim> rows_q,
                                               RowPtr<kHeadDim> rows_do, const float* stat0, const float* stat1,
                                               float (&dk)[kHeadDim / 8][4], float (&dv)[kHeadDim / 8][4], int lane,
                                               uint32_t q_dot_row = 0, uint32_t q_add_row = 0) {
  static_assert(!kRowsAt || kStoresDscores, "the kept rows serve the pass that stores dS");
  static_assert(!kSwizzled || kRowsAt, "swizzled stages are read from kept rows");
  const int warp = threadIdx.x / 32, g = lane / 4, c = lane % 4;
  constexpr uint32_t kRowBytes = (kHeadDim + (kSwizzled ? 0 : 8)) * sizeof(uint16_t);
  constexpr uint32_t kBufferBytes = kBufRows * kRowBytes, kSubtileBytes = 16 * kRowBytes;
  const float scale_log2 = float(p.softmax_scale) * float(M_LOG2E);
  // The last query of the step's sub-tile t16 that exists, as a column of it.
  const auto last_column = [&](int t16) { return int(band_last_row - chunk_row) - 16 * t16; };
  // Sub-tile t16, its first query at position pos0; `masked`: each pair
  // tested against the band and the last column.
  const auto band_subtile = [&](int t16, int64_t pos0, auto masked) {
    float st[2][4], dpt[2][4];  // rows: the warp's keys; columns: the sub-tile's queries
    const int distance0 = thread_distance<true>(warp_k0, pos0, g, c);  // rows: keys; columns: queries
    const int last_col = last_column(t16);
    if constexpr (kRowsAt) {
      dot_16_rows_at<T, kHeadDim, 2, 1, kSwizzled>(kf, q_dot_row, st, 0, t16 * kSubtileBytes);
      dot_16_rows_at<T, kHeadDim, 2, 1, kSwizzled>(vf, q_dot_row, dpt, 0, kBufferBytes + t16 * kSubtileBytes);
    } else {
      dot_16_rows<T, kHeadDim>(kf, rows_q + 16 * t16, st, 0, lane);
      dot_16_rows<T, kHeadDim>(vf, rows_do + 16 * t16, dpt, 0, lane);
    }
    float dst[2][4];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      // This thread's two query columns 8j + 2c, +1: their lse and delta.
      const float2 lse = backward_lse(*reinterpret_cast<const float2*>(stat0 + 16 * t16 + 8 * j + 2 * c));
      const float2 dlt = *reinterpret_cast<const float2*>(stat1 + 16 * t16 + 8 * j + 2 * c);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        // Queries past the band's last row (zero rows, or in a walk the
        // next tile's readers) and keys past seqlen_k: the checks keep them
        // out of P.
        const int col = 8 * j + 2 * c + e % 2;
        const bool attended = !decltype(masked)::value ||
                              (col <= last_col && in_band(element_distance<true>(distance0, j, e), p.band));
        const float lse_log2 = (e % 2 ? lse.y : lse.x) * float(M_LOG2E);
        const float prob = attended ? fast_exp2(st[j][e] * scale_log2 - lse_log2) : 0.f;
        dst[j][e] = prob * (dpt[j][e] - (e % 2 ? dlt.y : dlt.x));
        st[j][e] = prob;
      }
    }
    if constexpr (kStoresDscores) {
      uint32_t ds_a[4];  // the A fragment of dK's product is the one stored
      c_to_a_fragment<T>(dst, 0, 1.f, ds_a);
      uint16_t* tile = bits<T>(p.band_dscores, band_dscore_index(p, seq, b, head, key_tile, step_index));
      *reinterpret_cast<uint4*>(tile + dscore_subtile_offset(t16, warp) + 8 * lane) =
          make_uint4(ds_a[0], ds_a[1], ds_a[2], ds_a[3]);
      if constexpr (kRowsAt) {
        uint32_t p_a[4];
        c_to_a_fragment<T>(st, 0, 1.f, p_a);
        add_a_times_rows_at<T, kHeadDim, kSwizzled>(p_a, q_add_row, dv, kBufferBytes + t16 * kSubtileBytes);
        add_a_times_rows_at<T, kHeadDim, kSwizzled>(ds_a, q_add_row, dk, t16 * kSubtileBytes);
      } else {
        add_tile_times_rows<T, kHeadDim>(st, 0, 1.f, rows_do + 16 * t16, dv, lane);
        add_a_times_rows<T, kHeadDim>(ds_a, rows_q + 16 * t16, dk, lane);
      }
    } else {
      add_tile_times_rows<T, kHeadDim>(st, 0, 1.f, rows_do + 16 * t16, dv, lane);
      add_tile_times_rows<T, kHeadDim>(dst, 0, 1.f, rows_q + 16 * t16, dk, lane);
    }
  };
#pragma unroll
  for (int t16 = 0; t16 < kChunk / 16; ++t16) {
    const int64_t pos0 = chunk_row + 16 * t16 + seq.q_pos_shift;  // the sub-tile's first query position
    if (!band_meets(pos0, warp_k0, p.band)) continue;          // warp-uniform
    if (kInnerSubtilesUnmasked && last_column(t16) >= 15 && band_holds<15>(pos0, warp_k0, p.band)) {
      band_subtile(t16, pos0, std::false_type{});  // warp-uniform
    } else {
      band_subtile(t16, pos0, std::true_type{});
    }
  }
}

// kRoute (block_steps.cuh's DkdvRoute): kAfterDq is the general pass above.
// The other two run first and store each band tile's dS for the dq pass that
// follows (bwd_stored_dscores_kernel.cuh), which then reads it instead of recomputing
// it. kWindowAlone forms each step's delta from staged O and dO rows; its
// launcher (stored_dscore_steps) sends it no offsets, so every step is a band
// step. kBeforeDq reads delta from the delta pass, computes each offset's P
// and dS from its own k and v fragments and the strip's rows, as it does the
// band's (fractional positions: fractional_offset_step), and stores each
// (query, offset)'s dS.
// kVInSmem (the route before dq): each warp's 16 v rows are staged once in
// shared memory (kDkdvVRowBytes, after the rest), and the products that take
// them as their A operand load them from there (SharedFragments), which
// frees their 32 registers a thread at head_dim 128 (16 at 64).
// kSwizzledRows (the route before dq: integer offsets at head_dim 64; integer
// and fractional ones at 128 with kVInSmem; fractional ones at 64 with
// kVInSmem and kTwoDiagonals): the q and dO stages are swizzled (mma_tiles.cuh's
// swizzled_chunk), not padded, so that their copies ask L2 for no more sectors
// than their rows hold; the pass took 1.9-3.8% less time at head_dim 64,
// 7.4-10.6% at 128 with integer offsets and 1.8-3.1% with fractional ones
// (docs/performance.md, rounds 90, 91 and 93).
// kTwoDiagonals (fractional positions on swizzled rows): a key's two shares
// of an offset step in one product (fractional_offset_step).
// kKeptFractionalRows (with kTwoDiagonals, launched only with the next warp's
// shares): the fractional step's shared-memory addresses, and with kVInSmem
// the v rows' too, formed once and kept (FractionalStripRows).
template <typename T, typename OffsetT, int kHeadDim, DkdvRoute kRoute = DkdvRoute::kAfterDq, bool kVInSmem = false,
          bool kSwizzledRows = false, bool kTwoDiagonals = false, bool kKeptFractionalRows = false>
__global__ void __launch_bounds__(kMmaBlockThreads, kMinBlocksDkdv<kHeadDim>) dkdv_mma_kernel(const Params p) {
  constexpr bool kWindowAlone = kRoute == DkdvRoute::kWindowAlone;
  // A band sub-tile inside the band (its distances pos0 - warp_k0 + [-15, 15]
  // all in it) whose 16 queries all exist needs no test per pair: 7 of a
  // warp's 9 at window 128. The window alone at head_dim 64 and below takes
  // them through a copy of the sub-tile without the test (-1.7% / -3.1% on
  // the pass at 64k / 128k, 8 heads of head_dim 64), whole, products
  // included: with the branch between the products and the exponentials the
  // pass got slower in all but one configuration (0% to +6%), the
  // exponentials no longer filling the products' gaps. At head_dim 128 (8
  // warps an SM) and with offsets the pass with the band's code twice
  // measured -1% to +4% (docs/performance.md, round 60). Every key of such a
  // sub-tile exists too: it is at most its first query's position.
  constexpr bool kInnerSubtilesUnmasked = kWindowAlone && kHeadDim <= 64;
  constexpr bool kStoresDscores = kRoute != DkdvRoute::kAfterDq;
  constexpr bool kFractionalFirst = kRoute == DkdvRoute::kBeforeDq && !std::is_integral_v<OffsetT>;
  static_assert(!kTwoDiagonals || (kFractionalFirst && kSwizzledRows));
  static_assert(!kKeptFractionalRows || kTwoDiagonals);
  static_assert(!kWindowAlone || 2 * kChunk == kMmaBlockThreads, "delta: two threads a staged row");
  // 128-byte aligned: a swizzled stage's k-step XOR (swizzled_k_step) acts on
  // the shared address itself, so each stage must start on a 128-byte line.
  // (A name of its own: the other kernels' `smem` is declared 16-byte aligned,
  // and one name takes one alignment in a translation unit.)
  extern __shared__ __align__(128) uint16_t dkdv_smem[];
  uint16_t* const smem = dkdv_smem;
  // Fractional positions at head_dim 64: swizzled with the v rows in shared
  // memory and the two-diagonal product only (bwd_launch.cuh).
  static_assert(!kSwizzledRows ||
                (kRoute == DkdvRoute::kBeforeDq &&
                 (kHeadDim == 128 || (kHeadDim == 64 && (std::is_integral_v<OffsetT> || (kVInSmem && kTwoDiagonals))))));
  // Swizzled stages hold kBufRows rows of kHeadDim elements each, where the
  // padded ones took kBufRows rows of kHeadDim + 8: they start at the same
  // smem and end before the statistics.
  const auto stage_row_buffer = [&](int s, int which) {
    return kSwizzledRows ? reinterpret_cast<Rows<kHeadDim>>(smem + (2 * s + which) * kBufRows * kHeadDim)
                         : stage_buffer<kHeadDim>(smem, s, which);
  };
  const auto stage_q = [&](int s) { return stage_row_buffer(s, 0); };
  // One staged tensor's buffer, in bytes: the dO buffer lies this far after q's.
  constexpr uint32_t kStagedRowsBytes = kSwizzledRows ? kBufRows * kHeadDim * sizeof(uint16_t) : kStageBytes<kHeadDim>;
  const auto stage_do = [&](int s) { return stage_row_buffer(s, 1); };
  // Two statistics per staged row, after the four row buffers; then the window alone's O rows.
  float* stats_smem = reinterpret_cast<float*>(smem + 4 * kBufRows * (kHeadDim + 8));
  const auto stage_stat = [&](int s, int which) { return stats_smem + (2 * s + which) * kBufRows; };
  const auto stage_o = [&](int s) {
    return reinterpret_cast<Rows<kHeadDim>>(reinterpret_cast<char*>(smem) + kDkdvSmemBytes<kHeadDim>) + s * kBufRows;
  };
  const auto edge_rows = [&](int warp) {
    return reinterpret_cast<uint16_t*>(reinterpret_cast<char*>(smem) + kDkdvSmemBytes<kHeadDim>) +
           warp * kEdgeRows * kHeadDim;
  };
  // The window alone: delta = <dO, O> - dlse of stage s's queries, summed as
  // the dq pass sums it (half_row_dot), in place of the dlse staged there.
  // The threads of a row are neighbouring lanes of one warp. It runs once the
  // stage's rows have arrived, between the barrier that ends the previous
  // step and the one that starts the stage's step, so it adds no barrier.
  const auto form_deltas = [&](int s) {
    const int row = threadIdx.x / 2;
    float sum = half_row_dot<T, kHeadDim>(stage_o(s)[row], stage_do(s)[row], threadIdx.x % 2);
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    float* delta = stage_stat(s, 1);
    if (threadIdx.x % 2 == 0) delta[row] = sum - delta[row];
  };

  const int hk = blockIdx.y, b = blockIdx.z;
  const Sequence seq = sequence_of(p, b);
  if (int64_t(blockIdx.x) * kBlockRows >= seq.seqlen_k) return;  // past a packed sequence's end
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int warp_k0 = blockIdx.x * kBlockRows + 16 * warp;  // the warp's first key (= its position)
  const float scale = float(p.softmax_scale), scale_log2 = scale * float(M_LOG2E);
  const QuerySteps<OffsetT, kHeadDim> steps(p, seq, int64_t(blockIdx.x) * kBlockRows, hk);
  if constexpr (kFractionalFirst) {
    // The warp's edge rows (fractional_offset_step), in the first step's group.
    constexpr int kVecs = kHeadDim / 8;
    for (int i = lane; i < kEdgeRows * kVecs; i += 32) {
      const int row = i / kVecs, col = (i % kVecs) * 8;
      const int64_t key = warp_k0 + (row % 3 == 0 ? -1 : row % 3 == 1 ? 15 : 16);
      const bool valid = key >= 0 && key < seq.seqlen_k;
      const uint16_t* src =
          row < 3 ? bits<T>(p.k, seq.k_start(b, p.k_batch_stride, p.k_row_stride) + hk * p.k_head_stride +
                                     (valid ? key * p.k_row_stride : 0))
                  : bits<T>(p.v, seq.k_start(b, p.v_batch_stride, p.v_row_stride) + hk * p.v_head_stride +
                                     (valid ? key * p.v_row_stride : 0));
      copy_async_16(edge_rows(warp) + row * kHeadDim + col, src + col, valid);
    }
  }
  // kKeepsOffsets: an offset step's offset is read once, when the step is
  // queued, and kept for its products. Read again there, it was a wait on
  // memory between the step's barrier and its products, and on the route
  // before dq once more between its two rows' dS (reloaded, as the dS store
  // before might have written it); without both that pass took 0.3-9% less
  // time (docs/performance.md, round 66), the route after dq 0.3-1.3% less
  // at fractional head_dim 64 (round 72).
  constexpr bool kKeepsOffsets = kRoute != DkdvRoute::kWindowAlone;
  const auto read_offset = [&](auto s, bool exists) {
    return exists && !steps.is_band(s) ? steps.offsets(s.head)[steps.offset_index(s)] : OffsetT(-1);
  };
  auto issued = steps.first();  // the step queued last
  OffsetT issued_offset = kKeepsOffsets ? read_offset(issued, steps.num_steps > 0) : OffsetT(-1);
  steps.template issue<T, kRoute, kSwizzledRows>(issued, steps.num_steps > 0, b, stage_q(0), stage_do(0), stage_stat(0, 0),
                                  stage_stat(0, 1), stage_o(0), kKeepsOffsets ? &issued_offset : nullptr);

  uint32_t kf[kHeadDim / 16][4];
  load_a_fragments<kHeadDim>(bits<T>(p.k, seq.k_start(b, p.k_batch_stride, p.k_row_stride) + hk * p.k_head_stride),
                             p.k_row_stride, warp_k0, seq.seqlen_k, g, c, kf);
  const uint16_t* v_src = bits<T>(p.v, seq.k_start(b, p.v_batch_stride, p.v_row_stride) + hk * p.v_head_stride);
  static_assert(!kVInSmem || kRoute == DkdvRoute::kBeforeDq, "v rows in shared memory on the route before dq");
  std::conditional_t<kVInSmem, SharedFragments, uint32_t[kHeadDim / 16][4]> vf;
  if constexpr (kVInSmem) {
    // The warp's 16 v rows (zeros past the last key), after the pass's other buffers.
    constexpr int kBefore = kFractionalFirst ? kDkdvFractionalSmemBytes<kHeadDim> : kDkdvSmemBytes<kHeadDim>;
    Rows<kHeadDim> warp_v = reinterpret_cast<Rows<kHeadDim>>(reinterpret_cast<char*>(smem) + kBefore) + 16 * warp;
    stage_rows<kHeadDim, 16, 32>(warp_v, v_src, p.v_row_stride, warp_k0, seq.seqlen_k - 1, unsigned(lane));
    commit_async();
    wait_async<0>();
    __syncwarp();
    vf = shared_fragments_of<kHeadDim>(warp_v, lane);
  } else {
    load_a_fragments<kHeadDim>(v_src, p.v_row_stride, warp_k0, seq.seqlen_k, g, c, vf);
  }
  if constexpr (kWindowAlone) {
    if (steps.num_steps > 0) {
      wait_async<0>();
      __syncthreads();
      form_deltas(0);
    }
  }

  // kKeptRows (integer offsets, kBeforeDq): this lane's ldmatrix rows of its
  // warp's strip in stage 0, as shared-memory addresses taken through a
  // shuffle, which ptxas cannot recompute. It rebuilt them from the thread
  // index at every offset step, a chain of ~10 dependent instructions between
  // the step's barrier and its first ldmatrix; kept, the pass took 1.6-5.3%
  // less time (docs/performance.md, round 68).
  // kKeptBandRows: the band steps' rows of stage 0 kept the same way, at
  // head_dim 64 and below (the pass -1.4% to -2.1%). At head_dim 128, where
  // the pass holds 255 registers, they were no faster (+1.8% to -0.6%;
  // docs/performance.md, round 69).
  constexpr bool kKeptRows = kRoute == DkdvRoute::kBeforeDq && std::is_integral_v<OffsetT>;
  constexpr bool kKeptBandRows = kKeptRows && kHeadDim <= 64;
  uint32_t strip_dot_row = 0, strip_add_row = 0, band_dot_row = 0, band_add_row = 0;
  // Swizzled stages are read from these addresses in band steps too (a
  // padded row's pointer does not locate a swizzled chunk); at head_dim 128
  // the band's are not shuffled, so ptxas may recompute them where it needs
  // the registers.
  constexpr bool kBandRowsAt = kKeptBandRows || kSwizzledRows;
  // This lane's ldmatrix rows of the 16 rows from row `first` of stage 0's q
  // buffer (a multiple of 8), in the stage's layout.
  const auto dot_lane_row = [&](int first) {
    if constexpr (kSwizzledRows) {
      return swizzled_dot_lane_row<kHeadDim>(swizzled_rows_from<kHeadDim>(stage_q(0), first), lane);
    } else {
      return dot_16_rows_lane_row<kHeadDim>(stage_q(0) + first, lane);
    }
  };
  const auto add_lane_row = [&](int first) {
    if constexpr (kSwizzledRows) {
      return swizzled_add_lane_row<kHeadDim>(swizzled_rows_from<kHeadDim>(stage_q(0), first), lane);
    } else {
      return add_rows_lane_row<kHeadDim>(stage_q(0) + first, lane);
    }
  };
  if constexpr (kKeptRows) {
    strip_dot_row = __shfl_sync(0xffffffffu, dot_lane_row(steps.strip_row0(warp)), lane);
    strip_add_row = __shfl_sync(0xffffffffu, add_lane_row(steps.strip_row0(warp)), lane);
  }
  if constexpr (kBandRowsAt) {
    band_dot_row = dot_lane_row(0);
    band_add_row = add_lane_row(0);
  }
  if constexpr (kKeptBandRows) {
    band_dot_row = __shfl_sync(0xffffffffu, band_dot_row, lane);
    band_add_row = __shfl_sync(0xffffffffu, band_add_row, lane);
  }
  // kKeptFractionalRows: the fractional step's addresses in stage 0, each
  // through a shuffle so that ptxas keeps it; the v rows' (SharedFragments)
  // the same way, which band and offset steps alike read.
  FractionalStripRows kept_rows{};
  if constexpr (kKeptFractionalRows) {
    const int row0 = steps.strip_row0(warp), col = kHeadDim / 32 * lane;
    const auto shared_address = [](const void* at) { return static_cast<uint32_t>(__cvta_generic_to_shared(at)); };
    kept_rows.dot_row = __shfl_sync(0xffffffffu, swizzled_dot_lane_row<kHeadDim>(stage_q(0), lane, row0), lane);
    kept_rows.add_row = __shfl_sync(0xffffffffu, swizzled_add_lane_row<kHeadDim>(stage_q(0), lane, row0), lane);
    kept_rows.row0_columns =
        __shfl_sync(0xffffffffu, shared_address(swizzled_chunk<kHeadDim>(stage_q(0), row0, col) + col % 8), lane);
    kept_rows.lse_row = __shfl_sync(0xffffffffu, shared_address(stage_stat(0, 0) + row0 + g), lane);
    kept_rows.edge_columns = __shfl_sync(0xffffffffu, shared_address(edge_rows(warp) + col), lane);
    if constexpr (kVInSmem) vf.lane_row = __shfl_sync(0xffffffffu, vf.lane_row, lane);
  }
  float dk[kHeadDim / 8][4] = {}, dv[kHeadDim / 8][4] = {};
  // Fractional positions: whether the next warp forms this warp's row 16
  // share (NeighbourShares; off with FIBSPARSE_DKDV_NEXT_WARP_SHARE=0).
  NeighbourShares<kHeadDim> shares{p.dkdv_edge_rows != nullptr, {}, {}};
  auto step = steps.first();
  // Whether a step's rows are staged and read by each warp alone (QuerySteps::by_warp;
  // the window alone has no offset steps), for step n as the loop goes.
  const auto by_warp = [&](auto s, bool exists) { return !kWindowAlone && steps.by_warp(s, exists); };
  bool step_by_warp = by_warp(step, steps.num_steps > 0);
  for (int n = 0; n < steps.num_steps; ++n, step = steps.next(step)) {
    const OffsetT step_offset = issued_offset;  // step n's (kKeepsOffsets)
    issued = steps.next(issued);
    if constexpr (kKeepsOffsets) issued_offset = read_offset(issued, n + 1 < steps.num_steps);
    steps.template issue<T, kRoute, kSwizzledRows>(issued, n + 1 < steps.num_steps, b, stage_q((n + 1) % 2),
                                                   stage_do((n + 1) % 2),
                                    stage_stat((n + 1) % 2, 0), stage_stat((n + 1) % 2, 1), stage_o((n + 1) % 2),
                                    kKeepsOffsets ? &issued_offset : nullptr);
    wait_async<1>();
    if (step_by_warp) {
      sync_strip_group<1>(warp);
    } else {
      __syncthreads();
    }
    RowPtr<kHeadDim> rows_q = stage_q(n % 2), rows_do = stage_do(n % 2);
    const float* stat0 = stage_stat(n % 2, 0);
    const float* stat1 = stage_stat(n % 2, 1);
    if (steps.is_band(step)) {
      const uint32_t band_stage_bytes = uint32_t(n % 2) * 2 * kStagedRowsBytes;
      dkdv_band_step<T, kHeadDim, kStoresDscores, kInnerSubtilesUnmasked, kBandRowsAt, kSwizzledRows>(
          p, seq, b, step.head, blockIdx.x, step.index, steps.chunk_row(step), steps.band_last_row, warp_k0, kf, vf,
          rows_q, rows_do, stat0, stat1, dk, dv, lane, band_dot_row + band_stage_bytes,
          band_add_row + band_stage_bytes);
    } else {
      const OffsetSplit split = kKeepsOffsets ? split_offset(&step_offset, 0)
                                              : split_offset(steps.offsets(step.head), steps.offset_index(step));
      if (split.whole >= 0) {
        // Strip row x reads key x as its first row (weight 1 - f); strip row
        // x + 1 reads it as its second (weight f). Rows outside the queries
        // were staged with zero statistics.
        const int row0 = steps.strip_row0(warp);
        RowPtr<kHeadDim> strip_q = rows_q + row0, strip_do = rows_do + row0;
        if constexpr (kFractionalFirst && kSwizzledRows) {
          // Swizzled: the stages themselves, and the strip's first row.
          fractional_offset_step<T, kHeadDim, true, kTwoDiagonals, kKeptFractionalRows>(
              p, seq, b, step.head, steps.offset_index(step), &step_offset, split, kf, vf, rows_q, rows_do,
              stat0 + row0, stat1 + row0, edge_rows(warp), warp_k0, dk, dv, shares, lane, row0,
              kept_rows.at_stage(uint32_t(n % 2) * 2 * kStagedRowsBytes,
                                 uint32_t(n % 2) * 2 * kBufRows * uint32_t(sizeof(float))));
        } else if constexpr (kFractionalFirst) {
          fractional_offset_step<T, kHeadDim>(p, seq, b, step.head, steps.offset_index(step), &step_offset, split,
                                              kf, vf, strip_q, strip_do,
                                              stat0 + row0, stat1 + row0, edge_rows(warp), warp_k0, dk, dv,
                                              shares, lane);
        } else if constexpr (kRoute == DkdvRoute::kBeforeDq) {
          // Key x of the warp pairs with strip row x (an integer position): the
          // diagonals of K Q^T and V dO^T are its scores and dP, and the
          // staged statistics of row x its query's lse and delta. Its owner
          // lane (mma_tiles.cuh) stores dS for the dq pass.
          const int o = steps.offset_index(step);
          float st[2][4], dpt[2][4];
          // Stage n % 2's q rows are 2 (n % 2) buffers on, its dO rows one more (stage_buffer).
          constexpr uint32_t kBufferBytes = kStagedRowsBytes;
          const uint32_t stage_bytes = uint32_t(n % 2) * 2 * kBufferBytes;
          dot_16_rows_at<T, kHeadDim, 2, kOffsetChains<kHeadDim>, kSwizzledRows>(kf, strip_dot_row + stage_bytes, st,
                                                                                 0);
          dot_16_rows_at<T, kHeadDim, 2, kOffsetChains<kHeadDim>, kSwizzledRows>(vf, strip_dot_row + stage_bytes,
                                                                                 dpt, 0, kBufferBytes);
          const float* lse = stat0 + row0;
          const float* dlt = stat1 + row0;
          float prob[2], dscore[2];
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const int row = g + 8 * r;
            const int64_t query = warp_k0 + row + split.whole;  // its row and position (q_pos_shift 0 on this route)
            const bool valid = query < seq.seqlen_q &&
                               sample_key<float>(query, distance_of_offset(0, p.band), p.band, &step_offset).valid;
            const float lse_log2 = backward_lse(lse[row]) * float(M_LOG2E);
            prob[r] = valid ? fast_exp2(diagonal_element(st, r, g) * scale_log2 - lse_log2) : 0.f;
            dscore[r] = valid ? prob[r] * (diagonal_element(dpt, r, g) - dlt[row]) : 0.f;
            if (valid && owns_diagonal(lane)) {
              static_cast<float*>(p.offset_dscores)[offset_term_index(p, seq, b, step.head, o, query)] = dscore[r];
            }
          }
          add_diag_times_rows_at<T, kHeadDim, kSwizzledRows>(prob[0], prob[1], strip_add_row + stage_bytes, dv, lane,
                                                             kBufferBytes);
          add_diag_times_rows_at<T, kHeadDim, kSwizzledRows>(dscore[0], dscore[1], strip_add_row + stage_bytes, dk,
                                                             lane);
        } else {
          const float* probs = stat0 + row0;
          const float* dscores = stat1 + row0;
          const float w0 = 1.f - split.frac;
          add_diag_times_rows<T, kHeadDim>(w0 * probs[g], w0 * probs[g + 8], strip_do, dv, lane);
          add_diag_times_rows<T, kHeadDim>(w0 * dscores[g], w0 * dscores[g + 8], strip_q, dk, lane);
          if (split.frac != 0.f) {
            const float w1 = split.frac;
            add_diag_times_rows<T, kHeadDim>(w1 * probs[g + 1], w1 * probs[g + 9], strip_do + 1, dv, lane);
            add_diag_times_rows<T, kHeadDim>(w1 * dscores[g + 1], w1 * dscores[g + 9], strip_q + 1, dk, lane);
          }
        }
      }
    }
    if constexpr (kWindowAlone) wait_async<0>();  // the next step's rows, for form_deltas
    // The next iteration queues step n + 2 into this stage. If step n and
    // step n + 2 are both this warp's own, only this warp read the rows it
    // will overwrite; otherwise the whole block must be done with them.
    const bool next_by_warp = by_warp(issued, n + 1 < steps.num_steps);
    if (step_by_warp && by_warp(steps.next(issued), n + 2 < steps.num_steps)) {
      sync_strip_group<1>(warp);
    } else {
      __syncthreads();
    }
    step_by_warp = next_by_warp;
    if constexpr (kWindowAlone) {
      if (n + 1 < steps.num_steps) form_deltas((n + 1) % 2);
    }
  }
  // The rows this pass stores: with NeighbourShares, not the tile's last
  // key, which add_next_tile_shares_kernel stores.
  int stored_rows = seq.seqlen_k;
  if constexpr (kFractionalFirst) {
    if (shares.next_warp_shares) {
      const int64_t tile = blockIdx.x;
      hand_over_row0_shares(shares, edge_rows(warp), edge_rows(warp + 1 < kWarps ? warp + 1 : warp),
                            tile_edge_rows(p, seq, b, hk, tile, kHeadDim),
                            tile > 0 ? tile_edge_rows(p, seq, b, hk, tile - 1, kHeadDim) : nullptr, warp, dk, dv,
                            lane);
      stored_rows = min(stored_rows, int(blockIdx.x) * kBlockRows + kBlockRows - 1);
    }
  }
  store_rows<T, kHeadDim>(bits<T>(p.dk, seq.k_start(b, p.dk_batch_stride, p.dk_row_stride) + hk * p.dk_head_stride),
                          p.dk_row_stride, warp_k0, stored_rows, dk, scale, g, c);
  store_rows<T, kHeadDim>(bits<T>(p.dv, seq.k_start(b, p.dv_batch_stride, p.dv_row_stride) + hk * p.dv_head_stride),
                          p.dv_row_stride, warp_k0, stored_rows, dv, 1.f, g, c);
}

}  // namespace mma_bwd
}  // namespace fibsparse
