"""ZS² zero-shot video sampling with diffusers pipelines.

`zero_shot_video(pipe, prompt)` turns an image pipeline (Stable Diffusion
1.x/2.x, or any diffusers text-to-image pipeline with a `unet` that accepts
`latents`) into a video sampler, and drives text-to-video UNet pipelines
(AnimateDiff, TextToVideoSD) with ZS²: it draws dependency-noise latents for the
frames, swaps temporal momentum attention into the UNet's spatial self-attention
layers for the duration of the call, and returns the frames.
`temporal_momentum_processors` is that swap as a context manager, for custom
sampling loops; `self_attention_layer_names` shows which layers it picks (never
motion or temporal modules) and refuses, with a TypeError, models whose frames
are not in the batch (video transformers). `tiny_stable_diffusion` builds a small
randomly initialised pipeline from configs (no download) for tests and the demo.
docs/video_models.md lists what each diffusers model family gets.

Needs the optional extra: pip install -e ".[diffusers]".
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import tempfile

import torch
from einops import rearrange

from ._checks import check_int, check_momentum, check_real
from .attention import TemporalMomentumAttnProcessor, check_num_frames
from .noise import dependency_noise

__all__ = ["zero_shot_video", "temporal_momentum_processors", "self_attention_layer_names", "tiny_stable_diffusion"]


# Known video transformers (DiTs): they patchify the video into one token sequence, so the frames sit in the
# token axis (CogVideoX, HunyuanVideo, FramePack, Wan, LTX, Mochi, ...), or they interleave spatial and
# temporal blocks in layouts the processor has not been verified on. Any other class whose name ends in
# "Transformer3DModel" is treated the same way (diffusers' naming for them), so new ones are refused too.
_TOKEN_AXIS_VIDEO_MODELS = (
    "CogVideoXTransformer3DModel",
    "HunyuanVideoTransformer3DModel",
    "HunyuanVideoFramepackTransformer3DModel",
    "WanTransformer3DModel",
    "WanVACETransformer3DModel",
    "LTXVideoTransformer3DModel",
    "MochiTransformer3DModel",
    "AllegroTransformer3DModel",
    "SkyReelsV2Transformer3DModel",
)

# Blocks that attend over frames (the batch holds the spatial positions there, the tokens are frames).
_TEMPORAL_BLOCKS = (
    ("diffusers.models.unets.unet_motion_model", "AnimateDiffTransformer3D"),  # AnimateDiff motion modules
    ("diffusers.models.unets.unet_motion_model", "MotionModules"),
    ("diffusers.models.transformers.transformer_temporal", "TransformerTemporalModel"),  # UNet3D, I2VGenXL
    ("diffusers.models.attention", "TemporalBasicTransformerBlock"),  # Stable Video Diffusion
    ("diffusers.models.attention", "FreeNoiseTransformerBlock"),  # AnimateDiff with FreeNoise
    ("diffusers.models.unets.unet_i2vgen_xl", "I2VGenXLTransformerTemporalEncoder"),  # I2VGenXL's image latents
)
# The same places by module path, for diffusers versions that lack one of the classes above.
_TEMPORAL_PATH_PARTS = frozenset(
    {
        "motion_modules",
        "temp_attentions",
        "transformer_in",
        "temporal_transformer_blocks",
        "image_latents_temporal_encoder",
    }
)

_TEXT2VIDEO_ZERO = tuple(  # under pipelines/deprecated since diffusers 0.33
    f"diffusers.pipelines.{where}text_to_video_synthesis.pipeline_text_to_video_zero" for where in ("deprecated.", "")
)
# Processors that compute plain scaled-dot-product attention from to_q/to_k/to_v, the contract that
# TemporalMomentumAttnProcessor reimplements. Any other processor adds something (rotary embeddings,
# joint text tokens, added key/values, IP-Adapter images, ...) that replacing it would silently drop.
_PLAIN_PROCESSORS = (
    ("diffusers.models.attention_processor", "AttnProcessor"),
    ("diffusers.models.attention_processor", "AttnProcessor2_0"),
    ("diffusers.models.attention_processor", "XFormersAttnProcessor"),
    ("diffusers.models.attention_processor", "AttnProcessorNPU"),
    ("diffusers.models.attention_processor", "SlicedAttnProcessor"),
    ("diffusers.models.attention_processor", "FusedAttnProcessor2_0"),
    ("diffusers.models.attention_processor", "XLAFlashAttnProcessor2_0"),
    *((where, cls) for where in _TEXT2VIDEO_ZERO for cls in ("CrossFrameAttnProcessor", "CrossFrameAttnProcessor2_0")),
)

# Wrappers that call the module on chunks of the batch: the frames of one video would land in different calls.
_BATCH_SPLITTERS = (("diffusers.pipelines.free_noise_utils", "SplitInferenceModule"),)  # FreeNoise split inference

_SUFFIX = ".processor"


@functools.cache
def _classes(spec) -> tuple[type, ...]:
    """The classes of (module, name) pairs that this diffusers version has."""
    import importlib

    found = []
    for module_name, class_name in spec:
        try:
            cls = getattr(importlib.import_module(module_name), class_name, None)
        except ImportError:
            cls = None
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def _check_model(model) -> None:
    """TypeError unless `model` is a diffusers model with attention processors whose frames are in the batch."""
    _refuse_video_transformer(model)
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "attn_processors"):
        raise TypeError(
            "model must be a diffusers model with attention processors (e.g. pipe.unet, with `attn_processors` "
            f"and `set_attn_processor`), got {type(model).__name__}"
        )


def _refuse_video_transformer(model) -> None:
    import diffusers

    name = type(model).__name__
    known = tuple(c for c in (getattr(diffusers, n, None) for n in _TOKEN_AXIS_VIDEO_MODELS) if isinstance(c, type))
    if isinstance(model, known) or name.endswith("Transformer3DModel"):
        raise TypeError(
            f"model: {name} is a video transformer: it patchifies the video into one token sequence, so its frames sit "
            "in the token axis (or in attention layouts TemporalMomentumAttnProcessor does not implement: joint "
            "text+video attention, rotary embeddings), while the processor needs the frames folded into the batch "
            "of spatial self-attention (UNets: Stable Diffusion, AnimateDiff, UNet3D, Stable Video Diffusion); "
            "nothing was installed"
        )


def _is_in_temporal_block(model, path: str) -> bool:
    """True when the layer at `path` sits inside a block that attends over frames (motion/temporal modules)."""
    temporal = _classes(_TEMPORAL_BLOCKS)
    parts = path.split(".")
    if _TEMPORAL_PATH_PARTS.intersection(parts):
        return True
    return any(isinstance(model.get_submodule(".".join(parts[:i])), temporal) for i in range(1, len(parts) + 1))


def _batch_splitter_above(model, path: str):
    """The first enclosing module that runs its inner module on chunks of the batch, or None."""
    splitters = _classes(_BATCH_SPLITTERS)
    parts = path.split(".")
    for i in range(1, len(parts)):
        module = model.get_submodule(".".join(parts[:i]))
        if isinstance(module, splitters):
            return module
    return None


def _is_self_attention(module) -> bool:
    """A diffusers Attention layer whose keys and values come from its own input."""
    from diffusers.models.attention_processor import Attention

    return (
        isinstance(module, Attention)
        and not module.is_cross_attention
        and getattr(module, "added_kv_proj_dim", None) is None  # added-KV layers mix in the text tokens
    )


def _check_layer(model, name: str, module, processor) -> None:
    """TypeError when the processor cannot stand in for this layer's attention."""
    from diffusers.models.attention_processor import Attention

    model_name = type(model).__name__
    if not isinstance(module, Attention):
        raise TypeError(
            f"model: {model_name} layer {name!r} is a {type(module).__name__}, not diffusers' Attention, "
            "which is the only attention class TemporalMomentumAttnProcessor implements; nothing was installed"
        )
    if not isinstance(processor, (*_classes(_PLAIN_PROCESSORS), TemporalMomentumAttnProcessor)):
        raise TypeError(
            f"model: {model_name} layer {name!r} uses {type(processor).__name__}, which does more than plain attention "
            "(e.g. rotary embeddings, joint text attention, added key/values, IP-Adapter); "
            "TemporalMomentumAttnProcessor would silently drop that, so nothing was installed (pass layers=... "
            "to choose other layers)"
        )


