// The kernel entry points the per-device ops (cpu/ops_cpu.cpp, cuda/ops_cuda.cpp) call.
// `dtype` is q's dtype; `fractional` selects real-valued offset positions.
#pragma once

#include <c10/core/ScalarType.h>

#include "fibsparse.h"

namespace fibsparse {

void run_fwd_cpu(const Params& params, c10::ScalarType dtype, bool fractional);
void run_bwd_cpu(const Params& params, c10::ScalarType dtype, bool fractional);

#ifdef FIBSPARSE_WITH_CUDA
void run_fwd_cuda(const Params& params, c10::ScalarType dtype, bool fractional);
void run_bwd_cuda(const Params& params, c10::ScalarType dtype, bool fractional);
void run_decode_cuda(const Params& params, c10::ScalarType dtype, bool fractional);
#endif

}  // namespace fibsparse
