#include "op_checks.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "capabilities.h"
#include "op_setup.h"
#include "pattern.h"
#include "to_text.h"

namespace fibsparse {
namespace {

using at::Tensor;

// "16, 32, 64 or 128"
std::string cuda_head_dims_text() {
  constexpr int kCount = sizeof(kCudaHeadDims) / sizeof(int);
  std::string text;
  for (int i = 0; i < kCount; ++i) {
    text += (i == 0 ? "" : i + 1 == kCount ? " or " : ", ") + to_text(int64_t(kCudaHeadDims[i]));
  }
  return text;
}

}  // namespace

void check_attention_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& offsets,
                            at::IntArrayRef band, double softmax_scale, const char* k_name, const char* v_name) {
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
    TORCH_CHECK(is_cuda_head_dim(head_dim), "head_dim must be ", cuda_head_dims_text(), " on CUDA, got ",
                to_text(head_dim));
  } else {
    TORCH_CHECK(head_dim >= 1 && head_dim <= 1024, "head_dim must be in [1, 1024], got ", to_text(head_dim));
  }

  TORCH_CHECK(band.size() == 1, "band must be [window], got ", to_text(band));
  const int64_t window = band[0];
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

void check_packed_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens_q,
                         const Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k) {
  TORCH_CHECK(q.dim() == 3, "q must have shape (total_q, heads, head_dim), got ", to_text(q.sizes()));
  TORCH_CHECK(k.dim() == 3, "k must have shape (total_k, heads_kv, head_dim), got ", to_text(k.sizes()));
  TORCH_CHECK(v.sizes() == k.sizes(), "v must have the shape of k ", to_text(k.sizes()), ", got ", to_text(v.sizes()));
  for (const auto& [name, t] :
       {std::pair<const char*, const Tensor&>{"cu_seqlens_q", cu_seqlens_q}, {"cu_seqlens_k", cu_seqlens_k}}) {
    TORCH_CHECK(t.scalar_type() == at::kInt && t.dim() == 1 && t.size(0) >= 1, name,
                " must be an int32 tensor of shape (batch + 1,), got ", to_text(t.scalar_type()), " ",
                to_text(t.sizes()));
    TORCH_CHECK(t.device() == q.device(), name, " must be on q's device ", to_text(q.device()), ", got ",
                to_text(t.device()));
  }
  TORCH_CHECK(cu_seqlens_k.size(0) == cu_seqlens_q.size(0), "cu_seqlens_k must have cu_seqlens_q's shape ",
              to_text(cu_seqlens_q.sizes()), " (one entry per sequence, plus one), got ", to_text(cu_seqlens_k.sizes()));
  TORCH_CHECK(cu_seqlens_q.size(0) - 1 <= 65535, "a packed batch may hold at most 65535 sequences, got ",
              to_text(cu_seqlens_q.size(0) - 1));
  TORCH_CHECK(max_seqlen_q >= 0 && max_seqlen_q <= q.size(0), "max_seqlen_q must be in [0, total_q=",
              to_text(q.size(0)), "], got ", to_text(max_seqlen_q));
  TORCH_CHECK(max_seqlen_k >= 0 && max_seqlen_k <= k.size(0), "max_seqlen_k must be in [0, total_k=",
              to_text(k.size(0)), "], got ", to_text(max_seqlen_k));
}

void check_packed_lengths(const Tensor& cu_seqlens_q, const Tensor& cu_seqlens_k, int64_t total_q, int64_t total_k,
                          int64_t max_seqlen_q, int64_t max_seqlen_k) {
  const Tensor cu_q = cu_seqlens_q.contiguous(), cu_k = cu_seqlens_k.contiguous();
  const int32_t* q_bounds = cu_q.data_ptr<int32_t>();
  const int32_t* k_bounds = cu_k.data_ptr<int32_t>();
  const int batch = static_cast<int>(cu_q.size(0) - 1);
  for (const auto& [name, bounds, total] : {std::tuple<const char*, const int32_t*, int64_t>{"cu_seqlens_q", q_bounds, total_q},
                                            {"cu_seqlens_k", k_bounds, total_k}}) {
    TORCH_CHECK(bounds[0] == 0, name, " must start at 0, got ", to_text(int64_t(bounds[0])));
    TORCH_CHECK(bounds[batch] == total, name, " must end at the tensor's rows (", to_text(total), "), got ",
                to_text(int64_t(bounds[batch])));
  }
  for (int b = 0; b < batch; ++b) {
    if (sequence_bounds_valid(q_bounds, k_bounds, b, batch, total_q, total_k, max_seqlen_q, max_seqlen_k)) continue;
    const int64_t seqlen_q = int64_t(q_bounds[b + 1]) - q_bounds[b], seqlen_k = int64_t(k_bounds[b + 1]) - k_bounds[b];
    TORCH_CHECK(seqlen_q >= 0 && seqlen_k >= 0, "cu_seqlens_q and cu_seqlens_k must not decrease; sequence ",
                to_text(int64_t(b)), " has seqlen_q ", to_text(seqlen_q), ", seqlen_k ", to_text(seqlen_k));
    TORCH_CHECK(seqlen_q <= max_seqlen_q && seqlen_k <= max_seqlen_k, "sequence ", to_text(int64_t(b)),
                " (seqlen_q ", to_text(seqlen_q), ", seqlen_k ", to_text(seqlen_k), ") is longer than max_seqlen_q ",
                to_text(max_seqlen_q), " / max_seqlen_k ", to_text(max_seqlen_k));
    TORCH_CHECK(false, "sequence ", to_text(int64_t(b)), " has seqlen_q ", to_text(seqlen_q), " > seqlen_k ",
                to_text(seqlen_k), ": queries are a sequence's last positions");
  }
}

