// Programmatic dependent launch (sm_90 on): a kernel launched with
// launch_after_previous (launch.cuh) may start while the kernel before it in
// the stream is still running, so its blocks take the SMs that the earlier
// kernel's last blocks leave idle, and may run beside it. Such a kernel must
// call wait_for_previous_grid before it reads anything the earlier kernel
// writes, or writes anything at all; the earlier kernel lets it start with
// allow_next_grid. On older GPUs, and in a kernel launched without the
// attribute, both are no-ops.
#pragma once

namespace fibsparse {

// Returns once the grid before this one in the stream has completed and its
// writes are visible (at once if it had, or if this grid was launched the
// usual way).
__device__ __forceinline__ void wait_for_previous_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next grid in the stream, if launched with launch_after_previous,
// start its blocks once every block of this grid has called this or exited.
// Calling it only after this block's wait_for_previous_grid keeps the chain
// ordered: a grid that starts early still starts after every grid before its
// predecessor has completed.
__device__ __forceinline__ void allow_next_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

}  // namespace fibsparse
