"""Temporal momentum attention against plain SDPA and the plain-PyTorch ways of writing it (forward).

For Stable-Diffusion-like self-attention shapes (frames folded into the batch, classifier-free
guidance doubling it):
  sdpa                         plain F.scaled_dot_product_attention (momentum 0: the floor);
  loop EMA + sdpa              K and V smoothed by a frame-by-frame EMA in PyTorch, then SDPA;
  matrix EMA + sdpa            the EMA as one einsum with U[i, j], then SDPA;
  vidmem_ext                   temporal_momentum_attention: the fused op on strided views, then SDPA.
`x_sdpa` is each time over plain SDPA's in the same run.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .. import reference
from .timing import median_time

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


def _ema(x, frames, form):
    videos = x.unflatten(0, (-1, frames))  # (videos * frames, h, n, d) -> (videos, frames, h, n, d)
    fn = reference.temporal_momentum_loop if form == "loop" else reference.temporal_momentum_matrix
    return fn(videos, MOMENTUM, dim=1).flatten(0, 1)


def implementations(q, k, v, frames):
    from .. import temporal_momentum_attention

    return {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
        "loop EMA + sdpa": lambda: F.scaled_dot_product_attention(q, _ema(k, frames, "loop"), _ema(v, frames, "loop")),
        "matrix EMA + sdpa": lambda: F.scaled_dot_product_attention(
            q, _ema(k, frames, "matrix"), _ema(v, frames, "matrix")
        ),
        "vidmem_ext": lambda: temporal_momentum_attention(q, k, v, MOMENTUM, num_frames=frames),
    }


def measure(shape, dtype: torch.dtype, device: torch.device, *, quick: bool) -> list[dict]:
    label, videos, frames, heads, tokens, head_dim = shape
    repeats = 3 if quick else 10
    batch = 2 * videos * frames  # classifier-free guidance doubles the batch
    # as diffusers builds them: (batch, tokens, heads * dim) projections viewed as (batch, heads, tokens, dim)
    q, k, v = (
        torch.randn(batch, tokens, heads * head_dim, device=device, dtype=dtype)
        .view(batch, tokens, heads, head_dim)
        .transpose(1, 2)
        for _ in range(3)
    )
    impls = implementations(q, k, v, frames)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    times, wrong = {}, {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="vidmem_ext.* using the slow Python reference")
        with torch.inference_mode():
            # The three momentum forms must agree with the loop EMA (sdpa alone is the floor, momentum 0).
            want = impls["loop EMA + sdpa"]()
            for name in ("matrix EMA + sdpa", "vidmem_ext"):
                if not torch.allclose(impls[name]().float(), want.float(), atol=tol, rtol=tol):
                    wrong[name] = "skipped: result differs from loop EMA + sdpa"  # never time a wrong result
            for name, fn in impls.items():
                if name not in wrong:
                    times[name] = median_time(fn, device=device, repeats=repeats, warmup=1 if quick else 3)
    return [
        {
            "op": "attention",
            "case": f"{label}: q {batch}x{heads}x{tokens}x{head_dim}",
            "size": f"{batch}x{heads}x{tokens}x{head_dim}",
            "dtype": str(dtype).replace("torch.", ""),
            "impl": name,
            "mode": "fwd",
            "median_ms": times[name] * 1e3 if name in times else None,
            "x_sdpa": times[name] / times["sdpa"] if name in times else None,
            "note": wrong.get(name, ""),
            "wrong": name in wrong,  # a failed result check: median_rows keeps it over other runs
        }
        for name in impls
    ]


def cases(device: torch.device, *, quick: bool, dtypes=None):
    dtypes = dtypes or ([torch.float32] if device.type == "cpu" else [torch.float16, torch.bfloat16])
    return [
        (f"attention {shape[0]} {str(dtype).replace('torch.', '')}",
         lambda shape=shape, dtype=dtype: measure(shape, dtype, device, quick=quick))
        for shape in (QUICK_SHAPES if quick else SHAPES)[device.type]
        for dtype in dtypes
    ]  # fmt: skip
