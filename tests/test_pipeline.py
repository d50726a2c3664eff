"""zero_shot_video end to end on a tiny randomly initialised Stable Diffusion pipeline (built offline from configs)."""

import numpy as np
import pytest
import torch
from einops import rearrange

pytest.importorskip("diffusers", reason="the diffusers extra is not installed")
pytestmark = [
    pytest.mark.filterwarnings("ignore:vidmem_ext.* using the slow Python reference"),
    pytest.mark.usefixtures("one_torch_thread"),
]

import vidmem_ext  # noqa: E402
from vidmem_ext.attention import TemporalMomentumAttnProcessor  # noqa: E402
from vidmem_ext.pipelines import self_attention_layer_names, tiny_stable_diffusion, zero_shot_video  # noqa: E402

STEPS = 2


@pytest.fixture(scope="module")
def pipe():
    return tiny_stable_diffusion(seed=0, image_size=32)


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def _mean_consecutive_correlation(frames: torch.Tensor) -> float:
    """Mean Pearson correlation of frame i with frame i + 1 (frames first)."""
    x = frames.flatten(1).double()
    x = x - x.mean(1, keepdim=True)
    x = x / x.norm(dim=1, keepdim=True)
    return (x[:-1] * x[1:]).sum(1).mean().item()


def test_returns_num_frames_pil_frames_and_restores_processors(pipe):
    originals = pipe.unet.attn_processors
    frames = zero_shot_video(pipe, "a red fox", num_frames=3, generator=_generator(), num_inference_steps=STEPS)
    assert isinstance(frames, list) and len(frames) == 3
    assert all(f.size == (32, 32) and f.mode == "RGB" for f in frames)
    assert pipe.unet.attn_processors == originals


def test_output_types_and_several_prompts(pipe):
    kwargs = {"num_frames": 2, "generator": _generator(), "num_inference_steps": STEPS}
    pt = zero_shot_video(pipe, "a red fox", output_type="pt", **kwargs)
    assert isinstance(pt, torch.Tensor) and pt.shape == (2, 3, 32, 32)
    kwargs["generator"] = _generator()
    arr = zero_shot_video(pipe, "a red fox", output_type="np", **kwargs)
    assert isinstance(arr, np.ndarray) and arr.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(arr, rearrange(pt, "f c h w -> f h w c").numpy(), atol=1e-6)
    kwargs["generator"] = _generator()
    videos = zero_shot_video(pipe, ["a red fox", "a blue bird"], output_type="latent", height=24, width=24, **kwargs)
    assert len(videos) == 2 and all(v.shape == (2, 4, 12, 12) for v in videos)
    assert not torch.allclose(videos[0], videos[1])  # each prompt gets its own noise


def test_sampling_starts_from_dependency_noise_with_the_processor_installed(pipe):
    num_frames, lambda_i, seen = 4, 0.3, {}

    def first_call(module, args, kwargs):
        if not seen:
            seen["sample"] = args[0].clone()
            seen["processors"] = dict(module.attn_processors)

    handle = pipe.unet.register_forward_pre_hook(first_call, with_kwargs=True)
    try:
        zero_shot_video(
            pipe, "a red fox", num_frames, 0.7, lambda_i, _generator(3), num_inference_steps=STEPS, output_type="latent"
        )
    finally:
        handle.remove()

    noise = vidmem_ext.dependency_noise((1, num_frames, 4, 16, 16), lambda_i, frame_dim=1, generator=_generator(3))
    latents = rearrange(noise, "v f c h w -> (v f) c h w") * pipe.scheduler.init_noise_sigma
    # CFG: [uncond; cond], frames of the video contiguous in each half
    torch.testing.assert_close(seen["sample"], torch.cat([latents] * 2))
    self_names = set(self_attention_layer_names(pipe.unet))
    for name, processor in seen["processors"].items():
        if name in self_names:
            assert isinstance(processor, TemporalMomentumAttnProcessor)
            assert processor.momentum == 0.7 and processor.num_frames == num_frames
        else:
            assert not isinstance(processor, TemporalMomentumAttnProcessor)


