"""Loading of the compiled part (vidmem_ext._C) and the fallback bookkeeping.

`import vidmem_ext` must never fail because the compiled part is missing: each
op then runs its Python reference and warns once. `python -m vidmem_ext info`
reports what was built and which ops run on fallbacks.
"""

from __future__ import annotations

import warnings

import torch

try:
    from . import _C  # noqa: F401  (registers torch.ops.vidmem_ext.*)

    LOAD_ERROR: str | None = None
except ImportError as exc:  # not built, or built against another torch
    _C = None
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"

_warned: set[str] = set()

# Public ops and the torch.ops.vidmem_ext kernels they need.
OP_KERNELS: dict[str, tuple[str, ...]] = {
    "temporal_momentum": ("temporal_momentum", "temporal_momentum_backward"),
    "dependency_noise": ("dependency_noise_fill_",),
    "dependency_noise_step": ("dependency_noise_step",),
}


def compiled() -> bool:
    return _C is not None


def cuda_compiled() -> bool:
    return _C is not None and bool(getattr(_C, "with_cuda", 0))


def cuda_archs() -> list[str]:
    archs = getattr(_C, "cuda_archs", "") if _C is not None else ""
    return [a for a in archs.replace(",", ";").replace(" ", ";").split(";") if a]


def cpu_streaming_note() -> str | None:
    """When CPU momentum calls stream their outputs, in words (None without the compiled part).

    The first call may run the compiled part's probe (a few tens of milliseconds, once per process);
    a bad VIDMEM_EXT_CPU_STREAMING_BYTES is described, not raised (calls would raise the same).
    """
    if _C is None:
        return None
    try:
        threshold, source = _C.cpu_streaming_policy()
    except ValueError as error:
        return f"CPU momentum streaming: {error}"
    size = f"{threshold / 2**20:.1f} MiB" if threshold >= 2**20 else f"{threshold} bytes"
    return f"CPU momentum outputs streamed (non-temporal stores) in calls moving over {size} ({source})"


def has_kernel(kernel: str, device_type: str) -> bool:
    """Whether torch.ops.vidmem_ext.<kernel> has a compiled kernel for device_type ('cpu' or 'cuda')."""
    if _C is None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is None:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"vidmem_ext::{kernel}", key)
    except RuntimeError:  # op not declared in this build
        return False


def _kernels_available() -> dict[tuple[str, str], bool]:
    # Computed once at import (kernels register when _C loads): a plain dict that
    # torch.compile can read without a graph break, unlike the dispatcher query.
    return {
        (op, d): all(has_kernel(k, d) for k in kernels) for op, kernels in OP_KERNELS.items() for d in ("cpu", "cuda")
    }


_AVAILABLE = _kernels_available()


def use_kernel(op: str, device: torch.device | str) -> bool:
    """True when the compiled kernels of `op` exist for `device`; otherwise warn once and return False."""
    if compiled_for(op, device):
        return True
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    if device_type == "meta":  # shapes only: the fake kernels (or the reference) serve it; nothing is slow, no warning
        return _C is not None
    tag = f"{op}:{device_type}"
    if tag not in _warned and not torch.compiler.is_compiling():
        _warned.add(tag)
        why = LOAD_ERROR or f"no compiled {device_type} kernel"
        warnings.warn(
            f"vidmem_ext.{op}: using the slow Python reference on {device_type} ({why}). "
            "Run `python -m vidmem_ext info` for details.",
            RuntimeWarning,
            stacklevel=3,
        )
    return False


def compiled_for(op: str, device: torch.device | str) -> bool:
    """Whether the compiled kernels of `op` exist for `device` (cpu or cuda; False for meta, which has none)."""
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    return _AVAILABLE.get((op, device_type), False)


def fallbacks() -> dict[str, list[str]]:
    """For each public op, the device types on which it falls back to the Python reference."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() or cuda_compiled() else [])
    return {op: [d for d in devices if not _AVAILABLE[(op, d)]] for op in OP_KERNELS}
