// The derivative of fibsparse::fwd, registered in C++ at the Autograd key.
//
// A Python autograd registration (torch.library.register_autograd) runs
// Python on every forward and backward call: ~130 us more host time per
// training step than scaled_dot_product_attention on the device's CPU, which
// at 16k tokens is as long as the kernels themselves (bench/host_path.py).
// Here the forward and backward go straight from the autograd engine to the
// CPU/CUDA implementations.
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <vector>
#include <tuple>
#include <utility>

#include "fibsparse_api.h"

namespace fibsparse {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The gradients of (out, lse) as the backward ops take them: dout zeros where
// only lse was used, dlse absent where lse was not. The autograd functions
// turn off materialize_grads so that an unused output's gradient arrives
// undefined: materialized, an unused lse would come as a zero tensor, filled
// on every step and read by the backward (the delta pass loads it per row).
std::pair<Tensor, std::optional<Tensor>> output_gradients(const variable_list& grads, const Tensor& out) {
  return {grads[0].defined() ? grads[0] : at::zeros_like(out),
          grads[1].defined() ? std::optional<Tensor>(grads[1]) : std::nullopt};
}

class Attention : public torch::autograd::Function<Attention> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                               const Tensor& offsets, at::IntArrayRef band, double softmax_scale) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->set_materialize_grads(false);
    auto [out, lse] = fwd(q, k, v, offsets, band, softmax_scale);
    ctx->save_for_backward({q, k, v, offsets, out, lse});
    ctx->saved_data["band"] = band.vec();
    ctx->saved_data["softmax_scale"] = softmax_scale;
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &q = saved[0], &k = saved[1], &v = saved[2], &offsets = saved[3], &out = saved[4], &lse = saved[5];
    const auto [dout, dlse] = output_gradients(grads, out);
    const std::vector<int64_t> band = ctx->saved_data["band"].toIntVector();
    const double softmax_scale = ctx->saved_data["softmax_scale"].toDouble();
    // With create_graph the call goes through bwd's own autograd registration
    // (_ops.py), which makes a second derivative raise instead of coming out
    // as zero; otherwise straight to the implementation.
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    auto [dq, dk, dv, doffsets] = bwd(dout, q, k, v, out, lse, dlse, offsets, band, softmax_scale);
    return {dq, dk, dv, offsets.is_floating_point() ? doffsets : Tensor(), Tensor(), Tensor()};
  }
};

// The same for a packed batch. max_seqlen stays symbolic under
// torch.compile(dynamic=True), so a new longest sequence does not recompile.
class PackedAttention : public torch::autograd::Function<PackedAttention> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                               const Tensor& cu_seqlens_q, const Tensor& cu_seqlens_k, c10::SymInt max_seqlen_q,
                               c10::SymInt max_seqlen_k, const Tensor& offsets, at::IntArrayRef band,
                               double softmax_scale) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->set_materialize_grads(false);
    auto [out, lse] =
        varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, offsets, band, softmax_scale);
    ctx->save_for_backward({q, k, v, offsets, out, lse, cu_seqlens_q, cu_seqlens_k});
    ctx->saved_data["max_seqlen_q"] = max_seqlen_q;
    ctx->saved_data["max_seqlen_k"] = max_seqlen_k;
    ctx->saved_data["band"] = band.vec();
    ctx->saved_data["softmax_scale"] = softmax_scale;
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &q = saved[0], &k = saved[1], &v = saved[2], &offsets = saved[3], &out = saved[4], &lse = saved[5];
    const Tensor &cu_seqlens_q = saved[6], &cu_seqlens_k = saved[7];
    const auto [dout, dlse] = output_gradients(grads, out);
    const std::vector<int64_t> band = ctx->saved_data["band"].toIntVector();
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;  // as in Attention::backward
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    auto [dq, dk, dv, doffsets] =
        varlen_bwd(dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k, ctx->saved_data["max_seqlen_q"].toSymInt(),
                   ctx->saved_data["max_seqlen_k"].toSymInt(), offsets, band, ctx->saved_data["softmax_scale"].toDouble());
    const Tensor doffsets_if_fractional = offsets.is_floating_point() ? doffsets : Tensor();
    // One gradient per input of forward: q, k, v, the four packing arguments, offsets, band, softmax_scale.
    return {dq, dk, dv, Tensor(), Tensor(), Tensor(), Tensor(), doffsets_if_fractional, Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor> varlen_fwd_autograd(const Tensor& q, const Tensor& k, const Tensor& v,
                                               const Tensor& cu_seqlens_q, const Tensor& cu_seqlens_k,
                                               c10::SymInt max_seqlen_q, c10::SymInt max_seqlen_k,
                                               const Tensor& offsets, at::IntArrayRef band, double softmax_scale) {
  const variable_list outputs = PackedAttention::apply(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                                       offsets, band, softmax_scale);
  return {outputs[0], outputs[1]};
}

std::tuple<Tensor, Tensor> fwd_autograd(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& offsets,
                                        at::IntArrayRef band, double softmax_scale) {
  const variable_list outputs = Attention::apply(q, k, v, offsets, band, softmax_scale);
  return {outputs[0], outputs[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fibsparse, Autograd, m) {
  m.impl("fwd", &fwd_autograd);
  m.impl("varlen_fwd", &varlen_fwd_autograd);
}

}  // namespace fibsparse
