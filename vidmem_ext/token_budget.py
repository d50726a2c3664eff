"""Token budget of multi-term memory patchification (docs/semantics.md, "Multi-term memory patchification").

Autoregressive video models compress the frame history into a fixed token
budget: the history is split into terms, recent terms with fine strides and
old terms with coarse ones; each term is downsampled by its strides and then
patchified. This module only counts the tokens; `vidmem_ext.MultiTermMemoryPacker`
builds them. Standard library only: importing it does not import torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["MemoryTerm", "multi_term_memory_patchification", "term_grid"]

_KEYS = ("num_latent_frames", "temporal_stride", "spatial_stride", "patch_size")


@dataclass(frozen=True)
class MemoryTerm:
    """One memory term: how many latent frames it covers and how hard it compresses them."""

    num_latent_frames: int
    temporal_stride: int = 1
    spatial_stride: int = 1
    patch_size: int = 1

    def __post_init__(self):
        _validate(self, "term")

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in _KEYS}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _check_int(value, what: str) -> int:
    # bool is an int subclass, but True frames or a 2.0 stride is a caller bug.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    return value


def _validate(term, where: str) -> tuple[int, int, int, int]:
    if isinstance(term, MemoryTerm):
        get = lambda k: getattr(term, k)  # noqa: E731
    elif isinstance(term, Mapping):
        missing = [k for k in _KEYS if k not in term]
        if missing:
            raise ValueError(f"{where} is missing key {missing[0]!r} (needs {', '.join(_KEYS)})")
        get = term.__getitem__
    else:
        raise TypeError(
            f"{where} must be a dict with keys {', '.join(_KEYS)} or a MemoryTerm, got {type(term).__name__}"
        )
    frames, t_stride, s_stride, patch = (_check_int(get(k), f"{where} {k!r}") for k in _KEYS)
    if frames < 0:
        raise ValueError(f"{where} 'num_latent_frames' must be >= 0, got {frames}")
    for key, value in zip(_KEYS[1:], (t_stride, s_stride, patch)):
        if value <= 0:
            raise ValueError(f"{where} {key!r} must be >= 1, got {value}")
    return frames, t_stride, s_stride, patch


def _check_latent(latent_h, latent_w) -> tuple[int, int]:
    h = _check_int(latent_h, "latent_h")
    w = _check_int(latent_w, "latent_w")
    if h < 0 or w < 0:
        raise ValueError(f"latent_h and latent_w must be >= 0, got {h}x{w}")
    return h, w


def term_grid(term, latent_h: int, latent_w: int, where: str = "term") -> tuple[int, int, int]:
    """The (frames, rows, columns) token grid of one term, ceiling division at every step."""
    frames, t_stride, s_stride, patch = _validate(term, where)
    h, w = _check_latent(latent_h, latent_w)
    return (
        _ceil_div(frames, t_stride),
        _ceil_div(_ceil_div(h, s_stride), patch),
        _ceil_div(_ceil_div(w, s_stride), patch),
    )


def multi_term_memory_patchification(terms: Sequence, latent_h: int, latent_w: int) -> dict:
    """Count the tokens of each memory term.

    Args:
        terms: a sequence of dicts with keys num_latent_frames, temporal_stride,
            spatial_stride and patch_size (ints), or of MemoryTerm.
        latent_h, latent_w: the VAE latent's height and width.

    Returns:
        {"tokens_per_term": [int, ...] in input order, "total_tokens": int,
         "token_fractions": [round(tokens / total, 4), ...] (0.0 when total is 0)}.
    """
    if isinstance(terms, (str, bytes, Mapping)) or not isinstance(terms, Sequence):
        raise TypeError(f"terms must be a sequence (list or tuple) of terms, got {type(terms).__name__}")
    _check_latent(latent_h, latent_w)
    tokens = []
    for i, term in enumerate(terms):
        t, h, w = term_grid(term, latent_h, latent_w, where=f"terms[{i}]")
        tokens.append(t * h * w)
    total = sum(tokens)
    fractions = [round(n / total, 4) if total else 0.0 for n in tokens]
    return {"tokens_per_term": tokens, "total_tokens": total, "token_fractions": fractions}
