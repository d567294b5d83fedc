// The forward on Hopper (sm_90a), for 16-bit inputs on dense and packed batches
// (tensor_maps.h's hopper_forward_applies): the band on warpgroup
// products (wgmma.cuh) fed by TMA (tma.cuh), with a producer warpgroup and consumer
// warpgroups handing shared-memory stages through mbarriers.
//
// A block's consumer warpgroups each hold 64 rows of queries: one head's 64
// consecutive queries, or (kHeadsPerWarpgroup == 2) two heads' 32, in
// alternating boxes of 8 rows ("Interleaved heads" below). A tile is the tile
// queries (64 / kHeadsPerWarpgroup) of all the block's heads, which belong to
// one kv group and share one row of offsets (when there are several). Two
// heads a warpgroup halve what an offset's strip costs per head: the strip is
// as many rows as the tile has queries, read once for twice the heads.
// A block walks `tiles_per_block` consecutive tiles, so that its next tile's
// loads overlap the end of its current one: a block that stopped after one
// tile left its SM idle while the next block started and waited for its first
// loads, and at one block per SM that was a large part of a tile's time. Warp
// w of a warpgroup owns its rows 16 w .. 16 w + 15, as in the mma.sync forward
// (fwd_mma_kernel.cuh), whose per-warp code it shares: 16 queries of one head,
// or with two heads the same 8 queries of both heads
// ("Interleaved heads" below), which halves an offset step's products. For each tile the block
// walks steps of k and v rows, staged once for all its heads:
//   Band: the chunks of 64 keys that end at the last query of the tile's
//     64-query span (the tile itself, or the two 32-query tiles it is one of)
//     and reach back past its first query's window. Each warpgroup scores a
//     chunk with one 64 x 64 product (S = Q K^T, q and k from shared memory),
//     masks it to the band, updates its online softmax per warp, and adds P V
//     with P in registers.
//   Offsets: one strip per offset, each step staging kHeadsPerWarpgroup strips
//     (of consecutive offsets) in its 64 rows. For distance d, a strip is the
//     rows p0 - d .. for the tile's queries p0 ..; a warp scores its 16 queries
//     against their 16 rows with mma.sync and keeps the diagonal, as in the
//     mma.sync forward (interleaved heads: its 8 queries of both heads against
//     their 8 rows). A fractional position a + f (f > 0) also reads each
//     query's row one further back: its step stages the 8 rows before the
//     strip too (a prefix, tma.cuh), and a warp scores its rows one back as
//     well (for a strip's first query, the prefix's last row), mixing the
//     two diagonals as the mma.sync forward does.
// The band's steps are software-pipelined: a warpgroup queues a chunk's Q K^T
// and the previous chunk's P V before its softmax, so the tensor cores work
// meanwhile.
// A tile's output leaves through its q buffer and TMA stores where a block
// has two consumer warpgroups (kOutputThroughTileOf below), else straight
// from registers.
// One thread of the block's last warpgroup (the producer) issues every TMA
// load: each tile's q into one of two q buffers, then each of its steps into a
// ring of kStages stages that runs on from tile to tile; a buffer's or stage's
// "full" barrier counts its bytes in, its "empty" barrier counts the consumer
// warps done with it.
// Rows before the sequence or past its end load as zeros (the maps' bounds: a
// packed batch's sequences have maps of their own, sequence_maps.cuh), and
// masked scores are -inf, so those rows add nothing. The kernel makes no
// function call, which would make ptxas serialize its wgmma: the offsets are
// checked by a launch of their own before it (offsets_check.cuh).
#pragma once

#include <cuda.h>

#include <cmath>
#include <type_traits>

#include "../fibsparse.h"
#include "../pattern.h"
#include "fwd_mma_kernel.cuh"
#include "mma_tiles.cuh"
#include "offsets_check.cuh"
#include "tensor_maps.h"
#include "tma.cuh"
#include "wgmma.cuh"

namespace fibsparse {
namespace hopper_fwd {

using mma_tiles::kWarps;
using tma::kRegionBytes;
using tma::kTileRows;

constexpr int kWarpgroupThreads = 32 * kWarps;

// Shared memory, threads and registers per (head_dim, consumer warpgroups,
// heads per warpgroup, fractional offsets).
template <int kHeadDim, int kWarpgroups, int kHeadsPerWarpgroup, bool kFractional = false>
struct Shape {
  static_assert(kHeadsPerWarpgroup == 1 || kHeadsPerWarpgroup == 2);
  static constexpr int kHeads = kWarpgroups * kHeadsPerWarpgroup;  // per block
  static constexpr int kTileQueries = kTileRows / kHeadsPerWarpgroup;
  // Where a step's second strip starts within each 64-row region of a
  // stage: whole swizzle atoms on, so the swizzle is the same as at row 0.
  static constexpr int kHalfBytes = kTileQueries * 128;
  // Consumer warpgroups, then the producer warpgroup, of which one thread
  // works: register budgets are set per warpgroup (setmaxnreg).
  static constexpr int kThreads = (kWarpgroups + 1) * kWarpgroupThreads;
  static constexpr int kTileBytes = tma::kTileBytes<kHeadDim>;
  // Blocks per SM: one with two consumer warpgroups; two with one (at
  // head_dim 128 with 2 stages, to fit 228 KB of shared memory).
  static constexpr int kMinBlocks = kWarpgroups == 1 ? 2 : 1;
  static constexpr int kStages = kHeadDim == 128 && kWarpgroups == 1 ? 2 : 4;
  // Each SM sub-partition holds 16K registers and one warp of each warpgroup
  // of every resident block: 512 per thread to share among one producer
  // warpgroup (kProducerRegisters: 40 made ptxas spill in its loop) and the
  // consumers of each block. A consumer holds o, a step's scores and the
  // previous step's P (the band is software-pipelined) and, for the offsets, q.
  static constexpr int kProducerRegisters = 56;
  static constexpr int kConsumerRegisters = (512 / kMinBlocks - kProducerRegisters) / kWarpgroups / 8 * 8;
  static_assert(kConsumerRegisters >= 200 && kConsumerRegisters <= 256);
  // Two buffers of kWarpgroups q tiles (the next tile's q loads while the
  // current one runs), then per stage a k tile and a v tile, then (fractional
  // offsets) per stage and strip a k prefix and a v prefix, then the barriers;
  // 1024 bytes of slack align the tiles to the swizzle's 1024-byte atoms.
  static constexpr int kQBuffers = 2;
  static constexpr int kPrefixBytes = kFractional ? tma::kPrefixBytes<kHeadDim> : 0;
  static constexpr int kBarrierBytes = (2 * kQBuffers + 2 * kStages) * 8;
  static constexpr int kSmemBytes = 1024 + (kQBuffers * kWarpgroups + 2 * kStages) * kTileBytes +
                                    2 * kStages * kHeadsPerWarpgroup * kPrefixBytes + kBarrierBytes;
  static_assert(kMinBlocks * (kSmemBytes + 1024) <= 228 * 1024, "an SM's shared memory, with 1 KB per block for the driver");
};

// Where a tile's output leaves through shared memory: the tile's q buffer is
// held past the tile's end, the offset steps take their q fragments from it
// (ldmatrix) after the band, and each warp then writes its 16 normalized rows
// into its rows of it (stmatrix) for TMA to store (tensor_maps.h's out map,
// 8-row boxes), as FlashAttention-3 does; the buffer goes back to the producer
// after the next tile's first band step, once TMA has read it (a block's last
// tile only waits for that read before the block ends). Stored from registers,
// a warp's 32-bit stores cover 8 rows of 16 bytes each and the warp stalls on
// them (and the next tile's loads queue behind them); with one block of two
// warpgroups an SM, which reach a tile's end together, nothing else issues
// meanwhile: through shared memory the forward is 5-8.5% faster there, and the
// q fragments from the tile and the consumers' warp-wide reach (Steps) take
// 0.9-1.6% more, stmatrix and the later hand-back 1.5-3.8% more
// (docs/performance.md, rounds 55-57). Blocks of one warpgroup, two to an SM,
// hide each other's stores, and there both measured 0-1.5% slower: they keep
// register stores, global q loads (the buffer goes back after the band) and
// one lane's reach.
template <int kWarpgroups>
constexpr bool kOutputThroughTileOf = kWarpgroups == 2;

// The steps of a tile of kTileQueries queries whose first sits at position
// first_pos, within the 64 queries from span_pos on: band chunks of 64 rows
// ending at the span's last query (those that end before key 0 dropped), then
// the strips of the offsets within reach of the tile, kStrips to a step.
// Producer and consumers walk the same plan. A 32-query tile walks the band
// chunks of its 64-query span, so that every query meets its keys in the same
// chunks, summed in the same order, as in a 64-query tile. At window 128 that
// is as many chunks as chunks ending at the tile's own last query would take;
// at windows of 2-33, 66-97, 130-161 keys (and so on) it is one more.
// Who counts the offsets within reach: one thread alone (the producer's), or
// every lane of a warp together (offsets_within_reach_of_warp).
struct CountedByOneThread {};
struct CountedByWarp {
  int lane;
};

template <typename OffsetT, int kTileQueries, int kStrips>
struct Steps {
  int64_t band_start;
  int64_t first_pos;
  int band_steps, num_steps, reach;
  const OffsetT* offs;

