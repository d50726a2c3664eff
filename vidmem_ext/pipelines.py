"""ZS² zero-shot video sampling with diffusers text-to-image pipelines.

`zero_shot_video(pipe, prompt)` turns an image pipeline (Stable Diffusion
1.x/2.x, or any diffusers text-to-image pipeline with a `unet` that accepts
`latents`) into a video sampler: it draws dependency-noise latents for the
frames, folds the frames into the batch, swaps temporal momentum attention into
the UNet's self-attention layers for the duration of the call, and returns the
frames. `temporal_momentum_processors` is that swap as a context manager, for
custom sampling loops. `tiny_stable_diffusion` builds a small randomly
initialised pipeline from configs (no download) for tests and the demo.

Needs the optional extra: pip install -e ".[diffusers]".
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

import torch
from einops import rearrange

from ._checks import check_momentum
from .attention import TemporalMomentumAttnProcessor, check_num_frames
from .noise import dependency_noise

__all__ = ["zero_shot_video", "temporal_momentum_processors", "self_attention_layer_names", "tiny_stable_diffusion"]


def _is_self_attention(module) -> bool:
    """A diffusers Attention layer whose keys and values come from its own input."""
    from diffusers.models.attention_processor import Attention

    return (
        isinstance(module, Attention)
        and not module.is_cross_attention
        and getattr(module, "added_kv_proj_dim", None) is None  # added-KV layers mix in the text tokens
    )


def self_attention_layer_names(model) -> list[str]:
    """Keys of `model.attn_processors` that belong to self-attention layers (e.g. `...attn1.processor`)."""
    suffix = ".processor"
    return [name for name in model.attn_processors if _is_self_attention(model.get_submodule(name[: -len(suffix)]))]


@contextlib.contextmanager
def temporal_momentum_processors(model, momentum=0.98, num_frames: int = 8):
    """Install TemporalMomentumAttnProcessor on every self-attention layer of `model` (e.g. `pipe.unet`).

    Cross-attention layers keep their processors. The original processors are
    restored on exit, also when the body raises. Yields the installed processor
    (one instance shared by all layers: change its momentum or num_frames to
    affect them all).
    """
    num_frames = check_num_frames(num_frames)
    originals = dict(model.attn_processors)
    names = set(self_attention_layer_names(model))
    if not names:
        raise ValueError(f"{type(model).__name__} has no diffusers self-attention layers to install the processor on")
    processor = TemporalMomentumAttnProcessor(momentum, num_frames)
    model.set_attn_processor({name: processor if name in names else proc for name, proc in originals.items()})
    try:
        yield processor
    finally:
        model.set_attn_processor(dict(originals))  # set_attn_processor pops from the dict it is given


def _latent_size(pipe, height, width) -> tuple[int, int]:
    """Latent height and width the way StableDiffusionPipeline picks them (both default when either is missing)."""
    scale = pipe.vae_scale_factor
    if not height or not width:
        sample_size = pipe.unet.config.sample_size
        h, w = (sample_size, sample_size) if isinstance(sample_size, int) else sample_size
        return int(h), int(w)
    return int(height) // scale, int(width) // scale


def zero_shot_video(
    pipe,
    prompt,
    num_frames: int = 8,
    momentum=0.98,
    lambda_i: float = 0.1,
    generator: torch.Generator | None = None,
    **pipe_kwargs,
):
    """Sample `num_frames` coherent frames per prompt with ZS² from a diffusers text-to-image pipeline.

    Args:
        pipe: a diffusers pipeline with a `unet` whose `__call__` accepts `latents`
            and `num_images_per_prompt` (StableDiffusionPipeline and relatives).
        prompt: a string (one video), a list of strings (one video each), or None
            with `prompt_embeds` in pipe_kwargs.
        num_frames: frames per video.
        momentum: temporal momentum of the self-attention keys and values (float in [0, 1] or tensor).
        lambda_i: dependency-noise target (vidmem_ext.dependency_noise): small keeps
            the frames' initial noise alike, large makes it independent.
        generator: one torch.Generator; it draws the noise and is passed on to the pipeline.
        **pipe_kwargs: passed to `pipe(...)` (num_inference_steps, guidance_scale,
            height, width, output_type, negative_prompt, ...), except `latents`
            and `num_images_per_prompt`, which this function sets.

    Returns:
        For a string prompt, the num_frames frames in the pipeline's output type
        (a list of PIL images by default; an array or tensor with frames first
        for output_type "np", "pt" or "latent"). For a list of prompts, a list
        of such videos.

    Frames go into the batch video by video, frames contiguous, which is the
    order the pipeline gives `num_images_per_prompt` copies of each prompt; the
    pipeline's CFG batch [uncond; cond] keeps that order in each half. Passed
    latents are scaled by the scheduler's init_noise_sigma inside the pipeline
    (StableDiffusionPipeline.prepare_latents), so they are drawn at unit scale.
    """
    num_frames = check_num_frames(num_frames)
    momentum = check_momentum(momentum)
    unet = getattr(pipe, "unet", None)
    if unet is None or not hasattr(unet, "attn_processors"):
        raise TypeError(f"pipe must be a diffusers pipeline with a `unet` (got {type(pipe).__name__})")
    for key in ("latents", "num_images_per_prompt"):
        if key in pipe_kwargs:
            raise TypeError(f"zero_shot_video sets `{key}` itself; do not pass it")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be one torch.Generator or None, got {type(generator).__name__}")

    if isinstance(prompt, str):
        videos = 1
    elif isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt) and prompt:
        videos, prompt = len(prompt), list(prompt)
    elif prompt is None and pipe_kwargs.get("prompt_embeds") is not None:
        videos = pipe_kwargs["prompt_embeds"].shape[0]
    else:
        raise TypeError("prompt must be a string, a non-empty list of strings, or None with prompt_embeds")

    latent_h, latent_w = _latent_size(pipe, pipe_kwargs.get("height"), pipe_kwargs.get("width"))
    device = pipe._execution_device
    noise = dependency_noise(
        (videos, num_frames, unet.config.in_channels, latent_h, latent_w),
        lambda_i,
        frame_dim=1,
        generator=generator,
        device=generator.device if generator is not None else device,
        dtype=torch.float32,
    )
    latents = rearrange(noise, "v f c h w -> (v f) c h w").to(device=device, dtype=unet.dtype)

    with temporal_momentum_processors(unet, momentum, num_frames):
        output = pipe(prompt, num_images_per_prompt=num_frames, latents=latents, generator=generator, **pipe_kwargs)
    images = output[0] if isinstance(output, tuple) else output.images

    per_video = [images[i * num_frames : (i + 1) * num_frames] for i in range(videos)]
    return per_video[0] if isinstance(prompt, str) else per_video


# --------------------------------------------------------------------------- a tiny pipeline for tests and the demo


def _byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes that byte-level BPE tokenizers (GPT-2, CLIP) use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    remapped = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(remapped)) for b in range(256)]


def _tiny_clip_tokenizer(max_length: int):
    """A CLIP tokenizer with a byte-level vocabulary and no merges (every word splits into characters)."""
    from transformers import CLIPTokenizer

    alphabet = _byte_level_alphabet()
    vocab = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(c + "</w>" for c in alphabet)]
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump({token: i for i, token in enumerate(vocab)}, f)
        with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=max_length)


@torch.no_grad()
def _sharpen_self_attention(unet, gain: float):
    """Tie key to query projections in self-attention and scale them and the output projection by gain."""
    suffix = ".processor"
    for name in self_attention_layer_names(unet):
        attn = unet.get_submodule(name[: -len(suffix)])
        attn.to_q.weight.mul_(gain)
        attn.to_k.weight.copy_(attn.to_q.weight)
        attn.to_out[0].weight.mul_(gain)


def tiny_stable_diffusion(seed: int = 0, image_size: int = 32, attention_gain: float = 4.0, device=None):
    """A small StableDiffusionPipeline with random weights, built from configs without any download.

    The same seed gives the same weights. UNet: 2 levels (32, 64 channels) with
    cross-attention transformers at both; VAE: 2 levels (scale factor 2); CLIP
    text encoder: 2 layers, 32 wide, byte-level tokenizer with 32 tokens; DDIM
    scheduler; no safety checker. Its images are not pictures of anything, but
    every part of the pipeline (CFG, scheduler, VAE decode, output types) is real.

    One deliberate change to the random weights: in each UNet self-attention
    layer the key projection is tied to the query projection and both, and the
    output projection, are scaled by `attention_gain`. Random q/k projections
    give a near-uniform softmax, so self-attention just averages all tokens and
    what it attends to hardly matters; tied, sharp projections make tokens
    attend to similar content, as trained models' attention does, so temporal
    momentum attention has a visible effect (attention_gain=1 keeps them tied only).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if image_size % 2 or image_size < 8:
        raise ValueError(f"image_size must be even and >= 8, got {image_size}")
    max_length, text_width = 32, 32
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=image_size // 2,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            mid_block_type=None,
            cross_attention_dim=text_width,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(16, 32),
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            norm_num_groups=8,
            sample_size=image_size,
        )
        tokenizer = _tiny_clip_tokenizer(max_length)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=text_width,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=max_length,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        _sharpen_self_attention(unet, attention_gain)
    finally:
        torch.random.set_rng_state(state)  # building the demo model must not shift the caller's random stream
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
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
    if device is not None:
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
