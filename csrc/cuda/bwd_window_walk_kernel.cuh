// The window alone's dk/dv pass as a walk over a run of key tiles, for one
// query head per kv head (bwd_launch.cuh picks it for MHA at head_dim 32 and
// below; the backward with stored dS otherwise runs dkdv_mma_kernel's
// DkdvRoute::kWindowAlone, one key tile a block).
//
// Key tile t (keys 64 t ..) is read by the query chunks t .. t + n - 1 (64
// rows each, n <= 3 at a window of at most 129: bwd_launch.cuh's
// stored_dscore_steps), so tile t + 1 reads one chunk that tile t did not.
// A block of one key tile stages every chunk it reads, with its O rows, and
// forms each chunk's delta = <dO, O> - dlse, so every chunk is staged and its
// delta formed n times over the grid. Walking a run of consecutive tiles, a
// block keeps three chunk slots (q and dO rows, lse, delta) and stages each
// chunk, and forms its delta, once: once tile t's first step is done with
// chunk t, that chunk's slot takes chunk t + n. One O buffer serves the delta
// of the chunk being staged; the run's first chunks form theirs from global
// memory while their rows arrive. A tile needs three block barriers where a
// block of one tile needs two a step.
//
// Each tile's steps are dkdv_band_step, as in the one-tile pass, with the same
// rows, statistics and order, so dk, dv and the stored dS are bitwise those of
// that pass. The staged chunks hold every row up to the sequence's end, where
// the one-tile pass stages zeros past its tile's last reader; those queries
// are outside the band of the tile's keys, so their pairs are masked as
// before (docs/semantics.md gives the extent a non-finite row reaches).
#pragma once

#include <cstdint>

#include "../fibsparse.h"
#include "../pattern.h"
#include "bwd_mma_kernel.cuh"
#include "mma_tiles.cuh"

