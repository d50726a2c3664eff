"""Check that a CUDA build of vidmem_ext registered a CUDA kernel for every op and every schema (no GPU needed).

    python benchmarks/check_cuda_registration.py      # run by .ci/run in its CUDA-build virtualenv

Exits non-zero, naming what is missing, when torch has no CUDA, the extension was built without its
CUDA kernels, a public op would fall back to Python on CUDA, or a vidmem_ext schema has no CUDA kernel.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's vidmem_ext

from vidmem_ext import _backend  # noqa: E402


def problems() -> list[str]:
    found = []
    if not torch.version.cuda:
        found.append(f"torch {torch.__version__} has no CUDA")
    if not _backend.cuda_compiled():
        found.append(f"vidmem_ext was built without its CUDA kernels ({_backend.LOAD_ERROR or 'CPU-only build'})")
    falling_back = [op for op, devices in _backend.fallbacks().items() if "cuda" in devices]
    if falling_back:
        found.append(f"ops without a CUDA kernel: {', '.join(falling_back)}")
    schemas = sorted(name for name in torch._C._dispatch_get_all_op_names() if name.startswith("vidmem_ext::"))
    if not schemas:
        found.append("no vidmem_ext schema is registered")
    missing = [name for name in schemas if not torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")]
    if missing:
        found.append(f"schemas without a CUDA kernel: {', '.join(missing)}")
    if not found:
        print(f"CUDA kernels registered for every op and every schema: {', '.join(schemas)}")
    return found


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help; no options
    issues = problems()
    for issue in issues:
        print(f"FAIL: {issue}", file=sys.stderr)
    sys.exit(1 if issues else 0)
