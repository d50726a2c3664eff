"""`python -m vidmem_ext demo --out DIR`: what the library does, in pictures, on a CPU in well under a minute.

1. Dependency noise for several lambda values: frame-to-frame correlation against frame index.
2. The temporal momentum weights U[i, j] = m^(i - j) as heat maps.
3. ZS² zero-shot video (vidmem_ext.pipelines.zero_shot_video) on a tiny built-in
   Stable Diffusion pipeline with random weights (nothing is downloaded), with
   momentum 0 and with momentum m on the same noise: a PNG strip and a GIF.
   With --model PATH (a local diffusers Stable Diffusion folder) and --prompt it
   makes a real video instead.
4. The token budget of a FramePack-like history schedule.
Then a summary of where each file went; overview.png puts 1-3 on one page.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

__all__ = ["add_arguments", "main"]

NOISE_LAMBDAS = (0.01, 0.1, 0.3, 0.6, 1.0, 1.6)
HEATMAP_MOMENTA = (0.5, 0.9, 0.98)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", metavar="DIR", help="output folder (default: demo_out)")
    parser.add_argument("--model", metavar="PATH", help="local diffusers Stable Diffusion folder (a real video)")
    parser.add_argument("--prompt", help="text prompt (needed with --model)")
    parser.add_argument("--frames", type=int, default=8, help="frames of the video (default 8)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default 4 tiny, 25 with --model)")
    parser.add_argument("--momentum", type=float, default=0.98, help="temporal momentum (default 0.98)")
    parser.add_argument(
        "--lambda",
        dest="lambda_i",
        metavar="LAMBDA",
        type=float,
        default=0.1,
        help="dependency-noise lambda (default 0.1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default=None, help="torch device for --model (default: cuda if available)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: 1 for the tiny built-in model, torch's choice with --model)",
    )


def _check_arguments(parser, args) -> None:
    if args.model is not None:
        if not os.path.isdir(args.model):
            parser.error(f"--model {args.model}: no such directory (a local diffusers Stable Diffusion folder)")
        if not os.path.isfile(os.path.join(args.model, "model_index.json")):
            parser.error(f"--model {args.model}: not a diffusers pipeline folder (it has no model_index.json)")
        if not args.prompt:
            parser.error("--model needs --prompt TEXT")
    if args.frames < 2:
        parser.error(f"--frames must be >= 2, got {args.frames}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if not 0.0 <= args.momentum <= 1.0:
        parser.error(f"--momentum must be in [0, 1], got {args.momentum}")
    if not args.lambda_i >= 0.0:
        parser.error(f"--lambda must be >= 0, got {args.lambda_i}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")


class _Steps:
    """A progress bar over the demo's steps: tqdm when installed, a plain text bar otherwise."""

    def __init__(self, names: list[str]):
        self.names, self.done = names, 0
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self.bar = None
        else:
            self.bar = tqdm(total=len(names), unit="step", bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}]")
        self._show()

    def _show(self):
        name = self.names[self.done] if self.done < len(self.names) else "done"
        if self.bar is not None:
            self.bar.set_description_str(f"demo: {name}")
        else:
            filled = round(20 * self.done / len(self.names))
            print(f"[{'#' * filled}{'.' * (20 - filled)}] {self.done}/{len(self.names)} {name}", file=sys.stderr)

    def write(self, text: str):
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text)

    def advance(self):
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        self._show()

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _frame_correlations(frames, batched: bool = False):
    """Pearson correlations of frame i-1 with i (F - 1 values) and of frame 0 with i (F values).

    frames: (F, ...) or, batched, (B, F, ...) averaged over B.
    """
    x = (frames if batched else frames[None]).flatten(2).double()
    x = x - x.mean(-1, keepdim=True)
    x = x / x.norm(dim=-1, keepdim=True)
    consecutive = (x[:, :-1] * x[:, 1:]).sum(-1).mean(0)
    with_first = (x[:, :1] * x).sum(-1).mean(0)
    return consecutive, with_first


