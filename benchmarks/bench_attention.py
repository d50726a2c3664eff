"""Temporal momentum attention against the plain-PyTorch way of writing it.

For Stable-Diffusion-like self-attention shapes (frames folded into the batch,
CFG doubling it) this times, forward only:

- sdpa: plain F.scaled_dot_product_attention (momentum 0, the floor);
- loop EMA + sdpa: K and V smoothed by a frame-by-frame EMA in PyTorch, then SDPA;
- matrix EMA + sdpa: the EMA as one einsum with U[i, j] (the seed's "efficient" form, corrected), then SDPA;
- temporal_momentum_attention: vidmem_ext's fused op on strided views, then SDPA.

Ratios are against "loop EMA + sdpa" measured in the same run; "overhead" is
time over plain SDPA. Results: benchmarks/results/bench_attention_<device>.{json,md}.

    python benchmarks/bench_attention.py            # CPU, and CUDA when available
    python benchmarks/bench_attention.py --quick    # small shapes, few repeats
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch
import torch.nn.functional as F
from einops import rearrange

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _timing import device_name, median_time, write_results  # noqa: E402

from vidmem_ext import _backend, reference, temporal_momentum_attention  # noqa: E402

MOMENTUM = 0.98

# (label, videos, frames, heads, tokens, head_dim): SD 1.5 self-attention levels at 512x512 and a small case.
SHAPES = {
    "cpu": [("16x16 latent", 1, 8, 8, 256, 40), ("32x32 latent", 1, 8, 8, 1024, 40)],
    "cuda": [
        ("SD1.5 64x64, 8 frames", 1, 8, 8, 4096, 40),
        ("SD1.5 32x32, 16 frames", 1, 16, 8, 1024, 80),
        ("SD1.5 64x64, 24 frames", 1, 24, 8, 4096, 40),
    ],
}
QUICK_SHAPES = {"cpu": [("8x8 latent", 1, 8, 4, 64, 32)], "cuda": [("SD1.5 32x32, 8 frames", 1, 8, 8, 1024, 40)]}


def _ema_loop(x, frames):
    videos = rearrange(x, "(v f) h n d -> v f h n d", f=frames)
    return rearrange(reference.temporal_momentum_loop(videos, MOMENTUM, dim=1), "v f h n d -> (v f) h n d")


def _ema_matrix(x, frames):
    videos = rearrange(x, "(v f) h n d -> v f h n d", f=frames)
    return rearrange(reference.temporal_momentum_matrix(videos, MOMENTUM, dim=1), "v f h n d -> (v f) h n d")


def _cases(q, k, v, frames):
    return {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
        "loop EMA + sdpa": lambda: F.scaled_dot_product_attention(q, _ema_loop(k, frames), _ema_loop(v, frames)),
        "matrix EMA + sdpa": lambda: F.scaled_dot_product_attention(q, _ema_matrix(k, frames), _ema_matrix(v, frames)),
        "temporal_momentum_attention": lambda: temporal_momentum_attention(q, k, v, MOMENTUM, num_frames=frames),
    }


def bench(device: torch.device, quick: bool, dtype: torch.dtype):
    rows = []
    repeats = 3 if quick else 10
    for label, videos, frames, heads, tokens, dim in (QUICK_SHAPES if quick else SHAPES)[device.type]:
        batch = 2 * videos * frames  # classifier-free guidance doubles the batch
        # as diffusers builds them: (batch, tokens, heads * dim) projections viewed as (batch, heads, tokens, dim)
        q, k, v = (
            torch.randn(batch, tokens, heads * dim, device=device, dtype=dtype)
            .view(batch, tokens, heads, dim)
            .transpose(1, 2)
            for _ in range(3)
        )
        cases = _cases(q, k, v, frames)
        expected = cases["loop EMA + sdpa"]()
        got = cases["temporal_momentum_attention"]()
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(got, expected, atol=tol, rtol=tol)  # never time a wrong result
        times = {}
        with torch.inference_mode():
            for name, fn in cases.items():
                times[name] = median_time(fn, device=device, repeats=repeats, warmup=1 if quick else 3)
        for name, seconds in times.items():
            rows.append(
                {
                    "shape": f"{label}: q {batch}x{heads}x{tokens}x{dim}",
                    "method": name,
                    "ms": seconds * 1e3,
                    "vs loop EMA": times["loop EMA + sdpa"] / seconds,
                    "overhead vs sdpa": seconds / times["sdpa"],
                }
            )
            print(f"{rows[-1]['shape']:48s} {name:28s} {seconds * 1e3:9.3f} ms")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats (a smoke run)")
    parser.add_argument("--device", choices=["cpu", "cuda"], action="append", help="default: cpu, and cuda if present")
    args = parser.parse_args(argv)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    for name in devices:
        device = torch.device(name)
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="vidmem_ext.* using the slow Python reference")
            rows = bench(device, args.quick, dtype)
        backend = "compiled kernel" if _backend.has_kernel("temporal_momentum", device.type) else "Python fallback"
        notes = (
            f"{dtype} forward, momentum {MOMENTUM}, CFG batch = 2 x frames; temporal_momentum runs its {backend}. "
            f"Device: {device_name(device)}.{' Quick run.' if args.quick else ''}"
        )
        columns = ["shape", "method", "ms", "vs loop EMA", "overhead vs sdpa"]
        paths = write_results("bench_attention", device, rows, columns, notes)
        print("wrote", *paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
