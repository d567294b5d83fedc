// Block geometry of the tensor-core kernels: which rows a block stages, in
// which steps. A block of 64 queries (forward, dq pass) walks the key strips
// it reads; a block of 64 keys (dk/dv pass) walks the query strips that read
// it, the band mirrored. Both ask pattern.h which distances are attended;
// the kernels only follow the plan.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../fibsparse.h"
#include "../pattern.h"
#include "mma_tiles.cuh"

namespace fibsparse {
namespace mma_tiles {

// Queues a 64-row query chunk's statistics for the window alone's walking
// dk/dv pass (the one-tile pass, QuerySteps::issue, writes the same loop out),
// which forms delta itself: lse, and dlse (0 without it) in delta's
// place, from query row `first` on (stats: the head's row 0 in lse's layout);
// rows past last_row are 0.
__device__ __forceinline__ void stage_window_stats(const Params& p, int64_t stats, int64_t first, int64_t last_row,
                                                   float* lse_dst, float* dlse_dst) {
  for (int r = threadIdx.x; r < kChunk; r += kMmaBlockThreads) {
    const int64_t i = first + r;
    const bool valid = i <= last_row, has_dlse = valid && p.dlse != nullptr;
    copy_async_4(lse_dst + r, static_cast<const float*>(p.lse) + (valid ? stats + i : 0), valid);
    copy_async_4(dlse_dst + r, static_cast<const float*>(has_dlse ? p.dlse : p.lse) + (valid ? stats + i : 0),
                 has_dlse);
  }
}

// How many of the offsets to walk when no distance whose whole part exceeds
// `max_whole` can pair a query with a key (the queries are too close to the
// sequence start): the offsets after the last one within reach are dropped,
// with their whole pipeline steps. Offsets are increasing (Python checks it),
// so those out of reach are a suffix; any order stays correct, as only a
// suffix out of reach is dropped. At 1024 tokens this is ~45% of the steps.
template <typename OffsetT>
__device__ __forceinline__ int offsets_within_reach(const OffsetT* offs, int num_offsets, int64_t max_whole) {
  int count = num_offsets;
  while (count > 0) {
    const OffsetSplit split = split_offset(offs, count - 1);
    if (split.whole >= 0 && split.whole <= max_whole) break;
    --count;
  }
  return count;
}

// offsets_within_reach for a whole warp (every lane calls it, with the same
// arguments, and gets the same count): each lane tests one offset of a run of
// 32, from the last run down, so the loads run side by side rather than one
// after another.
template <typename OffsetT>
__device__ __forceinline__ int offsets_within_reach_of_warp(const OffsetT* offs, int num_offsets, int64_t max_whole,
                                                            int lane) {
  for (int first = (num_offsets - 1) / 32 * 32; first >= 0; first -= 32) {
    bool within = false;
    if (first + lane < num_offsets) {
      const OffsetSplit split = split_offset(offs, first + lane);
      within = split.whole >= 0 && split.whole <= max_whole;
    }
    const unsigned found = __ballot_sync(0xffffffffu, within);
    if (found != 0) return first + 32 - __clz(found);
  }
  return 0;
}

// The steps of a block of 64 queries over its keys (forward and dq pass):
// band chunks of kChunk key rows covering [block_pos - window + 1,
// block_pos + 63], then one step per offset, in which staged row 16 w + x
// holds key pos_w - whole - 1 + x: query x of warp w reads its first row at
// staged row 16 w + x + 1 and its second (interpolation) row at 16 w + x.
// The block's kThreads threads share the copies (a block serving several
// heads of a kv group stages each step once for all of them). The dq pass
// stages its offset steps per warp instead (issue_warp_strip).
template <typename OffsetT, int kHeadDim, int kThreads = kMmaBlockThreads>
struct KeySteps {
  const Params& p;
  const OffsetT* offs;
  int64_t block_pos, band_first, band_last, last_key;
  int band_steps, offset_steps, num_steps;

  __device__ KeySteps(const Params& params, const Sequence& seq, const OffsetT* offsets, int64_t first_pos)
      : p(params), offs(offsets), block_pos(first_pos), last_key(seq.seqlen_k - 1) {
    band_first = band_first_key(block_pos, p.band);
    band_last = block_pos + kBlockRows - 1 < last_key ? block_pos + kBlockRows - 1 : last_key;
    band_steps = int((band_last - band_first) / kChunk) + 1;
    // The block's last query reads pos - d only for d <= pos.
    offset_steps = offsets_within_reach(offs, p.num_offsets, block_pos + kBlockRows - 1);
    num_steps = band_steps + offset_steps;
  }