def test_processors_are_restored_when_the_pipeline_fails(pipe):
    originals = pipe.unet.attn_processors

    def fail(*args, **kwargs):
        raise RuntimeError("interrupted by the test")

    with pytest.raises(RuntimeError, match="interrupted by the test"):
        zero_shot_video(pipe, "a red fox", num_frames=2, num_inference_steps=STEPS, callback_on_step_end=fail)
    assert pipe.unet.attn_processors == originals


def test_momentum_makes_frames_more_alike(pipe):
    # Same seed, same dependency noise: only the attention differs. On this tiny model the
    # margin was +0.08 to +0.13 over seeds 0-5 (4 frames, lambda 0.3); assert half of the smallest.
    for seed in (0, 1):
        correlation = {}
        for momentum in (0.0, 0.98):
            frames = zero_shot_video(
                pipe,
                "a red fox",
                num_frames=4,
                momentum=momentum,
                lambda_i=0.3,
                generator=_generator(seed),
                num_inference_steps=STEPS,
                output_type="pt",
            )
            correlation[momentum] = _mean_consecutive_correlation(frames)
        assert correlation[0.98] > correlation[0.0] + 0.04, (seed, correlation)


def test_bad_arguments_give_clear_errors(pipe):
    with pytest.raises(TypeError, match="sets `latents` itself"):
        zero_shot_video(pipe, "a", latents=torch.zeros(1))
    with pytest.raises(TypeError, match="sets `num_images_per_prompt` itself"):
        zero_shot_video(pipe, "a", num_images_per_prompt=2)
    with pytest.raises(TypeError, match="with a `unet`"):
        zero_shot_video(object(), "a")
    with pytest.raises(TypeError, match="one torch.Generator"):
        zero_shot_video(pipe, "a", generator=[_generator(), _generator()])
    with pytest.raises(TypeError, match="prompt must be"):
        zero_shot_video(pipe, 3)
    with pytest.raises(ValueError, match="num_frames"):
        zero_shot_video(pipe, "a", num_frames=0)
    with pytest.raises(ValueError, match="momentum"):
        zero_shot_video(pipe, "a", momentum=2.0)
    originals = pipe.unet.attn_processors
    for size in ({"height": 16}, {"width": 16}):  # pipelines fill in the other side differently
        with pytest.raises(ValueError, match="height and width: pass both or neither"):
            zero_shot_video(pipe, "a", **size)
    with pytest.raises(ValueError, match="height must be >= 1"):
        zero_shot_video(pipe, "a", height=-16, width=-16)
    with pytest.raises(TypeError, match="width must be an int"):
        zero_shot_video(pipe, "a", height=16, width="abc")
    with pytest.raises(TypeError, match="prompt_embeds must be a tensor"):
        zero_shot_video(pipe, None, prompt_embeds=[1, 2])
    with pytest.raises(ValueError, match=r"prompt_embeds must have shape \(videos, tokens, dim\), got \(2, 8\)"):
        zero_shot_video(pipe, None, prompt_embeds=torch.zeros(2, 8))
    assert pipe.unet.attn_processors == originals


