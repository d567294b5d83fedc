// One dtype per file so that the build runs in parallel (MAX_JOBS).
#include "bwd_launch.cuh"

namespace fibsparse {
template void launch_bwd<float>(const Params&, bool);
}  // namespace fibsparse
