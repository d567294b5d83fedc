// What the tensor-core kernels (fwd_mma_kernel.cuh, bwd_mma_kernel.cuh) share:
// block shape, cp.async staging of rows into shared memory, the two tile
// products every pass is made of, and the band masks of a tile. The plan of
// steps a block walks is in block_steps.cuh.
//
// A block has 4 warps per head it serves (one head, or with GQA several of
// one kv group, kMaxHeadsPerBlock); a warp owns 16 consecutive rows (queries,
// or keys in the dk/dv pass) as the A operand of mma.m16n8k16 (mma.cuh). Its
// "tiles" are 16 x 16: its 16 rows against 16 staged rows of the other side.
#pragma once

#include <cmath>
#include <cstdint>

#include "../fibsparse.h"
#include "../pattern.h"
#include "mma.cuh"

namespace fibsparse {
namespace mma_tiles {

constexpr int kWarps = 4;
constexpr int kMmaBlockThreads = 32 * kWarps;
constexpr int kBlockRows = 16 * kWarps;  // queries (or keys) per block
constexpr int kChunk = 64;               // band rows staged per step
// An offset step of the forward (KeySteps) stages the block's 64 rows plus
// one before them (a fractional position's second row): warp w's 17-row
// strip starts at staged row 16 w, so neighbouring strips share a row and the
// rows are contiguous.
constexpr int kStripSpan = kBlockRows + 1;
// An offset step of the backward's passes (the dk/dv pass's QuerySteps, both
// dq passes) stages a strip per warp instead:
// warp w reads only its 16 rows, or for fractional positions 17 (each query's
// second row too; the row two neighbouring warps share is staged by both),
// from stage row warp_strip_row0(w).
template <bool kFractional>
constexpr int kWarpStripRows = kFractional ? 17 : 16;
template <bool kFractional>
__device__ __forceinline__ int warp_strip_row0(int warp) {
  return kWarpStripRows<kFractional> * warp;
}
// A stage's rows: a multiple of 4 (float2 access to per-row statistics), and
// room for the per-warp fractional strips.
constexpr int kBufRows = kStripSpan + 3;
static_assert(kBufRows >= kChunk && kBufRows >= kWarps * kWarpStripRows<true> && kBufRows % 4 == 0);
// Blocks per SM the register budget must allow (__launch_bounds__): more
// resident warps hide the latency of mma, shared loads and exp2, which the
// profile shows these kernels are bound by. Chosen per kernel where ptxas
// spills little or nothing: the dk/dv pass holds two accumulators and two
// fragment sets, twice the forward's.
template <int kHeadDim>
constexpr int kMinBlocks = kHeadDim >= 128 ? 2 : 4;
template <int kHeadDim>
constexpr int kMinBlocksDkdv = kHeadDim >= 128 ? 1 : kHeadDim >= 64 ? 3 : 4;

// GQA: a forward or dq block may serve kHeads query heads of one kv group at
// once (4 kHeads warps: the same 64 queries of each head), staging each key
// strip once for all of them, where kHeads blocks would each stage it. The
// register budget per thread stays that of kMinBlocks blocks of 4 warps, so a
// block holds at most kMinBlocks heads (the SM's register file holds no
// more warps at that budget) and kMinBlocks / kHeads such blocks fit an SM.
template <int kHeadDim>
constexpr int kMaxHeadsPerBlock = kMinBlocks<kHeadDim>;
template <int kHeadDim, int kHeads>
constexpr int kMinBlocksOfHeads = kMinBlocks<kHeadDim> / kHeads;

// The query heads a forward or dq block serves: the most, up to
// kMaxHeadsPerBlock, that divide the kv group, when every head reads the one
// shared row of offsets (each row of per-head offsets has its own strips);
// 1 otherwise (one head per block). Without offsets (the window alone) a
// shared block saves only band traffic, which the L2 serves well, and its
// warps wait on each other at every stage, where separate one-head blocks
// overlap one block's loads with another's math: one head per block is
// faster there (on an H200 at 128k, GQA 32/8, head_dim 128: 2.64 ms forward
// against 3.02 shared).
template <int kHeadDim>
inline int heads_per_block(const Params& p) {
  static_assert(kMaxHeadsPerBlock<kHeadDim> == 2 || kMaxHeadsPerBlock<kHeadDim> == 4);
  if (p.offsets_head_stride != 0 || p.num_offsets == 0) return 1;
  const int group = p.heads / p.heads_kv;
  for (int heads = kMaxHeadsPerBlock<kHeadDim>; heads > 1; heads /= 2) {
    if (group % heads == 0) return heads;
  }
  return 1;
}

// Shared rows are padded by 8 elements (16 bytes), so that the 8 row groups
// of a fragment load fall in different banks.
template <int kHeadDim>
using Rows = uint16_t (*)[kHeadDim + 8];
template <int kHeadDim>
using RowPtr = const uint16_t (*)[kHeadDim + 8];
template <int kHeadDim>
constexpr int kStageBytes = kBufRows * (kHeadDim + 8) * int(sizeof(uint16_t));  // one tensor, one stage
// Row buffer `which` (0: k or q, 1: v or dO) of pipeline stage s, in a
// kernel's dynamic shared memory: stage 0's two buffers, then stage 1's.
template <int kHeadDim>
__device__ __forceinline__ Rows<kHeadDim> stage_buffer(uint16_t* smem, int s, int which) {
  return reinterpret_cast<Rows<kHeadDim>>(smem) + (2 * s + which) * kBufRows;
}

// The raw 16-bit elements of a T tensor, `offset` elements in: the kernels
// move bf16 and fp16 as bits and convert only in registers (mma.cuh).
template <typename T>
__device__ __forceinline__ const uint16_t* bits(const void* base, int64_t offset) {
  return reinterpret_cast<const uint16_t*>(static_cast<const T*>(base) + offset);
}
template <typename T>
__device__ __forceinline__ uint16_t* bits(void* base, int64_t offset) {
  return reinterpret_cast<uint16_t*>(static_cast<T*>(base) + offset);
}

// Starts an asynchronous 16-byte copy global -> shared; when `valid` is
// false nothing is read and the 16 bytes are zero-filled (rows outside the
// sequence: masked later, but they must not be NaN in a product).
__device__ __forceinline__ void copy_async_16(void* dst, const void* src, bool valid) {
  const uint32_t dst_addr = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst_addr), "l"(src), "r"(valid ? 16 : 0));
}
// A 4-byte asynchronous copy (statistics rows), zero-filled when invalid.
__device__ __forceinline__ void copy_async_4(void* dst, const void* src, bool valid) {
  const uint32_t dst_addr = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst_addr), "l"(src), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void commit_async() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most `kPending` committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void wait_async() { asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending)); }