def _choose_layers(model, layers) -> list[str]:
    """The keys of `model.attn_processors` to install the processor on (see self_attention_layer_names)."""
    from diffusers.models.attention_processor import Attention

    _check_model(model)
    processors = model.attn_processors
    modules = {name: model.get_submodule(name[: -len(_SUFFIX)]) for name in processors}
    if layers is None:
        chosen = []
        for name, module in modules.items():
            if _is_in_temporal_block(model, name[: -len(_SUFFIX)]):
                continue  # frames are the tokens there: a momentum over the batch would mix spatial positions
            if not _is_self_attention(module):
                if not isinstance(module, Attention):  # another attention class: cannot tell what it does, refuse
                    _check_layer(model, name, module, processors[name])
                continue
            _check_layer(model, name, module, processors[name])
            chosen.append(name)
    elif callable(layers):
        chosen = [name for name, module in modules.items() if _is_self_attention(module) and layers(name, module)]
    else:
        if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
            raise TypeError(
                "layers must be None, a list of layer names or a callable (name, module) -> bool, "
                f"got {type(layers).__name__}"
            )
        chosen = []
        for entry in layers:
            if not isinstance(entry, str):
                raise TypeError(f"layers must hold layer names (str), got {type(entry).__name__} {entry!r}")
            name = entry if entry.endswith(_SUFFIX) else entry + _SUFFIX
            if name not in processors:
                raise ValueError(f"layers: {entry!r} is not an attention layer of {type(model).__name__}")
            if not _is_self_attention(modules[name]):
                _check_layer(model, name, modules[name], processors[name])  # a class it cannot handle: TypeError
                raise ValueError(
                    f"layers: {entry!r} is a cross-attention or added-KV layer (its keys come from the text); "
                    "temporal momentum applies to self-attention only"
                )
            if name not in chosen:
                chosen.append(name)
        chosen.sort(key=list(processors).index)
    for name in chosen:
        _check_layer(model, name, modules[name], processors[name])
        splitter = _batch_splitter_above(model, name[: -len(_SUFFIX)])
        if splitter is not None:
            raise TypeError(
                f"model: {type(model).__name__} layer {name!r} runs inside {type(splitter).__name__} "
                "(e.g. FreeNoise split inference), which calls it on chunks of the batch, so one video's frames "
                "would be split between calls and the momentum restarted in each; use a model without it (e.g. a "
                "pipeline on which enable_free_noise_split_inference() was not called); nothing was installed"
            )
    return chosen


