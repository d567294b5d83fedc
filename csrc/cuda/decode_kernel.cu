// Decode kernel: a few new queries per sequence against a KV cache (linear, ring or paged).
// A query reads only window + K keys, so one query per block leaves nothing
// to parallelize over but the keys: the block's kGroups lane groups split the
// query's distances (group g walks t = g, g + kGroups, ...), each with its own
// online softmax, and the groups' partial results are merged in shared memory.
#include <ATen/Dispatch.h>

#include <limits>

#include "../capabilities.h"
#include "../static_switch.h"
#include "launch.cuh"
#include "offsets_check.cuh"
#include "query_walk.cuh"

namespace fibsparse {
namespace {

constexpr int kGroups = kLaneBlockThreads / kLanes;

template <typename T, typename OffsetT, int kHeadDim, bool kPaged>
__global__ void __launch_bounds__(kLaneBlockThreads) decode_kernel(const Params p) {
  using Walk = QueryWalk<T, OffsetT, kHeadDim, kPaged>;
  using Acc = typename Walk::Acc;
  constexpr int kElems = Walk::kElems;
  if (is_offsets_check_block()) {
    check_cache_on_device<OffsetT, kPaged>(p, blockIdx.y, blockIdx.z);
    return check_offsets_on_device<OffsetT>(p, blockIdx.y);
  }
  const int lane = threadIdx.x % kLanes, group = threadIdx.x / kLanes;
  const int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const Sequence seq = sequence_of(p, b);
  Walk walk(p, seq, b, i, h, lane);
  const int num_t = num_distances(p.band, p.num_offsets);
  // Same trip count for every group (the score shuffles need the whole warp).
  for (int first = 0; first < num_t; first += kGroups) {
    const int t = first + group;
    walk.step(p, t < num_t ? t : num_t - 1, t < num_t);
  }

  __shared__ Acc group_max[kGroups], group_sum_exp[kGroups], group_out[kGroups][kHeadDim];
  if (lane == 0) {
    group_max[group] = walk.softmax.max;
    group_sum_exp[group] = walk.softmax.sum;
  }
#pragma unroll
  for (int e = 0; e < kElems; ++e) group_out[group][lane * kElems + e] = walk.acc[e];
  __syncthreads();

  static_assert(kHeadDim <= kLaneBlockThreads, "the merge writes one output element per thread");
  const int d = threadIdx.x;  // one output element per thread
  if (d >= kHeadDim) return;
  Acc max = -std::numeric_limits<Acc>::infinity();
  for (int g = 0; g < kGroups; ++g) max = group_max[g] > max ? group_max[g] : max;
  Acc sum = Acc(0), out = Acc(0);
  for (int g = 0; g < kGroups; ++g) {
    // A group whose weights are all 0 (no valid key, or only -inf scores)
    // adds nothing but what its output holds (0, or NaN from 0 * a
    // non-finite value it read, as in one online softmax over all keys).
    const Acc w = group_sum_exp[g] == Acc(0) ? Acc(0) : exp(group_max[g] - max);
    sum += w * group_sum_exp[g];
    out += w * group_out[g][d];
  }
  static_cast<T*>(p.out)[b * p.o_batch_stride + int64_t(i) * p.o_row_stride + h * p.o_head_stride + d] =
      static_cast<T>(sum == Acc(0) ? out * Acc(0) : out / sum);
  if (d == 0) static_cast<Acc*>(p.lse)[stats_index(p, seq, b, h, i)] = max + log(sum);
}

template <typename T>
void launch_decode(const Params& p, bool fractional) {
  const dim3 grid(p.seqlen_q + kOffsetsCheckBlocks, p.heads, p.batch);  // one block per query
  HEADDIM_SWITCH(p.head_dim, kHeadDim, [&] {
    BOOL_SWITCH(fractional, kFrac, [&] {
      using OffsetT = std::conditional_t<kFrac, acc_t<T>, int32_t>;
      BOOL_SWITCH(p.block_table != nullptr, kPaged, [&] {
        launch_kernel(decode_kernel<T, OffsetT, kHeadDim, kPaged>, grid, kLaneBlockThreads, 0, p);
      });
    });
  });
}

}  // namespace

void run_decode_cuda(const Params& params, c10::ScalarType dtype, bool fractional) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fibsparse_decode_cuda",
                                  [&] { launch_decode<scalar_t>(params, fractional); });
}

}  // namespace fibsparse