// A swizzled stage: rows of head_dim elements with no padding, row r's 16-byte
// chunk c stored at chunk c ^ (r % 8), the layout TMA's 128-byte swizzle
// writes (at head_dim 128, within each 128-byte half of the row). ldmatrix's
// eight rows of one chunk then fall in eight different banks, as the padding
// makes them, but a copy of whole rows lands in whole 128-byte lines: into
// padded rows each warp's cp.async asks L2 for 1.5x the sectors and 2.6x the
// requests its bytes need (docs/performance.md, "Padded shared-memory rows
// cost the copies 1.5x their L2 sectors"). `stage` is the stage's first row,
// 128-byte aligned, whatever its pointer type.
template <int kHeadDim>
__device__ __forceinline__ uint16_t* swizzled_chunk(Rows<kHeadDim> stage, int r, int col) {
  static_assert(kHeadDim == 64 || kHeadDim == 128, "a swizzled row is one or two 128-byte lines");
  return reinterpret_cast<uint16_t*>(stage) + r * kHeadDim + (((col / 8) ^ (r % 8)) * 8);
}
// The address of 16 columns 16 kk.. of a swizzled stage's row, from a lane's
// address of its first 16 (swizzled_lane_row): chunk (2 kk + h) ^ (r % 8) is
// the lane's chunk XOR 2 (kk % 4), a whole 128-byte line on for each 4 kk.
__device__ __forceinline__ uint32_t swizzled_k_step(uint32_t lane_addr, int kk) {
  return (lane_addr ^ (32 * (kk % 4))) + 128 * (kk / 4);
}
// The stage `rows` rows after `stage` (a strip's first row, a multiple of 8).
template <int kHeadDim>
__device__ __forceinline__ Rows<kHeadDim> swizzled_rows_from(Rows<kHeadDim> stage, int rows) {
  return reinterpret_cast<Rows<kHeadDim>>(reinterpret_cast<uint16_t*>(stage) + rows * kHeadDim);
}

// Queues copies of the kCount consecutive rows first, first + 1, .. of src
// into dst[0..kCount-1]; rows outside [0, last] become zero rows. kThreads
// threads take part (the block's, or those of the warps that read the rows:
// `thread` is the caller's index among them); each keeps one 16-byte column
// and steps its source pointer by a fixed stride, so a copy costs a few
// integer instructions (64-bit index math per row cost ~17). kInside: the
// caller has checked that all kCount rows lie inside [0, last], so no row is
// tested and a copy is its cp.async and its pointer step.
// kSwizzled: dst is a swizzled stage (swizzled_chunk) rather than padded rows.
// stage_row (swizzled only): dst is the stage itself and the rows go to its
// rows stage_row, stage_row + 1, ..; any row (a fractional strip's first is
// 17 w). Without it, dst is a multiple of 8 rows into the stage.
template <int kHeadDim, int kCount, int kThreads = kMmaBlockThreads, bool kInside = false, bool kSwizzled = false,
          bool kAnyStageRow = false>