  __device__ bool is_band(int n) const { return n < band_steps; }
  __device__ int64_t chunk(int n) const { return band_first + int64_t(n) * kChunk; }
  __device__ int offset_index(int n) const { return n - band_steps; }

  // Queues the key and value rows of step n into k_dst, v_dst, then commits
  // one cp.async group (an empty one past the last step or for padding).
  __device__ void issue(int n, const uint16_t* k_src, const uint16_t* v_src, Rows<kHeadDim> k_dst,
                        Rows<kHeadDim> v_dst) const {
    if (n < band_steps) {
      stage_rows<kHeadDim, kChunk, kThreads>(k_dst, k_src, p.k_row_stride, chunk(n), band_last);
      stage_rows<kHeadDim, kChunk, kThreads>(v_dst, v_src, p.v_row_stride, chunk(n), band_last);
    } else if (n < num_steps) {
      const OffsetSplit split = split_offset(offs, offset_index(n));
      if (split.whole >= 0) {
        const int64_t first = block_pos - split.whole - 1;
        stage_rows<kHeadDim, kStripSpan, kThreads>(k_dst, k_src, p.k_row_stride, first, last_key);
        stage_rows<kHeadDim, kStripSpan, kThreads>(v_dst, v_src, p.v_row_stride, first, last_key);
      }
    }
    commit_async();
  }

  // An offset step of the dq pass pairs query x of warp w with strip row x
  // alone (integer offsets) or with rows x and x + 1 (fractional positions),
  // as the dq pass from stored dS does: warp w of each of the block's heads
  // (kGroupThreads threads, `group_thread` among them) stages that warp's
  // strip of k and v rows (mma_tiles.cuh's kWarpStripRows, from its first
  // query's first row, or for fractional positions its second) and waits
  // only for its group. Queues offset step n's strip of warp `warp` (none
  // past the last step), then commits one cp.async group. read_offset: the
  // step's offset, where the caller has read it.
  template <bool kFractional, int kGroupThreads>
  __device__ void issue_warp_strip(int n, const uint16_t* k_src, const uint16_t* v_src, Rows<kHeadDim> k_dst,
                                   Rows<kHeadDim> v_dst, int warp, unsigned group_thread,
                                   const OffsetT* read_offset = nullptr) const {
    if (n < num_steps) {
      const OffsetSplit split =
          read_offset != nullptr ? split_offset(read_offset, 0) : split_offset(offs, offset_index(n));
      if (split.whole >= 0) {
        constexpr int kRows = kWarpStripRows<kFractional>;
        const int row0 = warp_strip_row0<kFractional>(warp);
        const int64_t first = block_pos + 16 * warp - split.whole - (kFractional ? 1 : 0);
        stage_row_pair<kHeadDim, kRows, kGroupThreads>(k_dst + row0, k_src, p.k_row_stride, v_dst + row0, v_src,
                                                       p.v_row_stride, first, last_key, group_thread);
      }
    }
    commit_async();
  }
};

// The dk/dv pass's three routes (bwd_launch.cuh picks one). Each decides what
// the pass stages besides q and dout rows, and whether it runs before or after
// the dq pass.
enum class DkdvRoute {
  // The general backward: after the dq pass, whose delta it stages for the
  // band and whose P and dS of each (query, offset) it stages for the offsets.
  kAfterDq,
  // The window alone (no offsets), first: it stages out rows and dlse and forms
  // delta itself, and stores the band's dS for the dq pass.
  kWindowAlone,
  // With offsets, first (after the delta pass): it stages lse and delta for
  // the offsets' strips too, computes every P and dS itself, and stores each
  // dS, the band's and the offsets', for the dq pass (and for fractional
  // positions each d loss / d position term).
  kBeforeDq,
};

// The steps of a block of 64 keys over the queries that read them, for each
// query head of the kv head's group in turn: band chunks of kChunk query rows
// (positions [block_key, block_key + 63 + window - 1] that exist), then one
// step per offset, in which row x of warp w's strip (strip_row0) holds the
// query at position key_w + whole + x (it reads key x of warp w as its first
// row; the query at strip row x + 1 reads it as its second).
template <typename OffsetT, int kHeadDim>
struct QuerySteps {
  const Params& p;
  const Sequence seq;  // a copy: the steps read its lengths in every issue()
  int64_t block_key, band_first_row, band_last_row;
  int band_steps, steps_per_head, num_steps, first_head;

