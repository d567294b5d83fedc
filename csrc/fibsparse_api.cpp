// The fibsparse:: operator library: its schemas, and the C++ entry points of
// fibsparse_api.h, which call the ops through the dispatcher. Each device
// registers its own implementation (cpu/ops_cpu.cpp, cuda/ops_cuda.cpp), the
// Autograd key the derivative (autograd.cpp), the Meta key the Python fakes.
#include "fibsparse_api.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

namespace fibsparse {

using at::Tensor;

TORCH_LIBRARY(fibsparse, m) {
  m.def("fwd(Tensor q, Tensor k, Tensor v, Tensor offsets, int[] band, float softmax_scale) -> (Tensor, Tensor)");
  m.def(
      "bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? dlse, Tensor offsets, "
      "int[] band, float softmax_scale) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "decode(Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_seqlens, Tensor offsets, int[] band, "
      "float softmax_scale, bool ring, Tensor? block_table=None) -> (Tensor, Tensor)");
  // Packed (varlen) batches: q (total_q, heads, head_dim), k and v (total_k,
  // heads_kv, head_dim), lse (heads, total_q).
  m.def(
      "varlen_fwd(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, SymInt max_seqlen_q, "
      "SymInt max_seqlen_k, Tensor offsets, int[] band, float softmax_scale) -> (Tensor, Tensor)");
  m.def(
      "varlen_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? dlse, "
      "Tensor cu_seqlens_q, Tensor cu_seqlens_k, SymInt max_seqlen_q, SymInt max_seqlen_k, Tensor offsets, "
      "int[] band, float softmax_scale) -> (Tensor, Tensor, Tensor, Tensor)");
}

std::tuple<Tensor, Tensor> fwd(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& offsets,
                               at::IntArrayRef band, double softmax_scale) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fibsparse::fwd", "")
                             .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                               const Tensor&, at::IntArrayRef, double)>();
  return op.call(q, k, v, offsets, band, softmax_scale);
}

std::tuple<Tensor, Tensor> decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                  const Tensor& cache_seqlens, const Tensor& offsets, at::IntArrayRef band,
                                  double softmax_scale, bool ring, const std::optional<Tensor>& block_table) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fibsparse::decode", "")
          .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                            at::IntArrayRef, double, bool, const std::optional<Tensor>&)>();
  return op.call(q, k_cache, v_cache, cache_seqlens, offsets, band, softmax_scale, ring, block_table);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> bwd(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                               const Tensor& out, const Tensor& lse, const std::optional<Tensor>& dlse,
                                               const Tensor& offsets, at::IntArrayRef band, double softmax_scale) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fibsparse::bwd", "")
          .typed<std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                            const Tensor&, const Tensor&, const std::optional<Tensor>&,
                                                            const Tensor&, at::IntArrayRef, double)>();
  return op.call(dout, q, k, v, out, lse, dlse, offsets, band, softmax_scale);
}

std::tuple<Tensor, Tensor> varlen_fwd(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens_q,
                                      const Tensor& cu_seqlens_k, c10::SymInt max_seqlen_q, c10::SymInt max_seqlen_k,
                                      const Tensor& offsets, at::IntArrayRef band, double softmax_scale) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fibsparse::varlen_fwd", "")
          .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                            c10::SymInt, c10::SymInt, const Tensor&, at::IntArrayRef, double)>();
  return op.call(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, offsets, band, softmax_scale);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> varlen_bwd(const Tensor& dout, const Tensor& q, const Tensor& k,
                                                      const Tensor& v, const Tensor& out, const Tensor& lse,
                                                      const std::optional<Tensor>& dlse, const Tensor& cu_seqlens_q,
                                                      const Tensor& cu_seqlens_k, c10::SymInt max_seqlen_q,
                                                      c10::SymInt max_seqlen_k, const Tensor& offsets, at::IntArrayRef band,
                                                      double softmax_scale) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fibsparse::varlen_bwd", "")
          .typed<std::tuple<Tensor, Tensor, Tensor, Tensor>(
              const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
              const std::optional<Tensor>&, const Tensor&, const Tensor&, c10::SymInt, c10::SymInt, const Tensor&,
              at::IntArrayRef, double)>();
  return op.call(dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, offsets, band,
                 softmax_scale);
}

#ifndef FIBSPARSE_WITH_CUDA
// A CPU-only build says why CUDA inputs are refused, instead of the
// dispatcher's "could not run with arguments from the CUDA backend".
namespace {
[[noreturn]] void refuse_cuda() {
  TORCH_CHECK(false, "fibsparse_ext was built without CUDA; reinstall on a machine with nvcc");
}
std::tuple<Tensor, Tensor> fwd_unbuilt(const Tensor&, const Tensor&, const Tensor&, const Tensor&, at::IntArrayRef,
                                       double) {
  refuse_cuda();
}
std::tuple<Tensor, Tensor> decode_unbuilt(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                          at::IntArrayRef, double, bool, const std::optional<Tensor>&) {
  refuse_cuda();
}
std::tuple<Tensor, Tensor, Tensor, Tensor> bwd_unbuilt(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                       const Tensor&, const Tensor&, const std::optional<Tensor>&,
                                                       const Tensor&, at::IntArrayRef, double) {
  refuse_cuda();
}
std::tuple<Tensor, Tensor> varlen_fwd_unbuilt(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                              const Tensor&, int64_t, int64_t, const Tensor&, at::IntArrayRef,
                                              double) {
  refuse_cuda();
}
std::tuple<Tensor, Tensor, Tensor, Tensor> varlen_bwd_unbuilt(const Tensor&, const Tensor&, const Tensor&,
                                                              const Tensor&, const Tensor&, const Tensor&,
                                                              const std::optional<Tensor>&, const Tensor&,
                                                              const Tensor&, int64_t, int64_t, const Tensor&,
                                                              at::IntArrayRef, double) {
  refuse_cuda();
}
}  // namespace

TORCH_LIBRARY_IMPL(fibsparse, CUDA, m) {
  m.impl("fwd", &fwd_unbuilt);
  m.impl("bwd", &bwd_unbuilt);
  m.impl("decode", &decode_unbuilt);
  m.impl("varlen_fwd", &varlen_fwd_unbuilt);
  m.impl("varlen_bwd", &varlen_bwd_unbuilt);
}
#endif

}  // namespace fibsparse
