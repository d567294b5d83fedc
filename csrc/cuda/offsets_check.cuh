// The offsets a kernel reads, checked on the device at every launch. The
// Python entry points check offsets on the host, but device offsets only once
// per tensor version (a host copy costs a sync), and torch.compile or a direct
// call of the op skips that check; a value written behind torch's back (through
// `.data`, or another library's view of the memory) would then go unseen. Here
// the first block of each (batch, head) checks its head's row, one entry per
// thread, and a bad entry stops the kernel with a device-side assert, which
// torch raises as an error at the next synchronization.
#pragma once

#include <c10/macros/Macros.h>

#include "../fibsparse.h"
#include "../pattern.h"

namespace fibsparse {

template <typename OffsetT>
__device__ __forceinline__ void check_offsets_on_device(const Params& p, const OffsetT* row) {
  if (blockIdx.x != 0) return;
  for (int t = threadIdx.x; t < p.num_offsets; t += blockDim.x) {
    CUDA_KERNEL_ASSERT_MSG(offset_entry_valid(row, t, p.min_offset_distance),
                           "fibsparse: offsets must be strictly increasing, finite, >= 0 (integer ones >= window), "
                           "padded with -1 only at the end; they changed without torch's version counter seeing it");
  }
}

}  // namespace fibsparse
