"""The cases where the GPU goals were missed, for Nsight Compute (benchmarks/gpu_check.sh, stage 6).

    ncu --profile-from-start off --csv --page raw --metrics ... python benchmarks/profile_driver.py
    python benchmarks/profile_driver.py --device cpu       # the same calls on the CPU (keeps it honest)
    python benchmarks/profile_driver.py --report ncu.csv    # one line per profiled kernel
    python benchmarks/profile_driver.py --ncu-args          # the kernel filter and metrics to pass ncu

Each case runs twice outside the profiled range (warm-up: caching allocator, first launches), then
once inside it (torch.cuda.profiler.start/stop), so ncu replays only our kernels of that one call:

- momentum forward, (F,B,N,C) F = 16, 672 MB fp32: the bandwidth-bound reference (0.89 of clone on
  the H200);
- momentum forward, (F,B,N,C) F = 1024, 25 MB fp32: 6144 lanes, the chunked scan (0.37);
- momentum forward+backward, (F,B,N,C) F = 16, 25 MB fp32 (0.26; host-bound);
- dependency noise (1, 16, 4, 64, 64): one fill launch per frame, each with the next frame's search
  (10.8x one randn at this size, 77x at 128 frames).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's vidmem_ext

import vidmem_ext  # noqa: E402

# ncu's raw metrics, in the report's column order (name, heading)
METRICS = [
    ("gpu__time_duration.sum", "us"),
    ("dram__throughput.avg.pct_of_peak_sustained_elapsed", "dram %"),
    ("sm__throughput.avg.pct_of_peak_sustained_elapsed", "sm %"),
    ("sm__warps_active.avg.pct_of_peak_sustained_active", "occupancy %"),
    ("launch__registers_per_thread", "regs"),
    ("launch__grid_size", "blocks"),
    ("launch__block_size", "threads"),
]
KERNELS = "regex:^(forward|backward)_(lanes|frames)_kernel|sum_chunk_partials_kernel|fill_frame_kernel|step_"


def cases(device: torch.device, small: bool):
    """(label, thunk) pairs; `small` shrinks the shapes for the CPU dry run."""
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    big = randn(16, 8, 4096 if not small else 16, 320 if not small else 8)
    long = randn(1024 if not small else 64, 2, 16, 192 if not small else 8)
    mid = randn(16, 2, 1024 if not small else 16, 192 if not small else 8).requires_grad_()
    grad = torch.randn_like(mid)
    noise_shape = (1, 16, 4, 64, 64) if not small else (1, 4, 2, 4, 4)
    return [
        ("momentum fwd (F,B,N,C) F=16 672 MB fp32", lambda: vidmem_ext.temporal_momentum(big, 0.98, 0)),
        ("momentum fwd (F,B,N,C) F=1024 25 MB fp32", lambda: vidmem_ext.temporal_momentum(long, 0.98, 0)),
        (
            "momentum fwd+bwd (F,B,N,C) F=16 25 MB fp32",
            lambda: torch.autograd.grad(vidmem_ext.temporal_momentum(mid, 0.98, 0), mid, grad),
        ),  # fmt: skip
        ("noise (1, 16, 4, 64, 64) fp32", lambda: vidmem_ext.dependency_noise(noise_shape, 0.5, seed=3, device=device)),
    ]


def run(device: torch.device) -> int:
    cuda = device.type == "cuda"
    todo = cases(device, small=not cuda)
    for label, thunk in todo:
        for _ in range(2):
            thunk()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.profiler.start()
        thunk()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.profiler.stop()
        print(f"ran: {label}", flush=True)
    return 0


# ncu's time units, in microseconds
TIME_UNITS = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6}


def report(path: str) -> int:
    """One line per profiled kernel from ncu's `--csv --page raw` output: a row of headings, then a
    row of units where ncu gives one, then one row per kernel ("==" lines are ncu's own messages)."""
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(line for line in f if not line.startswith("==")) if r]
    if not rows or "Kernel Name" not in rows[0]:
        print(f"no kernels profiled (see {path})")
        return 1
    head = rows[0]
    units = rows[1] if len(rows) > 1 and rows[1][0] == "" else [""] * len(head)  # the units row has no ID
    kernels = rows[2:] if units is rows[1] else rows[1:]
    col = {name: head.index(name) for name, _ in METRICS if name in head}
    name_col = head.index("Kernel Name")
    print(f"{'kernel':40s} " + " ".join(f"{h:>11s}" for _, h in METRICS))
    for r in kernels:
        if len(r) != len(head):
            continue
        base = r[name_col].split("(")[0].removeprefix("void ")  # "void ns::name<T, N>(params)" -> "name<T, N>"
        name, _, targs = base.partition("<")
        kernel = (name.split("::")[-1] + (f"<{targs}" if targs else ""))[:40]
        cells = []
        for metric, _ in METRICS:
            value = r[col[metric]] if metric in col else "-"
            if metric == "gpu__time_duration.sum" and value not in ("-", ""):
                value = f"{float(value.replace(',', '')) * TIME_UNITS.get(units[col[metric]], 1.0):.1f}"
            cells.append(f"{value:>11s}")
        print(f"{kernel:40s} " + " ".join(cells))
    return 0 if kernels else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--report", metavar="CSV", help="summarise ncu's CSV instead of running the cases")
    parser.add_argument("--ncu-args", action="store_true", help="print ncu's kernel filter and metrics, one per line")
    args = parser.parse_args(argv)
    if args.report:
        if not os.path.isfile(args.report):
            parser.error(f"--report {args.report}: no such file (ncu's CSV)")
        return report(args.report)
    if args.ncu_args:
        print(f"--kernel-name\n{KERNELS}\n--metrics\n{','.join(name for name, _ in METRICS)}")
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU available", file=sys.stderr)
        return 2
    return run(device)


if __name__ == "__main__":
    sys.exit(main())
