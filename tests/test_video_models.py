"""ZS² on diffusers' video model families, each built tiny from configs (no download), as diffusers' fast tests do.

Every row of docs/video_models.md is backed here: which layers get the processor (spatial self-attention
only; never motion or temporal modules), that momentum 0 and 1 are exactly plain and cross-frame
attention on those layers, AnimateDiff and TextToVideoSD driven end to end by zero_shot_video, and the
TypeError refusals of video transformers (frames in the token axis) and of pipelines it cannot drive.
"""

import re
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers", reason="the diffusers extra is not installed")
pytestmark = [
    pytest.mark.filterwarnings("ignore:vidmem_ext.* using the slow Python reference"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]

import diffusers  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor2_0  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

import vidmem_ext  # noqa: E402
from vidmem_ext.attention import TemporalMomentumAttnProcessor  # noqa: E402
from vidmem_ext.pipelines import (  # noqa: E402
    _sharpen_self_attention,
    _tiny_clip_tokenizer,
    self_attention_layer_names,
    temporal_momentum_processors,
    zero_shot_video,
)

try:  # under pipelines/deprecated since diffusers 0.33
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
        CrossFrameAttnProcessor2_0,
    )
except ImportError:
    from diffusers.pipelines.text_to_video_synthesis.pipeline_text_to_video_zero import CrossFrameAttnProcessor2_0

STEPS = 2
TEXT_WIDTH = 16


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def _text_parts(seed):
    tokenizer = _tiny_clip_tokenizer(16)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_WIDTH,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    return tokenizer, text_encoder


def _tiny_vae(seed):
    torch.manual_seed(seed)
    return diffusers.AutoencoderKL(
        block_out_channels=(8, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=2,
        sample_size=16,
    )


def _ddim():
    return diffusers.DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False, steps_offset=1
    )


def _no_progress_bar(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def animatediff():
    return _tiny_animatediff()


def _tiny_animatediff(pipeline_class=diffusers.AnimateDiffPipeline):
    """AnimateDiffPipeline: a 2-level SD UNet (cross-attention at level 0 and mid) plus a motion adapter."""
    torch.manual_seed(0)
    unet2d = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=4,
        norm_num_groups=2,
    )
    adapter = diffusers.MotionAdapter(
        block_out_channels=(8, 16), motion_layers_per_block=1, motion_norm_num_groups=2, motion_num_attention_heads=2
    )
    tokenizer, text_encoder = _text_parts(1)
    pipe = pipeline_class(
        vae=_tiny_vae(2),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet2d,
        motion_adapter=adapter,
        scheduler=_ddim(),
        feature_extractor=None,
        image_encoder=None,
    )
    assert isinstance(pipe.unet, diffusers.UNetMotionModel)
    _sharpen_self_attention(pipe.unet, 4.0)  # random q/k give near-uniform attention: make it matter
    return _no_progress_bar(pipe)


@pytest.fixture(scope="module")
def text_to_video_sd():
    """TextToVideoSDPipeline (ModelScope): UNet3DConditionModel with transformer_in and temp_attentions."""
    torch.manual_seed(3)
    unet = diffusers.UNet3DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=4,
        norm_num_groups=2,
    )
    _sharpen_self_attention(unet, 4.0)
    tokenizer, text_encoder = _text_parts(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = diffusers.TextToVideoSDPipeline(
            vae=_tiny_vae(5), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=_ddim()
        )
    return _no_progress_bar(pipe)


def _tiny_svd_unet():
    torch.manual_seed(6)
    return diffusers.UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64),  # its GroupNorms have 32 groups
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=TEXT_WIDTH,
        num_attention_heads=(2, 4),
        projection_class_embeddings_input_dim=3 * 8,
        addition_time_embed_dim=8,
    ).eval()


