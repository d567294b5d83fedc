"""Reproduces a crash of the GPU machine's environment, not of fibsparse_ext:
a minimal C++ extension whose TORCH_CHECK message formats an integer
segfaults there (torch 2.11 built by gcc-toolset-13, extensions by Ubuntu's
gcc 13.3), instead of raising RuntimeError. See csrc/to_text.h for why our
own messages avoid it.

    python tools/repro_mixed_libstdcxx.py
"""
from torch.utils.cpp_extension import load_inline

SOURCE = """
#include <torch/extension.h>
void check_zero(int64_t x) { TORCH_CHECK(x == 0, "x must be 0, got ", x); }
"""

module = load_inline("repro_mixed_libstdcxx", cpp_sources=SOURCE, functions=["check_zero"])
try:
    module.check_zero(3)
except RuntimeError as error:
    print("the environment formats C++ error messages correctly:", error)
