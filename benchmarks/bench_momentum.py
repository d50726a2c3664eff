"""Benchmark of vidmem_ext.temporal_momentum against its references and x.clone().

For each shape, dtype (fp32, bf16) and mode (forward; forward+backward with x requiring grad
and a float momentum), the median time of:
  - vidmem_ext: the fused kernel (the op, through autograd for forward+backward);
  - loop: reference.temporal_momentum_loop (one PyTorch step per frame);
  - matrix: reference.temporal_momentum_matrix (the corrected U-matrix form; skipped where its
    F x F x lanes multiply-adds exceed a budget);
  - compiled loop: torch.compile of the loop reference (skipped for F > 64: it unrolls F steps);
  - accelerated-scan (CUDA only, when importable): its warp scan in its own layout, (B, C, T)
    with T contiguous and a power of two, given ready gates and tokens (frames-last shapes only).
Bandwidth is counted as useful bytes (forward: read x, write y; forward+backward: also read
dy and write dx), divided by the time, and reported as a fraction of the bandwidth of
x.clone() measured in the same run (clone moves the same bytes as the forward). On the CPU
every timed run alternates with a clone run and the fraction comes from the median of the
per-pair time ratios (the development machines are shared and noisy); on CUDA both are medians
of event-timed runs.

    python benchmarks/bench_momentum.py                 # the issue's shapes on CUDA if present, else CPU
    python benchmarks/bench_momentum.py --quick         # smaller shapes (CPU-friendly)
    python benchmarks/bench_momentum.py --device cpu

The CPU goal (forward <= 1.3x the time of x.clone() on 64 MB of fp32 with F = 16, for the
frame axis first and second) is measured in every CPU run. Results: JSON and markdown in
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # this checkout's vidmem_ext (built in place or installed editable)
from _timing import device_name, median_time, write_results  # noqa: E402

import vidmem_ext  # noqa: E402
from vidmem_ext import reference  # noqa: E402

MOMENTUM = 0.98

# (label, shape, dim)
SHAPES = [
    ("(F,B,N,C) F=16", (16, 2, 4096, 320), 0),
    ("(B,F,N,C) F=16", (2, 16, 4096, 320), 1),
    ("8*1536 lanes x 4096 frames, frames last", (8, 1536, 4096), -1),
    ("4096 lanes x 1024 frames, frames last", (4096, 1024), -1),
    ("4096 lanes x 1024 frames, frames first", (1024, 4096), 0),
]
QUICK_SHAPES = [
    ("(F,B,N,C) F=16", (16, 2, 512, 320), 0),
    ("(B,F,N,C) F=16", (2, 16, 512, 320), 1),
    ("8*192 lanes x 4096 frames, frames last", (8, 192, 4096), -1),
    ("4096 lanes x 1024 frames, frames last", (4096, 1024), -1),
    ("4096 lanes x 1024 frames, frames first", (1024, 4096), 0),
]
# The CPU goal: 64 MB of fp32 (16 Mi elements), F = 16.
CPU_GOAL_SHAPES = [
    ("CPU goal (F,B,N,C) 64 MB", (16, 4, 512, 512), 0),
    ("CPU goal (B,F,N,C) 64 MB", (4, 16, 512, 512), 1),
]
CPU_GOAL_RATIO = 1.3


def matrix_budget(device: torch.device) -> float:
    return 2e13 if device.type == "cuda" else 1e10  # multiply-adds


def load_accelerated_scan():
    """accelerated-scan's CUDA warp scan, or None (it is optional and CUDA-only)."""
    try:
        from accelerated_scan.warp import scan  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - not installed, or its CUDA build failed
        return None
    return scan


def timed_against(baseline, candidate, repeats: int, warmup: int) -> tuple[float, float]:
    """CPU timing: alternate baseline and candidate runs; return the median candidate time and the
    median of the per-pair time ratios candidate / baseline, which a shared, noisy machine
    disturbs far less than two medians taken minutes apart."""
    import statistics
    import time

    for _ in range(warmup):
        baseline(), candidate()
    times, ratios = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        baseline()
        t1 = time.perf_counter()
        candidate()
        t2 = time.perf_counter()
        times.append(t2 - t1)
        ratios.append((t2 - t1) / (t1 - t0))
    return statistics.median(times), statistics.median(ratios)


