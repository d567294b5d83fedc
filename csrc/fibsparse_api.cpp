// Checks, dispatch and op registration. Every public entry validates its
// arguments here, once; kernels assume valid input.
#include "fibsparse_api.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <utility>

#include "kernels.h"
#include "pattern.h"
#include "to_text.h"

#ifdef FIBSPARSE_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#endif

namespace fibsparse {
namespace {

using at::Tensor;

bool is_fractional(const Tensor& offsets) { return at::isFloatingType(offsets.scalar_type()); }

// Accumulation type: float for 16/32-bit inputs, double for double.
at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// k_name, v_name: what the caller calls k and v (the decode op's k_cache,
// v_cache), so that every message names the argument the user passed.
void check_attention_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& offsets,
                            int64_t window, double softmax_scale, const char* k_name = "k",
                            const char* v_name = "v") {
  TORCH_CHECK(q.dim() == 4, "q must have shape (batch, seqlen_q, heads, head_dim), got ", to_text(q.sizes()));
  TORCH_CHECK(k.dim() == 4, k_name, " must have shape (batch, seqlen_k, heads_kv, head_dim), got ", to_text(k.sizes()));
  TORCH_CHECK(v.sizes() == k.sizes(), v_name, " must have the shape of ", k_name, " ", to_text(k.sizes()), ", got ",
              to_text(v.sizes()));
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble,
              "q must be float16, bfloat16, float32 or float64, got ", to_text(dtype));
  TORCH_CHECK(k.scalar_type() == dtype, k_name, " must have q's dtype ", to_text(dtype), ", got ", to_text(k.scalar_type()));
  TORCH_CHECK(v.scalar_type() == dtype, v_name, " must have q's dtype ", to_text(dtype), ", got ", to_text(v.scalar_type()));
  TORCH_CHECK(k.device() == q.device(), k_name, " must be on q's device ", to_text(q.device()), ", got ",
              to_text(k.device()));
  TORCH_CHECK(v.device() == q.device(), v_name, " must be on q's device ", to_text(q.device()), ", got ",
              to_text(v.device()));
  TORCH_CHECK(q.is_cpu() || q.is_cuda(), "q must be a CPU or CUDA tensor, got ", to_text(q.device()));

  const int64_t batch = q.size(0), seqlen_q = q.size(1), heads = q.size(2), head_dim = q.size(3);
  const int64_t seqlen_k = k.size(1), heads_kv = k.size(2);
  TORCH_CHECK(k.size(0) == batch, k_name, " must have q's batch size ", to_text(batch), ", got ", to_text(k.size(0)));
  TORCH_CHECK(k.size(3) == head_dim, k_name, " must have q's head_dim ", to_text(head_dim), ", got ",
              to_text(k.size(3)));
  TORCH_CHECK(heads_kv >= 1 && heads % heads_kv == 0, "q's heads (", to_text(heads), ") must be a multiple of ",
              k_name, "'s heads_kv (", to_text(heads_kv), ")");
  TORCH_CHECK(seqlen_q <= seqlen_k, "q's seqlen_q (", to_text(seqlen_q), ") must not exceed ", k_name, "'s seqlen_k (",
              to_text(seqlen_k), "): queries are aligned to the last keys");
  TORCH_CHECK(batch <= 65535, "q's batch must be at most 65535, got ", to_text(batch));
  TORCH_CHECK(heads <= 65535, "q's heads must be at most 65535, got ", to_text(heads));
  TORCH_CHECK(seqlen_k <= INT32_MAX - 65536, k_name, "'s seqlen_k must be at most 2^31 - 2^16, got ",
              to_text(seqlen_k));
  if (q.is_cuda()) {
    TORCH_CHECK(head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128,
                "head_dim must be 16, 32, 64 or 128 on CUDA, got ", to_text(head_dim));
  } else {
    TORCH_CHECK(head_dim >= 1 && head_dim <= 1024, "head_dim must be in [1, 1024], got ", to_text(head_dim));
  }

