// The tensor-core backward with stored dS, on batches whose queries and keys
// line up (bwd_launch.cuh's stored_dscore_steps), for the window alone or with
// offsets, where the general backward (bwd_mma_kernel.cuh) has two passes that
// both recompute the band's scores and dP, and a dq pass that also computes
// each offset's:
//   delta pass (here; with offsets only): delta = <dO, O> - dlse per query
//     row (warp_row_deltas, the general dq pass's prologue), which the dk/dv
//     pass's offset steps need for queries of other blocks' bands;
//   dk/dv pass (bwd_mma_kernel.cuh, DkdvRoute kWindowAlone or kBeforeDq),
//     first: writes each band tile's dS to p.band_dscores, and each
//     (query, offset)'s dS to p.offset_dscores (for fractional positions also
//     its d loss / d position term, to p.offset_probs); the window alone forms
//     each staged query's delta from O rows it stages beside dO;
//   dq pass (here): dq = dS K over the band tiles and the offsets' strips, dS
//     read back rather than recomputed: no scores, exponentials or dO V^T
//     products, no v or dO rows; for fractional positions it sums the terms
//     into the general dq pass's partials of d loss / d position.
// A tile of 64 keys meets the queries of its own 64-row chunk and of the next
// band_dscore_steps - 1 chunks, so the dS buffer holds band_dscore_steps tiles
// of 64 x 64 per key tile and query head (packed sequences' tiles one after
// another: band_dscore_first_tile), each tile's sub-tiles of 16 x 16 in the
// products' fragment order (bwd_mma_kernel.cuh's dscore_subtile_offset): a
// sub-tile the band does not meet is neither written nor read. dS is rounded
// to 16 bits in both routes (the A operand of dS K); dq moves within
// rounding, since here the sub-tiles of 16 keys start at the key tiles' rows
// and the scores come from the dk/dv pass's products.
#pragma once

#include <cstdint>

#include "../fibsparse.h"
#include "../pattern.h"
#include "bwd_mma_kernel.cuh"
#include "block_steps.cuh"
#include "mma_tiles.cuh"
#include "offsets_check.cuh"

