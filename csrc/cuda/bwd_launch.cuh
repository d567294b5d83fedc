// Which kernels run a backward, on which grids: float16 / bfloat16 on tensor
// cores (bwd_mma_kernel.cuh), float32 / float64 on lane groups
// (lane_bwd_kernel.cuh). Both run the dq pass, then the dk/dv pass on the
// same stream; the dq grid has the offsets check's extra blocks
// (offsets_check.cuh), so a bad offset stops the backward before dk/dv. A
// tensor-core dq block serves heads_per_block query heads of one kv group, as
// the forward's does (mma_tiles.cuh). On batches whose queries and keys line
// up, the tensor-core backward may instead store dS: the dk/dv pass
// first, then a dq pass that reads the stored dS, and with offsets a delta
// pass (holding the offsets check's blocks) before them
// (bwd_stored_dscores_kernel.cuh); the window alone's dk/dv pass there may
// walk runs of key tiles (bwd_window_walk_kernel.cuh).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../capabilities.h"
#include "../env_switches.h"
#include "../fibsparse.h"
#include "../static_switch.h"
#include "bwd_mma_kernel.cuh"
#include "bwd_stored_dscores_kernel.cuh"
#include "bwd_window_walk_kernel.cuh"
#include "lane_bwd_kernel.cuh"
#include "launch.cuh"
#include "offsets_check.cuh"