def _noise_figure(args, steps):
    """Dependency noise for several lambdas: correlation against frame index (two panels)."""
    import torch

    from . import _plot, dependency_noise

    frames = 16
    consecutive, with_first = [], []
    for lam in NOISE_LAMBDAS:
        generator = torch.Generator().manual_seed(args.seed)
        noise = dependency_noise((8, frames, 4, 16, 16), lam, frame_dim=1, generator=generator)  # 8 samples
        c, w = _frame_correlations(noise, batched=True)
        consecutive.append((f"{lam:g}", list(range(1, frames)), c.tolist()))
        with_first.append((f"{lam:g}", list(range(frames)), w.tolist()))
    common = {"xlabel": "frame index i", "ylim": (0.0, 1.0), "legend_title": "lambda"}
    left = _plot.line_chart(consecutive, title="corr(frame i-1, frame i)", ylabel="correlation", **common)
    right = _plot.line_chart(with_first, title="corr(frame 0, frame i)", ylabel="correlation", **common)
    figure = _plot.stack([left, right])
    summary = ", ".join(f"lambda {label}: {ys[-1]:.2f}" for label, _, ys in consecutive)
    steps.write(f"dependency noise, frame-to-frame correlation at frame {frames - 1}: {summary}")
    return figure


def _momentum_figure():
    from . import _plot, reference

    panels = []
    for m in HEATMAP_MOMENTA:
        u = reference.momentum_matrix(16, m).tolist()
        panels.append(
            _plot.heatmap(u, title=f"U[i, j] = m^(i-j), m = {m:g}", xlabel="j (source frame)", ylabel="i (frame)")
        )
    return _plot.stack(panels)