namespace fibsparse {
namespace mma_bwd {

// delta for every query row, a warp per 16 rows (warp_row_deltas); the grid's
// extra blocks check the offsets before any pass reads them (offsets_check.cuh).
// A block takes 64 rows of one head, the heads the faster-moving of the two
// in the order blocks start: blocks running together then read whole rows of
// O and dO (every head), not one head's slice of many rows, which DRAM
// serves in pieces of 128-256 bytes, one every heads * head_dim elements.
// The pass only streams O and dO, so it needs many bytes in flight: the
// register budget of 4 blocks a SM lets a thread issue all its loads (16 of
// 16 bytes at head_dim 128) before it waits on any. Left to ptxas without it,
// the kernel took 35 registers and issued them four at a time.
template <typename T, typename OffsetT, int kHeadDim>
__global__ void __launch_bounds__(kMmaBlockThreads, 4) delta_kernel(const Params p) {
  if (is_offsets_check_block()) return check_offsets_of_heads<OffsetT, 1>(p);
  const int tiles = gridDim.x - kOffsetsCheckBlocks;
  const int block = blockIdx.y * tiles + blockIdx.x;  // in start order
  const int h = block % p.heads, tile = block / p.heads, b = blockIdx.z;
  const Sequence seq = sequence_of(p, b);
  const int warp_q0 = tile * kBlockRows + 16 * (threadIdx.x / 32);
  if (warp_q0 >= seq.seqlen_q) return;
  const uint16_t* do_src =
      bits<T>(p.dout, seq.q_start(b, p.do_batch_stride, p.do_row_stride) + h * p.do_head_stride);
  float delta[2], lse_log2[2];
  warp_row_deltas<T, kHeadDim>(p, seq, b, h, warp_q0, do_src, stats_index(p, seq, b, h, 0), threadIdx.x % 32, delta,
                               lse_log2);
}

// The values a dq warp stages of one stored band tile in fragment order: its
// 16 queries' sub-tiles, 256 values each (dscore_subtile_offset).
constexpr int kWarpDscoreValues = (kChunk / 16) * 256;

// Dynamic shared memory of the window alone's dq pass: two stages of each
// warp's dS and the 64 k rows.
template <int kHeadDim>
constexpr int kDqFromDscoresSmemBytes =
    2 * (kWarps * kWarpDscoreValues + kChunk * (kHeadDim + 8)) * int(sizeof(uint16_t));

// Queues a dq warp's dS of one stored band tile (dscore_subtile_offset) to its
// kWarpDscoreValues at dst: each 16-key sub-tile the band meets, 16 bytes a
// lane, the lane's own fragment. The rest were never written; at window 128
// they are a quarter of the three tiles a query tile reads. A lane reads back
// only what it queued (add_staged_dscore_fragments_times_k), so these copies
// need its own wait for them and no barrier.
__device__ __forceinline__ void stage_own_dscore_fragments(uint16_t* dst, const uint16_t* tile, int warp,
                                                           int warp_q0, int64_t key0, Band band, int lane) {
  const uint16_t* src = tile + dscore_subtile_offset(warp, 0) + 8 * lane;
#pragma unroll
  for (int t16 = 0; t16 < kChunk / 16; ++t16) {
    if (band_meets(warp_q0, key0 + 16 * t16, band)) {  // warp-uniform
      copy_async_16(dst + 256 * t16 + 8 * lane, src + 256 * t16, true);
    }
  }
}

// dq += dS K over one band tile's staged fragments (stage_own_dscore_fragments)
// for the warp's 16 queries from warp_q0, against the tile's 64 staged k rows
// from key0.
// kSwizzled: rows_k is a swizzled stage (mma_tiles.cuh's swizzled_chunk).
template <typename T, int kHeadDim, bool kSwizzled = false>
__device__ __forceinline__ void add_staged_dscore_fragments_times_k(const uint16_t* staged, RowPtr<kHeadDim> rows_k,
                                                                    int warp_q0, int64_t key0, Band band,
                                                                    float (&dq)[kHeadDim / 8][4], int lane) {
  [[maybe_unused]] uint32_t lane_row = 0;
  if constexpr (kSwizzled) lane_row = swizzled_add_lane_row<kHeadDim>(const_cast<Rows<kHeadDim>>(rows_k), lane);
#pragma unroll
  for (int t16 = 0; t16 < kChunk / 16; ++t16) {
    if (!band_meets(warp_q0, key0 + 16 * t16, band)) continue;  // warp-uniform: never stored
    // Stored: dS^T's 8 x 8 blocks (keys +0 | +8, queries +0), then (keys +0
    // | +8, queries +8); dS's A fragment takes them transposed, in the order
    // (queries +0, keys +0), (+8, +0), (+0, +8), (+8, +8).
    const uint4 t = *reinterpret_cast<const uint4*>(staged + 256 * t16 + 8 * lane);
    const uint32_t a[4] = {transpose_8x8(t.x), transpose_8x8(t.z), transpose_8x8(t.y), transpose_8x8(t.w)};
    if constexpr (kSwizzled) {
      add_a_times_rows_at<T, kHeadDim, true>(a, lane_row, dq, 16 * t16 * kHeadDim * sizeof(uint16_t));
    } else {
      add_a_times_rows<T, kHeadDim>(a, rows_k + 16 * t16, dq, lane);
    }
  }
}

// Blocks per SM the window alone's dq pass keeps room for in registers: six
// at head_dim 64 and below (80 registers a thread), four at 128 (128). Left
// to ptxas it takes 82 and 130, of which the SM's register file, allotted in
// steps of 8 a thread, holds five and three blocks: at head_dim 128 that made
// the pass 5% slower (H200, docs/performance.md round 65).
template <int kHeadDim>
constexpr int kDqFromDscoresMinBlocks = kHeadDim <= 64 ? 6 : 4;

// The window alone's dq pass. A block = 64 queries of one head; its steps are
// the 64-key tiles its band reaches, the last one its own; each warp stages
// its own dS beside the block's k rows.
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kMmaBlockThreads, kDqFromDscoresMinBlocks<kHeadDim>)
    dq_from_dscores_kernel(const Params p) {
  extern __shared__ __align__(16) uint16_t smem[];
  const auto stage_ds = [&](int s, int warp) { return smem + (s * kWarps + warp) * kWarpDscoreValues; };
  const auto stage_k = [&](int s) {
    return reinterpret_cast<Rows<kHeadDim>>(smem + 2 * kWarps * kWarpDscoreValues) + s * kChunk;
  };
  const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z, hk = h / (p.heads / p.heads_kv);
  const Sequence seq = sequence_of(p, b);
  const int64_t q0 = int64_t(tile) * kBlockRows;  // queries sit at their rows' positions here
  if (q0 >= seq.seqlen_q) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int warp_q0 = int(q0) + 16 * warp;
  const uint16_t* k_src = bits<T>(p.k, seq.k_start(b, p.k_batch_stride, p.k_row_stride) + hk * p.k_head_stride);
  const int64_t first_key_tile = band_first_key(q0, p.band) / kChunk;
  const int num_steps = int(tile - first_key_tile) + 1;
  // The stored dS tile of band step n (one a key tile).
  const auto dscore_tile = [&](int n) {
    const int64_t key_tile = first_key_tile + n;
    return bits<T>(static_cast<const void*>(p.band_dscores),
                   band_dscore_index(p, seq, b, h, key_tile, int(tile - key_tile)));
  };
  const auto issue = [&](int n) {
    if (n < num_steps) {
      const int64_t key_tile = first_key_tile + n;
      stage_own_dscore_fragments(stage_ds(n % 2, warp), dscore_tile(n), warp, warp_q0, key_tile * kChunk, p.band, lane);
      stage_rows<kHeadDim, kChunk>(stage_k(n % 2), k_src, p.k_row_stride, key_tile * kChunk, seq.seqlen_k - 1);
    }
    commit_async();
  };

  issue(0);
  float dq[kHeadDim / 8][4] = {};
  for (int n = 0; n < num_steps; ++n) {
    issue(n + 1);
    wait_async<1>();
    __syncthreads();
    add_staged_dscore_fragments_times_k<T, kHeadDim>(stage_ds(n % 2, warp), stage_k(n % 2), warp_q0,
                                                     (first_key_tile + n) * kChunk, p.band, dq, lane);
    __syncthreads();  // stage n % 2 is refilled by the next iteration's issue
  }
  store_rows<T, kHeadDim>(bits<T>(p.dq, seq.q_start(b, p.dq_batch_stride, p.dq_row_stride) + h * p.dq_head_stride),
                          p.dq_row_stride, warp_q0, seq.seqlen_q, dq, float(p.softmax_scale), g, c);
}

// The k rows a stage of the dq pass with offsets holds: a band tile's 64, or
// the warps' strips of an offset step (mma_tiles.cuh's kWarpStripRows; with
// fractional positions a strip starts at its first query's second row, which
// the warp before also stages as its last).
template <bool kFrac>
constexpr int kDqKRows = kWarps * kWarpStripRows<kFrac> > kChunk ? kWarps * kWarpStripRows<kFrac> : kChunk;

// Whether the dq pass with offsets may take three stages instead of two. Its
// offset steps are one diagonal product a warp, so a step lasts about as long
// as its loads take to arrive. With three stages two steps' loads are in
// flight while a step's products run, and a step has one barrier where two
// stages need one on each side of the products. At head_dim 128 with two
// heads a block, where two blocks an SM fit with either, that takes 1.5-3% off
// the pass (GQA 32/8, 64k and 128k; H200, docs/performance.md round 46).
// Elsewhere the third stage costs more than it gives: at MHA head_dim 128 it
// leaves room for two blocks an SM where three fit (+20%), and at head_dim 64
// (+3-5%) it takes most of the L1 that the dS and offsets reads go through.
// The launch takes it only where two such blocks fit an SM
// (dq_takes_three_stages).
template <int kHeadDim, int kHeads>
constexpr bool kDqMayTakeThreeStages = kHeadDim >= 128 && kHeads >= 2;

// The 16-bit values a stage of the dq pass with offsets holds for each head's
// dS: a band tile's (each warp's kWarpDscoreValues), or an offset step's 64
// dS, float, and with fractional positions their 64 d(position) terms after
// them.
constexpr int kDqStagedDscoreValues = kWarps * kWarpDscoreValues;
static_assert(kDqStagedDscoreValues >= 2 * kBlockRows * int(sizeof(float) / sizeof(uint16_t)),
              "an offset step's dS and d(position) terms fit a head's stage");

// Dynamic shared memory of the dq pass with offsets, kHeads heads a block and
// kStages stages, each of each head's dS (kDqStagedDscoreValues) and the k rows.
template <int kHeadDim, int kHeads, bool kFrac = false, int kStages = 2>
constexpr int kDqWithOffsetsSmemBytes =
    kStages * (kHeads * kDqStagedDscoreValues + kDqKRows<kFrac> * (kHeadDim + 8)) * int(sizeof(uint16_t));

// Blocks per SM its registers must allow: those of the other passes
// (mma_tiles.cuh's kMinBlocksOfHeads), but two blocks of two heads at head_dim
// 128 (128 registers a thread, where 135 left one block of 8 warps): its offset
// steps are one product a warp, so it waits on its loads, and 16 warps keep
// more of them in flight.
template <int kHeadDim, int kHeads>
constexpr int kDqWithOffsetsMinBlocks = kHeadDim >= 128 && kHeads == 2 ? 2 : kMinBlocksOfHeads<kHeadDim, kHeads>;

// The sum of 16 floats in shared memory (16-byte aligned), as a tree in a
// fixed order (i with i + 8, then with i + 4, ...). Every lane of a warp
// that calls it reads the same addresses: one broadcast a load.
__device__ __forceinline__ float tree_sum_16(const float4& a, const float4& b, const float4& c, const float4& d) {
  const float s0 = a.x + c.x, s1 = a.y + c.y, s2 = a.z + c.z, s3 = a.w + c.w;
  const float s4 = b.x + d.x, s5 = b.y + d.y, s6 = b.z + d.z, s7 = b.w + d.w;
  return ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7));
}
// From a shared-memory address (one a kernel keeps).
__device__ __forceinline__ float tree_sum_16_at(uint32_t addr) {
  return tree_sum_16(load_shared_float4(addr), load_shared_float4(addr + 16), load_shared_float4(addr + 32),
                     load_shared_float4(addr + 48));
}

