"""Plain PyTorch references for every vidmem_ext op, as docs/semantics.md defines them.

These are written for clarity, not speed. They are what the kernels are tested
against, and what the ops fall back to when the compiled part is missing. All
are differentiable by autograd where the op is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from ._checks import acc_dtype

__all__ = [
    "temporal_momentum_loop",
    "temporal_momentum_matrix",
    "momentum_matrix",
    "dependency_noise_step",
    "dependency_noise",
    "multi_term_memory_pack",
]


# --------------------------------------------------------------------------- temporal momentum


def temporal_momentum_loop(x: torch.Tensor, momentum=0.98, dim: int = 0, initial: torch.Tensor | None = None):
    """The EMA over frames, one frame at a time.

    y_0 = m * s + (1 - m) * x_0, where s = initial if given, else s = x_0 (so y_0 = x_0);
    y_t = m * y_{t-1} + (1 - m) * x_t.

    `momentum` is a float or a tensor broadcastable to one frame slice
    (x.select(dim, 0).shape). Half types accumulate in fp32. A lane whose momentum is
    exactly 0 returns x, exactly 1 its first state, bit for bit (docs/errors.md).
    """
    acc = acc_dtype(x.dtype)
    frames = x.movedim(dim, 0).to(acc)
    # A float momentum is rounded to the accumulation dtype as the kernels read it: e.g. 1 - 1e-9 is exactly
    # 1 in fp32, a lane that keeps its first state bit for bit. (A 0-d tensor, not .item(): torch.compile
    # cannot branch on a value it only knows at run time.)
    m = momentum if isinstance(momentum, torch.Tensor) else torch.tensor(momentum, dtype=acc, device=x.device)
    m = m.to(acc)
    if frames.shape[0] == 0:
        return x.clone()
    prev = None if initial is None else initial.to(acc)
    out = []
    for t in range(frames.shape[0]):
        prev = frames[0] if (t == 0 and prev is None) else _ema_step(m, prev, frames[t])
        out.append(prev)
    return torch.stack(out, 0).movedim(0, dim).to(x.dtype)


def _ema_step(m, prev: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """m * prev + (1 - m) * frame, exactly frame where m == 0 and exactly prev where m == 1.

    0 * inf = NaN would otherwise carry a non-finite value through a lane that ignores it.
    """
    if not isinstance(m, torch.Tensor):
        return frame if m == 0 else prev if m == 1 else m * prev + (1 - m) * frame
    step = m * prev + (1 - m) * frame
    exact = torch.where(m == 0, frame, prev)
    use_exact = (m == 0) | (m == 1)
    differentiated = (torch.is_grad_enabled() and m.requires_grad) or _has_tangent(m)
    if differentiated:
        # Keep the formula (and so its d/dm) wherever it already equals the exact value.
        use_exact = use_exact & (step != exact)
    return torch.where(use_exact, exact, step)


def _has_tangent(m: torch.Tensor) -> bool:
    """True when m carries a forward-mode tangent (forward_ad, torch.func.jvp / jacfwd), which a momentum
    does without requiring grad. (Not any torch.func transform: under vjp or grad the exact branch must
    stay, or a non-finite cotangent reaches 0 * inf.)"""
    fwad = torch.autograd.forward_ad
    return fwad._current_level >= 0 and fwad.unpack_dual(m).tangent is not None


def momentum_matrix(num_frames: int, momentum, dtype=torch.float64, device=None) -> torch.Tensor:
    """U[i, j] = m^(i - j) for j <= i, else 0 (float momentum): the EMA's weights on x'."""
    i = torch.arange(num_frames, device=device)
    lag = (i[:, None] - i[None, :]).to(dtype)
    return torch.where(lag >= 0, torch.as_tensor(momentum, dtype=dtype, device=device) ** lag.clamp(min=0), 0)


def temporal_momentum_matrix(x: torch.Tensor, momentum=0.98, dim: int = 0, initial: torch.Tensor | None = None):
    """The corrected matrix form of the seed's "efficient" version: y = U @ x' along frames.

    For finite inputs only: U's zeros multiply every frame, so a NaN or inf spreads to earlier frames
    (the loop reference keeps the exact endpoints and forward-only propagation).

    x'_0 = x_0 (or m * initial + (1 - m) * x_0 with an initial state) and
    x'_t = (1 - m) * x_t. The seed's einsum("ff, fbnc -> fbnc") takes U's
    diagonal and returns x' unchanged; the contraction meant is "g f, f ... -> g ...".
    A momentum tensor gives one U per frame-slice element.
    """
    acc = acc_dtype(x.dtype)
    frames = x.movedim(dim, 0).to(acc)  # (F, ...)
    n = frames.shape[0]
    if n == 0:
        return x.clone()
    if isinstance(momentum, torch.Tensor):
        m = momentum.to(acc).expand(frames.shape[1:])  # (...)
        first = frames[0] if initial is None else m * initial.to(acc) + (1 - m) * frames[0]
        scaled = torch.cat([first[None], (1 - m) * frames[1:]], 0)
        i = torch.arange(n, device=x.device)
        lag = (i[:, None] - i[None, :]).to(acc)  # (F, F)
        lag = lag.reshape(n, n, *([1] * m.dim()))
        u = torch.where(lag >= 0, m.unsqueeze(0).unsqueeze(0) ** lag.clamp(min=0), 0)  # (F, F, ...)
        y = (u * scaled.unsqueeze(0)).sum(1)
    else:
        m = float(momentum)
        first = frames[0] if initial is None else m * initial.to(acc) + (1 - m) * frames[0]
        scaled = torch.cat([first[None], (1 - m) * frames[1:]], 0)
        u = momentum_matrix(n, m, dtype=acc, device=x.device)
        flat = rearrange(scaled, "f ... -> f (...)")
        y = torch.einsum("gf,fk->gk", u, flat).reshape(scaled.shape)
    return y.movedim(0, dim).to(x.dtype)


# --------------------------------------------------------------------------- dependency noise


def _frame_error(noise: torch.Tensor, prev: torch.Tensor, lambda_i: float) -> torch.Tensor:
    """err(n) = | mean(kl_div(n, p, log_target=True)) - lambda |, one per batch item.

    kl_div with log_target=True is exp(p) * (p - n) elementwise.
    """
    kl = F.kl_div(noise, prev, reduction="none", log_target=True)
    return (kl.reshape(kl.shape[0], -1).mean(1) - lambda_i).abs()  # (B,) prev: one element per frame


def _compose(prev: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    a = alpha.reshape(-1, *([1] * (prev.dim() - 1)))
    return torch.sqrt(a) * prev + torch.sqrt(1 - a) * noise


def dependency_noise_step(prev: torch.Tensor, candidates: torch.Tensor, lambda_i: float, linear_search_times: int = 15):
    """One step of dependency noise on given candidates, literally as docs/semantics.md, "Dependency noise" reads.

    prev: (B, ...); candidates: (R, B, ...). Returns (frame (B, ...), alpha (B,), index (B,) int64).
    Half inputs are computed in fp32; the frame has prev's dtype.
    """
    acc = acc_dtype(prev.dtype)
    if acc != torch.float64 and prev.shape[0] and prev[0].numel():
        # Where fp32 statistics overflow (prev above about 84) the kernels search in double, so do we:
        # those batch items come from the fp64 computation (docs/errors.md).
        p64 = prev.to(torch.float64).reshape(prev.shape[0], -1)
        c64 = candidates.to(torch.float64).reshape(candidates.shape[0], prev.shape[0], -1)
        w = p64.exp()
        stats = torch.cat([(w * p64).mean(1, keepdim=True), (w * c64).mean(2).T], 1)
        big = torch.finfo(torch.float32).max
        wide = (stats.isfinite() & (stats.abs() > big)).any(1)
        # This literal form also overflows elementwise (exp(p) (p - n) over p, the candidates and the
        # compositions, each at most 2|p| + |n| in size), before any mean does.
        terms = w * (2 * p64.abs() + c64.abs().amax(0))
        wide |= (terms.isfinite() & (terms > big / 2)).any(1)
        if wide.any():
            frame64, alpha64, index64 = dependency_noise_step(
                prev.to(torch.float64), candidates.to(torch.float64), lambda_i, linear_search_times
            )
            frame, alpha, index = _dependency_noise_step_in(acc, prev, candidates, lambda_i, linear_search_times)
            item = wide.reshape(-1, *([1] * (prev.dim() - 1)))
            return (
                torch.where(item, frame64.to(prev.dtype), frame),
                torch.where(wide, alpha64.to(acc), alpha),
                torch.where(wide, index64, index),
            )
    return _dependency_noise_step_in(acc, prev, candidates, lambda_i, linear_search_times)


def _dependency_noise_step_in(acc, prev, candidates, lambda_i, linear_search_times):
    p = prev.to(acc)
    cands = candidates.to(acc)
    batch = p.shape[0]
    bound = torch.full((batch,), float("inf"), dtype=acc, device=p.device)
    index = torch.zeros(batch, dtype=torch.int64, device=p.device)
    for k in range(cands.shape[0]):  # random search: the first candidate with the smallest error
        err = _frame_error(cands[k], p, lambda_i)
        better = err < bound
        index = torch.where(better, k, index)
        bound = torch.where(better, err, bound)
    chosen = cands[index, torch.arange(batch, device=p.device)]

    alpha = torch.full((batch,), 0.1, dtype=acc, device=p.device)
    step = torch.full_like(alpha, 0.1)
    best = torch.zeros_like(alpha)
    for _ in range(linear_search_times):  # line search on alpha, clamped to [0, 1]
        a = alpha.clamp(0, 1)
        err = _frame_error(_compose(p, chosen, a), p, lambda_i)
        ok = err <= bound
        bound = torch.where(ok, err, bound)
        best = torch.where(ok, a, best)
        alpha = torch.where(ok, alpha + step, alpha - 0.8 * step)
        step = torch.where(ok, step, 0.2 * step)
    return _compose(p, chosen, best).to(prev.dtype), best, index


def dependency_noise(
    shape,
    lambda_i: float = 0.01,
    random_search_times: int = 10,
    linear_search_times: int = 15,
    *,
    frame_dim: int = 1,
    generator: torch.Generator | None = None,
    device=None,
    dtype=None,
    return_alphas: bool = False,
):
    """The eager per-frame algorithm: frame 0 ~ N(0, I); each later frame from R drawn candidates.

    Returns noise of `shape` (batch axis 0, frames along frame_dim) and, with
    return_alphas, the chosen alpha per (batch, frame) (0 for frame 0, which is
    independent noise).
    """
    shape = list(shape)
    dtype = dtype or torch.get_default_dtype()
    acc = acc_dtype(dtype)
    frame_dim = frame_dim % len(shape)
    num_frames = shape[frame_dim]
    frame_shape = shape[:frame_dim] + shape[frame_dim + 1 :]
    if num_frames == 0:
        noise = torch.empty(shape, device=device, dtype=dtype)
        return (noise, torch.zeros(shape[0], 0, device=device, dtype=acc)) if return_alphas else noise
    frames = [torch.randn(frame_shape, generator=generator, device=device, dtype=acc)]
    alphas = [torch.zeros(shape[0], dtype=acc, device=device)]
    for _ in range(1, num_frames):
        candidates = torch.randn([random_search_times, *frame_shape], generator=generator, device=device, dtype=acc)
        frame, alpha, _ = dependency_noise_step(frames[-1], candidates, lambda_i, linear_search_times)
        frames.append(frame)
        alphas.append(alpha)
    noise = torch.stack(frames, frame_dim).to(dtype)
    if return_alphas:
        return noise, torch.stack(alphas, 1)
    return noise


# --------------------------------------------------------------------------- multi-term memory packing


def multi_term_memory_pack(history: torch.Tensor, terms, weights, biases=None):
    """The packer literally as docs/semantics.md, "Multi-term memory patchification" reads: pad, one strided Conv3d.

    history: (B, C, T, H, W), T = sum of the terms' frames, terms oldest first
    (dicts or MemoryTerm). weights[i]: (E, C, kt, s*p, s*p) for term i; biases[i]: (E,) or None.
    Each term is replicate-padded at the end of T, H and W to multiples of its kernel and
    convolved with kernel = stride. Returns (tokens (B, N, E) in term order, then frame, row,
    column; positions (N, 3) float32: each token's kernel-window centre (frame, row, column),
    frames counted from the start of history).
    """
    from .token_budget import MemoryTerm, validate_term

    terms = [MemoryTerm(*validate_term(term, f"terms[{i}]")) for i, term in enumerate(terms)]
    biases = [None] * len(terms) if biases is None else biases
    batch, _, _, height, width = history.shape
    tokens, positions = [], []
    first = 0
    for term, weight, bias in zip(terms, weights, biases):
        k = term.spatial_stride * term.patch_size
        kernel = (term.temporal_stride, k, k)
        frames = history[:, :, first : first + term.num_latent_frames]
        if 0 not in frames.shape[2:]:
            pad_t, pad_h, pad_w = ((-n) % kk for n, kk in zip(frames.shape[2:], kernel))
            padded = F.pad(frames, (0, pad_w, 0, pad_h, 0, pad_t), mode="replicate")
            out = F.conv3d(padded, weight, bias, stride=kernel)  # (B, E, t, h, w)
            tokens.append(out.flatten(2).transpose(1, 2))
            for i in range(out.shape[2]):
                for j in range(out.shape[3]):
                    for c in range(out.shape[4]):
                        positions.append(
                            [first + i * kernel[0] + (kernel[0] - 1) / 2, j * k + (k - 1) / 2, c * k + (k - 1) / 2]
                        )
        first += term.num_latent_frames
    embed_dim = weights[0].shape[0] if len(weights) else 0
    tokens = torch.cat(tokens, 1) if tokens else history.new_empty(batch, 0, embed_dim)
    positions = torch.tensor(positions, dtype=torch.float32, device=history.device).reshape(-1, 3)
    return tokens, positions