  TORCH_CHECK(window >= 1, "window must be >= 1 (distance 0, the query itself, is always attended), got ",
              to_text(window));
  TORCH_CHECK(window <= INT64_MAX / 2, "window is too large: ", to_text(window));
  TORCH_CHECK(std::isfinite(softmax_scale), "softmax_scale must be finite, got ", to_text(softmax_scale));

  TORCH_CHECK(offsets.device() == q.device(), "offsets must be on q's device ", to_text(q.device()), ", got ",
              to_text(offsets.device()));
  const auto odtype = offsets.scalar_type();
  TORCH_CHECK(odtype == at::kInt || odtype == at::kLong || odtype == at::kFloat || odtype == at::kDouble,
              "offsets must be int32/int64 (integer distances) or float32/float64 (fractional positions), "
              "got ", to_text(odtype));
  TORCH_CHECK(offsets.dim() == 1 || (offsets.dim() == 2 && offsets.size(0) == heads),
              "offsets must have shape (K,) or (heads=", to_text(heads), ", K), got ", to_text(offsets.sizes()));
  TORCH_CHECK(offsets.size(-1) <= 65535, "offsets may hold at most 65535 entries per head, got ",
              to_text(offsets.size(-1)));
}

// Rows must be contiguous and 16-byte aligned for the vector loads of the
// CUDA kernels; copy when they are not (e.g. a transposed view).
Tensor rows_ready(const Tensor& t) {
  const int64_t align = 16 / t.element_size();
  bool ok = t.stride(-1) == 1 && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int d = 0; d < 3 && ok; ++d) ok = t.stride(d) % align == 0 || t.size(d) == 1;
  return ok ? t : t.clone(at::MemoryFormat::Contiguous);
}

// CPU offsets' values, on every call (a few numbers; no sync): the rule of
// pattern.h's offset_entry_valid, which the CUDA kernels apply on the device.
template <typename OffsetT>
void check_offset_rows(const Tensor& offsets, int64_t window) {
  const int64_t rows = offsets.dim() == 2 ? offsets.size(0) : 1, count = offsets.size(-1);
  const OffsetT* data = offsets.data_ptr<OffsetT>();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < count; ++t) {
      TORCH_CHECK(offset_entry_valid(data + r * count, int(t), window), "offsets",
                  offsets.dim() == 2 ? "[" + to_text(r) + "]" : std::string(), " entry ", to_text(t), " (",
                  std::is_integral_v<OffsetT> ? to_text(int64_t(data[r * count + t])) : to_text(double(data[r * count + t])),
                  ") is not allowed: offsets must be strictly increasing, finite "
                  "and >= 0, integer ones >= window (", to_text(window), "), padded with -1 only at the end");
    }
  }
}

// Offsets as the kernels read them: int32 distances, or positions in the
// accumulation type; always contiguous. CPU ones are checked here.
Tensor kernel_offsets(const Tensor& offsets, at::ScalarType dtype, int64_t window) {
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
  if (out.is_cpu()) {
    if (out.scalar_type() == at::kInt) check_offset_rows<int32_t>(out, window);
    else if (out.scalar_type() == at::kFloat) check_offset_rows<float>(out, window);
    else check_offset_rows<double>(out, window);
  }
  return out;
}

void set_strides(const Tensor& t, int64_t& batch, int64_t& row, int64_t& head) {
  batch = t.stride(0);
  row = t.stride(1);
  head = t.stride(2);
}

Params attention_params(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& offsets,
                        int64_t window, double softmax_scale, const Tensor& out, const Tensor& lse) {
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
  // Band distances >= seqlen_k can never be attended: dropping them changes no
  // result, and keeps a huge window (a way to ask for dense attention) from
  // costing O(window) per row or overflowing the int loop count.
  p.window = static_cast<int>(std::min<int64_t>(window, k.size(1)));
  p.num_offsets = offsets.size(-1);
  p.min_offset_distance = window;
  p.q_pos_shift = p.seqlen_k - p.seqlen_q;
  p.softmax_scale = softmax_scale;
  p.out = out.data_ptr();
  set_strides(out, p.o_batch_stride, p.o_row_stride, p.o_head_stride);
  p.lse = lse.data_ptr();
  return p;
}

