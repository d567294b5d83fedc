// Argument checks shared by the CPU and CUDA ops. Each names the argument,
// what it got and what is allowed; every op runs them before it allocates or
// writes anything. The Python fakes (fibsparse_ext/_checks.py) mirror them.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "fibsparse.h"

namespace fibsparse {

// q, k, v, offsets, band and softmax_scale of any op. k_name, v_name: what
// the caller calls k and v (the decode op's k_cache, v_cache). `paged`: k and
// v are a pool of pages (num_pages, page_size, heads_kv, head_dim), whose
// first two dimensions check_block_table checks against the block table
// instead of q's batch and seqlen_q.
void check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& offsets,
                            at::IntArrayRef band, double softmax_scale, const char* k_name = "k",
                            const char* v_name = "v", bool paged = false);

// A paged decode call's block table: int32 (batch, pages_per_sequence) on q's
// device, a pool of at least one page of at least one row, no ring, and a
// sequence capacity (pages_per_sequence * page_size) that holds the new
// queries and fits the kernels' int32 positions. Its values are
// check_decode_lengths'.
void check_block_table(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& block_table, bool ring);

// The packed (varlen) ops' arguments: q (total_q, heads, head_dim), k and v
// (total_k, heads_kv, head_dim), cu_seqlens_q/k int32 (batch + 1,) on q's
// device, and the max_seqlen bounds; then (dtypes, head_dim, offsets, band,
// softmax_scale) check_attention_inputs on the tensors with a batch dimension of 1.
void check_packed_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                         int64_t max_seqlen_k, const at::Tensor& offsets, at::IntArrayRef band, double softmax_scale);

// The values of CPU cu_seqlens (a CUDA op leaves them to the Python entry
// point and to the kernels' device-side check: reading them here would sync).
void check_packed_lengths(const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k, int64_t total_q,
                          int64_t total_k, int64_t max_seqlen_q, int64_t max_seqlen_k);

// What the packed backward adds to its forward's inputs: lse (heads, total_q)
// and dlse, then check_backward_inputs on the tensors with a batch dimension
// of 1. Returns dlse with that batch dimension, as the shared backward takes it.
std::optional<at::Tensor> check_packed_backward_inputs(const at::Tensor& dout, const at::Tensor& q,
                                                       const at::Tensor& out, const at::Tensor& lse,
                                                       const std::optional<at::Tensor>& dlse);

// The decode op's cache lengths: one int32/int64 per sequence, on q's device.
void check_cache_seqlens(const at::Tensor& q, const at::Tensor& cache_seqlens);

// The values of a CPU decode call's lengths and of the block table entries it
// reads (pattern.h's cache_length_valid, page_valid, first_position_read),
// from the Params the kernels will read and the offsets as they read them
// (int32, float32 or float64); the CUDA kernel's check blocks apply the same
// rules on the device.
void check_decode_lengths(const Params& p, const at::Tensor& kernel_offsets);

// What the backward adds to its forward's inputs.
void check_backward_inputs(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& out, const at::Tensor& lse,
                           const std::optional<at::Tensor>& dlse);

}  // namespace fibsparse
