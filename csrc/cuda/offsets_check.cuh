// The offsets' values, checked on the device at every launch: the host checks
// device offsets once per tensor version (a host copy costs a sync), and torch.compile,
// direct op calls and writes behind torch's version counter skip that check. Each
// launch has one extra block per (head, or GQA block of heads, sequence) along x; those
// of the first sequence check their head's row and leave, so the attention blocks only
// compare their index (a check inside them cost 3% of the step). A bad entry stops the
// kernel with a device-side assert, which torch raises at the next sync. A decode
// launch's check blocks also check the cache's lengths and block table. The Hopper
// forward, which may make no function call, runs the check as a launch of its own
// before it (offsets_check_kernel).
#pragma once

#include <c10/macros/Macros.h>

#include "../fibsparse.h"
#include "../pattern.h"

// torch releases before CUDA_KERNEL_ASSERT_MSG have CUDA_KERNEL_ASSERT (no message).
#ifndef CUDA_KERNEL_ASSERT_MSG
#define CUDA_KERNEL_ASSERT_MSG(cond, msg) CUDA_KERNEL_ASSERT(cond)
#endif

namespace fibsparse {

// Blocks along x that a launch adds to the attention's for the check.
constexpr unsigned kOffsetsCheckBlocks = 1;

__device__ __forceinline__ bool is_offsets_check_block() { return blockIdx.x + kOffsetsCheckBlocks == gridDim.x; }

// Checks the row of offsets of head `h`; offsets do not depend on the
// sequence, so only the check blocks of the first sequence look. In a packed
// batch the check blocks of head 0 also check their sequence's boundaries
// (which the Python entry point checks on the host, but a direct op call or
// torch.compile does not).
template <typename OffsetT>
__device__ __forceinline__ void check_offsets_on_device(const Params& p, int h) {
  if (p.cu_seqlens_q != nullptr && h == 0 && threadIdx.x == 0) {
    CUDA_KERNEL_ASSERT_MSG(sequence_bounds_valid(p.cu_seqlens_q, p.cu_seqlens_k, blockIdx.z, p.batch, p.total_q,
                                                 p.total_k, p.seqlen_q, p.seqlen_k),
                           "fibsparse: cu_seqlens_q / cu_seqlens_k must start at 0, never decrease, end at the "
                           "tensors' rows, stay within max_seqlen and give seqlen_q <= seqlen_k in every sequence");
  }
  if (blockIdx.z != 0) return;
  const OffsetT* row = static_cast<const OffsetT*>(p.offsets) + h * p.offsets_head_stride;
  for (int t = threadIdx.x; t < p.num_offsets; t += blockDim.x) {
    CUDA_KERNEL_ASSERT_MSG(offset_entry_valid(row, t, p.min_offset_distance),
                           "fibsparse: offsets must be strictly increasing, finite, >= 0 (integer ones >= window), "
                           "padded with -1 only at the end; they changed without torch's version counter seeing it, "
                           "or the op was called without fibsparse_attn's checks");
  }
}

// A decode launch's cache, checked by the check block of (head h, sequence
// b): the sequence's length (pattern.h's cache_length_valid: it counts the new
// queries and, linear or paged, fits the cache) and, paged, that the block
// table entries of the pages head h reads are pages of the pool. Heads that
// share one row of offsets read the same pages, so only head 0 looks then.
// With this check the Python entry point need not copy the lengths to the
// host (a sync) to keep a bad one from passing.
template <typename OffsetT, bool kPaged>
__device__ __forceinline__ void check_cache_on_device(const Params& p, int h, int b) {
  const int64_t length = p.cache_seqlens[b];
  if (h == 0 && threadIdx.x == 0) {
    CUDA_KERNEL_ASSERT_MSG(cache_length_valid(length, p.seqlen_q, p.seqlen_k, p.ring),
                           "fibsparse: every cache_seqlens entry must count the new tokens (>= q's seqlen_q) and, "
                           "in a linear or paged cache, fit it (<= capacity, or <= block_table's pages_per_sequence "
                           "x page_size)");
  }
  if (!kPaged || (h != 0 && p.offsets_head_stride == 0)) return;
  const OffsetT* row = static_cast<const OffsetT*>(p.offsets) + h * p.offsets_head_stride;
  const int64_t end = length < p.seqlen_k ? length : p.seqlen_k;  // a bad length is reported above
  const int64_t first = first_position_read(end, p.seqlen_q, farthest_distance(row, p.num_offsets, p.band));
  const int32_t* pages = p.block_table + b * p.block_table_stride;
  for (int64_t slot = first / p.page_size + threadIdx.x; slot * p.page_size < end; slot += blockDim.x) {
    CUDA_KERNEL_ASSERT_MSG(page_valid(pages[slot], p.num_pages),
                           "fibsparse: block_table entries of the pages a decode call reads (positions "
                           "cache_seqlens - seqlen_q - the farthest distance .. cache_seqlens - 1) must be in "
                           "[0, num_pages)");
  }
}

// The check of a grid whose blocks serve kHeads query heads each, heads
// blockIdx.y * kHeads onward (mma_tiles.cuh's heads_per_block). Blocks serve
// several heads only when all heads share one row of offsets, which the check
// blocks of the first heads check once.
template <typename OffsetT, int kHeads>
__device__ __forceinline__ void check_offsets_of_heads(const Params& p) {
  if (kHeads > 1 && blockIdx.y != 0) return;
  check_offsets_on_device<OffsetT>(p, blockIdx.y * kHeads);
}

// The same check as a launch of its own, on a grid of (1, heads / kHeads, 1)
// blocks for a dense batch (the offsets do not depend on the sequence), or
// (1, heads / kHeads, sequences) for a packed one (whose blocks of head 0 check
// their sequence's boundaries), for a kernel that cannot hold it: a kernel that issues
// wgmma must make no function call (the assert is one), or ptxas serializes
// every wgmma of it (its "C7510" report).
template <typename OffsetT, int kHeads>
__global__ void offsets_check_kernel(const Params p) {
  check_offsets_of_heads<OffsetT, kHeads>(p);
}

}  // namespace fibsparse
