// The CUDA side of the dispatch: q's dtype picks the instantiation.
#include <ATen/Dispatch.h>

#include "../kernels.h"

namespace fibsparse {

template <typename T>
void launch_fwd(const Params& p, bool fractional);
template <typename T>
void launch_bwd(const Params& p, bool fractional);

void run_fwd_cuda(const Params& params, c10::ScalarType dtype, bool fractional) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fibsparse_fwd_cuda",
                                  [&] { launch_fwd<scalar_t>(params, fractional); });
}

void run_bwd_cuda(const Params& params, c10::ScalarType dtype, bool fractional) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fibsparse_bwd_cuda",
                                  [&] { launch_bwd<scalar_t>(params, fractional); });
}

}  // namespace fibsparse
