// The derivative of each fractional position from its partial sums: one block
// sums one (head, offset) row of the partials, in an order fixed by the launch
// alone, so that a call's result is the same bit for bit on every run.
//
// The rows are few and long (heads x offsets rows of batch x seqlen / 16
// partials: 104 rows of 4096 at 64k tokens and 8 heads, 1.7 MB), which torch's
// kernels took 17-19 us for; a block a row reads them in one pass.
#include "position_sums.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <limits>

#include "../env_switches.h"

namespace fibsparse {
namespace {

constexpr int kSumThreads = 256;

// Thread t adds elements t, t + kSumThreads, ... of its block's row in turn;
// then the warps' sums combine by the same butterfly every time and the
// block's warps in their order.
// A block takes rows blockIdx.x, blockIdx.x + gridDim.x, ... (the grid is
// capped; heads x offsets may pass it).
template <typename Acc>
__global__ void __launch_bounds__(kSumThreads)
    sum_position_partials_kernel(const Acc* __restrict__ partials, int64_t rows, int64_t row_length,
                                 Acc* __restrict__ sums) {
  __shared__ Acc warp_sums[kSumThreads / 32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const Acc* row = partials + r * row_length;
    Acc sum = 0;
#pragma unroll 8
    for (int64_t i = threadIdx.x; i < row_length; i += kSumThreads) sum += row[i];
#pragma unroll
    for (int lanes = 16; lanes > 0; lanes /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, lanes);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
      Acc total = 0;
#pragma unroll
      for (int w = 0; w < kSumThreads / 32; ++w) total += warp_sums[w];
      sums[r] = total;
    }
    __syncthreads();  // warp_sums is rewritten for the block's next row
  }
}

constexpr int64_t kMaxSumBlocks = 65536;

}  // namespace

at::Tensor sum_position_partials_cuda(const at::Tensor& partials) {
  TORCH_INTERNAL_ASSERT(partials.dim() == 2 && partials.is_contiguous() && partials.is_cuda());
  const int64_t rows = partials.size(0);
  at::Tensor sums = at::empty({rows}, partials.options());
  if (poison_outputs()) sums.fill_(std::numeric_limits<double>::quiet_NaN());
  if (rows == 0) return sums;
  const auto blocks = static_cast<unsigned>(std::min(rows, kMaxSumBlocks));
  AT_DISPATCH_FLOATING_TYPES(partials.scalar_type(), "sum_position_partials_cuda", [&] {
    sum_position_partials_kernel<scalar_t><<<blocks, kSumThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        partials.data_ptr<scalar_t>(), rows, partials.size(1), sums.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return sums;
}

}  // namespace fibsparse
