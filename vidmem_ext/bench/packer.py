"""Multi-term memory packing of a FramePack-like 480p history.

History latents (B, 16, 19, 60, 104) (480x832 video, VAE factor 8), terms oldest first: 16 frames at
4x8x8, 2 at 2x4x4, 1 at 1x2x2 (2366 tokens), embed_dim 3072 (HunyuanVideo's width). Cases, each
timed in inference (no_grad) and training (forward + backward into the weights):
  pad + conv3d   the literal form, replicate pad + one F.conv3d per term + concat (the baseline);
  vidmem_ext     vidmem_ext.MultiTermMemoryPacker (one matrix product per term);
  diffusers      diffusers' FramePack HunyuanVideoHistoryPatchEmbed on the same terms, when installed.
Peak memory: bytes allocated above what was live before the call (CUDA: max_memory_allocated; CPU:
the PyTorch CPU allocator's events recorded by the profiler).
"""

from __future__ import annotations

import torch

from .timing import median_time

CHANNELS, LATENT_H, LATENT_W = 16, 60, 104
QUICK_LATENT = (12, 16)
TERMS = [  # oldest first: FramePack's 4x, 2x and 1x history kernels
    {"num_latent_frames": 16, "temporal_stride": 4, "spatial_stride": 4, "patch_size": 2},
    {"num_latent_frames": 2, "temporal_stride": 2, "spatial_stride": 2, "patch_size": 2},
    {"num_latent_frames": 1, "temporal_stride": 1, "spatial_stride": 1, "patch_size": 2},
]
SPLIT = [t["num_latent_frames"] for t in TERMS]
DIFFUSERS_INSTALL = "pip install diffusers"


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


def measure(device, dtype, *, batch=1, embed_dim=3072, quick=False, peak=True, latent=None) -> list[dict]:
    from ..packer import MultiTermMemoryPacker
    from ..reference import multi_term_memory_pack

    latent_h, latent_w = latent or (QUICK_LATENT if quick else (LATENT_H, LATENT_W))
    repeats, warmup = (3, 1) if quick else (10, 2)
    torch.manual_seed(0)
    packer = MultiTermMemoryPacker(TERMS, CHANNELS, embed_dim, device=device, dtype=dtype)
    weights = [p.weight for p in packer.projections]
    biases = [p.bias for p in packer.projections]
    history = torch.randn(batch, CHANNELS, sum(SPLIT), latent_h, latent_w, device=device, dtype=dtype)
    cases = {
        "pad + conv3d": lambda: multi_term_memory_pack(history, TERMS, weights, biases)[0],
        "vidmem_ext": lambda: packer(history)[0],
    }
    embed = framepack_embed(embed_dim, device, dtype)
    if embed is not None:
        for proj, theirs in zip(packer.projections, (embed.proj_4x, embed.proj_2x, embed.proj)):
            theirs.load_state_dict(proj.state_dict())

        def diffusers_tokens():
            old, middle, recent = history.split(SPLIT, dim=2)
            clean, clean_2x, clean_4x = embed(recent, middle, old)
            return torch.cat([clean_4x, clean_2x, clean], dim=1)

        cases["diffusers HistoryPatchEmbed"] = diffusers_tokens

    params = list(packer.parameters()) + (list(embed.parameters()) if embed is not None else [])
    expected = cases["vidmem_ext"]().detach()
    label = f"B={batch} {latent_h}x{latent_w} -> {expected.shape[1]} tokens x {embed_dim}"
    rows = []

    def clear_grads():
        for p in params:
            p.grad = None

    for mode in ("inference", "training"):
        baseline = None
        for name, tokens_fn in cases.items():
            if mode == "inference":

                def call(tokens_fn=tokens_fn):
                    with torch.no_grad():
                        return tokens_fn()
            else:

                def call(tokens_fn=tokens_fn):
                    clear_grads()
                    tokens_fn().float().sum().backward()

            out = tokens_fn().detach()
            tol = 1e-3 if dtype == torch.float32 else 5e-2
            if not torch.allclose(out.float(), expected.float(), rtol=tol, atol=tol):
                raise AssertionError(f"packer benchmark: {name} disagrees with vidmem_ext")
            seconds = median_time(call, device=device, repeats=repeats, warmup=warmup)
            peak_b = peak_bytes(call, device, setup=clear_grads) if peak else None  # training: new grads count
            baseline = seconds if baseline is None else baseline
            rows.append(
                {
                    "op": "packer",
                    "case": label,
                    "size": f"{batch}x{CHANNELS}x{sum(SPLIT)}x{latent_h}x{latent_w}",
                    "dtype": str(dtype).replace("torch.", ""),
                    "impl": name,
                    "mode": mode,
                    "median_ms": seconds * 1e3,
                    "speedup_vs_conv3d": baseline / seconds,
                    "peak_mib": None if peak_b is None else peak_b / 2**20,
                    "note": "",
                }
            )
    if embed is None:
        rows.append({"op": "packer", "case": label, "dtype": str(dtype).replace("torch.", ""), "mode": "inference",
                     "impl": "diffusers HistoryPatchEmbed", "median_ms": None,
                     "note": f"skipped: diffusers not installed ({DIFFUSERS_INSTALL})"})  # fmt: skip
    return rows


def cases(device: torch.device, *, quick: bool, dtypes=None):
    dtypes = dtypes or ([torch.float32] if device.type == "cpu" else [torch.bfloat16, torch.float32])
    embed_dim = 256 if quick else 3072
    return [
        (f"packer {str(dtype).replace('torch.', '')}",
         lambda dtype=dtype: measure(device, dtype, embed_dim=embed_dim, quick=quick, peak=not quick))
        for dtype in dtypes
    ]  # fmt: skip
