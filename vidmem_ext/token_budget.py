"""Token budget of multi-term memory patchification (docs/semantics.md, "Multi-term memory patchification").

Autoregressive video models compress the frame history into a fixed token
budget: the history is split into terms, recent terms with fine strides and
old terms with coarse ones; each term is downsampled by its strides and then
patchified. This module only counts the tokens; `vidmem_ext.MultiTermMemoryPacker`
builds them. It also holds the text forms the command line and the demo share
(`parse_term`, `budget_table`, the FramePack-like default). Standard library
only: importing it does not import torch.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ._checks import check_int, int_text

__all__ = [
    "MemoryTerm",
    "multi_term_memory_patchification",
    "term_grid",
    "validate_term",
    "check_latent",
    "parse_term",
    "parse_latent",
    "budget_table",
    "FRAMEPACK_TERMS",
    "FRAMEPACK_LATENT",
]

_KEYS = ("num_latent_frames", "temporal_stride", "spatial_stride", "patch_size")


@dataclass(frozen=True)
class MemoryTerm:
    """One memory term: how many latent frames it covers and how hard it compresses them."""

    num_latent_frames: int
    temporal_stride: int = 1
    spatial_stride: int = 1
    patch_size: int = 1

    def __post_init__(self):
        # Stored as the plain ints they validate to (a numpy or 0-d tensor field would break ==, hash
        # and as_dict's JSON).
        for key, value in zip(_KEYS, validate_term(self, "term")):
            object.__setattr__(self, key, value)

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in _KEYS}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def validate_term(term, where: str = "term") -> tuple[int, int, int, int]:
    """(frames, temporal_stride, spatial_stride, patch_size) of a MemoryTerm or dict; errors name `where`."""
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
    frames, t_stride, s_stride, patch = (check_int(get(k), f"{where} {k!r}") for k in _KEYS)
    if frames < 0:
        raise ValueError(f"{where} 'num_latent_frames' must be >= 0, got {frames}")
    for key, value in zip(_KEYS[1:], (t_stride, s_stride, patch)):
        if value <= 0:
            raise ValueError(f"{where} {key!r} must be >= 1, got {value}")
    return frames, t_stride, s_stride, patch


def check_latent(latent_h, latent_w) -> tuple[int, int]:
    """The latent size as ints >= 0."""
    h = check_int(latent_h, "latent_h")
    w = check_int(latent_w, "latent_w")
    if h < 0 or w < 0:
        raise ValueError(f"latent_h and latent_w must be >= 0, got {h}x{w}")
    return h, w


def term_grid(term, latent_h: int, latent_w: int, where: str = "term") -> tuple[int, int, int]:
    """The (frames, rows, columns) token grid of one term, ceiling division at every step."""
    frames, t_stride, s_stride, patch = validate_term(term, where)
    h, w = check_latent(latent_h, latent_w)
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
    check_latent(latent_h, latent_w)
    tokens = []
    for i, term in enumerate(terms):
        t, h, w = term_grid(term, latent_h, latent_w, where=f"terms[{i}]")
        tokens.append(t * h * w)
    total = sum(tokens)
    fractions = [round(n / total, 4) if total else 0.0 for n in tokens]
    return {"tokens_per_term": tokens, "total_tokens": total, "token_fractions": fractions}


# --------------------------------------------------------------------------- text forms (CLI and demo)

# FramePack's history at 480p (60x104 latent), oldest first: 16 frames at
# 4x8x8, 2 at 2x4x4, 2 at 1x2x2 (kernel = (t_stride, s_stride*patch, s_stride*patch)).
FRAMEPACK_TERMS = ("16:4:4:2", "2:2:2:2", "2:1:1:2")
FRAMEPACK_LATENT = "60x104"


# Numbers in command-line text have at most this many digits: products of three of them stay within
# the 4300 digits Python converts to text (sys.get_int_max_str_digits), so every table prints.
MAX_TEXT_DIGITS = 1000


def _check_digits(parts, what: str, text: str) -> None:
    if any(len(p.strip().lstrip("+-")) > MAX_TEXT_DIGITS for p in parts):
        raise ValueError(f"{what} numbers must have at most {MAX_TEXT_DIGITS} digits, got {len(text)} characters")


def parse_term(text: str) -> MemoryTerm:
    """A term from "FRAMES:TSTRIDE:SSTRIDE:PATCH" (e.g. "16:4:4:2"); ValueError naming the text otherwise."""
    if not isinstance(text, str):
        raise TypeError(f"term must be text FRAMES:TSTRIDE:SSTRIDE:PATCH, got {type(text).__name__}")
    parts = text.split(":")
    _check_digits(parts, "term", text)
    try:
        if len(parts) != 4:
            raise ValueError
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"term must look like FRAMES:TSTRIDE:SSTRIDE:PATCH (e.g. 16:4:4:2), got {text!r}") from None
    try:
        return MemoryTerm(*values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"term {text}: {exc}") from None


def parse_latent(text: str) -> tuple[int, int]:
    """(height, width) from "HxW" (e.g. "60x104"), both >= 0; ValueError naming the text otherwise."""
    if not isinstance(text, str):
        raise TypeError(f"latent must be text HxW, got {type(text).__name__}")
    _check_digits(text.lower().split("x"), "latent", text)
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"latent must look like HxW (e.g. 60x104), got {text!r}") from None
    if h < 0 or w < 0:
        raise ValueError(f"latent height and width must be >= 0, got {text!r}")
    return h, w


def budget_table(terms, latent_h: int, latent_w: int) -> str:
    """A plain-text table of each term's token grid, tokens and share of the total."""
    result = multi_term_memory_patchification(terms, latent_h, latent_w)
    rows = [("term", "frames:t:s:patch", "token grid (t x h x w)", "tokens", "fraction")]
    # numbers too long for Python to print appear as powers of two, every other one in full
    limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
    number = functools.partial(int_text, max_digits=limit or 10**12)
    for i, (term, n, frac) in enumerate(zip(terms, result["tokens_per_term"], result["token_fractions"])):
        frames, t_stride, s_stride, patch = map(number, validate_term(term, f"terms[{i}]"))
        t, h, w = map(number, term_grid(term, latent_h, latent_w))
        rows.append((str(i), f"{frames}:{t_stride}:{s_stride}:{patch}", f"{t} x {h} x {w}", number(n), f"{frac:.4f}"))
    total = result["total_tokens"]
    rows.append(("total", "", "", number(total), "1.0000" if total else "0.0000"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["latent {}x{}".format(*map(number, check_latent(latent_h, latent_w)))]
    for j, row in enumerate(rows):
        lines.append(
            "  ".join(
                cell.rjust(width) if c >= 3 else cell.ljust(width) for c, (cell, width) in enumerate(zip(row, widths))
            )
        )
        if j == 0 or j == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
