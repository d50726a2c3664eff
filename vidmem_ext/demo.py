"""`python -m vidmem_ext demo --out DIR`: what the library does, in pictures, on a CPU in well under a minute.

1. Dependency noise for several lambda values: frame-to-frame correlation against frame index.
2. The temporal momentum weights U[i, j] = m^(i - j) as heat maps.
3. ZS² zero-shot video, the paper's ablation: the demo's own small text-to-image
   model (vidmem_ext/demo_model, trained on coloured shapes; nothing is
   downloaded) samples 8-frame videos of a few prompts under four settings on
   the same seeds: independent noise with plain attention, dependency noise
   only, temporal momentum only, both (ZS²). A detector measures each setting:
   how many frames keep frame 0's colour and shape, how far the object's centre
   moves between frames, how much consecutive frames differ, and whether frame 0
   shows the prompt. A frame grid PNG, a GIF, a table (printed, in summary.json
   and on the overview page). With --model PATH (a local diffusers Stable
   Diffusion folder) and --prompt it makes real videos instead (the detector's
   columns are then empty: it only knows the demo model's scenes).
4. The token budget of a FramePack-like history schedule.
Then a summary of where each file went; overview.png puts 1-3 on one page.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

__all__ = ["add_arguments", "main", "SETTINGS", "DEMO_PROMPTS"]

NOISE_LAMBDAS = (0.01, 0.1, 0.3, 0.6, 1.0, 1.6)
HEATMAP_MOMENTA = (0.5, 0.9, 0.98)
DEMO_PROMPTS = (
    "a red circle on a blue background",
    "a yellow triangle on a black background",
    "a white square on a green background",
)
# The ablation: (name, dependency noise?, temporal momentum?)
SETTINGS = (
    ("independent noise, plain attention", False, False),
    ("dependency noise only", True, False),
    ("temporal momentum only", False, True),
    ("both (ZS2)", True, True),
)
MAX_FRAMES, MAX_STEPS, MAX_SEED = 64, 500, 2**63 - 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", metavar="DIR", help="output folder (default: demo_out)")
    parser.add_argument(
        "--model", metavar="PATH", help="local diffusers Stable Diffusion folder (default: the shipped demo model)"
    )
    parser.add_argument(
        "--prompt",
        action="append",
        help="text prompt; repeat for several (needed with --model; with the demo model: 'a COLOUR SHAPE on a "
        "COLOUR background')",
    )
    parser.add_argument("--frames", type=int, default=8, help=f"frames per video, 2 to {MAX_FRAMES} (default 8)")
    parser.add_argument(
        "--steps", type=int, default=None, help="sampling steps (default 10 with the demo model, 25 with --model)"
    )
    parser.add_argument(
        "--guidance", type=float, default=None, help="guidance scale (default 4 with the demo model, 7.5 with --model)"
    )
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
    parser.add_argument("--device", default=None, help="cpu or cuda[:N], for --model (default: cuda if available)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: 1 for the demo model, torch's choice with --model)",
    )


def _check_arguments(parser, args) -> None:
    """Every bad argument ends here with a one-line usage error (exit 2), before any work or file is written."""
    from .demo_model import check_out_dir, parse_prompt
    from .noise import MAX_LAMBDA_I

    check_out_dir(parser, args.out)
    if args.model is not None:
        if not os.path.isdir(args.model):
            parser.error(f"--model {args.model}: no such directory (a local diffusers Stable Diffusion folder)")
        if not os.path.isfile(os.path.join(args.model, "model_index.json")):
            parser.error(f"--model {args.model}: not a diffusers pipeline folder (it has no model_index.json)")
        if not args.prompt:
            parser.error("--model needs --prompt TEXT")
    for prompt in args.prompt or ():
        if not prompt.strip():
            parser.error("--prompt must not be empty")
        if args.model is None and parse_prompt(prompt) is None:
            parser.error(
                f"--prompt {prompt!r}: the demo model knows prompts like 'a red circle on a blue background' "
                "(colours red, green, blue, yellow, white, black; shapes circle, square, triangle)"
            )
    if not 2 <= args.frames <= MAX_FRAMES:
        parser.error(f"--frames must be in [2, {MAX_FRAMES}], got {args.frames}")
    if args.steps is not None and not 1 <= args.steps <= MAX_STEPS:
        parser.error(f"--steps must be in [1, {MAX_STEPS}], got {args.steps}")
    if args.guidance is not None and not (math.isfinite(args.guidance) and 0.0 <= args.guidance <= 100.0):
        parser.error(f"--guidance must be a finite number in [0, 100], got {args.guidance}")
    if not 0.0 <= args.momentum <= 1.0:  # also refuses nan
        parser.error(f"--momentum must be in [0, 1], got {args.momentum}")
    if not 0.0 <= args.lambda_i <= MAX_LAMBDA_I:  # also refuses nan
        parser.error(f"--lambda must be in [0, {MAX_LAMBDA_I:g}], got {args.lambda_i}")
    if not 0 <= args.seed <= MAX_SEED:
        parser.error(f"--seed must be in [0, 2**63 - 1], got {args.seed}")
    if args.threads is not None and not 1 <= args.threads <= 1024:
        parser.error(f"--threads must be in [1, 1024], got {args.threads}")
    if args.device is not None:
        if args.model is None:
            parser.error("--device is for --model (the demo model runs on the CPU)")
        import torch

        try:
            device = torch.device(args.device)
        except (RuntimeError, TypeError) as exc:
            parser.error(f"--device {args.device}: not a torch device ({exc})")
        if device.type not in ("cpu", "cuda"):  # the kernels and the diffusers pipelines run on these
            parser.error(f"--device {args.device}: must be cpu or cuda")
        if device.type == "cuda" and not (
            torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
        ):
            parser.error(f"--device {args.device}: this torch build or machine has no such CUDA device")


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
    """The shipped demo model, or the local Stable Diffusion folder given by --model."""
    import torch
    from diffusers import StableDiffusionPipeline

    from .demo_model import load_demo_pipeline

    if args.model is None:
        return load_demo_pipeline()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    # dtype through .to(): the from_pretrained keyword is `torch_dtype` in older diffusers, `dtype` in newer
    pipe = StableDiffusionPipeline.from_pretrained(args.model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def _sample_setting(pipe, args, prompts, dependency: bool, momentum: bool):
    """Frames (one PIL list per prompt) of one ablation setting; every setting starts from the same seed.

    The latents are drawn here rather than by zero_shot_video so that "independent noise" is plain
    torch.randn (no candidate search) and "plain attention" is the model's own processor, untouched.
    """
    import contextlib

    import torch
    from einops import rearrange

    from . import dependency_noise
    from .pipelines import temporal_momentum_processors

    videos, frames = len(prompts), args.frames
    size = pipe.unet.config.sample_size  # the pipeline's default picture size, in latent pixels
    latent_h, latent_w = (size, size) if isinstance(size, int) else size
    shape = (videos, frames, pipe.unet.config.in_channels, latent_h, latent_w)
    generator = torch.Generator().manual_seed(args.seed)
    if dependency:
        noise = dependency_noise(shape, args.lambda_i, frame_dim=1, generator=generator, dtype=torch.float32)
    else:
        noise = torch.randn(shape, generator=generator)
    latents = rearrange(noise, "v f c h w -> (v f) c h w").to(pipe._execution_device, pipe.unet.dtype)
    swap = temporal_momentum_processors(pipe.unet, args.momentum, frames) if momentum else contextlib.nullcontext()
    with swap:
        images = pipe(
            list(prompts),
            num_images_per_prompt=frames,
            latents=latents,
            generator=generator,
            num_inference_steps=args.steps or (10 if args.model is None else 25),
            guidance_scale=args.guidance if args.guidance is not None else (4.0 if args.model is None else 7.5),
        ).images
    return [images[i * frames : (i + 1) * frames] for i in range(videos)]


def _measure(videos, prompts, with_detector: bool) -> dict:
    """The ablation's numbers for one setting, averaged over its videos (see the module docstring)."""
    import numpy as np

    from .demo_model import detect, parse_prompt

    same, jitter, diff, accurate, correlation = [], [], [], [], []
    for video, prompt in zip(videos, prompts):
        pixels = np.stack([np.asarray(f.convert("RGB"), dtype=np.float64) for f in video])
        diff.extend(np.abs(pixels[1:] - pixels[:-1]).mean(axis=(1, 2, 3)))
        flat = pixels.reshape(len(video), -1)
        flat = flat - flat.mean(1, keepdims=True)
        flat = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
        correlation.extend((flat[1:] * flat[:-1]).sum(1))
        if not with_detector:
            continue
        found = [detect(f) for f in video]
        same.extend((d.colour, d.shape) == (found[0].colour, found[0].shape) for d in found[1:])
        jitter.extend(math.dist(a.centre, b.centre) for a, b in zip(found[:-1], found[1:]) if a.centre and b.centre)
        colour, shape, _ = parse_prompt(prompt)
        accurate.append((found[0].colour, found[0].shape) == (colour, shape))

    def mean(values):
        return float(np.mean(values)) if len(values) else None

    return {
        "same_as_frame0": mean(same),
        "centre_jitter_px": mean(jitter),
        "mean_abs_frame_diff": mean(diff),
        "frame0_prompt_accuracy": mean(accurate),
        "frame_correlation": mean(correlation),
    }