_VIDEO_TRANSFORMER_CONFIGS = {
    "CogVideoX": (
        "CogVideoXTransformer3DModel",
        dict(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=4,
            out_channels=4,
            time_embed_dim=2,
            text_embed_dim=8,
            num_layers=1,
            sample_width=8,
            sample_height=8,
            sample_frames=9,
            patch_size=2,
            temporal_compression_ratio=4,
            max_text_seq_length=8,
        ),
    ),
    "HunyuanVideo": (
        "HunyuanVideoTransformer3DModel",
        dict(
            in_channels=4,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=10,
            num_layers=1,
            num_single_layers=1,
            num_refiner_layers=1,
            patch_size=1,
            patch_size_t=1,
            text_embed_dim=16,
            pooled_projection_dim=8,
            rope_axes_dim=(2, 4, 4),
        ),
    ),
    "Wan": (
        "WanTransformer3DModel",
        dict(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=4,
            out_channels=4,
            text_dim=16,
            freq_dim=256,
            ffn_dim=32,
            num_layers=1,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        ),
    ),
    "FramePack": (
        "HunyuanVideoFramepackTransformer3DModel",
        dict(
            in_channels=4,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=10,
            num_layers=1,
            num_single_layers=1,
            num_refiner_layers=1,
            patch_size=2,
            patch_size_t=1,
            text_embed_dim=16,
            pooled_projection_dim=8,
            rope_axes_dim=(2, 4, 4),
            image_condition_type=None,
            has_image_proj=True,
            image_proj_dim=16,
            has_clean_x_embedder=True,
        ),
    ),
}


def _tiny_video_transformer(family):
    class_name, config = _VIDEO_TRANSFORMER_CONFIGS[family]
    cls = getattr(diffusers, class_name, None)
    if cls is None:
        pytest.skip(f"this diffusers has no {class_name}")
    torch.manual_seed(7)
    return cls(**config)


def _spatial_attn1_names(model):
    """The expected choice, written from the module tree: attn1 of `attentions.*.transformer_blocks` only."""
    return [
        name
        for name in model.attn_processors
        if re.search(r"(^|\.)attentions\.\d+\.transformer_blocks\.\d+\.attn1\.processor$", name)
    ]


def _processors_now(model):
    return dict(model.attn_processors)


# --------------------------------------------------------------------------- layer selection


def test_animatediff_gets_spatial_self_attention_only(animatediff):
    unet = animatediff.unet
    names = self_attention_layer_names(unet)
    assert names == _spatial_attn1_names(unet) and len(names) == 4  # down 0, mid, two in up 1
    motion = [n for n in unet.attn_processors if ".motion_modules." in n]
    assert len(motion) == 14 and not set(motion) & set(names)
    originals = _processors_now(unet)
    with temporal_momentum_processors(unet, 0.9, 3) as processor:
        for name, proc in unet.attn_processors.items():
            assert (proc is processor) == (name in names)
            if name in motion:
                assert proc is originals[name]
    assert unet.attn_processors == originals


def test_unet3d_skips_transformer_in_and_temp_attentions(text_to_video_sd):
    unet = text_to_video_sd.unet
    names = self_attention_layer_names(unet)
    assert names == _spatial_attn1_names(unet) and len(names) == 4
    temporal = [n for n in unet.attn_processors if n.startswith("transformer_in.") or ".temp_attentions." in n]
    assert len(temporal) == 10 and not set(temporal) & set(names)


def test_stable_video_diffusion_skips_temporal_transformer_blocks():
    unet = _tiny_svd_unet()
    names = self_attention_layer_names(unet)
    assert names == _spatial_attn1_names(unet) and len(names) == 4
    assert all(".temporal_transformer_blocks." not in n for n in names)
    assert any(".temporal_transformer_blocks." in n for n in unet.attn_processors)


def _tiny_sdxl_unet():
    torch.manual_seed(8)
    return diffusers.UNet2DConditionModel(  # SDXL's layout: text_time embedding, 2 transformer layers per block
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + TEXT_WIDTH,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=4,
        norm_num_groups=2,
    ).eval()


def test_i2vgen_xl_skips_every_layer_that_attends_over_frames():
    torch.manual_seed(11)
    unet = diffusers.I2VGenXLUNet(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=4,
        attention_head_dim=4,
        num_attention_heads=None,
        norm_num_groups=2,
    )
    names = self_attention_layer_names(unet)
    assert names == _spatial_attn1_names(unet) and len(names) == 4
    # its image-latent encoder attends over frames (batch = positions) with an attn1 at the top level
    assert "image_latents_temporal_encoder.attn1.processor" in unet.attn_processors


