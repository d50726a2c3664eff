"""Dependency noise: the fused generator against the eager reference and one torch.randn of the output.

For each shape (batch axis 0, frames on axis 1) and dtype, the median time of
  vidmem_ext    vidmem_ext.dependency_noise(shape, seed=0)     (the fused kernels)
  eager         vidmem_ext.reference.dependency_noise(shape)   (the per-frame literal algorithm)
  torch.randn   torch.randn(shape)                              (a lower bound: one normal per element)
with the defaults lambda_i=0.01, random_search_times=10, linear_search_times=15. `x_randn` is each
time over the randn time of the same run. Optionally the peak extra memory of one fused call beyond
its output (CPU: peak resident set size in a fresh process; CUDA: the caching allocator's peak).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import torch

from .. import reference
from .timing import median_time

SHAPES = [(2, 16, 4, 64, 64), (1, 16, 16, 60, 104), (1, 128, 4, 64, 64)]
QUICK_SHAPES = [(1, 8, 4, 16, 16)]
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
    """Peak memory of one fused float32 call beyond its output, in MiB (None where it cannot be measured).

    CPU: the peak resident set size in a fresh process (in this one, freed memory that the allocator
    keeps resident would hide new allocations).
    """
    from .. import dependency_noise

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = dependency_noise(shape, seed=0, device=device)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before - out.numel() * out.element_size()) / 2**20
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]))
    child = subprocess.run(
        [sys.executable, "-c", CPU_PEAK_SCRIPT, "x".join(map(str, shape))], env=env, capture_output=True, text=True
    )
    return int(child.stdout) / 2**20 if child.returncode == 0 else None


def check(got, shape, dtype: torch.dtype, device: torch.device, *, cpu_bits=None) -> str:
    """Why `got` is not dependency noise of shape and dtype on device; "" when it passes.

    Each frame of dependency noise is standard normal element by element (frames depend on each other,
    elements within a frame do not), so each frame's mean and standard deviation must lie within eight
    standard errors (plus the dtype's rounding) of 0 and 1. `cpu_bits`, when given, is the CPU kernel's
    output for the same seed, which a CUDA output must match within the dtype's rounding.
    """
    if tuple(got.shape) != tuple(shape) or got.dtype != dtype or got.device.type != device.type:
        return f"a {tuple(got.shape)} {got.dtype} tensor on {got.device.type}"
    values = got.detach().double().cpu()
    if not values.isfinite().all():
        return "non-finite values"
    frames = values.movedim(1, 0).flatten(1)  # (frames, elements of a frame)
    n = frames.size(1)
    if n >= 2:
        rounding = torch.finfo(dtype).eps
        mean_err = frames.mean(dim=1).abs().max().item()
        std_err = (frames.std(dim=1) - 1).abs().max().item()
        if mean_err > 8 / math.sqrt(n) + rounding or std_err > 8 / math.sqrt(2 * n) + rounding:
            return f"a frame is not standard normal (mean off by {mean_err:.3g}, std off by {std_err:.3g})"
    if cpu_bits is not None:
        tol = 1e-5 if dtype in (torch.float32, torch.float64) else 1e-2
        if not torch.allclose(values, cpu_bits.double(), rtol=tol, atol=tol):
            return "differs from the CPU kernel's output for the same seed"
    return ""


def measure(shape, dtype: torch.dtype, device: torch.device, *, quick: bool, peak: bool = False) -> list[dict]:
    from .. import dependency_noise

    repeats = 3 if quick else 10
    impls = {
        "vidmem_ext": lambda: dependency_noise(shape, seed=0, device=device, dtype=dtype),
        "eager": lambda: reference.dependency_noise(shape, device=device, dtype=dtype),
        "torch.randn": lambda: torch.randn(shape, device=device, dtype=dtype),
    }
    cpu_bits = dependency_noise(shape, seed=0, dtype=dtype) if device.type != "cpu" else None
    wrong = {
        "vidmem_ext": check(impls["vidmem_ext"](), shape, dtype, device, cpu_bits=cpu_bits),
        "eager": check(impls["eager"](), shape, dtype, device),
    }
    times = {}
    for name, fn in impls.items():
        if wrong.get(name):
            continue  # never time a wrong result
        n = max(1, repeats // 3) if name == "eager" else repeats
        times[name] = median_time(fn, device, repeats=n, warmup=1 if quick else 2)
    extra = peak_extra_mib(shape, device) if peak and dtype == torch.float32 and "vidmem_ext" in times else None
    rows = []
    for name in impls:
        seconds = times.get(name)
        note = f"skipped: {wrong[name]}" if wrong.get(name) else ""
        if name == "vidmem_ext" and seconds is not None:
            note = f"eager / fused {times['eager'] / seconds:.1f}x" if "eager" in times else ""
            if extra is not None:
                note += f"{'; ' if note else ''}peak extra {extra:.2f} MiB"
        rows.append(
            {
                "op": "noise",
                "case": "x".join(map(str, shape)),
                "size": "x".join(map(str, shape)),
                "dtype": str(dtype).replace("torch.", ""),
                "impl": name,
                "mode": "fwd",
                "median_ms": None if seconds is None else seconds * 1e3,
                "x_randn": None if seconds is None else seconds / times["torch.randn"],
                "note": note,
                "wrong": bool(wrong.get(name)),  # a failed result check: median_rows keeps it over other runs
            }
        )
    return rows


def cases(device: torch.device, *, quick: bool, dtypes=None, peak: bool = False):
    out = []
    for shape in QUICK_SHAPES if quick else SHAPES:
        for dtype in dtypes or [torch.float32, torch.bfloat16]:
            label = f"noise {'x'.join(map(str, shape))} {str(dtype).replace('torch.', '')}"
            out.append((label, lambda shape=shape, dtype=dtype: measure(shape, dtype, device, quick=quick, peak=peak)))
    return out


def goals(rows: list[dict], device: torch.device) -> list[str]:
    lines = []
    goal_case = "x".join(map(str, GOAL_SHAPE))
    randn_cases = ("2x16x4x64x64", "1x128x4x64x64") if device.type == "cuda" else ()
    by_case = {}
    for r in rows:
        if r["op"] == "noise" and r["dtype"] == "float32":
            by_case.setdefault(r["case"], {})[r["impl"]] = r
        elif r["op"] == "noise" and r["impl"] == "-" and r["case"].endswith(" float32"):
            # a case the --budget skipped: its goals are not measured, and so not met
            if any(f" {c} " in r["case"] for c in (goal_case, *randn_cases)):
                lines.append(f"{r['case']}: not measured ({r['note']}) NOT met")

    def measured(row):
        return row is not None and row.get("median_ms") is not None

    for case, impls in by_case.items():
        fused, eager = impls.get("vidmem_ext"), impls.get("eager")
        if case == goal_case:
            target = 50 if device.type == "cuda" else 10
            if measured(fused) and measured(eager):
                speedup = eager["median_ms"] / fused["median_ms"]
                lines.append(f"noise {case}: eager / fused {speedup:.1f}x (goal >= {target}) "
                             f"{'met' if speedup >= target else 'NOT met'}")  # fmt: skip
            else:
                lines.append(f"noise {case}: eager / fused not measured (goal >= {target}) NOT met")
        if case in randn_cases:
            ratio = fused.get("x_randn") if measured(fused) else None
            if ratio is None:
                lines.append(f"noise {case}: fused / randn not measured (goal <= 3) NOT met")
            else:
                lines.append(
                    f"noise {case}: fused / randn {ratio:.2f}x (goal <= 3) {'met' if ratio <= 3 else 'NOT met'}"
                )
    return lines