def self_attention_layer_names(model, layers=None) -> list[str]:
    """The layers `temporal_momentum_processors(model, layers=layers)` installs on: keys of `model.attn_processors`.

    By default: every diffusers self-attention layer (`...attn1.processor`, no encoder_hidden_states) whose
    batch holds the frames, i.e. the spatial self-attention, and none inside a block that attends over
    frames (AnimateDiff motion modules, TransformerTemporalModel such as UNet3DConditionModel's
    `transformer_in` and `temp_attentions`, Stable Video Diffusion's temporal blocks), where the batch
    holds the spatial positions and the tokens are the frames.

    `layers` overrides the choice: a list of names (keys of `attn_processors`, with or without the
    ".processor" suffix), or a callable `layers(name, module) -> bool` asked about every self-attention
    layer, temporal ones included.

    Raises TypeError for what is not a diffusers model with attention processors, for video transformers
    whose frames sit in the token axis (CogVideoX, HunyuanVideo, FramePack, Wan, ...), and for chosen
    layers whose attention class or processor the processor does not implement (rotary embeddings, joint
    or added-KV attention, ...); ValueError for names that are not self-attention layers of the model.
    """
    return _choose_layers(model, layers)


@contextlib.contextmanager
def temporal_momentum_processors(model, momentum=0.98, num_frames: int = 8, layers=None):
    """Install TemporalMomentumAttnProcessor on the spatial self-attention layers of `model` (e.g. `pipe.unet`).

    The layers are those of `self_attention_layer_names(model, layers)` (see there: motion and temporal
    modules never by default; `layers=` overrides; video transformers refused with a TypeError before
    anything is installed). Other layers keep their processors. The original processors are
    restored on exit, also when the body raises. Yields the installed processor
    (one instance shared by all layers: change its momentum or num_frames to
    affect them all).

    `num_frames` counts the frames of one video; the batch of the chosen layers must be
    videos * num_frames with each video's frames contiguous (a CFG batch [uncond; cond] included).
    diffusers' CrossFrameAttnProcessor2_0 counts the other way: its `batch_size` is the number of videos
    including the CFG copies, so momentum 1 here equals CrossFrameAttnProcessor2_0(batch_size=2 * videos).
    """
    num_frames = check_num_frames(num_frames)
    momentum = check_momentum(momentum)
    names = set(_choose_layers(model, layers))
    if not names:
        raise ValueError(
            f"layers: {layers!r} chose no layer of {type(model).__name__} to install the processor on"
            if layers is not None
            else f"model: {type(model).__name__} has no spatial self-attention layers to install the processor on "
            "(pass layers=... to choose some)"
        )
    originals = dict(model.attn_processors)
    processor = TemporalMomentumAttnProcessor(momentum, num_frames)
    model.set_attn_processor({name: processor if name in names else proc for name, proc in originals.items()})
    try:
        yield processor
        # Some pipelines install their own processors during their call (Attend-and-Excite, SAG,
        # Pix2Pix-Zero, PAG): the result then has no temporal momentum on those layers. Say so.
        installed = model.attn_processors
        replaced = sorted(name for name in names if installed.get(name) is not processor)
        if replaced:
            raise RuntimeError(
                f"model: {len(replaced)} of the {len(names)} layers lost the temporal momentum processor inside "
                f"the block (e.g. {replaced[0]} now has {type(installed.get(replaced[0])).__name__}): "
                "something, such as a pipeline that installs its own attention processors, replaced it, so the "
                "result has no temporal momentum there"
            )
    finally:
        model.set_attn_processor(dict(originals))  # set_attn_processor pops from the dict it is given