__device__ __forceinline__ void stage_rows(Rows<kHeadDim> dst, const uint16_t* src, int64_t row_stride, int64_t first,
                                           int64_t last, unsigned thread = threadIdx.x, int stage_row = 0) {
  static_assert(!kAnyStageRow || kSwizzled);
  constexpr int kVecs = kHeadDim / 8, kRowsPerPass = kThreads / kVecs;
  static_assert(kThreads % kVecs == 0);
  const int col = (thread % kVecs) * 8, r0 = thread / kVecs;
  // Row r is valid for lo <= r <= hi; both fit in int, as they are clamped to [-1, kCount].
  const int lo = first >= 0 ? 0 : int(-first < kCount ? -first : kCount);
  const int hi = last - first < kCount ? int(last - first < -1 ? -1 : last - first) : kCount;
  const uint16_t* row = src + (first + r0) * row_stride + col;
  const int64_t pass_stride = kRowsPerPass * row_stride;
  // Swizzled: row r0 + i kRowsPerPass keeps its column's chunk at
  // swizzled_chunk's (col / 8) ^ (r % 8) = row0_chunk ^ ((i kRowsPerPass) % 8),
  // since r0 < kRowsPerPass, a power of two: one XOR by a constant a pass.
  static_assert(!kSwizzled || (kRowsPerPass & (kRowsPerPass - 1)) == 0, "rows a pass: a power of two");
  const int row0_chunk = (col / 8) ^ (r0 % 8);
  uint16_t* const swizzled_row0 = reinterpret_cast<uint16_t*>(dst) + (stage_row + r0) * kHeadDim;
#pragma unroll
  for (int i = 0; i < (kCount + kRowsPerPass - 1) / kRowsPerPass; ++i) {
    const int r = r0 + i * kRowsPerPass;
    if (kCount % kRowsPerPass != 0 && r >= kCount) break;
    const bool valid = kInside || (r >= lo && r <= hi);
    if constexpr (kAnyStageRow) {
      const int chunk = (col / 8) ^ ((stage_row + r) % 8);
      copy_async_16(swizzled_row0 + i * kRowsPerPass * kHeadDim + 8 * chunk, valid ? row : src, valid);
    } else if constexpr (kSwizzled) {
      const int chunk = row0_chunk ^ ((i * kRowsPerPass) % 8);
      copy_async_16(swizzled_row0 + i * kRowsPerPass * kHeadDim + 8 * chunk, valid ? row : src, valid);
    } else {
      copy_async_16(&dst[r][col], valid ? row : src, valid);
    }
    row += pass_stride;
  }
}

// Queues the kCount rows from `first` of two tensors that share their rows'
// positions (q and dO, or k and v), as stage_rows does, without the test per
// row where all of them lie inside [0, last]: a per-warp strip nearly always
// does, and only those at a sequence's ends need the checks (each a select of
// a copy's source, whose registers ptxas reuses, so it waits for the copy
// before it; docs/performance.md, rounds 42 and 70-71). `first` and `last`
// must be the same for every thread taking part.
template <int kHeadDim, int kCount, int kThreads, bool kSwizzled = false, bool kAnyStageRow = false>
__device__ __forceinline__ void stage_row_pair(Rows<kHeadDim> a_dst, const uint16_t* a_src, int64_t a_row_stride,
                                               Rows<kHeadDim> b_dst, const uint16_t* b_src, int64_t b_row_stride,
                                               int64_t first, int64_t last, unsigned thread, int stage_row = 0) {
  if (first >= 0 && first + kCount - 1 <= last) {
    stage_rows<kHeadDim, kCount, kThreads, true, kSwizzled, kAnyStageRow>(a_dst, a_src, a_row_stride, first, last,
                                                                          thread, stage_row);
    stage_rows<kHeadDim, kCount, kThreads, true, kSwizzled, kAnyStageRow>(b_dst, b_src, b_row_stride, first, last,
                                                                          thread, stage_row);
  } else {
    stage_rows<kHeadDim, kCount, kThreads, false, kSwizzled, kAnyStageRow>(a_dst, a_src, a_row_stride, first, last,
                                                                           thread, stage_row);
    stage_rows<kHeadDim, kCount, kThreads, false, kSwizzled, kAnyStageRow>(b_dst, b_src, b_row_stride, first, last,
                                                                           thread, stage_row);
  }
}

// Waits for the kGroupWarps warps that stage and read one strip's rows
// between themselves (an offset step whose rows no other warp reads): a lone
// warp for its lanes, several at named barrier 1 + group (__syncthreads uses
// 0). Like __syncthreads, it orders their shared-memory accesses, the rows
// their cp.async wrote and waited for included.
template <int kGroupWarps>
__device__ __forceinline__ void sync_strip_group(int group) {
  if constexpr (kGroupWarps == 1) {
    __syncwarp();
  } else {
    asm volatile("bar.sync %0, %1;\n" ::"r"(1 + group), "n"(32 * kGroupWarps) : "memory");
  }
}

// The barrier of a pipeline step: the strip group's where only that group
// stages and reads the step's rows (`by_group`), else the block's.
template <int kGroupWarps>
__device__ __forceinline__ void sync_step(bool by_group, int group) {
  if (by_group) {
    sync_strip_group<kGroupWarps>(group);
  } else {
    __syncthreads();
  }
}

