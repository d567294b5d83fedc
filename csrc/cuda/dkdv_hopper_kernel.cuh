// The dk/dv pass on Hopper (sm_90a) for the window alone (no offsets), 16-bit
// inputs on dense batches at head_dim 64 (tensor_maps.h's
// hopper_backward_applies): the same products as the mma.sync pass
// (bwd_mma_kernel.cuh), each a warpgroup product (wgmma.cuh) on tiles that
// TMA stages (tma.cuh).
//
// A block is one warpgroup and 64 keys of one kv head; warp w owns keys
// 16 w .. 16 w + 15. For each query head of the kv group in turn it walks the
// band's readers of its keys, 64 query rows a step (the band mirrored, as the
// mma.sync pass's QuerySteps), and per step:
//   S^T = K Q^T and dP^T = V dO^T (64 x 64, k and v from the block's shared
//   tiles, q and dO from the step's stage);
//   P^T = exp(S^T - lse), masked to the band; dS^T = P^T (dP^T - delta), with
//   delta from the dq pass, which runs first;
//   dV += P^T dO and dK += dS^T Q, with P^T and dS^T in registers as the
//   products' A operand and the stage's dO and q read as MN-major tiles.
// Thread 0 issues every TMA load, kStages steps ahead: a stage is refilled once
// the block's barrier at the end of the step that read it has passed. Rows
// past a sequence's end load as zeros and are masked. The kernel makes no
// function call, which would make ptxas serialize its wgmma (its "C7510").
#pragma once

#include <cuda.h>

#include <cmath>

#include "../fibsparse.h"
#include "../pattern.h"
#include "bwd_mma_kernel.cuh"
#include "mma_tiles.cuh"
#include "tensor_maps.h"
#include "tma.cuh"
#include "wgmma.cuh"

namespace fibsparse {
namespace hopper_bwd {

using mma_tiles::kBlockRows;
using tma::kRegionBytes;
using tma::kTileRows;

template <int kHeadDim>
struct DkdvShape {
  static constexpr int kThreads = 128;  // one warpgroup
  static constexpr int kStages = 3;
  static constexpr int kMinBlocks = 2;
  static constexpr int kTileBytes = tma::kTileBytes<kHeadDim>;
  // The k and v tiles, then per stage a q and a dO tile, then the barriers
  // (one per stage and one for k and v); 1024 bytes of slack align the tiles
  // to the swizzle's 1024-byte atoms.
  static constexpr int kSmemBytes = 1024 + (2 + 2 * kStages) * kTileBytes + (kStages + 1) * 8;
  static_assert(kMinBlocks * (kSmemBytes + 1024) <= 228 * 1024, "an SM's shared memory, with 1 KB per block for the driver");
};

template <typename T, int kHeadDim>
__global__ void __launch_bounds__(DkdvShape<kHeadDim>::kThreads, DkdvShape<kHeadDim>::kMinBlocks)
    dkdv_hopper_kernel(const __grid_constant__ Params p, const __grid_constant__ BackwardTensorMaps maps) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using S = DkdvShape<kHeadDim>;
  using namespace mma_tiles;
  constexpr int kDimTiles = kHeadDim / 8, kRowTiles = kTileRows / 8, kRegions = kHeadDim / 64;
  extern __shared__ char smem_raw[];
  char* smem = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  char* k_smem = smem;
  char* v_smem = smem + S::kTileBytes;
  const auto q_stage = [&](int s) { return smem + (2 + 2 * s) * S::kTileBytes; };
  const auto do_stage = [&](int s) { return smem + (3 + 2 * s) * S::kTileBytes; };
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + (2 + 2 * S::kStages) * S::kTileBytes);
  uint64_t* kv_full = full + S::kStages;

  const int hk = blockIdx.y, b = blockIdx.z;
  const Sequence seq = sequence_of(p, b);  // a dense batch: q_pos_shift = seqlen_k - seqlen_q
  const int block_key = blockIdx.x * kBlockRows;
  const int group = p.heads / p.heads_kv, first_head = hk * group;
  // The band's readers of keys block_key .. block_key + 63 (QuerySteps).
  const int64_t first_pos = block_key, last_pos = band_last_reader(block_key + kBlockRows - 1, p.band);
  const int64_t band_first_row = (first_pos > seq.q_pos_shift ? first_pos : seq.q_pos_shift) - seq.q_pos_shift;
  const int64_t last_row = last_pos - seq.q_pos_shift;
  const int64_t band_last_row = last_row < seq.seqlen_q - 1 ? last_row : seq.seqlen_q - 1;
  const int steps_per_head =
      band_last_row >= band_first_row ? int((band_last_row - band_first_row) / kTileRows) + 1 : 0;
  const int num_steps = steps_per_head * group;
  const auto step_row = [&](int n) { return band_first_row + int64_t(n % steps_per_head) * kTileRows; };
  const auto step_head = [&](int n) { return first_head + n / steps_per_head; };

