"""Builds the CUDA kernel emulation (see README.md): one extension for both ops' kernels."""

from __future__ import annotations

import hashlib
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.join(ROOT, "tests", "cuda_emulation")

# Block orders of configure(block_order=...).
IN_ORDER, REVERSED, SHUFFLED = 0, 1, 2


def load():
    """The emulation extension (compiled on first use, about two minutes on two cores; cached in build/).

    VIDMEM_EMULATION_CSRC=DIR builds it from another copy of csrc/ instead (its own name and build
    folder): e.g. a copy with a defect put in on purpose, to see that the tests catch it.
    """
    from torch.utils import cpp_extension

    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError:
        pytest.skip("ninja is needed to build the CUDA emulation")
    csrc = os.environ.get("VIDMEM_EMULATION_CSRC") or os.path.join(ROOT, "csrc")
    own = os.path.abspath(csrc) == os.path.join(ROOT, "csrc")
    tag = "" if own else "_" + hashlib.sha1(os.path.abspath(csrc).encode()).hexdigest()[:8]
    build = os.path.join(ROOT, "build", "cuda_emulation" + tag)
    os.makedirs(build, exist_ok=True)
    return cpp_extension.load(
        name="vidmem_cuda_emulation" + tag,
        sources=[os.path.join(HERE, "emulated_ops.cpp")],
        extra_include_paths=[os.path.join(HERE, "include"), csrc],
        # ISO C++ without fused multiply-adds, as the CPU kernels are built: the same bits.
        extra_cflags=["-O1", "-Wno-unknown-pragmas", "-ffp-contract=off"],
        build_directory=build,
    )