  template <typename Counter>
  __device__ Steps(const Params& p, const OffsetT* offsets, int64_t span_pos, int64_t pos, Counter counter)
      : first_pos(pos), offs(offsets) {
    band_steps = (p.band.window - 1 + kTileRows + kTileRows - 1) / kTileRows;
    band_start = span_pos + kTileRows - int64_t(kTileRows) * band_steps;
    if (band_start + kTileRows - 1 < 0) {
      const int64_t before = (-(band_start + kTileRows - 1) + kTileRows - 1) / kTileRows;
      band_start += before * kTileRows;
      band_steps -= int(before);
    }
    const int64_t max_whole = first_pos + kTileQueries - 1;
    if constexpr (std::is_same_v<Counter, CountedByWarp>) {
      reach = mma_tiles::offsets_within_reach_of_warp(offs, p.num_offsets, max_whole, counter.lane);
    } else {
      static_assert(std::is_same_v<Counter, CountedByOneThread>);
      reach = mma_tiles::offsets_within_reach(offs, p.num_offsets, max_whole);
    }
    num_steps = band_steps + (reach + kStrips - 1) / kStrips;
  }
  __device__ bool is_band(int n) const { return n < band_steps; }
  // The first key row of band step n.
  __device__ int64_t band_row(int n) const { return band_start + int64_t(n) * kTileRows; }
  // The offset of strip `strip` of offset step n, and whether the step has it
  // (a tile's last step may have fewer strips).
  __device__ int offset_index(int n, int strip) const { return (n - band_steps) * kStrips + strip; }
  __device__ bool has_strip(int n, int strip) const { return offset_index(n, strip) < reach; }
  // Its position (within reach, so never padding).
  __device__ OffsetSplit split(int n, int strip) const { return split_offset(offs, offset_index(n, strip)); }
  // Its first key row (of its nearer rows, weight 1 - frac).
  __device__ int64_t strip_row(int n, int strip) const { return first_pos - split(n, strip).whole; }
  // Whether it also stages the 8 rows before it: a fractional position, whose
  // second row is one further back.
  __device__ bool stages_prefix(int n, int strip) const { return split(n, strip).frac != 0.f; }
};

// The warp's 16 x 16 tile of scores against 16 rows row0 .. of a swizzled
// tile (mma_tiles.cuh's dot_16_rows, on TMA's layout); with a prefix, row0 may
// be -1 (a fractional step's second rows, for a strip's first query).
template <typename T, int kHeadDim, bool kPrefix = false>
__device__ __forceinline__ void dot_16_rows(const uint32_t (&a)[kHeadDim / 16][4], const char* tile, int row0,
                                            float (&s)[2][4], int lane, const char* prefix = nullptr) {
  float partial[2][4] = {};
  const int row = row0 + (lane / 16) * 8 + lane % 8, half = ((lane / 8) % 2) * 8;
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
    uint32_t b[4];
    const char* rows = kPrefix ? tma::row_with_prefix(tile, prefix, row, 16 * kk + half)
                               : tile + tma::swizzled_offset(row, 16 * kk + half);
    mma_tiles::ldmatrix_x4(b, reinterpret_cast<const uint16_t*>(rows));
    mma_16816<T>(partial[0], a[kk], b[0], b[1]);
    mma_16816<T>(partial[1], a[kk], b[2], b[3]);
  }
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[j][e] = partial[j][e];
}

// acc += A times rows row0 .. row0 + 15 of a swizzled tile, for a 16 x 16 A
// fragment (mma_tiles.cuh's add_a_times_rows, on TMA's layout); with a
// prefix, as dot_16_rows.
template <typename T, int kHeadDim, bool kPrefix = false>
__device__ __forceinline__ void add_a_times_rows(const uint32_t (&a)[4], const char* tile, int row0,
                                                 float (&acc)[kHeadDim / 8][4], int lane,
                                                 const char* prefix = nullptr) {
  const int row = row0 + ((lane / 8) % 2) * 8 + lane % 8, half = (lane / 16) * 8;
#pragma unroll
  for (int n = 0; n < kHeadDim / 16; ++n) {
    uint32_t b[4];
    const char* rows = kPrefix ? tma::row_with_prefix(tile, prefix, row, 16 * n + half)
                               : tile + tma::swizzled_offset(row, 16 * n + half);
    mma_tiles::ldmatrix_x4_trans(b, reinterpret_cast<const uint16_t*>(rows));
    mma_16816<T>(acc[2 * n], a, b[0], b[1]);
    mma_16816<T>(acc[2 * n + 1], a, b[2], b[3]);
  }
}

// acc += diag(d_0 .. d_15) times rows row0 .. row0 + 15 of a swizzled tile
// (mma_tiles.cuh's add_diag_times_rows, on TMA's layout); with a prefix, as
// dot_16_rows.
template <typename T, int kHeadDim, bool kPrefix = false>
__device__ __forceinline__ void add_diag_times_rows(float d_g, float d_g8, const char* tile, int row0,
                                                    float (&acc)[kHeadDim / 8][4], int lane,
                                                    const char* prefix = nullptr) {
  uint32_t a[4];
  mma_tiles::diag_a_fragment<T>(d_g, d_g8, lane, a);
  add_a_times_rows<T, kHeadDim, kPrefix>(a, tile, row0, acc, lane, prefix);
}

// Interleaved heads: with two heads a warpgroup, a warp's
// 16 rows are the same 8 queries of both heads, fragment row g head h's query
// g and row g + 8 head h + 1's; the q tile's row 16 w + 8 x + i is query
// 8 w + i of the warpgroup's head x, loaded in boxes of kInterleavedRows rows
// (the q map's). A warp's offset strip is then 8 rows, one key per query for
// both heads, so a strip's scores are one 16 x 8 tile whose column g holds
// both heads' scores of query g: 1/8 of the products kept, where 16
// consecutive queries of one head keep the diagonal, 1/16, of a 16 x 16 tile.
// Every score is the sum, in the same order, that a 16 x 16 tile of 16
// queries of one head summed in two chains, and every output element of P V
// gains the same single nonzero product (so both layouts gave the same bits
// when both existed; one head a warpgroup sums in one chain and differs from
// them in rounding). Fractional positions score each strip's rows one
// further back too (their second rows), as a second 16 x 8 tile against the
// strip's rows shifted by one, whose first row for warp 0 is the prefix's
// last.
template <int kHeadsPerWarpgroup>
constexpr bool kInterleavedHeads = kHeadsPerWarpgroup == 2;
constexpr int kInterleavedRows = 8;
//
// s = the 16 x 8 scores of the warp's rows (fragments `a`) against rows
// row0 .. row0 + 7 of a swizzled tile. One ldmatrix gives the B fragments of
// two 16-wide slices of head_dim. With kChains == 2 the products go to two
// partial sums (even and odd slices), added at the end: each chain of
// dependent products is half as long (the offsets' steps wait on those
// chains: Nsight Compute's "wait" stalls on HMMA). With a prefix, row0 may be
// -1 (a fractional step's second rows, for warp 0's first query).
template <typename T, int kHeadDim, int kChains, bool kPrefix = false>
__device__ __forceinline__ void dot_8_rows(const uint32_t (&a)[kHeadDim / 16][4], const char* tile, int row0,
                                           float (&s)[4], int lane, const char* prefix = nullptr) {
  float partial[kChains][4] = {};
  const int row = row0 + lane % 8, col = (lane / 8) * 8;
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; kk += 2) {
    uint32_t b[4];  // b0, b1 of slice kk, then of slice kk + 1
    const char* rows = kPrefix ? tma::row_with_prefix(tile, prefix, row, 16 * kk + col)
                               : tile + tma::swizzled_offset(row, 16 * kk + col);
    mma_tiles::ldmatrix_x4(b, reinterpret_cast<const uint16_t*>(rows));
    mma_16816<T>(partial[kk % kChains], a[kk], b[0], b[1]);
    mma_16816<T>(partial[(kk + 1) % kChains], a[kk + 1], b[2], b[3]);
  }
#pragma unroll
  for (int e = 0; e < 4; ++e) s[e] = kChains == 1 ? partial[0][e] : partial[0][e] + partial[1][e];
}

