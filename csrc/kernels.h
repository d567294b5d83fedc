// The kernel entry points the host wrapper (fibsparse_api.cpp) dispatches to.
// `dtype` is q's dtype; `fractional` selects real-valued offset positions.
#pragma once

#include <c10/core/ScalarType.h>

#include "fibsparse.h"

namespace fibsparse {

void run_fwd_cpu(const Params& params, c10::ScalarType dtype, bool fractional);
void run_bwd_cpu(const Params& params, c10::ScalarType dtype, bool fractional);

// Query (or key) rows one CUDA block handles; the host sizes the partial
// sums of d(position) with it. The CPU kernels make one partial per query.
constexpr int kCudaRowsPerBlock = 16;

#ifdef FIBSPARSE_WITH_CUDA
void run_fwd_cuda(const Params& params, c10::ScalarType dtype, bool fractional);
void run_bwd_cuda(const Params& params, c10::ScalarType dtype, bool fractional);
void run_decode_cuda(const Params& params, c10::ScalarType dtype, bool fractional);
#endif

}  // namespace fibsparse
