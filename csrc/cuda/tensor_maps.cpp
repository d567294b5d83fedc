// TMA tensor maps (tensor_maps.h), through the driver's cuTensorMapEncodeTiled,
// found once through the runtime so that the extension needs no link to libcuda.
#include "tensor_maps.h"

#include "../env_switches.h"
#include "../hopper_tiles.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>
#include <cudaTypedefs.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace fibsparse {
namespace {

PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
#if CUDART_VERSION >= 12050
    C10_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found));
#else  // toolkits before 12.5 have only the unversioned lookup
    C10_CUDA_CHECK(cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &fn, cudaEnableDefault, &found));
#endif
    TORCH_CHECK(found == cudaDriverEntryPointSuccess && fn != nullptr,
                "fibsparse: the CUDA driver has no cuTensorMapEncodeTiled (needed by the Hopper forward)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encode;
}

constexpr int64_t kElementBytes = 2;

bool aligned_16(int64_t elements) { return (elements * kElementBytes) % 16 == 0; }

// A stride TMA takes: positive and a multiple of 16 bytes, unless its
// dimension has one entry (never stepped: rows_map replaces it).
bool tma_stride(int64_t stride, int64_t size) { return size == 1 || (stride > 0 && aligned_16(stride)); }

bool tma_layout(const void* base, int64_t head_stride, int heads, int64_t row_stride, int rows, int64_t batch_stride,
                int batch) {
  return reinterpret_cast<uintptr_t>(base) % 16 == 0 && tma_stride(head_stride, heads) &&
         tma_stride(row_stride, rows) && tma_stride(batch_stride, batch);
}

