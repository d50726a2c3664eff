"""Multi-term memory packing of a 480p FramePack-like history: the functions of vidmem_ext/bench/packer.py
(pad + conv3d, vidmem_ext's packer, diffusers' HistoryPatchEmbed when installed; inference and
training; peak memory), results in benchmarks/results/bench_packer_<device>.{json,md}.

    python benchmarks/bench_packer.py [--quick] [--device cpu|cuda|all] [--batch B] [--embed-dim D]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import add_out_argument, write_results  # noqa: E402

from vidmem_ext.bench import packer, report  # noqa: E402
from vidmem_ext.bench.timing import device_name  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small latent, fewer repeats (a smoke run)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all", help="all: CPU, and CUDA if present")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--embed-dim", type=int, default=3072)
    add_out_argument(parser)
    args = parser.parse_args(argv)
    for flag, value in (("--batch", args.batch), ("--embed-dim", args.embed_dim)):
        if not 1 <= value <= 1 << 16:
            parser.error(f"{flag} must be in [1, {1 << 16}], got {value}")
    devices = []
    if args.device in ("cpu", "all"):
        devices.append((torch.device("cpu"), [torch.float32]))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append((torch.device("cuda"), [torch.bfloat16, torch.float32]))
    elif args.device == "cuda":
        parser.error("--device cuda: no CUDA GPU available")
    for device, dtypes in devices:
        print(f"== {device_name(device)}")
        rows = []
        for dtype in dtypes:
            rows += packer.measure(device, dtype, batch=args.batch, embed_dim=args.embed_dim, quick=args.quick)
        print(report.text_table(rows))
        notes = (
            f"Terms 16@4x8x8, 2@2x4x4, 1@1x2x2, embed_dim {args.embed_dim}. Medians. Training = forward + backward "
            "into the weights. Peak: bytes allocated above the start "
            + ("(torch.cuda.max_memory_allocated)." if device.type == "cuda" else "(PyTorch CPU allocator, profiler).")
            + (" --quick run." if args.quick else "")
        )
        print(
            "wrote",
            *write_results(
                "bench_packer_quick" if args.quick else "bench_packer",
                device,
                rows,
                report.COLUMNS["packer"],
                notes,
                out_dir=args.out,
            ),
        )


if __name__ == "__main__":
    main()
