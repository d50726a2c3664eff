"""The demo's own text-to-image model: coloured shapes on coloured backgrounds, 32x32, trained here.

No pretrained diffusion model can be downloaded where this project runs, so the
demo brings one: a diffusers StableDiffusionPipeline with a small UNet, VAE and
CLIP text encoder, trained from scratch on procedurally drawn scenes ("a red
circle on a blue background": one shape of one colour, at a random size and
place, on a plain background of another colour). The weights ship in
`vidmem_ext/demo_model/`; `python -m vidmem_ext train-demo-model --out DIR`
retrains them (deterministic for a seed and thread count).

This module also holds the scene renderer and `detect`, a colour-and-shape
detector for these scenes, which the demo uses to measure how consistent a
video's frames are.

Needs the optional extra: pip install -e ".[diffusers]".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy comes with the diffusers extra; `python -m vidmem_ext` must start without it
    import numpy as np


__all__ = [
    "COLOURS",
    "SHAPES",
    "IMAGE_SIZE",
    "DEFAULT_MODEL_DIR",
    "Scene",
    "Detection",
    "prompt_for",
    "parse_prompt",
    "random_scene",
    "render",
    "detect",
    "build_pipeline",
    "load_demo_pipeline",
    "score_prompts",
    "train",
    "add_arguments",
    "main",
]

IMAGE_SIZE = 32
# Colours far apart in RGB, so that a nearest-colour detector cannot confuse them.
COLOURS = {
    "red": (220, 45, 45),
    "green": (40, 170, 65),
    "blue": (45, 85, 215),
    "yellow": (235, 205, 50),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle")
RADIUS_RANGE = (5.0, 10.0)  # half the shape's width, in pixels of the 32x32 picture
DEFAULT_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_model")
PROMPT_WORDS = ("a", "on", "background", *COLOURS, *SHAPES)
MAX_PROMPT_TOKENS = 16


@dataclasses.dataclass(frozen=True)
class Scene:
    """One picture: a `shape` of `colour`, half-width `radius` px, centred at (cx, cy), on `background`."""

    colour: str
    shape: str
    background: str
    radius: float
    cx: float
    cy: float

    @property
    def prompt(self) -> str:
        return prompt_for(self.colour, self.shape, self.background)


def prompt_for(colour: str, shape: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def parse_prompt(prompt: str) -> tuple[str, str, str] | None:
    """(colour, shape, background) of a prompt in the model's form, or None if it is not one."""
    words = prompt.lower().split()  # the captions' form only: the model has seen no other
    if (
        len(words) == 7
        and words[0] == "a"
        and words[3:5] == ["on", "a"]
        and words[6] == "background"
        and words[1] in COLOURS
        and words[2] in SHAPES
        and words[5] in COLOURS
        and words[5] != words[1]
    ):
        return words[1], words[2], words[5]
    return None


def random_scene(rng: np.random.Generator) -> Scene:
    colour, background = rng.choice(len(COLOURS), size=2, replace=False)
    names = list(COLOURS)
    radius = float(rng.uniform(*RADIUS_RANGE))
    cx, cy = rng.uniform(radius + 1, IMAGE_SIZE - 1 - radius, size=2)
    return Scene(names[colour], SHAPES[int(rng.integers(len(SHAPES)))], names[background], radius, float(cx), float(cy))


