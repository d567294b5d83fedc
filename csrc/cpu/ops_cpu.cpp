// The fibsparse ops on the CPU: checks, then the kernels of fibsparse_cpu.cpp.
// float16 / bfloat16 inputs are computed in float32 and rounded at the end.
// The offsets' values are checked here on every call (a few numbers on the
// host, no sync), so a direct call of the op or torch.compile cannot pass
// bad ones either.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>
#include <type_traits>

#include "../kernels.h"
#include "../op_checks.h"
#include "../op_setup.h"
#include "../pattern.h"
#include "../to_text.h"

namespace fibsparse {
namespace {

using at::Tensor;

bool is_low_precision(const Tensor& t) { return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16; }

Tensor to_float(const Tensor& t) { return t.to(at::kFloat); }

// pattern.h's offset_entry_valid, entry by entry, with an error naming the entry.
template <typename OffsetT>
void check_offset_rows(const Tensor& offsets, int64_t min_distance) {
  const int64_t rows = offsets.dim() == 2 ? offsets.size(0) : 1, count = offsets.size(-1);
  const OffsetT* data = offsets.data_ptr<OffsetT>();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < count; ++t) {
      TORCH_CHECK(offset_entry_valid(data + r * count, int(t), min_distance), "offsets",
                  offsets.dim() == 2 ? "[" + to_text(r) + "]" : std::string(), " entry ", to_text(t), " (",
                  std::is_integral_v<OffsetT> ? to_text(int64_t(data[r * count + t])) : to_text(double(data[r * count + t])),
                  ") is not allowed: offsets must be strictly increasing, finite "
                  "and >= 0, integer ones >= window (", to_text(min_distance), "), padded with -1 only at the end");
    }
  }
}

// `offsets` as the kernels read them (int32, float32 or float64).
void check_offset_values(const Tensor& offsets, at::IntArrayRef band) {
  const int64_t min_distance = band_end(band.data());
  if (offsets.scalar_type() == at::kInt) {
    check_offset_rows<int32_t>(offsets, min_distance);
  } else if (offsets.scalar_type() == at::kFloat) {
    check_offset_rows<float>(offsets, min_distance);
  } else {
    check_offset_rows<double>(offsets, min_distance);
  }
}

// The forward of fwd, decode and varlen_fwd, after their checks. A decode
// call's lengths and the block table entries it reads are checked here too.
std::tuple<Tensor, Tensor> attend(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& offsets,
                                  at::IntArrayRef band, double softmax_scale,
                                  const std::optional<Tensor>& cache_seqlens, bool ring,
                                  const Packing* packing = nullptr,
                                  const std::optional<Tensor>& block_table = std::nullopt) {
  if (is_low_precision(q)) {
    auto [out, lse] = attend(to_float(q), to_float(k), to_float(v), offsets, band, softmax_scale, cache_seqlens, ring,
                             packing, block_table);
    return {out.to(q.scalar_type()), lse};
  }
  const ForwardCall call =
      prepare_forward(q, k, v, offsets, band, softmax_scale, cache_seqlens, ring, packing, block_table);
  check_offset_values(call.offsets, band);
  if (cache_seqlens.has_value() && !call.empty) check_decode_lengths(call.params, call.offsets);
  if (!call.empty) run_fwd_cpu(call.params, q.scalar_type(), call.fractional);
  return {call.out, call.lse};
}

std::tuple<Tensor, Tensor> fwd_cpu(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& offsets,
                                   at::IntArrayRef band, double softmax_scale) {
  check_attention_inputs(q, k, v, offsets, band, softmax_scale);
  return attend(q, k, v, offsets, band, softmax_scale, std::nullopt, false);
}