// FIBSPARSE_POISON_OUTPUTS=1 fills every output with NaN before the kernels
// run, so a test can prove that each element was written (read per call so
// tests can switch it).
bool poison_outputs() {
  const char* flag = std::getenv("FIBSPARSE_POISON_OUTPUTS");
  return flag != nullptr && flag[0] == '1';
}

Tensor new_output(const Tensor& like, at::IntArrayRef shape, at::ScalarType dtype) {
  Tensor t = at::empty(shape, like.options().dtype(dtype));
  if (poison_outputs()) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

Tensor new_output_like(const Tensor& like) { return new_output(like, like.sizes(), like.scalar_type()); }

bool is_cpu_low_precision(const Tensor& q) {
  return q.is_cpu() && (q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16);
}

// The forward of fwd and decode, after their checks: decode passes each
// sequence's cache length (its queries are the newest tokens, k and v are
// caches, a ring when `ring`); fwd passes none. Returns (out, lse).
std::tuple<Tensor, Tensor> attend(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                  const Tensor& offsets_in, int64_t window, double softmax_scale,
                                  const std::optional<Tensor>& cache_seqlens, bool ring) {
  if (is_cpu_low_precision(q_in)) {  // the CPU kernels compute in float32
    auto [out, lse] = attend(q_in.to(at::kFloat), k_in.to(at::kFloat), v_in.to(at::kFloat), offsets_in, window,
                             softmax_scale, cache_seqlens, ring);
    return {out.to(q_in.scalar_type()), lse};
  }
#ifdef FIBSPARSE_WITH_CUDA
  const at::OptionalDeviceGuard guard(q_in.device());
#endif
  const auto dtype = q_in.scalar_type();
  const Tensor q = rows_ready(q_in), k = rows_ready(k_in), v = rows_ready(v_in);
  const Tensor offsets = kernel_offsets(offsets_in, dtype, window);
  const Tensor lengths = cache_seqlens.has_value() ? cache_seqlens->to(at::kLong).contiguous() : Tensor();
  Tensor out = new_output_like(q);
  Tensor lse = new_output(q, {q.size(0), q.size(2), q.size(1)}, acc_dtype(dtype));
  if (q.numel() == 0) return {out, lse};

  Params p = attention_params(q, k, v, offsets, window, softmax_scale, out, lse);
  if (lengths.defined()) {
    p.cache_seqlens = lengths.data_ptr<int64_t>();
    p.ring = ring;
  }
  if (q.is_cuda()) {
#ifdef FIBSPARSE_WITH_CUDA
    if (lengths.defined()) {
      run_decode_cuda(p, dtype, is_fractional(offsets));
    } else {
      run_fwd_cuda(p, dtype, is_fractional(offsets));
    }
#else
    TORCH_CHECK(false, "fibsparse_ext was built without CUDA; reinstall on a machine with nvcc");
#endif
  } else {
    run_fwd_cpu(p, dtype, is_fractional(offsets));  // reads query positions and key rows through Params
  }
  return {out, lse};
}

}  // namespace

std::tuple<Tensor, Tensor> fwd(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& offsets,
                               int64_t window, double softmax_scale) {
  check_attention_inputs(q, k, v, offsets, window, softmax_scale);
  return attend(q, k, v, offsets, window, softmax_scale, std::nullopt, false);
}

