"""Dependency noise: the fused generator against the eager reference and torch.randn, with the peak extra
memory of one fused call; the functions of vidmem_ext/bench/noise.py, results in benchmarks/results/.

    python benchmarks/bench_noise.py [--device cpu|cuda|all] [--quick]

Goals (from the issue): CPU eager/fused >= 10 at (2, 16, 4, 64, 64); CUDA eager/fused >= 50 there and
fused/randn <= 3 at (2, 16, 4, 64, 64) and (1, 128, 4, 64, 64). On the CPU the goal shape is measured
again on one thread: the eager reference's hundreds of small parallel ops slow down far more than the
fused kernel when other processes share the cores.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import add_out_argument, write_results  # noqa: E402

from vidmem_ext import _backend  # noqa: E402
from vidmem_ext.bench import noise, report  # noqa: E402
from vidmem_ext.bench.timing import device_name  # noqa: E402


def run(device: torch.device, quick: bool) -> list[dict]:
    threads = torch.get_num_threads()
    rows = []
    for shape in noise.QUICK_SHAPES if quick else noise.SHAPES:
        rows += noise.measure(shape, torch.float32, device, quick=quick, peak=True)
    if device.type == "cpu" and threads > 1:
        torch.set_num_threads(1)
        try:
            for row in noise.measure(noise.GOAL_SHAPE, torch.float32, device, quick=quick):
                rows.append({**row, "case": f"{row['case']} (1 thread)"})
        finally:
            torch.set_num_threads(threads)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="tiny shape, fewer repeats (a smoke run)")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    for name in ["cpu", "cuda"] if args.device == "all" else [args.device]:
        if name == "cuda" and not (torch.cuda.is_available() and _backend.cuda_compiled()):
            print("cuda: skipped (no GPU, or vidmem_ext built without its CUDA kernels)")
            continue
        if not _backend.has_kernel("dependency_noise_fill_", name):
            print(f"{name}: skipped (no compiled kernel; the fallback would time the reference against itself)")
            continue
        device = torch.device(name)
        rows = run(device, args.quick)
        goals = noise.goals(rows, device)
        print(report.text_table(rows))
        print("\n".join(goals))
        notes = (
            f"Defaults lambda_i=0.01, R=10, L=15; medians{' (--quick)' if args.quick else ''}; ratios from this run; "
            f"peak extra = peak memory of one fused call beyond its float32 output. Device: {device_name(device)}. "
            + "; ".join(goals)
        )
        print(
            "wrote",
            *write_results(
                "bench_noise_quick" if args.quick else "bench_noise",
                device,
                rows,
                report.COLUMNS["noise"],
                notes,
                out_dir=args.out,
            ),
        )


if __name__ == "__main__":
    main()
