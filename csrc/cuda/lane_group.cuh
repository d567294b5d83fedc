// Device building blocks: a query (or key) row is owned by a group of kLanes
// consecutive threads, each holding head_dim / kLanes elements in registers.
// Rows are loaded with the widest aligned vector loads (16 bytes where the
// slice allows) and dot products are finished with xor-shuffles in the group.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace fibsparse {

constexpr int kLanes = 8;  // threads per row
constexpr int kCudaRowsPerBlock = 16;  // query (or key) rows per block
constexpr int kLaneBlockThreads = 128;  // threads per block = kCudaRowsPerBlock * kLanes

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// A plain-old-data vector of `kBytes` bytes for one load or store.
template <int kBytes>
struct VecOf;
template <> struct VecOf<4> { using type = uint32_t; };
template <> struct VecOf<8> { using type = uint2; };
template <> struct VecOf<16> { using type = uint4; };

// `src` points at this lane's slice of kElems elements; its address is a
// multiple of the slice size (the host aligns rows to 16 bytes).
template <int kElems, typename T, typename Acc>
__device__ __forceinline__ void load_slice(const T* __restrict__ src, Acc (&dst)[kElems]) {
  constexpr int kBytes = kElems * int(sizeof(T));
  constexpr int kVecBytes = kBytes >= 16 ? 16 : kBytes;
  static_assert(kBytes % kVecBytes == 0, "a slice must be a whole number of vector loads (head_dim / kLanes elements)");
  using Vec = typename VecOf<kVecBytes>::type;
  Vec raw[kBytes / kVecBytes];
#pragma unroll
  for (int c = 0; c < kBytes / kVecBytes; ++c) raw[c] = __ldg(reinterpret_cast<const Vec*>(src) + c);
  const T* elems = reinterpret_cast<const T*>(raw);
#pragma unroll
  for (int e = 0; e < kElems; ++e) dst[e] = static_cast<Acc>(elems[e]);
}

template <int kElems, typename T, typename Acc>
__device__ __forceinline__ void store_slice(T* __restrict__ dst, const Acc (&src)[kElems], Acc scale) {
  constexpr int kBytes = kElems * int(sizeof(T));
  constexpr int kVecBytes = kBytes >= 16 ? 16 : kBytes;
  static_assert(kBytes % kVecBytes == 0, "a slice must be a whole number of vector stores (head_dim / kLanes elements)");
  using Vec = typename VecOf<kVecBytes>::type;
  Vec raw[kBytes / kVecBytes];
  T* elems = reinterpret_cast<T*>(raw);
#pragma unroll
  for (int e = 0; e < kElems; ++e) elems[e] = static_cast<T>(src[e] * scale);
#pragma unroll
  for (int c = 0; c < kBytes / kVecBytes; ++c) reinterpret_cast<Vec*>(dst)[c] = raw[c];
}

// Sum over the kLanes threads of a row group; every lane gets the result.
// Called by all 32 lanes of the warp (kernels keep their loops uniform).
template <typename Acc>
__device__ __forceinline__ Acc group_sum(Acc x) {
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

template <int kElems, typename Acc>
__device__ __forceinline__ Acc slice_dot(const Acc (&a)[kElems], const Acc (&b)[kElems]) {
  Acc s = Acc(0);
#pragma unroll
  for (int e = 0; e < kElems; ++e) s += a[e] * b[e];
  return s;
}

// Loads the interpolated row (1 - f) * row[j0] + f * row[j1] of this lane's
// slice; `diff` receives row[j1] - row[j0] when the caller asks for it (read_j1).
// At f == 0 row[j1] has weight 0 and stays out of `row` (0 times a non-finite
// value would be NaN); only `diff`, for d/d(position), reads it.
template <int kElems, typename T, typename Acc>
__device__ __forceinline__ void load_interp(const T* base, int64_t row_stride, int64_t j0, int64_t j1, Acc frac,
                                            bool read_j1, Acc (&row)[kElems], Acc (&diff)[kElems]) {
  load_slice<kElems>(base + j0 * row_stride, row);
  if (read_j1) {
    load_slice<kElems>(base + j1 * row_stride, diff);
#pragma unroll
    for (int e = 0; e < kElems; ++e) diff[e] -= row[e];
    if (frac != Acc(0)) {
#pragma unroll
      for (int e = 0; e < kElems; ++e) row[e] += frac * diff[e];
    }
  } else {
#pragma unroll
    for (int e = 0; e < kElems; ++e) diff[e] = Acc(0);
  }
}

}  // namespace fibsparse