namespace fibsparse {

// The band steps of a key tile of the backward with stored dS
// (bwd_stored_dscores_kernel.cuh), if that backward applies to p: a batch
// whose queries and keys line up (a dense one with as many queries as keys,
// or a packed one with as many queries as keys in all), a window of at
// most 129 (three 64-row query chunks per key tile, so that its dS buffer
// holds 192 values per query and head), and a device that lets a block have
// smem_bytes of shared memory, the most one of its passes needs (the window
// alone's dk/dv pass at head_dim 128 stages O rows too: 109 KiB, more than
// sm_86 and sm_89 allow, where the general passes need 73); 0 if not.
// A packed batch's boundaries are not read on the host (a device sync), but
// valid ones with total_q == total_k are equal: every sequence has seqlen_q <=
// seqlen_k, and the sums agree. Invalid ones stop the kernels at the device
// checks that every route runs (the delta pass's check blocks, or a launch of
// their own for the window alone); until then sequence_of's clamps keep every
// index inside the buffers, as on the general passes.
// Packed batches whose sequences average fewer than 32 keys take the general
// passes: a sequence holds whole 64-key tiles and may leave one more unused
// (band_dscore_tiles), and the buffer would hold more than 3x the tiles of the
// same keys in long sequences (a million keys in 16-key sequences: 60 GiB at
// 32 heads, window 128).
// FIBSPARSE_STORED_DSCORES=0 turns it off for comparisons (env_switches.h).
inline int stored_dscore_steps(const Params& p, int smem_bytes) {
  if (switched_off("FIBSPARSE_STORED_DSCORES")) return 0;
  if (size_t(smem_bytes) > at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin) return 0;
  if (p.cache_seqlens != nullptr || p.block_table != nullptr) return 0;
  const bool packed = p.cu_seqlens_q != nullptr;
  const bool aligned = packed ? p.total_q == p.total_k : p.q_pos_shift == 0 && p.seqlen_q == p.seqlen_k;
  if (!aligned || (packed && int64_t(p.batch) * 32 > p.total_k)) return 0;
  const int steps = (mma_tiles::kBlockRows - 1 + p.band.window - 1) / mma_tiles::kChunk + 1;
  return steps <= 3 ? steps : 0;
}

// Whether `blocks` blocks of smem_bytes each fit an SM of this device.
inline bool blocks_fit_an_sm(int smem_bytes, int blocks) {
  const cudaDeviceProp* props = at::cuda::getCurrentDeviceProperties();
  return size_t(smem_bytes) <= props->sharedMemPerBlockOptin &&
         size_t(blocks) * (size_t(smem_bytes) + props->reservedSharedMemPerBlock) <= props->sharedMemPerMultiprocessor;
}
inline bool two_blocks_fit_an_sm(int smem_bytes) { return blocks_fit_an_sm(smem_bytes, 2); }

// Whether the dq pass with offsets takes its three stages (of smem_bytes a
// block; kDqMayTakeThreeStages): where two such blocks fit an SM, as on the
// H100 and H200 it was measured on. With fewer (99 KiB a block on sm_86 and
// sm_89, 164 KiB an SM on sm_80) it keeps two stages and two blocks an SM.
inline bool dq_takes_three_stages(int smem_bytes) { return two_blocks_fit_an_sm(smem_bytes); }

// The key tiles per query head of the stored dS buffer (band_dscore_first_tile).
inline int64_t band_dscore_tiles(const Params& p) {
  if (p.cu_seqlens_k != nullptr) return p.total_k / mma_tiles::kBlockRows + p.batch;
  return int64_t(p.batch) * blocks_for(p.seqlen_k, mma_tiles::kBlockRows);
}

// Whether the window alone's dk/dv pass walks runs of key tiles
// (bwd_window_walk_kernel.cuh): with one query head per kv head (a GQA group
// would need three chunk slots a head) at head_dim 32 and below. At 32 the
// pass took 18.7% less time (H200, 64k, 8 heads); at 64 it took 2.7-3.2% more
// at 64k-128k and 10.8% more at 16k, so 64 keeps the one-tile pass
// (docs/performance.md, round 63); at 128 the slots would leave one block an
// SM. FIBSPARSE_WINDOW_WALK=0 keeps the one-tile pass, for comparisons.
template <int kHeadDim>
constexpr bool kWindowWalkHeadDim = kHeadDim <= 32;
template <int kHeadDim>
inline bool window_walk_applies(const Params& p) {
  return kWindowWalkHeadDim<kHeadDim> && p.heads == p.heads_kv && !switched_off("FIBSPARSE_WINDOW_WALK");
}

// The key tiles a walking block takes: the fewest for which the runs fit the
// blocks the device holds at once (one wave), so that no SM waits on another's
// second wave and a run restages as few chunks as the wave allows (a run of r
// tiles stages r + 2 chunks at window 128, where r one-tile blocks stage 3 r).
// A packed batch counts its tiles in all (band_dscore_tiles) and lays its runs
// out by its longest sequence. The kernel must be allowed its smem_bytes
// (allow_dynamic_smem) before the occupancy query.
template <typename Kernel>
inline int tiles_per_run(const Params& p, Kernel kernel, int smem_bytes) {
  int blocks_per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, mma_tiles::kMmaBlockThreads,
                                                               smem_bytes));
  const int64_t resident = int64_t(std::max(blocks_per_sm, 1)) * at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t tiles = int64_t(p.heads) * band_dscore_tiles(p);
  const int64_t sequence_tiles = blocks_for(p.seqlen_k, mma_tiles::kBlockRows);
  const int64_t run = std::max<int64_t>(1, (tiles + resident - 1) / resident);
  return int(std::min(run, std::max<int64_t>(sequence_tiles, 1)));
}

// Whether fractional positions take the backward with stored dS at this
// head_dim: at 128 the forward+backward took 13-14% less time than on the
// general passes (GQA 32/8, 16k and 64k), at 64 4-5% more (MHA, 16k and 64k;
// H200, docs/performance.md round 33), and still ~1% more after round 38 gave
// both routes per-warp strips (round 39): its dk/dv pass forms every P and dS,
// each fractional one from two scores, which at head_dim 64 cost it more than
// its dq pass saved. Since then the next warp's shares (round 95), which take
// out most of the seventeenth row's work, and the fractional dq pass's kept
// addresses (round 96) made both of its passes faster at any head_dim, and
// head_dim 64 takes it too (round 102; FIBSPARSE_STORED_DSCORES=0 gives the
// general passes). 16 and 32, not measured, keep the general passes.
template <int kHeadDim>
constexpr bool kStoredDscoresTakeFractional = kHeadDim >= 64;