  __device__ QuerySteps(const Params& params, const Sequence& sequence, int64_t first_key, int hk)
      : p(params), seq(sequence), block_key(first_key) {
    const int64_t first_pos = block_key, last_pos = band_last_reader(block_key + kBlockRows - 1, p.band);
    band_first_row = (first_pos > seq.q_pos_shift ? first_pos : seq.q_pos_shift) - seq.q_pos_shift;
    const int64_t last_row = last_pos - seq.q_pos_shift;
    band_last_row = last_row < seq.seqlen_q - 1 ? last_row : seq.seqlen_q - 1;
    band_steps = band_last_row >= band_first_row ? int((band_last_row - band_first_row) / kChunk) + 1 : 0;
    first_head = hk * (p.heads / p.heads_kv);
    // A query at or before the last position reads key block_key only through
    // d <= last - block_key; the same count for every head of the group (the
    // most any of them needs: an extra step for another head stages only
    // rows outside the queries, which add nothing).
    const int64_t max_whole = seq.q_pos_shift + seq.seqlen_q - 1 - block_key;
    int offset_steps = 0;
    for (int h = first_head; h < first_head + p.heads / p.heads_kv; ++h) {
      const int reach = offsets_within_reach(offsets(h), p.num_offsets, max_whole);
      offset_steps = reach > offset_steps ? reach : offset_steps;
    }
    steps_per_head = band_steps + offset_steps;
    num_steps = steps_per_head * (p.heads / p.heads_kv);
  }

  // A step as (query head, its place among that head's steps). The kernel
  // walks the steps in order and moves a Step along (next), rather than
  // dividing the step's number by steps_per_head, which is known only at run
  // time: each such division is ~25 instructions in every step, offset steps
  // (two products) included.
  struct Step {
    int head, index;
  };
  __device__ Step first() const { return {first_head, 0}; }
  __device__ Step next(Step s) const {
    return s.index + 1 < steps_per_head ? Step{s.head, s.index + 1} : Step{s.head + 1, 0};
  }
  __device__ bool is_band(Step s) const { return s.index < band_steps; }
  // An offset step pairs key x of warp w with strip row x alone (integer
  // offsets) or with strip rows x and x + 1 (fractional positions), so each
  // warp stages its own strip (mma_tiles.cuh's kWarpStripRows) and its rows'
  // statistics and waits only for itself (sync_strip_group): no block barrier
  // holds the block's warps in step. A band step reads every row, so its
  // copies stay shared.
  static constexpr int kStripRows = kWarpStripRows<!std::is_integral_v<OffsetT>>;
  // Where warp w's strip starts among an offset step's staged rows.
  __device__ static int strip_row0(int warp) { return warp_strip_row0<!std::is_integral_v<OffsetT>>(warp); }
  // Whether step s (if it exists) is staged and read by each warp for itself.
  __device__ bool by_warp(Step s, bool exists) const { return !exists || !is_band(s); }
  __device__ int64_t chunk_row(Step s) const { return band_first_row + int64_t(s.index) * kChunk; }
  __device__ int offset_index(Step s) const { return s.index - band_steps; }
  __device__ const OffsetT* offsets(int h) const {
    return static_cast<const OffsetT*>(p.offsets) + h * p.offsets_head_stride;
  }

