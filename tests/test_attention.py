"""Temporal momentum attention: the SDPA function, the diffusers processor, and the processor inside a UNet.

Momentum 0 must equal diffusers' AttnProcessor2_0 and momentum 1 Text2Video-Zero's
CrossFrameAttnProcessor2_0; an intermediate momentum must equal an explicit EMA of K
and V followed by attention. Tolerances (fp32): 1e-5 absolute and relative; fp64
gradcheck at its defaults. Frames are folded into the batch: batch = videos * frames,
and CFG batches are [uncond; cond] with videos x frames in each half.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from vidmem_ext import reference
from vidmem_ext.attention import TemporalMomentumAttnProcessor, temporal_momentum_attention

pytestmark = [
    pytest.mark.filterwarnings("ignore:vidmem_ext.temporal_momentum. using the slow Python reference"),
    pytest.mark.usefixtures("one_torch_thread"),
]

ATOL = RTOL = 1e-5  # fp32


def _ema_over_frames(x, momentum, num_frames):
    """Reference: the matrix form of the EMA (a different implementation from the op and its fallback)."""
    videos = rearrange(x, "(v f) h n d -> v f h n d", f=num_frames)
    return rearrange(reference.temporal_momentum_matrix(videos, momentum, dim=1), "v f h n d -> (v f) h n d")


def _qkv(batch, heads=2, tokens=5, dim=4, kv_tokens=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, tokens, dim, generator=g, dtype=dtype)
    k = torch.randn(batch, heads, kv_tokens or tokens, dim, generator=g, dtype=dtype)
    v = torch.randn(batch, heads, kv_tokens or tokens, dim, generator=g, dtype=dtype)
    return q, k, v


# --------------------------------------------------------------------------- the SDPA function


@pytest.mark.parametrize("videos,frames", [(1, 4), (3, 2), (4, 3)])  # (4, 3): a CFG batch of 2 videos
def test_momentum_zero_is_plain_attention_and_one_is_first_frame_attention(videos, frames):
    q, k, v = _qkv(videos * frames, kv_tokens=7)
    plain = F.scaled_dot_product_attention(q, k, v)
    first = lambda x: rearrange(x, "(v f) h n d -> v f h n d", f=frames)[:, :1].expand(-1, frames, -1, -1, -1)  # noqa: E731
    cross_frame = F.scaled_dot_product_attention(q, *(rearrange(first(x), "v f h n d -> (v f) h n d") for x in (k, v)))
    assert (plain - cross_frame).abs().max() > 0.1  # the two cases differ, so the checks below mean something
    for zero, one in [(0.0, 1.0), (torch.tensor(0.0), torch.tensor(1.0))]:  # float fast paths and the op path
        torch.testing.assert_close(temporal_momentum_attention(q, k, v, zero, num_frames=frames), plain)
        torch.testing.assert_close(
            temporal_momentum_attention(q, k, v, one, num_frames=frames), cross_frame, atol=ATOL, rtol=RTOL
        )


@pytest.mark.parametrize("momentum", [0.3, 0.98])
def test_intermediate_momentum_matches_ema_then_attention(momentum):
    frames = 5
    q, k, v = _qkv(2 * frames, heads=3, tokens=6, kv_tokens=4, dim=8)
    mask = torch.randn(2 * frames, 3, 6, 4)
    expected = F.scaled_dot_product_attention(
        q, _ema_over_frames(k, momentum, frames), _ema_over_frames(v, momentum, frames), attn_mask=mask, scale=0.3
    )
    out = temporal_momentum_attention(q, k, v, momentum, num_frames=frames, attn_mask=mask, scale=0.3)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=RTOL)


def test_per_head_momentum_tensor_and_strided_inputs():
    frames, heads = 4, 3
    q, k, v = _qkv(2 * frames, heads=heads, tokens=5, dim=6)
    # diffusers makes K and V as (batch, tokens, heads, dim) and transposes: non-contiguous views
    k_strided, v_strided = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (k, v))
    assert not k_strided.is_contiguous()
    momentum = torch.tensor([0.2, 0.7, 0.95]).view(heads, 1, 1)
    expected = F.scaled_dot_product_attention(
        q, _ema_over_frames(k, momentum, frames), _ema_over_frames(v, momentum, frames)
    )
    out = temporal_momentum_attention(q, k_strided, v_strided, momentum, num_frames=frames)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=RTOL)


def test_inputs_are_not_modified():
    q, k, v = _qkv(6)
    before = [x.clone() for x in (q, k, v)]
    temporal_momentum_attention(q, k, v, 0.6, num_frames=3)
    for x, b in zip((q, k, v), before):
        assert torch.equal(x, b)


def test_gradients_reach_q_k_v_and_a_momentum_tensor():
    frames = 3
    q, k, v = _qkv(2 * frames, heads=2, tokens=3, dim=2, dtype=torch.float64)
    momentum = torch.tensor([0.4, 0.8], dtype=torch.float64).view(2, 1, 1)
    inputs = [x.requires_grad_() for x in (q, k, v, momentum)]
    assert torch.autograd.gradcheck(
        lambda q, k, v, m: temporal_momentum_attention(q, k, v, m, num_frames=frames), inputs
    )
    temporal_momentum_attention(*inputs[:3], inputs[3], num_frames=frames).square().sum().backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in inputs)


def test_traces_with_torch_compile_fullgraph():
    q, k, v = _qkv(8)
    momentum = torch.tensor(0.7)
    # eager first: a Python fallback warns once, and dynamo cannot trace warnings.warn
    expected = temporal_momentum_attention(q, k, v, momentum, num_frames=4)
    compiled = torch.compile(
        lambda q, k, v, m: temporal_momentum_attention(q, k, v, m, num_frames=4), fullgraph=True, backend="aot_eager"
    )
    torch.testing.assert_close(compiled(q, k, v, momentum), expected, atol=ATOL, rtol=RTOL)


def test_half_precision_runs_close_to_fp32():
    q, k, v = _qkv(8, tokens=6, dim=8)
    expected = temporal_momentum_attention(q, k, v, 0.9, num_frames=4)
    out = temporal_momentum_attention(*(x.bfloat16() for x in (q, k, v)), 0.9, num_frames=4)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=5e-2)


def test_bad_arguments_give_clear_errors():
    q, k, v = _qkv(6)
    with pytest.raises(ValueError, match=r"num_frames 4 does not divide the batch 6"):
        temporal_momentum_attention(q, k, v, num_frames=4)
    with pytest.raises(TypeError, match="num_frames"):
        temporal_momentum_attention(q, k, v, num_frames=2.0)
    with pytest.raises(ValueError, match="num_frames"):
        temporal_momentum_attention(q, k, v, num_frames=0)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        temporal_momentum_attention(q, k, v, 1.5, num_frames=3)
    with pytest.raises(TypeError, match="momentum"):
        temporal_momentum_attention(q, k, v, "0.9", num_frames=3)
    with pytest.raises(ValueError, match="momentum of shape"):
        temporal_momentum_attention(q, k, v, torch.full((5,), 0.5), num_frames=3)
    with pytest.raises(ValueError, match="k must be 4-D"):
        temporal_momentum_attention(q, k[0], v, num_frames=3)
    with pytest.raises(ValueError, match="share the batch size"):
        temporal_momentum_attention(q, k[:3], v[:3], num_frames=3)
    with pytest.raises(TypeError):
        temporal_momentum_attention(q, k, v, 0.5)  # num_frames is required


# --------------------------------------------------------------------------- the processor on one Attention module

try:
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    try:  # under pipelines/deprecated since diffusers 0.33
        from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
            CrossFrameAttnProcessor2_0,
        )
    except ImportError:
        from diffusers.pipelines.text_to_video_synthesis.pipeline_text_to_video_zero import CrossFrameAttnProcessor2_0

    from vidmem_ext.pipelines import _sharpen_self_attention, self_attention_layer_names, temporal_momentum_processors
except ImportError as exc:  # the diffusers extra is optional; the tests above need only torch
    DIFFUSERS_MISSING = f"the diffusers extra is not installed ({exc})"
else:
    DIFFUSERS_MISSING = None
needs_diffusers = pytest.mark.skipif(DIFFUSERS_MISSING is not None, reason=str(DIFFUSERS_MISSING))


def _attention(seed=0, **kwargs):
    torch.manual_seed(seed)
    attn = Attention(**{"query_dim": 32, "heads": 4, "dim_head": 8, **kwargs}).eval()
    with torch.no_grad():  # sharp attention, so that what a frame attends to matters
        attn.to_q.weight.mul_(4)
        attn.to_k.weight.mul_(4)
    return attn


def _call(processor, attn, *args, **kwargs):
    with torch.no_grad():
        return processor(attn, *args, **kwargs)


@needs_diffusers
@pytest.mark.parametrize("videos,frames", [(1, 4), (2, 3)])
def test_processor_momentum_0_and_1_match_diffusers_processors(videos, frames):
    attn = _attention()
    x = torch.randn(2 * videos * frames, 10, 32)  # CFG batch: [uncond; cond], videos x frames each
    plain = _call(AttnProcessor2_0(), attn, x)
    cross_frame = _call(CrossFrameAttnProcessor2_0(batch_size=2 * videos), attn, x)
    assert (plain - cross_frame).abs().max() > 100 * ATOL
    torch.testing.assert_close(_call(TemporalMomentumAttnProcessor(0.0, frames), attn, x), plain, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(
        _call(TemporalMomentumAttnProcessor(1.0, frames), attn, x), cross_frame, atol=ATOL, rtol=RTOL
    )


@needs_diffusers
def test_processor_intermediate_momentum_matches_explicit_reference():
    attn, frames, momentum = _attention(), 4, 0.9
    x = torch.randn(2 * frames, 10, 32)
    split = lambda t: rearrange(t, "b n (h d) -> b h n d", h=attn.heads)  # noqa: E731
    with torch.no_grad():
        q, k, v = (split(layer(x)) for layer in (attn.to_q, attn.to_k, attn.to_v))
        k, v = _ema_over_frames(k, momentum, frames), _ema_over_frames(v, momentum, frames)
        out = F.scaled_dot_product_attention(q, k, v)
        expected = attn.to_out[0](rearrange(out, "b h n d -> b n (h d)"))
    got = _call(TemporalMomentumAttnProcessor(momentum, frames), attn, x)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


@needs_diffusers
@pytest.mark.parametrize(
    "config",
    [
        # 4-D input, group norm, residual connection and output rescaling (as in VAE mid blocks)
        {"norm_num_groups": 8, "residual_connection": True, "rescale_output_factor": 2.0, "bias": True},
        # spatial norm (MoVQ / Kandinsky decoders) with temb
        {"spatial_norm_dim": 6, "residual_connection": True},
        # scale_qk=False: diffusers' default processor is then AttnProcessor, which uses attn.scale = 1
        {"scale_qk": False},
    ],
)
def test_processor_handles_what_attnprocessor2_0_handles(config):
    attn = _attention(**config)
    x = torch.randn(6, 32, 4, 5)  # (batch, channels, height, width)
    temb = torch.randn(6, 6, 2, 2) if "spatial_norm_dim" in config else None
    mask = torch.randn(6, 1, 20)  # additive mask over the 20 key tokens
    baseline = AttnProcessor2_0() if attn.scale_qk else AttnProcessor()
    expected = _call(baseline, attn, x, attention_mask=mask, temb=temb)
    got = _call(TemporalMomentumAttnProcessor(0.0, 3), attn, x, attention_mask=mask, temb=temb)
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
    # and momentum really acts on 4-D inputs too
    first_frame = _call(TemporalMomentumAttnProcessor(1.0, 3), attn, x, attention_mask=mask, temb=temb)
    assert (first_frame - expected).abs().max() > 100 * ATOL


@needs_diffusers
def test_processor_is_plain_attention_with_encoder_hidden_states():
    attn = _attention(cross_attention_dim=12, cross_attention_norm="layer_norm")
    x, context = torch.randn(6, 10, 32), torch.randn(6, 7, 12)
    mask = torch.randn(6, 1, 7)
    expected = _call(AttnProcessor2_0(), attn, x, encoder_hidden_states=context, attention_mask=mask)
    for processor in (TemporalMomentumAttnProcessor(0.7, 3), TemporalMomentumAttnProcessor(1.0)):  # num_frames unused
        got = _call(processor, attn, x, encoder_hidden_states=context, attention_mask=mask)
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


@needs_diffusers
def test_processor_errors_name_the_problem():
    attn, x = _attention(), torch.randn(6, 10, 32)
    with pytest.raises(RuntimeError, match="num_frames is not set"):
        _call(TemporalMomentumAttnProcessor(0.5), attn, x)
    with pytest.raises(ValueError, match="num_frames 4 does not divide the batch 6"):
        _call(TemporalMomentumAttnProcessor(0.5, 4), attn, x)
    with pytest.raises(ValueError, match="momentum"):
        TemporalMomentumAttnProcessor(-0.1, 4)


@needs_diffusers
def test_processor_through_attention_forward():
    # Attention.forward filters kwargs by the processor's signature; ours mirrors AttnProcessor2_0's.
    attn, x = _attention(), torch.randn(8, 10, 32)
    attn.set_processor(TemporalMomentumAttnProcessor(0.0, 4))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = attn(x)
    attn.set_processor(AttnProcessor2_0())
    with torch.no_grad():
        torch.testing.assert_close(got, attn(x), atol=ATOL, rtol=RTOL)


# --------------------------------------------------------------------------- the processor inside a UNet


@pytest.fixture(scope="module")
def unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    model = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=4,
    ).eval()
    _sharpen_self_attention(model, 4.0)
    return model


def _unet_inputs(videos, frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(videos * frames, 4, 8, 8, generator=g)
    text = torch.randn(2, videos, 1, 5, 16, generator=g).expand(-1, -1, frames, -1, -1)  # [uncond; cond] per video
    return torch.cat([latents] * 2), rearrange(text, "u v f n c -> (u v f) n c")


def _unet_out(unet, sample, context):
    with torch.no_grad():
        return unet(sample, 10, context).sample


@needs_diffusers
def test_unet_momentum_0_and_1_match_diffusers_processors(unet):
    videos, frames = 2, 3
    sample, context = _unet_inputs(videos, frames)
    originals = unet.attn_processors
    unet.set_attn_processor(AttnProcessor2_0())
    plain = _unet_out(unet, sample, context)
    unet.set_attn_processor(CrossFrameAttnProcessor2_0(batch_size=2 * videos))  # as Text2Video-Zero installs it
    cross_frame = _unet_out(unet, sample, context)
    unet.set_attn_processor(dict(originals))
    assert (plain - cross_frame).abs().max() > 100 * ATOL
    with temporal_momentum_processors(unet, 0.0, frames):  # bit for bit, as docs/video_models.md says
        assert torch.equal(_unet_out(unet, sample, context), plain)
    with temporal_momentum_processors(unet, 1.0, frames):
        assert torch.equal(_unet_out(unet, sample, context), cross_frame)


@needs_diffusers
def test_unet_intermediate_momentum_matches_processor_built_from_reference(unet):
    class ReferenceProcessor(AttnProcessor2_0):
        """AttnProcessor2_0 with K and V smoothed by the matrix-form EMA before attention."""

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
            if encoder_hidden_states is not None:
                return super().__call__(attn, hidden_states, encoder_hidden_states)
            split = lambda t: rearrange(t, "b n (h d) -> b h n d", h=attn.heads)  # noqa: E731
            q, k, v = (split(layer(hidden_states)) for layer in (attn.to_q, attn.to_k, attn.to_v))
            k, v = _ema_over_frames(k, 0.8, 3), _ema_over_frames(v, 0.8, 3)
            out = rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)")
            return attn.to_out[0](out)

    sample, context = _unet_inputs(2, 3, seed=1)
    originals = unet.attn_processors
    unet.set_attn_processor(ReferenceProcessor())
    expected = _unet_out(unet, sample, context)
    unet.set_attn_processor(dict(originals))
    with temporal_momentum_processors(unet, 0.8, 3):
        got = _unet_out(unet, sample, context)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
    assert (got - _unet_out(unet, sample, context)).abs().max() > 100 * ATOL  # and it differs from plain attention


@needs_diffusers
def test_processors_go_on_self_attention_only_and_are_restored(unet):
    originals = unet.attn_processors
    self_names = self_attention_layer_names(unet)
    assert self_names and all(name.endswith("attn1.processor") for name in self_names)
    with temporal_momentum_processors(unet, 0.9, 4) as processor:
        assert processor.num_frames == 4 and processor.momentum == 0.9
        for name, proc in unet.attn_processors.items():
            assert (proc is processor) == (name in self_names)
            if name not in self_names:
                assert proc is originals[name]
    assert unet.attn_processors == originals
    with pytest.raises(RuntimeError, match="boom"), temporal_momentum_processors(unet, 0.9, 4):
        raise RuntimeError("boom")
    assert unet.attn_processors == originals


@needs_diffusers
def test_gradient_reaches_a_learnable_momentum_through_the_unet(unet):
    momentum = torch.tensor(0.5, requires_grad=True)
    sample, context = _unet_inputs(1, 3)
    with temporal_momentum_processors(unet, momentum, 3):
        unet(sample, 10, context).sample.square().mean().backward()
    assert momentum.grad is not None and momentum.grad.abs() > 0


def test_exports_and_the_core_needs_no_diffusers():
    import subprocess
    import sys

    import vidmem_ext

    assert vidmem_ext.temporal_momentum_attention is temporal_momentum_attention
    assert vidmem_ext.TemporalMomentumAttnProcessor is TemporalMomentumAttnProcessor
    code = (
        "import sys, torch, vidmem_ext\n"
        "q = torch.randn(4, 1, 3, 2)\n"
        "vidmem_ext.temporal_momentum_attention(q, q, q, 0.5, num_frames=2)\n"
        "vidmem_ext.TemporalMomentumAttnProcessor(0.9, 2)\n"
        "vidmem_ext.pipelines.zero_shot_video\n"
        "assert 'diffusers' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