def _load_pipeline(args):
    """The tiny built-in pipeline, or the local Stable Diffusion folder given by --model."""
    import torch
    from diffusers import StableDiffusionPipeline

    from .pipelines import tiny_stable_diffusion

    if args.model is None:
        return tiny_stable_diffusion(seed=0)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    # dtype through .to(): the from_pretrained keyword is `torch_dtype` in older diffusers, `dtype` in newer
    pipe = StableDiffusionPipeline.from_pretrained(args.model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def _video(pipe, args, momentum):
    """Frames (PIL) of zero_shot_video and their mean frame-to-frame correlation."""
    import numpy as np
    import torch

    from .pipelines import zero_shot_video

    frames = zero_shot_video(
        pipe,
        args.prompt or "a red fox running in the snow",
        num_frames=args.frames,
        momentum=momentum,
        lambda_i=args.lambda_i,
        generator=torch.Generator().manual_seed(args.seed),
        num_inference_steps=args.steps or (4 if args.model is None else 25),
    )
    pixels = torch.from_numpy(np.stack([np.asarray(f, dtype=np.float32) for f in frames]))
    consecutive, with_first = _frame_correlations(pixels)
    return frames, consecutive.mean().item(), with_first.tolist()


def _write_gif(path, rows, scale, frame_ms=250) -> int:
    """One GIF frame per video frame, the videos side by side; returns the frame count."""
    from PIL import Image

    from . import _plot

    count = len(rows[0][1])
    tiles = [
        _plot.stack([_plot.image_rows([(label, [video[i]])], scale=scale) for label, video in rows])
        for i in range(count)
    ]
    tiles[0].save(path, save_all=True, append_images=tiles[1:], duration=frame_ms, loop=0)
    with Image.open(path) as gif:
        return gif.n_frames


def main(args, parser=None) -> int:
    """Run the demo for parsed `args` (see add_arguments); argument errors go through parser.error."""
    parser = parser or argparse.ArgumentParser(prog="python -m vidmem_ext demo")
    _check_arguments(parser, args)
    try:
        import diffusers  # noqa: F401
        import PIL  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        print(f'the demo needs the diffusers extra: pip install -e ".[diffusers]" ({exc})', file=sys.stderr)
        return 1
    import torch

    previous_threads = torch.get_num_threads()
    threads = args.threads or (1 if args.model is None else None)
    if threads:
        # The built-in model's tensors are tiny: one thread is as fast, and several spin against each
        # other on a busy machine (2 threads on 2 loaded cores made this demo 4x slower).
        torch.set_num_threads(threads)
    # Notices from diffusers/transformers (e.g. "requires torchvision, falling back to PIL") would
    # break up the progress bar; errors still show.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    verbosity = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        return _run(args)
    finally:
        torch.set_num_threads(previous_threads)
        diffusers_logging.set_verbosity(verbosity[0])
        transformers_logging.set_verbosity(verbosity[1])


def _run(args) -> int:
    import warnings

    from PIL import Image

    from . import _plot
    from .token_budget import FRAMEPACK_LATENT, FRAMEPACK_TERMS, budget_table, parse_term

    start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    paths = {
        "noise": os.path.join(args.out, "noise_correlation.png"),
        "momentum": os.path.join(args.out, "momentum_weights.png"),
        "frames": os.path.join(args.out, "frames.png"),
        "gif": os.path.join(args.out, "frames.gif"),
        "overview": os.path.join(args.out, "overview.png"),
    }
    model_name = "tiny built-in pipeline (random weights)" if args.model is None else args.model
    steps = _Steps(
        [
            "dependency noise",
            "momentum weights",
            "load pipeline",
            "video, momentum 0",
            f"video, momentum {args.momentum:g}",
            "write frames",
            "token budget",
        ]
    )
    with warnings.catch_warnings():
        # The library's own "slow Python reference" notice is shown once by `info`; keep the bar clean.
        warnings.filterwarnings("ignore", message="vidmem_ext.* using the slow Python reference")
        noise_figure = _noise_figure(args, steps)
        noise_figure.save(paths["noise"])
        steps.advance()

        momentum_figure = _momentum_figure()
        momentum_figure.save(paths["momentum"])
        steps.advance()

        pipe = _load_pipeline(args)
        steps.advance()
        baseline, baseline_corr, baseline_curve = _video(pipe, args, 0.0)
        steps.advance()
        frames, frames_corr, frames_curve = _video(pipe, args, args.momentum)
        steps.advance()

    rows = [
        (f"momentum 0 (plain self-attention): frame-to-frame correlation {baseline_corr:.2f}", baseline),
        (f"momentum {args.momentum:g} (ZS2): frame-to-frame correlation {frames_corr:.2f}", frames),
    ]
    scale = max(1, 64 // frames[0].width)
    title = f"zero_shot_video: {args.frames} frames, lambda {args.lambda_i:g}, same seed, {model_name}"
    strip = _plot.image_rows(rows, scale=scale, title=title)
    strip.save(paths["frames"])
    videos = [("momentum 0", baseline), (f"momentum {args.momentum:g}", frames)]
    gif_frames = _write_gif(paths["gif"], videos, scale=max(1, 128 // frames[0].width))
    curves = [(f"{m:g}", list(range(args.frames)), c) for m, c in ((0, baseline_curve), (args.momentum, frames_curve))]
    chart = _plot.line_chart(
        curves, title="video: corr(frame 0, frame i)", xlabel="frame index i", ylabel="correlation",
        ylim=(0.0, 1.0), legend_title="momentum", size=(400, 260),
    )  # fmt: skip
    overview = [noise_figure, momentum_figure, _plot.stack([strip, chart])]
    # 256 colours keep the page small enough for a README (a third of the full-colour size)
    page = _plot.stack(overview, vertical=True, gap=16)
    page.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(paths["overview"])
    steps.write(
        f"video frame-to-frame correlation: momentum 0 -> {baseline_corr:.3f}, "
        f"momentum {args.momentum:g} -> {frames_corr:.3f}"
    )
    steps.advance()

    latent_h, latent_w = (int(v) for v in FRAMEPACK_LATENT.split("x"))
    table = budget_table([parse_term(t) for t in FRAMEPACK_TERMS], latent_h, latent_w)
    steps.write("token budget of a FramePack-like history schedule:\n" + table)
    steps.advance()
    steps.close()

    elapsed = time.perf_counter() - start
    print(f"\ndemo finished in {elapsed:.1f} s; files:")
    lambdas = ", ".join(map(str, NOISE_LAMBDAS))
    print(f"  {paths['noise']}: dependency noise, correlation vs frame index for lambda {lambdas}")
    print(f"  {paths['momentum']}: momentum weights U[i, j] for m = {', '.join(map(str, HEATMAP_MOMENTA))}")
    print(f"  {paths['frames']}: {args.frames} frames, momentum 0 vs {args.momentum:g} ({model_name})")
    print(f"  {paths['gif']}: the same, animated ({gif_frames} frames)")
    print(f"  {paths['overview']}: all three pictures on one page")
    return 0
