"""Timing primitives shared by every benchmark: device names, medians, alternating runs, allocation modes.

On CUDA each run is timed with events on the current stream. On the CPU (development machines are
shared and noisy) a candidate is timed in alternating blocks with its baseline (usually `x.clone()`),
and the ratio is the median of the per-block ratios, which load from other processes disturbs far
less than two medians taken minutes apart.

Allocation modes (CPU, glibc): with "mapped", large allocations come from the heap and freed memory
stays mapped (the mmap and trim thresholds raised through mallopt), so a call pays for moving its
bytes, not for the page faults of a freshly mapped output; "fresh" maps every allocation over 64 KiB
anew (what an output of more than 32 MB gets by default). The benchmarks report both.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable

import torch

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's largest mmap threshold on 64-bit hosts
_FRESH_MMAP_THRESHOLD = 64 * 2**10
_libc = None


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
    threads = torch.get_num_threads()
    return f"{cpu} ({threads} thread{'' if threads == 1 else 's'})"


def build_info() -> dict:
    """torch version and build, vidmem_ext version and what was compiled."""
    from .. import __version__, _backend

    compiled = "CPU+CUDA" if _backend.cuda_compiled() else "CPU" if _backend.compiled() else "none (Python fallback)"
    return {
        "torch": torch.__version__,
        "torch_build": f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only",
        "vidmem_ext": __version__,
        "compiled": compiled,
        "python": platform.python_version(),
    }


def sync(device: torch.device | str):
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device="cpu", repeats: int = 10, warmup: int = 2, min_time: float = 0.0):
    """Median time of fn() in seconds over `repeats` runs after `warmup` runs (CUDA: event timing).

    With min_time > 0, repeats grow until their total reaches min_time (at most 10x repeats).
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    sync(device)
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


def alternating(baseline: Callable[[], object], candidate: Callable[[], object], repeats: int, warmup: int = 1,
                block: int = 3):  # fmt: skip
    """CPU: run baseline and candidate in alternating blocks; return (median candidate seconds, median of the
    per-block ratios candidate time / baseline time).

    Each block runs one function `block` times and times all runs but the first, so every timed run
    follows a run of the same function: each is measured in its own steady state, not in the cache
    state the other one left (a 25 MB op that streams its output past the caches leaves its input
    cached for a following clone, and the reverse). The blocks alternate, so load from other
    processes affects both alike.
    """
    for _ in range(warmup):
        baseline()
        candidate()
    block = max(int(block), 1)

    def timed_block(fn):
        times = []
        for i in range(block):
            t0 = time.perf_counter()
            fn()
            if i > 0 or block == 1:
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    times, ratios = [], []
    for _ in range(max(repeats, 1)):
        base = timed_block(baseline)
        cand = timed_block(candidate)
        times.append(cand)
        ratios.append(cand / max(base, 1e-9))
    return statistics.median(times), statistics.median(ratios)


def _mallopt(param: int, value: int) -> bool:
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    try:
        return bool(_libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)))
    except AttributeError:  # not glibc
        return False


@contextlib.contextmanager
def allocation_mode(mode: str):
    """Run the block with CPU allocations kept "mapped" or mapped "fresh" each time (see the module doc).

    Yields whether the mode took effect (False where mallopt is missing: not Linux/glibc). On leaving,
    the heap mode stays (glibc has no way to restore its dynamic threshold); "mapped" is the default
    the benchmarks use, so they leave the process in it.
    """
    if mode not in ("mapped", "fresh"):
        raise ValueError(f"allocation mode must be 'mapped' or 'fresh', got {mode!r}")
    if mode == "mapped":
        ok = _mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and _mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    else:
        ok = _mallopt(_M_MMAP_THRESHOLD, _FRESH_MMAP_THRESHOLD) and _mallopt(_M_TRIM_THRESHOLD, 128 * 2**10)
    try:
        yield ok
    finally:
        if mode == "fresh":
            _mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
            _mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)


MAPPED_LIMIT_BYTES = _MMAP_THRESHOLD_MAX  # larger allocations are always mapped fresh by glibc


class Progress:
    """A progress bar on stderr (tqdm when installed, else one line rewritten in place); off when quiet."""

    def __init__(self, total: int, enabled: bool = True, desc: str = "bench"):
        self.total, self.count, self.enabled, self.desc = total, 0, enabled, desc
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)
            except ImportError:
                pass

    def step(self, label: str):
        self.count += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(label[:40], refresh=False)
            self._bar.update(1)
        else:
            print(f"\r{self.desc} {self.count}/{self.total} {label[:50]:50s}", end="", file=sys.stderr, flush=True)

    def close(self):
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            print(file=sys.stderr)


def iterate(items: Iterable, progress: Progress | None, label=str):
    for item in items:
        yield item
        if progress is not None:
            progress.step(label(item))
