"""Dependency noise: ZS²'s correlated per-frame Gaussian noise (docs/semantics.md, "Dependency noise").

Front end of torch.ops.vidmem_ext.dependency_noise_fill_ (the fused generator)
and torch.ops.vidmem_ext.dependency_noise_step (the deterministic core on given
candidates): argument checks, randomness plumbing and fake kernels. Kernels:
csrc/dependency_noise/dependency_noise_cpu.cpp and csrc/dependency_noise/dependency_noise.cu; references:
vidmem_ext.reference.dependency_noise / dependency_noise_step.
"""

from __future__ import annotations

import torch

from . import _backend, _checks, reference

__all__ = [
    "dependency_noise",
    "dependency_noise_step",
    "MAX_RANDOM_SEARCH_TIMES",
    "MAX_LINEAR_SEARCH_TIMES",
    "MAX_LAMBDA_I",
]

# Upper bounds of the search counts (docs/errors.md): far above any sensible use (the paper uses 10 and 15),
# low enough that one call stays bounded in time. The C++ checks hold the same numbers.
MAX_RANDOM_SEARCH_TIMES = 1 << 20
MAX_LINEAR_SEARCH_TIMES = 1 << 16
# Upper bound of lambda_i (docs/errors.md): frames are independent from about 1.65 on. Larger targets
# only cost the fp32 errors |... - lambda_i| their precision (at 10, fp32 and fp64 chose alphas within
# 0.004 of each other on frames of one element, the same on frames of 1024), until the errors round
# to lambda_i itself and ties walk alpha up to 1 (identical frames at 1e8). The C++ checks hold the
# same number.
MAX_LAMBDA_I = 10.0


def _check_lambda(lambda_i) -> float:
    return _checks.check_real(lambda_i, "lambda_i", minimum=0.0, maximum=MAX_LAMBDA_I)


def _check_search(lambda_i, random_search_times, linear_search_times) -> tuple[float, int, int]:
    """The search's target and counts, within their bounds (docs/errors.md)."""
    return (
        _check_lambda(lambda_i),
        _checks.check_int(random_search_times, "random_search_times", minimum=1, maximum=MAX_RANDOM_SEARCH_TIMES),
        _checks.check_int(linear_search_times, "linear_search_times", minimum=0, maximum=MAX_LINEAR_SEARCH_TIMES),
    )


def _check_frame_dim(frame_dim, ndim: int, subject: str) -> int:
    """frame_dim as an axis in [1, ndim) of `subject` (the noise's shape, or the fill op's out)."""
    frame_dim = _checks.check_int(frame_dim, "frame_dim")
    if not -ndim <= frame_dim < ndim:
        raise IndexError(f"frame_dim {frame_dim} is out of range for {subject} with {ndim} dimensions")
    if frame_dim % ndim == 0:
        raise ValueError(f"frame_dim must index a non-batch axis of {subject} (1..{ndim - 1}), got {frame_dim}")
    return frame_dim % ndim


