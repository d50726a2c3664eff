"""Build vidmem_ext._C: the C++ CPU kernels always, the CUDA kernels when possible.

VIDMEM_EXT_CUDA=0 forces the CUDA part off, =1 forces it on (error if the
installed torch has no CUDA or nvcc is missing); unset means "when possible".
TORCH_CUDA_ARCH_LIST is honoured; the default covers sm_80 and sm_90 (+PTX).
"""

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _read_version():
    with open(os.path.join(ROOT, "vidmem_ext", "_version.py")) as f:
        scope = {}
        exec(f.read(), scope)
        return scope["__version__"]


def _cuda_wanted():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    setting = os.environ.get("VIDMEM_EXT_CUDA", "").strip()
    if setting not in ("", "0", "1"):
        raise RuntimeError(f"VIDMEM_EXT_CUDA must be 0, 1 or unset, got {setting!r}")
    possible = torch.version.cuda is not None and CUDA_HOME is not None
    why_not = "the installed torch has no CUDA" if torch.version.cuda is None else "nvcc was not found (set CUDA_HOME)"
    if setting == "1" and not possible:
        raise RuntimeError(f"VIDMEM_EXT_CUDA=1 but the CUDA kernels cannot be built: {why_not}")
    if setting == "0":
        return False
    if not possible:
        print(f"vidmem_ext: building the CPU kernels only ({why_not})")
    return possible


def _extensions():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))  # noqa: E731
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc")]
    cxx_flags = ["-O3"]
    link_flags = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is header code: without OpenMP enabled here it runs on one thread. At run
        # time the libgomp.so.1 that torch has already loaded serves it (same soname), so there is one pool.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    if not _cuda_wanted():
        return [
            CppExtension(
                "vidmem_ext._C",
                sources,
                include_dirs=include_dirs,
                extra_compile_args={"cxx": cxx_flags},
                extra_link_args=link_flags,
            )
        ]

    archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_CUDA_ARCHS
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs  # read by torch when it builds the -gencode flags
    define = ["-DVIDMEM_EXT_WITH_CUDA=1", f'-DVIDMEM_EXT_CUDA_ARCHS="{archs}"']
    sources += rel("csrc/cuda/*.cu") + rel("csrc/cuda/*.cpp")
    return [
        CUDAExtension(
            "vidmem_ext._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags + define, "nvcc": ["-O3", "-lineinfo"] + define},
            extra_link_args=link_flags,
        )
    ]


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(no_python_abi_suffix=False)


setup(
    name="vidmem_ext",
    version=_read_version(),
    packages=find_packages(include=["vidmem_ext", "vidmem_ext.*"]),
    # the demo's trained text-to-image pipeline (diffusers folder layout), found by an installed package
    package_data={
        "vidmem_ext": ["demo_model/*.json", "demo_model/*/*.json", "demo_model/*/*.txt", "demo_model/*/*.safetensors"]
    },
    ext_modules=_extensions(),
    cmdclass={"build_ext": _build_ext()},
)
