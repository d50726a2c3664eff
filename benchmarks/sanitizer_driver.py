"""Calls every CUDA kernel path of vidmem_ext once, small, for compute-sanitizer (benchmarks/gpu_check.sh).

    compute-sanitizer --tool memcheck python benchmarks/sanitizer_driver.py [--device cuda]
    python benchmarks/sanitizer_driver.py --device cpu      # the same calls on the CPU (keeps the driver honest)

Temporal momentum: the three kernels (lanes: many lanes, strided frames; lane chunks: few lanes, strided
frames; frame segments: contiguous frames), each with one chunk and with the frames split into chunks
(long sequences, few lanes), vectorised (aligned, unit lane stride) and not (a misaligned view), every
dtype; forward, backward without dm (float momentum) and with dm (a momentum tensor), with and
without `initial`. Dependency noise: the fill kernels (seed= on every dtype, frames on axis 1 and 2)
and the step op's search kernel. Every result is compared with the CPU op, so a wrong result fails
here too. Prints one line per call and exits non-zero on a mismatch.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's vidmem_ext

import vidmem_ext  # noqa: E402

TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# (what it exercises, shape, dim, view): view "misaligned" drops the first lane (no 16-byte vectors)
MOMENTUM_CASES = [
    ("lanes, one chunk", (16, 64, 96), 0, None),
    ("lanes, misaligned", (16, 64, 97), 0, "misaligned"),
    ("lane chunks, few lanes", (512, 3, 4), 0, None),
    ("lane chunks, chunked frames", (4096, 2, 4), 0, None),
    ("frame segments, one chunk", (256, 300), -1, None),
    ("frame segments, chunked frames", (2, 8192), -1, None),
    ("frame segments, misaligned", (3, 4097), -1, "misaligned"),
    ("middle axis (B,C,F,H,W)", (2, 4, 16, 6, 8), 2, None),
]
NOISE_CASES = [((2, 5, 4, 8, 8), 1), ((1, 3, 6, 4, 8), 2), ((3, 4, 33), 1)]


def check(label, got, want, dtype, failures, factor=1):
    """Each result within factor * TOL[dtype] of the CPU's, relative to the largest magnitude (at least 1),
    as the test suite compares. Elementwise relative tolerances are too tight for sums over many frames
    (dm): nvcc contracts multiply-adds into FMAs, g++ here does not, so the last bits differ."""
    got = [g for g in (got if isinstance(got, tuple | list) else [got]) if g is not None]
    want = [w for w in (want if isinstance(want, tuple | list) else [want]) if w is not None]
    worst, ok = 0.0, len(got) == len(want)
    for g, w in zip(got, want):
        g, w = g.detach().cpu().double(), w.detach().cpu().double()
        if g.shape != w.shape:
            ok = False
            continue
        if w.numel():
            same = (g == w) | (g.isnan() & w.isnan())  # equal infinities and NaN where both have one
            err = torch.where(same, 0.0, (g - w).abs()).max().item()
            relative = err / max(1.0, w.abs().max().item())
            ok = ok and relative <= factor * TOL[dtype]  # False for NaN
            worst = max(worst, relative) if relative == relative else float("nan")
    print(f"{'ok  ' if ok else 'FAIL'} {label} (max error {worst:.2g} of the largest magnitude)", flush=True)
    if not ok:
        failures.append(f"{label} ({worst:.2g})")


def momentum_calls(device, failures):
    gen = torch.Generator().manual_seed(0)
    for label, shape, dim, view in MOMENTUM_CASES:
        for dtype in DTYPES:
            x_cpu = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
            if view == "misaligned":
                x_cpu = x_cpu[..., 1:]
            x_dev = x_cpu.to(device) if view is None else x_cpu.contiguous().to(device)
            if view == "misaligned":  # the same values, but a view one element off its 16-byte-aligned storage
                padded = torch.zeros(shape, dtype=dtype, device=device)
                padded[..., 1:] = x_dev
                x_dev = padded[..., 1:]
            d = dim % x_cpu.dim()
            slice_shape = x_cpu.shape[:d] + x_cpu.shape[d + 1 :]
            m_cpu = torch.rand(slice_shape, generator=gen, dtype=torch.float64).mul(0.5).add(0.45).to(dtype)
            init_cpu = torch.randn(slice_shape, generator=gen, dtype=torch.float64).to(dtype)
            dy_cpu = torch.randn(x_cpu.shape, generator=gen, dtype=torch.float64).to(dtype)
            tag = f"momentum {label} {str(dtype).replace('torch.', '')}"
            y = vidmem_ext.temporal_momentum(x_dev, 0.9, dim)
            check(f"{tag} forward", y, vidmem_ext.temporal_momentum(x_cpu, 0.9, dim), dtype, failures)
            for with_dm in (False, True):
                for with_initial in (False, True):
                    results = []
                    for dev in (device, torch.device("cpu")):
                        xg = x_cpu.to(dev).detach().requires_grad_()
                        m = m_cpu.to(dev).requires_grad_() if with_dm else 0.9
                        init = init_cpu.to(dev).requires_grad_() if with_initial else None
                        out = vidmem_ext.temporal_momentum(xg, m, dim, initial=init)
                        leaves = [xg] + ([m] if with_dm else []) + ([init] if with_initial else [])
                        results.append(torch.autograd.grad(out, leaves, dy_cpu.to(dev)))
                    what = f"backward{' dm' if with_dm else ''}{' initial' if with_initial else ''}"
                    # as tests/test_temporal_momentum.py: 2x the tolerance for gradients, 10x for dm (a sum over frames)
                    check(f"{tag} {what}", results[0], results[1], dtype, failures, factor=10 if with_dm else 2)


def noise_calls(device, failures):
    for shape, frame_dim in NOISE_CASES:
        for dtype in DTYPES:
            tag = f"noise fill {'x'.join(map(str, shape))} frame_dim={frame_dim} {str(dtype).replace('torch.', '')}"
            got = vidmem_ext.dependency_noise(shape, seed=7, frame_dim=frame_dim, device=device, dtype=dtype)
            want = vidmem_ext.dependency_noise(shape, seed=7, frame_dim=frame_dim, device="cpu", dtype=dtype)
            check(tag, got, want, dtype if dtype == torch.float64 else torch.float32, failures)
    gen = torch.Generator().manual_seed(1)
    for batch, candidates, numel in ((1, 10, 256), (3, 4, 1000), (2, 1, 64), (2, 10, 200000)):  # last: many chunks
        for dtype in DTYPES:
            prev = torch.randn(batch, numel, generator=gen, dtype=torch.float64).to(dtype)
            cand = torch.randn(candidates, batch, numel, generator=gen, dtype=torch.float64).to(dtype)
            tag = f"noise step B={batch} R={candidates} n={numel} {str(dtype).replace('torch.', '')}"
            got = vidmem_ext.dependency_noise_step(prev.to(device), cand.to(device), 0.01)
            want = vidmem_ext.dependency_noise_step(prev, cand, 0.01)
            check(tag, got, want, dtype, failures)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU available", file=sys.stderr)
        return 2
    from vidmem_ext import _backend

    missing = [op for op, devices in _backend.fallbacks().items() if device.type in devices]
    if missing:
        print(f"no compiled {device.type} kernel for: {', '.join(missing)} (the driver would test the fallback)")
        return 2
    failures: list[str] = []
    momentum_calls(device, failures)
    noise_calls(device, failures)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(f"driver: {len(failures)} mismatches" + (": " + "; ".join(failures) if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