  // Queues step s's q and dout rows and, per row, two statistics (lse and
  // delta for the band; for an offset, the dq pass's P and dS, or with
  // kBeforeDq lse and delta again); past the last step (exists false), an
  // empty group. kWindowAlone, whose dk/dv pass forms delta itself: a band step
  // also queues the out rows into o_dst, and dlse (0 without it) in delta's place.
  // read_offset: an offset step's offset, where the caller has read it.
  // kSwizzled: q_dst and do_dst are swizzled stages (mma_tiles.cuh's swizzled_chunk).
  template <typename T, DkdvRoute kRoute = DkdvRoute::kAfterDq, bool kSwizzled = false>
  __device__ void issue(Step s, bool exists, int b, Rows<kHeadDim> q_dst, Rows<kHeadDim> do_dst, float* stat0_dst,
                        float* stat1_dst, Rows<kHeadDim> o_dst = nullptr,
                        const OffsetT* read_offset = nullptr) const {
    static_assert(!kSwizzled || kRoute == DkdvRoute::kBeforeDq, "swizzled stages on the route before dq");
    if (exists) {
      const int h = s.head;
      const uint16_t* q_src = bits<T>(p.q, seq.q_start(b, p.q_batch_stride, p.q_row_stride) + h * p.q_head_stride);
      const uint16_t* do_src =
          bits<T>(p.dout, seq.q_start(b, p.do_batch_stride, p.do_row_stride) + h * p.do_head_stride);
      const int64_t stats = stats_index(p, seq, b, h, 0);
      if (is_band(s)) {
        const int64_t first = chunk_row(s);
        stage_rows<kHeadDim, kChunk, kMmaBlockThreads, false, kSwizzled>(q_dst, q_src, p.q_row_stride, first,
                                                                         band_last_row);
        stage_rows<kHeadDim, kChunk, kMmaBlockThreads, false, kSwizzled>(do_dst, do_src, p.do_row_stride, first,
                                                                         band_last_row);
        if constexpr (kRoute == DkdvRoute::kWindowAlone) {
          const uint16_t* o_src =
              bits<T>(p.out, seq.q_start(b, p.o_batch_stride, p.o_row_stride) + h * p.o_head_stride);
          stage_rows<kHeadDim, kChunk>(o_dst, o_src, p.o_row_stride, first, band_last_row);
        }
        // The window alone's statistics are stage_window_stats's, written out
        // here: calling it changed this pass's code and made it slower
        // (docs/performance.md, round 64).
        for (int r = threadIdx.x; r < kChunk; r += kMmaBlockThreads) {
          const int64_t i = first + r;
          const bool valid = i <= band_last_row;
          copy_async_4(stat0_dst + r, static_cast<const float*>(p.lse) + (valid ? stats + i : 0), valid);
          if constexpr (kRoute == DkdvRoute::kWindowAlone) {
            const bool has_dlse = valid && p.dlse != nullptr;
            copy_async_4(stat1_dst + r, static_cast<const float*>(has_dlse ? p.dlse : p.lse) + (valid ? stats + i : 0),
                         has_dlse);
          } else {
            copy_async_4(stat1_dst + r, static_cast<const float*>(p.delta) + (valid ? stats + i : 0), valid);
          }
        }
      } else {
        const int o = offset_index(s);
        const OffsetSplit split = read_offset != nullptr ? split_offset(read_offset, 0) : split_offset(offsets(h), o);
        // Staged row r (query row i) of the strip: its two statistics.
        const auto stage_offset_stats = [&](int r, int64_t i) {
          const bool valid = i >= 0 && i < seq.seqlen_q;
          if constexpr (kRoute == DkdvRoute::kBeforeDq) {
            const int64_t at = valid ? stats + i : 0;
            copy_async_4(stat0_dst + r, static_cast<const float*>(p.lse) + at, valid);
            copy_async_4(stat1_dst + r, static_cast<const float*>(p.delta) + at, valid);
          } else {
            const int64_t at = valid ? offset_term_index(p, seq, b, h, o, i) : 0;
            copy_async_4(stat0_dst + r, static_cast<const float*>(p.offset_probs) + at, valid);
            copy_async_4(stat1_dst + r, static_cast<const float*>(p.offset_dscores) + at, valid);
          }
        };
        // Every route with offsets takes the per-warp copies. The window alone
        // never reaches an offset step: its kernel compiles the block's copies
        // below instead, which it never runs, and its SASS stays as measured.
        if (split.whole >= 0 && kRoute != DkdvRoute::kWindowAlone) {
          const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, row0 = strip_row0(warp);
          const int64_t first = block_key + split.whole - seq.q_pos_shift + 16 * warp;
          const int64_t last = seq.seqlen_q - 1;
          if constexpr (kSwizzled && !std::is_integral_v<OffsetT>) {
            // A fractional strip's 17 rows start at row 17 w, not a multiple of 8.
            stage_row_pair<kHeadDim, kStripRows, 32, true, true>(q_dst, q_src, p.q_row_stride, do_dst, do_src,
                                                                 p.do_row_stride, first, last, unsigned(lane), row0);
          } else if constexpr (kSwizzled) {
            stage_row_pair<kHeadDim, kStripRows, 32, true>(swizzled_rows_from<kHeadDim>(q_dst, row0), q_src,
                                                           p.q_row_stride, swizzled_rows_from<kHeadDim>(do_dst, row0),
                                                           do_src, p.do_row_stride, first, last, unsigned(lane));
          } else {
            stage_row_pair<kHeadDim, kStripRows, 32>(q_dst + row0, q_src, p.q_row_stride, do_dst + row0, do_src,
                                                     p.do_row_stride, first, last, unsigned(lane));
          }
          if (lane < kStripRows) stage_offset_stats(row0 + lane, first + lane);
        } else if (split.whole >= 0) {
          const int64_t first = block_key + split.whole - seq.q_pos_shift;
          stage_rows<kHeadDim, kStripSpan>(q_dst, q_src, p.q_row_stride, first, seq.seqlen_q - 1);
          stage_rows<kHeadDim, kStripSpan>(do_dst, do_src, p.do_row_stride, first, seq.seqlen_q - 1);
          for (int r = threadIdx.x; r < kStripSpan; r += kMmaBlockThreads) stage_offset_stats(r, first + r);
        }
      }
    }
    commit_async();
  }
};

}  // namespace mma_tiles
}  // namespace fibsparse