// The window alone's dk/dv pass of the backward with stored dS: a walk (where
// `walks`, the caller's window_walk_applies) or a block a key tile
// (one_tile_grid); p holds the dS buffer, and the walk's run length is set in it.
template <typename T, int kHeadDim>
void launch_window_alone_dkdv(Params& p, dim3 one_tile_grid, bool walks) {
  using namespace mma_bwd;
  if constexpr (kWindowWalkHeadDim<kHeadDim>) {
    if (walks) {
      const auto walk = dkdv_window_walk_kernel<T, kHeadDim>;
      allow_dynamic_smem(walk, kDkdvWalkSmemBytes<kHeadDim>);
      p.band_tiles_per_run = tiles_per_run(p, walk, kDkdvWalkSmemBytes<kHeadDim>);
      const dim3 grid(blocks_for(blocks_for(p.seqlen_k, kBlockRows), p.band_tiles_per_run), p.heads, p.batch);
      return launch_allowed_kernel(walk, grid, kMmaBlockThreads, kDkdvWalkSmemBytes<kHeadDim>, p);
    }
  }
  launch_kernel(dkdv_mma_kernel<T, int32_t, kHeadDim, DkdvRoute::kWindowAlone>, one_tile_grid, kMmaBlockThreads,
                kDkdvWindowSmemBytes<kHeadDim>, p);
}

// Whether the dk/dv pass before dq keeps its v rows in shared memory
// (dkdv_mma_kernel's kVInSmem, launched at head_dim 128, where the pass is
// short of registers, and for fractional positions at 64): where `blocks`
// blocks of smem_bytes (the pass's buffers and the v rows) fit an SM, so that
// the pass keeps its blocks (two at 128, three at 64). At 255 registers it
// spilled at 128 (36 bytes with integer offsets, 8 with fractional
// positions); with the v rows in shared memory it holds 252 (254) and spills
// nothing, and by the median of five rounds it took 2.1-2.8% less time with
// integer offsets (64k and 128k GQA 32/8, dense and packed) and 0.4% less
// with fractional positions (H200; docs/performance.md, round 83). At 64 the
// fractional pass on swizzled stages spills 16 bytes with v in registers and
// none with v in shared memory.
// FIBSPARSE_DKDV_V_SMEM=0 keeps v in registers, for comparisons.
inline bool dkdv_keeps_v_in_smem(int smem_bytes, int blocks = 2) {
  return !switched_off("FIBSPARSE_DKDV_V_SMEM") && blocks_fit_an_sm(smem_bytes, blocks);
}

