"""Multi-term memory packing (docs/semantics.md, "Multi-term memory patchification"): the tokens `token_budget` counts.

Autoregressive video models (FramePack and its successors) pack the latent
frame history into a fixed context: the history is split into terms in time
order, recent frames are embedded finely and older frames coarsely. Each term
is padded at its end (replicate) to a multiple of its kernel and embedded by
one Conv3d with kernel = stride = (temporal_stride, spatial_stride * patch_size,
spatial_stride * patch_size), so it yields exactly the token grid that
`token_budget.term_grid` counts. With `framepack_compatible=True` the packer
embeds exactly as FramePack does instead (its 1x terms floor on odd sizes), and
`MultiTermMemoryPacker.pooled_rope` gives FramePack's window-averaged rotary
embedding for the tokens (docs/video_models.md).

`plan_memory_terms` chooses such terms for a token budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import forward_ad as _forward_ad

from ._checks import check_device, check_int, check_strided, int_text
from .token_budget import MemoryTerm, check_latent, multi_term_memory_patchification, term_grid, validate_term

__all__ = ["MultiTermMemoryPacker", "plan_memory_terms", "memory_term_kernel", "memory_token_positions"]


def memory_term_kernel(term: MemoryTerm) -> tuple[int, int, int]:
    """Kernel (= stride) of a term's Conv3d: (temporal_stride, spatial_stride*patch_size, same)."""
    k = term.spatial_stride * term.patch_size
    return term.temporal_stride, k, k


_MAX_ELEMENTS = 2**62  # no tensor this many elements can be allocated; bigger sizes fail inside torch unnamed


def _as_terms(terms) -> tuple[MemoryTerm, ...]:
    if isinstance(terms, (str, bytes, Mapping)) or not isinstance(terms, Sequence):
        raise TypeError(f"terms must be a sequence (list or tuple) of terms, got {type(terms).__name__}")
    return tuple(MemoryTerm(*validate_term(term, f"terms[{i}]")) for i, term in enumerate(terms))


def _floors(term: MemoryTerm, framepack_compatible: bool) -> bool:
    """FramePack embeds its 1x term (kernel (1, p, p)) with an unpadded Conv3d, which drops the remainder."""
    return framepack_compatible and term.temporal_stride == 1 and term.spatial_stride == 1


def _term_grid(term: MemoryTerm, h: int, w: int, framepack_compatible: bool) -> tuple[int, int, int]:
    """The term's (frames, rows, columns) token grid: ceil (padded), or floor for FramePack's 1x term."""
    if _floors(term, framepack_compatible):
        return term.num_latent_frames, h // term.patch_size, w // term.patch_size
    return term_grid(term, h, w)


def memory_token_positions(
    terms, latent_h: int, latent_w: int, device=None, dtype=torch.float32, *, framepack_compatible: bool = False
) -> torch.Tensor:
    """(total_tokens, 3) positions (frame, row, column) of the packed tokens, for RoPE.

    Latent coordinates: frame f of the history (the terms' frames laid end to
    end, oldest first) and latent pixel (row, column) sit at integer positions;
    a token sits at the centre of its kernel window, e.g. a (2, 4, 4) window at
    frames 6..7, rows 0..3 is at (6.5, 1.5, 1.5). Windows that hang over the
    padded end keep their nominal centre, so every term's positions form a
    regular grid. Token order is that of `MultiTermMemoryPacker`: term by term,
    then frame, row, column. With `framepack_compatible`, the 1x terms floor as
    the packer's option does (fewer tokens on odd sizes, same centres).

    These centres are one choice of position; FramePack instead averages each
    token's rotary features over its window (`MultiTermMemoryPacker.pooled_rope`):
    the mean of cos is not the cos of the mean, so the two differ on coarse terms.
    """
    terms = _as_terms(terms)
    h, w = check_latent(latent_h, latent_w)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        # an integer dtype would drop the half-pixel centres; a string would be read as a device
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    device = check_device(device)
    total = sum(math.prod(_term_grid(term, h, w, framepack_compatible)) for term in terms)
    if 3 * total >= _MAX_ELEMENTS:
        raise ValueError(f"latent_h x latent_w = {h}x{w} gives {total} tokens: more than a tensor can hold")
    blocks = []
    first_frame = 0
    for term in terms:
        kt, kh, kw = memory_term_kernel(term)
        t, gh, gw = _term_grid(term, h, w, framepack_compatible)
        axes = [
            torch.arange(n, device=device, dtype=torch.float64) * k + (offset + (k - 1) / 2)
            for n, k, offset in ((t, kt, first_frame), (gh, kh, 0), (gw, kw, 0))
        ]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
        blocks.append(grid.reshape(-1, 3))
        first_frame += term.num_latent_frames
    if not blocks:
        return torch.empty(0, 3, device=device, dtype=dtype)
    return torch.cat(blocks).to(dtype)


