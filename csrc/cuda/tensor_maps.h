// TMA tensor maps of q, k, v and out for the Hopper forward (fwd_hopper_kernel.cuh),
// made on the host at each call, and the rule for when that kernel may run.
#pragma once

#include <cuda.h>

#include <type_traits>

#include "../fibsparse.h"

namespace fibsparse {

// Each map views its tensor as 4-d, (head_dim, heads, rows, batch) innermost
// first, and loads boxes of 64 elements x 1 head x R rows x 1 sequence with the
// 128-byte swizzle: one 64-element span of R consecutive rows of one head.
// Rows outside [0, rows) load as zeros, so a box may start before a sequence.
// A packed batch's maps view the whole buffer as one sequence; the kernel
// loads through copies that sequence_maps.cuh narrows to each sequence's rows.
// k and v load the band's 64-row chunks; q, k_strip and v_strip load a tile's
// queries and an offset's strip, as many rows as a tile has queries (64, or
// 32 where two heads share a warpgroup's 64 rows: fwd_hopper_kernel.cuh); out
// stores the output, kOutputBoxRows rows a box (each warp stores its own rows;
// only blocks of two consumer warpgroups do, but out, the op's own contiguous
// allocation, always suits TMA, so the map is made for every launch).
struct ForwardTensorMaps {
  CUtensorMap q, k, v, k_strip, v_strip, out;
};
constexpr int kOutputBoxRows = 8;

// The rows of a strip's prefix: the box height of the prefix maps below, and
// what the kernel's stages hold of them (tma.cuh).
constexpr int kPrefixRows = 8;

// With fractional offsets, also maps of k and v whose boxes are 8 rows: the
// prefix of an offset's strip, the rows just before it (a fractional
// position reads a second row, one further back).
struct FractionalForwardTensorMaps : ForwardTensorMaps {
  CUtensorMap k_prefix, v_prefix;
};

template <bool kFractional>
using HopperForwardMaps = std::conditional_t<kFractional, FractionalForwardTensorMaps, ForwardTensorMaps>;
// The maps in one set, for code that walks them all (sequence_maps.cuh, the
// Hopper forward's acquire of a packed batch's maps).
template <bool kFractional>
constexpr int kMapsPerSet = int(sizeof(HopperForwardMaps<kFractional>) / sizeof(CUtensorMap));

// Whether the Hopper forward may take a call: built for sm_90a and on a
// compute capability 9.0 device, 16-bit inputs (integer or fractional
// offsets, or none: the window alone), a dense or packed batch (no cache),
// head_dim 64 or 128, and the layouts TMA takes (16-byte aligned base
// pointers and nonzero 16-byte strides) in q, k, v and out. For comparisons,
// FIBSPARSE_HOPPER=0 in the environment turns it off (the tensor-core kernels
// of fwd_mma_kernel.cuh run instead).
bool hopper_forward_applies(const Params& p, bool tensor_core_type);

// Whether FIBSPARSE_HOPPER_CLUSTER=1 asks for the clusters of fwd_launch.cuh
// (off by default: they measured slower). Values other than 0 and 1 are refused,
// for FIBSPARSE_HOPPER too.
bool hopper_clusters_asked();

// Whether the Hopper forward may put two heads of a kv group in each
// warpgroup (fwd_launch.cuh says where it does); FIBSPARSE_HOPPER_PACK=0 turns
// that off, for comparisons.
bool hopper_packing_allowed();

// How many consecutive query tiles one block of the Hopper forward walks, for
// `tiles_per_sequence` tiles of `tiles_per_span` to 64 queries (1, or 2 with
// two heads a warpgroup) in each of `slices` (sequence, heads of a block)
// pairs at `blocks_per_sm` resident blocks per SM of this device, with
// `fractional` positions or not, whose kv heads' k and v rows take
// `kv_head_bytes` each (a sequence's):
// hopper_tiles_rule (hopper_tiles.h) counted in 64-query spans, so that a block
// covers as many queries of its heads whatever its tiles' size.
// FIBSPARSE_HOPPER_TILES=n (1 to 64) sets it, in tiles, for comparisons.
int hopper_tiles_per_block(int tiles_per_sequence, int tiles_per_span, int64_t slices, int blocks_per_sm,
                           bool window_alone, bool fractional, int64_t kv_head_bytes);

// Whether this build has the Hopper forward (sm_90a was among its archs).
constexpr bool kHopperForwardBuilt =
#ifdef FIBSPARSE_HOPPER_KERNELS
    true;
#else
    false;
#endif

// The maps of a call whose tiles hold `tile_queries` queries (64 or 32).
// q_box_rows: the rows of q one load brings (tile_queries, or 8 where the
// Hopper forward interleaves two heads' queries).
ForwardTensorMaps make_forward_maps(const Params& p, bool bfloat16, int tile_queries, int q_box_rows);
FractionalForwardTensorMaps make_fractional_forward_maps(const Params& p, bool bfloat16, int tile_queries,
                                                         int q_box_rows);

}  // namespace fibsparse
