// One dtype per file so that the build runs in parallel (MAX_JOBS).
#include "fwd_launch.cuh"

namespace fibsparse {
template void launch_fwd<double>(const Params&, bool);
}  // namespace fibsparse
