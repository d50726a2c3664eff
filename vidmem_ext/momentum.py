"""Temporal momentum: an exponential moving average over frames (docs/semantics.md, "Temporal momentum").

    y_0 = m * s + (1 - m) * x_0     (s = initial if given, else s = x_0, so y_0 = x_0)
    y_t = m * y_{t-1} + (1 - m) * x_t

Front end of torch.ops.vidmem_ext.temporal_momentum: argument checks, the fake
(meta) kernels and the autograd formula, registered through torch.library so
that opcheck, gradcheck and torch.compile(fullgraph=True) work. The kernels are
csrc/temporal_momentum/temporal_momentum_cpu.cpp and csrc/temporal_momentum/temporal_momentum.cu; the
references are vidmem_ext.reference.temporal_momentum_loop / _matrix.
"""

from __future__ import annotations

import math

import torch

from . import _backend, reference

__all__ = ["temporal_momentum"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_args(x, momentum, dim, initial, x_name: str = "x"):
    """Validate temporal_momentum's arguments (also used by vidmem_ext.distributed, with x_name="x_local").

    Returns (dim in [0, x.dim()), frame-slice shape, momentum tensor or None, momentum float or None).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{x_name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{x_name} must be a floating tensor (float16, bfloat16, float32 or float64), got {x.dtype}")
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if x.dim() == 0:
        raise IndexError(f"dim: {x_name} is 0-dimensional and has no frame axis")
    if not -x.dim() <= dim < x.dim():
        raise IndexError(f"dim {dim} is out of range for {x_name} with {x.dim()} dimensions")
    dim %= x.dim()
    slice_shape = x.shape[:dim] + x.shape[dim + 1 :]

    if isinstance(momentum, torch.Tensor):
        if not momentum.is_floating_point():
            raise ValueError(f"momentum tensor must be floating point, got {momentum.dtype}")
        if momentum.device != x.device:
            raise ValueError(f"momentum is on {momentum.device} but {x_name} is on {x.device}")
        try:
            fits = torch.broadcast_shapes(momentum.shape, slice_shape) == slice_shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"momentum of shape {tuple(momentum.shape)} does not broadcast to one frame slice "
                f"{tuple(slice_shape)} ({x_name} of shape {tuple(x.shape)} without dim {dim})"
            )
        m_tensor, m_value = momentum, None
    else:
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
            raise TypeError(f"momentum must be a float in [0, 1] or a tensor, got {type(momentum).__name__}")
        m_value = float(momentum)
        if math.isnan(m_value) or not 0.0 <= m_value <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {m_value}")
        m_tensor = None

    if initial is not None:
        if not isinstance(initial, torch.Tensor):
            raise TypeError(f"initial must be a tensor or None, got {type(initial).__name__}")
        if initial.shape != slice_shape:
            raise ValueError(
                f"initial must have the frame-slice shape {tuple(slice_shape)}, got {tuple(initial.shape)}"
            )
        if initial.dtype != x.dtype:
            raise ValueError(f"initial must have {x_name}'s dtype {x.dtype}, got {initial.dtype}")
        if initial.device != x.device:
            raise ValueError(f"initial is on {initial.device} but {x_name} is on {x.device}")
    return dim, slice_shape, m_tensor, m_value


def temporal_momentum(x: torch.Tensor, momentum=0.98, dim: int = 0, initial: torch.Tensor | None = None):
    """Exponential moving average of `x` over its frame axis `dim`.

    Args:
        x: floating tensor (fp16, bf16, fp32, fp64) on CPU or CUDA, any strides.
        momentum: a float in [0, 1] (0 = identity / self-attention, 1 = every
            frame becomes frame 0 / first-frame cross-frame attention), or a
            tensor broadcastable to one frame slice (x.select(dim, 0).shape),
            e.g. per channel, on x's device; it may require grad. Tensor values
            are not range-checked (that would cost a device sync).
        dim: the frame axis (negative allowed).
        initial: optional state of the frame-slice shape, x's dtype and device:
            y_0 = m * initial + (1 - m) * x_0. Passing the last output frame of
            one call as `initial` of the next makes chunked calls equal one call.

    Returns:
        A new tensor of x's shape, dtype and device. Half types accumulate in
        fp32. Inputs are never modified.
    """
    dim, _, m_tensor, m_value = check_args(x, momentum, dim, initial)
    if m_tensor is not None:  # the kernels read momentum in the accumulation dtype
        m_tensor, m_value = m_tensor.to(_acc_dtype(x.dtype)), 0.0
    if _backend.use_kernel("temporal_momentum", x.device):
        return torch.ops.vidmem_ext.temporal_momentum(x, m_tensor, m_value, dim, initial)
    return reference.temporal_momentum_loop(x, m_tensor if m_tensor is not None else m_value, dim, initial)


# --------------------------------------------------------------------------- torch.library registrations

if _backend.compiled():
    # The kernels allocate their outputs with at::empty_like (x's strides when x is dense and
    # non-overlapping), grad_momentum contiguous in the accumulation dtype.
    @torch.library.register_fake("vidmem_ext::temporal_momentum")
    def _temporal_momentum_fake(x, momentum, momentum_value, dim, initial):
        return torch.empty_like(x)

    @torch.library.register_fake("vidmem_ext::temporal_momentum_backward")
    def _temporal_momentum_backward_fake(grad_y, x, y, momentum, momentum_value, dim, initial, momentum_grad):
        dim = dim % x.dim()
        slice_shape = x.shape[:dim] + x.shape[dim + 1 :]
        acc = _acc_dtype(x.dtype)
        grad_m = x.new_empty(slice_shape, dtype=acc) if momentum_grad else x.new_empty((0,), dtype=acc)
        grad_init = torch.empty_like(initial) if initial is not None else x.new_empty((0,))
        return torch.empty_like(x), grad_m, grad_init

    def _setup_context(ctx, inputs, output):
        x, momentum, momentum_value, dim, initial = inputs
        ctx.momentum_value, ctx.dim = momentum_value, dim
        ctx.save_for_backward(x, output, momentum, initial)

    def _backward(ctx, grad_y):
        x, y, momentum, initial = ctx.saved_tensors
        want_m = momentum is not None and ctx.needs_input_grad[1]
        grad_x, grad_m, grad_init = torch.ops.vidmem_ext.temporal_momentum_backward(
            grad_y, x, y, momentum, ctx.momentum_value, ctx.dim, initial, want_m
        )
        # grad_m is per lane (frame-slice shape); reduce over the axes momentum broadcasts along.
        grad_m = grad_m.sum_to_size(momentum.shape) if want_m else None
        grad_init = grad_init if initial is not None and ctx.needs_input_grad[4] else None
        return grad_x if ctx.needs_input_grad[0] else None, grad_m, None, None, grad_init

    torch.library.register_autograd("vidmem_ext::temporal_momentum", _backward, setup_context=_setup_context)
