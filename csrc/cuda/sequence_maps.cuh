// The Hopper forward's tensor maps for each sequence of a packed batch, made on
// the device so that the host never reads cu_seqlens (a sync). The host makes
// maps of the whole packed q, k, v and out (tensor_maps.h); for sequence b this
// kernel's warp gives each a base address at the sequence's first row and a
// row count of its length. A box that reaches before the sequence's first row
// or past its last then loads zeros, as in a dense batch, and never a row of
// another sequence: a masked score's weight 0 times a non-finite row would be
// NaN. A stored box writes none of its rows past the sequence's last. The
// forward acquires the maps before it loads or stores through them (tma.cuh).
#pragma once

#include <cuda.h>

#include <cstdint>

#include "../fibsparse.h"
#include "../pattern.h"
#include "tensor_maps.h"
#include "tma.cuh"

namespace fibsparse {

// One block of one warp per sequence; `per_sequence` holds p.batch sets.
template <bool kFractional>
__global__ void __launch_bounds__(32)
    sequence_maps_kernel(const Params p, const __grid_constant__ HopperForwardMaps<kFractional> whole,
                         HopperForwardMaps<kFractional>* per_sequence) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Maps = HopperForwardMaps<kFractional>;
  __shared__ alignas(128) Maps maps;
  const int b = blockIdx.x;
  if (threadIdx.x == 0) {
    const Sequence seq = sequence_of(p, b);
    const auto first_row = [](const void* tensor, int64_t element) {
      return static_cast<const char*>(tensor) + element * int64_t(sizeof(uint16_t));
    };
    const char* q = first_row(p.q, seq.q_start(b, p.q_batch_stride, p.q_row_stride));
    const char* k = first_row(p.k, seq.k_start(b, p.k_batch_stride, p.k_row_stride));
    const char* v = first_row(p.v, seq.k_start(b, p.v_batch_stride, p.v_row_stride));
    const char* out = first_row(p.out, seq.q_start(b, p.o_batch_stride, p.o_row_stride));
    // A map has at least one row; an empty sequence has no tile that loads.
    const uint32_t q_rows = seq.seqlen_q > 0 ? seq.seqlen_q : 1, k_rows = seq.seqlen_k > 0 ? seq.seqlen_k : 1;
    maps = whole;
    tma::set_map_rows(&maps.q, q, q_rows);
    tma::set_map_rows(&maps.k, k, k_rows);
    tma::set_map_rows(&maps.v, v, k_rows);
    tma::set_map_rows(&maps.k_strip, k, k_rows);
    tma::set_map_rows(&maps.v_strip, v, k_rows);
    tma::set_map_rows(&maps.out, out, q_rows);
    if constexpr (kFractional) {
      tma::set_map_rows(&maps.k_prefix, k, k_rows);
      tma::set_map_rows(&maps.v_prefix, v, k_rows);
    }
  }
  __syncwarp();
  const CUtensorMap* from = reinterpret_cast<const CUtensorMap*>(&maps);
  CUtensorMap* to = reinterpret_cast<CUtensorMap*>(per_sequence + b);
#pragma unroll
  for (int i = 0; i < kMapsPerSet<kFractional>; ++i) tma::publish_map(to + i, from + i);
#else
  __trap();  // launched only where hopper_forward_applies: a build with sm_90a, on such a device
#endif
}

}  // namespace fibsparse
