"""Benchmark: multi-term memory packing of a 480p FramePack-like history.

History latents (B, 16, 19, 60, 104) (480x832 video, VAE factor 8), terms oldest
first 16 frames at 4x8x8, 2 at 2x4x4, 1 at 1x2x2 (2366 tokens), embed_dim 3072
(HunyuanVideo's width). Cases, each timed in inference (no_grad) and training
(forward + backward into the weights):

- reference: the literal form, replicate pad + one F.conv3d per term + concat
  (vidmem_ext.reference.multi_term_memory_pack); the baseline of the speedups;
- packer: vidmem_ext.MultiTermMemoryPacker (one matrix product per term);
- diffusers: diffusers' FramePack HunyuanVideoHistoryPatchEmbed on the same
  three term tensors plus the concat, when diffusers is installed.

Peak memory is what the call allocates above what was live before it: on CUDA
torch.cuda.max_memory_allocated; on CPU the running total of the tensor
allocations and frees that PyTorch's profiler records from PyTorch's CPU
allocator (memory that a library allocates on its own, e.g. oneDNN scratch
space, is not seen).

    python benchmarks/bench_packer.py [--quick] [--device cpu|cuda|all]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _timing import device_name, median_time, write_results  # noqa: E402

from vidmem_ext.packer import MultiTermMemoryPacker  # noqa: E402
from vidmem_ext.reference import multi_term_memory_pack  # noqa: E402

CHANNELS, LATENT_H, LATENT_W = 16, 60, 104
TERMS = [  # oldest first: FramePack's 4x, 2x and 1x history kernels
    {"num_latent_frames": 16, "temporal_stride": 4, "spatial_stride": 4, "patch_size": 2},
    {"num_latent_frames": 2, "temporal_stride": 2, "spatial_stride": 2, "patch_size": 2},
    {"num_latent_frames": 1, "temporal_stride": 1, "spatial_stride": 1, "patch_size": 2},
]
SPLIT = [t["num_latent_frames"] for t in TERMS]


def peak_bytes(fn, device: torch.device, setup=None) -> int | None:
    """Bytes that fn() allocates above what was live before it (after setup()), at its peak."""
    if setup is not None:
        setup()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = []

        def walk(node):
            fields = node.extra_fields
            if type(fields).__name__ == "_ExtraFields_Allocation" and str(fields.device) == "cpu":
                events.append((node.start_time_ns, fields.alloc_size))
            for child in node.children:
                walk(child)

        for root in prof.profiler.kineto_results.experimental_event_tree():
            walk(root)
    except (AttributeError, RuntimeError, ImportError):  # the profiler's internals moved: report no figure
        return None
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak


def framepack_embed(embed_dim, device, dtype):
    try:
        from diffusers.models.transformers.transformer_hunyuan_video_framepack import HunyuanVideoHistoryPatchEmbed
    except ImportError:
        return None
    return HunyuanVideoHistoryPatchEmbed(CHANNELS, embed_dim).to(device=device, dtype=dtype)


def run(device: torch.device, dtype: torch.dtype, batch: int, embed_dim: int, repeats: int, warmup: int) -> list[dict]:
    torch.manual_seed(0)
    packer = MultiTermMemoryPacker(TERMS, CHANNELS, embed_dim, device=device, dtype=dtype)
    weights = [p.weight for p in packer.projections]
    biases = [p.bias for p in packer.projections]
    history = torch.randn(batch, CHANNELS, sum(SPLIT), LATENT_H, LATENT_W, device=device, dtype=dtype)
    cases = {
        "reference (pad + conv3d)": lambda: multi_term_memory_pack(history, TERMS, weights, biases)[0],
        "packer": lambda: packer(history)[0],
    }
    embed = framepack_embed(embed_dim, device, dtype)
    if embed is not None:
        for proj, theirs in zip(packer.projections, (embed.proj_4x, embed.proj_2x, embed.proj)):
            theirs.load_state_dict(proj.state_dict())

        def diffusers_tokens():
            old, middle, recent = history.split(SPLIT, dim=2)
            clean, clean_2x, clean_4x = embed(recent, middle, old)
            return torch.cat([clean_4x, clean_2x, clean], dim=1)

        cases["diffusers HunyuanVideoHistoryPatchEmbed"] = diffusers_tokens

    params = list(packer.parameters()) + (list(embed.parameters()) if embed is not None else [])
    expected = cases["packer"]().detach()
    rows = []
    for mode in ("inference", "training"):
        baseline = None
        for name, tokens_fn in cases.items():

            def clear_grads():
                for p in params:
                    p.grad = None

            if mode == "inference":

                def call(tokens_fn=tokens_fn):
                    with torch.no_grad():
                        return tokens_fn()
            else:

                def call(tokens_fn=tokens_fn):
                    clear_grads()
                    tokens_fn().float().sum().backward()

            out = cases[name]().detach()
            tol = 1e-3 if dtype == torch.float32 else 5e-2
            assert torch.allclose(out.float(), expected.float(), rtol=tol, atol=tol), f"{name} disagrees"
            seconds = median_time(call, device=device, repeats=repeats, warmup=warmup)
            peak = peak_bytes(call, device, setup=clear_grads)  # training: the new gradients count
            baseline = seconds if baseline is None else baseline
            rows.append(
                {
                    "case": name,
                    "mode": mode,
                    "dtype": str(dtype).replace("torch.", ""),
                    "batch": batch,
                    "tokens": expected.shape[1],
                    "time_ms": seconds * 1e3,
                    "speedup_vs_reference": baseline / seconds,
                    "peak_mib": None if peak is None else peak / 2**20,
                }
            )
            print(
                f"{device.type:4s} {rows[-1]['dtype']:8s} {mode:9s} {name:42s} {seconds * 1e3:9.2f} ms"
                f"  x{baseline / seconds:5.2f}  peak {'n/a' if peak is None else f'{peak / 2**20:8.1f} MiB'}",
                flush=True,
            )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all", help="all: CPU, and CUDA if present")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--embed-dim", type=int, default=3072)
    args = parser.parse_args(argv)
    repeats, warmup = (3, 1) if args.quick else (10, 2)

    devices = []
    if args.device in ("cpu", "all"):
        devices.append((torch.device("cpu"), [torch.float32]))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append((torch.device("cuda"), [torch.bfloat16, torch.float32]))
    elif args.device == "cuda":
        parser.error("--device cuda: no CUDA GPU available")

    columns = ["case", "mode", "dtype", "batch", "tokens", "time_ms", "speedup_vs_reference", "peak_mib"]
    for device, dtypes in devices:
        print(f"== {device_name(device)}")
        rows = []
        for dtype in dtypes:
            rows += run(device, dtype, args.batch, args.embed_dim, repeats, warmup)
        notes = (
            f"History (B={args.batch}, C={CHANNELS}, T={sum(SPLIT)}, {LATENT_H}x{LATENT_W}), terms 16@4x8x8, "
            f"2@2x4x4, 1@1x2x2, embed_dim {args.embed_dim}. Median of {repeats} runs. Training = forward + "
            "backward into the weights. Peak: bytes allocated above the start "
            + ("(torch.cuda.max_memory_allocated)." if device.type == "cuda" else "(PyTorch CPU allocator, profiler).")
            + (" --quick run." if args.quick else "")
        )
        for path in write_results("bench_packer", device, rows, columns, notes):
            print("wrote", path)


if __name__ == "__main__":
    main()