def _latent_size(pipe, height, width) -> tuple[int, int]:
    """Latent height and width: the UNet's sample size without height and width, else theirs."""
    scale = pipe.vae_scale_factor
    if bool(height) != bool(width):
        # StableDiffusionPipeline then defaults both, AnimateDiff, TextToVideoSD and SDXL the missing
        # one alone: latents drawn by either rule would be the wrong size for the others.
        raise ValueError(
            f"height and width: pass both or neither (got height={height!r}, width={width!r}); "
            "pipelines fill in a missing one differently"
        )
    if not height:
        sample_size = pipe.unet.config.sample_size
        h, w = (sample_size, sample_size) if isinstance(sample_size, int) else sample_size
        return int(h), int(w)
    return int(height) // scale, int(width) // scale


# Video UNets whose pipelines take (B, C, F, H, W) latents and a `num_frames` argument: zero_shot_video drives them.
_FRAME_AXIS_2_UNETS = ("UNetMotionModel", "UNet3DConditionModel")
# Video UNets whose pipelines need more than a prompt (an image) or another latent layout.
_OTHER_VIDEO_UNETS = ("UNetSpatioTemporalConditionModel", "I2VGenXLUNet")
# Pipelines that install their own attention processors in their call (PAG is refused on its own).
_PROCESSOR_SWAPPING_PIPELINES = (
    "StableDiffusionAttendAndExcitePipeline",
    "StableDiffusionSAGPipeline",
    "StableDiffusionPix2PixZeroPipeline",
)