TABLE_COLUMNS = (
    ("setting", "name", "{}"),
    ("same colour+shape as frame 0", "same_as_frame0", "{:.0%}"),
    ("centre jitter (px)", "centre_jitter_px", "{:.2f}"),
    ("mean |frame diff| (0-255)", "mean_abs_frame_diff", "{:.1f}"),
    ("frame 0 matches prompt", "frame0_prompt_accuracy", "{:.0%}"),
    ("frame-to-frame correlation", "frame_correlation", "{:.3f}"),
)


def _table_rows(results) -> list[list[str]]:
    rows = [[title for title, _, _ in TABLE_COLUMNS]]
    for result in results:
        rows.append([fmt.format(result[key]) if result[key] is not None else "n/a" for _, key, fmt in TABLE_COLUMNS])
    return rows


def _text_table(rows) -> str:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _write_gif(path, prompts, settings_videos, scale, frame_ms=300) -> int:
    """One GIF frame per video frame: prompts as rows, settings as columns; returns the frame count."""
    from PIL import Image

    from . import _plot

    count = len(settings_videos[0][0])
    columns = ["independent noise", "dependency noise", "momentum only", "both (ZS2)"]  # SETTINGS, short
    tiles = [
        _plot.image_rows(
            [(prompt, [videos[p][i] for videos in settings_videos]) for p, prompt in enumerate(prompts)],
            scale=scale,
            title=f"frame {i}",
            column_labels=columns,
        )
        for i in range(count)
    ]
    # One shared palette, found fast: Pillow's default adaptive palette per frame took seconds per frame
    palette = tiles[0].quantize(colors=255, method=Image.Quantize.FASTOCTREE)
    tiles = [tile.quantize(palette=palette, dither=Image.Dither.NONE) for tile in tiles]
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
        # The demo model's tensors are tiny: one thread is as fast, and several spin against each
        # other on a busy machine (2 threads on 2 loaded cores made this demo 4x slower).
        torch.set_num_threads(threads)
    # Notices from diffusers/transformers (e.g. "requires torchvision, falling back to PIL") would
    # break up the progress bar; errors still show.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    verbosity = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    bars = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()  # the loading bars would interleave with the demo's own
    transformers_logging.disable_progress_bar()
    try:
        return _run(args)
    finally:
        torch.set_num_threads(previous_threads)
        diffusers_logging.set_verbosity(verbosity[0])
        transformers_logging.set_verbosity(verbosity[1])
        if bars[0]:
            diffusers_logging.enable_progress_bar()
        if bars[1]:
            transformers_logging.enable_progress_bar()


