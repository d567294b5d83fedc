// Kernel launches: one place that sizes a kernel's dynamic shared memory,
// launches it on the current stream and checks the launch.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <cstdint>

#include "../fibsparse.h"

namespace fibsparse {

// Blocks of `rows_per_block` rows that cover `rows` rows.
inline unsigned blocks_for(int64_t rows, int rows_per_block) {
  return static_cast<unsigned>((rows + rows_per_block - 1) / rows_per_block);
}

// Lets `kernel` have smem_bytes of dynamic shared memory: past 48 KiB a kernel
// must ask for it, and an occupancy query counts what it was allowed.
template <typename Kernel>
void allow_dynamic_smem(Kernel kernel, int smem_bytes) {
  if (smem_bytes > 0) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
  }
}

// Launches a kernel already allowed its smem_bytes (allow_dynamic_smem).
template <typename Kernel>
void launch_allowed_kernel(Kernel kernel, dim3 grid, int threads, int smem_bytes, const Params& p) {
  kernel<<<grid, threads, smem_bytes, at::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename Kernel>
void launch_kernel(Kernel kernel, dim3 grid, int threads, int smem_bytes, const Params& p) {
  allow_dynamic_smem(kernel, smem_bytes);
  launch_allowed_kernel(kernel, grid, threads, smem_bytes, p);
}

}  // namespace fibsparse
