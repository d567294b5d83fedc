// Where a query's key set is decided: the one definition of the attention
// pattern, shared by every kernel (CPU, CUDA lane-group, tensor-core, decode).
// A kernel asks this header which keys a query reads (the band, the offsets,
// a fractional position's two rows and weights) and where positions live in
// memory; it never states the rule itself. docs/architecture.md lists what a
// change of the pattern touches.
//
// A query at absolute position `pos` sees the band's distances (0 .. window-1,
// Band in fibsparse.h) and then one distance per offset. An offset is an int32 distance
// (integer path) or a real position p (fractional path); a real position reads
// the interpolation (1 - f) * row[pos - a] + f * row[pos - a - 1] with
// a = floor(p), f = p - a, and is attended iff pos - p >= 0. Negative offsets
// are padding and never attended.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "fibsparse.h"

#if defined(__CUDACC__)
#define FIBSPARSE_HD __host__ __device__ __forceinline__
#else
#define FIBSPARSE_HD inline
#endif

namespace fibsparse {

// The two key rows a (query, distance) pair reads and how they are mixed.
template <typename Acc>
struct KeySample {
  int64_t j0;  // row pos - a, weight 1 - frac
  int64_t j1;  // row pos - a - 1, weight frac; equal to j0 when frac == 0
  Acc frac;
  bool valid;
};

// Number of distances each query walks: the band, then the offsets.
// Distance index t < window is band distance t; t = window + o is offset o.
FIBSPARSE_HD int num_distances(Band band, int num_offsets) { return band.window + num_offsets; }
FIBSPARSE_HD bool is_offset_distance(int t, Band band) { return t >= band.window; }
FIBSPARSE_HD int offset_of_distance(int t, Band band) { return t - band.window; }
FIBSPARSE_HD int distance_of_offset(int o, Band band) { return band.window + o; }

// ---- The band: key distances pos - key in [0, window) ----
// Asked per pair, per tile and per block: the tensor-core kernels test whole
// tiles and strips with the range forms, then single pairs on a tile's edge.

// Whether the query at position pos reads the key at pos - distance through
// the band. Tile code passes distances as int: within a tile that meets the
// band they lie in [-79, window + 79], and window < 2^31 - 2^16 (the host's
// check). The dk/dv pass, whose rows are keys, asks the same of the
// distance it computes from the key's side.
FIBSPARSE_HD bool in_band(int distance, Band band) {
  return static_cast<unsigned>(distance) < static_cast<unsigned>(band.window);
}

// Whether every distance pos - key + [-kRadius, kRadius] is in the band (a
// tile that needs no mask per pair).
template <int kRadius>
FIBSPARSE_HD bool band_holds(int64_t pos, int64_t key, Band band) {
  return pos - key >= kRadius && pos - key + kRadius < band.window;
}

// Whether 16 query positions [pos0, pos0 + 15] and `count` key positions
// [key0, key0 + count - 1] have any pair in the band.
FIBSPARSE_HD bool band_meets(int64_t pos0, int64_t key0, Band band, int count = 16) {
  return key0 <= pos0 + 15 && key0 + count - 1 >= pos0 - (band.window - 1);
}

// The first key the query at pos reads through the band (the sequence
// starts at key 0); its last is pos itself.
FIBSPARSE_HD int64_t band_first_key(int64_t pos, Band band) {
  return pos - (band.window - 1) > 0 ? pos - (band.window - 1) : 0;
}

// The last query position that reads the key at position key through the
// band (the band mirrored: its readers are key .. key + window - 1).
FIBSPARSE_HD int64_t band_last_reader(int64_t key, Band band) { return key + (band.window - 1); }

// ---- The ops' `band` argument, [window] (op_checks.cpp checks it) ----

// The band that keys at positions [0, seqlen_k) can meet. Distances >=
// seqlen_k are never attended: dropping them changes no result, and keeps a
// huge window (a way to ask for dense attention) from costing O(window) per
// row or overflowing the int loop count.
inline Band band_for_keys(const int64_t* band_args, int64_t seqlen_k) {
  return {static_cast<int>(band_args[0] < seqlen_k ? band_args[0] : seqlen_k)};
}

// The first distance past the band as the caller asked for it (not clipped):
// integer offsets must be at least this, shorter ones are in the band.
inline int64_t band_end(const int64_t* band_args) { return band_args[0]; }

// Whether entry t of one row of offsets is allowed (the same rule as the
// Python check): -1 is padding, and only at the end of a row; other entries
// are finite, >= 0, strictly increasing, and integer distances are at least
// `min_distance` (band_end: shorter distances are in the band). One entry
// and its predecessor decide it, so threads can check a row in parallel.
template <typename OffsetT>
FIBSPARSE_HD bool offset_entry_valid(const OffsetT* row, int t, int64_t min_distance) {
  const OffsetT x = row[t];
  const bool padding = x == OffsetT(-1);
  const bool after_padding = t > 0 && row[t - 1] == OffsetT(-1);
  if (padding) return true;
  if (after_padding || !(x >= OffsetT(0))) return false;  // also rejects NaN
  if constexpr (std::is_integral_v<OffsetT>) {
    if (x < min_distance) return false;
  } else {
    if (!(x <= std::numeric_limits<OffsetT>::max())) return false;  // +inf
  }
  return t == 0 || x > row[t - 1];
}

// An offset as the tensor-core kernels read it, once per block rather than
// per query: rows pos - whole (weight 1 - frac) and pos - whole - 1 (weight
// frac), sample_key's interpolation; whole < 0 marks padding.
struct OffsetSplit {
  int64_t whole;
  float frac;
};

template <typename OffsetT>
FIBSPARSE_HD OffsetSplit split_offset(const OffsetT* offs, int o) {
  const OffsetT distance = offs[o];
  if constexpr (std::is_integral_v<OffsetT>) {
    return {int64_t(distance), 0.f};
  } else {
    if (distance < 0) return {-1, 0.f};
    return {int64_t(floorf(distance)), distance - floorf(distance)};
  }
}

// ---- Sequences: where positions restart ----
// A dense batch is `batch` sequences of the tensors' lengths; a packed one
// (cu_seqlens, FlashAttention's varlen convention) holds sequences of their
// own lengths back to back. Either way positions restart at 0 in every
// sequence: the pattern never reads a key of another sequence.

// One sequence as a kernel block sees it. Rows are counted from the
// sequence's batch entry (dense) or from the start of the packed tensors.
struct Sequence {
  int64_t q_row0, k_row0;  // its first row of q (out, dout, dq, lse) and of k (v, dk, dv)
  int seqlen_q, seqlen_k;
  int q_pos_shift;  // query row i sits at position i + q_pos_shift (the last query at the last key)