// acc += A B for a 16 x 8 A fragment (m16n8k8's: a[0] rows g, a[1] rows
// g + 8, columns 2c and 2c + 1) and rows row0 .. row0 + 7 of a swizzled tile
// as its k rows. One transposed ldmatrix gives the B fragments of four 8-wide
// column tiles; the products are m16n8k8, half of add_a_times_rows's. With a
// prefix, as dot_8_rows.
template <typename T, int kHeadDim, bool kPrefix = false>
__device__ __forceinline__ void add_a_times_8_rows(const uint32_t (&a)[2], const char* tile, int row0,
                                                   float (&acc)[kHeadDim / 8][4], int lane,
                                                   const char* prefix = nullptr) {
  const int row = row0 + lane % 8, col = (lane / 8) * 8;
#pragma unroll
  for (int n = 0; n < kHeadDim / 32; ++n) {
    uint32_t b[4];  // columns 32 n, 32 n + 8, 32 n + 16, 32 n + 24
    const char* rows = kPrefix ? tma::row_with_prefix(tile, prefix, row, 32 * n + col)
                               : tile + tma::swizzled_offset(row, 32 * n + col);
    mma_tiles::ldmatrix_x4_trans(b, reinterpret_cast<const uint16_t*>(rows));
#pragma unroll
    for (int i = 0; i < 4; ++i) mma_1688<T>(acc[4 * n + i], a, b[i]);
  }
}

// acc += D B for the 16 x 8 D whose row g holds d_g and row g + 8 d_g8, both
// in column g, and rows row0 .. row0 + 7 of a swizzled tile: each of the
// warp's rows gains its weight times its position's row (add_a_times_8_rows).
// D is the first 8 columns of the 16 x 16 diagonal fragment (diag_a_fragment's
// a[0] and a[3]; its a[1] and a[2] are zero).
template <typename T, int kHeadDim, bool kPrefix = false>
__device__ __forceinline__ void add_diag_times_8_rows(float d_g, float d_g8, const char* tile, int row0,
                                                      float (&acc)[kHeadDim / 8][4], int lane,
                                                      const char* prefix = nullptr) {
  uint32_t diag[4];
  mma_tiles::diag_a_fragment<T>(d_g, d_g8, lane, diag);
  const uint32_t a[2] = {diag[0], diag[3]};
  add_a_times_8_rows<T, kHeadDim, kPrefix>(a, tile, row0, acc, lane, prefix);
}

// acc's row 15 += w times row row0 + 15 of a swizzled tile (w: the value of
// lane 31, whose quad holds row 15): the 16 x 8 A's one nonzero element,
// (15, 7), against rows row0 + 8 .. row0 + 15, which lane 31 holds in the
// high half of a[1]. The rows are those the warp's 16 x 16 products read.
template <typename T, int kHeadDim>
__device__ __forceinline__ void add_row15_times_v(float w, const char* tile, int row0, float (&acc)[kHeadDim / 8][4],
                                                  int lane) {
  const uint32_t a[2] = {0u, pack2<T>(0.f, lane == 31 ? w : 0.f)};
  add_a_times_8_rows<T, kHeadDim>(a, tile, row0 + 8, acc, lane);
}