def _pipeline_kind(pipe) -> str:
    """The pipeline's kind: "image" (frames folded into the batch by num_images_per_prompt) or "video".

    "video": (B, C, F, H, W) latents and a `num_frames` argument.

    Otherwise raises the TypeError that says why, before anything is drawn or installed.
    """
    pipe_name = type(pipe).__name__
    unet = getattr(pipe, "unet", None)
    if unet is None or not hasattr(unet, "attn_processors"):
        denoiser = getattr(pipe, "transformer", None)
        if isinstance(denoiser, torch.nn.Module):
            _refuse_video_transformer(denoiser)  # a video transformer: the TypeError that says why
            raise TypeError(
                f"pipe: zero_shot_video drives UNet pipelines; {pipe_name} denoises with {type(denoiser).__name__}: "
                "use temporal_momentum_processors(pipe.transformer, ...) around your own call if its attention "
                "has the frames in the batch"
            )
        raise TypeError(f"pipe must be a diffusers pipeline with a `unet` (got {pipe_name})")
    if not callable(pipe):
        raise TypeError(f"pipe must be a callable diffusers pipeline (got {pipe_name}, which cannot be called)")
    import diffusers  # a pipeline with a diffusers UNet: diffusers is installed

    params = inspect.signature(pipe.__call__).parameters
    unet_name = type(unet).__name__
    pag = _classes((("diffusers.pipelines.pag.pag_utils", "PAGMixin"),))
    if isinstance(pipe, pag):
        raise TypeError(
            f"pipe: zero_shot_video cannot drive {pipe_name}: perturbed-attention guidance swaps the self-attention "
            "processors during the call, which would replace temporal momentum on those layers; use the pipeline "
            "without PAG"
        )

    def classes(names):
        return tuple(c for c in (getattr(diffusers, n, None) for n in names) if isinstance(c, type))

    if isinstance(pipe, classes(_PROCESSOR_SWAPPING_PIPELINES)):
        raise TypeError(
            f"pipe: zero_shot_video cannot drive {pipe_name}: it installs its own attention processors during the "
            "call, which would replace temporal momentum; use the plain pipeline"
        )
    image = params.get("image")
    if image is not None and image.default is inspect.Parameter.empty:
        raise TypeError(
            f"pipe: zero_shot_video cannot drive {pipe_name}: it needs an input image (image-to-image or "
            "image-to-video); it drives text-to-image and text-to-video pipelines"
        )
    if "strength" in params and "mask_image" not in params:
        raise TypeError(
            f"pipe: zero_shot_video cannot drive {pipe_name}: an image-to-image pipeline starts from its input image "
            "noised to `strength`, and takes passed latents as that start, so the dependency noise would replace "
            "the image; use the text-to-image pipeline"
        )

    if isinstance(unet, classes(_FRAME_AXIS_2_UNETS)):
        if not {"prompt", "num_frames", "latents"} <= params.keys():
            raise TypeError(
                f"pipe: zero_shot_video cannot drive {pipe_name}: a video pipeline ({unet_name}) must take `prompt`, "
                "`num_frames` and `latents` (text-to-video: AnimateDiffPipeline, TextToVideoSDPipeline); use "
                "temporal_momentum_processors(pipe.unet, ...) around your own call"
            )
        return "video"
    if isinstance(unet, classes(_OTHER_VIDEO_UNETS)) or not {"prompt", "num_images_per_prompt", "latents"} <= set(
        params
    ):
        raise TypeError(
            f"pipe: zero_shot_video cannot drive {pipe_name} ({unet_name}): it drives text-to-image pipelines "
            "that take `prompt`, `num_images_per_prompt` and `latents` (Stable Diffusion) and text-to-video "
            "pipelines with (B, C, F, H, W) latents and `num_frames` (AnimateDiff, TextToVideoSD); for others use "
            "temporal_momentum_processors(pipe.unet, ...) around your own call"
        )
    return "image"


