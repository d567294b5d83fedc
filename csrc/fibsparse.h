// Everything a fibsparse kernel needs, filled once by op_setup.cpp and
// passed by value. Adding an argument is one field here.
#pragma once

#include <cstdint>

namespace fibsparse {

// The parameters of the dense band, as the ops' `band` argument gives them
// and pattern.h reads them (no kernel reads a field): the query at pos reads
// the keys at distances 0 .. window - 1. A new band shape adds its
// parameters here and its rule in pattern.h.
struct Band {
  int window;
};

// Strides are in elements. Layouts follow FlashAttention:
// q, out, dout, dq: (batch, seqlen_q, heads, head_dim), or (total_q, heads, head_dim) packed
// k, v, dk, dv:     (batch, seqlen_k, heads_kv, head_dim), or (total_k, heads_kv, head_dim) packed
// lse, delta:       (batch, heads, seqlen_q), or (heads, total_q) packed; contiguous
// Kernels reach a sequence's rows through pattern.h's sequence_of, which
// covers both layouts.
struct Params {
  // Inputs.
  const void* q;
  const void* k;
  const void* v;
  // Offsets: int32 distances (integer path) or positions in the accumulation
  // type (fractional path), contiguous rows of num_offsets per head or one
  // shared row. A negative entry is padding and is never attended.
  const void* offsets;

  int64_t q_batch_stride, q_row_stride, q_head_stride;
  int64_t k_batch_stride, k_row_stride, k_head_stride;
  int64_t v_batch_stride, v_row_stride, v_head_stride;
  int64_t offsets_head_stride;  // 0 when one row of offsets serves every head

  int batch, seqlen_q, seqlen_k, heads, heads_kv, head_dim;
  Band band;  // clipped to what seqlen_k keys can meet
  int num_offsets;
  // Query row i sits at absolute position i + q_pos_shift, so that the last
  // query lines up with the last key (FlashAttention's bottom-right causal
  // alignment); q_pos_shift = seqlen_k - seqlen_q >= 0.
  int q_pos_shift;
  double softmax_scale;

  // Decode only (null otherwise): tokens in each sequence's KV cache, (batch,).
  // Query row i of sequence b then sits at cache_seqlens[b] - seqlen_q + i,
  // and k, v are caches of seqlen_k slots: key position j lives in slot j, or
  // in slot j % seqlen_k when `ring` is set.
  const int64_t* cache_seqlens;
  bool ring;

  // Paged decode only (null otherwise), FlashAttention's block_table
  // convention: k and v are a pool of pages (num_pages, page_size, heads_kv,
  // head_dim), and key position j of sequence b lives in row j % page_size of
  // page block_table[b * block_table_stride + j / page_size]. The batch
  // strides are then 0, key rows are counted over the whole pool (page *
  // page_size + row, op_setup.cpp makes the pages evenly strided) and seqlen_k
  // is a sequence's capacity, pages_per_sequence * page_size.
  const int32_t* block_table;
  int64_t block_table_stride;
  int page_size, pages_per_sequence, num_pages;

  // Packed (varlen) batches only (null otherwise): sequence b holds rows
  // [cu_seqlens_q[b], cu_seqlens_q[b + 1]) of q, out, dout, dq and lse, and
  // rows [cu_seqlens_k[b], cu_seqlens_k[b + 1]) of k, v, dk and dv. The batch
  // strides are then 0, seqlen_q and seqlen_k the longest sequence's lengths
  // (they size the grids), and total_q, total_k the tensors' rows.
  const int32_t* cu_seqlens_q;
  const int32_t* cu_seqlens_k;
  int64_t total_q, total_k;
  // Element (b, h, i) of lse and delta is at b * stats_batch_stride +
  // h * stats_head_stride + (the sequence's first q row) + i.
  int64_t stats_batch_stride, stats_head_stride;

  // Forward outputs (backward reads them).
  void* out;
  int64_t o_batch_stride, o_row_stride, o_head_stride;
  void* lse;  // accumulation type (float, or double for double inputs)

  // Backward only.
  const void* dout;
  int64_t do_batch_stride, do_row_stride, do_head_stride;
  const void* dlse;   // upstream gradient of lse (accumulation type), or null
  // <dout_i, out_i> - dlse_i, written by the dq pass and read by the dk/dv
  // pass (the window alone's dk/dv pass forms it from staged rows and leaves
  // this buffer unused). Computed with the same dot product as <dout_i, v_j>,
  // so that their difference is exact where out_i = v_j (a query with one key).
  void* delta;
  void* dq;
  void* dk;
  void* dv;
  int64_t dq_batch_stride, dq_row_stride, dq_head_stride;
  int64_t dk_batch_stride, dk_row_stride, dk_head_stride;
  int64_t dv_batch_stride, dv_row_stride, dv_head_stride;
  // Fractional path: per-(batch, head, query block, offset) partial sums of
  // d loss / d position, reduced on the host side in a fixed order.
  void* doffsets_partial;
  // Tensor-core backward only: each (query, offset)'s probability and d loss /
  // d score, (batch, heads, num_offsets, seqlen_q) or (heads, num_offsets,
  // total_q) packed (offset_term_index), written by the dq pass and
  // read by the dk/dv pass (which then need not recompute offset scores); a
  // warp's 16 queries are contiguous, so both passes access them coalesced.
  // The backward with stored dS (bwd_stored_dscores_kernel.cuh) runs the
  // dk/dv pass first, which writes offset_dscores for the dq pass, and in
  // offset_probs, for fractional positions, each (query, offset)'s d loss /
  // d position term (unused with integer offsets).
  void* offset_probs;
  void* offset_dscores;
  int num_partials;  // query blocks per (batch, head)
  // Tensor-core backward with stored dS (offsets or none) on batches whose
  // queries and keys line up (bwd_stored_dscores_kernel.cuh), else null: dS of
  // every 64-key x 64-query band tile, written by the dk/dv pass and read by
  // the dq pass, at band_dscore_index; band_dscore_steps is the band steps a
  // key tile may have (its query chunks), band_dscore_tiles the key tiles the
  // buffer holds per query head (every sequence's, band_dscore_first_tile).
  void* band_dscores;
  int band_dscore_steps;
  int64_t band_dscore_tiles;
  // The window alone's dk/dv pass as a walk (bwd_window_walk_kernel.cuh): the
  // key tiles of one head each block walks.
  int band_tiles_per_run;

  // The first distance past the band as the caller gave it (`band` is
  // clipped): the smallest integer offset allowed, for the kernels' check of
  // the offsets.
  int64_t min_offset_distance;

  // The dk/dv pass before dq at fractional positions, where each warp's row
  // 16 share is formed by the next warp (bwd_mma_kernel.cuh's
  // NeighbourShares), else null: per kv head and key tile
  // (band_dscore_tiles of them), the tile's last key's dk and dv as summed
  // by its block, then the share of them that the next tile's block formed,
  // head_dim floats each.
  float* dkdv_edge_rows;
};

}  // namespace fibsparse