// ldmatrix: four 8 x 8 tiles of 16-bit elements from shared memory; lane l
// gives the address of row l % 8 of tile l / 8. Without .trans a thread gets
// (row lane / 4, columns 2 (lane % 4), +1) of each tile; with .trans, the
// transposed pair (rows 2 (lane % 4), +1; column lane / 4).
// The _at forms take the row's shared-memory address (__cvta_generic_to_shared's).
__device__ __forceinline__ void ldmatrix_x4_at(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans_at(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const uint16_t* row) {
  ldmatrix_x4_at(r, static_cast<uint32_t>(__cvta_generic_to_shared(row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const uint16_t* row) {
  ldmatrix_x4_trans_at(r, static_cast<uint32_t>(__cvta_generic_to_shared(row)));
}

// A float from a shared-memory address (one a kernel keeps, as for the _at
// products below).
__device__ __forceinline__ float load_shared_float(uint32_t addr) {
  float v;
  asm volatile("ld.shared.f32 %0, [%1];\n" : "=f"(v) : "r"(addr) : "memory");
  return v;
}

// Four floats from a 16-byte aligned shared-memory address.
__device__ __forceinline__ float4 load_shared_float4(uint32_t addr) {
  float4 v;
  asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "r"(addr)
               : "memory");
  return v;
}

// A 32-bit word from a 4-byte aligned shared-memory address.
__device__ __forceinline__ uint32_t load_shared_u32(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(addr) : "memory");
  return v;
}
// Two 32-bit words from an 8-byte aligned shared-memory address.
__device__ __forceinline__ uint2 load_shared_u32x2(uint32_t addr) {
  uint2 v;
  asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "r"(addr) : "memory");
  return v;
}

// ldmatrix_x4's inverse (sm_90 and later; only the Hopper forward calls it):
// lane l gives the address of row l % 8 of tile l / 8, and a thread's r[i]
// holds (row lane / 4, columns 2 (lane % 4), +1) of tile i.
__device__ __forceinline__ void stmatrix_x4(uint16_t* row, const uint32_t (&r)[4]) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1,%2,%3,%4};\n" ::"r"(addr), "r"(r[0]), "r"(r[1]),
               "r"(r[2]), "r"(r[3])
               : "memory");
}

// movmatrix: the transpose of an 8 x 8 tile of 16-bit elements held as ldmatrix
// leaves it (a thread's register holds row lane / 4, columns 2 (lane % 4), +1),
// in that layout again.
__device__ __forceinline__ uint32_t transpose_8x8(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

// The warp's 16 rows first_row.. of a (batch, head) slice as A fragments
// (rows at or past `rows` are zeros): a thread holds rows g and g + 8.
template <int kHeadDim>
__device__ __forceinline__ void load_a_fragments(const uint16_t* src, int64_t row_stride, int first_row, int rows,
                                                 int g, int c, uint32_t (&frag)[kHeadDim / 16][4]) {
  const uint16_t* const row_ptr[2] = {src + int64_t(first_row + g) * row_stride,
                                      src + int64_t(first_row + g + 8) * row_stride};
  const bool valid[2] = {first_row + g < rows, first_row + g + 8 < rows};
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {  // a0 (g, 2c), a1 (g+8, 2c), a2 (g, 2c+8), a3 (g+8, 2c+8)
      const int r = e % 2, col = 16 * kk + 2 * c + 8 * (e / 2);
      frag[kk][e] = valid[r] ? *reinterpret_cast<const uint32_t*>(row_ptr[r] + col) : 0u;
    }
  }
}

// s[j0], s[j0 + 1] = A B^T: the warp's 16 rows (fragments `a`) against the
// 16 staged rows b_rows[0..15] (a 16 x 16 tile of dot products). Per 16
// columns of head_dim, one ldmatrix gives the B fragments of both 8-row halves:
// tiles (rows 0-7 | 8-15) x (columns +0 | +8). With kChains == 2 the even and
// odd 16-column slices sum in separate chains of products, added at the end:
// each chain of dependent mma is half as long (as the Hopper forward's
// offset steps do, fwd_hopper_kernel.cuh), and the sums round differently.
template <typename T, int kHeadDim, int N, int kChains = 1>
__device__ __forceinline__ void dot_16_rows(const uint32_t (&a)[kHeadDim / 16][4], RowPtr<kHeadDim> b_rows,
                                            float (&s)[N][4], int j0, int lane) {
  static_assert(kChains == 1 || (kChains == 2 && kHeadDim >= 32), "two chains need two slices");
  float odd[2][4] = {};  // the second chain's sums (kChains == 2)
#pragma unroll
  for (int e = 0; e < 4; ++e) s[j0][e] = s[j0 + 1][e] = 0.f;
  const uint16_t* row = b_rows[(lane / 16) * 8 + lane % 8] + ((lane / 8) % 2) * 8;
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
    uint32_t b[4];  // b0, b1 of rows 0-7, then of rows 8-15
    ldmatrix_x4(b, row + 16 * kk);
    const bool second_chain = kChains == 2 && kk % 2 == 1;
    mma_16816<T>(second_chain ? odd[0] : s[j0], a[kk], b[0], b[1]);
    mma_16816<T>(second_chain ? odd[1] : s[j0 + 1], a[kk], b[2], b[3]);
  }
  if constexpr (kChains == 2) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[j0][e] += odd[0][e];
      s[j0 + 1][e] += odd[1][e];
    }
  }
}

