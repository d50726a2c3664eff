"""Temporal momentum against x.clone(), its references and the peers: `python -m vidmem_ext bench --ops momentum`
with its results written to benchmarks/results/bench_momentum[_quick]_<device>.{json,md}.

    python benchmarks/bench_momentum.py                 # issue 13's layouts, CUDA if present, else CPU
    python benchmarks/bench_momentum.py --quick         # tiny shapes (a smoke run)
    python benchmarks/bench_momentum.py --device cpu --threads 1

What is timed and how: vidmem_ext/bench/momentum.py (the implementations, layouts and goals) and
vidmem_ext/bench/timing.py (alternating runs on the CPU, memory kept mapped, event timing on CUDA).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import add_out_argument, write_results  # noqa: E402

from vidmem_ext.bench import collect, parse_dtypes, report  # noqa: E402
from vidmem_ext.bench.timing import allocation_mode, device_name  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repeats")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile of the loop reference")
    parser.add_argument("--dtypes", default=None, help="e.g. fp32,bf16 (default: fp32, bf16, and fp16 on the CPU)")
    parser.add_argument("--threads", type=int, default=None)
    add_out_argument(parser)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU available")
    if args.threads is not None:
        if not 1 <= args.threads <= 1024:
            parser.error(f"--threads must be in [1, 1024], got {args.threads}")
        torch.set_num_threads(args.threads)
    with allocation_mode("mapped") as mapped:
        pass  # stays in effect (see allocation_mode)
    print(f"device: {device_name(device)}; CPU memory kept mapped: {mapped}")
    try:
        dtypes = parse_dtypes(args.dtypes)
    except ValueError as exc:
        parser.error(str(exc))
    rows, goals = collect(device, ["momentum"], quick=args.quick, dtypes=dtypes,
                          compile_loop=not args.no_compile)  # fmt: skip
    print(report.text_table(rows))
    print("\n".join(goals))
    notes = "Ratios in one run; CPU: alternating with x.clone(), memory kept mapped. Goals: " + "; ".join(goals)
    paths = write_results("bench_momentum_quick" if args.quick else "bench_momentum", device, rows,
                          report.COLUMNS["momentum"], notes, out_dir=args.out)  # fmt: skip
    print("wrote", *paths)


if __name__ == "__main__":
    main()
