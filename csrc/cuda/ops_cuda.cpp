// The fibsparse ops on CUDA: checks, then the kernels (dispatch.cu and
// decode_kernel.cu pick the instantiation for q's dtype). Offsets are not read on the host (that would
// be a sync); the kernels check them on the device (offsets_check.cuh).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../capabilities.h"
#include "../env_switches.h"
#include "../kernels.h"
#include "../op_checks.h"
#include "../op_setup.h"
#include "position_sums.h"

namespace fibsparse {
namespace {

using at::Tensor;

// How the backward sums d(position)'s partials: position_sums.cu's kernel, or
// torch's sum where FIBSPARSE_POSITION_SUMS_KERNEL=0 (for comparisons). Read
// before any kernel runs, so that a value it refuses stops the call first.
RowSums position_row_sums() {
  return switched_off("FIBSPARSE_POSITION_SUMS_KERNEL") ? nullptr : &sum_position_partials_cuda;
}

std::tuple<Tensor, Tensor> fwd_cuda(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& offsets,
                                    at::IntArrayRef band, double softmax_scale) {
  check_attention_inputs(q, k, v, offsets, band, softmax_scale);
  const at::cuda::CUDAGuard guard(q.device());
  const ForwardCall call = prepare_forward(q, k, v, offsets, band, softmax_scale, std::nullopt, false);
  if (!call.empty) run_fwd_cuda(call.params, q.scalar_type(), call.fractional);
  return {call.out, call.lse};
}

std::tuple<Tensor, Tensor> decode_cuda(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                       const Tensor& cache_seqlens, const Tensor& offsets, at::IntArrayRef band,
                                       double softmax_scale, bool ring, const std::optional<Tensor>& block_table) {
  const bool paged = block_table.has_value();
  check_attention_inputs(q, k_cache, v_cache, offsets, band, softmax_scale, "k_cache", "v_cache", paged);
  if (paged) check_block_table(q, k_cache, *block_table, ring);
  check_cache_seqlens(q, cache_seqlens);
  const at::cuda::CUDAGuard guard(q.device());
  // Lengths and block table entries are checked on the device (offsets_check.cuh): reading them here would sync.
  const ForwardCall call =
      prepare_forward(q, k_cache, v_cache, offsets, band, softmax_scale, cache_seqlens, ring, nullptr, block_table);
  if (!call.empty) run_decode_cuda(call.params, q.scalar_type(), call.fractional);
  return {call.out, call.lse};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> bwd_cuda(const Tensor& dout, const Tensor& q, const Tensor& k,
                                                    const Tensor& v, const Tensor& out, const Tensor& lse,
                                                    const std::optional<Tensor>& dlse, const Tensor& offsets,
                                                    at::IntArrayRef band, double softmax_scale) {
  check_attention_inputs(q, k, v, offsets, band, softmax_scale);
  check_backward_inputs(dout, q, out, lse, dlse);
  const RowSums row_sums = position_row_sums();
  const at::cuda::CUDAGuard guard(q.device());
  const BackwardCall call = prepare_backward(dout, q, k, v, out, lse, dlse, offsets, band, softmax_scale,
                                             kCudaQueriesPerPartial, uses_tensor_cores(q.scalar_type()));
  if (!call.empty) run_bwd_cuda(call.params, q.scalar_type(), call.fractional);
  return backward_result(call, offsets, row_sums);
}

// Packed batches: the tensors get a batch dimension of 1 for the shared
// checks and setup, which then turn it into one entry per sequence. The
// boundaries' values are checked by the Python entry point (one sync per
// call) and by the kernels' check blocks, not here.
std::tuple<Tensor, Tensor> varlen_fwd_cuda(const Tensor& q, const Tensor& k, const Tensor& v,
                                           const Tensor& cu_seqlens_q, const Tensor& cu_seqlens_k,
                                           int64_t max_seqlen_q, int64_t max_seqlen_k, const Tensor& offsets,
                                           at::IntArrayRef band, double softmax_scale) {
  check_packed_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, offsets, band, softmax_scale);
  const at::cuda::CUDAGuard guard(q.device());
  const Packing packing{cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous(), max_seqlen_q, max_seqlen_k};
  const ForwardCall call = prepare_forward(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), offsets, band,
                                           softmax_scale, std::nullopt, false, &packing);
  if (!call.empty) run_fwd_cuda(call.params, q.scalar_type(), call.fractional);
  return {call.out.squeeze(0), call.lse.squeeze(0)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> varlen_bwd_cuda(const Tensor& dout, const Tensor& q, const Tensor& k,
                                                           const Tensor& v, const Tensor& out, const Tensor& lse,
                                                           const std::optional<Tensor>& dlse,
                                                           const Tensor& cu_seqlens_q, const Tensor& cu_seqlens_k,
                                                           int64_t max_seqlen_q, int64_t max_seqlen_k,
                                                           const Tensor& offsets, at::IntArrayRef band,
                                                           double softmax_scale) {
  check_packed_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, offsets, band, softmax_scale);
  const std::optional<Tensor> dlse_batched = check_packed_backward_inputs(dout, q, out, lse, dlse);
  const RowSums row_sums = position_row_sums();
  const at::cuda::CUDAGuard guard(q.device());
  const Packing packing{cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous(), max_seqlen_q, max_seqlen_k};
  const BackwardCall call = prepare_backward(
      dout.unsqueeze(0), q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), out.unsqueeze(0), lse.unsqueeze(0),
      dlse_batched, offsets, band, softmax_scale, kCudaQueriesPerPartial, uses_tensor_cores(q.scalar_type()), &packing);
  if (!call.empty) run_bwd_cuda(call.params, q.scalar_type(), call.fractional);
  auto [dq, dk, dv, doffsets] = backward_result(call, offsets, row_sums);
  return {dq.squeeze(0), dk.squeeze(0), dv.squeeze(0), doffsets};
}

}  // namespace

TORCH_LIBRARY_IMPL(fibsparse, CUDA, m) {
  m.impl("fwd", &fwd_cuda);
  m.impl("bwd", &bwd_cuda);
  m.impl("decode", &decode_cuda);
  m.impl("varlen_fwd", &varlen_fwd_cuda);
  m.impl("varlen_bwd", &varlen_bwd_cuda);
}

}  // namespace fibsparse
