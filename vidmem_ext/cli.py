"""Command line: `python -m vidmem_ext {info,budget,demo,train-demo-model}`."""

from __future__ import annotations

import argparse
import json
import sys

from . import demo, demo_model
from .token_budget import MemoryTerm, multi_term_memory_patchification, term_grid

# FramePack's history at 480p (60x104 latent), oldest first: 16 frames at
# 4x8x8, 2 at 2x4x4, 2 at 1x2x2 (kernel = (t_stride, s_stride*patch, s_stride*patch)).
FRAMEPACK_TERMS = ("16:4:4:2", "2:2:2:2", "2:1:1:2")
FRAMEPACK_LATENT = "60x104"


def _parse_latent(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--latent must look like HxW (e.g. 60x104), got {text!r}") from None
    return h, w


def _parse_term(text: str) -> MemoryTerm:
    parts = text.split(":")
    try:
        if len(parts) != 4:
            raise ValueError
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--term must look like FRAMES:TSTRIDE:SSTRIDE:PATCH (e.g. 16:4:4:2), got {text!r}"
        ) from None
    try:
        return MemoryTerm(*values)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"--term {text}: {exc}") from None


def budget_table(terms, latent_h: int, latent_w: int) -> str:
    result = multi_term_memory_patchification(terms, latent_h, latent_w)
    rows = [("term", "frames:t:s:patch", "token grid (t x h x w)", "tokens", "fraction")]
    for i, (term, n, frac) in enumerate(zip(terms, result["tokens_per_term"], result["token_fractions"])):
        t, h, w = term_grid(term, latent_h, latent_w)
        spec = f"{term.num_latent_frames}:{term.temporal_stride}:{term.spatial_stride}:{term.patch_size}"
        rows.append((str(i), spec, f"{t} x {h} x {w}", str(n), f"{frac:.4f}"))
    rows.append(("total", "", "", str(result["total_tokens"]), "1.0000" if result["total_tokens"] else "0.0000"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = [f"latent {latent_h}x{latent_w}"]
    for j, row in enumerate(rows):
        lines.append(
            "  ".join(
                cell.rjust(width) if c >= 3 else cell.ljust(width) for c, (cell, width) in enumerate(zip(row, widths))
            )
        )
        if j == 0 or j == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cmd_budget(args) -> int:
    terms = args.term or [_parse_term(t) for t in FRAMEPACK_TERMS]
    h, w = args.latent
    if args.json:
        print(json.dumps(multi_term_memory_patchification(terms, h, w)))
    else:
        if not args.term:
            print("FramePack-like history (pass --term to choose your own)")
        print(budget_table(terms, h, w))
    return 0


def info_lines() -> list[str]:
    import torch

    from . import __version__, _backend

    lines = [
        f"vidmem_ext {__version__}",
        f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}; GPU available: {torch.cuda.is_available()})",
    ]
    if _backend.compiled():
        lines.append("compiled CPU kernels: yes")
        if _backend.cuda_compiled():
            lines.append(f"compiled CUDA kernels: yes (archs {', '.join(_backend.cuda_archs()) or 'unknown'})")
        else:
            lines.append("compiled CUDA kernels: no (built without CUDA)")
    else:
        lines.append(f"compiled CPU kernels: no ({_backend.LOAD_ERROR})")
        lines.append("compiled CUDA kernels: no")
    for op, devices in _backend.fallbacks().items():
        state = f"Python reference fallback on {', '.join(devices)}" if devices else "compiled kernels"
        lines.append(f"  {op}: {state}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vidmem_ext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("info", help="version, what was compiled, which ops fall back to Python")

    p = sub.add_parser("budget", help="token budget of a multi-term memory schedule")
    p.add_argument(
        "--latent",
        type=_parse_latent,
        default=_parse_latent(FRAMEPACK_LATENT),
        metavar="HxW",
        help=f"VAE latent height x width (default {FRAMEPACK_LATENT})",
    )
    p.add_argument(
        "--term",
        type=_parse_term,
        action="append",
        metavar="FRAMES:TSTRIDE:SSTRIDE:PATCH",
        help="one memory term, oldest first; repeat for more (default: FramePack-like)",
    )
    p.add_argument("--json", action="store_true", help="print the result dict as JSON")

    demo_parser = sub.add_parser("demo", help="pictures of what the library does, and a zero-shot video (see demo.py)")
    demo.add_arguments(demo_parser)

    train_parser = sub.add_parser(
        "train-demo-model", help="train the demo's small text-to-image model from scratch (see demo_model.py)"
    )
    demo_model.add_arguments(train_parser)

    args = parser.parse_args(argv)
    if args.command == "info":
        print("\n".join(info_lines()))
        return 0
    if args.command == "demo":
        return demo.main(args, demo_parser)
    if args.command == "train-demo-model":
        return demo_model.main(args, train_parser)
    return _cmd_budget(args)


if __name__ == "__main__":
    sys.exit(main())