def render(scene: Scene, supersample: int = 4) -> np.ndarray:
    """The scene as a (32, 32, 3) uint8 array, drawn at `supersample` times the size and box-filtered down."""
    import numpy as np
    from PIL import Image, ImageDraw

    s = supersample
    image = Image.new("RGB", (IMAGE_SIZE * s, IMAGE_SIZE * s), COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    r, x, y, fill = scene.radius * s, scene.cx * s, scene.cy * s, COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif scene.shape == "square":
        draw.rectangle((x - r, y - r, x + r, y + r), fill=fill)
    elif scene.shape == "triangle":  # upright, base and height 2r
        draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)
    else:
        raise ValueError(f"scene.shape must be one of {SHAPES}, got {scene.shape!r}")
    return np.asarray(image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------- the detector


@dataclasses.dataclass(frozen=True)
class Detection:
    """What `detect` saw: colour names, shape (None if no object), centre (x, y) in pixels, fill ratio."""

    colour: str | None
    shape: str | None
    background: str
    centre: tuple[float, float] | None
    fill: float


def _nearest_colour(rgb) -> str:
    import numpy as np

    names = list(COLOURS)
    table = np.array([COLOURS[n] for n in names], dtype=np.float64)
    return names[int(np.argmin(((table - np.asarray(rgb, dtype=np.float64)) ** 2).sum(-1)))]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (breadth-first search; the pictures are tiny)."""
    import numpy as np

    labels = np.zeros(mask.shape, dtype=np.int32)
    best, best_size, label = 0, 0, 0
    h, w = mask.shape
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        label += 1
        labels[start] = label
        queue, size = deque([start]), 0
        while queue:
            y, x = queue.popleft()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    queue.append((ny, nx))
        if size > best_size:
            best, best_size = label, size
    return labels == best if best else np.zeros_like(mask)


def detect(image, min_pixels: int = 8) -> Detection:
    """Background colour, object colour, shape and centre of one picture (PIL image or HxWx3 array, 0-255).

    Background: the median of the border pixels. Object: the largest connected
    region of pixels that differ from it by more than a third of the colour
    range; its colour is the nearest named colour to its median. Shape: the
    share of the object's bounding box that it fills (square ~1, circle ~pi/4,
    upright triangle ~1/2).
    """
    import numpy as np

    pixels = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float64)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"image must be RGB with shape (H, W, 3), got {pixels.shape}")
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.median(border, axis=0)
    distance = np.sqrt(((pixels - background) ** 2).sum(-1))
    mask = _largest_component(distance > 85.0)
    background_name = _nearest_colour(background)
    if mask.sum() < min_pixels:
        return Detection(None, None, background_name, None, 0.0)
    colour = _nearest_colour(np.median(pixels[mask], axis=0))
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = float(mask.sum() / box)
    shape = "square" if fill > 0.88 else "circle" if fill > 0.64 else "triangle"
    return Detection(colour, shape, background_name, (float(xs.mean()), float(ys.mean())), fill)


# ----------------------------------------------------------------------------------------------- the model


def _word_tokenizer(folder: str):
    """A CLIP tokenizer whose vocabulary has each prompt word as one token (bytes for anything else)."""
    from transformers import CLIPTokenizer

    from .pipelines import write_clip_vocab

    write_clip_vocab(folder, PROMPT_WORDS)
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=MAX_PROMPT_TOKENS)
    for word in PROMPT_WORDS:
        if len(tokenizer.tokenize(word)) != 1:  # a merge order problem would silently weaken the model
            raise RuntimeError(f"demo tokenizer splits {word!r} into {tokenizer.tokenize(word)}")
    return tokenizer


def build_pipeline(seed: int = 0):
    """The untrained pipeline: UNet (32, 64 channels) on 8x8x4 latents, VAE 32x32x3 -> 8x8x4, CLIP text 2x64."""
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_width = 64
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = _word_tokenizer(folder)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(16, 32, 32),
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=IMAGE_SIZE,
            mid_block_add_attention=False,
        )
        unet = UNet2DConditionModel(
            sample_size=IMAGE_SIZE // 4,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=text_width,
            attention_head_dim=(1, 2),  # diffusers reads this as the head count: 32-wide heads
            norm_num_groups=8,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=text_width,
                intermediate_size=2 * text_width,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=MAX_PROMPT_TOKENS,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    finally:
        torch.random.set_rng_state(state)
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="trailing",  # few sampling steps: start at the last training step
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_demo_pipeline(path: str | None = None):
    """The shipped (or a retrained, at `path`) demo pipeline, loaded offline, on the CPU in float32."""
    from diffusers import StableDiffusionPipeline

    path = path or DEFAULT_MODEL_DIR
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        raise FileNotFoundError(f"no demo model at {path} (train one: python -m vidmem_ext train-demo-model --out DIR)")
    pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def score_prompts(pipe, prompts, per_prompt: int = 4, seed: int = 0, steps: int = 10, guidance_scale: float = 4.0):
    """Sample per_prompt pictures of each prompt; the detector's hit rates for colour, shape and both."""
    import torch

    images = pipe(
        list(prompts),
        num_images_per_prompt=per_prompt,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(seed),
    ).images
    hits = {"colour": 0, "shape": 0, "both": 0}
    for i, image in enumerate(images):
        colour, shape, _ = parse_prompt(prompts[i // per_prompt])
        found = detect(image)
        hits["colour"] += found.colour == colour
        hits["shape"] += found.shape == shape
        hits["both"] += found.colour == colour and found.shape == shape
    return {k: v / len(images) for k, v in hits.items()}, images


EVAL_PROMPTS = (
    "a red circle on a blue background",
    "a green square on a white background",
    "a yellow triangle on a black background",
    "a blue square on a yellow background",
    "a white triangle on a red background",
    "a black circle on a green background",
    "a red triangle on a yellow background",
    "a green circle on a black background",
)

# ----------------------------------------------------------------------------------------------- training


def _dataset(size: int, seed: int):
    """`size` random scenes: images (N, 3, 32, 32) float32 in [-1, 1] and their prompts."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng) for _ in range(size)]
    pixels = np.stack([render(s) for s in scenes])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    return images, [s.prompt for s in scenes]


def _lr_at(step: int, total: int, peak: float, warmup: int = 50) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclasses.dataclass
class TrainConfig:
    seed: int = 0
    threads: int = 1
    dataset_size: int = 20000
    vae_steps: int = 400
    vae_batch: int = 32
    vae_lr: float = 3e-3
    kl_weight: float = 1e-4
    unet_steps: int = 2000
    unet_batch: int = 64
    unet_lr: float = 2e-3
    min_snr_gamma: float = 5.0
    prompt_dropout: float = 0.1
    ema_decay: float = 0.995
    evaluate: bool = True


def _smooth(values, window: int):
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _loss_curve(vae_losses, unet_losses, path):
    from . import _plot

    charts = []
    for name, losses in (("VAE reconstruction + KL", vae_losses), ("UNet noise prediction", unet_losses)):
        if len(losses) < 2:
            continue
        window = max(1, len(losses) // 50)
        smooth = _smooth(losses, window)
        every = max(1, len(losses) // 200)
        xs = list(range(0, len(losses), every))
        charts.append(
            _plot.line_chart(
                [("raw", xs, [losses[i] for i in xs]), (f"mean of {window}", xs, [smooth[i] for i in xs])],
                title=f"{name} loss",
                xlabel="step",
                ylabel="loss",
                ylim=(0.0, max(smooth[min(len(smooth) - 1, window) :] or smooth) * 1.3),
                legend_title="",
            )
        )
    if charts:
        _plot.stack(charts).save(path)


def train(out: str, config: TrainConfig | None = None, progress: bool = True) -> dict:
    """Train the demo pipeline from scratch and save it to `out` (with loss_curve.png and training.json).

    VAE first (reconstruction + a small KL term), then the UNet and text encoder
    together on the VAE's latents (epsilon prediction, prompts dropped 10% of
    the time for classifier-free guidance, an EMA of the weights is saved).
    The same config and thread count give the same weights.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from tqdm.auto import tqdm

    from .pipelines import write_clip_vocab

    config = config or TrainConfig()
    start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        generator = torch.Generator().manual_seed(config.seed)
        pipe = build_pipeline(config.seed)
        vae, unet, text_encoder, tokenizer = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer
        images, prompts = _dataset(config.dataset_size, config.seed)
        bar = tqdm(total=config.vae_steps + config.unet_steps, disable=not progress, unit="step")

        # 1. the autoencoder
        bar.set_description("train-demo-model: VAE")
        vae.train()
        optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
        vae_losses = []
        for step in range(config.vae_steps):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, config.vae_steps, config.vae_lr)
            batch = images[torch.randint(0, len(images), (config.vae_batch,), generator=generator)]
            posterior = vae.encode(batch).latent_dist
            recon = vae.decode(posterior.sample(generator)).sample
            kl = posterior.kl().mean() / posterior.mean[0].numel()
            loss = F.mse_loss(recon, batch) + config.kl_weight * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            vae_losses.append(loss.item())
            bar.set_postfix(loss=f"{vae_losses[-1]:.4f}", refresh=False)
            bar.update(1)
        vae.eval()
        with torch.no_grad():
            latents = torch.cat([vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
            recon_error = (
                sum(
                    F.l1_loss(vae.decode(latents[i : i + 256]).sample, images[i : i + 256], reduction="sum").item()
                    for i in range(0, min(len(images), 1024), 256)
                )
                / images[:1024].numel()
            )
        scaling_factor = float(1.0 / latents.std())
        vae.register_to_config(scaling_factor=scaling_factor)
        latents = latents * scaling_factor

        # 2. the UNet and the text encoder, on the VAE's latents
        bar.set_description("train-demo-model: UNet")
        ids = tokenizer(prompts, padding="max_length", max_length=MAX_PROMPT_TOKENS, return_tensors="pt").input_ids
        empty_ids = tokenizer([""], padding="max_length", max_length=MAX_PROMPT_TOKENS, return_tensors="pt").input_ids
        noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
        snr = noise_schedule.alphas_cumprod / (1 - noise_schedule.alphas_cumprod)
        params = [*unet.parameters(), *text_encoder.parameters()]
        ema = [p.detach().clone() for p in params]
        unet.train()
        text_encoder.train()
        optimizer = torch.optim.AdamW(params, lr=config.unet_lr, weight_decay=0.0)
        unet_losses = []
        for step in range(config.unet_steps):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, config.unet_steps, config.unet_lr)
            index = torch.randint(0, len(latents), (config.unet_batch,), generator=generator)
            x0, tokens = latents[index], ids[index].clone()
            dropped = torch.rand(config.unet_batch, generator=generator) < config.prompt_dropout
            tokens[dropped] = empty_ids
            noise = torch.randn(x0.shape, generator=generator)
            t = torch.randint(0, noise_schedule.config.num_train_timesteps, (config.unet_batch,), generator=generator)
            noisy = noise_schedule.add_noise(x0, noise, t)
            prediction = unet(noisy, t, text_encoder(tokens)[0]).sample
            # Min-SNR weighting (Hang et al. 2023): low-noise steps stop dominating, training converges faster
            weight = (snr[t].clamp(max=config.min_snr_gamma) / snr[t]).view(-1, 1, 1, 1)
            loss = (weight * (prediction - noise) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            with torch.no_grad():  # warm-up of the EMA so that short runs are not stuck at the initial weights
                decay = min(config.ema_decay, (1 + step) / (10 + step))
                for average, p in zip(ema, params):
                    average.lerp_(p.detach(), 1 - decay)
            unet_losses.append(loss.item())
            bar.set_postfix(loss=f"{unet_losses[-1]:.4f}", refresh=False)
            bar.update(1)
        bar.close()
        with torch.no_grad():
            for average, p in zip(ema, params):
                p.copy_(average)
        unet.eval()
        text_encoder.eval()
        train_seconds = time.perf_counter() - start

        os.makedirs(out, exist_ok=True)
        pipe.save_pretrained(out, safe_serialization=True)
        # Newer transformers save only tokenizer.json; the slow CLIPTokenizer of older ones needs these two
        write_clip_vocab(os.path.join(out, "tokenizer"), PROMPT_WORDS)
        _loss_curve(vae_losses, unet_losses, os.path.join(out, "loss_curve.png"))
        report = {
            "config": dataclasses.asdict(config),
            "train_seconds": round(train_seconds, 1),
            "vae_final_loss": float(np.mean(vae_losses[-50:])) if vae_losses else None,
            "vae_mean_abs_error": round(recon_error * 127.5, 2),  # in 0-255 pixel units
            "unet_final_loss": float(np.mean(unet_losses[-100:])) if unet_losses else None,
            "scaling_factor": scaling_factor,
            "torch": torch.__version__,
        }
        if config.evaluate:
            rates, _ = score_prompts(pipe, EVAL_PROMPTS, per_prompt=4, seed=config.seed)
            report["detector_hit_rates"] = rates
        with open(os.path.join(out, "training.json"), "w") as f:
            json.dump(report, f, indent=2)
        return report
    finally:
        torch.set_num_threads(previous_threads)


# ----------------------------------------------------------------------------------------------- command line


def _existing_ancestor(path: str) -> str:
    ancestor = os.path.abspath(path)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    return ancestor


def name_max(path: str) -> int:
    """The longest file name, in bytes, the filesystem that would hold folder `path` takes (255 if unknown)."""
    try:
        return os.pathconf(_existing_ancestor(path), "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_out_dir(parser: argparse.ArgumentParser, path: str, flag: str = "--out") -> None:
    """parser.error (exit 2) unless `path` is, or can be made as, a writable folder; creates nothing."""
    if not path:
        parser.error(f"{flag} must not be empty")
    if os.path.exists(path) and not os.path.isdir(path):
        parser.error(f"{flag} {path}: exists and is not a folder")
    longest = max(len(os.fsencode(part)) for part in os.path.abspath(path).split(os.sep))
    if longest > name_max(path) or len(os.fsencode(os.path.abspath(path))) > 4000:
        parser.error(f"{flag}: a folder name in {path[:80]!r}... is longer than this filesystem allows")
    ancestor = _existing_ancestor(path)
    if not os.path.isdir(ancestor):
        parser.error(f"{flag} {path}: {ancestor} is a file, not a folder")
    try:  # os.access says yes to root everywhere; a file that vanishes on close asks the filesystem itself
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as exc:
        parser.error(f"{flag} {path}: cannot write in {ancestor} ({exc.strerror or exc})")


# Ten times the defaults: a UNet step costs about 0.28 s of CPU (20 000 steps: 1.5 hours), and 100 000
# scenes take about 1.2 GB as fp32 (the bound before, 1 000 000, would not fit this machine's memory).
MAX_TRAIN_STEPS = 20_000
MAX_DATASET_SIZE = 100_000


def _bounded_int(parser, value, flag, low, high):
    if not low <= value <= high:
        parser.error(f"{flag} must be in [{low}, {high}], got {value}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the pipeline, loss curve and report")
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"random seed (default {defaults.seed})")
    parser.add_argument(
        "--threads", type=int, default=defaults.threads, help=f"torch CPU threads (default {defaults.threads})"
    )
    parser.add_argument(
        "--vae-steps",
        type=int,
        default=defaults.vae_steps,
        help=f"autoencoder training steps, 0 to {MAX_TRAIN_STEPS} (default {defaults.vae_steps})",
    )
    parser.add_argument(
        "--unet-steps",
        type=int,
        default=defaults.unet_steps,
        help=f"UNet and text-encoder training steps, 0 to {MAX_TRAIN_STEPS} (default {defaults.unet_steps})",
    )
    parser.add_argument(
        "--dataset-size",
        type=int,
        default=defaults.dataset_size,
        help=f"procedural pictures, 1 to {MAX_DATASET_SIZE} (default {defaults.dataset_size})",
    )
    parser.add_argument("--no-eval", action="store_true", help="skip the detector check at the end")


def main(args, parser=None) -> int:
    """Run `train-demo-model` for parsed `args`; argument errors go through parser.error (exit 2)."""
    parser = parser or argparse.ArgumentParser(prog="python -m vidmem_ext train-demo-model")
    check_out_dir(parser, args.out)
    _bounded_int(parser, args.seed, "--seed", 0, 2**63 - 1)
    _bounded_int(parser, args.threads, "--threads", 1, 256)
    _bounded_int(parser, args.vae_steps, "--vae-steps", 0, MAX_TRAIN_STEPS)
    _bounded_int(parser, args.unet_steps, "--unet-steps", 0, MAX_TRAIN_STEPS)
    _bounded_int(parser, args.dataset_size, "--dataset-size", 1, MAX_DATASET_SIZE)
    try:
        import diffusers  # noqa: F401
        import tqdm  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        print(f'train-demo-model needs the diffusers extra: pip install -e ".[diffusers]" ({exc})', file=sys.stderr)
        return 1
    config = TrainConfig(
        seed=args.seed,
        threads=args.threads,
        dataset_size=args.dataset_size,
        vae_steps=args.vae_steps,
        unet_steps=args.unet_steps,
        evaluate=not args.no_eval,
    )
    report = train(args.out, config)
    print(json.dumps(report, indent=2))
    print(f"saved to {args.out} (load with StableDiffusionPipeline.from_pretrained(DIR, local_files_only=True))")
    return 0