CUtensorMap rows_map(const void* base, CUtensorMapDataType dtype, int head_dim, int heads, int rows, int batch,
                     int64_t head_stride, int64_t row_stride, int64_t batch_stride, int box_rows) {
  CUtensorMap map;
  std::memset(&map, 0, sizeof(map));
  // A dimension of one entry is never stepped, but TMA still wants a valid stride.
  if (heads == 1) head_stride = head_dim;
  if (rows == 1) row_stride = int64_t(heads) * head_stride;
  const int64_t sequence_stride = batch == 1 ? int64_t(rows) * row_stride : batch_stride;
  const cuuint64_t dims[4] = {cuuint64_t(head_dim), cuuint64_t(heads), cuuint64_t(rows), cuuint64_t(batch)};
  const cuuint64_t strides[3] = {cuuint64_t(head_stride * kElementBytes), cuuint64_t(row_stride * kElementBytes),
                                 cuuint64_t(sequence_stride * kElementBytes)};
  const cuuint32_t box[4] = {64, 1, cuuint32_t(box_rows), 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  const CUresult result = encode_tiled()(&map, dtype, 4, const_cast<void*>(base), dims, strides, box, element_strides,
                                         CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                         CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  TORCH_CHECK(result == CUDA_SUCCESS, "fibsparse: cuTensorMapEncodeTiled failed with error ", int(result));
  return map;
}

CUtensorMapDataType map_dtype(bool bfloat16) {
  return bfloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
}

// The rows and sequences the maps view: a dense batch's, or a packed batch's
// whole buffer as one sequence (sequence_maps.cuh narrows it per sequence).
struct MapExtent {
  int q_rows, k_rows, batch;
};
MapExtent map_extent(const Params& p) {
  if (p.cu_seqlens_q == nullptr) return {p.seqlen_q, p.seqlen_k, p.batch};
  return {int(p.total_q), int(p.total_k), 1};
}

}  // namespace

bool hopper_forward_applies(const Params& p, bool tensor_core_type) {
  if (!kHopperForwardBuilt || !tensor_core_type) return false;
  // Checked on every call it could steer, so that a misspelt value fails at once.
  if (switched_off("FIBSPARSE_HOPPER")) return false;
  if (p.cache_seqlens != nullptr || p.block_table != nullptr) return false;
  if (p.head_dim != 64 && p.head_dim != 128) return false;
  // A map's dimensions are 32-bit (and a packed buffer's rows never fewer than one).
  const int64_t limit = int64_t(1) << 31;
  if (p.cu_seqlens_q != nullptr && (p.total_q < 1 || p.total_k < 1 || p.total_q >= limit || p.total_k >= limit)) {
    return false;
  }
  const cudaDeviceProp* device = at::cuda::getCurrentDeviceProperties();
  if (device->major != 9 || device->minor != 0) return false;
  const MapExtent extent = map_extent(p);
  return tma_layout(p.q, p.q_head_stride, p.heads, p.q_row_stride, extent.q_rows, p.q_batch_stride, extent.batch) &&
         tma_layout(p.k, p.k_head_stride, p.heads_kv, p.k_row_stride, extent.k_rows, p.k_batch_stride, extent.batch) &&
         tma_layout(p.v, p.v_head_stride, p.heads_kv, p.v_row_stride, extent.k_rows, p.v_batch_stride, extent.batch) &&
         tma_layout(p.out, p.o_head_stride, p.heads, p.o_row_stride, extent.q_rows, p.o_batch_stride, extent.batch);
}

bool hopper_clusters_asked() {
  const char* setting = switch_setting("FIBSPARSE_HOPPER_CLUSTER", {"0", "1"});
  return setting != nullptr && std::strcmp(setting, "1") == 0;
}

bool hopper_packing_allowed() { return !switched_off("FIBSPARSE_HOPPER_PACK"); }

int hopper_tiles_per_block(int tiles_per_sequence, int tiles_per_span, int64_t slices, int blocks_per_sm,
                           bool window_alone, bool fractional, int64_t kv_head_bytes) {
  if (const char* setting = std::getenv("FIBSPARSE_HOPPER_TILES")) {
    char* end = nullptr;
    const long n = std::strtol(setting, &end, 10);
    TORCH_CHECK(end != setting && *end == '\0' && n >= 1 && n <= 64,
                "fibsparse: FIBSPARSE_HOPPER_TILES must be a whole number from 1 to 64, got '", setting, "'");
    return int(n);
  }
  const cudaDeviceProp* device = at::cuda::getCurrentDeviceProperties();
  const int64_t resident = int64_t(device->multiProcessorCount) * blocks_per_sm;
  const bool four_spans_pay =
      hopper_four_spans_pay(blocks_per_sm, fractional, tiles_per_span, kv_head_bytes, int64_t(device->l2CacheSize));
  const int spans = (tiles_per_sequence + tiles_per_span - 1) / tiles_per_span;
  return tiles_per_span * hopper_tiles_rule(spans, slices, resident, window_alone, four_spans_pay);
}

ForwardTensorMaps make_forward_maps(const Params& p, bool bfloat16, int tile_queries, int q_box_rows) {
  const CUtensorMapDataType dtype = map_dtype(bfloat16);
  const MapExtent extent = map_extent(p);
  const auto k_map = [&](int box_rows) {
    return rows_map(p.k, dtype, p.head_dim, p.heads_kv, extent.k_rows, extent.batch, p.k_head_stride, p.k_row_stride,
                    p.k_batch_stride, box_rows);
  };
  const auto v_map = [&](int box_rows) {
    return rows_map(p.v, dtype, p.head_dim, p.heads_kv, extent.k_rows, extent.batch, p.v_head_stride, p.v_row_stride,
                    p.v_batch_stride, box_rows);
  };
  return {rows_map(p.q, dtype, p.head_dim, p.heads, extent.q_rows, extent.batch, p.q_head_stride, p.q_row_stride,
                   p.q_batch_stride, q_box_rows),
          k_map(64),
          v_map(64),
          k_map(tile_queries),
          v_map(tile_queries),
          rows_map(p.out, dtype, p.head_dim, p.heads, extent.q_rows, extent.batch, p.o_head_stride, p.o_row_stride,
                   p.o_batch_stride, kOutputBoxRows)};
}

FractionalForwardTensorMaps make_fractional_forward_maps(const Params& p, bool bfloat16, int tile_queries,
                                                         int q_box_rows) {
  const CUtensorMapDataType dtype = map_dtype(bfloat16);
  FractionalForwardTensorMaps maps;
  static_cast<ForwardTensorMaps&>(maps) = make_forward_maps(p, bfloat16, tile_queries, q_box_rows);
  const MapExtent extent = map_extent(p);
  maps.k_prefix = rows_map(p.k, dtype, p.head_dim, p.heads_kv, extent.k_rows, extent.batch, p.k_head_stride,
                           p.k_row_stride, p.k_batch_stride, kPrefixRows);
  maps.v_prefix = rows_map(p.v, dtype, p.head_dim, p.heads_kv, extent.k_rows, extent.batch, p.v_head_stride,
                           p.v_row_stride, p.v_batch_stride, kPrefixRows);
  return maps;
}

}  // namespace fibsparse