// The warp's partials of d loss / d position for offsets 0 .. reach - 1 (its
// block's offset steps; the rest are zero_doffsets_partials_from's), summed at
// once from p.offset_probs, where the dk/dv pass stored the terms, instead of
// staged and summed at every offset step: the dq pass with kPositionSumsFirst.
// A step's sum and store were 47 of its 312 warp instructions at head_dim 64
// (tree_sum_16, the partial's 64-bit index, the terms' copy); here a warp takes
// ~160 once for up to 16 offsets (~70 to set up, ~90 a round of 16), where a
// block has 11 offset steps on average at 64k tokens (13 Fibonacci offsets).
// Each partial is bitwise the step's: the same terms (zero where a query reads
// no key, sample_key as the step's copies ask it) summed in tree_sum_16's
// order. Two lanes an offset: lane 2 j + x holds queries x, x + 2, .., x + 14
// of offset o0 + j; it adds each k with k + 8 (tree_sum_16's s_k for k = x,
// x + 2, x + 4, x + 6), then s_x with s_{x+4} and s_{x+2} with s_{x+6}, then
// those two; one exchange with lane x ^ 1 ends the tree in lane x == 0, which
// stores the partial where the step would have, for warps whose first query is
// in the sequence.
template <typename OffsetT>
__device__ __forceinline__ void store_warp_doffsets_partials_first(const Params& p, const Sequence& seq,
                                                                   const OffsetT* offs, int reach, int b, int h,
                                                                   int warp_q0, int lane) {
  if (warp_q0 >= seq.seqlen_q) return;  // warp-uniform
  constexpr int kOffsetsPerRound = 16;
  const int j = lane / 2, x = lane % 2;
  const int t = distance_of_offset(0, p.band);  // sample_key's index of an offset's own value
  const float* terms = static_cast<const float*>(p.offset_probs) + offset_term_index(p, seq, b, h, 0, warp_q0 + x) +
                       j * p.stats_head_stride;
  float* partials = static_cast<float*>(p.doffsets_partial) +
                    doffsets_partial_index(p, j, b, h, warp_q0 / kCudaQueriesPerPartial);
  const int64_t terms_step = kOffsetsPerRound * p.stats_head_stride;
  // doffsets_partial_index moves by batch x num_partials an offset.
  const int64_t partials_step = kOffsetsPerRound * int64_t(p.batch) * p.num_partials;
  for (int o = j; o - j < reach; o += kOffsetsPerRound) {
    float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};  // queries x + 2 r
    if (o < reach) {
      const OffsetT offset = offs[o];
#pragma unroll
      for (int r = 0; r < 8; ++r) {
        const int64_t i = warp_q0 + x + 2 * r;
        if (i < seq.seqlen_q && sample_key<float>(i, t, p.band, &offset).valid) v[r] = terms[2 * r];
      }
    }
    // v[r] + v[r + 4]: queries k and k + 8 for k = x + 2 r.
    float sum = ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    if (x == 0 && o < reach) *partials = sum;
    terms += terms_step;
    partials += partials_step;
  }
}

