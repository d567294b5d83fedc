// The CUDA backward's last reduction: the partial sums of d(position) into one
// sum for each (head, offset).
#pragma once

#include <ATen/core/Tensor.h>

namespace fibsparse {

// Each row of `partials` (rows, length; float or double, contiguous, on the
// GPU) summed in a fixed order: (rows,), bitwise the same on every call.
at::Tensor sum_position_partials_cuda(const at::Tensor& partials);

}  // namespace fibsparse