// The backward with stored dS (bwd_stored_dscores_kernel.cuh): the window alone's
// dk/dv pass (forming delta, storing dS), or with offsets the delta pass and
// the dk/dv pass that computes and stores every dS; then dq from the stored dS.
template <typename T, typename OffsetT, int kHeadDim>
void launch_stored_dscores_bwd(const Params& p, int steps) {
  using namespace mma_bwd;
  constexpr bool kFrac = !std::is_integral_v<OffsetT>;
  constexpr int kDkdvSmem = kFrac ? kDkdvFractionalSmemBytes<kHeadDim> : kDkdvSmemBytes<kHeadDim>;
  // Swizzled stages (mma_tiles.cuh's swizzled_chunk): the copies ask L2 for the
  // sectors their rows hold, where padded rows cost 1.5x. The dk/dv pass's q and
  // dO stages, integer offsets at head_dim 64, integer and fractional ones at
  // 128 (where the pass keeps its v rows in shared memory: FIBSPARSE_DKDV_V_SMEM=0
  // gives padded rows too), fractional ones at 64 (below); the dq pass's k
  // stages, integer offsets at 64 and 128, and fractional ones at 64 with
  // row 16 in registers and one head a block, whose strips are then 16 rows
  // from row 16 w (fractional strips of 17 rows keep padded k rows: swizzled
  // ones made their pass 2.5-3.2% slower at 128 and 1.1-2.6% at 64,
  // docs/performance.md, rounds 100 and 104); the dq pass asks for
  // the padded rows' shared memory either way, so that the stages it takes
  // (dq_takes_three_stages) do not depend on the switch.
  // FIBSPARSE_DKDV_SWIZZLE=0 and FIBSPARSE_DQ_SWIZZLE=0 keep the padded
  // rows, for comparisons. FIBSPARSE_DKDV_NEXT_WARP_SHARE=0 has each warp of the
  // fractional dk/dv pass form its own row 16 (bwd_mma_kernel.cuh's
  // NeighbourShares), for comparisons; the shares were measured only with the
  // v rows in shared memory and swizzled stages (an H200), where the pass
  // spills nothing: with padded stages it spills 24 bytes, with v in registers
  // (FIBSPARSE_DKDV_V_SMEM=0, or a GPU where two blocks with them do not fit
  // an SM) 72. FIBSPARSE_DKDV_TWO_DIAGONALS=0 and FIBSPARSE_DQ_TWO_DIAGONALS=0
  // give the fractional dk/dv and dq passes two diagonal products a quantity
  // where one two-diagonal product does it (fractional_offset_step, the dq
  // pass's kTwoDiagonals), for comparisons; the dk/dv pass's product needs
  // the v rows in shared memory, swizzled stages and the next warp's shares,
  // and without any of them takes the two products. Fractional positions at
  // head_dim 64 take the head_dim 128 pass's three together (v rows in shared
  // memory, swizzled stages, the two-diagonal product) or none of them, so that
  // one A/B measures them there (each was measured alone at 128); on swizzled
  // stages with v in registers the pass would spill (12-16 bytes).
  // FIBSPARSE_DKDV_FRACTIONAL_KEPT_ROWS=0 has the fractional dk/dv pass's step
  // with the two-diagonal product (head_dim 64 and 128) form its
  // shared-memory addresses at every step instead of keeping them
  // (dkdv_mma_kernel's kKeptFractionalRows, which also needs the next warp's
  // shares), for comparisons. FIBSPARSE_DQ_POSITION_SUMS_FIRST=0 has the
  // fractional dq pass with the two-diagonal product stage and sum its
  // d(position) terms at every offset step rather than once before the steps
  // (dq_from_dscores_with_offsets_kernel's kPositionSumsFirst), for
  // comparisons; dq and d offsets are bitwise equal either way.
  // FIBSPARSE_DQ_OFFSET_AHEAD=0 has the dq pass at head_dim 64 (integer
  // offsets on swizzled stages, fractional ones with their sums first) load
  // each offset step's offset in the issue of its copies rather than one
  // issue ahead (dq_from_dscores_with_offsets_kernel's kOffsetAhead), for
  // comparisons; dq and d offsets are bitwise equal either way. Head_dim 128
  // keeps the load in its issue: the A/B's control.
  // FIBSPARSE_DQ_ROW16_IN_REGISTERS=0 has that fractional dq pass at head_dim
  // 64 stage its strips' row 16 rather than load each lane's columns of it
  // into a register (dq_from_dscores_with_offsets_kernel's
  // kRow16InRegisters), for comparisons; dq bitwise equal either way.
  // FIBSPARSE_DQ_QUEUED_FRACTION=0 has that pass's offset step split its
  // position again, build its two-diagonal A fragment through tests and
  // selects, and form row 16's address from the key, rather than take what
  // was formed once (dq_from_dscores_with_offsets_kernel's kQueuedFraction),
  // for comparisons; dq bitwise equal either way.
  // Every switch of this backward is read here, before its first launch (and
  // before a poisoned dS buffer is filled): a value one refuses stops the call
  // before any kernel runs.
  constexpr bool kMaySwizzle = kHeadDim == 128 || (kHeadDim == 64 && !kFrac);
  constexpr bool kDqMaySwizzle = !kFrac && (kHeadDim == 64 || kHeadDim == 128);
  const bool walks = p.num_offsets == 0 && window_walk_applies<kHeadDim>(p);
  constexpr bool kFractional64 = kFrac && kHeadDim == 64;
  // Read at every head_dim, so that a refused value is refused where the
  // switches have nothing to select too: each read comes first in its
  // condition.
  const bool swizzled = !switched_off("FIBSPARSE_DKDV_SWIZZLE") && (kMaySwizzle || kFractional64);
  const bool dq_swizzle_switch = !switched_off("FIBSPARSE_DQ_SWIZZLE");
  const bool dq_swizzled = dq_swizzle_switch && kDqMaySwizzle;
  const bool next_warp_share = !switched_off("FIBSPARSE_DKDV_NEXT_WARP_SHARE");
  const bool two_diagonals = !switched_off("FIBSPARSE_DKDV_TWO_DIAGONALS");
  const bool dq_two_diagonals = !switched_off("FIBSPARSE_DQ_TWO_DIAGONALS");
  const bool dq_position_sums_first = !switched_off("FIBSPARSE_DQ_POSITION_SUMS_FIRST");
  const bool dq_offset_ahead = !switched_off("FIBSPARSE_DQ_OFFSET_AHEAD");
  const bool dq_row16_in_registers = !switched_off("FIBSPARSE_DQ_ROW16_IN_REGISTERS");
  const bool dq_queued_fraction = !switched_off("FIBSPARSE_DQ_QUEUED_FRACTION");
  const bool kept_fractional_rows = !switched_off("FIBSPARSE_DKDV_FRACTIONAL_KEPT_ROWS") && next_warp_share;
  const bool v_in_smem = (kHeadDim == 128 && dkdv_keeps_v_in_smem(kDkdvSmem + kDkdvVRowBytes<kHeadDim>)) ||
                         (kFractional64 && dkdv_keeps_v_in_smem(kDkdvSmem + kDkdvVRowBytes<kHeadDim>, kMinBlocksDkdv<64>));
  const int64_t tiles = band_dscore_tiles(p);
  const at::Tensor dscores = at::empty({p.heads * tiles * steps * kBlockRows * kChunk},
                                       at::TensorOptions().dtype(at::kShort).device(at::kCUDA));
  if (poison_outputs()) dscores.fill_(-1);  // all bits set: NaN in fp16 and bf16 alike
  Params stored_p = p;
  stored_p.band_dscores = dscores.data_ptr();
  stored_p.band_dscore_steps = steps;
  stored_p.band_dscore_tiles = tiles;
  // The fractional dk/dv pass's key tiles' edge rows (Params::dkdv_edge_rows);
  // every one read is written first, which poisoning them (as the outputs are)
  // puts to the test: a share read before its write would be NaN in dk or dv.
  at::Tensor edge_rows;
  if (kFrac && next_warp_share) {
    edge_rows = at::empty({p.heads_kv * tiles * 4 * kHeadDim}, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA));
    if (poison_outputs()) edge_rows.fill_(std::numeric_limits<float>::quiet_NaN());
    stored_p.dkdv_edge_rows = edge_rows.data_ptr<float>();
  }
  const unsigned query_tiles = blocks_for(p.seqlen_q, kBlockRows);
  const dim3 dkdv_grid(blocks_for(p.seqlen_k, kBlockRows), p.heads_kv, p.batch);
  if (p.num_offsets == 0) {
    // No pass here has the offsets check's blocks, which in a packed batch
    // also check each sequence's boundaries: a launch of its own does that.
    if (p.cu_seqlens_q != nullptr) launch_kernel(offsets_check_kernel<int32_t, 1>, dim3(1, 1, p.batch), 32, 0, p);
    launch_window_alone_dkdv<T, kHeadDim>(stored_p, dkdv_grid, walks);
    launch_kernel(dq_from_dscores_kernel<T, kHeadDim>, dim3(query_tiles, p.heads, p.batch), kMmaBlockThreads,
                  kDqFromDscoresSmemBytes<kHeadDim>, stored_p);
    return;
  }
  launch_kernel(delta_kernel<T, OffsetT, kHeadDim>, dim3(query_tiles + kOffsetsCheckBlocks, p.heads, p.batch),
                kMmaBlockThreads, 0, stored_p);
  // The dk/dv pass's variants differ in their template arguments alone: one
  // is chosen, then launched.
  using DkdvKernel = void (*)(Params);
  DkdvKernel dkdv = nullptr;
  int dkdv_smem = kDkdvSmem;
  if constexpr (kHeadDim == 128) {
    if (v_in_smem) {
      dkdv_smem = kDkdvSmem + kDkdvVRowBytes<kHeadDim>;
      if constexpr (kFrac) {  // the two-diagonal product has no integer instantiation
        if (swizzled && two_diagonals) {
          dkdv = kept_fractional_rows
                     ? &dkdv_mma_kernel<T, OffsetT, kHeadDim, DkdvRoute::kBeforeDq, true, kMaySwizzle, true, true>
                     : &dkdv_mma_kernel<T, OffsetT, kHeadDim, DkdvRoute::kBeforeDq, true, kMaySwizzle, true>;
        }
      }
      if (dkdv == nullptr) {
        dkdv = swizzled ? &dkdv_mma_kernel<T, OffsetT, kHeadDim, DkdvRoute::kBeforeDq, true, kMaySwizzle>
                        : &dkdv_mma_kernel<T, OffsetT, kHeadDim, DkdvRoute::kBeforeDq, true>;
      }
    }
  }
  if constexpr (kFractional64) {
    if (v_in_smem && swizzled && two_diagonals) {
      dkdv_smem = kDkdvSmem + kDkdvVRowBytes<kHeadDim>;
      dkdv = kept_fractional_rows ? &dkdv_mma_kernel<T, OffsetT, kHeadDim, DkdvRoute::kBeforeDq, true, true, true, true>
                                  : &dkdv_mma_kernel<T, OffsetT, kHeadDim, DkdvRoute::kBeforeDq, true, true, true>;
    }
  }
  if constexpr (kHeadDim == 64 && kMaySwizzle) {  // integer offsets
    if (dkdv == nullptr && swizzled) dkdv = &dkdv_mma_kernel<T, OffsetT, kHeadDim, DkdvRoute::kBeforeDq, false, true>;
  }
  if (dkdv == nullptr) dkdv = &dkdv_mma_kernel<T, OffsetT, kHeadDim, DkdvRoute::kBeforeDq>;
  launch_kernel(dkdv, dkdv_grid, kMmaBlockThreads, dkdv_smem, stored_p);
  if constexpr (kFrac) {
    if (stored_p.dkdv_edge_rows != nullptr) {
      launch_kernel(add_next_tile_shares_kernel<T, kHeadDim>, dkdv_grid, kHeadDim, 0, stored_p);
    }
  }
  // The dq pass's variants differ in their template arguments alone too: one
  // is chosen, then launched.
  HEADS_PER_BLOCK_SWITCH(heads_per_block<kHeadDim>(p), kMaxHeadsPerBlock<kHeadDim>, kHeads, [&] {
    using DqKernel = void (*)(Params);
    const auto pick_dq = [&](auto stages) -> DqKernel {
      constexpr int kStages = decltype(stages)::value;
      if constexpr (kDqMaySwizzle) {
        if (dq_swizzled) {
          if constexpr (kHeadDim == 64) {
            if (dq_offset_ahead) {
              return &dq_from_dscores_with_offsets_kernel<T, OffsetT, kHeadDim, kHeads, kStages, true, false, false,
                                                          true>;
            }
          }
          return &dq_from_dscores_with_offsets_kernel<T, OffsetT, kHeadDim, kHeads, kStages, true>;
        }
      }
      if constexpr (kFrac && kHeadDim >= 64) {
        if (dq_two_diagonals && dq_position_sums_first) {
          if constexpr (kHeadDim == 64) {
            if (dq_offset_ahead && dq_row16_in_registers) {
              // Swizzled k rows with one head a block; with two the pass
              // measured slower on them (docs/performance.md, round 120).
              if constexpr (kHeads == 1) {
                if (dq_swizzle_switch) {
                  return dq_queued_fraction
                             ? &dq_from_dscores_with_offsets_kernel<T, OffsetT, kHeadDim, kHeads, kStages, true, true,
                                                                    true, true, true, true>
                             : &dq_from_dscores_with_offsets_kernel<T, OffsetT, kHeadDim, kHeads, kStages, true, true,
                                                                    true, true, true>;
                }
              }
              return dq_queued_fraction
                         ? &dq_from_dscores_with_offsets_kernel<T, OffsetT, kHeadDim, kHeads, kStages, false, true, true,
                                                                true, true, true>
                         : &dq_from_dscores_with_offsets_kernel<T, OffsetT, kHeadDim, kHeads, kStages, false, true, true,
                                                                true, true>;
            }
            if (dq_offset_ahead) {
              return &dq_from_dscores_with_offsets_kernel<T, OffsetT, kHeadDim, kHeads, kStages, false, true, true,
                                                          true>;
            }
          }
          return &dq_from_dscores_with_offsets_kernel<T, OffsetT, kHeadDim, kHeads, kStages, false, true, true>;
        }
        if (dq_two_diagonals) {
          return &dq_from_dscores_with_offsets_kernel<T, OffsetT, kHeadDim, kHeads, kStages, false, true>;
        }
      }
      return &dq_from_dscores_with_offsets_kernel<T, OffsetT, kHeadDim, kHeads, kStages>;
    };
    DqKernel dq = nullptr;
    int dq_smem = kDqWithOffsetsSmemBytes<kHeadDim, kHeads, kFrac, 2>;
    if constexpr (kDqMayTakeThreeStages<kHeadDim, kHeads>) {
      if (dq_takes_three_stages(kDqWithOffsetsSmemBytes<kHeadDim, kHeads, kFrac, 3>)) {
        dq = pick_dq(std::integral_constant<int, 3>{});
        dq_smem = kDqWithOffsetsSmemBytes<kHeadDim, kHeads, kFrac, 3>;
      }
    }
    if (dq == nullptr) dq = pick_dq(std::integral_constant<int, 2>{});
    launch_kernel(dq, dim3(query_tiles, p.heads / kHeads, p.batch), kHeads * kMmaBlockThreads, dq_smem, stored_p);
  });
}

