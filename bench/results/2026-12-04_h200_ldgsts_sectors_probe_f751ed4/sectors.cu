// Probe: do cp.async.cg 16-byte copies of whole 128-byte rows ask L2 for more sectors when the
// shared-memory rows are padded (144-byte stride, as the passes' stages) than when dense or swizzled?
#include <cstdio>
#include <cstdint>
template <int kMode>  // 0: padded 144-byte rows, 1: dense 128-byte rows, 2: dense, 16-byte chunks XOR-swizzled by row
__global__ void copy_rows(const uint16_t* src, int64_t row_stride, int rows_per_block, int* sink) {
  __shared__ __align__(128) uint16_t smem[64 * 72];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int col = (lane % 8) * 8, r0 = lane / 8;
  for (int base = blockIdx.x * rows_per_block; base < (blockIdx.x + 1) * rows_per_block; base += 64) {
    for (int i = 0; i < 4; ++i) {
      const int r = warp * 16 + r0 + 4 * i;
      const uint16_t* g = src + (int64_t(base) + r) * row_stride + col;
      int off;
      if (kMode == 0) off = r * 72 + col;
      else if (kMode == 1) off = r * 64 + col;
      else off = r * 64 + (((col / 8) ^ (r % 8)) * 8);
      const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem + off));
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(g), "r"(16));
    }
    asm volatile("cp.async.commit_group;\n" ::);
    asm volatile("cp.async.wait_group 0;\n" ::);
    __syncthreads();
  }
  if (threadIdx.x == 0 && smem[5] == 12345) sink[0] = 1;
}
int main() {
  const int64_t rows = 1 << 20, stride = 512;  // 8 heads x 64 (bf16): 1 KB a row, head 0's 128 bytes copied
  uint16_t* src; int* sink;
  cudaMalloc(&src, rows * stride * 2); cudaMalloc(&sink, 4);
  cudaMemset(src, 1, rows * stride * 2);
  const int blocks = 1024, per_block = int(rows / blocks);
  copy_rows<0><<<blocks, 128>>>(src, stride, per_block, sink);
  copy_rows<1><<<blocks, 128>>>(src, stride, per_block, sink);
  copy_rows<2><<<blocks, 128>>>(src, stride, per_block, sink);
  cudaError_t e = cudaDeviceSynchronize();
  printf("rows %lld, bytes copied %lld (sectors %lld): %s\n", (long long)rows, (long long)rows * 128,
         (long long)rows * 4, cudaGetErrorString(e));
  return e != cudaSuccess;
}
