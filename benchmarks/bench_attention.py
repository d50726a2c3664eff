"""Temporal momentum attention against plain SDPA and the plain-PyTorch EMA + SDPA: the functions of
vidmem_ext/bench/attention.py, results in benchmarks/results/bench_attention_<device>.{json,md}.

    python benchmarks/bench_attention.py            # CPU, and CUDA when available
    python benchmarks/bench_attention.py --quick    # small shapes, few repeats
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import add_out_argument, write_results  # noqa: E402

from vidmem_ext import _backend  # noqa: E402
from vidmem_ext.bench import attention, report  # noqa: E402
from vidmem_ext.bench.timing import device_name  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats (a smoke run)")
    parser.add_argument("--device", choices=["cpu", "cuda"], action="append", help="default: cpu, and cuda if present")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    if "cuda" in (args.device or ()) and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU available")
    for name in args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else [])):
        device = torch.device(name)
        rows = [row for _, thunk in attention.cases(device, quick=args.quick) for row in thunk()]
        print(report.text_table(rows))
        backend = "compiled kernel" if _backend.has_kernel("temporal_momentum", device.type) else "Python fallback"
        notes = (
            f"Forward, momentum {attention.MOMENTUM}, CFG batch = 2 x frames; temporal_momentum runs its {backend}. "
            f"Device: {device_name(device)}.{' Quick run.' if args.quick else ''}"
        )
        print(
            "wrote",
            *write_results(
                "bench_attention_quick" if args.quick else "bench_attention",
                device,
                rows,
                report.COLUMNS["attention"],
                notes,
                out_dir=args.out,
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
