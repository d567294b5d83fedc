"""Builds fibsparse_ext._C: CUDA + CPU kernels when torch has CUDA and nvcc is
found, otherwise CPU only. Install with `pip install --no-build-isolation .`
(the extension compiles against the torch already installed).

Environment:
  TORCH_CUDA_ARCH_LIST  CUDA archs to build (default "9.0a": H100/H200, with the
                        Hopper forward, which needs sm_90a's wgmma and TMA)
  MAX_JOBS              parallel compile jobs (ninja)
  FIBSPARSE_FORCE_CPU=1 build the CPU kernels only
"""
import glob
import os
import shutil

from setuptools import find_packages, setup


def find_cuda_home():
    """The first CUDA toolkit with nvcc and the runtime headers among CUDA_HOME,
    CUDA_PATH, the nvcc on PATH and /usr/local/cuda."""
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                  os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None, "/usr/local/cuda"]
    for home in filter(None, candidates):
        if os.path.exists(os.path.join(home, "bin", "nvcc")) and os.path.exists(
                os.path.join(home, "include", "cuda_runtime.h")):
            return home
    return None


cuda_home = None if os.environ.get("FIBSPARSE_FORCE_CPU") == "1" else find_cuda_home()
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0a")

import torch  # noqa: E402  (after CUDA_HOME is set)
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402



def library_header_dirs(cuda_home):
    """torch's CUDA headers include cuSPARSE/cuBLAS headers. When the toolkit at
    cuda_home has only the compiler and runtime (as on our CI machines), take
    the missing headers from the nvidia-* wheels torch depends on, through a
    folder of links to just those, so the toolkit's own headers still win."""
    toolkit = os.path.join(cuda_home, "include")
    if os.path.exists(os.path.join(toolkit, "cusparse.h")):
        return []
    try:
        import nvidia
    except ImportError:
        return []
    links = os.path.join(os.path.dirname(os.path.abspath(__file__)), "build", "cuda_library_headers")
    os.makedirs(links, exist_ok=True)
    for header in glob.glob(os.path.join(nvidia.__path__[0], "*", "include", "*")):
        name = os.path.basename(header)
        if not os.path.exists(os.path.join(toolkit, name)) and not os.path.lexists(os.path.join(links, name)):
            os.symlink(header, os.path.join(links, name))
    return [links]


with_cuda = cuda_home is not None and torch.version.cuda is not None
archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if with_cuda else ""
print(f"fibsparse_ext: building {'CUDA (archs ' + archs + ') + CPU' if with_cuda else 'CPU-only'} "
      f"kernels against torch {torch.__version__}")

# The host code (op library, checks, autograd, CPU ops and kernels) and the
# Python module; with CUDA, the CUDA ops (host C++) and kernels.
sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
macros = [("FIBSPARSE_BUILD_TORCH", f'"{torch.__version__}"'), ("FIBSPARSE_CUDA_ARCHS", f'"{archs}"')]
cxx_flags = ["-O3"]
if with_cuda:
    sources += sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
    macros.append(("FIBSPARSE_WITH_CUDA", None))
    if any(arch.split("+")[0] == "9.0a" for arch in archs.replace(";", " ").split()):
        macros.append(("FIBSPARSE_HOPPER_KERNELS", None))
    extension = CUDAExtension(
        "fibsparse_ext._C", sources, define_macros=macros, include_dirs=library_header_dirs(cuda_home),
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]})
else:
    extension = CppExtension("fibsparse_ext._C", sources, define_macros=macros,
                             extra_compile_args={"cxx": cxx_flags})

setup(
    name="fibsparse_ext",
    version="0.1.0",
    description="Window-plus-Fibonacci-offset sparse attention for PyTorch: CPU and CUDA kernels",
    packages=find_packages(include=["fibsparse_ext", "fibsparse_ext.*"]),
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.10",
    install_requires=["torch>=2.4"],
    extras_require={"plot": ["matplotlib"], "test": ["pytest", "pytest-xdist", "numpy"],
                    "transformers": ["transformers>=5"]},
)