// dot_16_rows from this lane's ldmatrix row as a shared-memory address
// (dot_16_rows_lane_row's, of the 16 rows), which the caller keeps: ptxas
// rebuilds a pointer's address from the thread index where the product runs.
// dot_16_rows and add_a_times_rows keep loops of their own rather than call
// their _at forms: routed through them, ptxas compiles other code (registers,
// order) for the general passes' kernels, which were measured as they are.
// kSwizzled: the rows are a swizzled stage's (swizzled_chunk) and row_addr
// the lane's from swizzled_lane_row, whose k-step kk lies at swizzled_k_step;
// rows_after (whole 128-byte rows: a buffer, a sub-tile) is added after that
// XOR, so calls that share row_addr share its XORs and fold rows_after into
// the ldmatrix's offset.
template <typename T, int kHeadDim, int N, int kChains = 1, bool kSwizzled = false>
__device__ __forceinline__ void dot_16_rows_at(const uint32_t (&a)[kHeadDim / 16][4], uint32_t row_addr,
                                               float (&s)[N][4], int j0, uint32_t rows_after = 0) {
  static_assert(kChains == 1 || (kChains == 2 && kHeadDim >= 32), "two chains need two slices");
  float odd[2][4] = {};
#pragma unroll
  for (int e = 0; e < 4; ++e) s[j0][e] = s[j0 + 1][e] = 0.f;
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
    uint32_t b[4];
    ldmatrix_x4_at(b, kSwizzled ? swizzled_k_step(row_addr, kk) + rows_after : row_addr + rows_after + 32 * kk);
    const bool second_chain = kChains == 2 && kk % 2 == 1;
    mma_16816<T>(second_chain ? odd[0] : s[j0], a[kk], b[0], b[1]);
    mma_16816<T>(second_chain ? odd[1] : s[j0 + 1], a[kk], b[2], b[3]);
  }
  if constexpr (kChains == 2) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[j0][e] += odd[0][e];
      s[j0 + 1][e] += odd[1][e];
    }
  }
}
// The warp's 16 rows as the A operand of the products above, kept in shared
// memory rather than in registers (where a kernel's registers run short):
// this lane's ldmatrix row of the 16 (shared_fragments_of), whose k-step kk
// lies 32 bytes on. The products load each k-step's fragments as they go, so
// the same products give the same bits from either form.
struct SharedFragments {
  uint32_t lane_row;
};
template <int kHeadDim>
__device__ __forceinline__ SharedFragments shared_fragments_of(RowPtr<kHeadDim> rows, int lane) {
  return {static_cast<uint32_t>(__cvta_generic_to_shared(rows[lane % 8 + ((lane / 8) % 2) * 8] + (lane / 16) * 8))};
}
template <typename T, int kHeadDim, int N, int kChains = 1, bool kSwizzled = false>
__device__ __forceinline__ void dot_16_rows_at(const SharedFragments& a, uint32_t row_addr, float (&s)[N][4],
                                               int j0, uint32_t rows_after = 0) {
  static_assert(kChains == 1 || (kChains == 2 && kHeadDim >= 32), "two chains need two slices");
  float odd[2][4] = {};
#pragma unroll
  for (int e = 0; e < 4; ++e) s[j0][e] = s[j0 + 1][e] = 0.f;
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
    uint32_t a_kk[4], b[4];
    ldmatrix_x4_at(a_kk, a.lane_row + 32 * kk);
    ldmatrix_x4_at(b, kSwizzled ? swizzled_k_step(row_addr, kk) + rows_after : row_addr + rows_after + 32 * kk);
    const bool second_chain = kChains == 2 && kk % 2 == 1;
    mma_16816<T>(second_chain ? odd[0] : s[j0], a_kk, b[0], b[1]);
    mma_16816<T>(second_chain ? odd[1] : s[j0 + 1], a_kk, b[2], b[3]);
  }
  if constexpr (kChains == 2) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[j0][e] += odd[0][e];
      s[j0 + 1][e] += odd[1][e];
    }
  }
}
template <typename T, int kHeadDim, int N, int kChains = 1>
__device__ __forceinline__ void dot_16_rows(const SharedFragments& a, RowPtr<kHeadDim> b_rows, float (&s)[N][4],
                                            int j0, int lane) {
  const uint32_t row_addr =
      static_cast<uint32_t>(__cvta_generic_to_shared(b_rows[(lane / 16) * 8 + lane % 8] + ((lane / 8) % 2) * 8));
  dot_16_rows_at<T, kHeadDim, N, kChains>(a, row_addr, s, j0);
}

// This lane's ldmatrix rows of 16 staged rows: for dot_16_rows_at, and for
// add_diag_times_rows_at (transposed).
template <int kHeadDim>
__device__ __forceinline__ uint32_t dot_16_rows_lane_row(RowPtr<kHeadDim> b_rows, int lane) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(b_rows[(lane / 16) * 8 + lane % 8] + ((lane / 8) % 2) * 8));
}
template <int kHeadDim>
__device__ __forceinline__ uint32_t add_rows_lane_row(RowPtr<kHeadDim> b_rows, int lane) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(b_rows[((lane / 8) % 2) * 8 + lane % 8] + (lane / 16) * 8));
}