def _as_int64(value: int) -> int:
    """The 64-bit pattern of value as a signed int64 (the op schema's int); the kernels read it unsigned."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _philox_seed_offset(generator, seed, device: torch.device, num_positions: int) -> tuple[int, int]:
    """Key and first counter position of the Philox4x32-10 numbers that the fused kernels read.

    The kernels read counters (position, position >> 32, group, batch item) for positions
    offset .. offset + num_positions - 1 (two per frame), as torch's own kernels read
    (offset / 4 + i, ..., subsequence). seed=int keys the stream by that integer, from position 0
    (the same noise on CPU and CUDA). Otherwise the torch generator (or the device's default
    one) provides it: on CUDA its Philox seed and offset / 4, with the offset advanced past the
    positions this call reads; on the CPU a 63-bit key drawn from it. Either way
    torch.manual_seed reproduces a result and successive calls differ. Both are returned as
    int64 bit patterns.
    """
    if seed is not None:
        return _as_int64(int(seed)), 0
    if device.type == "cuda":
        gen = generator if generator is not None else torch.cuda.default_generators[device.index or 0]
        offset = gen.get_offset()  # in 32-bit draws per subsequence: 4 per counter position
        gen.set_offset(offset + 4 * num_positions)
        return _as_int64(gen.initial_seed()), _as_int64(offset // 4)
    key = torch.randint(0, 2**63 - 1, (1,), generator=generator, dtype=torch.int64)
    return int(key.item()), 0


def dependency_noise(
    shape,
    lambda_i: float = 0.01,
    random_search_times: int = 10,
    linear_search_times: int = 15,
    *,
    frame_dim: int = 1,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    device=None,
    dtype: torch.dtype | None = None,
    return_alphas: bool = False,
):
    """Correlated per-frame Gaussian noise: frame 0 ~ N(0, I), each later frame chosen from the previous.

    Args:
        shape: output shape; axis 0 is the batch, `frame_dim` the frames
            (1: (B, F, ...) as in the paper; 2: (B, C, F, H, W) as diffusers lays out video latents).
        lambda_i: target of mean(exp(p) * (p - n)); 0 keeps frames (nearly) identical,
            values from about 1.65 on give independent frames. In [0, MAX_LAMBDA_I] (10).
        random_search_times: candidates drawn per frame (>= 1).
        linear_search_times: line-search steps on alpha (>= 0).
        generator: torch generator to draw from (default: the device's default generator).
        seed: instead of a generator, key a counter-based Philox4x32-10 stream
            with this int: the same seed gives the same noise on CPU and CUDA.
        device, dtype: of the output (dtype defaults to torch's default float;
            fp16/bf16/fp32 compute in fp32, fp64 in fp64).
        return_alphas: also return alpha per (batch, frame), shape (B, F) (0 for frame 0).

    The fused kernels never draw the R candidates: they draw the candidates'
    statistics as scalars and then the winner conditioned on its statistic,
    which has exactly the literal algorithm's distribution (docs/semantics.md, "Drawing only the winner").
    """
    if isinstance(shape, torch.Size | tuple | list):
        shape = [_checks.check_int(s, f"shape[{i}]", minimum=0) for i, s in enumerate(shape)]
    else:
        raise TypeError(f"shape must be a list or tuple of ints, got {type(shape).__name__}")
    if len(shape) < 2:
        raise ValueError(f"shape must have at least 2 dims (batch and frames), got {shape}")
    lambda_i, random_search_times, linear_search_times = _check_search(
        lambda_i, random_search_times, linear_search_times
    )
    frame_dim = _check_frame_dim(frame_dim, len(shape), "a shape")
    if seed is not None:
        if generator is not None:
            raise ValueError("seed: pass either generator or seed, not both")
        seed = _checks.check_int(seed, "seed")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if dtype not in _checks.float_dtypes():
        raise TypeError(f"dtype must be {_checks.FLOAT_DTYPE_NAMES}, got {dtype}")
    device = _checks.check_device(device)
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device}: this torch build or machine has no CUDA device")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        elif device.index >= torch.cuda.device_count():
            raise ValueError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type not in ("cpu", "meta"):  # e.g. xpu or mps: refuse what this torch cannot run, by name
        backend = getattr(torch, device.type, None)
        is_available = getattr(backend, "is_available", None)
        if not callable(is_available) or not is_available():
            raise ValueError(f"device {device}: this torch build or machine has no {device.type} device")
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but the noise is made on {device}")

    acc = _checks.acc_dtype(dtype)
    if device.type == "meta" or 0 in shape:
        # Shapes only (meta), or nothing to draw: no kernel, no randomness, no stream-layout limits.
        # Alphas of an empty frame are 0, like frame 0's.
        out = torch.empty(shape, dtype=dtype, device=device)
        if not return_alphas:
            return out
        return out, torch.zeros((shape[0], shape[frame_dim]), dtype=acc, device=device)

    if _backend.use_kernel("dependency_noise", device):
        out = torch.empty(shape, dtype=dtype, device=device)
        key, offset = _philox_seed_offset(generator, seed, device, 2 * shape[frame_dim])
        alphas = torch.ops.vidmem_ext.dependency_noise_fill_(
            out, lambda_i, random_search_times, linear_search_times, frame_dim, key, offset
        )
    else:
        if seed is not None:
            generator = torch.Generator(device=device).manual_seed(_mix_seed(seed))
        out, alphas = reference.dependency_noise(
            shape, lambda_i, random_search_times, linear_search_times,
            frame_dim=frame_dim, generator=generator, device=device, dtype=dtype, return_alphas=True,
        )  # fmt: skip
    return (out, alphas) if return_alphas else out


def _mix_seed(seed: int) -> int:
    """The seed of the fallback's torch.Generator: the splitmix64 finaliser of all 64 bits of `seed`.

    torch's CPU generator keeps only the low 32 bits of its seed, so seeds that differ only in the
    high bits would otherwise give the same noise.
    """
    mask = (1 << 64) - 1
    z = (int(seed) + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def _check_step_args(prev, candidates, lambda_i, linear_search_times) -> tuple[float, int]:
    """dependency_noise_step's argument checks (the front end's and the fake kernel's: the C++ checks'
    in Python's exception types). Returns (lambda_i, linear_search_times)."""
    _checks.check_float_tensor(prev, "prev")
    _checks.check_tensor(candidates, "candidates")
    if candidates.dtype != prev.dtype:
        raise ValueError(f"candidates dtype {candidates.dtype} differs from prev dtype {prev.dtype}")
    if candidates.device != prev.device:
        raise ValueError(f"candidates are on {candidates.device} but prev is on {prev.device}")
    if prev.dim() < 1:
        raise ValueError("prev must have a batch axis: shape (B, ...)")
    if candidates.dim() != prev.dim() + 1 or candidates.shape[1:] != prev.shape:
        raise ValueError(
            f"candidates must have shape (R, *prev.shape) = (R, {', '.join(map(str, prev.shape))}), "
            f"got {tuple(candidates.shape)}"
        )
    if candidates.shape[0] < 1:
        raise ValueError("candidates must hold at least one candidate (R >= 1)")
    lambda_i = _check_lambda(lambda_i)
    linear_search_times = _checks.check_int(
        linear_search_times, "linear_search_times", minimum=0, maximum=MAX_LINEAR_SEARCH_TIMES
    )
    return lambda_i, linear_search_times


def _check_fill_args(out, lambda_i, random_search_times, linear_search_times, frame_dim) -> int:
    """dependency_noise_fill_'s checks, as the C++ ones, for its fake kernel. Returns frame_dim >= 1."""
    _checks.check_float_tensor(out, "out")
    if out.dim() < 2:
        raise ValueError(f"out must have at least 2 dims (batch and frames), got shape {tuple(out.shape)}")
    _check_search(lambda_i, random_search_times, linear_search_times)
    frame_dim = _check_frame_dim(frame_dim, out.dim(), "out")
    if torch._debug_has_internal_overlap(out) == 1:  # 1: elements certainly share memory (an expanded view)
        raise ValueError("out has elements that share memory (an expanded view); pass a tensor of its own")
    return frame_dim


def dependency_noise_step(prev: torch.Tensor, candidates: torch.Tensor, lambda_i: float, linear_search_times: int = 15):
    """One dependency-noise step on given candidates: the deterministic core of the generator.

    prev: (B, ...) the previous frame; candidates: (R, B, ...) the random-search
    candidates. Returns (frame (B, ...) in prev's dtype, alpha (B,), index (B,)
    int64): the first candidate with the smallest error, then the line search on
    alpha, exactly as docs/semantics.md, "Dependency noise" (alpha clamped to [0, 1]).
    """
    lambda_i, linear_search_times = _check_step_args(prev, candidates, lambda_i, linear_search_times)
    if _backend.use_kernel("dependency_noise_step", prev.device):
        return torch.ops.vidmem_ext.dependency_noise_step(prev, candidates, lambda_i, linear_search_times)
    if prev.shape[0] == 0:  # as the kernel: empty outputs (the reference cannot reshape an empty batch)
        acc = torch.float64 if prev.dtype == torch.float64 else torch.float32
        connected = prev.sum() + candidates.sum()  # 0, in the graph of the inputs that require grad
        return (prev + connected, connected.to(acc).expand(0), torch.empty(0, dtype=torch.int64, device=prev.device))
    return reference.dependency_noise_step(prev, candidates, lambda_i, linear_search_times)


# --------------------------------------------------------------------------- torch.library registrations

if _backend.compiled():

    @torch.library.register_fake("vidmem_ext::dependency_noise_step")
    def _step_fake(prev, candidates, lambda_i, linear_search_times):
        # A call mixing meta and real tensors runs this, not the kernel: check what would go wrong. The
        # kernel's frame is contiguous (it works on prev.contiguous()), so is this one.
        _check_step_args(prev, candidates, lambda_i, linear_search_times)
        batch = prev.shape[0]
        alpha = prev.new_empty((batch,), dtype=_checks.acc_dtype(prev.dtype))
        return prev.new_empty(prev.shape), alpha, prev.new_empty((batch,), dtype=torch.int64)

    def _step_setup_context(ctx, inputs, output):
        _, candidates, _, _ = inputs
        _, alpha, index = output
        ctx.save_for_backward(alpha, index)
        ctx.candidates_shape = candidates.shape

    def _step_backward(ctx, grad_frame, grad_alpha, grad_index):
        # frame = sqrt(alpha) prev + sqrt(1 - alpha) candidates[index]; alpha and index are piecewise
        # constant in the inputs (chosen by comparisons), so they carry no gradient.
        alpha, index = ctx.saved_tensors
        if grad_frame is None:
            return None, None, None, None
        batch = grad_frame.shape[0]
        scale_shape = (batch,) + (1,) * (grad_frame.dim() - 1)
        grad = grad_frame.to(alpha.dtype)
        grad_prev = (grad * alpha.sqrt().reshape(scale_shape)).to(grad_frame.dtype)
        grad_chosen = (grad * (1 - alpha).sqrt().reshape(scale_shape)).to(grad_frame.dtype)
        grad_candidates = grad_frame.new_zeros(ctx.candidates_shape)
        where = index.reshape((1,) + scale_shape).expand((1,) + tuple(grad_frame.shape))
        grad_candidates.scatter_(0, where, grad_chosen.unsqueeze(0))
        return grad_prev, grad_candidates, None, None

    torch.library.register_autograd(
        "vidmem_ext::dependency_noise_step", _step_backward, setup_context=_step_setup_context
    )

    @torch.library.register_fake("vidmem_ext::dependency_noise_fill_")
    def _fill_fake(out, lambda_i, random_search_times, linear_search_times, frame_dim, seed, offset):
        frame_dim = _check_fill_args(out, lambda_i, random_search_times, linear_search_times, frame_dim)
        return out.new_empty((out.shape[0], out.shape[frame_dim]), dtype=_checks.acc_dtype(out.dtype))
