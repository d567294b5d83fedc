// How many consecutive 64-query spans of tiles one block of the Hopper forward
// walks (tensor_maps.h turns spans into tiles of 64 or 32 queries).
// Plain host arithmetic, apart from the kernels so that a CPU build can test it.
#pragma once

#include <cstdint>

namespace fibsparse {

// For `tiles_per_sequence` tiles in each of `slices` (sequence, heads of a
// block) pairs, with `resident_blocks` blocks resident on the GPU at once. A
// block that walks several tiles overlaps each tile's start and drain with its
// neighbours'.
// - The window alone: every tile costs the same, so a block walks as many
//   tiles (a power of two up to 32) as leave at most 10% of the slots of the
//   waves the grid needs idle; on an H200 the fewest blocks that filled the GPU
//   that evenly were the fastest.
// - With offsets: a later tile reaches more offsets and costs more, and the
//   strips of concurrent blocks share L2 better when each walks fewer; two
//   tiles where the grid stays at least 8 waves deep (for blocks two to an SM
//   on an H200, 2 was the fastest or within 3% of it from 16k to 128k
//   tokens). Blocks alone on their SM (nothing overlaps a block's start, its
//   first tile's q above all) whose kv head's k and v rows fit in the L2 walk
//   four where that leaves at least 3 waves: on an H200 with two heads of GQA
//   32/8 a warpgroup and integer offsets, 8% faster than one at 16k and
//   1-2.4% faster than two at 32k-128k (head_dim 128 to 96k, 64 to 128k);
//   with fractional positions, two heads a warpgroup too (8 queries of both
//   a warp), 3.6% faster than one at 16k, and than two 6% on a packed batch
//   of sequences up to 16k and 0.2-0.8% at 32k-64k. Fractional positions with
//   one head a warpgroup (16 queries of one head a warp) keep the rule's one
//   or two: four measured 3.3% faster at 16k and 1.8% at 64k head_dim 64, but
//   level at 64k head_dim 128 (the rounds of both counts overlapping), short
//   of a gain everywhere, the bar a change of this rule is held to. Where a
//   kv head's rows outgrow the L2 (128k at head_dim 128: 64 MiB against 60)
//   four were 1.4% (integer) and 3.0% (fractional) faster by the median of
//   seven rounds, with the rounds of both counts overlapping, so the rule
//   keeps two there.
//   `four_spans_pay` says whether all of that holds (hopper_four_spans_pay).
// One tile per block where neither applies (small grids).
inline int hopper_tiles_rule(int tiles_per_sequence, int64_t slices, int64_t resident_blocks, bool window_alone,
                             bool four_spans_pay = false) {
  const auto blocks = [&](int per_block) { return (tiles_per_sequence + per_block - 1) / per_block * slices; };
  int per_block = 1;
  if (window_alone) {
    for (int n = 2; n <= 32 && n / 2 < tiles_per_sequence; n *= 2) {
      const int64_t waves = (blocks(n) + resident_blocks - 1) / resident_blocks;
      if (10 * blocks(n) >= 9 * waves * resident_blocks) per_block = n;
    }
  } else if (four_spans_pay && blocks(4) >= 3 * resident_blocks) {
    per_block = 4;
  } else if (blocks(2) >= 8 * resident_blocks) {
    per_block = 2;
  }
  return per_block;
}

// Where blocks that walk four spans were measured faster (hopper_tiles_rule):
// blocks alone on their SM (`blocks_per_sm` resident) whose kv head's k and v
// rows (`kv_head_bytes`) fit the device's L2, but for fractional positions
// with one head a warpgroup (`heads_per_warpgroup`).
inline bool hopper_four_spans_pay(int blocks_per_sm, bool fractional, int heads_per_warpgroup, int64_t kv_head_bytes,
                                  int64_t l2_bytes) {
  const bool fractional_one_head_a_warpgroup = fractional && heads_per_warpgroup == 1;
  return blocks_per_sm == 1 && !fractional_one_head_a_warpgroup && kv_head_bytes <= l2_bytes;
}

}  // namespace fibsparse