def zero_shot_video(
    pipe,
    prompt,
    num_frames: int = 8,
    momentum=0.98,
    lambda_i: float = 0.1,
    generator: torch.Generator | None = None,
    **pipe_kwargs,
):
    """Sample `num_frames` coherent frames per prompt with ZS² from a diffusers pipeline.

    Args:
        pipe: a diffusers pipeline with a `unet`, either
            - text-to-image (StableDiffusionPipeline and relatives, whose `__call__` takes `latents` and
              `num_images_per_prompt`): the frames are folded into the image batch, or
            - text-to-video with (B, C, F, H, W) latents and a `num_frames` argument (AnimateDiffPipeline,
              TextToVideoSDPipeline): `num_frames` is passed through.
            Any other pipeline (video transformers, image-to-video, image-to-image, pipelines that install
            their own attention processors) is refused with a TypeError up front; inpainting runs at
            strength 1 only.
        prompt: a string (one video), a list of strings (one video each), or None
            with `prompt_embeds` in pipe_kwargs.
        num_frames: frames per video.
        momentum: temporal momentum of the spatial self-attention keys and values (float in [0, 1] or tensor).
        lambda_i: dependency-noise target (vidmem_ext.dependency_noise): small keeps
            the frames' initial noise alike, large makes it independent.
        generator: one torch.Generator; it draws the noise and is passed on to the pipeline.
        **pipe_kwargs: passed to `pipe(...)` (num_inference_steps, guidance_scale,
            height and width (both or neither), output_type, negative_prompt, ...), except `latents`,
            `num_images_per_prompt` and `num_videos_per_prompt`, which this function sets.

    Returns:
        For a string prompt, one video: from an image pipeline the num_frames frames in its output
        type (a list of PIL images by default; an array or tensor with frames first for output_type
        "np", "pt" or "latent"); from a video pipeline its own `frames[0]` (for AnimateDiff a list of
        PIL images, an (F, H, W, C) array, an (F, C, H, W) tensor, or (C, F, H, W) latents). For a list
        of prompts, a list of such videos.

    The momentum goes on the spatial self-attention layers only (`self_attention_layer_names`): never on
    motion or temporal modules. Image pipelines: frames go into the batch video by video, frames
    contiguous, which is the order the pipeline gives `num_images_per_prompt` copies of each prompt.
    Video pipelines: the latents are (videos, C, num_frames, H, W) dependency noise on axis 2, and the
    UNet folds them into the same order. The CFG batch [uncond; cond] keeps that order in each half.
    Passed latents are scaled by the scheduler's init_noise_sigma inside the pipeline (prepare_latents),
    so they are drawn at unit scale. The pipeline's processors are restored afterwards, also on error.
    """
    num_frames = check_num_frames(num_frames)
    momentum = check_momentum(momentum)
    for key in ("latents", "num_images_per_prompt", "num_videos_per_prompt"):
        if key in pipe_kwargs:
            raise TypeError(f"zero_shot_video sets `{key}` itself; do not pass it")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be one torch.Generator or None, got {type(generator).__name__}")

    for key in ("height", "width"):
        if pipe_kwargs.get(key) is not None:
            check_int(pipe_kwargs[key], key, minimum=1)
    if isinstance(prompt, str):
        videos = 1
    elif isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt) and prompt:
        videos, prompt = len(prompt), list(prompt)
    elif prompt is None and pipe_kwargs.get("prompt_embeds") is not None:
        embeds = pipe_kwargs["prompt_embeds"]
        if not isinstance(embeds, torch.Tensor):
            raise TypeError(f"prompt_embeds must be a tensor (videos, tokens, dim), got {type(embeds).__name__}")
        if embeds.dim() != 3:
            raise ValueError(f"prompt_embeds must have shape (videos, tokens, dim), got {tuple(embeds.shape)}")
        videos = embeds.shape[0]
    else:
        raise TypeError("prompt must be a string, a non-empty list of strings, or None with prompt_embeds")
    kind = _pipeline_kind(pipe)  # after the argument checks: they need no pipeline
    # An inpainting pipeline takes passed latents as pure noise: only at strength 1 is that its start. Some
    # default to another strength (SDXL inpainting: 0.9999), so the default counts too, and then 1.0 is passed.
    default_strength = inspect.signature(pipe.__call__).parameters.get("strength")
    if "strength" in pipe_kwargs or default_strength is not None:
        strength = pipe_kwargs.get("strength", default_strength.default if default_strength else 1.0)
        if check_real(strength, "strength") != 1.0:
            raise ValueError(
                f"strength must be 1.0 with zero_shot_video, got {strength}"
                + ("" if "strength" in pipe_kwargs else f" ({type(pipe).__name__}'s default): pass strength=1.0")
                + ": the latents it passes are the start's pure noise, which is the pipeline's start only at "
                "strength 1"
            )
    unet = pipe.unet
    self_attention_layer_names(unet)  # refuses an unsupported UNet before any noise is drawn

    latent_h, latent_w = _latent_size(pipe, pipe_kwargs.get("height"), pipe_kwargs.get("width"))
    device = pipe._execution_device
    frame_dim = 2 if kind == "video" else 1
    # The latents' channels, which the pipeline's prepare_latents draws: the VAE's where there is one
    # (an inpainting or InstructPix2Pix UNet takes more input channels: the mask and image latents the
    # pipeline concatenates), else the UNet's input channels.
    vae = getattr(pipe, "vae", None)
    channels = getattr(getattr(vae, "config", None), "latent_channels", None) or unet.config.in_channels
    shape = [videos, channels, latent_h, latent_w]
    shape.insert(frame_dim, num_frames)
    noise = dependency_noise(
        tuple(shape),
        lambda_i,
        frame_dim=frame_dim,
        generator=generator,
        device=generator.device if generator is not None else device,
        dtype=torch.float32,
    )
    if kind == "video":
        latents = noise.to(device=device, dtype=unet.dtype)
        call = {"num_frames": num_frames}
    else:
        latents = rearrange(noise, "v f c h w -> (v f) c h w").to(device=device, dtype=unet.dtype)
        call = {"num_images_per_prompt": num_frames}

    with temporal_momentum_processors(unet, momentum, num_frames):
        output = pipe(prompt=prompt, latents=latents, generator=generator, **call, **pipe_kwargs)

    if kind == "video":
        frames = output[0] if isinstance(output, tuple) else output.frames
        per_video = [frames[i] for i in range(videos)]
    else:
        images = output[0] if isinstance(output, tuple) else output.images
        per_video = [images[i * num_frames : (i + 1) * num_frames] for i in range(videos)]
    return per_video[0] if isinstance(prompt, str) else per_video


