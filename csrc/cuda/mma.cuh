// Warp-level tensor-core building blocks (mma.sync m16n8k16, fp32 accumulate)
// for 16-bit inputs, kept as raw bits: a fragment register holds two 16-bit
// elements, the lower column (or k) index in the low half.
//
// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16"); g = lane / 4,
// c = lane % 4:
//   A 16x16 (row-major): a0 (g, 2c..2c+1)  a1 (g+8, 2c..)  a2 (g, 2c+8..)  a3 (g+8, 2c+8..)
//   B 16x8  (k x n):     b0 (k = 2c..2c+1, n = g)          b1 (k = 2c+8.., n = g)
//   C 16x8  (fp32):      c0, c1 (g, 2c..2c+1)              c2, c3 (g+8, 2c..2c+1)
// and for m16n8k8 (mma_1688), the first halves of those:
//   A 16x8:              a0 (g, 2c..2c+1)  a1 (g+8, 2c..)
//   B 8x8   (k x n):     b0 (k = 2c..2c+1, n = g)
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "../capabilities.h"

namespace fibsparse {

// d += a * b for one 16x8 tile.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  static_assert(kIsTensorCoreType<T>, "tensor-core building blocks take float16 or bfloat16");
  if constexpr (std::is_same_v<T, at::BFloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// d += a * b for one 16x8 tile over k = 8: half the products of mma_16816,
// for an A whose columns 8..15 would be zero.
template <typename T>
__device__ __forceinline__ void mma_1688(float (&d)[4], const uint32_t (&a)[2], uint32_t b) {
  static_assert(kIsTensorCoreType<T>, "tensor-core building blocks take float16 or bfloat16");
  if constexpr (std::is_same_v<T, at::BFloat16>) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(b));
  } else {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(b));
  }
}

// Two floats rounded to T and packed (lo in the low half).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  static_assert(kIsTensorCoreType<T>, "tensor-core building blocks take float16 or bfloat16");
  if constexpr (std::is_same_v<T, at::BFloat16>) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}

// The two T elements packed in `bits` (lo in the low half), as floats.
template <typename T>
__device__ __forceinline__ float2 unpack2(uint32_t bits) {
  static_assert(kIsTensorCoreType<T>, "tensor-core building blocks take float16 or bfloat16");
  if constexpr (std::is_same_v<T, at::BFloat16>) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&bits));
  } else {
    return __half22float2(*reinterpret_cast<const __half2*>(&bits));
  }
}

// Two 16-bit elements from different rows, packed (lo in the low half).
__device__ __forceinline__ uint32_t pack_bits(uint16_t lo, uint16_t hi) { return uint32_t(lo) | (uint32_t(hi) << 16); }

}  // namespace fibsparse