std::tuple<Tensor, Tensor> decode_cpu(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                      const Tensor& cache_seqlens, const Tensor& offsets, at::IntArrayRef band,
                                      double softmax_scale, bool ring, const std::optional<Tensor>& block_table) {
  const bool paged = block_table.has_value();
  check_attention_inputs(q, k_cache, v_cache, offsets, band, softmax_scale, "k_cache", "v_cache", paged);
  if (paged) check_block_table(q, k_cache, *block_table, ring);
  check_cache_seqlens(q, cache_seqlens);
  return attend(q, k_cache, v_cache, offsets, band, softmax_scale, cache_seqlens, ring, nullptr, block_table);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                                    const Tensor& v, const Tensor& out, const Tensor& lse,
                                                    const std::optional<Tensor>& dlse, const Tensor& offsets,
                                                    at::IntArrayRef band, double softmax_scale,
                                                    const Packing* packing = nullptr) {
  if (is_low_precision(q)) {
    auto [dq, dk, dv, doffsets] = backward(to_float(dout), to_float(q), to_float(k), to_float(v), to_float(out), lse,
                                           dlse, offsets, band, softmax_scale, packing);
    return {dq.to(q.scalar_type()), dk.to(q.scalar_type()), dv.to(q.scalar_type()), doffsets};
  }
  // One partial sum of d(position) per query; no per-(query, offset) buffers.
  const BackwardCall call =
      prepare_backward(dout, q, k, v, out, lse, dlse, offsets, band, softmax_scale, 1, false, packing);
  check_offset_values(call.offsets, band);
  if (!call.empty) run_bwd_cpu(call.params, q.scalar_type(), call.fractional);
  return backward_result(call, offsets);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> bwd_cpu(const Tensor& dout, const Tensor& q, const Tensor& k,
                                                   const Tensor& v, const Tensor& out, const Tensor& lse,
                                                   const std::optional<Tensor>& dlse, const Tensor& offsets,
                                                   at::IntArrayRef band, double softmax_scale) {
  check_attention_inputs(q, k, v, offsets, band, softmax_scale);
  check_backward_inputs(dout, q, out, lse, dlse);
  return backward(dout, q, k, v, out, lse, dlse, offsets, band, softmax_scale);
}

// Packed batches: the tensors get a batch dimension of 1 for the shared
// checks and setup, which then turn it into one entry per sequence.
std::tuple<Tensor, Tensor> varlen_fwd_cpu(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens_q,
                                          const Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k,
                                          const Tensor& offsets, at::IntArrayRef band, double softmax_scale) {
  check_packed_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, offsets, band, softmax_scale);
  check_packed_lengths(cu_seqlens_q, cu_seqlens_k, q.size(0), k.size(0), max_seqlen_q, max_seqlen_k);
  const Packing packing{cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous(), max_seqlen_q, max_seqlen_k};
  auto [out, lse] = attend(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), offsets, band, softmax_scale, std::nullopt,
                           false, &packing);
  return {out.squeeze(0), lse.squeeze(0)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> varlen_bwd_cpu(const Tensor& dout, const Tensor& q, const Tensor& k,
                                                          const Tensor& v, const Tensor& out, const Tensor& lse,
                                                          const std::optional<Tensor>& dlse,
                                                          const Tensor& cu_seqlens_q, const Tensor& cu_seqlens_k,
                                                          int64_t max_seqlen_q, int64_t max_seqlen_k,
                                                          const Tensor& offsets, at::IntArrayRef band,
                                                          double softmax_scale) {
  check_packed_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, offsets, band, softmax_scale);
  const std::optional<Tensor> dlse_batched = check_packed_backward_inputs(dout, q, out, lse, dlse);
  check_packed_lengths(cu_seqlens_q, cu_seqlens_k, q.size(0), k.size(0), max_seqlen_q, max_seqlen_k);
  const Packing packing{cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous(), max_seqlen_q, max_seqlen_k};
  auto [dq, dk, dv, doffsets] = backward(dout.unsqueeze(0), q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0),
                                         out.unsqueeze(0), lse.unsqueeze(0), dlse_batched, offsets, band,
                                         softmax_scale, &packing);
  return {dq.squeeze(0), dk.squeeze(0), dv.squeeze(0), doffsets};
}

}  // namespace

TORCH_LIBRARY_IMPL(fibsparse, CPU, m) {
  m.impl("fwd", &fwd_cpu);
  m.impl("bwd", &bwd_cpu);
  m.impl("decode", &decode_cpu);
  m.impl("varlen_fwd", &varlen_fwd_cpu);
  m.impl("varlen_bwd", &varlen_bwd_cpu);
}

}  // namespace fibsparse
