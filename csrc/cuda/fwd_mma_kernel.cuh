// Tensor-core forward for float16 / bfloat16 (the training and inference
// dtypes); float32 / float64 keep the lane-group kernel of fwd_kernel.cuh.
//
// A block owns kBlockQ = 64 consecutive queries of one (batch, head); each of
// its 4 warps owns 16 of them, as the A operand of mma.m16n8k16 (mma.cuh).
//   Band: the block's band keys [p0 - window + 1, p0 + 63] are a dense strip.
//     It is staged through shared memory 64 key rows at a time; each warp
//     scores the 16-key sub-tiles that meet its own band (S = Q K^T on tensor
//     cores), masks to the band, updates its online softmax, and adds P V.
//   Offsets: for offset distance d, the 16 queries of a warp read the 16
//     consecutive key rows pw - d .. pw - d + 15: one coalesced strip per
//     offset, staged per warp. Scoring the warp's queries against the strip
//     is a 16x16 tile whose diagonal holds the wanted scores; the rest is
//     masked, so offsets reuse the band's tile code. A fractional position
//     a + f reads two strips (rows pw - a and pw - a - 1) and mixes the
//     scores, and P V, with weights 1 - f and f, as pattern.h defines.
// The steps (band chunks, then one step per offset) run as a two-stage
// cp.async pipeline: the rows of step n + 1 are in flight while step n
// computes, so a block waits on memory about once, not once per step.
// Scores are kept in log2 units (scale * log2(e) folded in) for exp2.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <cmath>

#include "../fibsparse.h"
#include "../pattern.h"
#include "../static_switch.h"
#include "mma.cuh"

namespace fibsparse {
namespace mma_fwd {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kBlockQ = 16 * kWarps;  // queries per block
constexpr int kChunk = 64;             // band keys staged per step
constexpr int kStripRows = 17;         // an offset strip: 16 rows, plus one for interpolation
constexpr int kBufRows = kStripRows * kWarps;  // >= kChunk: the band buffer is reused for strips
static_assert(kBufRows >= kChunk);

// Rows padded by 8 elements (16 bytes), so that the 8 row groups of a
// fragment load fall in different shared-memory banks.
template <int kHeadDim>
using RowPtr = const uint16_t (*)[kHeadDim + 8];
// Two pipeline stages of k and v rows.
template <int kHeadDim>
constexpr int kSmemBytes = 2 * 2 * kBufRows * (kHeadDim + 8) * int(sizeof(uint16_t));

// Starts an asynchronous 16-byte copy global -> shared; when `valid` is
// false nothing is read and the 16 bytes are zero-filled (rows outside the
// sequence: masked later, but they must not be NaN for P V).
__device__ __forceinline__ void copy_async_16(void* dst, const void* src, bool valid) {
  const uint32_t dst_addr = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst_addr), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void commit_async() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most `kPending` committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void wait_async() { asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending)); }

// Queues copies of key rows into shared rows dst[r] for r < count, where
// row r holds position first_of(r); positions outside [0, last] become zero rows.
template <int kHeadDim, typename FirstOf>
__device__ __forceinline__ void stage_rows(uint16_t (*dst)[kHeadDim + 8], const uint16_t* src, int64_t row_stride,
                                           int count, FirstOf position_of, int64_t last) {
  constexpr int kVecs = kHeadDim / 8;
  for (int x = threadIdx.x; x < count * kVecs; x += kThreads) {
    const int r = x / kVecs, c = x % kVecs;
    const int64_t j = position_of(r);
    const bool valid = j >= 0 && j <= last;
    copy_async_16(&dst[r][c * 8], src + (valid ? j * row_stride : 0) + c * 8, valid);
  }
}

// s[j0], s[j0 + 1] = Q K^T for the 16 keys in rows k_rows[0..15].
template <typename T, int kHeadDim, int N>
__device__ __forceinline__ void score_16_keys(const uint32_t (&qf)[kHeadDim / 16][4], RowPtr<kHeadDim> k_rows,
                                              float (&s)[N][4], int j0, int g, int c) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