// This lane's ldmatrix row of 16 rows of a swizzled stage, from `rows` (its
// first row, a multiple of 8 rows into the stage, unless first_row below is
// given): row R, starting at 8-column
// half h, as dot_16_rows_lane_row (R = 8 (lane / 16) + lane % 8, h = (lane / 8) % 2)
// or add_rows_lane_row (R = 8 ((lane / 8) % 2) + lane % 8, h = lane / 16) take
// them. Its k-step kk's 16 columns lie at swizzled_k_step: for kk < 4, chunk
// (2 kk + h) ^ (R % 8) = (h ^ (R % 8)) ^ 2 kk, the address ^ 32 kk; at head_dim
// 128 the next four a 128-byte line on. Offsets of whole 128-byte lines added
// to it (stages, buffers, sub-tiles) commute with that XOR.
template <int kHeadDim>
__device__ __forceinline__ uint32_t swizzled_lane_row(Rows<kHeadDim> rows, int row, int half) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(swizzled_chunk<kHeadDim>(rows, row, 8 * half)));
}
// first_row: the 16 rows start that many rows after `rows`, any number
// (`rows` then the stage itself: a fractional strip's rows start at 17 w).
template <int kHeadDim>
__device__ __forceinline__ uint32_t swizzled_dot_lane_row(Rows<kHeadDim> rows, int lane, int first_row = 0) {
  return swizzled_lane_row<kHeadDim>(rows, first_row + (lane / 16) * 8 + lane % 8, (lane / 8) % 2);
}
template <int kHeadDim>
__device__ __forceinline__ uint32_t swizzled_add_lane_row(Rows<kHeadDim> rows, int lane, int first_row = 0) {
  return swizzled_lane_row<kHeadDim>(rows, first_row + ((lane / 8) % 2) * 8 + lane % 8, lane / 16);
}

// The A fragment of weight * w for a 16 x 16 tile w held in C layout in
// w[j0], w[j0 + 1] (FlashAttention-2's register reuse: no shuffles).
template <typename T, int N>
__device__ __forceinline__ void c_to_a_fragment(const float (&w)[N][4], int j0, float weight, uint32_t (&a)[4]) {
  a[0] = pack2<T>(weight * w[j0][0], weight * w[j0][1]);
  a[1] = pack2<T>(weight * w[j0][2], weight * w[j0][3]);
  a[2] = pack2<T>(weight * w[j0 + 1][0], weight * w[j0 + 1][1]);
  a[3] = pack2<T>(weight * w[j0 + 1][2], weight * w[j0 + 1][3]);
}

// acc += A B for a 16 x 16 A fragment and the 16 staged rows b_rows[0..15]
// (16 x head_dim). Per 16 columns of head_dim one transposed ldmatrix gives
// the B fragments of two 8-column tiles: (rows 0-7 | 8-15) x (columns +0 | +8).
// The _at form takes this lane's row as a shared-memory address (add_rows_lane_row's).
// kSwizzled and rows_after: as dot_16_rows_at's.
template <typename T, int kHeadDim, bool kSwizzled = false>
__device__ __forceinline__ void add_a_times_rows_at(const uint32_t (&a)[4], uint32_t row_addr,
                                                    float (&acc)[kHeadDim / 8][4], uint32_t rows_after = 0) {
#pragma unroll
  for (int n = 0; n < kHeadDim / 16; ++n) {
    uint32_t b[4];  // b0, b1 of columns 16n..16n+7, then of 16n+8..16n+15
    ldmatrix_x4_trans_at(b, kSwizzled ? swizzled_k_step(row_addr, n) + rows_after : row_addr + rows_after + 32 * n);
    mma_16816<T>(acc[2 * n], a, b[0], b[1]);
    mma_16816<T>(acc[2 * n + 1], a, b[2], b[3]);
  }
}
template <typename T, int kHeadDim>
__device__ __forceinline__ void add_a_times_rows(const uint32_t (&a)[4], RowPtr<kHeadDim> b_rows,
                                                 float (&acc)[kHeadDim / 8][4], int lane) {
  const uint16_t* row = b_rows[((lane / 8) % 2) * 8 + lane % 8] + (lane / 16) * 8;
#pragma unroll
  for (int n = 0; n < kHeadDim / 16; ++n) {
    uint32_t b[4];  // b0, b1 of columns 16n..16n+7, then of 16n+8..16n+15
    ldmatrix_x4_trans(b, row + 16 * n);
    mma_16816<T>(acc[2 * n], a, b[0], b[1]);
    mma_16816<T>(acc[2 * n + 1], a, b[2], b[3]);
  }
}

// acc += (weight * W) B: a 16 x 16 tile W (C layout, in w[j0], w[j0 + 1])
// times the 16 staged rows b_rows[0..15].
template <typename T, int kHeadDim, int N>
__device__ __forceinline__ void add_tile_times_rows(const float (&w)[N][4], int j0, float weight,
                                                    RowPtr<kHeadDim> b_rows, float (&acc)[kHeadDim / 8][4],
                                                    int lane) {
  uint32_t a[4];
  c_to_a_fragment<T>(w, j0, weight, a);
  add_a_times_rows<T, kHeadDim>(a, b_rows, acc, lane);
}