namespace fibsparse {
namespace mma_bwd {

using namespace mma_tiles;

constexpr int kWalkSlots = 3;  // chunk slots: the most chunks a key tile reads
// One tensor's rows of one chunk, padded as every staged row is.
template <int kHeadDim>
constexpr int kWalkRowsBytes = kChunk * (kHeadDim + 8) * int(sizeof(uint16_t));
// The slots' q and dO rows, the O buffer, then each slot's lse and delta.
template <int kHeadDim>
constexpr int kDkdvWalkSmemBytes =
    (2 * kWalkSlots + 1) * kWalkRowsBytes<kHeadDim> + 2 * kWalkSlots * kChunk * int(sizeof(float));

// Block (run blockIdx.x, head blockIdx.y, sequence blockIdx.z): key tiles
// blockIdx.x * p.band_tiles_per_run .. of that head, up to the sequence's last.
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kMmaBlockThreads, kMinBlocksDkdv<kHeadDim>) dkdv_window_walk_kernel(const Params p) {
  static_assert(kChunk == kBlockRows, "a key tile's steps are whole query chunks of the tile's size");
  static_assert(2 * kChunk == kMmaBlockThreads, "delta: two threads a staged row");
  constexpr bool kInnerSubtilesUnmasked = kHeadDim <= 64;  // as dkdv_mma_kernel's window alone
  extern __shared__ __align__(16) uint16_t smem[];
  const Rows<kHeadDim> rows = reinterpret_cast<Rows<kHeadDim>>(smem);
  // Chunk c sits in slot c % kWalkSlots; the walk counts slots as it goes
  // (next_slot), as a 64-bit remainder in every step would cost ~25 instructions.
  const auto next_slot = [](int slot, int ahead) {
    return slot + ahead < kWalkSlots ? slot + ahead : slot + ahead - kWalkSlots;
  };
  const auto slot_q = [&](int slot) { return rows + 2 * slot * kChunk; };
  const auto slot_do = [&](int slot) { return rows + (2 * slot + 1) * kChunk; };
  const Rows<kHeadDim> rows_o = rows + 2 * kWalkSlots * kChunk;
  float* const stats =
      reinterpret_cast<float*>(reinterpret_cast<char*>(smem) + (2 * kWalkSlots + 1) * kWalkRowsBytes<kHeadDim>);
  const auto slot_lse = [&](int slot) { return stats + 2 * slot * kChunk; };
  const auto slot_delta = [&](int slot) { return stats + (2 * slot + 1) * kChunk; };

  const int h = blockIdx.y, b = blockIdx.z;
  const Sequence seq = sequence_of(p, b);
  const int64_t tiles = (int64_t(seq.seqlen_k) + kBlockRows - 1) / kBlockRows;
  int64_t tile = int64_t(blockIdx.x) * p.band_tiles_per_run;
  // Past a packed sequence's end. A sequence whose queries do not end at its
  // last key comes only from bad packed boundaries, which the launch's check
  // block stops before this pass (bwd_launch.cuh): nothing to walk there.
  if (tile >= tiles || seq.q_pos_shift != 0) return;
  const int64_t end_tile = tile + p.band_tiles_per_run < tiles ? tile + p.band_tiles_per_run : tiles;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int64_t last_row = seq.seqlen_q - 1;
  // The last query row that reads key tile t, and the chunks t .. t + n - 1 it reads.
  const auto band_last_row = [&](int64_t t) {
    const int64_t last_reader = band_last_reader(t * kBlockRows + kBlockRows - 1, p.band);
    return last_reader < last_row ? last_reader : last_row;
  };
  const auto tile_chunks = [&](int64_t t) { return int((band_last_row(t) - t * kBlockRows) / kChunk) + 1; };

  // The head's rows, formed where they are used rather than held across the
  // walk's steps (the registers go to the steps' fragments and accumulators).
  const auto q_src = [&] { return bits<T>(p.q, seq.q_start(b, p.q_batch_stride, p.q_row_stride) + h * p.q_head_stride); };
  const auto do_src = [&] {
    return bits<T>(p.dout, seq.q_start(b, p.do_batch_stride, p.do_row_stride) + h * p.do_head_stride);
  };
  const auto o_src = [&] { return bits<T>(p.out, seq.q_start(b, p.o_batch_stride, p.o_row_stride) + h * p.o_head_stride); };
  const auto stats_row0 = [&] { return stats_index(p, seq, b, h, 0); };
  // Queues chunk `chunk`'s q and dO rows (and its O rows, `with_o`), its lse
  // and dlse (0 without one, in delta's place until its delta is formed), rows
  // past the sequence's end as zeros; commits one group.
  const auto issue_chunk = [&](int64_t chunk, int slot, bool with_o) {
    const int64_t first = chunk * kChunk;
    stage_rows<kHeadDim, kChunk>(slot_q(slot), q_src(), p.q_row_stride, first, last_row);
    stage_rows<kHeadDim, kChunk>(slot_do(slot), do_src(), p.do_row_stride, first, last_row);
    if (with_o) stage_rows<kHeadDim, kChunk>(rows_o, o_src(), p.o_row_stride, first, last_row);
    stage_window_stats(p, stats_row0(), first, last_row, slot_lse(slot), slot_delta(slot));
    commit_async();
  };
  // This thread's share of delta for row `row` of a chunk: the two threads of
  // a row (neighbouring lanes) each sum half of it (half_row_dot), as the
  // one-tile pass and the dq pass do, and add the halves.
  const int row = threadIdx.x / 2, half = threadIdx.x % 2;
  const auto row_sum = [&](float sum) { return sum + __shfl_xor_sync(0xffffffffu, sum, 1); };
  // Once the chunk's dlse has arrived: delta = sum - dlse, in dlse's place.
  const auto store_delta = [&](int slot, float sum) {
    if (half == 0) slot_delta(slot)[row] = sum - slot_delta(slot)[row];
  };

  uint32_t kf[kHeadDim / 16][4], vf[kHeadDim / 16][4];
  const auto load_fragments = [&](int64_t t) {
    const int warp_k0 = int(t * kBlockRows) + 16 * warp;
    load_a_fragments<kHeadDim>(bits<T>(p.k, seq.k_start(b, p.k_batch_stride, p.k_row_stride) + h * p.k_head_stride),
                               p.k_row_stride, warp_k0, seq.seqlen_k, g, c, kf);
    load_a_fragments<kHeadDim>(bits<T>(p.v, seq.k_start(b, p.v_batch_stride, p.v_row_stride) + h * p.v_head_stride),
                               p.v_row_stride, warp_k0, seq.seqlen_k, g, c, vf);
  };

  int first_slot = int(tile % kWalkSlots);  // the slot of the tile's first chunk
  // The run's first tile: its chunks, their deltas from global memory while
  // the rows arrive (rows past the end: 0, as staged zeros give).
  {
    const int chunks = tile_chunks(tile);
    for (int s = 0; s < chunks; ++s) issue_chunk(tile + s, next_slot(first_slot, s), false);
    float sums[kWalkSlots];
#pragma unroll
    for (int s = 0; s < kWalkSlots; ++s) {
      const int64_t i = (tile + s) * kChunk + row;
      sums[s] = s < chunks && i <= last_row ? half_row_dot<T, kHeadDim>(o_src() + i * p.o_row_stride,
                                                                          do_src() + i * p.do_row_stride, half)
                                            : 0.f;
      sums[s] = row_sum(sums[s]);
    }
    load_fragments(tile);  // after the sums' loads: not both sets of registers at once
    wait_async<0>();
    __syncthreads();
#pragma unroll
    for (int s = 0; s < kWalkSlots; ++s) {
      if (s < chunks) store_delta(next_slot(first_slot, s), sums[s]);
    }
  }

  const float scale = float(p.softmax_scale);
  for (; tile < end_tile; ++tile, first_slot = next_slot(first_slot, 1)) {
    __syncthreads();  // the tile's chunks and their deltas are in
    const int chunks = tile_chunks(tile);
    // The chunk the next tile reads that this one does not (none where the
    // next reads fewer, at the sequence's end): chunk tile + chunks.
    const bool stages_next = tile + 1 < end_tile && tile_chunks(tile + 1) == chunks;
    const int64_t last_reader_row = band_last_row(tile);
    const int warp_k0 = int(tile * kBlockRows) + 16 * warp;
    float dk[kHeadDim / 8][4] = {}, dv[kHeadDim / 8][4] = {};
    for (int s = 0, slot = first_slot; s < chunks; ++s, slot = next_slot(slot, 1)) {
      dkdv_band_step<T, kHeadDim, true, kInnerSubtilesUnmasked>(p, seq, b, h, tile, s, (tile + s) * kChunk,
                                                                last_reader_row, warp_k0, kf, vf, slot_q(slot),
                                                                slot_do(slot), slot_lse(slot), slot_delta(slot), dk,
                                                                dv, lane);
      if (s == 0 && stages_next) {
        // Chunk tile + chunks takes chunk tile's slot (at three chunks a
        // tile) and the O buffer, once every warp is done with both.
        __syncthreads();
        issue_chunk(tile + chunks, next_slot(first_slot, chunks), true);
      }
    }
    const int64_t k_row0 = tile * kBlockRows;
    store_rows<T, kHeadDim>(bits<T>(p.dk, seq.k_start(b, p.dk_batch_stride, p.dk_row_stride) + h * p.dk_head_stride),
                            p.dk_row_stride, int(k_row0) + 16 * warp, seq.seqlen_k, dk, scale, g, c);
    store_rows<T, kHeadDim>(bits<T>(p.dv, seq.k_start(b, p.dv_batch_stride, p.dv_row_stride) + h * p.dv_head_stride),
                            p.dv_row_stride, int(k_row0) + 16 * warp, seq.seqlen_k, dv, 1.f, g, c);
    if (tile + 1 < end_tile) load_fragments(tile + 1);
    if (stages_next) {
      wait_async<0>();
      __syncthreads();  // the new chunk's O and dO rows and its dlse are in
      const int slot = next_slot(first_slot, chunks);
      store_delta(slot, row_sum(half_row_dot<T, kHeadDim>(rows_o[row], slot_do(slot)[row], half)));
    }
  }
}

}  // namespace mma_bwd
}  // namespace fibsparse