def test_sdxl_style_unet_gets_every_self_attention_layer_and_momentum_0_1_are_exact():
    unet, videos, frames = _tiny_sdxl_unet(), 1, 3
    names = self_attention_layer_names(unet)
    every_attn1 = [n for n in unet.attn_processors if n.endswith("attn1.processor")]
    assert names == every_attn1 and len(names) == 2 + 2 * 2 + 2  # down 1 (x2 layers), up 0 (2 blocks x2), mid (x2)
    _sharpen_self_attention(unet, 4.0)
    g, batch = _generator(2), 2 * videos * frames  # CFG: [uncond; cond], frames of each video contiguous
    sample = torch.randn(batch, 4, 8, 8, generator=g)
    text = torch.randn(batch, 5, TEXT_WIDTH, generator=g)
    added = {"text_embeds": torch.randn(batch, TEXT_WIDTH, generator=g), "time_ids": torch.rand(batch, 6, generator=g)}

    def run():
        with torch.no_grad():
            return unet(sample, 10, text, added_cond_kwargs=added).sample

    plain = run()
    cross_frame = _cross_frame_reference(unet, names, 2 * videos, run)
    assert (plain - cross_frame).abs().max() > 1e-4
    with temporal_momentum_processors(unet, 0.0, frames):
        assert torch.equal(run(), plain)
    with temporal_momentum_processors(unet, 1.0, frames):
        assert torch.equal(run(), cross_frame)


def test_zero_shot_video_sdxl_pipeline_at_momentum_0_equals_the_untouched_pipeline():
    tokenizer = _tiny_clip_tokenizer(16)
    torch.manual_seed(9)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=TEXT_WIDTH,
    )
    unet = diffusers.UNet2DConditionModel(**{**_tiny_sdxl_unet().config, "cross_attention_dim": 2 * TEXT_WIDTH})
    _sharpen_self_attention(unet, 4.0)
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=_tiny_vae(10),
        text_encoder=CLIPTextModel(config),
        text_encoder_2=CLIPTextModelWithProjection(config),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=_ddim(),
        force_zeros_for_empty_prompt=False,
    )
    _no_progress_bar(pipe)
    kwargs = {"num_inference_steps": STEPS, "output_type": "pt"}
    got = zero_shot_video(pipe, "a red fox", 3, 0.0, 0.3, _generator(4), **kwargs)
    noise = vidmem_ext.dependency_noise((1, 3, 4, 8, 8), 0.3, frame_dim=1, generator=_generator(4))
    expected = pipe("a red fox", num_images_per_prompt=3, latents=noise[0], **kwargs).images
    assert got.shape == (3, 3, 16, 16) and torch.equal(got, expected)
    moved = zero_shot_video(pipe, "a red fox", 3, 1.0, 0.3, _generator(4), **kwargs)
    assert (moved - expected).abs().max() > 1e-4


# --------------------------------------------------------------------------- momentum 0 and 1 exact on chosen layers


def _cross_frame_reference(unet, names, batch_size, run):
    """run() with CrossFrameAttnProcessor2_0(batch_size) on `names` only, as a Text2Video-Zero user would install it."""
    originals = _processors_now(unet)
    cross_frame = CrossFrameAttnProcessor2_0(batch_size=batch_size)
    unet.set_attn_processor({n: cross_frame if n in names else p for n, p in originals.items()})
    try:
        return run()
    finally:
        unet.set_attn_processor(dict(originals))


def _animatediff_unet_inputs(videos, frames, seed=0):
    g = _generator(seed)
    latents = torch.randn(videos, 4, frames, 8, 8, generator=g)
    text = torch.randn(2 * videos, 5, TEXT_WIDTH, generator=g)  # [uncond; cond], one prompt per video
    # UNetMotionModel takes the text per frame, as AnimateDiffPipeline repeats it
    return torch.cat([latents] * 2), text.repeat_interleave(frames, dim=0)


@pytest.mark.parametrize("videos,frames", [(1, 3), (2, 4)])
def test_animatediff_momentum_0_and_1_equal_plain_and_cross_frame(animatediff, videos, frames):
    unet = animatediff.unet
    sample, text = _animatediff_unet_inputs(videos, frames)

    def run():
        with torch.no_grad():
            return unet(sample, 10, text).sample

    names = self_attention_layer_names(unet)
    plain = run()
    cross_frame = _cross_frame_reference(unet, names, 2 * videos, run)  # batch_size counts videos with CFG copies
    assert (plain - cross_frame).abs().max() > 1e-3
    with temporal_momentum_processors(unet, 0.0, frames):
        assert torch.equal(run(), plain)
    with temporal_momentum_processors(unet, 1.0, frames):
        assert torch.equal(run(), cross_frame)
    with temporal_momentum_processors(unet, 0.98, frames):
        between = run()
    assert (between - plain).abs().max() > 1e-4 and (between - cross_frame).abs().max() > 1e-5