// The dq pass with offsets. A block = 64 queries of kHeads heads of one kv
// group (mma_tiles.cuh's heads_per_block: they share their offsets), 4 warps a
// head; its steps are the 64-key tiles its band reaches, the last one its
// own, then one strip of k rows per offset within its reach, staged once for
// all its heads with each head's 64 dS of that offset (a strip of 16 rows per
// warp, or for fractional positions 17, from the second row of its first
// query: kWarpStripRows).
// kSwizzledK (integer offsets at head_dim 64 and 128; fractional positions at
// 64 with kRow16InRegisters): the k stages are swizzled (mma_tiles.cuh's
// swizzled_chunk), not padded. Fractional strips of 17 rows start at row
// 17 w, not a multiple of 8, so each swizzled row's address is formed on its
// own, and the pass was 2.5-3.2% slower on them at head_dim 128 and 1.1-2.6%
// at 64 (docs/performance.md, rounds 100 and 104); with row 16 in registers
// every strip is 16 rows from row 16 w, as the integer pass's: a fractional
// position's from its first query's second row, a whole one's from its
// first row.
// kTwoDiagonals (fractional positions, head_dim 64 and 128): a step's two rows of
// each query in one product (two_diagonals_a_fragment) where two diagonal
// products took twice the products and transposed loads (6-8% off the pass,
// docs/performance.md, round 98).
// kPositionSumsFirst (fractional positions, with kTwoDiagonals): the warp's
// partials of d loss / d position are summed once, before the steps, from
// the terms the dk/dv pass stored (store_warp_doffsets_partials_first), so an
// offset step neither stages nor sums them; their loads overlap the first
// step's copies. dq and the partials are bitwise those of the steps' sums.
// kOffsetAhead: issue() takes its offset from a register loaded by the issue
// before it (the first one before the steps) and loads the next one there,
// rather than loading its own, on which the copies' validity (the offset,
// its split, the branch on its whole part) would wait, an L1 or L2 hit, at
// every offset step, before any copy could issue. The load one step ahead is
// of the next offset within reach, clamped to the last one (never past it):
// the same values in the same order, so dq and d offsets are bitwise equal
// either way.
// kRow16InRegisters (with kTwoDiagonals, head_dim 64): a fractional strip's
// row 16, query 15's first row, which the two-diagonal product leaves to
// row15_first, is not staged: the issue loads this lane's columns of it
// (lane_row_dot_at's, one 4-byte load) into a register that the step takes,
// a whole iteration later, where it read them from the staged row. The
// strip is then 16 rows: with one head a block four rounds of copies a lane,
// where 17 take five and a check on the fifth. A whole position, whose
// diagonal product reads rows 1-16, stages all 17 on padded stages. The same
// values in the same sums: dq bitwise equal.
// kQueuedFraction (with the four above): an offset step's work that depends
// only on the lane or on the offset is formed once, not at every step. The
// queue carries the step's fraction rather than its offset, so the step does
// not split the position again (a 64-bit F2I, a FRND, their add and tests);
// as in the integer step, every offset within reach is a distance, so the
// step does not test its whole part either: offsets_within_reach ends at the
// last one within reach, and the offsets check that runs before the passes
// (delta_kernel's extra blocks) stops the call unless each row is
// increasing, finite and >= 0 with padding only at its end, so every offset
// before that one is a distance too.
// The two-diagonal A fragment is two conversions and three byte permutes of
// them by selectors the lane forms before the steps
// (two_diagonals_a_fragment_by_selectors), not a chain of tests and selects;
// row 16's load adds a per-lane distance, formed before the steps, to the
// strip copy's own source address, and the issue splits the position with a
// 32-bit whole part. The same values in the same products and sums: dq
// bitwise equal.
template <typename T, typename OffsetT, int kHeadDim, int kHeads, int kStages, bool kSwizzledK = false,
          bool kTwoDiagonals = false, bool kPositionSumsFirst = false, bool kOffsetAhead = false,
          bool kRow16InRegisters = false, bool kQueuedFraction = false>