#pragma unroll
    for (int e = 0; e < 4; ++e) s[j0 + half][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      const uint16_t* row = k_rows[8 * half + g];
      const uint32_t b0 = *reinterpret_cast<const uint32_t*>(row + 16 * kk + 2 * c);
      const uint32_t b1 = *reinterpret_cast<const uint32_t*>(row + 16 * kk + 8 + 2 * c);
      mma_16816<T>(s[j0 + half], qf[kk], b0, b1);
    }
  }
}

// o += (weight * P) V for the 16 keys of s[j0], s[j0 + 1] (probabilities)
// against the value rows v_rows[0..15].
template <typename T, int kHeadDim, int N>
__device__ __forceinline__ void add_pv_16_keys(const float (&s)[N][4], int j0, float weight, RowPtr<kHeadDim> v_rows,
                                               float (&o)[kHeadDim / 8][4], int g, int c) {
  const uint32_t a[4] = {pack2<T>(weight * s[j0][0], weight * s[j0][1]),
                         pack2<T>(weight * s[j0][2], weight * s[j0][3]),
                         pack2<T>(weight * s[j0 + 1][0], weight * s[j0 + 1][1]),
                         pack2<T>(weight * s[j0 + 1][2], weight * s[j0 + 1][3])};
#pragma unroll
  for (int n = 0; n < kHeadDim / 8; ++n) {
    const int col = 8 * n + g;
    const uint32_t b0 = pack_bits(v_rows[2 * c][col], v_rows[2 * c + 1][col]);
    const uint32_t b1 = pack_bits(v_rows[2 * c + 8][col], v_rows[2 * c + 9][col]);
    mma_16816<T>(o[n], a, b0, b1);
  }
}

// Online softmax over a tile of masked, log2-scaled scores: rescales the
// running output and sum, and turns s into probabilities relative to the new
// running max. Row r of this thread is fragment row g + 8r; the 4 threads of a
// quad share a row.
template <int N, int kDimTiles>
__device__ __forceinline__ void softmax_update(float (&s)[N][4], float (&m)[2], float (&l)[2],
                                               float (&o)[kDimTiles][4]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float tile_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < N; ++j) tile_max = fmaxf(tile_max, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
    const float new_max = fmaxf(m[r], tile_max);
    const float base = new_max == -INFINITY ? 0.f : new_max;  // a row with nothing attended yet
    const float rescale = exp2f(m[r] - base);
    m[r] = new_max;
    l[r] *= rescale;
#pragma unroll
    for (int n = 0; n < kDimTiles; ++n) {
      o[n][2 * r] *= rescale;
      o[n][2 * r + 1] *= rescale;
    }
#pragma unroll
    for (int j = 0; j < N; ++j) {
      s[j][2 * r] = exp2f(s[j][2 * r] - base);
      s[j][2 * r + 1] = exp2f(s[j][2 * r + 1] - base);
      l[r] += s[j][2 * r] + s[j][2 * r + 1];
    }
  }
}

