// The C++ entry points of the fibsparse:: ops (through the dispatcher, so the
// autograd, CPU and CUDA registrations all apply): what the autograd
// function and the CMake driver call.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace fibsparse {

// `band` holds the band's parameters, [window] (Band in fibsparse.h).
// Returns (out, lse). out has q's shape and dtype; lse is (batch, heads,
// seqlen_q), float32 (float64 for float64 inputs).
std::tuple<at::Tensor, at::Tensor> fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const at::Tensor& offsets, at::IntArrayRef band, double softmax_scale);

// Attention of the newest seqlen_q tokens of each sequence against a KV cache
// (batch, capacity, heads_kv, head_dim) holding cache_seqlens[b] tokens, in
// slot p % capacity when `ring`; or, with a block_table (batch,
// pages_per_sequence) int32, against a paged cache (num_pages, page_size,
// heads_kv, head_dim) holding position p of sequence b in row p % page_size of
// page block_table[b][p / page_size]. Returns (out, lse) as fwd. Lengths and
// the block table entries a call reads are checked by the CPU op on every
// call and by the CUDA kernel's check blocks on the device; a bad one never
// reads out of bounds.
std::tuple<at::Tensor, at::Tensor> decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                          const at::Tensor& cache_seqlens, const at::Tensor& offsets,
                                          at::IntArrayRef band, double softmax_scale, bool ring,
                                          const std::optional<at::Tensor>& block_table = std::nullopt);

// Returns (dq, dk, dv, doffsets). doffsets has the shape and dtype of a
// fractional `offsets`, and is empty for integer offsets.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bwd(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& dlse,
    const at::Tensor& offsets, at::IntArrayRef band, double softmax_scale);

// A packed (varlen) batch: q (total_q, heads, head_dim), k and v (total_k,
// heads_kv, head_dim); sequence b holds rows [cu_seqlens_q[b],
// cu_seqlens_q[b + 1]) of q and [cu_seqlens_k[b], cu_seqlens_k[b + 1]) of k
// (int32, on the tensors' device), and positions restart in each. Returns
// (out, lse) with lse (heads, total_q).
std::tuple<at::Tensor, at::Tensor> varlen_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                              const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k,
                                              c10::SymInt max_seqlen_q, c10::SymInt max_seqlen_k, const at::Tensor& offsets,
                                              at::IntArrayRef band, double softmax_scale);

// The backward of varlen_fwd: (dq, dk, dv, doffsets) as bwd's.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> varlen_bwd(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& dlse, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, c10::SymInt max_seqlen_q, c10::SymInt max_seqlen_k, const at::Tensor& offsets,
    at::IntArrayRef band, double softmax_scale);

}  // namespace fibsparse