def _parts(pipe):
    return dict(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def test_pipelines_that_start_from_an_image_or_swap_processors_are_refused(pipe):
    # An image-to-image pipeline takes passed latents as its noised input image (the dependency noise would
    # replace the image); Attend-and-Excite installs its own processors in its call (no momentum would be
    # left). Both are refused before anything is drawn, with the pipeline's processors untouched.
    import diffusers

    originals = pipe.unet.attn_processors
    img2img = diffusers.StableDiffusionImg2ImgPipeline(**_parts(pipe))
    with pytest.raises(TypeError, match="StableDiffusionImg2ImgPipeline: an image-to-image pipeline"):
        zero_shot_video(img2img, "a", num_frames=2, image=torch.zeros(1, 3, 32, 32), strength=0.5)
    excite = diffusers.StableDiffusionAttendAndExcitePipeline(**_parts(pipe))
    with pytest.raises(TypeError, match="installs its own attention processors"):
        zero_shot_video(excite, "a red fox", num_frames=2, token_indices=[1])
    inpaint = diffusers.StableDiffusionInpaintPipeline(**_parts(pipe))
    with pytest.raises(ValueError, match="strength must be 1.0"):
        zero_shot_video(inpaint, "a", num_frames=2, image=torch.zeros(1, 3, 32, 32), strength=0.5)

    class AlmostOneByDefault(diffusers.StableDiffusionInpaintPipeline):  # as SDXL inpainting: 0.9999
        def __call__(self, prompt=None, image=None, mask_image=None, strength=0.9999, num_images_per_prompt=1,
                     latents=None, **kwargs):  # fmt: skip
            return super().__call__(
                prompt=prompt, image=image, mask_image=mask_image, strength=strength,
                num_images_per_prompt=num_images_per_prompt, latents=latents, **kwargs,
            )  # fmt: skip

    almost = AlmostOneByDefault(**_parts(pipe))
    with pytest.raises(ValueError, match=r"got 0.9999 \(AlmostOneByDefault's default\): pass strength=1.0"):
        zero_shot_video(almost, "a", num_frames=2, image=torch.zeros(1, 3, 32, 32))
    assert pipe.unet.attn_processors == originals


def test_a_processor_replaced_inside_the_block_is_reported(pipe):
    # Whatever replaces the temporal momentum processor while it is installed (a pipeline's own processors)
    # would leave a result without momentum: the block says so, and still restores the originals.
    from diffusers.models.attention_processor import AttnProcessor2_0

    from vidmem_ext.pipelines import temporal_momentum_processors

    originals = pipe.unet.attn_processors
    with pytest.raises(RuntimeError, match="lost the temporal momentum processor"):
        with temporal_momentum_processors(pipe.unet, 0.5, 2):
            pipe.unet.set_attn_processor(AttnProcessor2_0())
    assert pipe.unet.attn_processors == originals
    with temporal_momentum_processors(pipe.unet, 0.5, 2) as processor:  # untouched: no error
        assert processor in pipe.unet.attn_processors.values()
    for layers in ([], lambda name, module: False):  # the message blames the choice, not the model
        with pytest.raises(ValueError, match="layers: .* chose no layer of UNet2DConditionModel"):
            with temporal_momentum_processors(pipe.unet, 0.5, 2, layers=layers):
                pytest.fail("the body must not run")


def test_latents_take_the_vae_channels_when_the_unet_takes_more(pipe):
    # An inpainting UNet takes 9 channels: the 4 latent channels the pipeline draws (and that
    # zero_shot_video passes) plus the mask and the masked image's latents, which it concatenates.
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel
    from PIL import Image

    config = dict(pipe.unet.config)
    config["in_channels"] = 9
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(config)
    inpaint = StableDiffusionInpaintPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=unet, scheduler=pipe.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    inpaint.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((32, 32, 3)) * 255).astype("uint8"))
    mask = Image.fromarray(((rng.random((32, 32)) > 0.5) * 255).astype("uint8"))
    frames = zero_shot_video(
        inpaint, "a", num_frames=2, generator=_generator(), image=image, mask_image=mask, strength=1.0,
        num_inference_steps=1, output_type="np",
    )  # fmt: skip
    assert frames.shape == (2, 32, 32, 3) and np.isfinite(frames).all()


def test_tiny_pipeline_is_reproducible_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = tiny_stable_diffusion(seed=5), tiny_stable_diffusion(seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    for pa, pb in zip(a.unet.parameters(), b.unet.parameters()):
        assert torch.equal(pa, pb)
    ids = a.tokenizer("a red fox").input_ids
    assert ids[0] == a.tokenizer.bos_token_id and ids[-1] == a.tokenizer.eos_token_id and len(ids) == 2 + 7


@pytest.mark.parametrize("not_a_model", [torch.nn.Conv2d(4, 4, 3), object(), None])
def test_processors_need_a_diffusers_model_with_attention_processors(not_a_model):
    from vidmem_ext.pipelines import temporal_momentum_processors

    with pytest.raises(TypeError, match="diffusers model with attention processors"):
        with temporal_momentum_processors(not_a_model, 0.5, 2):
            pytest.fail("the body must not run")
    with pytest.raises(TypeError, match=f"got {type(not_a_model).__name__}"):
        self_attention_layer_names(not_a_model)