def bench_shape(label, shape, dim, dtype, device, repeats, with_compile, scan_fn, only_op=False):
    rows = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype).to(device)
    numel, elsize = x.numel(), x.element_size()
    frames = x.shape[dim]
    lanes = numel // frames
    t_clone = median_time(lambda: x.clone(), device, repeats=repeats)
    clone_gbps = 2 * numel * elsize / t_clone / 1e9
    grad_y = torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype).to(device)
    xg = x.detach().requires_grad_()

    def add(impl, mode, seconds, note="", time_ratio=None):
        moved = (2 if mode == "fwd" else 4) * numel * elsize
        gbps = moved / seconds / 1e9 if seconds else float("nan")
        # Fraction of clone bandwidth: (bytes moved / bytes clone moves) / (time / clone time).
        of_clone = (moved / (2 * numel * elsize)) / time_ratio if time_ratio else gbps / clone_gbps
        rows.append(
            {
                "shape": label,
                "size": "x".join(map(str, shape)),
                "dim": dim,
                "dtype": str(dtype).replace("torch.", ""),
                "impl": impl,
                "mode": mode,
                "median_ms": seconds * 1e3 if seconds else float("nan"),
                "GB/s": gbps,
                "of_clone_bw": of_clone if seconds else float("nan"),
                "clone_ms": t_clone * 1e3,
                "note": note,
            }
        )
        print(f"  {label:42s} {rows[-1]['dtype']:8s} {impl:16s} {mode:8s} "
              f"{rows[-1]['median_ms']:9.3f} ms  {gbps:8.1f} GB/s  {rows[-1]['of_clone_bw']:.2f} of clone {note}",
              flush=True)  # fmt: skip

    def fwd_bwd(fn):
        return lambda: torch.autograd.grad(fn(xg), xg, grad_y)

    impls = [("vidmem_ext", lambda t: vidmem_ext.temporal_momentum(t, MOMENTUM, dim))]
    if not only_op:
        impls.append(("loop", lambda t: reference.temporal_momentum_loop(t, MOMENTUM, dim)))
        if frames * frames * lanes <= matrix_budget(device):
            impls.append(("matrix", lambda t: reference.temporal_momentum_matrix(t, MOMENTUM, dim)))
        else:
            add("matrix", "fwd", 0.0, "skipped: F*F*lanes over budget")
        if with_compile and frames <= 64:
            compiled = torch.compile(reference.temporal_momentum_loop)
            impls.append(("compiled loop", lambda t: compiled(t, MOMENTUM, dim)))
        elif with_compile:
            add("compiled loop", "fwd", 0.0, "skipped: unrolls F steps")

    for impl, fn in impls:
        # The references are slow on a CPU (seconds per call for thousands of frames): fewer runs.
        n, warmup = (repeats, 2) if impl == "vidmem_ext" or device.type == "cuda" else (3, 1)
        for mode, run in (("fwd", lambda fn=fn: fn(x)), ("fwd+bwd", fwd_bwd(fn))):
            if device.type == "cuda":
                add(impl, mode, median_time(run, device, repeats=n, warmup=warmup))
            else:
                seconds, ratio = timed_against(lambda: x.clone(), run, n, warmup)
                add(impl, mode, seconds, time_ratio=ratio)

    frames_last = dim % x.dim() == x.dim() - 1
    if scan_fn is not None and frames_last and frames & (frames - 1) == 0:
        x3 = x.reshape(1, lanes, frames) if x.dim() != 3 else x
        gates = torch.full_like(x3, MOMENTUM)
        tokens = (1 - MOMENTUM) * x3
        add("accelerated-scan", "fwd", median_time(lambda: scan_fn(gates, tokens), device, repeats=repeats),
            "ready gates and tokens")  # fmt: skip
        g3 = gates.detach().requires_grad_()
        k3 = tokens.detach().requires_grad_()
        gy3 = grad_y.reshape(x3.shape)
        add("accelerated-scan", "fwd+bwd",
            median_time(lambda: torch.autograd.grad(scan_fn(g3, k3), (g3, k3), gy3), device, repeats=repeats),
            "ready gates and tokens")  # fmt: skip
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="smaller shapes")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile of the loop reference")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--goal-only", action="store_true", help="CPU: only the 64 MB goal shapes")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    repeats = args.repeats or (20 if device.type == "cuda" else 5)
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    scan_fn = load_accelerated_scan() if device.type == "cuda" else None
    print(f"device: {device_name(device)}; accelerated-scan: {'yes' if scan_fn else 'not available'}")

    rows = []
    for label, shape, dim in [] if args.goal_only else QUICK_SHAPES if args.quick else SHAPES:
        for dtype in dtypes:
            rows += bench_shape(label, shape, dim, dtype, device, repeats, not args.no_compile, scan_fn)

    notes = [f"momentum {MOMENTUM} (float); fwd+bwd: x requires grad."]
    if device.type == "cpu":
        for label, shape, dim in CPU_GOAL_SHAPES:
            goal = bench_shape(label, shape, dim, torch.float32, device, max(repeats, 15), False, None, only_op=True)
            rows += goal
            fwd = next(r for r in goal if r["mode"] == "fwd")
            ratio = 1.0 / fwd["of_clone_bw"]  # forward time / clone time (same bytes)
            verdict = "met" if ratio <= CPU_GOAL_RATIO else "NOT met"
            notes.append(
                f"{label}: forward / clone time = {ratio:.2f}, median over alternating runs "
                f"(goal <= {CPU_GOAL_RATIO}: {verdict})."
            )
            print(notes[-1])
    elif device.type == "cuda":
        for r in rows:
            if r["impl"] == "vidmem_ext" and not math.isnan(r["of_clone_bw"]):
                target = 0.85 if r["mode"] == "fwd" else 0.70
                verdict = "met" if r["of_clone_bw"] >= target else "NOT met"
                r["note"] = f"{r['note']} goal {target:.2f}: {verdict}".strip()

    columns = ["shape", "dtype", "impl", "mode", "median_ms", "GB/s", "of_clone_bw", "clone_ms", "note"]
    name = "bench_momentum_cpu_goal" if args.goal_only else "bench_momentum_quick" if args.quick else "bench_momentum"
    paths = write_results(name, device, rows, columns, " ".join(notes))
    print("wrote", *paths)


if __name__ == "__main__":
    main()