__global__ void __launch_bounds__(kHeads * kMmaBlockThreads, kDqWithOffsetsMinBlocks<kHeadDim, kHeads>)
    dq_from_dscores_with_offsets_kernel(const Params p) {
  constexpr bool kFrac = !std::is_integral_v<OffsetT>;
  static_assert(!kSwizzledK || (!kFrac && (kHeadDim == 64 || kHeadDim == 128)) || kRow16InRegisters);
  static_assert(!kTwoDiagonals || (kFrac && (kHeadDim == 64 || kHeadDim == 128)));
  static_assert(!kPositionSumsFirst || kTwoDiagonals);
  static_assert(!kRow16InRegisters || (kTwoDiagonals && kHeadDim == 64), "one 4-byte load of row 16 a lane");
  constexpr int kThreads = kHeads * kMmaBlockThreads;
  // 128-byte aligned: a swizzled stage's k-step XOR (swizzled_k_step) acts on
  // the shared address itself, so each k stage must start on a 128-byte line
  // (a name of its own, as dkdv_mma_kernel's).
  extern __shared__ __align__(128) uint16_t dq_smem[];
  const auto stage_ds = [&](int s, int head) { return dq_smem + (s * kHeads + head) * kDqStagedDscoreValues; };
  constexpr int kStageKValues = kDqKRows<kFrac> * (kSwizzledK ? kHeadDim : kHeadDim + 8);
  static_assert(!kSwizzledK || kDqStagedDscoreValues * sizeof(uint16_t) % 128 == 0, "k stages on 128-byte lines");
  // Where warp w's strip starts in a k stage: 16 rows from row 16 w, or
  // fractional strips of 17 rows from row 17 w (kWarpStripRows).
  constexpr bool kSixteenRowStrips = !kFrac || (kRow16InRegisters && kSwizzledK);
  static_assert(!kQueuedFraction || (kFrac && kTwoDiagonals && kPositionSumsFirst && kOffsetAhead && kRow16InRegisters),
                "the queued fraction with the fractional pass's other forms");
  const auto stage_k = [&](int s) {
    if constexpr (kSwizzledK) {
      return reinterpret_cast<Rows<kHeadDim>>(dq_smem + kStages * kHeads * kDqStagedDscoreValues + s * kStageKValues);
    } else {
      return reinterpret_cast<Rows<kHeadDim>>(dq_smem + kStages * kHeads * kDqStagedDscoreValues) + s * kDqKRows<kFrac>;
    }
  };
  // A strip's first row in a stage: swizzled stages hold kHeadDim values a row.
  const auto strip_of = [&](Rows<kHeadDim> stage, int row0) {
    if constexpr (kSwizzledK) {
      return swizzled_rows_from<kHeadDim>(stage, row0);
    } else {
      return stage + row0;
    }
  };
  const int tile = blockIdx.x, first_head = blockIdx.y * kHeads, b = blockIdx.z;
  const int hk = first_head / (p.heads / p.heads_kv);
  const Sequence seq = sequence_of(p, b);
  const int64_t q0 = int64_t(tile) * kBlockRows;  // queries sit at their rows' positions here
  if (q0 >= seq.seqlen_q) return;
  const int head = threadIdx.x / kMmaBlockThreads, h = first_head + head;  // this thread's
  const int head_thread = threadIdx.x % kMmaBlockThreads;
  const int warp = head_thread / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int warp_q0 = int(q0) + 16 * warp;
  const uint16_t* k_src = bits<T>(p.k, seq.k_start(b, p.k_batch_stride, p.k_row_stride) + hk * p.k_head_stride);
  const int64_t first_key_tile = band_first_key(q0, p.band) / kChunk;
  const int band_steps = int(tile - first_key_tile) + 1;
  // The block's heads share this row of offsets (one head a block otherwise).
  const OffsetT* offs = static_cast<const OffsetT*>(p.offsets) + first_head * p.offsets_head_stride;
  const int num_steps = band_steps + offsets_within_reach(offs, p.num_offsets, q0 + kBlockRows - 1);
  // This thread's query's (lanes 0-15) dS of offset 0; offset o's is
  // o * stats_head_stride further (offset_term_index).
  const int64_t dscore_row = offset_term_index(p, seq, b, h, 0, q0 + 16 * warp + lane % 16);
  // The stored dS tile of band step n (one a key tile), for this thread's head.
  const auto dscore_tile = [&](int n) {
    const int64_t key_tile = first_key_tile + n;
    return bits<T>(static_cast<const void*>(p.band_dscores),
                   band_dscore_index(p, seq, b, h, key_tile, int(tile - key_tile)));
  };
  // Queues step n; returns its offset (-1 for a band step or none), which
  // the step itself takes from the queue below.
  // kOffsetAhead: the offset of the next offset step issue() queues (read
  // only where there is one within reach).
  [[maybe_unused]] OffsetT ahead_offset = OffsetT(-1);
  if constexpr (kOffsetAhead) {
    if (num_steps > band_steps) ahead_offset = offs[0];
  }
  // kRow16InRegisters: this lane's columns of strip row 16 of the offset step
  // queued last (zero where that key does not exist or the step stages row
  // 16); a band step's issue, or one past the last step, leaves it as it is,
  // and no step reads it for those.
  [[maybe_unused]] uint32_t issued_row16 = 0;
  // kQueuedFraction: this thread's first copy in a strip's stage_rows (its
  // row r0 = thread / kVecs and column col = thread % kVecs * 8, stage_rows's
  // mapping), and the distance from that copy's source to this lane's row 16
  // columns (kHeadDim / 32 lane), in elements: the load then adds it to that
  // pointer rather than forming its own 64-bit row index. The distance goes
  // through a shuffle, which ptxas cannot recompute at every step.
  constexpr int kCopyVecs = kHeadDim / 8;
  [[maybe_unused]] const int copy_row0 = (32 * head + lane) / kCopyVecs;
  [[maybe_unused]] const int copy_col = (32 * head + lane) % kCopyVecs * 8;
  [[maybe_unused]] int64_t row16_delta = 0;
  if constexpr (kQueuedFraction) {
    const int64_t delta = (16 - copy_row0) * p.k_row_stride + (kHeadDim / 32 * lane - copy_col);
    row16_delta = static_cast<int64_t>(__shfl_sync(0xffffffffu, static_cast<unsigned long long>(delta), lane));
  }
  const auto issue = [&](int n) {
    OffsetT queued = OffsetT(-1);
    if (n < band_steps) {
      const int64_t key_tile = first_key_tile + n;
      stage_own_dscore_fragments(stage_ds(n % kStages, head) + warp * kWarpDscoreValues, dscore_tile(n), warp, warp_q0,
                                 key_tile * kChunk, p.band, lane);
      stage_rows<kHeadDim, kChunk, kThreads, false, kSwizzledK>(stage_k(n % kStages), k_src, p.k_row_stride,
                                                                key_tile * kChunk, seq.seqlen_k - 1);
    } else if (n < num_steps) {
      // Query q0 + 16 w + x reads key q0 + 16 w + x - whole, at row x of warp
      // w's strip (fractional: at row x + 1, its second row at x); the dk/dv
      // pass stored dS only for queries that read a key (sample_key), the
      // rest are zero-filled here.
      const int o = n - band_steps;
      // Read once (the copies' validity below takes it from here): each read
      // is a wait on memory in the step (docs/performance.md, round 66).
      const OffsetT offset = kOffsetAhead ? ahead_offset : offs[o];
      if constexpr (kOffsetAhead) ahead_offset = offs[min(o + 1, num_steps - band_steps - 1)];
      queued = offset;
      // kQueuedFraction: split_offset's split for offsets >= 0 (whole < 2^31:
      // the offsets are increasing, so every one within reach is at most the
      // last within reach, at most q0 + kBlockRows - 1), its whole part in 32
      // bits and tested through the offset's sign, without its -1.
      const OffsetSplit split =
          kQueuedFraction ? OffsetSplit{int(floorf(float(offset))), float(offset) - floorf(float(offset))}
                          : split_offset(&offset, 0);
      if constexpr (kQueuedFraction) queued = OffsetT(split.frac);
      const int64_t whole = split.whole;
      if constexpr (kRow16InRegisters) issued_row16 = 0;
      if (kQueuedFraction ? offset >= OffsetT(0) : whole >= 0) {
        // Warp w of each head reads only its strip of k rows (16, or for
        // fractional positions 17, from the second row of its first query),
        // so those kHeads warps stage it (steps_by_group), with each head's
        // dS of the warp's 16 queries (and their d(position) terms).
        const int64_t first = q0 - whole - (kFrac ? 1 : 0) + 16 * warp;
        Rows<kHeadDim> strip = strip_of(stage_k(n % kStages), warp_strip_row0<!kSixteenRowStrips>(warp));
        if (kRow16InRegisters && split.frac != 0.f) {
          stage_rows<kHeadDim, 16, 32 * kHeads, false, kSwizzledK>(strip, k_src, p.k_row_stride, first,
                                                                  seq.seqlen_k - 1, unsigned(32 * head + lane));
          const int64_t key = first + 16;
          if constexpr (kQueuedFraction) {
            if (uint64_t(key) < uint64_t(seq.seqlen_k)) {  // key >= 0 && key < seqlen_k
              // stage_rows's source row pointer, the same expression (one value).
              const uint16_t* copy_src = k_src + (first + copy_row0) * p.k_row_stride + copy_col;
              issued_row16 = *reinterpret_cast<const uint32_t*>(copy_src + row16_delta);
            }
          } else if (key >= 0 && key < seq.seqlen_k) {
            issued_row16 = *reinterpret_cast<const uint32_t*>(k_src + key * p.k_row_stride + kHeadDim / 32 * lane);
          }
        } else if (kRow16InRegisters && kSixteenRowStrips) {
          // A whole position's strip: its queries' first rows alone.
          stage_rows<kHeadDim, 16, 32 * kHeads, false, kSwizzledK>(strip, k_src, p.k_row_stride, first + 1,
                                                                  seq.seqlen_k - 1, unsigned(32 * head + lane));
        } else {
          stage_rows<kHeadDim, kWarpStripRows<kFrac>, 32 * kHeads, false, kSwizzledK>(
              strip, k_src, p.k_row_stride, first, seq.seqlen_k - 1, unsigned(32 * head + lane));
        }
        if (lane < 16) {
          const int64_t i = q0 + 16 * warp + lane;
          const bool valid =
              i < seq.seqlen_q && sample_key<float>(i, distance_of_offset(0, p.band), p.band, &offset).valid;
          const int64_t at = valid ? dscore_row + o * p.stats_head_stride : 0;
          float* staged = reinterpret_cast<float*>(stage_ds(n % kStages, head)) + 16 * warp + lane;
          copy_async_4(staged, static_cast<const float*>(p.offset_dscores) + at, valid);
          if constexpr (kFrac && !kPositionSumsFirst) {
            copy_async_4(staged + kBlockRows, static_cast<const float*>(p.offset_probs) + at, valid);
          }
        }
      }
    }
    commit_async();
    return queued;
  };

  // An offset's step (or none) is staged and read by the group of warp
  // `warp` of each head alone: the barriers between offset steps are the
  // group's. Two stages: step n + 1 is queued, then a barrier puts step n's
  // rows in place for all that read them; one after the products lets step
  // n + 2 refill the stage. Three stages: one barrier, after which step n's
  // rows are in place and step n - 1's readers are done with the stage that
  // step n + 2, queued next, refills.
  static_assert(kStages == 2 || kStages == 3);
  const auto steps_by_group = [&](int n) { return n >= band_steps; };
  // The offsets of the steps queued and not yet run, step n's first: a
  // fractional step takes its position from here. Read again from memory
  // after the step's barrier, it was a wait in front of the step's products
  // (0.4-3.6% of the pass at head_dim 128; docs/performance.md, round 67).
  OffsetT queued[kStages - 1];
  [[maybe_unused]] uint32_t queued_row16[kStages - 1] = {};  // kRow16InRegisters: issued_row16 of each
  queued[0] = issue(0);
  if constexpr (kRow16InRegisters) queued_row16[0] = issued_row16;
  if constexpr (kStages == 3) {
    queued[1] = issue(1);
    if constexpr (kRow16InRegisters) queued_row16[1] = issued_row16;
  }
  if constexpr (kPositionSumsFirst) {
    store_warp_doffsets_partials_first(p, seq, offs, num_steps - band_steps, b, h, warp_q0, lane);
  }
  // This lane's transposed-ldmatrix row of its warp's strip in stage 0 and
  // its dS values' row there (and with fractional positions the warp's
  // d(position) terms), as shared-memory addresses taken through a shuffle,
  // which ptxas cannot recompute. It rebuilt them at every offset step from
  // the shared window's base; kept, the pass took up to 3.7% less time with
  // integer offsets and 2.8-3.6% less with fractional positions
  // (docs/performance.md, rounds 68 and 96).
  uint32_t strip_add_row, dscore_row_addr, terms_addr = 0, row16_addr = 0;
  {
    if constexpr (kFrac && kTwoDiagonals && !kRow16InRegisters) {  // this lane's columns of the strip's row 16
      const uint16_t* row16 = (stage_k(0) + warp_strip_row0<!kSixteenRowStrips>(warp))[16] + kHeadDim / 32 * lane;
      row16_addr = __shfl_sync(0xffffffffu, static_cast<uint32_t>(__cvta_generic_to_shared(row16)), lane);
    }
    uint32_t lane_row;
    if constexpr (kSwizzledK) {
      lane_row = swizzled_add_lane_row<kHeadDim>(strip_of(stage_k(0), warp_strip_row0<!kSixteenRowStrips>(warp)), lane);
    } else {
      lane_row = add_rows_lane_row<kHeadDim>(stage_k(0) + warp_strip_row0<!kSixteenRowStrips>(warp), lane);
    }
    strip_add_row = __shfl_sync(0xffffffffu, lane_row, lane);
    const float* own = reinterpret_cast<const float*>(stage_ds(0, head)) + 16 * warp + g;
    dscore_row_addr = __shfl_sync(0xffffffffu, static_cast<uint32_t>(__cvta_generic_to_shared(own)), lane);
    if constexpr (kFrac && !kPositionSumsFirst) {  // the warp's 16 d(position) terms
      const float* terms = reinterpret_cast<const float*>(stage_ds(0, head)) + 16 * warp + kBlockRows;
      terms_addr = __shfl_sync(0xffffffffu, static_cast<uint32_t>(__cvta_generic_to_shared(terms)), lane);
    }
  }
  constexpr uint32_t kStageKBytes = kStageKValues * sizeof(uint16_t);
  constexpr uint32_t kStageDscoreBytes = kHeads * kDqStagedDscoreValues * sizeof(uint16_t);
  float dq[kHeadDim / 8][4] = {};
  // kTwoDiagonals: the terms of query 15's first rows (strip row 16, outside
  // the two-diagonal product), in this lane's columns.
  float row15_first[kHeadDim >= 32 ? kHeadDim / 32 : 1] = {};
  // kQueuedFraction: this lane's byte selectors of the two-diagonal A fragment
  // (two_diagonals_selectors), formed once rather than its tests at every step
  // (through a shuffle, as the addresses above, or ptxas forms a[2]'s again).
  [[maybe_unused]] uint32_t two_diagonals_sel = 0;
  if constexpr (kQueuedFraction) two_diagonals_sel = __shfl_sync(0xffffffffu, two_diagonals_selectors(lane), lane);
  for (int n = 0; n < num_steps; ++n) {
    OffsetT next;
    if constexpr (kStages == 2) next = issue(n + 1);
    wait_async<1>();
    sync_step<kHeads>(steps_by_group(kStages == 2 ? n : n - 1), warp);
    if constexpr (kStages == 3) next = issue(n + 2);
    const OffsetT step_offset = queued[0];
#pragma unroll
    for (int i = 0; i + 1 < kStages - 1; ++i) queued[i] = queued[i + 1];
    queued[kStages - 2] = next;
    [[maybe_unused]] uint32_t step_row16 = 0;
    if constexpr (kRow16InRegisters) {
      step_row16 = queued_row16[0];
#pragma unroll
      for (int i = 0; i + 1 < kStages - 1; ++i) queued_row16[i] = queued_row16[i + 1];
      queued_row16[kStages - 2] = issued_row16;
    }
    if (n < band_steps) {
      add_staged_dscore_fragments_times_k<T, kHeadDim, kSwizzledK>(
          stage_ds(n % kStages, head) + warp * kWarpDscoreValues, stage_k(n % kStages), warp_q0,
          (first_key_tile + n) * kChunk, p.band, dq, lane);
    } else if constexpr (!kFrac) {
      // dq of query x += dS_x times its key, row x of the warp's strip. Every
      // offset within reach is a distance (padding only ends a row, and
      // offsets_within_reach stops before it), so its strip and dS were staged.
      const uint32_t stage = uint32_t(n % kStages);
      const uint32_t ds_at = dscore_row_addr + stage * kStageDscoreBytes;  // rows g and g + 8, 32 bytes on
      const float ds_g = load_shared_float(ds_at), ds_g8 = load_shared_float(ds_at + 32);
      add_diag_times_rows_at<T, kHeadDim, kSwizzledK>(ds_g, ds_g8, strip_add_row + stage * kStageKBytes, dq, lane);
    } else {
      [[maybe_unused]] const int o = n - band_steps;
      const OffsetSplit split = kQueuedFraction ? OffsetSplit{0, float(step_offset)} : split_offset(&step_offset, 0);
      const uint32_t stage = uint32_t(n % kStages);
      if (split.whole >= 0) {
        // dq of query x += dS_x ((1 - f) its first row, strip row x + 1, + f
        // its second, strip row x); at f == 0 the second row is not
        // multiplied in (0 times a non-finite row is NaN).
        const float w0 = 1.f - split.frac, w1 = split.frac;
        // The strip's row 0 holds the second rows, the first ones are a row
        // on: padded, a fixed number of bytes on (a whole position's
        // 16-row strip holds its first rows from row 0).
        const uint32_t ds_at = dscore_row_addr + stage * kStageDscoreBytes;
        const uint32_t rows = strip_add_row + stage * kStageKBytes;
        const float ds_g = load_shared_float(ds_at), ds_g8 = load_shared_float(ds_at + 32);
        constexpr uint32_t kRowBytes = (kHeadDim + 8) * sizeof(uint16_t);
        if (kTwoDiagonals && w1 != 0.f) {
          // Both rows in one product against strip rows 0-15: query x's f dS
          // at column x, (1 - f) dS at x + 1; query 15's first row, strip row
          // 16, in row15_first (its helpers exist at head_dim 64 and 128
          // alone, so other head_dims do not instantiate this).
          if constexpr (kTwoDiagonals) {
            if constexpr (kQueuedFraction) {
              uint32_t a[4];
              two_diagonals_a_fragment_by_selectors<T>(w1 * ds_g, w1 * ds_g8, w0 * ds_g, w0 * ds_g8, two_diagonals_sel,
                                                       a);
              add_a_times_rows_at<T, kHeadDim, kSwizzledK>(a, rows, dq);
            } else {
              add_two_diagonals_times_rows_at<T, kHeadDim, kSwizzledK>(w1 * ds_g, w1 * ds_g8, w0 * ds_g, w0 * ds_g8,
                                                                       rows, dq, lane);
            }
            if constexpr (kRow16InRegisters) {
              // Lane 28's w0 * ds_g8 (query 15's), the same product every lane formed.
              add_lane_columns_times<T, kHeadDim>(__shfl_sync(0xffffffffu, w0 * ds_g8, 28), {step_row16}, row15_first);
            } else {
              const float ds15 = __shfl_sync(0xffffffffu, ds_g8, 28);
              add_lane_row_times_at<T, kHeadDim>(w0 * ds15, row16_addr + stage * kStageKBytes, row15_first);
            }
          }
        } else if constexpr (kSixteenRowStrips) {  // a whole position (kTwoDiagonals): its first rows alone
          add_diag_times_rows_at<T, kHeadDim, kSwizzledK>(w0 * ds_g, w0 * ds_g8, rows, dq, lane);
        } else {
          add_diag_times_rows_at<T, kHeadDim>(w0 * ds_g, w0 * ds_g8, rows, dq, lane, kRowBytes);
          if (w1 != 0.f) add_diag_times_rows_at<T, kHeadDim>(w1 * ds_g, w1 * ds_g8, rows, dq, lane);
        }
      }
      // The warp's partial of d loss / d position (here unless
      // kPositionSumsFirst summed them all before the steps): the staged terms
      // of its 16 queries (zero where a query reads no key), summed by every
      // lane from shared memory (tree_sum_16). Summed across the warp through
      // shuffles instead, each step waited on five dependent exchanges
      // (docs/performance.md, round 74).
      static_assert(kDqStagedDscoreValues * sizeof(uint16_t) % 16 == 0 && kBlockRows % 4 == 0,
                    "tree_sum_16 reads 16-byte aligned terms");
      if constexpr (!kPositionSumsFirst) {
        const float warp_sum = split.whole >= 0 ? tree_sum_16_at(terms_addr + stage * kStageDscoreBytes) : 0.f;
        store_warp_doffsets_partial(p, seq, o, b, h, warp_q0, warp_sum, lane);
      }
    }
    if constexpr (kStages == 2) sync_step<kHeads>(steps_by_group(n) && steps_by_group(n + 2), warp);
  }
  if constexpr (kFrac) zero_doffsets_partials_from(p, seq, num_steps - band_steps, b, h, warp_q0, lane);
  if constexpr (kFrac && kTwoDiagonals) add_lane_columns_to_row15<kHeadDim>(row15_first, dq, lane);
  store_rows<T, kHeadDim>(bits<T>(p.dq, seq.q_start(b, p.dq_batch_stride, p.dq_row_stride) + h * p.dq_head_stride),
                          p.dq_row_stride, warp_q0, seq.seqlen_q, dq, float(p.softmax_scale), g, c);
}

}  // namespace mma_bwd
}  // namespace fibsparse
