"""Shared helpers of the benchmarks: median timing, device names, result files.

Every benchmark reports the median of repeats and ratios against a baseline
measured in the same run, and writes JSON plus a markdown table (with the
device name) under benchmarks/results/.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device="cpu", repeats: int = 10, warmup: int = 2, min_time: float = 0.0):
    """Median wall time of fn() in seconds over `repeats` runs (after `warmup` runs).

    On CUDA each run is timed with events around the call on the current stream.
    With min_time > 0, repeats grow until their total reaches min_time.
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start_all) < min_time:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        if len(times) >= 10 * max(repeats, 1):
            break
    return statistics.median(times)


def write_results(name: str, device, rows: list[dict], columns: list[str], notes: str = "") -> tuple[str, str]:
    """Write rows as benchmarks/results/<name>_<device type>.json and .md; return both paths."""
    device = torch.device(device)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    meta = {
        "benchmark": name,
        "device": device_name(device),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    stem = os.path.join(RESULTS_DIR, f"{name}_{device.type}")
    with open(stem + ".json", "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)
    lines = [f"# {name} on {meta['device']}", "", f"torch {meta['torch']}, {meta['date']}. {notes}".rstrip(), ""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        cells = [f"{row[c]:.3g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return stem + ".json", stem + ".md"