  // Element offset of the sequence's first row in a tensor laid out like q
  // (or like k), for the tensor's batch and row strides.
  FIBSPARSE_HD int64_t q_start(int b, int64_t batch_stride, int64_t row_stride) const {
    return b * batch_stride + q_row0 * row_stride;
  }
  FIBSPARSE_HD int64_t k_start(int b, int64_t batch_stride, int64_t row_stride) const {
    return b * batch_stride + k_row0 * row_stride;
  }
};

FIBSPARSE_HD int64_t clamp_to(int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : (x > hi ? hi : x); }

// Sequence b. Packed boundaries are checked before the kernels run (and by
// their check blocks, offsets_check.cuh); the clamps only keep bad ones from
// reading or writing out of bounds.
FIBSPARSE_HD Sequence sequence_of(const Params& p, int b) {
  if (p.cu_seqlens_q == nullptr) return {0, 0, p.seqlen_q, p.seqlen_k, p.q_pos_shift};
  const int64_t q0 = clamp_to(p.cu_seqlens_q[b], 0, p.total_q);
  const int64_t k0 = clamp_to(p.cu_seqlens_k[b], 0, p.total_k);
  const int64_t seqlen_k = clamp_to(p.cu_seqlens_k[b + 1], k0, p.total_k) - k0;
  const int64_t seqlen_q = clamp_to(p.cu_seqlens_q[b + 1], q0, p.total_q) - q0;
  const int k_len = int(seqlen_k < p.seqlen_k ? seqlen_k : p.seqlen_k);
  const int q_len = int(clamp_to(seqlen_q, 0, k_len < p.seqlen_q ? k_len : p.seqlen_q));
  return {q0, k0, q_len, k_len, k_len - q_len};
}

// Whether the packed boundaries of sequence b are as the ops require: both
// start at 0 and never decrease, the last ones are the tensors' rows, no
// sequence is longer than max_seqlen, and seqlen_q <= seqlen_k (queries are
// a sequence's last positions). The same rule for the CPU op's check and the
// CUDA kernels' device-side one.
FIBSPARSE_HD bool sequence_bounds_valid(const int32_t* cu_q, const int32_t* cu_k, int b, int batch, int64_t total_q,
                                        int64_t total_k, int64_t max_seqlen_q, int64_t max_seqlen_k) {
  if (b == 0 && (cu_q[0] != 0 || cu_k[0] != 0)) return false;
  if (b == batch - 1 && (cu_q[batch] != total_q || cu_k[batch] != total_k)) return false;
  const int64_t seqlen_q = int64_t(cu_q[b + 1]) - cu_q[b], seqlen_k = int64_t(cu_k[b + 1]) - cu_k[b];
  return seqlen_q >= 0 && seqlen_k >= 0 && seqlen_q <= max_seqlen_q && seqlen_k <= max_seqlen_k &&
         seqlen_q <= seqlen_k;
}

// Index of (sequence b, head h, query row i) in lse and delta.
FIBSPARSE_HD int64_t stats_index(const Params& p, const Sequence& seq, int b, int h, int64_t i) {
  return b * p.stats_batch_stride + h * p.stats_head_stride + seq.q_row0 + i;
}

// Index of (sequence b, head h, offset o, query row i) in the tensor-core
// backward's offset_probs and offset_dscores: lse's layout with a row of
// queries per offset, so that a warp's 16 queries are contiguous.
FIBSPARSE_HD int64_t offset_term_index(const Params& p, const Sequence& seq, int b, int h, int o, int64_t i) {
  return (b * p.stats_batch_stride + h * p.stats_head_stride) * p.num_offsets + o * p.stats_head_stride + seq.q_row0 +
         i;
}

// Index of the partial d loss / d position of offset o, from query block
// `block` of (sequence b, head h): (heads, K, batch, num_partials), so that
// the host's sum over sequences and blocks reduces contiguous rows, one per
// (head, offset).
FIBSPARSE_HD int64_t doffsets_partial_index(const Params& p, int o, int b, int h, int64_t block) {
  return ((int64_t(h) * p.num_offsets + o) * p.batch + b) * p.num_partials + block;
}

// Absolute position of query row i of sequence b (of a KV cache's sequence
// when decoding).
FIBSPARSE_HD int64_t query_position(const Params& p, const Sequence& seq, int b, int i) {
  return p.cache_seqlens != nullptr ? p.cache_seqlens[b] - p.seqlen_q + i : int64_t(i) + seq.q_pos_shift;
}

// ---- Decode caches: where a key position lives, and what a call reads ----

// Whether entry `page` of a block table names a page of the pool.
FIBSPARSE_HD bool page_valid(int32_t page, int num_pages) { return page >= 0 && page < num_pages; }

// The pool row that holds key position j of sequence b in a paged cache.
// Positions are < seqlen_k <= 2^31 - 2^16 (the ops' check), so 32-bit
// division suffices. The clamps only keep a bad length or block table entry
// (refused by the CPU op and by the CUDA check blocks) from reading out of
// bounds; they also give the clamped rows of invalid samples (sample_key), which
// are loaded and masked, a page that exists.
FIBSPARSE_HD int64_t paged_key_row(const Params& p, int b, int64_t j) {
  const uint32_t position = static_cast<uint32_t>(j < p.seqlen_k ? j : p.seqlen_k - 1);
  const uint32_t page_size = static_cast<uint32_t>(p.page_size);
  const uint32_t slot = position / page_size, row = position - slot * page_size;
  const int32_t page = p.block_table[b * p.block_table_stride + slot];
  return int64_t(page_valid(page, p.num_pages) ? page : 0) * page_size + row;
}

// The row of k and v that holds key position j >= 0 of sequence b: j itself
// (the tensors' own rows, or a linear cache's), its slot in a ring cache, or
// (kPaged) its page's row in a paged one. Decode callers check that lengths
// fit the cache; the clamp only keeps a bad length from reading out of
// bounds. The CUDA kernels know kPaged at compile time (the decode kernel is
// instantiated for both, the forward kernels never page), so the non-paged
// ones compile as before.
template <bool kPaged>
FIBSPARSE_HD int64_t key_row(const Params& p, int b, int64_t j) {
  if constexpr (kPaged) {
    return paged_key_row(p, b, j);
  } else {
    if (p.ring) return j % p.seqlen_k;
    return j < p.seqlen_k ? j : p.seqlen_k - 1;
  }
}

// The same, deciding at run time (the CPU kernel: one predictable branch).
FIBSPARSE_HD int64_t key_row(const Params& p, int b, int64_t j) {
  return p.block_table != nullptr ? key_row<true>(p, b, j) : key_row<false>(p, b, j);
}

// The farthest distance behind a query that a head reads: the band's last
// (window - 1) or its last offset's, one further for a fractional one (which
// reads the row floor(p) + 1). Rows are increasing with -1 padding at the end
// (offset_entry_valid), so the last real entry is the largest.
// fibsparse_ext.decode.largest_distance states the same in Python.
template <typename OffsetT>
FIBSPARSE_HD int64_t farthest_distance(const OffsetT* row, int num_offsets, Band band) {
  int64_t farthest = band.window - 1;
  for (int o = num_offsets - 1; o >= 0; --o) {
    if (row[o] < OffsetT(0)) continue;  // padding
    int64_t distance;
    if constexpr (std::is_integral_v<OffsetT>) {
      distance = int64_t(row[o]);
    } else {
      distance = int64_t(floor(row[o])) + 1;
    }
    return distance > farthest ? distance : farthest;
  }
  return farthest;
}

// Whether a decode call of `new_tokens` queries may take a cache length: the
// new tokens are among the cached ones, and (linear and paged caches) the
// sequence fits the cache's seqlen_k rows. A ring holds any length.
FIBSPARSE_HD bool cache_length_valid(int64_t length, int new_tokens, int64_t seqlen_k, bool ring) {
  return length >= new_tokens && (ring || length <= seqlen_k);
}

// The first key position a decode call reads of a sequence of `length`
// tokens: its oldest query, length - new_tokens, reaches `farthest` back. The
// call reads positions [first_position_read, length), so the pages it reads
// of a paged cache are those that hold them.
FIBSPARSE_HD int64_t first_position_read(int64_t length, int new_tokens, int64_t farthest) {
  const int64_t first = length - new_tokens - farthest;
  return first > 0 ? first : 0;
}

// The distance of distance index t (< 0 for padding): integer offsets stay
// in integer arithmetic so that large distances are exact.
template <typename Acc, typename OffsetT>
FIBSPARSE_HD std::conditional_t<std::is_integral_v<OffsetT>, int64_t, Acc> distance_at(int t, Band band,
                                                                                       const OffsetT* offsets) {
  using D = std::conditional_t<std::is_integral_v<OffsetT>, int64_t, Acc>;
  return is_offset_distance(t, band) ? D(offsets[offset_of_distance(t, band)]) : D(t);
}

// The keys that the query at `pos` reads for distance index t. Invalid samples
// still carry in-range rows (clamped to 0), so callers may load them
// unconditionally and mask the result.
template <typename Acc, typename OffsetT>
FIBSPARSE_HD KeySample<Acc> sample_key(int64_t pos, int t, Band band, const OffsetT* offsets) {
  KeySample<Acc> s;
  const auto d = distance_at<Acc>(t, band, offsets);
  s.valid = d >= 0 && pos - d >= 0;
  if constexpr (std::is_integral_v<OffsetT>) {
    s.frac = Acc(0);
    s.j0 = s.valid ? pos - d : 0;
    s.j1 = s.j0;
  } else {
    const Acc a = floor(d);
    s.frac = s.valid ? d - a : Acc(0);
    s.j0 = s.valid ? pos - int64_t(a) : 0;
    // At frac == 0 the second row has weight 0; clamping keeps it in range
    // and makes d(score)/d(position) zero where that row does not exist.
    s.j1 = s.j0 > 0 ? s.j0 - 1 : 0;
  }
  return s;
}

// Weight with which the sample reads key row j (the mirror used by the
// backward gather: which queries read key j, and how much).
template <typename Acc>
FIBSPARSE_HD Acc weight_of_row(const KeySample<Acc>& s, int64_t j) {
  if (!s.valid) return Acc(0);
  Acc w = Acc(0);
  if (s.j0 == j) w += Acc(1) - s.frac;
  if (s.j1 == j && s.frac != Acc(0)) w += s.frac;
  return w;
}

// The query positions that can read key row j through distance index t:
// pos = j + floor(d) and, for a fractional distance, pos = j + floor(d) + 1.
template <typename Acc, typename OffsetT>
FIBSPARSE_HD int readers_of_row(int64_t j, int t, Band band, const OffsetT* offsets, int64_t pos_out[2]) {
  const auto d = distance_at<Acc>(t, band, offsets);
  if (d < 0) return 0;
  if constexpr (std::is_integral_v<OffsetT>) {
    pos_out[0] = j + d;
    return 1;
  } else {
    const Acc a = floor(d);
    pos_out[0] = j + int64_t(a);
    pos_out[1] = pos_out[0] + 1;
    return d - a != Acc(0) ? 2 : 1;
  }
}

}  // namespace fibsparse