template <typename T, typename OffsetT, int kHeadDim>
__global__ void __launch_bounds__(kThreads) fwd_mma_kernel(const Params p) {
  constexpr int kKSteps = kHeadDim / 16, kDimTiles = kHeadDim / 8, kChunkTiles = kChunk / 8;
  extern __shared__ __align__(16) uint16_t smem[];
  using Rows = uint16_t(*)[kHeadDim + 8];
  // Stage n of the pipeline: k rows stage_k(n), v rows stage_v(n).
  const auto stage_k = [&](int n) { return reinterpret_cast<Rows>(smem) + (2 * n) * kBufRows; };
  const auto stage_v = [&](int n) { return reinterpret_cast<Rows>(smem) + (2 * n + 1) * kBufRows; };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
  const int h = blockIdx.y, b = blockIdx.z, hk = h / (p.heads / p.heads_kv);
  const int warp_q0 = blockIdx.x * kBlockQ + 16 * warp;  // the warp's first query row
  const int64_t block_pos = int64_t(blockIdx.x) * kBlockQ + p.q_pos_shift;
  const int64_t warp_pos = warp_q0 + int64_t(p.q_pos_shift);
  const int64_t last_key = p.seqlen_k - 1;
  const float scale_log2 = float(p.softmax_scale) * float(M_LOG2E);
  const auto* k_src = reinterpret_cast<const uint16_t*>(static_cast<const T*>(p.k) + b * p.k_batch_stride +
                                                        hk * p.k_head_stride);
  const auto* v_src = reinterpret_cast<const uint16_t*>(static_cast<const T*>(p.v) + b * p.v_batch_stride +
                                                        hk * p.v_head_stride);
  const OffsetT* offs = static_cast<const OffsetT*>(p.offsets) + h * p.offsets_head_stride;

  // Band: distances 0 .. window - 1, as chunks of kChunk key rows.
  const int64_t band_first = block_pos - (p.window - 1) > 0 ? block_pos - (p.window - 1) : 0;
  const int64_t band_last = block_pos + kBlockQ - 1 < last_key ? block_pos + kBlockQ - 1 : last_key;
  const int64_t warp_first = warp_pos - (p.window - 1), warp_last = warp_pos + 15;
  const int band_steps = int((band_last - band_first) / kChunk) + 1;
  const int num_steps = band_steps + p.num_offsets;

  // An offset's whole and fractional parts (pattern.h: rows pos - whole and
  // pos - whole - 1, weights 1 - frac and frac); whole < 0 for padding.
  const auto split_offset = [&](int t, int64_t& whole, float& frac) {
    const auto distance = distance_at<float>(t, p.window, offs);
    if constexpr (std::is_integral_v<OffsetT>) {
      whole = distance;
      frac = 0.f;
    } else {
      whole = distance < 0 ? -1 : int64_t(floorf(distance));
      frac = distance < 0 ? 0.f : distance - floorf(distance);
    }
  };
  // Queues the rows of step n into stage n % 2 (and always commits a group,
  // so that the wait below counts the same for every step).
  const auto issue = [&](int n) {
    if (n < band_steps) {
      const int64_t chunk = band_first + int64_t(n) * kChunk;
      const auto position_of = [&](int r) { return chunk + r; };
      stage_rows<kHeadDim>(stage_k(n % 2), k_src, p.k_row_stride, kChunk, position_of, band_last);
      stage_rows<kHeadDim>(stage_v(n % 2), v_src, p.v_row_stride, kChunk, position_of, band_last);
    } else if (n < num_steps) {
      int64_t whole;
      float frac;
      split_offset(p.window + n - band_steps, whole, frac);
      if (whole >= 0) {
        // Warp w's strip: rows kStripRows * w + x, x = 0..16, hold position
        // pos_w - whole - 1 + x, so that query x of the warp reads its first
        // row at strip row x + 1 and its second (interpolation) row at x.
        const auto position_of = [&](int r) {
          return block_pos + 16 * (r / kStripRows) - whole - 1 + r % kStripRows;
        };
        stage_rows<kHeadDim>(stage_k(n % 2), k_src, p.k_row_stride, kBufRows, position_of, last_key);
        stage_rows<kHeadDim>(stage_v(n % 2), v_src, p.v_row_stride, kBufRows, position_of, last_key);
      }
    }
    commit_async();
  };
  issue(0);

  // The warp's 16 query rows as A fragments (rows past seqlen_q are zeros).
  uint32_t qf[kKSteps][4];
  {
    const auto* q_src = reinterpret_cast<const uint16_t*>(static_cast<const T*>(p.q) + b * p.q_batch_stride +
                                                          h * p.q_head_stride);
    const uint16_t* rows[2] = {q_src + int64_t(warp_q0 + g) * p.q_row_stride,
                               q_src + int64_t(warp_q0 + g + 8) * p.q_row_stride};
    const bool valid[2] = {warp_q0 + g < p.seqlen_q, warp_q0 + g + 8 < p.seqlen_q};
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {  // a0 (g, 2c), a1 (g+8, 2c), a2 (g, 2c+8), a3 (g+8, 2c+8)
        const int r = e % 2, col = 16 * kk + 2 * c + 8 * (e / 2);
        qf[kk][e] = valid[r] ? *reinterpret_cast<const uint32_t*>(rows[r] + col) : 0u;
      }
    }
  }

  float o[kDimTiles][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  for (int n = 0; n < num_steps; ++n) {
    issue(n + 1);  // an empty group past the last step
    wait_async<1>();
    __syncthreads();  // step n's rows, copied by every thread, are in place
    RowPtr<kHeadDim> rows_k = stage_k(n % 2), rows_v = stage_v(n % 2);
    if (n < band_steps) {
      const int64_t chunk = band_first + int64_t(n) * kChunk;
      if (chunk <= warp_last && chunk + kChunk - 1 >= warp_first) {  // warp-uniform
        float s[kChunkTiles][4];
#pragma unroll
        for (int t16 = 0; t16 < kChunk / 16; ++t16) {
          const int64_t key0 = chunk + 16 * t16;
          if (key0 <= warp_last && key0 + 15 >= warp_first) {
            score_16_keys<T, kHeadDim>(qf, rows_k + 16 * t16, s, 2 * t16, g, c);
          }  // else every score of the sub-tile is masked below
        }
#pragma unroll
        for (int j = 0; j < kChunkTiles; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int64_t distance = (warp_pos + g + 8 * (e / 2)) - (chunk + 8 * j + 2 * c + e % 2);
            s[j][e] = distance >= 0 && distance < p.window ? s[j][e] * scale_log2 : -INFINITY;
          }
        }
        softmax_update(s, m, l, o);
#pragma unroll
        for (int t16 = 0; t16 < kChunk / 16; ++t16) {
          const int64_t key0 = chunk + 16 * t16;
          if (key0 <= warp_last && key0 + 15 >= warp_first) {
            add_pv_16_keys<T, kHeadDim>(s, 2 * t16, 1.f, rows_v + 16 * t16, o, g, c);
          }
        }
      }
    } else {
      const int t = p.window + n - band_steps;
      int64_t whole;
      float frac;
      split_offset(t, whole, frac);
      if (whole >= 0) {  // not padding (the same for the whole block)
        RowPtr<kHeadDim> strip_k = rows_k + kStripRows * warp, strip_v = rows_v + kStripRows * warp;
        float s[2][4];
        score_16_keys<T, kHeadDim>(qf, strip_k + 1, s, 0, g, c);
        if (frac != 0.f) {
          float s1[2][4];
          score_16_keys<T, kHeadDim>(qf, strip_k, s1, 0, g, c);
#pragma unroll
          for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[j][e] += frac * (s1[j][e] - s[j][e]);
        }
        // Only the diagonal (query x, strip key x) is a pair of the pattern.
#pragma unroll
        for (int j = 0; j < 2; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int row = g + 8 * (e / 2), col = 8 * j + 2 * c + e % 2;
            const bool valid = col == row && sample_key<float>(warp_pos + row, t, p.window, offs).valid;
            s[j][e] = valid ? s[j][e] * scale_log2 : -INFINITY;
          }
        }
        softmax_update(s, m, l, o);
        add_pv_16_keys<T, kHeadDim>(s, 0, 1.f - frac, strip_v + 1, o, g, c);
        if (frac != 0.f) add_pv_16_keys<T, kHeadDim>(s, 0, frac, strip_v, o, g, c);
      }
    }
    __syncthreads();  // stage n % 2 is refilled by the next iteration's issue
  }

  // Finish: sum each row over its quad, normalize, store out and lse.
  auto* out = reinterpret_cast<uint16_t*>(static_cast<T*>(p.out) + b * p.o_batch_stride + h * p.o_head_stride);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    const int i = warp_q0 + g + 8 * r;
    if (i >= p.seqlen_q) continue;
    const float inv = 1.f / l[r];
    uint16_t* row = out + int64_t(i) * p.o_row_stride;
#pragma unroll
    for (int n = 0; n < kDimTiles; ++n) {
      *reinterpret_cast<uint32_t*>(row + 8 * n + 2 * c) = pack2<T>(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
    }
    if (c == 0) {
      static_cast<float*>(p.lse)[(int64_t(b) * p.heads + h) * p.seqlen_q + i] = m[r] * float(M_LN2) + logf(l[r]);
    }
  }
}

template <typename T>
void launch(const Params& p, bool fractional) {
  const dim3 grid((p.seqlen_q + kBlockQ - 1) / kBlockQ, p.heads, p.batch);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  HEADDIM_SWITCH(p.head_dim, kHeadDim, [&] {
    BOOL_SWITCH(fractional, kFrac, [&] {
      using OffsetT = std::conditional_t<kFrac, float, int32_t>;
      const auto kernel = fwd_mma_kernel<T, OffsetT, kHeadDim>;
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes<kHeadDim>));
      kernel<<<grid, kThreads, kSmemBytes<kHeadDim>, stream>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace mma_fwd
}  // namespace fibsparse