// acc += D B for a fractional position's two rows in one product: the 16 x 16
// D whose row g holds m_g in column g and b_g in column 8 + g (row g + 8
// m_g8 and b_g8), against rows row0 .. row0 + 7 of a swizzled tile with a
// prefix as its k rows 0-7 and the rows one further back, row0 - 1 ..
// row0 + 6, as k rows 8-15 (ldmatrix takes a row address a lane): each of
// the warp's rows gains m times its position's row and b times the one
// before it, in half the products of two add_diag_times_8_rows, and only
// rows that the warp's queries read are loaded.
template <typename T, int kHeadDim>
__device__ __forceinline__ void add_two_diagonals_times_8_rows(float m_g, float m_g8, float b_g, float b_g8,
                                                               const char* tile, int row0,
                                                               float (&acc)[kHeadDim / 8][4], int lane,
                                                               const char* prefix) {
  const int g = lane / 4, c = lane % 4;
  const bool lo = 2 * c == g, hi = 2 * c + 1 == g;
  const uint32_t a[4] = {pack2<T>(lo ? m_g : 0.f, hi ? m_g : 0.f), pack2<T>(lo ? m_g8 : 0.f, hi ? m_g8 : 0.f),
                         pack2<T>(lo ? b_g : 0.f, hi ? b_g : 0.f), pack2<T>(lo ? b_g8 : 0.f, hi ? b_g8 : 0.f)};
  // Matrices 0 and 2 (lanes 0-7, 16-23) the rows, 1 and 3 the rows one back;
  // 2 and 3 eight columns on.
  const int row = row0 - (lane / 8) % 2 + lane % 8, col = (lane / 16) * 8;
#pragma unroll
  for (int n = 0; n < kHeadDim / 16; ++n) {
    uint32_t b[4];  // b0, b1 of columns 16 n .. 16 n + 7, then of 16 n + 8 .. 16 n + 15
    mma_tiles::ldmatrix_x4_trans(b, reinterpret_cast<const uint16_t*>(tma::row_with_prefix(tile, prefix, row,
                                                                                            16 * n + col)));
    mma_16816<T>(acc[2 * n], a, b[0], b[1]);
    mma_16816<T>(acc[2 * n + 1], a, b[2], b[3]);
  }
}

// One head a warpgroup, kTwoDiagonals: a fractional strip's scores against
// its rows one further back without a second 16 x 16 product. Query x's row
// one back is the strip's row x - 1, whose score against it is the element
// (x, x - 1) of the strip's own tile, just below the diagonal, for x = 1 .. 15;
// query 0's (row -1: the prefix's last row for warp 0) is column 7 of
// `before`, its scores against the 8 rows before the strip. Both are the same
// products summed in the same order (one chain over head_dim's slices) as the
// diagonal of a 16 x 16 tile of the rows one back, which took the place of
// this, so the bits are the same. Each row's score reaches every lane of its
// quad, as `back`'s diagonal elements (diagonal_element).
__device__ __forceinline__ void scores_one_back(const float (&tile)[2][4], const float (&before)[4],
                                                float (&back)[2][4], int lane) {
  const int g = lane / 4;
  // Row g + 8 r's element (x, x - 1): column g - 1 of its 8-column block r
  // (block 0, column 7, for row 8), in the lane with c == (g - 1) / 2; row
  // 0's in lane c == 3 of `before`.
  const float element[2] = {g == 0 ? before[1] : (g % 2 ? tile[0][0] : tile[0][1]),
                            g == 0 ? tile[0][3] : (g % 2 ? tile[1][2] : tile[1][3])};
  const int holder = (lane / 4) * 4 + (g == 0 ? 3 : (g - 1) / 2);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float score = __shfl_sync(0xffffffffu, element[r], holder);
    back[r][2 * r] = score;
    back[r][2 * r + 1] = score;
  }
}

// Descriptors of the tiles' 16-wide slices: columns 16 kk .. of a K-major tile
// (q or k, the reduction along a row), and rows 16 kk .. of an MN-major one (v).
template <int kHeadDim>
__device__ __forceinline__ uint64_t k_major_slice(const char* tile, int kk) {
  return wgmma::tile_descriptor(tma::smem_address(tile) + (kk / 4) * kRegionBytes + (kk % 4) * 32, 16, 1024);
}
__device__ __forceinline__ uint64_t mn_major_slice(const char* tile, int kk) {
  return wgmma::tile_descriptor(tma::smem_address(tile) + kk * 16 * 128, kRegionBytes, 1024);
}

// mma_fwd::softmax_update without its rescale of the output: the new running
// max, the rescaled running sum, and s turned into probabilities; `rescale` is
// the factor the output must take (rescale_output), which the pipelined band
// applies only once the output's last product has finished.
template <int N>
__device__ __forceinline__ void softmax_without_output(float (&s)[N][4], float (&m)[2], float (&l)[2],
                                                       float (&rescale)[2]) {
  const auto max = [](float a, float b) { return fmaxf(a, b); };
  const auto add = [](float a, float b) { return a + b; };
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float tile_max = mma_fwd::reduce_row(s, r, max);
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
    const float new_max = fmaxf(m[r], tile_max);
    // A row with nothing attended yet has m = -inf and nothing to rescale.
    rescale[r] = new_max == -INFINITY ? 1.f : mma_tiles::fast_exp2(m[r] - new_max);
    m[r] = new_max;
    l[r] *= rescale[r];
#pragma unroll
    for (int j = 0; j < N; ++j) {
      s[j][2 * r] = mma_fwd::prob_of(s[j][2 * r], m[r]);
      s[j][2 * r + 1] = mma_fwd::prob_of(s[j][2 * r + 1], m[r]);
    }
    l[r] += mma_fwd::reduce_row(s, r, add);
  }
}

// o's rows times softmax_without_output's factors; skipped when no row of the
// warp changed its max (the common case once the band has been seen).
template <int kDimTiles>
__device__ __forceinline__ void rescale_output(float (&o)[kDimTiles][4], const float (&rescale)[2]) {
  if (!__any_sync(0xffffffffu, rescale[0] != 1.f || rescale[1] != 1.f)) return;
#pragma unroll
  for (int n = 0; n < kDimTiles; ++n) {
    o[n][0] *= rescale[0];
    o[n][1] *= rescale[0];
    o[n][2] *= rescale[1];
    o[n][3] *= rescale[1];
  }
}

// kCluster == 2: the block runs in a cluster with the block of the next two heads
// of its kv group (the same queries, kv head and offsets, so the same tiles and
// steps); each stage's k tile is loaded by rank 0 and its v tile by rank 1, each
// into both blocks at once, halving the L2 reads, and a stage is refilled only
// when the consumers of both blocks are done with it.
// kFractional: the offsets are float positions (tensor_maps.h's maps of the
// prefixes come with the others).
// kTwoDiagonals (fractional positions): a strip's two diagonals, its rows' and
// the rows' one further back, from one product. Two heads a warpgroup: its
// P V (add_two_diagonals_times_8_rows; FIBSPARSE_FWD_TWO_DIAGONALS=0 takes
// two). One head a warpgroup: its scores, those of the rows one back being
// the tile's subdiagonal and, for the warp's first query, a 16 x 8 product
// against the 8 rows before the strip, where a second 16 x 16 product took
// them (scores_one_back, the same bits; FIBSPARSE_FWD_SUBDIAGONAL=0 takes it).
// kPvTwoDiagonals (one head a warpgroup, with kTwoDiagonals, head_dim 64): a
// fractional strip's P V in one two-diagonal product too, where two diagonal
// products took it: f P at (x, x) and (1 - f) P at (x, x + 1) against the
// strip's rows one back (mma_tiles.cuh's two_diagonals_a_fragment), half the
// 16 x 16 products and transposed loads. Query 15's first row, the strip's
// row 15, falls outside that tile; it joins the output in a 16 x 8 product of
// half the k depth whose one weight is query 15's (add_row15_times_v), with
// no term kept outside the output, so the online softmax's rescales need
// nothing more. The output moves within rounding (the same terms summed in
// another order); lse is bitwise the same (FIBSPARSE_FWD_PV_TWO_DIAGONALS=0
// takes the two products).
// A packed batch's sequences each have maps of their own (sequence_maps.cuh's,
// `sequence_maps`, null for a dense batch, whose maps are `maps`).
template <typename T, int kHeadDim, int kWarpgroups, int kHeadsPerWarpgroup, int kCluster, bool kFractional,
          bool kTwoDiagonals = false, bool kPvTwoDiagonals = false>
