// Warpgroup tensor-core products (Hopper's wgmma, sm_90a): a warpgroup of 4
// warps multiplies a 64-row A tile by a B tile held in shared memory, and the
// product lands in registers in the mma.sync C layout (mma.cuh), warp w of the
// warpgroup holding rows 16 w .. 16 w + 15. A comes from shared memory too
// ("ss") or from registers in the mma.sync A layout ("rs").
//
// Shared tiles are rows of 16-bit elements written by TMA with the 128-byte
// swizzle (tma.cuh): 64 elements of a row fill one 128-byte line, 8 lines make
// a 1024-byte swizzle atom, and a row longer than 64 elements continues in a
// second 64-row region. A descriptor names such a tile to the hardware.
// Only compiled into kernels built for sm_90a (fwd_hopper_kernel.cuh).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

namespace fibsparse {
namespace wgmma {

// Descriptor of a shared tile with the 128-byte swizzle (PTX ISA, "Matrix
// Descriptor Format"): start address, leading and stride byte offsets (in 16-byte
// units) and the swizzle mode in bits 62-63 (1: 128 bytes).
//   K-major (rows hold the reduction dimension: q and k in S = Q K^T): the
//   stride byte offset steps 8 rows (1024 bytes); the leading one is unused.
//   MN-major (rows run along the reduction: v in O = P V, keys as rows): the
//   leading byte offset steps to the next 64 columns (the next region), the
//   stride byte offset 8 rows (1024 bytes).
__device__ __forceinline__ uint64_t tile_descriptor(uint32_t smem_address, uint32_t leading_bytes,
                                                    uint32_t stride_bytes) {
  uint64_t desc = (smem_address & 0x3FFFF) >> 4;
  desc |= uint64_t((leading_bytes >> 4) & 0x3FFF) << 16;
  desc |= uint64_t((stride_bytes >> 4) & 0x3FFF) << 32;
  desc |= uint64_t(1) << 62;
  return desc;
}

// Before the first wgmma of a batch (its accumulators were last written by
// other instructions), after the batch, and to wait for batches to finish.
__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most kPending committed batches are still running (0: all done).
template <int kPending>
__device__ __forceinline__ void wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// Resizes this warpgroup's registers per thread (a multiple of 8 in [24, 256]):
// a producer warpgroup gives registers back, consumers take them.
template <int kRegisters>
__device__ __forceinline__ void set_max_registers_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}
template <int kRegisters>
__device__ __forceinline__ void set_max_registers_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}

// Ties accumulator registers to the asynchronous product: the compiler may
// neither read them before wait() nor move writes past fence() (wgmma's
// operands are not visible to it as dependencies).
template <int N>
__device__ __forceinline__ void fence_operands(float (&d)[N][4]) {
#pragma unroll
  for (int j = 0; j < N; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[j][e])::"memory");
}

// The asm of the products used here: the instruction's text, with its type
// (bf16 or f16) spliced in as a string literal (an asm statement's text must be
// one), and its operands: the accumulators d[j][e] in order (32 registers at
// n = 64, 64 at n = 128), then A and B.
#define FIBSPARSE_WGMMA_REGS_0_31 \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define FIBSPARSE_WGMMA_REGS_32_63 \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define FIBSPARSE_WGMMA_D_0_7 \
  "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), \
  "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), \
  "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), \
  "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), \
  "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
#define FIBSPARSE_WGMMA_D_8_15 \
  "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), \
  "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), \
  "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), \
  "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), \
  "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
#define FIBSPARSE_WGMMA_SS_M64N64(TYPE) \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n" \
               "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE " {" FIBSPARSE_WGMMA_REGS_0_31 \
               "}, %32, %33, p, 1, 1, 0, 0;\n}\n" \
               : FIBSPARSE_WGMMA_D_0_7 \
               : "l"(desc_a), "l"(desc_b), "r"(accumulate))
#define FIBSPARSE_WGMMA_RS_M64N64(TYPE) \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n" \
               "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE " {" FIBSPARSE_WGMMA_REGS_0_31 \
               "}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n" \
               : FIBSPARSE_WGMMA_D_0_7 \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate))
#define FIBSPARSE_WGMMA_RS_M64N128(TYPE) \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n" \
               "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE " {" FIBSPARSE_WGMMA_REGS_0_31 \
               ", " FIBSPARSE_WGMMA_REGS_32_63 "}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n" \
               : FIBSPARSE_WGMMA_D_0_7, FIBSPARSE_WGMMA_D_8_15 \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate))

// d (64 x 64, fp32) = A B^T (+ d when accumulate): A and B K-major shared tiles, 16 of K.
template <typename T>
__device__ __forceinline__ void ss_64(float (&d)[8][4], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  if constexpr (std::is_same_v<T, at::BFloat16>) {
    FIBSPARSE_WGMMA_SS_M64N64("bf16");
  } else {
    FIBSPARSE_WGMMA_SS_M64N64("f16");
  }
}

// d (64 x N, fp32) += A B: A 64 x 16 in registers (mma.sync A layout, warp w's rows
// 16 w..), B an MN-major shared tile of 16 rows of N columns.
template <typename T, int N>
__device__ __forceinline__ void rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t desc_b, int accumulate) {
  static_assert(N == 64 || N == 128);
  if constexpr (std::is_same_v<T, at::BFloat16>) {
    if constexpr (N == 64) FIBSPARSE_WGMMA_RS_M64N64("bf16");
    else FIBSPARSE_WGMMA_RS_M64N128("bf16");
  } else {
    if constexpr (N == 64) FIBSPARSE_WGMMA_RS_M64N64("f16");
    else FIBSPARSE_WGMMA_RS_M64N128("f16");
  }
}

#undef FIBSPARSE_WGMMA_REGS_0_31
#undef FIBSPARSE_WGMMA_REGS_32_63
#undef FIBSPARSE_WGMMA_D_0_7
#undef FIBSPARSE_WGMMA_D_8_15
#undef FIBSPARSE_WGMMA_SS_M64N64
#undef FIBSPARSE_WGMMA_RS_M64N64
#undef FIBSPARSE_WGMMA_RS_M64N128

}  // namespace wgmma
}  // namespace fibsparse