// acc += D B for the diagonal 16 x 16 tile D = diag(d_0 .. d_15) and the 16
// staged rows b_rows[0..15]: row x of acc gains d_x * b_rows[x]. Every thread
// passes d_g and d_{g+8} (the values of its rows); the A fragment is nonzero
// only where column == row, in the thread with c == g / 2.
template <typename T>
__device__ __forceinline__ void diag_a_fragment(float d_g, float d_g8, int lane, uint32_t (&a)[4]) {
  const int g = lane / 4, c = lane % 4;
  const bool lo = 2 * c == g, hi = 2 * c + 1 == g;
  a[0] = pack2<T>(lo ? d_g : 0.f, hi ? d_g : 0.f);
  a[1] = a[2] = 0u;
  a[3] = pack2<T>(lo ? d_g8 : 0.f, hi ? d_g8 : 0.f);
}
template <typename T, int kHeadDim>
__device__ __forceinline__ void add_diag_times_rows(float d_g, float d_g8, RowPtr<kHeadDim> b_rows,
                                                    float (&acc)[kHeadDim / 8][4], int lane) {
  uint32_t a[4];
  diag_a_fragment<T>(d_g, d_g8, lane, a);
  add_a_times_rows<T, kHeadDim>(a, b_rows, acc, lane);
}

// add_diag_times_rows from this lane's transposed-ldmatrix row as a
// shared-memory address (add_rows_lane_row's).
template <typename T, int kHeadDim, bool kSwizzled = false>
__device__ __forceinline__ void add_diag_times_rows_at(float d_g, float d_g8, uint32_t row_addr,
                                                       float (&acc)[kHeadDim / 8][4], int lane,
                                                       uint32_t rows_after = 0) {
  uint32_t a[4];
  diag_a_fragment<T>(d_g, d_g8, lane, a);
  add_a_times_rows_at<T, kHeadDim, kSwizzled>(a, row_addr, acc, rows_after);
}

// The A fragment of the 16 x 16 tile with d_x at (x, x) and e_x at (x, x + 1)
// for x < 15 (row 15's e would be column 16, outside the tile, and is left
// out): acc += A B then gives row x d_x b_rows[x] + e_x b_rows[x + 1], a
// fractional position's two rows in one product where two diagonal products
// took twice the products and transposed loads. Every thread passes its rows'
// values (d_g, d_g8 as diag_a_fragment; e_g, e_g8 the same for e). Row g's
// two nonzeros are columns g and g + 1: in a[0] of the thread with 2c == g
// (both), 2c + 1 == g (d's alone) or 2c == g + 1 (e's alone), and for row 7
// column 8 in a[2] of thread 28; rows g + 8 the same in a[3].
template <typename T>
__device__ __forceinline__ void two_diagonals_a_fragment(float d_g, float d_g8, float e_g, float e_g8, int lane,
                                                         uint32_t (&a)[4]) {
  const int g = lane / 4, c = lane % 4;
  const bool diag_lo = 2 * c == g, diag_hi = 2 * c + 1 == g, super_lo = 2 * c == g + 1;
  a[0] = pack2<T>(diag_lo ? d_g : super_lo ? e_g : 0.f, diag_hi ? d_g : diag_lo ? e_g : 0.f);
  a[1] = 0u;
  a[2] = pack2<T>(lane == 28 ? e_g : 0.f, 0.f);
  a[3] = pack2<T>(diag_lo ? d_g8 : super_lo ? e_g8 : 0.f, diag_hi ? d_g8 : diag_lo ? e_g8 : 0.f);
}
// two_diagonals_a_fragment from byte selectors of this lane, formed once (the
// low 16 bits for a[0] and a[3], the high 16 for a[2]; __byte_perm reads only
// the low 16): each register a __byte_perm of pack2(d, e) and zero. pack2
// rounds each half on its own and a zero half is T's +0, as
// two_diagonals_a_fragment's pack2 of 0.f: the same bits.
__device__ __forceinline__ uint32_t two_diagonals_selectors(int lane) {
  const int g = lane / 4, c = lane % 4;
  // __byte_perm nibbles: 0x10 takes pack2's low half (d), 0x32 its high one (e), 0x54 zero.
  const uint32_t lo = 2 * c == g ? 0x10u : 2 * c == g + 1 ? 0x32u : 0x54u;
  const uint32_t hi = 2 * c + 1 == g ? 0x10u : 2 * c == g ? 0x32u : 0x54u;
  return lo | (hi << 8) | ((lane == 28 ? 0x5432u : 0x5454u) << 16);
}
template <typename T>
__device__ __forceinline__ void two_diagonals_a_fragment_by_selectors(float d_g, float d_g8, float e_g, float e_g8,
                                                                      uint32_t sel, uint32_t (&a)[4]) {
  const uint32_t g_pair = pack2<T>(d_g, e_g), g8_pair = pack2<T>(d_g8, e_g8);
  a[0] = __byte_perm(g_pair, 0u, sel);
  a[1] = 0u;
  a[2] = __byte_perm(g_pair, 0u, sel >> 16);
  a[3] = __byte_perm(g8_pair, 0u, sel);
}
template <typename T, int kHeadDim, bool kSwizzled = false>
__device__ __forceinline__ void add_two_diagonals_times_rows_at(float d_g, float d_g8, float e_g, float e_g8,
                                                                uint32_t row_addr, float (&acc)[kHeadDim / 8][4],
                                                                int lane, uint32_t rows_after = 0) {
  uint32_t a[4];
  two_diagonals_a_fragment<T>(d_g, d_g8, e_g, e_g8, lane, a);
  add_a_times_rows_at<T, kHeadDim, kSwizzled>(a, row_addr, acc, rows_after);
}

