// Argument checks shared by the CPU and CUDA ops. Each names the argument,
// what it got and what is allowed; every op runs them before it allocates or
// writes anything. The Python fakes (fibsparse_ext/_checks.py) mirror them.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace fibsparse {

// q, k, v, offsets, band and softmax_scale of any op. k_name, v_name: what
// the caller calls k and v (the decode op's k_cache, v_cache).
void check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& offsets,
                            at::IntArrayRef band, double softmax_scale, const char* k_name = "k",
                            const char* v_name = "v");

// The packed (varlen) ops' own arguments: q (total_q, heads, head_dim), k and
// v (total_k, heads_kv, head_dim), cu_seqlens_q/k int32 (batch + 1,) on q's
// device, and the max_seqlen bounds. The rest (dtypes, head_dim, offsets,
// band) is check_attention_inputs' on the tensors with a batch dimension of 1.
void check_packed_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                         int64_t max_seqlen_k);

// The values of CPU cu_seqlens (a CUDA op leaves them to the Python entry
// point and to the kernels' device-side check: reading them here would sync).
void check_packed_lengths(const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k, int64_t total_q,
                          int64_t total_k, int64_t max_seqlen_q, int64_t max_seqlen_k);

// The packed backward's lse (heads, total_q) and dlse.
void check_packed_lse(const at::Tensor& q, const at::Tensor& lse, const std::optional<at::Tensor>& dlse);

// The decode op's cache lengths: one int32/int64 per sequence, on q's device.
void check_cache_seqlens(const at::Tensor& q, const at::Tensor& cache_seqlens);

// What the backward adds to its forward's inputs.
void check_backward_inputs(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& out, const at::Tensor& lse,
                           const std::optional<at::Tensor>& dlse);

}  // namespace fibsparse
