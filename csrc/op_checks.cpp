#include "op_checks.h"

#include <ATen/ATen.h>

#include <algorithm>
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
                            at::IntArrayRef band, double softmax_scale, const char* k_name, const char* v_name,
                            bool paged) {
  TORCH_CHECK(q.dim() == 4, "q must have shape (batch, seqlen_q, heads, head_dim), got ", to_text(q.sizes()));
  TORCH_CHECK(k.dim() == 4, k_name,
              paged ? " must have shape (num_pages, page_size, heads_kv, head_dim), got "
                    : " must have shape (batch, seqlen_k, heads_kv, head_dim), got ",
              to_text(k.sizes()));
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
  TORCH_CHECK(paged || k.size(0) == batch, k_name, " must have q's batch size ", to_text(batch), ", got ",
              to_text(k.size(0)));
  TORCH_CHECK(k.size(3) == head_dim, k_name, " must have q's head_dim ", to_text(head_dim), ", got ",
              to_text(k.size(3)));
  TORCH_CHECK(heads_kv >= 1 && heads % heads_kv == 0, "q's heads (", to_text(heads), ") must be a multiple of ",
              k_name, "'s heads_kv (", to_text(heads_kv), ")");
  TORCH_CHECK(paged || seqlen_q <= seqlen_k, "q's seqlen_q (", to_text(seqlen_q), ") must not exceed ", k_name,
              "'s seqlen_k (", to_text(seqlen_k), "): queries are aligned to the last keys");
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
                         const Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, const Tensor& offsets,
                         at::IntArrayRef band, double softmax_scale) {
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
  check_attention_inputs(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), offsets, band, softmax_scale);
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

std::optional<Tensor> check_packed_backward_inputs(const Tensor& dout, const Tensor& q, const Tensor& out,
                                                   const Tensor& lse, const std::optional<Tensor>& dlse) {
  const std::vector<int64_t> lse_shape{q.size(1), q.size(0)};
  TORCH_CHECK(lse.sizes() == lse_shape && lse.scalar_type() == acc_dtype(q.scalar_type()), "lse must be ",
              to_text(acc_dtype(q.scalar_type())), " of shape (heads, total_q) = ", to_text(lse_shape), ", got ",
              to_text(lse.scalar_type()), " ", to_text(lse.sizes()));
  if (dlse.has_value()) {
    TORCH_CHECK(dlse->sizes() == lse.sizes(), "dlse must match lse ", to_text(lse.sizes()), ", got ",
                to_text(dlse->sizes()));
  }
  const std::optional<Tensor> dlse_batched = dlse.has_value() ? std::optional<Tensor>(dlse->unsqueeze(0)) : dlse;
  check_backward_inputs(dout.unsqueeze(0), q.unsqueeze(0), out.unsqueeze(0), lse.unsqueeze(0), dlse_batched);
  return dlse_batched;
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

void check_block_table(const Tensor& q, const Tensor& k_cache, const Tensor& block_table, bool ring) {
  TORCH_CHECK(!ring, "ring must be False with a block_table: a paged cache frees pages instead of wrapping around");
  TORCH_CHECK(block_table.scalar_type() == at::kInt && block_table.dim() == 2 && block_table.size(0) == q.size(0) &&
                  block_table.size(1) >= 1,
              "block_table must be an int32 tensor of shape (batch=", to_text(q.size(0)),
              ", pages_per_sequence >= 1), got ", to_text(block_table.scalar_type()), " ",
              to_text(block_table.sizes()));
  TORCH_CHECK(block_table.device() == q.device(), "block_table must be on q's device ", to_text(q.device()), ", got ",
              to_text(block_table.device()));
  const int64_t num_pages = k_cache.size(0), page_size = k_cache.size(1);
  TORCH_CHECK(num_pages >= 1 && page_size >= 1, "k_cache must hold at least one page of at least one row, got ",
              to_text(k_cache.sizes()), " (num_pages, page_size, heads_kv, head_dim)");
  TORCH_CHECK(num_pages <= INT32_MAX, "k_cache may hold at most 2^31 - 1 pages (block_table is int32), got ",
              to_text(num_pages));
  const int64_t pages_per_sequence = block_table.size(1);
  TORCH_CHECK(pages_per_sequence <= (INT32_MAX - 65536) / page_size,
              "a sequence's capacity (block_table's pages_per_sequence ", to_text(pages_per_sequence),
              " x page_size ", to_text(page_size), ") must be at most 2^31 - 2^16 positions");
  TORCH_CHECK(q.size(1) <= pages_per_sequence * page_size, "q's seqlen_q (", to_text(q.size(1)),
              ") must not exceed a sequence's capacity (block_table's pages_per_sequence ",
              to_text(pages_per_sequence), " x page_size ", to_text(page_size), ")");
}

namespace {

// The farthest distance any head reads (pattern.h's farthest_distance over
// every row of the kernels' offsets).
template <typename OffsetT>
int64_t farthest_of_rows(const Params& p, const Tensor& offsets) {
  const OffsetT* data = offsets.data_ptr<OffsetT>();
  const int64_t rows = offsets.dim() == 2 ? offsets.size(0) : 1;
  int64_t farthest = 0;
  for (int64_t r = 0; r < rows; ++r) {
    farthest = std::max(farthest, farthest_distance(data + r * p.num_offsets, p.num_offsets, p.band));
  }
  return farthest;
}

}  // namespace

void check_decode_lengths(const Params& p, const Tensor& offsets) {
  const bool paged = p.block_table != nullptr;
  const auto kind = offsets.scalar_type();
  const int64_t farthest = kind == at::kInt     ? farthest_of_rows<int32_t>(p, offsets)
                           : kind == at::kFloat ? farthest_of_rows<float>(p, offsets)
                                                : farthest_of_rows<double>(p, offsets);
  for (int b = 0; b < p.batch; ++b) {
    const int64_t length = p.cache_seqlens[b];
    TORCH_CHECK(cache_length_valid(length, p.seqlen_q, p.seqlen_k, p.ring), "cache_seqlens[", to_text(int64_t(b)),
                "] is ", to_text(length), "; it must count the ", to_text(int64_t(p.seqlen_q)),
                " new token(s) already in the cache",
                p.ring ? std::string()
                       : std::string(paged ? " and fit the sequence's pages (block_table's pages_per_sequence x "
                                             "page_size = "
                                           : " and fit the cache's capacity (") +
                             to_text(int64_t(p.seqlen_k)) + ")");
    if (!paged) continue;
    const int64_t first_page = first_position_read(length, p.seqlen_q, farthest) / p.page_size;
    const int64_t end_page = (length + p.page_size - 1) / p.page_size;
    for (int64_t slot = first_page; slot < end_page; ++slot) {
      const int32_t page = p.block_table[b * p.block_table_stride + slot];
      TORCH_CHECK(page_valid(page, p.num_pages), "block_table[", to_text(int64_t(b)), ", ", to_text(slot), "] is ",
                  to_text(int64_t(page)), "; the pages a call reads (those of positions ",
                  to_text(first_position_read(length, p.seqlen_q, farthest)), " .. ", to_text(length - 1),
                  " here) must be in [0, num_pages=", to_text(int64_t(p.num_pages)), ")");
    }
  }
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
