"""Temporal momentum attention (ZS²): self-attention whose keys and values are EMAs over frames.

Frames are folded into the batch, as diffusers does for video: tensors in SDPA
layout (batch, heads, tokens, dim) with batch = videos * num_frames and the
frames of one video contiguous. Keys and values are replaced by their temporal
momentum within each video (vidmem_ext.temporal_momentum along the frame axis
of a (videos, frames, heads, tokens, dim) view), then
torch.nn.functional.scaled_dot_product_attention runs. Momentum 0 is plain
self-attention; momentum 1 makes every frame attend to frame 0's keys and
values (Text2Video-Zero's cross-frame attention).

Under classifier-free guidance the batch is (unconditional half, conditional
half), each half videos x frames, so it is simply 2 * videos videos: the fold
above needs no special case.

This module needs only torch; TemporalMomentumAttnProcessor follows the
diffusers attention-processor contract without importing diffusers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from ._checks import broadcasts_to, check_float_tensor, check_int, check_momentum
from .momentum import temporal_momentum

__all__ = ["temporal_momentum_attention", "TemporalMomentumAttnProcessor"]


def check_num_frames(num_frames, allow_none: bool = False):
    """Frames per video: an int >= 1 (None allowed when allow_none)."""
    if num_frames is None and allow_none:
        return None
    return check_int(num_frames, "num_frames", minimum=1)


def _momentum_over_frames(x: torch.Tensor, momentum, num_frames: int) -> torch.Tensor:
    """EMA of x (batch = videos * num_frames, heads, tokens, dim) over the frames of each video."""
    # Momentum 0 and 1 are exact in the op too (docs/errors.md); these shortcuts only skip the scan.
    if isinstance(momentum, float) and momentum == 0.0:
        return x  # y_t = x_t exactly
    videos = rearrange(x, "(v f) h n d -> v f h n d", f=num_frames)  # a view: splits the batch axis only
    if isinstance(momentum, float) and momentum == 1.0:
        # y_t = x_0 exactly; broadcasting frame 0 skips the scan.
        smoothed = videos[:, :1].expand_as(videos)
    else:
        if isinstance(momentum, torch.Tensor) and momentum.device != x.device:
            momentum = momentum.to(x.device)
        smoothed = temporal_momentum(videos, momentum, dim=1)
    return rearrange(smoothed, "v f h n d -> (v f) h n d")


def temporal_momentum_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    momentum=0.98,
    *,
    num_frames: int,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention with keys and values smoothed over frames by temporal momentum.

    Args:
        q, k, v: (batch, heads, tokens, dim) as for F.scaled_dot_product_attention, with
            batch = videos * num_frames and the frames of each video contiguous
            (diffusers' layout with frames folded into the batch; a CFG batch
            [uncond; cond] of videos x frames each qualifies).
        momentum: a float in [0, 1] (0 = self-attention, 1 = every frame attends to
            frame 0's keys and values), or a floating tensor broadcastable to
            (heads, tokens_kv, dim), e.g. per head `m.view(heads, 1, 1)`; it may require grad.
        num_frames: frames per video (keyword only).
        attn_mask, scale: passed to F.scaled_dot_product_attention unchanged.

    Returns:
        (batch, heads, tokens_q, dim_v), differentiable in q, k, v and a tensor momentum.
        K_t = m K_{t-1} + (1 - m) k_t with K_0 = k_0 (docs/semantics.md, "Temporal momentum"), likewise V.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float_tensor(t, name)
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, tokens, dim), got shape {tuple(t.shape)}")
    for name, t in (("k", k), ("v", v)):  # checked here, whatever the momentum (0 and 1 skip the op)
        if t.dtype != q.dtype:
            raise ValueError(f"{name} dtype {t.dtype} differs from q dtype {q.dtype}")
    if not q.shape[0] == k.shape[0] == v.shape[0]:
        raise ValueError(f"q, k, v must share the batch size, got {q.shape[0]}, {k.shape[0]}, {v.shape[0]}")
    num_frames = check_num_frames(num_frames)
    momentum = check_momentum(momentum)
    batch = q.shape[0]
    if batch % num_frames != 0:
        raise ValueError(
            f"num_frames {num_frames} does not divide the batch {batch}: "
            "q, k, v must hold videos * num_frames items with each video's frames contiguous"
        )
    if isinstance(momentum, torch.Tensor):
        for name, t in (("k", k), ("v", v)):
            per_frame = (batch // num_frames,) + tuple(t.shape[1:])  # (videos, heads, tokens, dim)
            if not broadcasts_to(momentum.shape, per_frame):
                raise ValueError(
                    f"momentum of shape {tuple(momentum.shape)} does not broadcast to {name}'s frames: "
                    f"(videos, heads, tokens, dim) = {per_frame}"
                )
    k = _momentum_over_frames(k, momentum, num_frames)
    v = _momentum_over_frames(v, momentum, num_frames)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)


class TemporalMomentumAttnProcessor:
    """diffusers attention processor: temporal momentum self-attention over frames folded into the batch.

    Drop-in for `AttnProcessor2_0` on self-attention layers (same call
    signature; handles spatial_norm, group_norm, 4-D inputs, attention masks,
    norm_q/norm_k, residual_connection and rescale_output_factor the same way;
    on a layer with scale_qk=False it uses attn.scale, as `AttnProcessor`, the
    processor diffusers installs there, does).
    With `encoder_hidden_states` (cross-attention) it is plain attention. Any
    batch that is a multiple of num_frames works, so classifier-free guidance
    batches [uncond; cond] (each videos x frames) need nothing special.

    Args:
        momentum: float in [0, 1] or a tensor broadcastable to (heads, tokens, head_dim).
        num_frames: frames per video; may be set later (vidmem_ext.pipelines does), must be set before a call.

    Install it on spatial self-attention layers only (batch = videos * frames, tokens = positions),
    never on temporal or motion modules, where the batch holds positions and the tokens are frames;
    `vidmem_ext.pipelines.temporal_momentum_processors(unet, momentum, num_frames)` picks those layers.
    `num_frames` counts the frames of one video, whereas diffusers' CrossFrameAttnProcessor2_0
    counts videos including CFG copies in its `batch_size`: momentum 1 here equals
    CrossFrameAttnProcessor2_0(batch_size=2 * videos) under CFG.
    """

    def __init__(self, momentum=0.98, num_frames: int | None = None):
        self.momentum = check_momentum(momentum)
        self.num_frames = check_num_frames(num_frames, allow_none=True)

    def __repr__(self) -> str:
        momentum = self.momentum if isinstance(self.momentum, float) else f"tensor{tuple(self.momentum.shape)}"
        return f"{type(self).__name__}(momentum={momentum}, num_frames={self.num_frames})"

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        # Extra args/kwargs (diffusers' deprecated LoRA `scale`) are ignored, as AttnProcessor2_0 does.
        is_self_attention = encoder_hidden_states is None
        if is_self_attention and self.num_frames is None:
            raise RuntimeError(
                "TemporalMomentumAttnProcessor.num_frames is not set: pass num_frames=... or install it with "
                "vidmem_ext.pipelines.temporal_momentum_processors / zero_shot_video"
            )
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = rearrange(hidden_states, "b c h w -> b (h w) c")

        batch_size, sequence_length, _ = (hidden_states if is_self_attention else encoder_hidden_states).shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            # (batch * heads, query_len or 1, key_len) -> SDPA's (batch, heads, query_len or 1, key_len)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if is_self_attention:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        query, key, value = (rearrange(t, "b n (h d) -> b h n d", h=attn.heads) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # The default processor choice of diffusers' Attention: SDPA's own 1/sqrt(head_dim) when
        # scale_qk (AttnProcessor2_0), else attn.scale (AttnProcessor).
        scale = None if getattr(attn, "scale_qk", True) else attn.scale
        if is_self_attention:
            hidden_states = temporal_momentum_attention(
                query, key, value, self.momentum, num_frames=self.num_frames, attn_mask=attention_mask, scale=scale
            )
        else:
            hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scale)
        hidden_states = rearrange(hidden_states, "b h n d -> b n (h d)").to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)  # linear projection
        hidden_states = attn.to_out[1](hidden_states)  # dropout

        if input_ndim == 4:
            hidden_states = rearrange(hidden_states, "b (h w) c -> b c h w", h=height, w=width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
