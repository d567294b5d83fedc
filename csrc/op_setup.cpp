#include "op_setup.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "env_switches.h"
#include "pattern.h"
#include "to_text.h"

namespace fibsparse {

using at::Tensor;

at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

namespace {

bool is_fractional(const Tensor& offsets) { return at::isFloatingType(offsets.scalar_type()); }

// Rows must be contiguous and 16-byte aligned for the vector loads of the
// CUDA kernels; copy when they are not (e.g. a transposed view).
Tensor rows_ready(const Tensor& t) {
  const int64_t align = 16 / t.element_size();
  bool ok = t.stride(-1) == 1 && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int d = 0; d < 3 && ok; ++d) ok = t.stride(d) % align == 0 || t.size(d) == 1;
  return ok ? t : t.clone(at::MemoryFormat::Contiguous);
}

// Offsets as the kernels read them: int32 distances, or positions in the
// accumulation type; always contiguous.
Tensor kernel_offsets(const Tensor& offsets, at::ScalarType dtype) {
  Tensor out;
  if (is_fractional(offsets)) {
    out = offsets.to(acc_dtype(dtype)).contiguous();
  } else {
    if (offsets.scalar_type() == at::kLong && offsets.numel() > 0) {  // costs a sync: pass int32 to avoid it
      const int64_t lo = offsets.min().item<int64_t>(), hi = offsets.max().item<int64_t>();
      TORCH_CHECK(hi <= INT32_MAX && lo >= -1, "offsets must be distances in [0, 2^31 - 1] (or -1 for padding), got ",
                  "values in [", to_text(lo), ", ", to_text(hi), "]");
    }
    out = offsets.to(at::kInt).contiguous();
  }
  return out;
}

// A pool of pages as the paged kernels read it: rows_ready's rows, and pages
// evenly strided (page stride = page_size * row stride), so that a key's row
// counted over the whole pool, page * page_size + row, is one row stride apart
// from the next. A pool sliced along its rows is copied.
Tensor pages_ready(const Tensor& t) {
  Tensor rows = rows_ready(t);
  const bool even = rows.size(0) == 1 || rows.stride(0) == rows.size(1) * rows.stride(1);
  return even ? rows : rows.clone(at::MemoryFormat::Contiguous);
}

void set_strides(const Tensor& t, int64_t& batch, int64_t& row, int64_t& head) {
  batch = t.stride(0);
  row = t.stride(1);
  head = t.stride(2);
}

Params attention_params(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& offsets,
                        at::IntArrayRef band, double softmax_scale, const Tensor& out, const Tensor& lse) {
  Params p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.offsets = offsets.data_ptr();
  set_strides(q, p.q_batch_stride, p.q_row_stride, p.q_head_stride);
  set_strides(k, p.k_batch_stride, p.k_row_stride, p.k_head_stride);
  set_strides(v, p.v_batch_stride, p.v_row_stride, p.v_head_stride);
  p.offsets_head_stride = offsets.dim() == 2 ? offsets.size(1) : 0;
  p.batch = q.size(0);
  p.seqlen_q = q.size(1);
  p.heads = q.size(2);
  p.head_dim = q.size(3);
  p.seqlen_k = k.size(1);
  p.heads_kv = k.size(2);
  p.band = band_for_keys(band.data(), k.size(1));
  p.num_offsets = offsets.size(-1);
  p.min_offset_distance = band_end(band.data());
  p.q_pos_shift = p.seqlen_k - p.seqlen_q;
  p.softmax_scale = softmax_scale;
  p.out = out.data_ptr();
  set_strides(out, p.o_batch_stride, p.o_row_stride, p.o_head_stride);
  p.lse = lse.data_ptr();
  p.stats_batch_stride = int64_t(p.heads) * p.seqlen_q;
  p.stats_head_stride = p.seqlen_q;
  return p;
}

// Params of tensors with a leading dimension of 1, turned into those of the
// packed batch they hold: one "batch entry" per sequence, all at batch
// stride 0 (each finds its rows through cu_seqlens), grids sized by the
// longest sequence, lse and delta (heads, total_q).
void pack_params(Params& p, const Packing& packing, at::IntArrayRef band) {
  p.cu_seqlens_q = packing.cu_seqlens_q.data_ptr<int32_t>();
  p.cu_seqlens_k = packing.cu_seqlens_k.data_ptr<int32_t>();
  p.total_q = p.seqlen_q;
  p.total_k = p.seqlen_k;
  p.batch = static_cast<int>(packing.cu_seqlens_q.size(0) - 1);
  p.seqlen_q = static_cast<int>(packing.max_seqlen_q);
  p.seqlen_k = static_cast<int>(packing.max_seqlen_k);
  p.q_pos_shift = 0;  // per sequence (sequence_of)
  p.band = band_for_keys(band.data(), packing.max_seqlen_k);
  p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = p.o_batch_stride = 0;
  p.do_batch_stride = p.dq_batch_stride = p.dk_batch_stride = p.dv_batch_stride = 0;
  p.stats_batch_stride = 0;
  p.stats_head_stride = p.total_q;
}

// Params of a decode call against a paged cache: k and v are the pool, and a
// sequence's keys are found through its row of the block table (key_row).
void page_params(Params& p, const Tensor& block_table, const Tensor& pool, at::IntArrayRef band) {
  p.block_table = block_table.data_ptr<int32_t>();
  p.block_table_stride = block_table.stride(0);
  p.num_pages = static_cast<int>(pool.size(0));
  p.page_size = static_cast<int>(pool.size(1));
  p.pages_per_sequence = static_cast<int>(block_table.size(1));
  p.seqlen_k = p.pages_per_sequence * p.page_size;  // a sequence's capacity (op_checks: < 2^31)
  p.band = band_for_keys(band.data(), p.seqlen_k);
  p.q_pos_shift = p.seqlen_k - p.seqlen_q;
  p.k_batch_stride = p.v_batch_stride = 0;  // rows are counted from the pool's start
}

// An output, NaN-filled under FIBSPARSE_POISON_OUTPUTS (env_switches.h).
Tensor new_output(const Tensor& like, at::IntArrayRef shape, at::ScalarType dtype) {
  Tensor t = at::empty(shape, like.options().dtype(dtype));
  if (poison_outputs()) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

Tensor new_output_like(const Tensor& like) { return new_output(like, like.sizes(), like.scalar_type()); }

}  // namespace

ForwardCall prepare_forward(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& offsets_in,
                            at::IntArrayRef band, double softmax_scale, const std::optional<Tensor>& cache_seqlens,
                            bool ring, const Packing* packing, const std::optional<Tensor>& block_table) {
  ForwardCall call;
  const auto dtype = q_in.scalar_type();
  const bool paged = block_table.has_value();
  call.q = rows_ready(q_in);
  call.k = paged ? pages_ready(k_in) : rows_ready(k_in);
  call.v = paged ? pages_ready(v_in) : rows_ready(v_in);
  if (paged) call.block_table = block_table->stride(1) == 1 ? *block_table : block_table->contiguous();
  call.offsets = kernel_offsets(offsets_in, dtype);
  call.fractional = is_fractional(call.offsets);
  call.lengths = cache_seqlens.has_value() ? cache_seqlens->to(at::kLong).contiguous() : Tensor();
  call.out = new_output_like(call.q);
  call.lse = new_output(call.q, {call.q.size(0), call.q.size(2), call.q.size(1)}, acc_dtype(dtype));
  call.empty = call.q.numel() == 0;
  if (call.empty) return call;
  call.params = attention_params(call.q, call.k, call.v, call.offsets, band, softmax_scale, call.out, call.lse);
  if (call.lengths.defined()) {  // decode: queries are each sequence's newest tokens, k and v a cache
    call.params.cache_seqlens = call.lengths.data_ptr<int64_t>();
    call.params.ring = ring;
    if (paged) page_params(call.params, call.block_table, call.k, band);
  }
  if (packing != nullptr) pack_params(call.params, *packing, band);
  return call;
}

BackwardCall prepare_backward(const Tensor& dout_in, const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                              const Tensor& out_in, const Tensor& lse, const std::optional<Tensor>& dlse,
                              const Tensor& offsets_in, at::IntArrayRef band, double softmax_scale,
                              int queries_per_partial, bool keeps_offset_terms, const Packing* packing) {
  BackwardCall call;
  const auto dtype = q_in.scalar_type();
  const auto acc = acc_dtype(dtype);
  const Tensor &q = call.q = rows_ready(q_in), &k = call.k = rows_ready(k_in), &v = call.v = rows_ready(v_in);
  call.out = rows_ready(out_in);
  call.dout = rows_ready(dout_in);
  call.offsets = kernel_offsets(offsets_in, dtype);
  call.fractional = is_fractional(call.offsets);
  call.lse = lse.contiguous();
  call.dlse = dlse.has_value() ? dlse->to(acc).contiguous() : Tensor();
  call.delta = new_output_like(call.lse);
  call.dq = new_output_like(q);
  call.dk = new_output_like(k);
  call.dv = new_output_like(v);
  const int64_t num_offsets = call.offsets.size(-1);
  const int64_t partial_rows = packing != nullptr ? packing->max_seqlen_q : q.size(1);
  call.partial_batch = packing != nullptr ? packing->cu_seqlens_q.size(0) - 1 : q.size(0);
  call.num_partials = (partial_rows + queries_per_partial - 1) / queries_per_partial;
  const int64_t partial_size = call.fractional ? call.partial_batch * q.size(2) * call.num_partials * num_offsets : 0;
  // A packed batch's sequences leave the partials past their end unwritten:
  // those must be zero for the sum.
  call.partial = packing != nullptr ? at::zeros({partial_size}, q.options().dtype(acc))
                                    : new_output(q, {partial_size}, acc);
  const int64_t offset_terms = keeps_offset_terms ? q.size(0) * q.size(2) * q.size(1) * num_offsets : 0;
  call.offset_terms = new_output(q, {2 * offset_terms}, acc);  // probabilities, then d scores
  call.empty = q.numel() == 0 || k.numel() == 0;
  if (call.empty) return call;

  Params& p = call.params = attention_params(q, k, v, call.offsets, band, softmax_scale, call.out, call.lse);
  p.dout = call.dout.data_ptr();
  set_strides(call.dout, p.do_batch_stride, p.do_row_stride, p.do_head_stride);
  p.dlse = call.dlse.defined() ? call.dlse.data_ptr() : nullptr;
  p.delta = call.delta.data_ptr();
  p.dq = call.dq.data_ptr();
  p.dk = call.dk.data_ptr();
  p.dv = call.dv.data_ptr();
  set_strides(call.dq, p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride);
  set_strides(call.dk, p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride);
  set_strides(call.dv, p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride);
  p.doffsets_partial = call.fractional ? call.partial.data_ptr() : nullptr;
  p.offset_probs = call.offset_terms.data_ptr();
  p.offset_dscores = static_cast<char*>(call.offset_terms.data_ptr()) + offset_terms * sizeof(float);
  p.num_partials = static_cast<int>(call.num_partials);
  if (packing != nullptr) pack_params(p, *packing, band);
  return call;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> backward_result(const BackwardCall& call, const Tensor& offsets_in,
                                                           RowSums row_sums) {
  const auto acc = acc_dtype(call.q.scalar_type());
  if (call.empty) {
    return {call.dq.zero_(), call.dk.zero_(), call.dv.zero_(),
            call.fractional ? at::zeros_like(offsets_in) : at::empty({0}, call.q.options().dtype(acc))};
  }
  if (!call.fractional) return {call.dq, call.dk, call.dv, at::empty({0}, call.q.options().dtype(acc))};
  // Sum the partials in a fixed order, each (head, offset) a contiguous row
  // (doffsets_partial_index): (heads, K, batch x partials) -> (heads, K), then
  // over the heads when they share one row of offsets, so that a shared row's
  // derivative is bitwise the sum of the same row given per head. (Summing the
  // batch and blocks out of a (batch, heads, partials, K) layout, a strided
  // reduction into few outputs, took twice as long at 16k tokens.)
  const int64_t heads = call.q.size(2), num_offsets = call.offsets.size(-1);
  const Tensor rows = call.partial.view({heads * num_offsets, call.partial_batch * call.num_partials});
  Tensor doffsets = (row_sums != nullptr ? row_sums(rows) : rows.sum(1)).view({heads, num_offsets});
  if (offsets_in.dim() == 1) doffsets = doffsets.sum(0);
  return {call.dq, call.dk, call.dv, doffsets.to(offsets_in.scalar_type())};
}

}  // namespace fibsparse