def _pad_to_kernel(x: torch.Tensor, kernel: tuple[int, int, int]) -> torch.Tensor:
    """Replicate-pad (B, C, T, H, W) at the end of T, H and W up to multiples of kernel."""
    pads = [(-size) % k for size, k in zip(x.shape[2:], kernel)]
    if not any(pads):
        return x
    pad_t, pad_h, pad_w = pads
    return F.pad(x, (0, pad_w, 0, pad_h, 0, pad_t), mode="replicate")


def _windows(frames: torch.Tensor, kernel: tuple[int, int, int]) -> torch.Tensor:
    """(B, t*h*w, C*kt*kh*kw): the padded term's non-overlapping kernel windows, one per row.

    kernel == stride, so the Conv3d is one matrix product of these rows with its weight
    flattened in the same (C, kt, kh, kw) order.
    """
    padded = _pad_to_kernel(frames, kernel)
    batch, channels = padded.shape[:2]
    (kt, kh, kw), (t, h, w) = kernel, (n // k for n, k in zip(padded.shape[2:], kernel))
    windows = padded.reshape(batch, channels, t, kt, h, kh, w, kw).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return windows.reshape(batch, t * h * w, channels * kt * kh * kw)


def _under_transform() -> bool:
    """True under forward-mode AD or a torch.func transform (vmap, jvp, grad), whose tensors out= products
    cannot record (also where torch.compile traces them)."""
    return _forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active()


def _is_plain_conv3d(module: nn.Module, kernel: tuple[int, int, int], in_channels: int, embed_dim: int) -> bool:
    """True when the matrix product with module's weight is exactly what calling it would do."""
    return (
        type(module) is nn.Conv3d
        and tuple(module.kernel_size) == tuple(module.stride) == kernel
        # a weight of another shape could still reshape to (embed_dim, -1) and give wrong tokens silently
        and tuple(module.weight.shape) == (embed_dim, in_channels, *kernel)
        and (module.bias is None or tuple(module.bias.shape) == (embed_dim,))
        and tuple(module.padding) == (0, 0, 0)
        and tuple(module.dilation) == (1, 1, 1)
        and module.groups == 1
        and not module._forward_hooks
        and not module._forward_pre_hooks
        and not nn.modules.module._global_forward_hooks
        and not nn.modules.module._global_forward_pre_hooks
    )


class MultiTermMemoryPacker(nn.Module):
    """Embed a latent frame history as tokens, one strided Conv3d per memory term.

    Args:
        terms: memory terms in time order, oldest first (the last covers the
            most recent frames); dicts with keys num_latent_frames,
            temporal_stride, spatial_stride, patch_size, or `MemoryTerm`s.
        in_channels: latent channels C.
        embed_dim: token width.
        bias: whether the projections have a bias.
        framepack_compatible: embed as FramePack does (lllyasviel/FramePack, and
            diffusers' HunyuanVideoFramepackTransformer3DModel): its 1x terms
            (temporal and spatial stride 1) use an unpadded Conv3d, so on an odd
            latent size they floor (drop the last row/column) instead of
            replicate-padding; coarser terms replicate-pad as by default. Token
            counts then differ from `token_budget`'s (which counts ceil) on odd
            sizes: `token_counts` gives the packer's own. Default False: every
            term padded, matching the token budget.

    `forward(history)` takes latents (B, C, T, H, W) with T = the sum of the
    terms' frames and returns `(tokens, positions)`: tokens (B, total_tokens,
    embed_dim) in term order (within a term: frame, row, column) and positions
    (total_tokens, 3), see `memory_token_positions`. Term i is
    `self.projections[i]`, an `nn.Conv3d` with kernel = stride =
    `memory_term_kernel(term)`; the forward computes exactly that convolution
    of the replicate-padded term, as one matrix product per term (faster than
    the strided convolution on CPU). A projection that is not a plain Conv3d
    (a subclass or wrapper such as a LoRA layer, or one with forward hooks) is
    called as a module instead, so that its extras apply.
    """

    def __init__(
        self,
        terms,
        in_channels: int,
        embed_dim: int,
        *,
        bias: bool = True,
        framepack_compatible: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        for name, flag in (("bias", bias), ("framepack_compatible", framepack_compatible)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise TypeError(f"dtype must be None or a floating torch.dtype, got {dtype!r}")
        device = check_device(device)
        self.framepack_compatible = framepack_compatible
        self.terms = _as_terms(terms)
        self.in_channels = _check_positive(in_channels, "in_channels")
        self.embed_dim = _check_positive(embed_dim, "embed_dim")
        for i, term in enumerate(self.terms):
            weights = math.prod(memory_term_kernel(term)) * self.in_channels * self.embed_dim
            if weights >= _MAX_ELEMENTS:
                raise ValueError(
                    f"terms[{i}] needs a Conv3d weight of {weights} elements (kernel {memory_term_kernel(term)}, "
                    f"in_channels {self.in_channels}, embed_dim {self.embed_dim}): more than a tensor can hold"
                )
        self.num_frames = sum(term.num_latent_frames for term in self.terms)
        self.projections = nn.ModuleList(
            nn.Conv3d(in_channels, embed_dim, kernel, stride=kernel, bias=bias, device=device, dtype=dtype)
            for kernel in map(memory_term_kernel, self.terms)
        )

    def extra_repr(self) -> str:
        spec = ", ".join(f"{t.num_latent_frames}@{'x'.join(map(str, memory_term_kernel(t)))}" for t in self.terms)
        extra = ", framepack_compatible=True" if self.framepack_compatible else ""
        return (
            f"terms=[{spec}] (frames@kernel, oldest first), in_channels={self.in_channels}, "
            f"embed_dim={self.embed_dim}{extra}"
        )

    def token_counts(self, latent_h: int, latent_w: int) -> list[int]:
        """Tokens per term at this latent size (the token budget's tokens_per_term, but for
        framepack_compatible the 1x terms' floored counts)."""
        if not self.framepack_compatible:
            return multi_term_memory_patchification(self.terms, latent_h, latent_w)["tokens_per_term"]
        h, w = check_latent(latent_h, latent_w)
        return [math.prod(_term_grid(term, h, w, True)) for term in self.terms]

    def positions(self, latent_h: int, latent_w: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """(total_tokens, 3) token positions (frame, row, column); see `memory_token_positions`."""
        return memory_token_positions(
            self.terms, latent_h, latent_w, device=device, dtype=dtype, framepack_compatible=self.framepack_compatible
        )

    def pooled_rope(self, features, latent_h: int, latent_w: int, frame_indices=None):
        """Each token's rotary features averaged over its window, as FramePack builds its history's RoPE.

        FramePack computes the rotary features (cos and sin) at every position of the 1x patch grid
        (frame, row // p, column // p with patch size p: rows floor(latent_h / p), columns
        floor(latent_w / p)), then, for a term with kernel (kt, s*p, s*p), replicate-pads that grid at
        the end of each axis to whole windows of (kt, s, s) positions and averages each window. This
        method does exactly that for every term (the 1x terms' windows hold one position), so each
        token gets the mean of cos and the mean of sin over its window; `positions()`' centres are the
        other choice (the cos of the mean position, which differs: the mean of cos is not the cos of
        the mean). Where a term's tokens reach past the grid (an odd latent size, e.g. width 45 with
        p = 2 at the 2x term, where FramePack's own RoPE and token counts disagree), the padding
        continues by replicate, i.e. the coordinates are clamped to the grid. All terms must share
        one patch size.

        Args:
            features: the per-position rotary features, either
                - a callable `features(frame, row, col)` taking three float64 tensors of shape
                  (T, rows, cols) (the history's frame indices and the 1x grid's row and column
                  indices, broadcast) and returning a tensor (T, rows, cols, C), or
                - a tensor (T, rows, cols, C) of them (FramePack's (C, T, H, W) per sample is
                  `.permute(1, 2, 3, 0)`; diffusers' flattened (T*H*W, C) is `.unflatten(0, (T, H, W))`),
                - or a tuple/list of either (e.g. (cos, sin)), each pooled the same way.
                T is the history's frames (the terms' frames end to end, oldest first).
            latent_h, latent_w: the latent size of the history.
            frame_indices: with a callable, each history frame's index (a sequence or 1-D tensor of
                T numbers, e.g. FramePack's clean_latent_4x/2x/1x indices concatenated oldest first);
                default 0..T-1. Only with a callable: a tensor already holds its frames' features, and
                passing frame_indices with one is a TypeError.

        Returns:
            (total_tokens, C) in token order (term by term, then frame, row, column), in the features'
            dtype; a tuple of such for a tuple/list.
        """
        if isinstance(features, (tuple, list)):
            return tuple(self.pooled_rope(f, latent_h, latent_w, frame_indices) for f in features)
        h, w = check_latent(latent_h, latent_w)
        patch_sizes = {term.patch_size for term in self.terms}
        if len(patch_sizes) > 1:
            raise ValueError(f"pooled_rope needs one patch size for all terms, got {sorted(patch_sizes)}")
        p = patch_sizes.pop() if patch_sizes else 1
        grid_shape = (self.num_frames, h // p, w // p)
        if (h < p or w < p) and sum(self.token_counts(h, w)) > 0:  # tokens, but no 1x patch to pool from
            raise ValueError(
                f"pooled_rope needs a latent of at least one patch: latent_h and latent_w must be >= the patch size "
                f"{p}, got {h}x{w}"
            )
        if isinstance(features, torch.Tensor):
            if frame_indices is not None:
                raise TypeError("frame_indices is only used with a callable features; a tensor holds its frames")
            grid = features
        elif callable(features):
            grid = features(*self._rope_coordinates(grid_shape, frame_indices))
            if not isinstance(grid, torch.Tensor):
                raise TypeError(f"features(frame, row, col) must return a tensor, got {type(grid).__name__}")
        else:
            raise TypeError(
                "features must be a tensor (T, rows, cols, C), a callable or a tuple of them, "
                f"got {type(features).__name__}"
            )
        if grid.dim() != 4 or tuple(grid.shape[:3]) != grid_shape:
            raise ValueError(
                f"features must have shape (T, rows, cols, C) = ({grid_shape[0]}, {grid_shape[1]}, {grid_shape[2]}, C) "
                f"for a {h}x{w} latent with patch size {p} ({self.num_frames} history frames), "
                f"got {tuple(grid.shape)}"
            )
        if not grid.is_floating_point():
            raise TypeError(f"features must be floating point, got {grid.dtype}")
        pooled = []
        first_frame = 0
        for term in self.terms:
            frames = grid.narrow(0, first_frame, term.num_latent_frames)
            first_frame += term.num_latent_frames
            t, gh, gw = _term_grid(term, h, w, self.framepack_compatible)
            if t * gh * gw == 0:
                continue
            window = (term.temporal_stride, term.spatial_stride, term.spatial_stride)
            # Replicate-pad (clamp) every axis to whole windows over the term's token grid, then average.
            index = [
                torch.arange(n * k, device=grid.device).clamp_(max=size - 1)
                for n, k, size in zip((t, gh, gw), window, frames.shape[:3])
            ]
            padded = frames[index[0][:, None, None], index[1][None, :, None], index[2][None, None, :]]
            kt, ks, _ = window
            blocks = padded.reshape(t, kt, gh, ks, gw, ks, -1)
            pooled.append(blocks.mean(dim=(1, 3, 5)).reshape(t * gh * gw, -1))
        if not pooled:
            return grid.new_empty(0, grid.shape[-1])
        return torch.cat(pooled)

    def _rope_coordinates(self, grid_shape, frame_indices):
        frames, rows, cols = grid_shape
        if frame_indices is None:
            frame_axis = torch.arange(frames, dtype=torch.float64)
        else:
            try:
                frame_axis = torch.as_tensor(frame_indices)
            except (TypeError, ValueError, RuntimeError):
                frame_axis = None
            if frame_axis is None or frame_axis.dtype == torch.bool or frame_axis.is_complex():
                got = type(frame_indices).__name__ + ("" if frame_axis is None else f" of {frame_axis.dtype}")
                raise TypeError(f"frame_indices must be a sequence or 1-D tensor of real numbers, got {got}")
            frame_axis = frame_axis.to("cpu", torch.float64)  # on the rows' and columns' device
            if frame_axis.shape != (frames,):
                raise ValueError(
                    f"frame_indices must hold one index per history frame ({frames}), "
                    f"got shape {tuple(frame_axis.shape)}"
                )
        axes = (frame_axis, torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64))
        return torch.meshgrid(*axes, indexing="ij")

    def _check_history(self, history) -> None:
        if not isinstance(history, torch.Tensor):
            raise TypeError(f"history must be a tensor of shape (B, C, T, H, W), got {type(history).__name__}")
        check_strided(history, "history")
        expected = f"(B, C={self.in_channels}, T={self.num_frames}, H, W)"
        if history.dim() != 5:
            raise ValueError(f"history must have 5 dims {expected}, got {history.dim()} dims {tuple(history.shape)}")
        _, channels, frames, _, _ = history.shape
        if channels != self.in_channels or frames != self.num_frames:
            raise ValueError(
                f"history must have shape {expected} (T = sum of the terms' num_latent_frames), "
                f"got {tuple(history.shape)}"
            )
        if not history.is_floating_point():
            raise TypeError(f"history must be a floating tensor, got {history.dtype}")
        weights = [p for p in self.parameters() if p.is_floating_point()]
        if weights and history.device != weights[0].device:
            raise ValueError(
                f"history is on {history.device} but the packer's weights are on {weights[0].device}: "
                f"move one (history.to({str(weights[0].device)!r}) or packer.to({str(history.device)!r}))"
            )
        if weights and history.dtype != weights[0].dtype and not torch.is_autocast_enabled(history.device.type):
            raise ValueError(
                f"history has dtype {history.dtype} but the packer's weights are {weights[0].dtype}: "
                f"convert one (history.to({weights[0].dtype}) or packer.to({history.dtype})), or run under autocast"
            )

    def forward(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_history(history)
        batch, _, _, height, width = history.shape
        counts = self.token_counts(height, width)
        # Without autograd or autocast every term writes straight into one token buffer: no concat copy, so
        # inference peaks at about half the memory. Otherwise out-of-place products and one concat.
        # The out= products record no graph, so they run only when nothing could need one: no autograd,
        # no forward-mode AD or torch.func transform (invisible to requires_grad), no autocast, and every
        # projection a plain Conv3d (a hooked or wrapped one may bring tensors that require grad).
        needs_graph = torch.is_grad_enabled() and (
            history.requires_grad or any(p.requires_grad for p in self.parameters())
        )
        plain = [
            _is_plain_conv3d(proj, memory_term_kernel(term), self.in_channels, self.embed_dim)
            for term, proj in zip(self.terms, self.projections)
        ]
        direct = (
            not needs_graph
            and not torch.is_autocast_enabled(history.device.type)
            and not _under_transform()
            and all(plain)
        )
        tokens = history.new_empty(batch, sum(counts), self.embed_dim) if direct else None
        pieces = []
        first_frame = first_token = 0
        for index, (term, count) in enumerate(zip(self.terms, counts)):
            frames = history.narrow(2, first_frame, term.num_latent_frames)
            first_frame += term.num_latent_frames
            if count == 0:  # no frames or an empty latent: nothing to pad or embed
                continue
            out = tokens.narrow(1, first_token, count) if direct else None
            pieces.append(self._embed_term(index, frames, count, out, plain[index]))
            first_token += count
        if not direct:
            tokens = torch.cat(pieces, dim=1) if pieces else history.new_empty(batch, 0, self.embed_dim)
        return tokens, self.positions(height, width, device=history.device)

    def _embed_term(self, index: int, frames: torch.Tensor, count: int, out: torch.Tensor | None, plain: bool):
        """(B, count, embed_dim) tokens of term `index` from its frames, written into `out` when given;
        `plain`: its projection is a plain Conv3d of the packer's shapes (one matrix product), else it is called."""
        term, proj = self.terms[index], self.projections[index]
        kernel = memory_term_kernel(term)
        if _floors(term, self.framepack_compatible):  # FramePack's unpadded 1x Conv3d: drop the remainder
            _, kh, kw = kernel
            frames = frames[..., : frames.shape[3] // kh * kh, : frames.shape[4] // kw * kw]
        if not plain:
            # e.g. a LoRA wrapper or a hooked module: run its own forward
            try:
                embedded = proj(_pad_to_kernel(frames, kernel))
            except torch.OutOfMemoryError:
                raise  # not a wrong projection: callers that retry on it must see it as it is
            except RuntimeError as exc:
                raise RuntimeError(
                    f"projections[{index}] failed on terms[{index}] (frames {tuple(frames.shape)}): it must act as "
                    f"a Conv3d from in_channels={self.in_channels} to embed_dim={self.embed_dim} with kernel = "
                    f"stride = {kernel} and no padding: {exc}"
                ) from exc
            embedded = embedded.flatten(2).transpose(1, 2)
            expected = (frames.shape[0], count, self.embed_dim)
            if embedded.shape != expected:
                raise RuntimeError(
                    f"projections[{index}] gave tokens of shape {tuple(embedded.shape)} for terms[{index}], expected "
                    f"{expected}: it must act as a Conv3d with kernel = stride = {kernel} and no padding"
                )
            return embedded if out is None else out.copy_(embedded)
        windows = _windows(frames, kernel)  # (B, tokens, C*kt*kh*kw); the padded copy is already freed
        batch, count = windows.shape[:2]
        weight_t = proj.weight.reshape(self.embed_dim, -1).t()
        if out is None:
            if proj.bias is None:
                return windows @ weight_t
            return torch.addmm(proj.bias, windows.flatten(0, 1), weight_t).unflatten(0, (batch, count))
        for b in range(batch):  # out[b] is one contiguous (t*h*w, embed_dim) block of the token buffer
            if proj.bias is None:
                torch.mm(windows[b], weight_t, out=out[b])
            else:
                torch.addmm(proj.bias, windows[b], weight_t, out=out[b])
        return out

    @torch.no_grad()
    def init_from_patch_embed(self, conv: nn.Conv3d) -> MultiTermMemoryPacker:
        """Initialise every term from a base (1, p, p) patch-embedding Conv3d (stride = kernel).

        Term (kt, s, p) gets weight[o, c, i, y, x] = base[o, c, 0, y // s, x // s] / (kt * s * s)
        and the base bias, so that at initialisation it equals average pooling
        by (kt, s, s) followed by the base embedding (the same for its padded
        input). Every term's patch_size must be p. Returns self.
        """
        if not isinstance(conv, nn.Conv3d):
            raise TypeError(f"conv must be an nn.Conv3d patch embedding, got {type(conv).__name__}")
        kt0, p, p_w = conv.kernel_size
        if kt0 != 1 or p != p_w:
            raise ValueError(f"conv must have a (1, p, p) kernel, got {tuple(conv.kernel_size)}")
        if tuple(conv.stride) != tuple(conv.kernel_size):
            raise ValueError(f"conv must have stride = kernel = {tuple(conv.kernel_size)}, got stride {conv.stride}")
        if conv.padding not in ((0, 0, 0), "valid") or tuple(conv.dilation) != (1, 1, 1) or conv.groups != 1:
            raise ValueError(
                "conv must be a plain patch embedding (padding 0, dilation 1, groups 1), got "
                f"padding={conv.padding}, dilation={conv.dilation}, groups={conv.groups}"
            )
        if conv.in_channels != self.in_channels or conv.out_channels != self.embed_dim:
            raise ValueError(
                f"conv must map in_channels={self.in_channels} to embed_dim={self.embed_dim}, "
                f"got {conv.in_channels} -> {conv.out_channels}"
            )
        for i, term in enumerate(self.terms):
            if term.patch_size != p:
                raise ValueError(f"terms[{i}] has patch_size {term.patch_size}, but conv's patch size is {p}")
        has_bias = [proj.bias is not None for proj in self.projections]
        if conv.bias is not None and not all(has_bias):
            raise ValueError("conv has a bias but the packer was built with bias=False")
        base = conv.weight
        for term, proj in zip(self.terms, self.projections):
            s, kt = term.spatial_stride, term.temporal_stride
            spread = base.repeat_interleave(s, dim=3).repeat_interleave(s, dim=4) / (kt * s * s)
            proj.weight.copy_(spread.expand_as(proj.weight))
            if proj.bias is not None:
                if conv.bias is None:
                    proj.bias.zero_()
                else:
                    proj.bias.copy_(conv.bias)
        return self


def _check_positive(value, what: str) -> int:
    return check_int(value, what, minimum=1)


def plan_memory_terms(
    history_frames: int,
    latent_h: int,
    latent_w: int,
    token_budget: int,
    patch_size: int = 2,
    recent_frames: int = 1,
    max_stride: int = 4,
) -> list[MemoryTerm]:
    """Memory terms that cover `history_frames` latent frames within `token_budget` tokens.

    The scheme (FramePack's, generalised): levels k = 0, 1, ..., K with stride
    2^k in time and space alike (with patch_size 2: kernels 1x2x2, 2x4x4,
    4x8x8, ...), 2^K = max_stride. Going back in time from the newest frame,
    each term sits at a coarser level than the one after it (a level that gets
    no frames has no term, so a plan may skip one); every frame is covered
    exactly once. The newest min(recent_frames, history_frames) frames
    are at level 0 (stride 1). Every term but the oldest covers a whole number
    of its temporal stride, so only the oldest term is padded in time.

    The choice, recency first: level 0 takes as many of the newest frames as it
    can while the rest of the history still fits the budget at the coarsest
    level (the cheapest way to cover any frames), then level 1 likewise, and so
    on; the coarsest level takes what remains. So the token total is within the
    budget, and the plan is the lexicographically largest (frames at level 0,
    frames at level 1, ...) in the scheme: no plan in the scheme gives any
    frame a finer level without giving another frame a coarser one, i.e. the
    budget left over cannot pay for refining any frames. (A plan that trades
    recent resolution for older resolution can sometimes spend a few more
    tokens; the scheme deliberately does not.)

    Returns `MemoryTerm`s oldest first (the form MultiTermMemoryPacker takes),
    without empty terms; [] for no history. Raises ValueError when even the
    cheapest plan (recent frames at stride 1, the rest at max_stride) does not
    fit, naming the tokens that it needs.
    """
    frames = _check_nonnegative(history_frames, "history_frames")
    h, w = check_latent(latent_h, latent_w)
    budget = _check_nonnegative(token_budget, "token_budget")
    patch = _check_positive(patch_size, "patch_size")
    recent = min(_check_nonnegative(recent_frames, "recent_frames"), frames)
    coarsest = _check_positive(max_stride, "max_stride")
    if coarsest & (coarsest - 1):
        raise ValueError(f"max_stride must be a power of two (strides double per level), got {coarsest}")

    # 1, 2, 4, ..., max_stride, made one at a time: a plan stops at the level that takes the last frames, so a
    # huge max_stride costs nothing until it is reached (a list of them would hold every level up front).
    def strides():
        stride = 1
        while stride <= coarsest:
            yield stride
            stride <<= 1

    def cost(stride: int, n: int) -> int:
        t, gh, gw = term_grid(MemoryTerm(n, stride, stride, patch), h, w)
        return t * gh * gw

    def fits(spent: int, stride: int, n: int, remaining: int) -> bool:
        # n frames at this stride, and the remaining - n older ones at the cheapest (coarsest) stride.
        return spent + cost(stride, n) + cost(coarsest, remaining - n) <= budget

    if not fits(0, 1, recent, frames):
        needed = cost(1, recent) + cost(coarsest, frames - recent)
        raise ValueError(
            f"token_budget {int_text(budget)} is too small: covering {int_text(frames)} history frames of a "
            f"{int_text(h)}x{int_text(w)} latent needs at least {int_text(needed)} tokens ({int_text(recent)} recent "
            f"frame(s) at stride 1, {int_text(frames - recent)} at max_stride {int_text(coarsest)}, patch_size "
            f"{int_text(patch)}); raise token_budget or max_stride, or lower recent_frames"
        )

    counts = []  # frames per level, newest (finest) first
    spent, remaining = 0, frames
    for stride in strides():
        if remaining == 0:
            break
        if stride == coarsest:
            n = remaining  # fits: the previous level checked exactly this completion
        else:
            # Candidates in increasing order: whole strides, or all that remains (then this is the oldest term).
            # Their cost with the coarsest completion never decreases, so bisect for the last that fits.
            def value(i: int, stride=stride, remaining=remaining) -> int:
                return min(i * stride, remaining)

            lo = recent if stride == 1 else 0  # fits by the check above or by the previous level's choice
            hi = -(-remaining // stride)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if fits(spent, stride, value(mid), remaining):
                    lo = mid
                else:
                    hi = mid - 1
            n = value(lo)
        counts.append(n)
        spent += cost(stride, n)
        remaining -= n
    return [MemoryTerm(n, 1 << k, 1 << k, patch) for k, n in reversed(list(enumerate(counts))) if n]


def _check_nonnegative(value, what: str) -> int:
    return check_int(value, what, minimum=0)
