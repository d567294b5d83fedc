// CPU kernels: one query (forward and decode, dq) or one key row (dk, dv) per task of
// at::parallel_for. The pattern comes from pattern.h; the math mirrors the
// CUDA kernels, with plain loops over head_dim instead of lane groups.
//
// Backward is a gather, so it needs no atomics and is deterministic:
//   pass 1, per query i:  dq_i and the per-query terms of d(position)
//   pass 2, per key j:    dk_j, dv_j summed over the queries that read j
//                         (readers_of_row / weight_of_row in pattern.h)
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <vector>

#include "../kernels.h"
#include "../online_softmax.h"
#include "../pattern.h"
#include "../static_switch.h"

namespace fibsparse {
namespace {

template <typename T>
T dot(const T* a, const T* b, int n) {
  T s = T(0);
  for (int d = 0; d < n; ++d) s += a[d] * b[d];
  return s;
}

// <a, (1 - f) * r0 + f * r1>: the row is interpolated before the dot product,
// as in the reference and the lane-group CUDA kernels, so that an infinite
// element of `a` meets one interpolated key (giving +-inf) rather than two
// dot products whose difference would be inf - inf. At f == 0, r1 is not read.
template <typename T>
T dot_interp(const T* a, const T* r0, const T* r1, T f, int n) {
  if (f == T(0)) return dot(a, r0, n);
  T s = T(0);
  for (int d = 0; d < n; ++d) s += a[d] * (r0[d] + f * (r1[d] - r0[d]));
  return s;
}

// Row pointers of one (sequence, head) slice.
template <typename T>
struct Rows {
  const T* base;
  int64_t row_stride;
  const T* operator[](int64_t r) const { return base + r * row_stride; }
};

// The rows of head h of sequence b in a tensor laid out like q (q_like) or
// like k, with the tensor's batch, row and head strides.
template <typename T>
Rows<T> rows(const void* ptr, const Sequence& seq, bool q_like, int b, int64_t batch_stride, int64_t row_stride,
             int64_t head_stride, int h) {
  const int64_t start = q_like ? seq.q_start(b, batch_stride, row_stride) : seq.k_start(b, batch_stride, row_stride);
  return {static_cast<const T*>(ptr) + start + h * head_stride, row_stride};
}

// Scores and value dot products of one query against one (interpolated) key:
// everything the backward needs.
template <typename T>
struct PairTerms {
  T score, dp;      // scale * <q, k~>, <dout, v~>
  T dscore_dpos;    // scale * <q, k[j1] - k[j0]> (with_position only)
  T ddp_dpos;       // <dout, v[j1] - v[j0]> (with_position only)
};

// <a, r1 - r0>
template <typename T>
T dot_diff(const T* a, const T* r0, const T* r1, int n) {
  T s = T(0);
  for (int d = 0; d < n; ++d) s += a[d] * (r1[d] - r0[d]);
  return s;
}

// `with_position`: also the derivatives in the position, which read the
// second row even at frac == 0 (the one-sided derivative towards it).
template <typename T>
PairTerms<T> pair_terms(const T* q, const T* dout, Rows<T> k, Rows<T> v, const KeySample<T>& s, T scale, int n,
                        bool with_position) {
  PairTerms<T> r;
  r.score = scale * dot_interp(q, k[s.j0], k[s.j1], s.frac, n);
  r.dp = dot_interp(dout, v[s.j0], v[s.j1], s.frac, n);
  r.dscore_dpos = with_position ? scale * dot_diff(q, k[s.j0], k[s.j1], n) : T(0);
  r.ddp_dpos = with_position ? dot_diff(dout, v[s.j0], v[s.j1], n) : T(0);
  return r;
}

// dst += w * ((1 - f) * a + f * b); b is not read at f == 0, so a
// non-finite row of weight 0 stays out.
template <typename T>
void axpy_interp(T* dst, T w, const T* a, const T* b, T f, int n) {
  if (f == T(0)) {
    for (int d = 0; d < n; ++d) dst[d] += w * a[d];
  } else {
    for (int d = 0; d < n; ++d) dst[d] += w * (a[d] + f * (b[d] - a[d]));
  }
}

template <typename T, typename OffsetT>
void fwd_kernel(const Params& p) {
  const int n = p.head_dim, group = p.heads / p.heads_kv;
  const T scale = T(p.softmax_scale);
  const int64_t total = int64_t(p.batch) * p.heads * p.seqlen_q;
  at::parallel_for(0, total, 64, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(n);
    for (int64_t task = begin; task < end; ++task) {
      const int i = task % p.seqlen_q, h = (task / p.seqlen_q) % p.heads;
      const int b = task / (int64_t(p.seqlen_q) * p.heads);
      const Sequence seq = sequence_of(p, b);
      if (i >= seq.seqlen_q) continue;  // past a packed sequence's end
      const int64_t pos = query_position(p, seq, b, i);
      const OffsetT* offs = static_cast<const OffsetT*>(p.offsets) + h * p.offsets_head_stride;
      const T* q = rows<T>(p.q, seq, true, b, p.q_batch_stride, p.q_row_stride, p.q_head_stride, h)[i];
      const auto k = rows<T>(p.k, seq, false, b, p.k_batch_stride, p.k_row_stride, p.k_head_stride, h / group);
      const auto v = rows<T>(p.v, seq, false, b, p.v_batch_stride, p.v_row_stride, p.v_head_stride, h / group);

      std::fill(acc.begin(), acc.end(), T(0));
      OnlineSoftmax<T> softmax;
      for (int t = 0; t < num_distances(p.band, p.num_offsets); ++t) {
        const auto s = sample_key<T>(pos, t, p.band, offs);
        if (!s.valid) continue;
        const int64_t row0 = key_row(p, b, s.j0), row1 = key_row(p, b, s.j1);  // differ from j0, j1 in a decode cache
        const T score = scale * dot_interp(q, k[row0], k[row1], s.frac, n);
        T weight;
        const T rescale = softmax.add(score, weight);
        for (int d = 0; d < n; ++d) acc[d] *= rescale;
        axpy_interp(acc.data(), weight, v[row0], v[row1], s.frac, n);
      }
      T* out = static_cast<T*>(p.out) + seq.q_start(b, p.o_batch_stride, p.o_row_stride) +
               int64_t(i) * p.o_row_stride + h * p.o_head_stride;
      const T normalizer = softmax.normalizer();
      for (int d = 0; d < n; ++d) out[d] = acc[d] * normalizer;
      static_cast<T*>(p.lse)[stats_index(p, seq, b, h, i)] = softmax.lse();
    }
  });
}

// Pass 1 of the backward: delta and dq for one query, and its share of
// d(position).
template <typename T, typename OffsetT>
void bwd_dq_kernel(const Params& p) {
  const int n = p.head_dim, group = p.heads / p.heads_kv;
  const T scale = T(p.softmax_scale);
  const int64_t total = int64_t(p.batch) * p.heads * p.seqlen_q;
  at::parallel_for(0, total, 64, [&](int64_t begin, int64_t end) {
    std::vector<T> dq(n);
    for (int64_t task = begin; task < end; ++task) {
      const int i = task % p.seqlen_q, h = (task / p.seqlen_q) % p.heads;
      const int b = task / (int64_t(p.seqlen_q) * p.heads);
      const Sequence seq = sequence_of(p, b);
      if (i >= seq.seqlen_q) continue;  // past a packed sequence's end (its partials stay zero)
      const int64_t pos = i + seq.q_pos_shift;
      const OffsetT* offs = static_cast<const OffsetT*>(p.offsets) + h * p.offsets_head_stride;
      const T* q = rows<T>(p.q, seq, true, b, p.q_batch_stride, p.q_row_stride, p.q_head_stride, h)[i];
      const T* dout = rows<T>(p.dout, seq, true, b, p.do_batch_stride, p.do_row_stride, p.do_head_stride, h)[i];
      const auto k = rows<T>(p.k, seq, false, b, p.k_batch_stride, p.k_row_stride, p.k_head_stride, h / group);
      const auto v = rows<T>(p.v, seq, false, b, p.v_batch_stride, p.v_row_stride, p.v_head_stride, h / group);
      const T* out = rows<T>(p.out, seq, true, b, p.o_batch_stride, p.o_row_stride, p.o_head_stride, h)[i];
      const int64_t stat = stats_index(p, seq, b, h, i);
      const T lse = static_cast<const T*>(p.lse)[stat];
      const T delta = dot(dout, out, n) - (p.dlse ? static_cast<const T*>(p.dlse)[stat] : T(0));
      static_cast<T*>(p.delta)[stat] = delta;
      // One partial per query (num_partials == seqlen_q), at offset o's doffsets_partial_index.
      T* dpos_partials = static_cast<T*>(p.doffsets_partial);
      const auto dpos = [&](int o) -> T& { return dpos_partials[doffsets_partial_index(p, o, b, h, i)]; };

      std::fill(dq.begin(), dq.end(), T(0));
      for (int t = 0; t < num_distances(p.band, p.num_offsets); ++t) {
        const auto s = sample_key<T>(pos, t, p.band, offs);
        if (!s.valid) {
          if (std::is_floating_point_v<OffsetT> && is_offset_distance(t, p.band)) {
            dpos(offset_of_distance(t, p.band)) = T(0);
          }
          continue;
        }
        const bool is_position = std::is_floating_point_v<OffsetT> && is_offset_distance(t, p.band);
        const auto terms = pair_terms(q, dout, k, v, s, scale, n, is_position);
        const T prob = prob_from_lse(terms.score, lse);
        const T dscore = dscore_from(prob, terms.dp, delta, lse);
        axpy_interp(dq.data(), dscore * scale, k[s.j0], k[s.j1], s.frac, n);
        if (is_position) {
          dpos(offset_of_distance(t, p.band)) = dscore * terms.dscore_dpos + prob * terms.ddp_dpos;
        }
      }
      std::copy(dq.begin(), dq.end(),
                static_cast<T*>(p.dq) + seq.q_start(b, p.dq_batch_stride, p.dq_row_stride) +
                    int64_t(i) * p.dq_row_stride + h * p.dq_head_stride);
    }
  });
}

// Pass 2 of the backward: dk, dv for one key row, gathered from every query
// head of its group and every query that reads it.
template <typename T, typename OffsetT>
void bwd_dkdv_kernel(const Params& p) {
  const int n = p.head_dim, group = p.heads / p.heads_kv;
  const T scale = T(p.softmax_scale);
  const int64_t total = int64_t(p.batch) * p.heads_kv * p.seqlen_k;
  at::parallel_for(0, total, 64, [&](int64_t begin, int64_t end) {
    std::vector<T> dk(n), dv(n);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t j = task % p.seqlen_k;
      const int hk = (task / p.seqlen_k) % p.heads_kv;
      const int b = task / (int64_t(p.seqlen_k) * p.heads_kv);
      const Sequence seq = sequence_of(p, b);
      if (j >= seq.seqlen_k) continue;  // past a packed sequence's end
      const auto k = rows<T>(p.k, seq, false, b, p.k_batch_stride, p.k_row_stride, p.k_head_stride, hk);
      const auto v = rows<T>(p.v, seq, false, b, p.v_batch_stride, p.v_row_stride, p.v_head_stride, hk);
      std::fill(dk.begin(), dk.end(), T(0));
      std::fill(dv.begin(), dv.end(), T(0));
      for (int h = hk * group; h < (hk + 1) * group; ++h) {
        const OffsetT* offs = static_cast<const OffsetT*>(p.offsets) + h * p.offsets_head_stride;
        const auto q = rows<T>(p.q, seq, true, b, p.q_batch_stride, p.q_row_stride, p.q_head_stride, h);
        const auto dout = rows<T>(p.dout, seq, true, b, p.do_batch_stride, p.do_row_stride, p.do_head_stride, h);
        const int64_t stats = stats_index(p, seq, b, h, 0);
        for (int t = 0; t < num_distances(p.band, p.num_offsets); ++t) {
          int64_t readers[2];
          const int num_readers = readers_of_row<T>(j, t, p.band, offs, readers);
          for (int r = 0; r < num_readers; ++r) {
            const int64_t i = readers[r] - seq.q_pos_shift;
            if (i < 0 || i >= seq.seqlen_q) continue;
            const auto s = sample_key<T>(readers[r], t, p.band, offs);
            const T w = weight_of_row(s, j);
            if (w == T(0)) continue;
            const auto terms = pair_terms(q[i], dout[i], k, v, s, scale, n, false);
            const T lse = static_cast<const T*>(p.lse)[stats + i];
            const T prob = prob_from_lse(terms.score, lse);
            const T dscore = dscore_from(prob, terms.dp, static_cast<const T*>(p.delta)[stats + i], lse);
            for (int d = 0; d < n; ++d) {
              dv[d] += w * prob * dout[i][d];
              dk[d] += w * dscore * scale * q[i][d];
            }
          }
        }
      }
      T* dk_out = static_cast<T*>(p.dk) + seq.k_start(b, p.dk_batch_stride, p.dk_row_stride) + j * p.dk_row_stride +
                  hk * p.dk_head_stride;
      T* dv_out = static_cast<T*>(p.dv) + seq.k_start(b, p.dv_batch_stride, p.dv_row_stride) + j * p.dv_row_stride +
                  hk * p.dv_head_stride;
      std::copy(dk.begin(), dk.end(), dk_out);
      std::copy(dv.begin(), dv.end(), dv_out);
    }
  });
}

}  // namespace

// ops_cpu.cpp upcasts half/bfloat16 CPU inputs, so only float and
// double reach here; fractional positions arrive in the same type.
void run_fwd_cpu(const Params& params, c10::ScalarType dtype, bool fractional) {
  AT_DISPATCH_FLOATING_TYPES(dtype, "fibsparse_fwd_cpu", [&] {
    BOOL_SWITCH(fractional, kFrac, [&] {
      using OffsetT = std::conditional_t<kFrac, scalar_t, int32_t>;
      fwd_kernel<scalar_t, OffsetT>(params);
    });
  });
}

void run_bwd_cpu(const Params& params, c10::ScalarType dtype, bool fractional) {
  AT_DISPATCH_FLOATING_TYPES(dtype, "fibsparse_bwd_cpu", [&] {
    BOOL_SWITCH(fractional, kFrac, [&] {
      using OffsetT = std::conditional_t<kFrac, scalar_t, int32_t>;
      bwd_dq_kernel<scalar_t, OffsetT>(params);
      bwd_dkdv_kernel<scalar_t, OffsetT>(params);
    });
  });
}

}  // namespace fibsparse