# --------------------------------------------------------------------------- a tiny pipeline for tests and the demo


def _byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes that byte-level BPE tokenizers (GPT-2, CLIP) use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    remapped = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(remapped)) for b in range(256)]


def write_clip_vocab(folder: str, words=()) -> None:
    """vocab.json and merges.txt of a byte-level BPE in CLIP's format: every byte is a token, and merges
    spell each of `words` as one token (none: every word splits into characters)."""
    alphabet = _byte_level_alphabet()
    vocab = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(c + "</w>" for c in alphabet)]
    merges = []
    # Longest words first: a short word's early merge (e.g. "r e" of red) would otherwise split a longer one (green).
    for word in sorted(set(words), key=lambda w: (-len(w), w)):
        parts = [*word[:-1], word[-1] + "</w>"]
        merged = parts[0]
        for part in parts[1:]:
            if (merged, part) not in merges:
                merges.append((merged, part))
            merged += part
            if merged not in vocab:
                vocab.append(merged)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({token: i for i, token in enumerate(vocab)}, f)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


def _tiny_clip_tokenizer(max_length: int):
    """A CLIP tokenizer with a byte-level vocabulary and no merges (every word splits into characters)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as folder:
        write_clip_vocab(folder)
        return CLIPTokenizer.from_pretrained(folder, model_max_length=max_length)


@torch.no_grad()
def _sharpen_self_attention(unet, gain: float):
    """Tie key to query projections in self-attention and scale them and the output projection by gain."""
    for name in self_attention_layer_names(unet):
        attn = unet.get_submodule(name[: -len(_SUFFIX)])
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
    seed = check_int(seed, "seed", minimum=-(2**63), maximum=2**64 - 1)  # what torch.manual_seed takes
    image_size = check_int(image_size, "image_size", minimum=8)
    if image_size % 2:
        raise ValueError(f"image_size must be even and >= 8, got {image_size}")
    attention_gain = check_real(attention_gain, "attention_gain")
    try:
        device = torch.device(device) if device is not None else None
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must name a torch device, got {device!r} ({exc})") from None
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

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
