// What the CPU and CUDA ops share between their checks and their kernels:
// inputs laid out for the kernels, new outputs, and the Params describing
// them. Nothing here checks arguments (op_checks.h) or launches a kernel.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "fibsparse.h"

namespace fibsparse {

// Accumulation type: float for 16/32-bit inputs, double for double.
at::ScalarType acc_dtype(at::ScalarType t);

// A packed (varlen) batch, FlashAttention's convention: the ops' q, k, v are
// (total, heads, head_dim), sequence b holds rows [cu_seqlens[b],
// cu_seqlens[b + 1]) (int32, on the tensors' device), and max_seqlen bounds
// every sequence (it sizes the grids). The prepare functions take such
// tensors with a leading batch dimension of 1 (unsqueeze(0)); their outputs
// keep it, and lse is (1, heads, total_q).
struct Packing {
  at::Tensor cu_seqlens_q, cu_seqlens_k;
  int64_t max_seqlen_q, max_seqlen_k;
};

// A forward (or decode) call, ready for the kernels: inputs laid out for
// them, outputs allocated, Params filled. `empty` when there is nothing to
// compute (the outputs are returned as they are).
// A decode call passes its cache's lengths, and for a paged cache its block
// table (k and v are then the pool of pages).
struct ForwardCall {
  at::Tensor q, k, v, offsets, lengths, block_table, out, lse;
  Params params{};
  bool fractional = false, empty = false;
};
ForwardCall prepare_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& offsets,
                            at::IntArrayRef band, double softmax_scale, const std::optional<at::Tensor>& cache_seqlens,
                            bool ring, const Packing* packing = nullptr,
                            const std::optional<at::Tensor>& block_table = std::nullopt);

// A backward call, ready for the kernels. The devices differ in how many
// queries share a partial sum of d(position) and in whether the kernels
// keep each (query, offset)'s probability and d score between their passes
// (the tensor-core backward).
struct BackwardCall {
  at::Tensor q, k, v, out, dout, offsets, lse, dlse, delta, dq, dk, dv, partial, offset_terms;
  Params params{};
  int64_t num_partials = 0, partial_batch = 0;  // the partials are (heads, K, partial_batch, num_partials)
  bool fractional = false, empty = false;
};
BackwardCall prepare_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& dlse,
                              const at::Tensor& offsets, at::IntArrayRef band, double softmax_scale,
                              int queries_per_partial, bool keeps_offset_terms, const Packing* packing = nullptr);

// Sums each row of a (rows, length) tensor into a (rows,) one, in a fixed order.
using RowSums = at::Tensor (*)(const at::Tensor& rows);

// (dq, dk, dv, doffsets) once the kernels ran: the partial sums of
// d(position) reduced in a fixed order (by `row_sums` where given, else by
// torch), in the shape and dtype of `offsets`.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_result(const BackwardCall& call,
                                                                           const at::Tensor& offsets,
                                                                           RowSums row_sums = nullptr);

}  // namespace fibsparse
