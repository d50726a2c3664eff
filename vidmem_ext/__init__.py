"""vidmem_ext: temporal-memory operations for video diffusion models.

- temporal_momentum: an EMA over frames (ZS² temporal momentum attention), fused CPU/CUDA kernels.
- dependency_noise / dependency_noise_step: ZS² correlated per-frame Gaussian noise.
- token_budget.multi_term_memory_patchification: token counts of multi-term memory patchification.
- MultiTermMemoryPacker / plan_memory_terms: the tokens themselves (FramePack-style), and terms for a budget.
- temporal_momentum_attention / TemporalMomentumAttnProcessor: ZS² attention (SDPA function, diffusers processor).
- pipelines.zero_shot_video: zero-shot video from a diffusers text-to-image pipeline (needs the diffusers extra).
- distributed.temporal_momentum: temporal momentum of a video whose frames are split across torch.distributed ranks.

Names are imported lazily so that `import vidmem_ext.token_budget` (standard
library only) does not import torch. When torch is imported already, `import vidmem_ext` registers
the custom ops (torch.ops.vidmem_ext.*, their fake kernels and autograd) at once; otherwise the
first use of an op's function does (or `import vidmem_ext.momentum, vidmem_ext.noise`).
"""

from __future__ import annotations

import importlib
import sys

from ._version import __version__

# public name -> submodule that defines it
_LAZY = {
    "MemoryTerm": "token_budget",
    "multi_term_memory_patchification": "token_budget",
    "MultiTermMemoryPacker": "packer",
    "plan_memory_terms": "packer",
    "temporal_momentum": "momentum",
    "dependency_noise": "noise",
    "dependency_noise_step": "noise",
    "temporal_momentum_attention": "attention",
    "TemporalMomentumAttnProcessor": "attention",
    "distributed": None,
    "pipelines": None,
    "reference": None,
    "token_budget": None,
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'vidmem_ext' has no attribute {name!r}")
    module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
    value = module if _LAZY[name] is None else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


if "torch" in sys.modules:  # torch's import cost is paid: register the ops now (about 20 ms)
    importlib.import_module(".momentum", __name__)
    importlib.import_module(".noise", __name__)