// The diagonal of a 16 x 16 tile in C layout (s[0], s[1]): element (x, x) of
// row x = g + 8 r is s[r][2 r + g % 2] in the thread with c == g / 2 (the
// "diagonal owner" of the quad); other threads get one of their own elements.
template <int N>
__device__ __forceinline__ float diagonal_element(const float (&s)[N][4], int r, int g) {
  return g % 2 ? s[r][2 * r + 1] : s[r][2 * r];
}
__device__ __forceinline__ bool owns_diagonal(int lane) { return lane % 4 == (lane / 4) / 2; }
// The element (x, x + 1) just above the diagonal of row x = g + 8 r, in the
// thread with c == (g + 1) / 2, or for g == 7 (column 8 r + 8, the next block)
// c == 0, which holds it only for r == 0 (row 15's is outside the tile);
// other threads get one of their own elements.
template <int N>
__device__ __forceinline__ float superdiagonal_element(const float (&s)[N][4], int r, int g) {
  return g == 7 ? s[1][0] : (g % 2 ? s[r][2 * r] : s[r][2 * r + 1]);
}
// The lane that owns the diagonal elements of this lane's rows.
__device__ __forceinline__ int diagonal_owner(int lane) { return (lane / 4) * 4 + (lane / 4) / 2; }

// Band masks of a tile in C layout (pattern.h's in_band decides): the
// distance pos - key of element e of 8-column block j, from distance0, that
// of the thread's element (row g, column 2c) of block 0. Rows are queries and
// columns keys, or with kKeysAreRows (the dk/dv pass) the other way round.
// Row g + 8 sits kRowStep positions after row g: 8, or 0 where the two rows
// are two heads' queries at one position (the Hopper forward's interleaved
// heads, fwd_hopper_kernel.cuh).
template <bool kKeysAreRows, int kRowStep = 8>
__device__ __forceinline__ int element_distance(int distance0, int j, int e) {
  const int row_step = kRowStep * (e / 2), column_step = 8 * j + e % 2;
  return kKeysAreRows ? distance0 + column_step - row_step : distance0 + row_step - column_step;
}
// distance0 of a tile whose rows start at position row0 and columns at col0.
template <bool kKeysAreRows>
__device__ __forceinline__ int thread_distance(int64_t row0, int64_t col0, int g, int c) {
  return kKeysAreRows ? int(col0 - row0) + 2 * c - g : int(row0 - col0) + g - 2 * c;
}

// A band chunk's scores in log2 units: kChunk keys from `chunk` (C layout,
// N = kChunk / 8 tiles) against the warp's 16 queries from warp_pos, scaled
// where pattern.h's in_band holds and -inf elsewhere. Only the 16-key
// sub-tiles on the band's two edges need a mask per score. kKeysBeforeStart:
// the chunk may start before key 0 (the Hopper forward's chunks end at its
// last query), and keys before the sequence are masked too. kRowStep: as in
// element_distance (the warp's rows then span 8 positions, inside the 16 that
// band_holds<15> allows for).
template <bool kKeysBeforeStart, int kRowStep = 8, int N>
__device__ __forceinline__ void mask_band_chunk(float (&s)[N][4], int64_t warp_pos, int64_t chunk, Band band,
                                                float scale_log2, int g, int c) {
  const int distance0 = thread_distance<false>(warp_pos, chunk, g, c);
#pragma unroll
  for (int t16 = 0; t16 < N / 2; ++t16) {
    const int64_t key0 = chunk + 16 * t16;
    if ((!kKeysBeforeStart || key0 >= 0) && band_holds<15>(warp_pos, key0, band)) {
#pragma unroll
      for (int j = 2 * t16; j < 2 * t16 + 2; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j][e] *= scale_log2;
    } else {
#pragma unroll
      for (int j = 2 * t16; j < 2 * t16 + 2; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int distance = element_distance<false, kRowStep>(distance0, j, e);
          // Row g + 8 (e / 2) sits at warp_pos + g + kRowStep (e / 2); its key exists when distance <= that.
          const bool exists = !kKeysBeforeStart || key0 >= 0 || distance <= warp_pos + g + kRowStep * (e / 2);
          s[j][e] = in_band(distance, band) && exists ? s[j][e] * scale_log2 : -INFINITY;
        }
      }
    }
  }
}

// 2^x on the special-function unit, flushing denormals (exp2f adds range
// handling the softmax does not need); 2^-inf = 0.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace mma_tiles
}  // namespace fibsparse
