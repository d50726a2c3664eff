"""Command line: `python -m vidmem_ext {info,budget,demo,train-demo-model,bench}`."""

from __future__ import annotations

import argparse
import json
import sys

from . import demo, demo_model
from .token_budget import (
    FRAMEPACK_LATENT,
    FRAMEPACK_TERMS,
    budget_table,
    multi_term_memory_patchification,
    parse_latent,
    parse_term,
)


def _argument_type(parse, option: str):
    """An argparse type from a parser raising ValueError: a bad value becomes a one-line usage error (exit 2).

    argparse prefixes the message with "argument OPTION:".
    """

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = option  # argparse names the type in some messages
    return convert


def _cmd_budget(args) -> int:
    terms = args.term or [parse_term(t) for t in FRAMEPACK_TERMS]
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
        lines.append(f"  {_backend.cpu_streaming_note()}")
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
        type=_argument_type(parse_latent, "--latent"),
        default=parse_latent(FRAMEPACK_LATENT),
        metavar="HxW",
        help=f"VAE latent height x width (default {FRAMEPACK_LATENT})",
    )
    p.add_argument(
        "--term",
        type=_argument_type(parse_term, "--term"),
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

    from . import bench  # light: its heavy imports happen when it runs

    bench_parser = sub.add_parser("bench", help="time every op against its references and peers (see bench/)")
    bench.add_arguments(bench_parser)

    args = parser.parse_args(argv)
    if args.command == "info":
        print("\n".join(info_lines()))
        return 0
    if args.command == "bench":
        return bench.run(args, bench_parser)
    if args.command == "demo":
        return demo.main(args, demo_parser)
    if args.command == "train-demo-model":
        return demo_model.main(args, train_parser)
    return _cmd_budget(args)


if __name__ == "__main__":
    sys.exit(main())
