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

# ---- compile flags (issue 16): one place; tests/test_fp_contract.py reads CXX_FLAGS from here.
# -ffp-contract=off: the shared Philox/Box-Muller math rounds every multiply and add on its own (the CUDA
# side uses __fmul_rn/__fadd_rn); without it g++ fuses them into FMAs wherever the target has FMA
# (aarch64, -march=native, -mfma), and seed= noise would differ between CPU and GPU.
# -std=c++20: the CPU momentum kernels use requires-expressions. torch 2.13 compiles extensions as
# C++20 by default, but torch 2.11 and older default to C++17; naming it here builds with both.
# (nvcc keeps torch's default: the .cu files are C++17.)
# -fmad=false: the same for nvcc, which otherwise contracts a * b + c into an FMA (thousands of them in
# the momentum kernels' PTX), so that GPU results differed from the CPU's in the last bits. The noise
# kernels round each step with __fmul_rn/__fadd_rn anyway; tests/test_fp_contract.py checks the PTX.
CXX_FLAGS = ["-O3", "-ffp-contract=off", "-std=c++20"]
NVCC_FLAGS = ["-O3", "-lineinfo", "-fmad=false"]
# VIDMEM_EXT_BWD_LAUNCH_BOUNDS=1 builds the momentum backward lane-chunks kernels with __launch_bounds__
# limiting their registers (two blocks per SM); benchmarks/gpu_check.sh times both builds.
if os.environ.get("VIDMEM_EXT_BWD_LAUNCH_BOUNDS", "").strip() == "1":
    NVCC_FLAGS.append("-DVIDMEM_MOMENTUM_BWD_LAUNCH_BOUNDS=1")
# ---- end compile flags


# ---- CUDA toolkit root (issue 16)
def _cuda_root_candidates():
    """(root, how it was found) in order: CUDA_HOME / CUDA_PATH; nvcc's own report of its location
    (`nvcc -v --dryrun` prints TOP=<toolkit>/bin/..: right even when the nvcc on the PATH is a wrapper
    script outside the toolkit, where torch would guess the root from the wrapper's path); the
    conventional /usr/local/cuda link."""
    import shutil
    import subprocess

    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            yield os.environ[var], f"${var}"
    nvcc = shutil.which("nvcc")
    if nvcc:
        try:
            report = subprocess.run(
                [nvcc, "-v", "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                capture_output=True,
                text=True,
                timeout=60,
            )
            for line in (report.stdout + report.stderr).splitlines():
                if line.startswith("#$ TOP="):
                    yield os.path.realpath(line.split("=", 1)[1].strip()), f"the report of {nvcc} (nvcc -v --dryrun)"
        except (OSError, subprocess.SubprocessError):
            pass
        yield os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), f"the location of {nvcc}"
    yield "/usr/local/cuda", "the conventional /usr/local/cuda link"


def _has_cuda_headers(root):
    return os.path.exists(os.path.join(root, "include", "cuda_runtime.h")) or bool(
        glob.glob(os.path.join(root, "targets", "*", "include", "cuda_runtime.h"))
    )


def _set_cuda_home():
    """Point CUDA_HOME (read by torch.utils.cpp_extension when first imported) at a real toolkit root."""
    if os.environ.get("VIDMEM_EXT_CUDA", "").strip() == "0":
        return
    for root, how in _cuda_root_candidates():
        if _has_cuda_headers(root) and os.path.exists(os.path.join(root, "bin", "nvcc")):
            os.environ["CUDA_HOME"] = root
            print(f"vidmem_ext: CUDA toolkit {root} (from {how})")
            return
    print("vidmem_ext: no CUDA toolkit found (no nvcc with cuda_runtime.h beside it)")


_set_cuda_home()
# ---- end CUDA toolkit root


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
    # *_cpu.cpp: each op's CPU kernels; *_cpu_*.cpp: parts of them built on their own (the momentum
    # kernels per instruction set, so that they compile in parallel)
    sources = rel("csrc/*.cpp") + rel("csrc/*/*_cpu.cpp") + rel("csrc/*/*_cpu_*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc")]
    cxx_flags = list(CXX_FLAGS)
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
    sources += rel("csrc/*/*.cu") + rel("csrc/*/*_glue.cpp")
    return [
        CUDAExtension(
            "vidmem_ext._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags + define, "nvcc": NVCC_FLAGS + define},
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
