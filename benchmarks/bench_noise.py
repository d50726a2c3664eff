"""Benchmark of dependency noise: the fused generator against the eager reference and torch.randn.

    python benchmarks/bench_noise.py [--device cpu|cuda|all] [--quick]

For each shape (batch axis 0, frames on axis 1): median wall time of
  fused   vidmem_ext.dependency_noise(shape, seed=0)            (one call; the fused kernels)
  eager   vidmem_ext.reference.dependency_noise(shape)          (the per-frame literal algorithm)
  randn   torch.randn(shape)                                    (a lower bound: one normal per element)
with the defaults lambda_i=0.01, random_search_times=10, linear_search_times=15, and the ratios
eager / fused and fused / randn measured in the same run. Also the peak extra memory of one fused
call beyond its output (CPU: peak resident set size via /proc/self/clear_refs; CUDA:
torch.cuda.max_memory_allocated). Goals (from the issue): CPU eager/fused >= 10 at (2, 16, 4, 64, 64);
CUDA eager/fused >= 50 there and fused/randn <= 3 at the two larger shapes.
Results: benchmarks/results/bench_noise_<device>.json and .md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _timing import device_name, median_time, write_results  # noqa: E402

import vidmem_ext  # noqa: E402
from vidmem_ext import _backend, reference  # noqa: E402

SHAPES = [(2, 16, 4, 64, 64), (1, 16, 16, 60, 104), (1, 128, 4, 64, 64)]
GOAL_SHAPE = (2, 16, 4, 64, 64)


CPU_PEAK_SCRIPT = """
import sys, torch, vidmem_ext
shape = tuple(int(s) for s in sys.argv[1].split("x"))
vidmem_ext.dependency_noise((1, 2, 64), seed=0)  # load and initialise everything first

def rss_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak resident set size to the current one
before = rss_kib("VmRSS")
out = vidmem_ext.dependency_noise(shape, seed=0)
print((rss_kib("VmHWM") - before) * 1024 - out.numel() * out.element_size())
"""


def peak_extra_mib(shape, device: torch.device) -> float | None:
    """Peak memory of one fused call beyond its output, in MiB (None where it cannot be measured).

    CUDA: the caching allocator's peak. CPU: the peak resident set size in a fresh process (in this
    one, freed memory that the allocator keeps resident would hide new allocations).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = vidmem_ext.dependency_noise(shape, seed=0, device=device)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before - out.numel() * out.element_size()) / 2**20
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    child = subprocess.run(
        [sys.executable, "-c", CPU_PEAK_SCRIPT, "x".join(map(str, shape))], env=env, capture_output=True, text=True
    )
    return int(child.stdout) / 2**20 if child.returncode == 0 else None


def measure(shape, device: torch.device, quick: bool, threads: int) -> dict:
    repeats = 3 if quick else 10
    fused = lambda: vidmem_ext.dependency_noise(shape, seed=0, device=device)  # noqa: E731
    eager = lambda: reference.dependency_noise(shape, device=device)  # noqa: E731
    randn = lambda: torch.randn(shape, device=device)  # noqa: E731
    t_fused = median_time(fused, device, repeats=repeats, warmup=1 if quick else 2)
    t_eager = median_time(eager, device, repeats=max(1, repeats // 3), warmup=1)
    t_randn = median_time(randn, device, repeats=repeats, warmup=1 if quick else 2)
    row = {
        "shape": "x".join(map(str, shape)),
        "threads": threads if device.type == "cpu" else "",
        "fused_ms": t_fused * 1e3,
        "eager_ms": t_eager * 1e3,
        "randn_ms": t_randn * 1e3,
        "eager_over_fused": t_eager / t_fused,
        "fused_over_randn": t_fused / t_randn,
        "output_MiB": torch.Size(shape).numel() * 4 / 2**20,
        "fused_peak_extra_MiB": peak_extra_mib(shape, device),
    }
    goals = []
    if device.type == "cpu" and shape == GOAL_SHAPE:
        goals.append(f"eager/fused >= 10: {'met' if row['eager_over_fused'] >= 10 else 'NOT met'}")
    if device.type == "cuda" and shape == GOAL_SHAPE:
        goals.append(f"eager/fused >= 50: {'met' if row['eager_over_fused'] >= 50 else 'NOT met'}")
    if device.type == "cuda" and shape != GOAL_SHAPE:
        goals.append(f"fused/randn <= 3: {'met' if row['fused_over_randn'] <= 3 else 'NOT met'}")
    row["goal"] = "; ".join(goals)
    extra = row["fused_peak_extra_MiB"]
    print(
        f"{device.type} {row['shape']} threads={row['threads']}: fused {row['fused_ms']:.2f} ms, eager "
        f"{row['eager_ms']:.1f} ms ({row['eager_over_fused']:.1f}x), randn {row['randn_ms']:.2f} ms (fused/randn "
        f"{row['fused_over_randn']:.2f}), peak extra {extra if extra is None else round(extra, 3)} MiB {row['goal']}",
        flush=True,
    )
    return row


def run(device: torch.device, quick: bool) -> list[dict]:
    threads = torch.get_num_threads()
    rows = [measure(shape, device, quick, threads) for shape in SHAPES]
    if device.type == "cpu" and threads > 1:
        # The eager reference runs hundreds of small parallel ops per call, which slow down far more than
        # the fused kernel when other processes share the cores; one thread is the contention-free ratio.
        torch.set_num_threads(1)
        try:
            rows.append(measure(GOAL_SHAPE, device, quick, 1))
        finally:
            torch.set_num_threads(threads)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (noisy, for a smoke run)")
    args = parser.parse_args()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    for name in devices:
        if name == "cuda" and not (torch.cuda.is_available() and _backend.cuda_compiled()):
            print("cuda: skipped (no GPU, or vidmem_ext built without its CUDA kernels)")
            continue
        device = torch.device(name)
        if not _backend.has_kernel("dependency_noise_fill_", name):
            print(f"{name}: skipped (no compiled kernel; the fallback would time the reference against itself)")
            continue
        rows = run(device, args.quick)
        columns = list(rows[0])
        notes = (
            f"Defaults lambda_i=0.01, R=10, L=15; medians{' (--quick)' if args.quick else ''}; ratios from this run; "
            f"peak extra = peak memory of one fused call beyond its float32 output. Device: {device_name(device)}."
        )
        paths = write_results("bench_noise", device, rows, columns, notes)
        print("wrote", *paths)


if __name__ == "__main__":
    main()
