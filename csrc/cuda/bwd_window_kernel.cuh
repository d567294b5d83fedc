// The tensor-core backward of the window alone (no offsets) on dense batches
// whose queries and keys line up, where the general backward
// (bwd_mma_kernel.cuh) has two passes that both recompute the band's scores
// and dP:
//   dk/dv pass (bwd_mma_kernel.cuh, kWindowAlone), first: forms each staged
//     query's delta = <dO, O> - dlse (the general dq pass's prologue) from O
//     rows it stages beside dO, and writes each band tile's dS, key rows, to
//     p.band_dscores;
//   dq pass (here): dq = dS K over the band tiles, dS read back rather than
//     recomputed: no scores, exponentials or dO V^T products, no v or dO rows.
// A tile of 64 keys meets the queries of its own 64-row chunk and of the next
// band_dscore_steps - 1 chunks, so the dS buffer holds band_dscore_steps tiles
// of 64 x 64 per key tile and query head. dS is rounded to 16 bits in both
// routes (the A operand of dS K); dq moves within rounding, since here the
// sub-tiles of 16 keys start at the key tiles' rows and the scores come from
// the dk/dv pass's products.
#pragma once

#include <cstdint>

#include "../fibsparse.h"
#include "../pattern.h"
#include "bwd_mma_kernel.cuh"
#include "mma_tiles.cuh"

namespace fibsparse {
namespace mma_bwd {

// Dynamic shared memory of the dq pass: two stages of a dS tile (64 key rows
// of 64 queries) and 64 k rows.
template <int kHeadDim>
constexpr int kDqFromDscoresSmemBytes = 2 * kChunk * ((kChunk + 8) + (kHeadDim + 8)) * int(sizeof(uint16_t));

// Queues the sub-tiles of a stored dS tile (64 key rows of 64 queries, from
// src) that the dk/dv pass wrote: those of 16 keys x 16 queries that the band
// meets. The rest were never written, and the dq pass skips them; at window
// 128 they are a quarter of the three tiles a query tile reads, and reading
// them would cost DRAM sectors for nothing (a sub-tile's row is one 32-byte
// sector). A thread copies 16 bytes of rows r0, r0 + 16, r0 + 32, r0 + 48:
// one row in each 16-key sub-tile, all in one 16-query column.
__device__ __forceinline__ void stage_met_dscores(Rows<kChunk> dst, const uint16_t* src, int64_t q0, int64_t key0,
                                                  Band band) {
  constexpr int kVecsPerRow = kChunk / 8;
  static_assert(kMmaBlockThreads == 16 * kVecsPerRow, "a thread a row of each sub-tile row");
  const int col = (threadIdx.x % kVecsPerRow) * 8, r0 = threadIdx.x / kVecsPerRow;
  const int64_t queries = q0 + 16 * (col / 16);
#pragma unroll
  for (int t16 = 0; t16 < kChunk / 16; ++t16) {
    const int r = r0 + 16 * t16;
    if (band_meets(queries, key0 + 16 * t16, band)) copy_async_16(&dst[r][col], src + r * kChunk + col, true);
  }
}

// A block = 64 queries of one head; its steps are the 64-key tiles its band
// reaches, the last one its own.
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kMmaBlockThreads, kMinBlocks<kHeadDim>) dq_from_dscores_kernel(const Params p) {
  extern __shared__ __align__(16) uint16_t smem[];
  const auto stage_ds = [&](int s) { return reinterpret_cast<Rows<kChunk>>(smem) + s * kChunk; };
  const auto stage_k = [&](int s) {
    return reinterpret_cast<Rows<kHeadDim>>(smem + 2 * kChunk * (kChunk + 8)) + s * kChunk;
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
  const auto issue = [&](int n) {
    if (n < num_steps) {
      const int64_t key_tile = first_key_tile + n;
      const uint16_t* ds_src =
          bits<T>(static_cast<const void*>(p.band_dscores), band_dscore_index(p, b, h, key_tile, int(tile - key_tile)));
      stage_met_dscores(stage_ds(n % 2), ds_src, q0, key_tile * kChunk, p.band);
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
    RowPtr<kChunk> ds_rows = stage_ds(n % 2);
    RowPtr<kHeadDim> rows_k = stage_k(n % 2);
#pragma unroll
    for (int t16 = 0; t16 < kChunk / 16; ++t16) {
      // The sub-tiles the dk/dv pass skipped (band_meets) hold no dS.
      if (!band_meets(warp_q0, (first_key_tile + n) * kChunk + 16 * t16, p.band)) continue;  // warp-uniform
      // A = dS of the warp's 16 queries x the sub-tile's 16 keys, from key
      // rows: 8 x 8 tiles (keys +0 | +8) x (queries +0 | +8), transposed.
      uint32_t a[4];
      const int quarter = lane / 8;
      ldmatrix_x4_trans(a, ds_rows[16 * t16 + (quarter / 2) * 8 + lane % 8] + 16 * warp + (quarter % 2) * 8);
      add_a_times_rows<T, kHeadDim>(a, rows_k + 16 * t16, dq, lane);
    }
    __syncthreads();  // stage n % 2 is refilled by the next iteration's issue
  }
  store_rows<T, kHeadDim>(bits<T>(p.dq, seq.q_start(b, p.dq_batch_stride, p.dq_row_stride) + h * p.dq_head_stride),
                          p.dq_row_stride, warp_q0, seq.seqlen_q, dq, float(p.softmax_scale), g, c);
}

}  // namespace mma_bwd
}  // namespace fibsparse