def test_stable_video_diffusion_momentum_0_and_1_equal_plain_and_cross_frame():
    unet, videos, frames = _tiny_svd_unet(), 2, 3
    g = _generator(1)
    sample = torch.randn(videos, frames, 4, 8, 8, generator=g)
    image_embeddings = torch.randn(videos, 1, TEXT_WIDTH, generator=g)
    added_time_ids = torch.rand(videos, 3, generator=g)

    def run():
        with torch.no_grad():
            return unet(sample, 10, image_embeddings, added_time_ids).sample

    names = self_attention_layer_names(unet)
    _sharpen_self_attention(unet, 4.0)
    plain = run()
    cross_frame = _cross_frame_reference(unet, names, videos, run)
    assert (plain - cross_frame).abs().max() > 1e-4
    with temporal_momentum_processors(unet, 0.0, frames):
        assert torch.equal(run(), plain)
    with temporal_momentum_processors(unet, 1.0, frames):
        assert torch.equal(run(), cross_frame)


# --------------------------------------------------------------------------- zero_shot_video on text-to-video pipelines


def _video_noise(frames, lambda_i, seed, size=8, videos=1):
    return vidmem_ext.dependency_noise(
        (videos, 4, frames, size, size), lambda_i, frame_dim=2, generator=_generator(seed)
    )


def test_zero_shot_video_animatediff_at_momentum_0_equals_the_untouched_pipeline(animatediff):
    kwargs = {"num_inference_steps": STEPS, "output_type": "pt"}
    got = zero_shot_video(animatediff, "a red fox", 3, 0.0, 0.3, _generator(5), **kwargs)
    expected = animatediff("a red fox", num_frames=3, latents=_video_noise(3, 0.3, 5), **kwargs).frames[0]
    assert got.shape == (3, 3, 16, 16)  # the pipeline's (F, C, H, W) for one video
    assert torch.equal(got, expected)
    moved = zero_shot_video(animatediff, "a red fox", 3, 0.98, 0.3, _generator(5), **kwargs)
    assert (moved - expected).abs().max() > 1e-4


def test_zero_shot_video_animatediff_end_to_end(animatediff):
    unet, num_frames, lambda_i, seen = animatediff.unet, 3, 0.3, {}
    originals = _processors_now(unet)

    def first_call(module, args, kwargs):
        if not seen:
            seen["sample"] = args[0].clone()
            seen["processors"] = _processors_now(module)

    handle = unet.register_forward_pre_hook(first_call, with_kwargs=True)
    try:
        latents = zero_shot_video(
            animatediff,
            "a red fox",
            num_frames,
            0.7,
            lambda_i,
            _generator(3),
            num_inference_steps=STEPS,
            output_type="latent",
        )
    finally:
        handle.remove()
    assert latents.shape == (4, num_frames, 8, 8)  # AnimateDiff's latent output (C, F, H, W) for one video
    start = _video_noise(num_frames, lambda_i, 3) * animatediff.scheduler.init_noise_sigma
    torch.testing.assert_close(seen["sample"], torch.cat([start] * 2))  # CFG [uncond; cond] of (B, C, F, H, W)
    spatial = set(self_attention_layer_names(unet))
    for name, processor in seen["processors"].items():
        if name in spatial:
            assert isinstance(processor, TemporalMomentumAttnProcessor)
            assert processor.momentum == 0.7 and processor.num_frames == num_frames
        else:
            assert processor is originals[name]  # motion modules and cross-attention untouched
    assert unet.attn_processors == originals

    frames = zero_shot_video(animatediff, "a red fox", num_frames=2, generator=_generator(), num_inference_steps=STEPS)
    assert isinstance(frames, list) and len(frames) == 2 and all(f.size == (16, 16) for f in frames)
    arrays = zero_shot_video(
        animatediff, ["a red fox", "a blue bird"], num_frames=2, num_inference_steps=STEPS, output_type="np"
    )
    assert len(arrays) == 2 and all(isinstance(a, np.ndarray) and a.shape == (2, 16, 16, 3) for a in arrays)
    assert not np.allclose(arrays[0], arrays[1])