__global__ void __launch_bounds__(Shape<kHeadDim, kWarpgroups, kHeadsPerWarpgroup, kFractional>::kThreads,
                                  Shape<kHeadDim, kWarpgroups, kHeadsPerWarpgroup, kFractional>::kMinBlocks)
    fwd_hopper_kernel(const __grid_constant__ Params p, const __grid_constant__ HopperForwardMaps<kFractional> maps,
                      const HopperForwardMaps<kFractional>* sequence_maps, int tiles_per_block) {
  static_assert(kCluster == 1 || (kCluster == 2 && kWarpgroups == 2 && kHeadsPerWarpgroup == 1 && !kFractional));
  constexpr bool kInterleaved = kInterleavedHeads<kHeadsPerWarpgroup>;
  static_assert(!kInterleaved || kCluster == 1);
  static_assert(!kTwoDiagonals || kFractional);
  static_assert(!kPvTwoDiagonals || (kTwoDiagonals && kHeadsPerWarpgroup == 1 && kHeadDim == 64),
                "one head a warpgroup at head_dim 64");
  constexpr bool kOutputThroughTile = kOutputThroughTileOf<kWarpgroups>;
  static_assert(!kInterleaved || kOutputThroughTile, "interleaved q fragments come from the tile");
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using S = Shape<kHeadDim, kWarpgroups, kHeadsPerWarpgroup, kFractional>;
  using OffsetT = std::conditional_t<kFractional, float, int32_t>;
  using TileSteps = Steps<OffsetT, S::kTileQueries, kHeadsPerWarpgroup>;
  using namespace mma_tiles;
  constexpr int kDimTiles = kHeadDim / 8, kChunkTiles = kTileRows / 8;
  extern __shared__ char smem_raw[];
  char* smem = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const auto q_tile = [&](int buffer, int warpgroup) { return smem + (buffer * kWarpgroups + warpgroup) * S::kTileBytes; };
  const auto k_tile = [&](int stage) { return smem + (S::kQBuffers * kWarpgroups + 2 * stage) * S::kTileBytes; };
  const auto v_tile = [&](int stage) { return smem + (S::kQBuffers * kWarpgroups + 2 * stage + 1) * S::kTileBytes; };
  char* prefixes = smem + (S::kQBuffers * kWarpgroups + 2 * S::kStages) * S::kTileBytes;
  const auto k_prefix = [&](int stage, int strip) {
    return prefixes + (2 * stage * kHeadsPerWarpgroup + strip) * S::kPrefixBytes;
  };
  const auto v_prefix = [&](int stage, int strip) {
    return prefixes + ((2 * stage + 1) * kHeadsPerWarpgroup + strip) * S::kPrefixBytes;
  };
  uint64_t* q_full = reinterpret_cast<uint64_t*>(prefixes + 2 * S::kStages * kHeadsPerWarpgroup * S::kPrefixBytes);
  uint64_t* q_empty = q_full + S::kQBuffers;
  uint64_t* full = q_empty + S::kQBuffers;
  uint64_t* empty = full + S::kStages;

  const int first_head = blockIdx.y * S::kHeads, b = blockIdx.z, hk = first_head / (p.heads / p.heads_kv);
  const Sequence seq = sequence_of(p, b);
  const OffsetT* offs = static_cast<const OffsetT*>(p.offsets) + first_head * p.offsets_head_stride;
  const int first_tile = blockIdx.x * tiles_per_block;
  // The grid covers the longest sequence of a packed batch; a shorter one's
  // last blocks have no tile and leave at once (both blocks of a cluster
  // alike: they share their sequence and tiles), before setting up barriers.
  const int tiles = min(tiles_per_block, int((seq.seqlen_q + S::kTileQueries - 1) / S::kTileQueries) - first_tile);
  if (tiles <= 0) return;
  // Tile t's q buffer, and the parity of its t / kQBuffers-th use.
  const auto q_buffer = [&](int t) { return t % S::kQBuffers; };
  const auto q_parity = [&](int t) { return uint32_t(t / S::kQBuffers) & 1; };
  const auto tile_steps = [&](int t, auto counter) {
    const int64_t q0 = (first_tile + t) * int64_t(S::kTileQueries);
    return TileSteps(p, offs, q0 / kTileRows * kTileRows + seq.q_pos_shift, q0 + seq.q_pos_shift, counter);
  };
  // A packed batch: the sequence's maps, whose rows are its rows alone
  // (coordinate 0 of the maps' batch dimension).
  const HopperForwardMaps<kFractional>& block_maps = sequence_maps != nullptr ? sequence_maps[b] : maps;
  const int batch = sequence_maps != nullptr ? 0 : b;

  const uint32_t rank = kCluster > 1 ? tma::cluster_rank() : 0;
  if (threadIdx.x == 0) {
    for (int buffer = 0; buffer < S::kQBuffers; ++buffer) {
      tma::barrier_init(&q_full[buffer], 1);
      tma::barrier_init(&q_empty[buffer], kWarpgroups * kWarps);  // this block's consumer warps
    }
    for (int s = 0; s < S::kStages; ++s) {
      tma::barrier_init(&full[s], 1);
      tma::barrier_init(&empty[s], kCluster * kWarpgroups * kWarps);  // every consumer warp of the cluster
    }
    tma::fence_barrier_init();
  }
  if constexpr (kCluster > 1) {
    tma::cluster_sync();  // the peer's barriers exist before anything arrives on them
  } else {
    __syncthreads();
  }

  const int warp_in_block = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (warp_in_block >= kWarpgroups * kWarps) {  // the producer warpgroup: one thread issues every load
    wgmma::set_max_registers_dec<S::kProducerRegisters>();
    if (threadIdx.x == kWarpgroups * kWarpgroupThreads) {
      const HopperForwardMaps<kFractional>& m = block_maps;
      if (sequence_maps != nullptr) {
        const CUtensorMap* first = reinterpret_cast<const CUtensorMap*>(&m);
        for (int i = 0; i < kMapsPerSet<kFractional>; ++i) tma::acquire_map(first + i);
      }
      tma::prefetch_map(&m.k);
      tma::prefetch_map(&m.v);
      tma::prefetch_map(&m.k_strip);
      tma::prefetch_map(&m.v_strip);
      int step = 0;  // steps issued, over all tiles: the position in the ring
      for (int t = 0; t < tiles; ++t) {
        const int q0 = (first_tile + t) * S::kTileQueries;
        // A fresh barrier's phase before the first counts as complete, so the
        // first use of each buffer (and stage) does not wait.
        tma::wait(&q_empty[q_buffer(t)], q_parity(t) ^ 1);
        tma::arrive_expect_bytes(&q_full[q_buffer(t)], kWarpgroups * S::kTileBytes);
        for (int group = 0; group < kWarpgroups; ++group)
          for (int half = 0; half < kHeadsPerWarpgroup; ++half)
            for (int r = 0; r < kHeadDim / 64; ++r) {
              const int head = first_head + group * kHeadsPerWarpgroup + half;
              char* tile = q_tile(q_buffer(t), group) + r * kRegionBytes;
              if constexpr (kInterleaved) {
                for (int box = 0; box < S::kTileQueries / kInterleavedRows; ++box)
                  tma::load_4d(tile + (2 * box + half) * kInterleavedRows * 128, &m.q, &q_full[q_buffer(t)], 64 * r,
                               head, q0 + kInterleavedRows * box, batch);
              } else {
                tma::load_4d(tile, &m.q, &q_full[q_buffer(t)], 64 * r, head, q0, batch);
              }
            }
        const TileSteps steps = tile_steps(t, CountedByOneThread{});
        for (int n = 0; n < steps.num_steps; ++n, ++step) {
          const int stage = step % S::kStages;
          tma::wait(&empty[stage], ((step / S::kStages) & 1) ^ 1);
          if (kCluster > 1 || steps.is_band(n)) {
            // Both tiles land in this block either way: its own loads, or one from each block of the cluster.
            tma::arrive_expect_bytes(&full[stage], 2 * S::kTileBytes);
            const int row = int(steps.is_band(n) ? steps.band_row(n) : steps.strip_row(n, 0));
            for (int r = 0; r < kHeadDim / 64; ++r) {
              if constexpr (kCluster > 1) {
                const bool k_loader = rank == 0;
                tma::load_4d_multicast((k_loader ? k_tile(stage) : v_tile(stage)) + r * kRegionBytes,
                                       k_loader ? &m.k : &m.v, &full[stage], 0b11, 64 * r, hk, row, batch);
              } else {
                tma::load_4d(k_tile(stage) + r * kRegionBytes, &m.k, &full[stage], 64 * r, hk, row, batch);
                tma::load_4d(v_tile(stage) + r * kRegionBytes, &m.v, &full[stage], 64 * r, hk, row, batch);
              }
            }
            continue;
          }
          // An offset step: its strips, each into its part of the stage's tiles.
          int bytes = 0;
          for (int strip = 0; strip < kHeadsPerWarpgroup && steps.has_strip(n, strip); ++strip) {
            bytes += 2 * S::kTileBytes / kHeadsPerWarpgroup;
            if (kFractional && steps.stages_prefix(n, strip)) bytes += 2 * S::kPrefixBytes;
          }
          tma::arrive_expect_bytes(&full[stage], bytes);
          for (int strip = 0; strip < kHeadsPerWarpgroup && steps.has_strip(n, strip); ++strip) {
            const int row = int(steps.strip_row(n, strip));
            for (int r = 0; r < kHeadDim / 64; ++r) {
              const int at = r * kRegionBytes + strip * S::kHalfBytes;
              tma::load_4d(k_tile(stage) + at, &m.k_strip, &full[stage], 64 * r, hk, row, batch);
              tma::load_4d(v_tile(stage) + at, &m.v_strip, &full[stage], 64 * r, hk, row, batch);
            }
            if constexpr (kFractional) {
              if (steps.stages_prefix(n, strip)) {
                for (int r = 0; r < kHeadDim / 64; ++r) {
                  const int prefix_row = row - kPrefixRows, at = r * tma::kPrefixRegionBytes;
                  tma::load_4d(k_prefix(stage, strip) + at, &m.k_prefix, &full[stage], 64 * r, hk, prefix_row, batch);
                  tma::load_4d(v_prefix(stage, strip) + at, &m.v_prefix, &full[stage], 64 * r, hk, prefix_row, batch);
                }
              }
            }
          }
        }
      }
    }
    // A block of a cluster stays until its peer is done: the peer's loads and
    // arrivals reach this block's shared memory.
    if constexpr (kCluster > 1) tma::cluster_sync();
    return;
  }

  // A consumer: warp `warp` of warpgroup `group`, its rows those of head h
  // from the tile's query `warp_row` on.
  wgmma::set_max_registers_inc<S::kConsumerRegisters>();
  const int group = warp_in_block / kWarps, warp = warp_in_block % kWarps, g = lane / 4, c = lane % 4;
  // Interleaved: h and h + 1, the warp's queries from `warp_row` of the tile.
  static_assert(kInterleaved || kHeadsPerWarpgroup == 1, "two heads a warpgroup interleave their queries");
  const int h = first_head + group * kHeadsPerWarpgroup;
  const int warp_row = kInterleaved ? 8 * warp : 16 * warp;
  const float scale_log2 = float(p.softmax_scale) * float(M_LOG2E);
  const uint16_t* q_global = bits<T>(p.q, seq.q_start(b, p.q_batch_stride, p.q_row_stride) + h * p.q_head_stride);
  // This warp is done with a barrier's buffer or stage (a stage: in every block of the cluster).
  const auto warp_done = [&](uint64_t* barrier, bool whole_cluster) {
    __syncwarp();
    if (lane == 0) {
      tma::arrive(barrier);
      if constexpr (kCluster > 1) {
        if (whole_cluster) tma::arrive_remote(barrier, rank ^ 1);
      }
    }
  };
  // With kOutputThroughTile, lane 0 stores the warp's output through the out map.
  if (kOutputThroughTile && lane == 0) {
    if (sequence_maps != nullptr) tma::acquire_map(&block_maps.out);
    tma::prefetch_map(&block_maps.out);
  }
  // Where the tile's q buffer is held (kOutputThroughTile), the warp's 16 rows
  // of it as four 8 x 8 matrices per 16 columns, (rows 0-7 | 8-15) x (columns
  // +0 | +8): lane l addresses row l % 8 of matrix l / 8 (ldmatrix, stmatrix).
  const int matrix_row = 16 * warp + ((lane / 8) % 2) * 8 + lane % 8, matrix_col = (lane / 16) * 8;
  const auto counter = [&] {
    if constexpr (kOutputThroughTile) {
      return CountedByWarp{lane};
    } else {
      return CountedByOneThread{};
    }
  }();
  int step = 0;  // this tile's first step's position in the ring
  for (int t = 0; t < tiles; ++t) {
    const TileSteps steps = tile_steps(t, counter);
    const int warp_q0 = (first_tile + t) * S::kTileQueries + warp_row;
    const int64_t warp_pos = warp_q0 + int64_t(seq.q_pos_shift);
    // The offsets' tiles take q as mma.sync A fragments (the band reads q
    // from its shared tile): where the tile's q buffer is held to the tile's
    // end (kOutputThroughTile), from it after the band (below); else from
    // global memory as in the mma.sync forward, as the buffer goes back after
    // the band.
    uint32_t qf[kHeadDim / 16][4];
    if (!kOutputThroughTile && steps.num_steps > steps.band_steps) {
      load_a_fragments<kHeadDim>(q_global, p.q_row_stride, warp_q0, seq.seqlen_q, g, c, qf);
    }
    float o[kDimTiles][4] = {};
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    tma::wait(&q_full[q_buffer(t)], q_parity(t));
    const char* q_smem = q_tile(q_buffer(t), group);
    const auto stage_of = [&](int n) { return (step + n) % S::kStages; };
    const auto wait_full = [&](int n) { tma::wait(&full[stage_of(n)], ((step + n) / S::kStages) & 1); };
    const auto release = [&](int n) { warp_done(&empty[stage_of(n)], true); };
    // The band, software-pipelined as FlashAttention-3 does within a warpgroup:
    // step n's scores and step n - 1's P V are queued together, and while this
    // warpgroup masks and exponentiates the scores, the tensor cores run the P V.
    // The code keeps ptxas's rules for asynchronous wgmma (else it serializes
    // them, "C7515"): one set of score registers (not two swapped across a
    // branch), and no write to an accumulator (o) before the product that last
    // wrote it has been waited for, which is why o is rescaled after that wait,
    // apart from the softmax.
    float s[kChunkTiles][4];
    uint32_t pa[kTileRows / 16][4];  // P of the step whose P V comes next, as A fragments
    float rescale[2];
    const auto queue_scores = [&](int n) {
      const char* rows_k = k_tile(stage_of(n));
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        wgmma::ss_64<T>(s, k_major_slice<kHeadDim>(q_smem, kk), k_major_slice<kHeadDim>(rows_k, kk), kk > 0);
      }
      wgmma::commit();
    };
    const auto queue_pv = [&](int n) {
      const char* rows_v = v_tile(stage_of(n));
#pragma unroll
      for (int kk = 0; kk < kTileRows / 16; ++kk) wgmma::rs<T, kHeadDim>(o, pa[kk], mn_major_slice(rows_v, kk), 1);
      wgmma::commit();
    };
    // Step n's scores, masked (with the keys before the sequence: a chunk may
    // start before key 0), then turned into probabilities.
    const auto probabilities = [&](int n) {
      mask_band_chunk</*kKeysBeforeStart=*/true, kInterleaved ? 0 : 8>(s, warp_pos, steps.band_row(n), p.band,
                                                                       scale_log2, g, c);
      softmax_without_output(s, m, l, rescale);
    };
    const auto to_fragments = [&] {
#pragma unroll
      for (int kk = 0; kk < kTileRows / 16; ++kk) c_to_a_fragment<T>(s, 2 * kk, 1.f, pa[kk]);
    };

    wait_full(0);
    wgmma::fence();
    queue_scores(0);
    wgmma::wait<0>();
    wgmma::fence_operands(s);
    probabilities(0);
    rescale_output(o, rescale);
    to_fragments();
    if (kOutputThroughTile && lane == 0 && t > 0) {
      // The previous tile's output rows, read by TMA by now (see the tile's end): its buffer goes back.
      tma::wait_stores_read();
      tma::arrive(&q_empty[q_buffer(t - 1)]);
    }
    for (int n = 1; n < steps.band_steps; ++n) {
      wait_full(n);
      wgmma::fence();
      queue_scores(n);
      queue_pv(n - 1);
      wgmma::wait<1>();  // the scores
      wgmma::fence_operands(s);
      probabilities(n);
      wgmma::wait<0>();  // P V
      wgmma::fence_operands(o);
      release(n - 1);
      rescale_output(o, rescale);
      to_fragments();
    }
    wgmma::fence();
    queue_pv(steps.band_steps - 1);
    wgmma::wait<0>();
    wgmma::fence_operands(o);
    release(steps.band_steps - 1);
    // The band was the last reader of the tile's q (the output may still pass through its buffer).
    if (!kOutputThroughTile) warp_done(&q_empty[q_buffer(t)], false);
    if (kOutputThroughTile && steps.num_steps > steps.band_steps) {
      // The warp's rows of the q tile, TMA's swizzled layout, as A fragments.
      // Rows past the sequence's end are zeros, as TMA loaded them.
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        ldmatrix_x4(qf[kk], reinterpret_cast<const uint16_t*>(
                                q_smem + tma::swizzled_offset(matrix_row, 16 * kk + matrix_col)));
      }
    }

    // One head a warpgroup: the strip of offset step n (a step holds one),
    // from its 16 x 16 scores `tile` and, at a fractional position, `back`,
    // its scores against the rows one further back (score_back): softmax,
    // then P V.
    const auto finish_strip = [&](int n, const float (&tile)[2][4], const float (&back)[2][4]) {
      const char* rows_v = v_tile(stage_of(n));
      const int distance_index = distance_of_offset(steps.offset_index(n, 0), p.band);  // pattern.h's t
      float score[2] = {diagonal_element(tile, 0, g), diagonal_element(tile, 1, g)}, prob[2];
      // A fractional position's row one further back, weight frac, mixed as
      // scores as in the mma.sync forward; a whole position (and every integer
      // one: frac is then the constant 0) reads no second row.
      float frac = 0.f;
      if constexpr (kFractional) frac = steps.split(n, 0).frac;
      if (frac != 0.f) {
#pragma unroll
        for (int r = 0; r < 2; ++r) score[r] += frac * (diagonal_element(back, r, g) - score[r]);
      }
      mma_fwd::offset_softmax(score, warp_pos, distance_index, p, offs, scale_log2, m, l, o, lane, prob);
      if constexpr (kPvTwoDiagonals) {
        if (frac != 0.f) {
          uint32_t a[4];
          two_diagonals_a_fragment<T>(frac * prob[0], frac * prob[1], (1.f - frac) * prob[0], (1.f - frac) * prob[1],
                                      lane, a);
          add_a_times_rows<T, kHeadDim, true>(a, rows_v, warp_row - 1, o, lane, v_prefix(stage_of(n), 0));
          add_row15_times_v<T, kHeadDim>((1.f - frac) * prob[1], rows_v, warp_row, o, lane);
          return;
        }
      }
      add_diag_times_rows<T, kHeadDim>((1.f - frac) * prob[0], (1.f - frac) * prob[1], rows_v, warp_row, o, lane);
      if (frac != 0.f) {
        add_diag_times_rows<T, kHeadDim, kFractional>(frac * prob[0], frac * prob[1], rows_v, warp_row - 1, o, lane,
                                                      v_prefix(stage_of(n), 0));
      }
    };
    // One head a warpgroup: a fractional strip's scores against its rows one
    // further back (for its first query, the prefix's last row); left unset
    // at a whole position. kTwoDiagonals: from the strip's tile `tile` and a
    // 16 x 8 product (scores_one_back), taken at every position, so that its
    // products may interleave with the tile's (at a whole one, `back` goes
    // unused and the prefix's rows read are stale).
    const auto score_back = [&](int n, const float (&tile)[2][4], float (&back)[2][4]) {
      if constexpr (kFractional && kTwoDiagonals) {
        float before[4];
        dot_8_rows<T, kHeadDim, 1, true>(qf, k_tile(stage_of(n)), warp_row - kPrefixRows, before, lane,
                                         k_prefix(stage_of(n), 0));
        scores_one_back(tile, before, back, lane);
      } else if constexpr (kFractional) {
        if (steps.split(n, 0).frac != 0.f) {
          dot_16_rows<T, kHeadDim, true>(qf, k_tile(stage_of(n)), warp_row - 1, back, lane, k_prefix(stage_of(n), 0));
        }
      }
    };
    // Interleaved (two heads a warpgroup): a step's two strips' 16 x 8 scores
    // come first (and at fractional positions both strips' scores against the
    // rows one further back, `back`), so that their products interleave, each
    // summed in two chains (dot_8_rows); then each strip's softmax and P V.
    // One head a warpgroup keeps one chain and one strip at a time: its
    // kernels' speed moves with their code's layout (two chains there made
    // even the window alone at head_dim 64, which runs none of these steps, 7%
    // slower; docs/performance.md, round 27), and the has_strip test, true for
    // every offset step, stays for the same reason.
    const auto finish_interleaved_strip = [&](int n, int strip, const float (&tile)[4], const float (&back)[4]) {
      const int distance_index = distance_of_offset(steps.offset_index(n, strip), p.band);  // pattern.h's t
      const char* rows_v = v_tile(stage_of(n)) + strip * S::kHalfBytes;
      // The diagonal, column g: element g % 2 of each row's pair (selects, not an index into registers).
      float score[2] = {g % 2 ? tile[1] : tile[0], g % 2 ? tile[3] : tile[2]}, prob[2];
      // As finish_strip: the rows one back, weight frac, mixed as scores.
      float frac = 0.f;
      if constexpr (kFractional) frac = steps.split(n, strip).frac;
      if (frac != 0.f) {
        const float back_score[2] = {g % 2 ? back[1] : back[0], g % 2 ? back[3] : back[2]};
#pragma unroll
        for (int r = 0; r < 2; ++r) score[r] += frac * (back_score[r] - score[r]);
      }
      mma_fwd::offset_softmax</*kRowStep=*/0>(score, warp_pos, distance_index, p, offs, scale_log2, m, l, o, lane,
                                              prob);
      if constexpr (kFractional && kTwoDiagonals) {
        if (frac != 0.f) {
          add_two_diagonals_times_8_rows<T, kHeadDim>((1.f - frac) * prob[0], (1.f - frac) * prob[1],
                                                      frac * prob[0], frac * prob[1], rows_v, warp_row, o, lane,
                                                      v_prefix(stage_of(n), strip));
          return;
        }
      }
      add_diag_times_8_rows<T, kHeadDim>((1.f - frac) * prob[0], (1.f - frac) * prob[1], rows_v, warp_row, o, lane);
      if (frac != 0.f) {
        add_diag_times_8_rows<T, kHeadDim, kFractional>(frac * prob[0], frac * prob[1], rows_v, warp_row - 1, o, lane,
                                                        v_prefix(stage_of(n), strip));
      }
    };
    for (int n = steps.band_steps; n < steps.num_steps; ++n) {
      wait_full(n);
      if constexpr (kInterleaved) {
        float tiles[2][4], backs[2][4];
        const int strips = steps.has_strip(n, 1) ? 2 : 1;
#pragma unroll
        for (int strip = 0; strip < 2; ++strip) {
          if (strip < strips) {
            dot_8_rows<T, kHeadDim, 2>(qf, k_tile(stage_of(n)) + strip * S::kHalfBytes, warp_row, tiles[strip], lane);
          }
        }
        if constexpr (kFractional) {
#pragma unroll
          for (int strip = 0; strip < 2; ++strip) {
            if (strip < strips && steps.split(n, strip).frac != 0.f) {
              dot_8_rows<T, kHeadDim, 2, true>(qf, k_tile(stage_of(n)) + strip * S::kHalfBytes, warp_row - 1,
                                               backs[strip], lane, k_prefix(stage_of(n), strip));
            }
          }
        }
        finish_interleaved_strip(n, 0, tiles[0], backs[0]);
        if (strips == 2) finish_interleaved_strip(n, 1, tiles[1], backs[1]);
      } else if (steps.has_strip(n, 0)) {
        float tile[2][4], back[2][4];
        dot_16_rows<T, kHeadDim>(qf, k_tile(stage_of(n)), warp_row, tile, lane);
        score_back(n, tile, back);
        finish_strip(n, tile, back);
      }
      release(n);
    }

    if constexpr (kOutputThroughTile) {
      // Fragment row g + 8 r is tile row 16 warp + 8 r + g in every layout:
      // query warp_q0 + g of head h + r (interleaved) or query
      // warp_q0 + g + 8 r of head h. Lane 0 stores the two 8-row boxes with
      // TMA and hands the buffer back after the next tile's first band step,
      // when TMA has long read them: waiting for that here held up the whole
      // warp at the next tile's first warp-wide step (the reach).
      float inv[2];
      mma_fwd::normalize_and_store_lse<kInterleaved>(p, seq, b, h, warp_q0, m, l, lane, inv);
      char* rows = q_tile(q_buffer(t), group);
      // Per 16 columns, the four 8 x 8 matrices the q fragments came from, at
      // their addresses: one stmatrix where 32-bit stores took four.
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        const uint32_t packed[4] = {pack2<T>(o[2 * kk][0] * inv[0], o[2 * kk][1] * inv[0]),
                                    pack2<T>(o[2 * kk][2] * inv[1], o[2 * kk][3] * inv[1]),
                                    pack2<T>(o[2 * kk + 1][0] * inv[0], o[2 * kk + 1][1] * inv[0]),
                                    pack2<T>(o[2 * kk + 1][2] * inv[1], o[2 * kk + 1][3] * inv[1])};
        stmatrix_x4(reinterpret_cast<uint16_t*>(rows + tma::swizzled_offset(matrix_row, 16 * kk + matrix_col)),
                    packed);
      }
      tma::fence_shared_for_tma();
      __syncwarp();
      if (lane == 0) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
#pragma unroll
          for (int region = 0; region < kHeadDim / 64; ++region) {
            tma::store_4d(&block_maps.out, rows + region * kRegionBytes + (16 * warp + 8 * r) * 128, 64 * region,
                          kInterleaved ? h + r : h, kInterleaved ? warp_q0 : warp_q0 + 8 * r, batch);
          }
        }
        tma::commit_stores();
        // The block's shared memory must outlive TMA's reads of it.
        if (t == tiles - 1) tma::wait_stores_read();
      }
    } else {
      mma_fwd::store_output_and_lse<T, kInterleaved>(p, seq, b, h, warp_q0, o, m, l, lane);
    }
    step += steps.num_steps;
  }
  if constexpr (kCluster > 1) tma::cluster_sync();  // see the producer's
#else
  __trap();  // launched only where hopper_forward_applies: a build with sm_90a, on such a device
#endif
}

}  // namespace hopper_fwd
}  // namespace fibsparse