template <typename T>
void launch_bwd(const Params& p, bool fractional) {
  HEADDIM_SWITCH(p.head_dim, kHeadDim, [&] {
    BOOL_SWITCH(fractional, kFrac, [&] {
      if constexpr (kIsTensorCoreType<T>) {
        using OffsetT = std::conditional_t<kFrac, float, int32_t>;
        using namespace mma_bwd;
        if constexpr (!kFrac || kStoredDscoresTakeFractional<kHeadDim>) {
          // The window alone's dk/dv pass needs more than its dq pass; with
          // offsets either pass may need the most (the dq pass of the most heads
          // a block may have, with two stages, or the fractional dk/dv pass with
          // its edge rows).
          const int smem = p.num_offsets == 0
                               ? std::max(kDkdvWindowSmemBytes<kHeadDim>,
                                          kWindowWalkHeadDim<kHeadDim> ? kDkdvWalkSmemBytes<kHeadDim> : 0)
                               : std::max(kFrac ? kDkdvFractionalSmemBytes<kHeadDim> : kDkdvSmemBytes<kHeadDim>,
                                          kDqWithOffsetsSmemBytes<kHeadDim, kMaxHeadsPerBlock<kHeadDim>, kFrac>);
          const int steps = stored_dscore_steps(p, smem);
          if (steps > 0) return launch_stored_dscores_bwd<T, OffsetT, kHeadDim>(p, steps);
        }
        HEADS_PER_BLOCK_SWITCH(heads_per_block<kHeadDim>(p), kMaxHeadsPerBlock<kHeadDim>, kHeads, [&] {
          const dim3 dq_grid(blocks_for(p.seqlen_q, kBlockRows) + kOffsetsCheckBlocks, p.heads / kHeads, p.batch);
          launch_kernel(dq_mma_kernel<T, OffsetT, kHeadDim, kHeads>, dq_grid, kHeads * kMmaBlockThreads,
                        kDqSmemBytes<kHeadDim>, p);
        });
        const dim3 dkdv_grid(blocks_for(p.seqlen_k, kBlockRows), p.heads_kv, p.batch);
        launch_kernel(dkdv_mma_kernel<T, OffsetT, kHeadDim>, dkdv_grid, kMmaBlockThreads, kDkdvSmemBytes<kHeadDim>, p);
      } else {
        using OffsetT = std::conditional_t<kFrac, acc_t<T>, int32_t>;
        const dim3 dq_grid(blocks_for(p.seqlen_q, kCudaRowsPerBlock) + kOffsetsCheckBlocks, p.heads, p.batch);
        const dim3 dkdv_grid(blocks_for(p.seqlen_k, kCudaRowsPerBlock), p.heads_kv, p.batch);
        launch_kernel(lane_dq_kernel<T, OffsetT, kHeadDim>, dq_grid, kLaneBlockThreads, 0, p);
        launch_kernel(lane_dkdv_kernel<T, OffsetT, kHeadDim>, dkdv_grid, kLaneBlockThreads, 0, p);
      }
    });
  });
}

}  // namespace fibsparse
