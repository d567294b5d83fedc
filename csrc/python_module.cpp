// The Python extension module fibsparse_ext._C. Importing it loads the
// library, whose static initializers register the fibsparse:: ops; it also
// says how it was built.
#include <torch/extension.h>

#include "capabilities.h"
#include "hopper_tiles.h"

#ifndef FIBSPARSE_BUILD_TORCH
#define FIBSPARSE_BUILD_TORCH ""
#endif
#ifndef FIBSPARSE_CUDA_ARCHS
#define FIBSPARSE_CUDA_ARCHS ""
#endif

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
#ifdef FIBSPARSE_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  info["cuda_archs"] = FIBSPARSE_CUDA_ARCHS;
#ifdef FIBSPARSE_HOPPER_KERNELS
  info["hopper_forward"] = true;  // the forward's sm_90a kernel (used on compute capability 9.0)
#else
  info["hopper_forward"] = false;
#endif
  info["torch_version"] = FIBSPARSE_BUILD_TORCH;
  pybind11::list head_dims;  // the Python checks read the kernels' list from here
  for (int d : fibsparse::kCudaHeadDims) head_dims.append(d);
  info["cuda_head_dims"] = head_dims;
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fibsparse_ext compiled kernels (ops are in torch.ops.fibsparse)";
  m.def("build_info", &build_info, "How this extension was built: CUDA or CPU-only, archs, torch version.");
  // For the tests: the Hopper forward's tiles per block as a function of the grid (pure arithmetic).
  m.def("_hopper_tiles_per_block", &fibsparse::hopper_tiles_rule, pybind11::arg("tiles_per_sequence"),
        pybind11::arg("slices"), pybind11::arg("resident_blocks"), pybind11::arg("window_alone"),
        pybind11::arg("four_spans_pay") = false);
  m.def("_hopper_four_spans_pay", &fibsparse::hopper_four_spans_pay, pybind11::arg("blocks_per_sm"),
        pybind11::arg("fractional"), pybind11::arg("heads_per_warpgroup"),
        pybind11::arg("kv_head_bytes"), pybind11::arg("l2_bytes"));
}