  const auto issue = [&](int n) {
    const int s = n % S::kStages, row = int(step_row(n)), h = step_head(n);
    tma::arrive_expect_bytes(&full[s], 2 * S::kTileBytes);
    for (int r = 0; r < kRegions; ++r) {
      tma::load_4d(q_stage(s) + r * kRegionBytes, &maps.q, &full[s], 64 * r, h, row, b);
      tma::load_4d(do_stage(s) + r * kRegionBytes, &maps.dout, &full[s], 64 * r, h, row, b);
    }
  };
  if (threadIdx.x == 0) {
    for (int s = 0; s < S::kStages; ++s) tma::barrier_init(&full[s], 1);
    tma::barrier_init(kv_full, 1);
    tma::fence_barrier_init();
    tma::arrive_expect_bytes(kv_full, 2 * S::kTileBytes);
    for (int r = 0; r < kRegions; ++r) {
      tma::load_4d(k_smem + r * kRegionBytes, &maps.k, kv_full, 64 * r, hk, block_key, b);
      tma::load_4d(v_smem + r * kRegionBytes, &maps.v, kv_full, 64 * r, hk, block_key, b);
    }
    for (int n = 0; n < S::kStages && n < num_steps; ++n) issue(n);
  }
  __syncthreads();  // the barriers exist before anyone waits on them

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int warp_k0 = block_key + 16 * warp;
  const float scale = float(p.softmax_scale), scale_log2 = scale * float(M_LOG2E);
  float dk[kDimTiles][4] = {}, dv[kDimTiles][4] = {};
  float st[kRowTiles][4], dpt[kRowTiles][4];  // rows: the warp's keys; columns: the step's 64 queries
  uint32_t pa[kTileRows / 16][4], dsa[kTileRows / 16][4];
  tma::wait(kv_full, 0);
  for (int n = 0; n < num_steps; ++n) {
    const int s = n % S::kStages;
    tma::wait(&full[s], uint32_t(n / S::kStages) & 1);
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      wgmma::ss_64<T>(st, wgmma::k_major_slice<kHeadDim>(k_smem, kk), wgmma::k_major_slice<kHeadDim>(q_stage(s), kk), kk > 0);
    }
    wgmma::commit();
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      wgmma::ss_64<T>(dpt, wgmma::k_major_slice<kHeadDim>(v_smem, kk), wgmma::k_major_slice<kHeadDim>(do_stage(s), kk), kk > 0);
    }
    wgmma::commit();
    // This thread's query columns 8 j + 2 c, +1: their lse (in log2 units) and
    // delta, loaded while the products run. Columns past the band's last row
    // are masked below and read nothing.
    const int64_t row0 = step_row(n);
    const int64_t stats = stats_index(p, seq, b, step_head(n), 0);
    const float* lse_row = static_cast<const float*>(p.lse) + stats;
    const float* delta_row = static_cast<const float*>(p.delta) + stats;
    float lse_log2[kRowTiles][2], delta[kRowTiles][2];
#pragma unroll
    for (int j = 0; j < kRowTiles; ++j) {
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        const int64_t row = row0 + 8 * j + 2 * c + x;
        const bool valid = row <= band_last_row;
        lse_log2[j][x] = valid ? mma_bwd::backward_lse(lse_row[row]) * float(M_LOG2E) : 0.f;
        delta[j][x] = valid ? delta_row[row] : 0.f;
      }
    }
    wgmma::wait<0>();
    wgmma::fence_operands(st);
    wgmma::fence_operands(dpt);
    const int distance0 = thread_distance<true>(warp_k0, row0 + seq.q_pos_shift, g, c);
    const int last_col = int(band_last_row - row0);
#pragma unroll
    for (int j = 0; j < kRowTiles; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = 8 * j + 2 * c + e % 2;
        const bool attended = col <= last_col && in_band(element_distance<true>(distance0, j, e), p.band);
        const float prob = attended ? fast_exp2(st[j][e] * scale_log2 - lse_log2[j][e % 2]) : 0.f;
        dpt[j][e] = prob * (dpt[j][e] - delta[j][e % 2]);  // dS^T
        st[j][e] = prob;                                   // P^T
      }
    }
#pragma unroll
    for (int kk = 0; kk < kTileRows / 16; ++kk) {
      c_to_a_fragment<T>(st, 2 * kk, 1.f, pa[kk]);
      c_to_a_fragment<T>(dpt, 2 * kk, 1.f, dsa[kk]);
    }
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < kTileRows / 16; ++kk) wgmma::rs<T, kHeadDim>(dv, pa[kk], wgmma::mn_major_slice(do_stage(s), kk), 1);
#pragma unroll
    for (int kk = 0; kk < kTileRows / 16; ++kk) wgmma::rs<T, kHeadDim>(dk, dsa[kk], wgmma::mn_major_slice(q_stage(s), kk), 1);
    wgmma::commit();
    wgmma::wait<0>();
    wgmma::fence_operands(dv);
    wgmma::fence_operands(dk);
    __syncthreads();  // every warp is done with stage s: refill it
    if (threadIdx.x == 0 && n + S::kStages < num_steps) issue(n + S::kStages);
    __syncwarp();  // warp 0 whole again before the next step's wgmma
  }
  mma_bwd::store_rows<T, kHeadDim>(bits<T>(p.dk, seq.k_start(b, p.dk_batch_stride, p.dk_row_stride) + hk * p.dk_head_stride),
                          p.dk_row_stride, warp_k0, seq.seqlen_k, dk, scale, g, c);
  mma_bwd::store_rows<T, kHeadDim>(bits<T>(p.dv, seq.k_start(b, p.dv_batch_stride, p.dv_row_stride) + hk * p.dv_head_stride),
                          p.dv_row_stride, warp_k0, seq.seqlen_k, dv, 1.f, g, c);
#else
  __trap();  // launched only where hopper_backward_applies: a build with sm_90a, on such a device
#endif
}

}  // namespace hopper_bwd
}  // namespace fibsparse
