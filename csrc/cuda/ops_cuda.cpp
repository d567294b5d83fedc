// The fibsparse ops on CUDA: checks, then the kernels (dispatch.cu and
// decode_kernel.cu pick the instantiation for q's dtype). Offsets are not read on the host (that would
// be a sync); the kernels check them on the device (offsets_check.cuh).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../capabilities.h"
#include "../kernels.h"
#include "../op_checks.h"
#include "../op_setup.h"

namespace fibsparse {
namespace {

using at::Tensor;

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
                                       double softmax_scale, bool ring) {
  check_attention_inputs(q, k_cache, v_cache, offsets, band, softmax_scale, "k_cache", "v_cache");
  check_cache_seqlens(q, cache_seqlens);
  const at::cuda::CUDAGuard guard(q.device());
  const ForwardCall call = prepare_forward(q, k_cache, v_cache, offsets, band, softmax_scale, cache_seqlens, ring);
  if (!call.empty) run_decode_cuda(call.params, q.scalar_type(), call.fractional);
  return {call.out, call.lse};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> bwd_cuda(const Tensor& dout, const Tensor& q, const Tensor& k,
                                                    const Tensor& v, const Tensor& out, const Tensor& lse,
                                                    const std::optional<Tensor>& dlse, const Tensor& offsets,
                                                    at::IntArrayRef band, double softmax_scale) {
  check_attention_inputs(q, k, v, offsets, band, softmax_scale);
  check_backward_inputs(dout, q, out, lse, dlse);
  const at::cuda::CUDAGuard guard(q.device());
  const BackwardCall call = prepare_backward(dout, q, k, v, out, lse, dlse, offsets, band, softmax_scale,
                                             kCudaQueriesPerPartial, uses_tensor_cores(q.scalar_type()));
  if (!call.empty) run_bwd_cuda(call.params, q.scalar_type(), call.fractional);
  return backward_result(call, offsets);
}

}  // namespace

TORCH_LIBRARY_IMPL(fibsparse, CUDA, m) {
  m.impl("fwd", &fwd_cuda);
  m.impl("bwd", &bwd_cuda);
  m.impl("decode", &decode_cuda);
}

}  // namespace fibsparse
