// Hopper's asynchronous copies (sm_90a): TMA loads of a tensor map's boxes into
// shared memory (into two blocks of a cluster at once, multicast), TMA stores
// of boxes from shared memory, and the mbarriers that count the loads' bytes
// and hand stages between a producer warp and consumer warpgroups, within a
// block or across a cluster. A box lands with the 128-byte swizzle
// (tensor_maps.h makes the maps): within each 1024-byte atom of 8 rows of 128
// bytes, the 16-byte chunk c of row r sits at chunk c ^ (r % 8).
// Only compiled into kernels built for sm_90a (fwd_hopper_kernel.cuh).
#pragma once

#include <cuda.h>

#include <cstdint>

#include "tensor_maps.h"

namespace fibsparse {
namespace tma {

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- mbarriers ----
__device__ __forceinline__ void barrier_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_address(bar)), "r"(count));
}
// Makes initialized barriers visible to the TMA unit (the async proxy).
__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// One arrival that also announces `bytes` of TMA transactions to come.
__device__ __forceinline__ void arrive_expect_bytes(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_address(bar)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_address(bar)) : "memory");
}
// Waits until the barrier's phase of the given parity has completed (a fresh
// barrier counts its phase "before 0", of parity 1, as completed).
__device__ __forceinline__ void wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n"
      "}\n" ::"r"(smem_address(bar)),
      "r"(parity)
      : "memory");
}

// ---- Clusters (two blocks that share their loads) ----
__device__ __forceinline__ uint32_t cluster_rank() {
  uint32_t rank;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(rank));
  return rank;
}
// Every thread of every block of the cluster arrives, then waits for all.
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}
// An arrival on the barrier at the same place in block `rank` of the cluster.
// It orders nothing beyond the block (no fence): what it releases is a stage
// whose reads have all landed in registers (a waited wgmma, an mma.sync's
// fragments), so TMA may overwrite it.
__device__ __forceinline__ void arrive_remote(uint64_t* bar, uint32_t rank) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(smem_address(bar)), "r"(rank));
  asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];\n" ::"r"(remote) : "memory");
}

// ---- TMA ----
// Loads the box of a 4-d tensor map at coordinates (c0 innermost .. c3) into
// dst; elements outside the tensor (negative coordinates too) land as zeros.
// The barrier counts the box's bytes when they have landed.
__device__ __forceinline__ void load_4d(void* dst, const CUtensorMap* map, uint64_t* bar, int c0, int c1, int c2,
                                        int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], "
      "[%2];\n" ::"r"(smem_address(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_address(bar)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}

// load_4d into the same place of every block of the cluster in `blocks` (a bit
// per rank), each block's barrier counting the bytes it receives.
__device__ __forceinline__ void load_4d_multicast(void* dst, const CUtensorMap* map, uint64_t* bar, uint16_t blocks,
                                                  int c0, int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], "
      "[%1, {%4, %5, %6, %7}], [%2], %3;\n" ::"r"(smem_address(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_address(bar)), "h"(blocks), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}

// Stores src, a box laid out as load_4d lands it, to the box of a 4-d tensor
// map at coordinates (c0 innermost .. c3); elements outside the tensor are not
// written. The writes to src must be made visible to TMA first
// (fence_shared_for_tma), and src stays unchanged until the store has read it
// (commit_stores, then wait_stores_read).
__device__ __forceinline__ void store_4d(const CUtensorMap* map, const void* src, int c0, int c1, int c2, int c3) {
  asm volatile("cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(smem_address(src)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
               : "memory");
}
// Orders this thread's writes to shared memory before later TMA reads of it.
__device__ __forceinline__ void fence_shared_for_tma() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Closes a group of this thread's store_4d calls.
__device__ __forceinline__ void commit_stores() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// Waits until every committed group of this thread's stores has read its
// shared memory (their writes to global memory may still be in flight; the
// kernel's end completes them).
__device__ __forceinline__ void wait_stores_read() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }

__device__ __forceinline__ void prefetch_map(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// ---- Tensor maps made on the device (a packed batch's, one set per sequence) ----
// A map copied into shared memory (128-byte aligned) is changed in place by one
// thread, then published to global memory by a whole warp; a thread that loads
// through the published map acquires it first. The release (publish_map) and
// the acquire pair up in the tensor-map proxy, which TMA reads maps through.

// Sets the map's base address to `first_row` and its row count (dimension 2
// of tensor_maps.h's 4-d view) to `rows`.
__device__ __forceinline__ void set_map_rows(CUtensorMap* smem_map, const void* first_row, uint32_t rows) {
  asm volatile("tensormap.replace.tile.global_address.shared::cta.b1024.b64 [%0], %1;\n" ::"r"(smem_address(smem_map)),
               "l"(reinterpret_cast<uint64_t>(first_row))
               : "memory");
  asm volatile("tensormap.replace.tile.global_dim.shared::cta.b1024.b32 [%0], 2, %1;\n" ::"r"(smem_address(smem_map)),
               "r"(rows)
               : "memory");
}
// Copies a map from shared to global memory with a release in the tensor-map
// proxy. Every lane of the warp calls it, with the same maps.
__device__ __forceinline__ void publish_map(CUtensorMap* global_map, const CUtensorMap* smem_map) {
  asm volatile(
      "tensormap.cp_fenceproxy.global.shared::cta.tensormap::generic.release.gpu.sync.aligned [%0], [%1], 128;\n" ::"l"(
          reinterpret_cast<uint64_t>(global_map)),
      "r"(smem_address(smem_map))
      : "memory");
}
// Before the first load through a map that publish_map wrote.
__device__ __forceinline__ void acquire_map(const CUtensorMap* global_map) {
  asm volatile("fence.proxy.tensormap::generic.acquire.gpu [%0], 128;\n" ::"l"(reinterpret_cast<uint64_t>(global_map))
               : "memory");
}

// ---- Tiles as TMA writes them ----
// A tile of 64 rows of kHeadDim 16-bit elements: kHeadDim / 64 regions of
// 64 rows x 128 bytes, one box each.
constexpr int kTileRows = 64;
constexpr int kRegionBytes = kTileRows * 128;
template <int kHeadDim>
constexpr int kTileBytes = kHeadDim / 64 * kRegionBytes;

// Byte offset of the 8 elements at (row, col .. col + 7) in a tile (col a multiple of 8).
__device__ __forceinline__ uint32_t swizzled_offset(int row, int col) {
  return uint32_t((col / 64) * kRegionBytes + row * 128 + ((((col % 64) / 8) ^ (row % 8)) * 16));
}

// A prefix: the 8 rows before a tile's first, one 1024-byte swizzle atom per
// 64-column region (the Hopper forward's fractional offset steps read the row
// just before a strip).
constexpr int kPrefixRegionBytes = kPrefixRows * 128;
template <int kHeadDim>
constexpr int kPrefixBytes = kHeadDim / 64 * kPrefixRegionBytes;

// The 8 elements at (row, col .. col + 7) of a tile whose rows -8 .. -1 lie in
// its prefix. A prefix row's swizzle is that of row + 8, which is row & 7 as
// in the tile, so only where the row starts and the regions' stride depend on
// which side it lies: a caller that walks one row's columns computes those once.
__device__ __forceinline__ const char* row_with_prefix(const char* tile, const char* prefix, int row, int col) {
  const bool in_prefix = row < 0;
  const char* start = in_prefix ? prefix + (row + kPrefixRows) * 128 : tile + row * 128;
  const int region_bytes = in_prefix ? kPrefixRegionBytes : kRegionBytes;
  return start + (col / 64) * region_bytes + ((((col % 64) / 8) ^ (row & 7)) * 16);
}

}  // namespace tma
}  // namespace fibsparse