void check_packed_lse(const Tensor& q, const Tensor& lse, const std::optional<Tensor>& dlse) {
  const std::vector<int64_t> lse_shape{q.size(1), q.size(0)};
  TORCH_CHECK(lse.sizes() == lse_shape && lse.scalar_type() == acc_dtype(q.scalar_type()), "lse must be ",
              to_text(acc_dtype(q.scalar_type())), " of shape (heads, total_q) = ", to_text(lse_shape), ", got ",
              to_text(lse.scalar_type()), " ", to_text(lse.sizes()));
  if (dlse.has_value()) {
    TORCH_CHECK(dlse->sizes() == lse.sizes(), "dlse must match lse ", to_text(lse.sizes()), ", got ",
                to_text(dlse->sizes()));
  }
}

void check_cache_seqlens(const Tensor& q, const Tensor& cache_seqlens) {
  const auto sdtype = cache_seqlens.scalar_type();
  TORCH_CHECK(cache_seqlens.dim() == 1 && cache_seqlens.size(0) == q.size(0) &&
                  (sdtype == at::kInt || sdtype == at::kLong),
              "cache_seqlens must be an int32 or int64 tensor of shape (batch=", to_text(q.size(0)), "), got ",
              to_text(sdtype), " ", to_text(cache_seqlens.sizes()));
  TORCH_CHECK(cache_seqlens.device() == q.device(), "cache_seqlens must be on q's device ", to_text(q.device()),
              ", got ", to_text(cache_seqlens.device()));
}

void check_backward_inputs(const Tensor& dout, const Tensor& q, const Tensor& out, const Tensor& lse,
                           const std::optional<Tensor>& dlse) {
  TORCH_CHECK(dout.sizes() == q.sizes(), "dout must have q's shape ", to_text(q.sizes()), ", got ",
              to_text(dout.sizes()));
  TORCH_CHECK(out.sizes() == q.sizes(), "out must have q's shape ", to_text(q.sizes()), ", got ", to_text(out.sizes()));
  for (const auto& [name, t] : {std::pair<const char*, const Tensor&>{"dout", dout}, {"out", out}}) {
    TORCH_CHECK(t.scalar_type() == q.scalar_type(), name, " must have q's dtype ", to_text(q.scalar_type()),
                ", got ", to_text(t.scalar_type()));
  }
  for (const auto& [name, t] :
       {std::pair<const char*, const Tensor&>{"dout", dout}, {"out", out}, {"lse", lse}}) {
    TORCH_CHECK(t.device() == q.device(), name, " must be on q's device ", to_text(q.device()), ", got ",
                to_text(t.device()));
  }
  const std::vector<int64_t> lse_shape{q.size(0), q.size(2), q.size(1)};
  TORCH_CHECK(lse.sizes() == lse_shape && lse.scalar_type() == acc_dtype(q.scalar_type()),
              "lse must be ", to_text(acc_dtype(q.scalar_type())), " of shape (batch, heads, seqlen_q) = ", to_text(lse_shape), ", got ",
              to_text(lse.scalar_type()), " ", to_text(lse.sizes()));
  if (dlse.has_value()) {
    TORCH_CHECK(dlse->sizes() == lse.sizes() && dlse->device() == lse.device(), "dlse must match lse ",
                to_text(lse.sizes()), " on ", to_text(lse.device()), ", got ", to_text(dlse->sizes()), " on ",
                to_text(dlse->device()));
  }
}

}  // namespace fibsparse