def _run(args) -> int:
    import warnings

    from PIL import Image

    from . import _plot
    from .token_budget import FRAMEPACK_LATENT, FRAMEPACK_TERMS, budget_table, parse_term

    start = time.perf_counter()
    paths = {
        "noise": os.path.join(args.out, "noise_correlation.png"),
        "momentum": os.path.join(args.out, "momentum_weights.png"),
        "frames": os.path.join(args.out, "frames.png"),
        "gif": os.path.join(args.out, "frames.gif"),
        "summary": os.path.join(args.out, "summary.json"),
        "overview": os.path.join(args.out, "overview.png"),
    }
    model_name = "demo model (vidmem_ext/demo_model)" if args.model is None else args.model
    prompts = list(args.prompt or DEMO_PROMPTS)
    steps = _Steps(
        ["dependency noise", "momentum weights", "load pipeline"]
        + [f"video: {name}" for name, _, _ in SETTINGS]
        + ["measure and write", "token budget"]
    )
    # Everything is computed before the first file is written, so a failure leaves no half-written folder.
    with warnings.catch_warnings():
        # The library's own "slow Python reference" notice is shown once by `info`; keep the bar clean.
        warnings.filterwarnings("ignore", message="vidmem_ext.* using the slow Python reference")
        noise_figure = _noise_figure(args, steps)
        steps.advance()
        momentum_figure = _momentum_figure()
        steps.advance()
        pipe = _load_pipeline(args)
        steps.advance()
        settings_videos = []
        for _, dependency, momentum in SETTINGS:
            settings_videos.append(_sample_setting(pipe, args, prompts, dependency, momentum))
            steps.advance()

    results = []
    for (name, dependency, momentum), videos in zip(SETTINGS, settings_videos):
        result = {
            "name": name,
            "noise": f"dependency noise, lambda {args.lambda_i:g}" if dependency else "independent (torch.randn)",
            "attention": f"temporal momentum {args.momentum:g}" if momentum else "plain self-attention",
        }
        result.update(_measure(videos, prompts, with_detector=args.model is None))
        results.append(result)
    rows = _table_rows(results)
    table = _text_table(rows)

    scale = max(1, 64 // settings_videos[0][0][0].width)
    title = f"ZS2 ablation: {args.frames} frames, seed {args.seed}, lambda {args.lambda_i:g}, " + (
        f"momentum {args.momentum:g}"
    )
    blocks = [  # one block per prompt: a row of frames per setting
        _plot.image_rows(
            [(name, videos[p]) for (name, _, _), videos in zip(SETTINGS, settings_videos)], scale=scale, title=prompt
        )
        for p, prompt in enumerate(prompts)
    ]
    grid = _plot.titled(_plot.grid(blocks, columns=3), title)
    table_image = _plot.table(rows, title=f"{model_name}: {len(prompts)} prompt(s), same seeds in every setting")
    os.makedirs(args.out, exist_ok=True)
    noise_figure.save(paths["noise"])
    momentum_figure.save(paths["momentum"])
    grid.save(paths["frames"])
    gif_frames = _write_gif(paths["gif"], prompts, settings_videos, scale=max(1, 96 // settings_videos[0][0][0].width))
    summary = {
        "model": model_name,
        "prompts": prompts,
        "frames": args.frames,
        "seed": args.seed,
        "lambda": args.lambda_i,
        "momentum": args.momentum,
        "settings": results,
    }
    page = _plot.stack([_plot.stack([noise_figure, momentum_figure]), table_image, grid], vertical=True, gap=16)
    # 256 colours keep the page small enough for a README (a third of the full-colour size)
    page.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(paths["overview"])
    steps.write("ZS2 ablation, " + title.split(": ", 1)[1] + f" ({model_name}):\n" + table)
    steps.advance()

    latent_h, latent_w = (int(v) for v in FRAMEPACK_LATENT.split("x"))
    budget = budget_table([parse_term(t) for t in FRAMEPACK_TERMS], latent_h, latent_w)
    steps.write("token budget of a FramePack-like history schedule:\n" + budget)
    steps.advance()
    steps.close()

    elapsed = time.perf_counter() - start
    summary["seconds"] = round(elapsed, 1)
    with open(paths["summary"], "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\ndemo finished in {elapsed:.1f} s; files:")
    lambdas = ", ".join(map(str, NOISE_LAMBDAS))
    print(f"  {paths['noise']}: dependency noise, correlation vs frame index for lambda {lambdas}")
    print(f"  {paths['momentum']}: momentum weights U[i, j] for m = {', '.join(map(str, HEATMAP_MOMENTA))}")
    print(f"  {paths['frames']}: {len(prompts)} prompt(s) x {len(SETTINGS)} settings x {args.frames} frames")
    print(f"  {paths['gif']}: the same, animated ({gif_frames} frames)")
    print(f"  {paths['summary']}: the table above, as JSON")
    print(f"  {paths['overview']}: the pictures and the table on one page")
    return 0