std::tuple<Tensor, Tensor> decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                  const Tensor& cache_seqlens, const Tensor& offsets, int64_t window,
                                  double softmax_scale, bool ring) {
  check_attention_inputs(q, k_cache, v_cache, offsets, window, softmax_scale, "k_cache", "v_cache");
  const auto sdtype = cache_seqlens.scalar_type();
  TORCH_CHECK(cache_seqlens.dim() == 1 && cache_seqlens.size(0) == q.size(0) &&
                  (sdtype == at::kInt || sdtype == at::kLong),
              "cache_seqlens must be an int32 or int64 tensor of shape (batch=", to_text(q.size(0)), "), got ",
              to_text(sdtype), " ", to_text(cache_seqlens.sizes()));
  TORCH_CHECK(cache_seqlens.device() == q.device(), "cache_seqlens must be on q's device ", to_text(q.device()),
              ", got ", to_text(cache_seqlens.device()));
  return attend(q, k_cache, v_cache, offsets, window, softmax_scale, cache_seqlens, ring);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> bwd(const Tensor& dout_in, const Tensor& q_in, const Tensor& k_in,
                                               const Tensor& v_in, const Tensor& out_in, const Tensor& lse,
                                               const std::optional<Tensor>& dlse, const Tensor& offsets_in,
                                               int64_t window, double softmax_scale) {
  check_attention_inputs(q_in, k_in, v_in, offsets_in, window, softmax_scale);
  TORCH_CHECK(dout_in.sizes() == q_in.sizes(), "dout must have q's shape ", to_text(q_in.sizes()), ", got ",
              to_text(dout_in.sizes()));
  TORCH_CHECK(out_in.sizes() == q_in.sizes(), "out must have q's shape ", to_text(q_in.sizes()), ", got ", to_text(out_in.sizes()));
  for (const auto& [name, t] : {std::pair<const char*, const Tensor&>{"dout", dout_in}, {"out", out_in}}) {
    TORCH_CHECK(t.scalar_type() == q_in.scalar_type(), name, " must have q's dtype ", to_text(q_in.scalar_type()),
                ", got ", to_text(t.scalar_type()));
  }
  for (const auto& [name, t] :
       {std::pair<const char*, const Tensor&>{"dout", dout_in}, {"out", out_in}, {"lse", lse}}) {
    TORCH_CHECK(t.device() == q_in.device(), name, " must be on q's device ", to_text(q_in.device()), ", got ",
                to_text(t.device()));
  }
  const auto dtype = q_in.scalar_type();
  const std::vector<int64_t> lse_shape{q_in.size(0), q_in.size(2), q_in.size(1)};
  TORCH_CHECK(lse.sizes() == lse_shape && lse.scalar_type() == acc_dtype(dtype),
              "lse must be ", to_text(acc_dtype(dtype)), " of shape (batch, heads, seqlen_q) = ", to_text(lse_shape), ", got ",
              to_text(lse.scalar_type()), " ", to_text(lse.sizes()));
  if (dlse.has_value()) {
    TORCH_CHECK(dlse->sizes() == lse.sizes() && dlse->device() == lse.device(), "dlse must match lse ",
                to_text(lse.sizes()), " on ", to_text(lse.device()), ", got ", to_text(dlse->sizes()), " on ",
                to_text(dlse->device()));
  }
  if (is_cpu_low_precision(q_in)) {
    const auto f = [](const Tensor& t) { return t.to(at::kFloat); };
    auto [dq, dk, dv, doffsets] =
        bwd(f(dout_in), f(q_in), f(k_in), f(v_in), f(out_in), lse, dlse, offsets_in, window, softmax_scale);
    return {dq.to(dtype), dk.to(dtype), dv.to(dtype), doffsets};
  }
#ifdef FIBSPARSE_WITH_CUDA
  const at::OptionalDeviceGuard guard(q_in.device());
#endif
  const Tensor q = rows_ready(q_in), k = rows_ready(k_in), v = rows_ready(v_in);
  const Tensor out = rows_ready(out_in), dout = rows_ready(dout_in);
  const Tensor offsets = kernel_offsets(offsets_in, dtype, window);
  const bool fractional = is_fractional(offsets);
  const auto acc = acc_dtype(dtype);

  const Tensor lse_c = lse.contiguous();
  const Tensor dlse_c = dlse.has_value() ? dlse->to(acc).contiguous() : Tensor();
  Tensor delta = new_output_like(lse_c);

  Tensor dq = new_output_like(q);
  Tensor dk = new_output_like(k);
  Tensor dv = new_output_like(v);
  const int64_t num_offsets = offsets.size(-1);
  const int rows_per_partial = q.is_cuda() ? kCudaRowsPerBlock : 1;
  const int64_t num_partials = (q.size(1) + rows_per_partial - 1) / rows_per_partial;
  Tensor partial = new_output(q, {fractional ? q.size(0) * q.size(2) * num_partials * num_offsets : 0}, acc);
  const bool tensor_cores = q.is_cuda() && (dtype == at::kHalf || dtype == at::kBFloat16);
  const int64_t offset_terms = tensor_cores ? q.size(0) * q.size(2) * q.size(1) * num_offsets : 0;
  Tensor offset_probs_and_dscores = at::empty({2 * offset_terms}, q.options().dtype(acc));
  if (q.numel() == 0 || k.numel() == 0) {
    return {dq.zero_(), dk.zero_(), dv.zero_(),
            fractional ? at::zeros_like(offsets_in) : at::empty({0}, q.options().dtype(acc))};
  }

  Params p = attention_params(q, k, v, offsets, window, softmax_scale, out, lse_c);
  p.dout = dout.data_ptr();
  set_strides(dout, p.do_batch_stride, p.do_row_stride, p.do_head_stride);
  p.dlse = dlse_c.defined() ? dlse_c.data_ptr() : nullptr;
  p.delta = delta.data_ptr();
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  set_strides(dq, p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride);
  set_strides(dk, p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride);
  set_strides(dv, p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride);
  p.doffsets_partial = fractional ? partial.data_ptr() : nullptr;
  p.offset_probs = offset_probs_and_dscores.data_ptr();
  p.offset_dscores = static_cast<char*>(offset_probs_and_dscores.data_ptr()) + offset_terms * sizeof(float);
  p.queries_per_partial = rows_per_partial;
  p.num_partials = static_cast<int>(num_partials);

  if (q.is_cuda()) {
#ifdef FIBSPARSE_WITH_CUDA
    run_bwd_cuda(p, dtype, fractional);
#else
    TORCH_CHECK(false, "fibsparse_ext was built without CUDA; reinstall on a machine with nvcc");
#endif
  } else {
    run_bwd_cpu(p, dtype, fractional);
  }

  if (!fractional) return {dq, dk, dv, at::empty({0}, q.options().dtype(acc))};
  // Sum the partials in a fixed order: (batch, heads, partials, K) -> (heads, K).
  Tensor doffsets = partial.view({q.size(0), q.size(2), num_partials, num_offsets}).sum(at::IntArrayRef{0, 2});
  if (offsets_in.dim() == 1) doffsets = doffsets.sum(0);
  return {dq, dk, dv, doffsets.to(offsets_in.scalar_type())};
}

TORCH_LIBRARY(fibsparse, m) {
  m.def("fwd(Tensor q, Tensor k, Tensor v, Tensor offsets, int window, float softmax_scale) -> (Tensor, Tensor)");
  m.def(
      "bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? dlse, Tensor offsets, "
      "int window, float softmax_scale) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "decode(Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_seqlens, Tensor offsets, int window, "
      "float softmax_scale, bool ring) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fibsparse, CPU, m) {
  m.impl("fwd", &fwd);
  m.impl("bwd", &bwd);
  m.impl("decode", &decode);
}

#ifdef FIBSPARSE_WITH_CUDA
TORCH_LIBRARY_IMPL(fibsparse, CUDA, m) {
  m.impl("fwd", &fwd);
  m.impl("bwd", &bwd);
  m.impl("decode", &decode);
}
#endif

}  // namespace fibsparse