def test_zero_shot_video_animatediff_restores_processors_on_error_and_rejects_batch_arguments(animatediff):
    originals = _processors_now(animatediff.unet)

    def fail(*args, **kwargs):
        raise RuntimeError("interrupted by the test")

    with pytest.raises(RuntimeError, match="interrupted by the test"):
        zero_shot_video(animatediff, "a", num_frames=2, num_inference_steps=STEPS, callback_on_step_end=fail)
    assert animatediff.unet.attn_processors == originals
    with pytest.raises(TypeError, match="sets `num_videos_per_prompt` itself"):
        zero_shot_video(animatediff, "a", num_videos_per_prompt=2)
    with pytest.raises(TypeError, match="sets `latents` itself"):
        zero_shot_video(animatediff, "a", latents=torch.zeros(1))


def test_zero_shot_video_text_to_video_sd(text_to_video_sd):
    pipe, originals = text_to_video_sd, _processors_now(text_to_video_sd.unet)
    kwargs = {"num_inference_steps": STEPS, "output_type": "pt"}
    got = zero_shot_video(pipe, "a red fox", 3, 0.0, 0.3, _generator(2), **kwargs)
    expected = pipe("a red fox", num_frames=3, latents=_video_noise(3, 0.3, 2), **kwargs).frames[0]
    assert got.shape == expected.shape and got.shape[0] == 3
    assert torch.equal(got, expected)
    moved = zero_shot_video(pipe, "a red fox", 3, 1.0, 0.3, _generator(2), **kwargs)
    assert (moved - expected).abs().max() > 1e-4
    assert pipe.unet.attn_processors == originals


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("family", ["CogVideoX", "HunyuanVideo", "Wan", "FramePack"])
def test_video_transformers_are_refused_and_nothing_is_installed(family):
    model = _tiny_video_transformer(family)
    before = _processors_now(model) if hasattr(model, "attn_processors") else None
    name = type(model).__name__
    with pytest.raises(TypeError, match=rf"{name} is a video transformer.*token axis"):
        self_attention_layer_names(model)
    with pytest.raises(TypeError, match=rf"{name} is a video transformer"):
        with temporal_momentum_processors(model, 0.9, 2):
            pytest.fail("the body must not run")
    if before is not None:
        after = _processors_now(model)
        assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


def test_zero_shot_video_refuses_transformer_and_image_to_video_pipelines():
    cogvideo = diffusers.CogVideoXPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        transformer=_tiny_video_transformer("CogVideoX"),
        scheduler=diffusers.CogVideoXDDIMScheduler(),
    )
    with pytest.raises(TypeError, match="CogVideoXTransformer3DModel is a video transformer"):
        zero_shot_video(cogvideo, "a red fox", num_frames=2)
    if hasattr(diffusers, "HunyuanVideoFramepackPipeline"):  # its transformer has no attn_processors at all
        framepack = diffusers.HunyuanVideoFramepackPipeline(
            text_encoder=None,
            tokenizer=None,
            transformer=_tiny_video_transformer("FramePack"),
            vae=None,
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
            text_encoder_2=None,
            tokenizer_2=None,
            image_encoder=None,
            feature_extractor=None,
        )
        with pytest.raises(TypeError, match="HunyuanVideoFramepackTransformer3DModel is a video transformer"):
            zero_shot_video(framepack, "a red fox", num_frames=2)
    svd = diffusers.StableVideoDiffusionPipeline(
        vae=None,
        image_encoder=None,
        unet=_tiny_svd_unet(),
        scheduler=diffusers.EulerDiscreteScheduler(),
        feature_extractor=None,
    )
    with pytest.raises(TypeError, match="cannot drive StableVideoDiffusionPipeline"):
        zero_shot_video(svd, "a red fox", num_frames=2)


class _RotaryProcessor(AttnProcessor2_0):
    """Stands for a processor that adds something (here nothing) the temporal momentum processor would drop."""


class _CustomProcessor:
    def __call__(self, attn, hidden_states, *args, **kwargs):
        return hidden_states


def test_a_layer_with_a_processor_that_does_more_is_refused_unless_layers_leaves_it_out(animatediff):
    unet = animatediff.unet
    names = self_attention_layer_names(unet)
    originals = _processors_now(unet)
    unet.set_attn_processor({n: _CustomProcessor() if n == names[0] else p for n, p in originals.items()})
    try:
        with pytest.raises(TypeError, match=rf"layer '{re.escape(names[0])}' uses _CustomProcessor"):
            with temporal_momentum_processors(unet, 0.9, 2):
                pytest.fail("the body must not run")
        assert isinstance(unet.attn_processors[names[0]], _CustomProcessor)
        assert all(not isinstance(p, TemporalMomentumAttnProcessor) for p in unet.attn_processors.values())
        with temporal_momentum_processors(unet, 0.9, 2, layers=names[1:]) as processor:
            assert [n for n, p in unet.attn_processors.items() if p is processor] == names[1:]
    finally:
        unet.set_attn_processor(dict(originals))
    # a subclass of a plain processor keeps the plain contract
    unet.set_attn_processor({n: _RotaryProcessor() if n == names[0] else p for n, p in originals.items()})
    try:
        assert self_attention_layer_names(unet) == names
    finally:
        unet.set_attn_processor(dict(originals))


def test_layers_overrides_the_choice(animatediff):
    unet = animatediff.unet
    spatial = self_attention_layer_names(unet)
    motion_attn1 = [n for n in unet.attn_processors if ".motion_modules." in n and n.endswith("attn1.processor")]
    # names, with or without the ".processor" suffix, in the model's order
    picked = [spatial[2], spatial[0].removesuffix(".processor")]
    assert self_attention_layer_names(unet, layers=picked) == [spatial[0], spatial[2]]
    # a callable on (name, module) is asked about every self-attention layer, motion modules included
    assert self_attention_layer_names(
        unet, layers=lambda name, module: ".motion_modules." in name and "attn1" in name
    ) == (motion_attn1)
    with pytest.raises(ValueError, match=r"layers: \[\] chose no layer of UNetMotionModel"):
        with temporal_momentum_processors(unet, 0.5, 2, layers=[]):
            pytest.fail("the body must not run")
    cross = next(n for n in unet.attn_processors if n.endswith("attn2.processor") and ".attentions." in n)
    with pytest.raises(ValueError, match="is a cross-attention or added-KV layer"):
        self_attention_layer_names(unet, layers=[cross])
    with pytest.raises(ValueError, match="is not an attention layer"):
        self_attention_layer_names(unet, layers=["down_blocks.0.nothing"])
    with pytest.raises(TypeError, match="layers must be None, a list of layer names or a callable"):
        self_attention_layer_names(unet, layers=spatial[0])
    with pytest.raises(TypeError, match="layers must hold layer names"):
        self_attention_layer_names(unet, layers=[3])


def test_freenoise_split_inference_and_pag_are_refused():
    pipe = _tiny_animatediff()
    if not hasattr(pipe, "enable_free_noise_split_inference"):
        pytest.skip("this diffusers has no FreeNoise split inference")
    pipe.enable_free_noise(context_length=2, context_stride=1)
    pipe.enable_free_noise_split_inference(spatial_split_size=4, temporal_split_size=2)
    originals = _processors_now(pipe.unet)
    with pytest.raises(TypeError, match="runs inside SplitInferenceModule"):
        zero_shot_video(pipe, "a red fox", num_frames=3, num_inference_steps=STEPS)
    assert pipe.unet.attn_processors == originals
    pag = _tiny_animatediff(diffusers.AnimateDiffPAGPipeline)
    with pytest.raises(TypeError, match="cannot drive AnimateDiffPAGPipeline: perturbed-attention guidance"):
        zero_shot_video(pag, "a red fox", num_frames=3, num_inference_steps=STEPS)


def test_freenoise_without_split_inference_keeps_its_temporal_blocks_untouched():
    pipe = _tiny_animatediff()
    pipe.enable_free_noise(context_length=2, context_stride=1)
    names = self_attention_layer_names(pipe.unet)
    assert names == _spatial_attn1_names(pipe.unet)
    frames = zero_shot_video(pipe, "a red fox", 3, 0.9, 0.3, _generator(), num_inference_steps=STEPS, output_type="pt")
    assert frames.shape == (3, 3, 16, 16) and torch.isfinite(frames).all()
