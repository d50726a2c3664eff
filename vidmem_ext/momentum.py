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

import functools

import torch
import torch.autograd.forward_ad as _forward_ad

from . import _backend, _checks, reference

__all__ = ["temporal_momentum"]


def check_args(x, momentum, dim, initial, x_name: str = "x"):
    """Validate temporal_momentum's arguments (also used by vidmem_ext.distributed, with x_name="x_local").

    Returns (dim in [0, x.dim()), frame-slice shape, momentum tensor or None, momentum float or None).
    """
    _checks.check_float_tensor(x, x_name)
    dim = _checks.check_dim(dim, x.dim(), x_name)
    slice_shape = x.shape[:dim] + x.shape[dim + 1 :]

    momentum = _checks.check_momentum(momentum)
    if isinstance(momentum, torch.Tensor):
        if momentum.device != x.device:
            raise ValueError(f"momentum is on {momentum.device} but {x_name} is on {x.device}")
        if not _checks.broadcasts_to(momentum.shape, slice_shape):
            raise ValueError(
                f"momentum of shape {tuple(momentum.shape)} does not broadcast to one frame slice "
                f"{tuple(slice_shape)} ({x_name} of shape {tuple(x.shape)} without dim {dim})"
            )
        m_tensor, m_value = momentum, None
    else:
        m_tensor, m_value = None, momentum

    if initial is not None:
        if not isinstance(initial, torch.Tensor):
            raise TypeError(f"initial must be a tensor or None, got {type(initial).__name__}")
        _checks.check_strided(initial, "initial")
        if initial.shape != slice_shape:
            raise ValueError(
                f"initial must have the frame-slice shape {tuple(slice_shape)}, got {tuple(initial.shape)}"
            )
        if initial.dtype != x.dtype:
            raise ValueError(f"initial must have {x_name}'s dtype {x.dtype}, got {initial.dtype}")
        if initial.device != x.device:
            raise ValueError(f"initial is on {initial.device} but {x_name} is on {x.device}")
    return dim, slice_shape, m_tensor, m_value


def _under_func_transform() -> bool:
    """True inside a torch.func transform (grad, vjp, jacrev, vmap, ...), also one that torch.compile traces."""
    return torch._C._are_functorch_transforms_active()


def _forward_ad_needs_reference(*tensors) -> bool:
    """True inside torch.autograd.forward_ad.dual_level when an input carries a tangent, or when the call
    records a graph whose backward may be given one (forward-over-reverse): forward-mode AD, which the
    ops' registered autograd does not implement (the kernels would drop the tangent)."""
    if _forward_ad._current_level < 0:
        return False
    tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return True
    return any(_forward_ad.unpack_dual(t).tangent is not None for t in tensors)


_FLOAT_DTYPES = _checks.float_dtypes()  # a module constant: the fast path's test of it costs ~0.2 us less


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
    if (  # a plain eager call: a float momentum, no initial, no gradient, validated by cheap tests
        initial is None
        and type(momentum) is float
        and 0.0 <= momentum <= 1.0
        and type(dim) is int
        and type(x) is torch.Tensor
        and x.dtype in _FLOAT_DTYPES
        and x.layout == torch.strided
        and -x.ndim <= dim < x.ndim
        and ((x.is_cpu and _backend._AVAILABLE[_CPU_KEY]) or (x.is_cuda and _backend._AVAILABLE[_CUDA_KEY]))
        and not (x.requires_grad and torch.is_grad_enabled())
        and not torch.compiler.is_compiling()
        and not torch._C._are_functorch_transforms_active()
        and _forward_ad._current_level < 0
    ):
        # Straight to the kernel, as _eager_call does: the full checks below cost about 2.3 us of a
        # 7 us call (measured on a tiny tensor; a 5 MB clone takes 30-80 us).
        with _BelowAutograd():
            return _kernel("temporal_momentum")(x, None, momentum, dim % x.ndim, None)
    dim, _, m_tensor, m_value = check_args(x, momentum, dim, initial)
    if m_tensor is not None:  # the kernels read momentum in the accumulation dtype
        m_tensor, m_value = m_tensor.to(_checks.acc_dtype(x.dtype)), 0.0
    if _under_func_transform() or _forward_ad_needs_reference(x, m_tensor, initial):
        # torch.func (grad, jacrev, vmap, ...) and forward-mode AD cannot see through the ops'
        # registered autograd; the reference is plain PyTorch and composes with every transform
        # (same values, slower).
        return reference.temporal_momentum_loop(x, m_tensor if m_tensor is not None else m_value, dim, initial)
    if _backend.use_kernel("temporal_momentum", x.device):
        if torch.compiler.is_compiling():  # traced: the registered op, its fake kernel and its autograd
            return torch.ops.vidmem_ext.temporal_momentum(x, m_tensor, m_value, dim, initial)
        return _eager_call(x, m_tensor, m_value, dim, initial)
    return reference.temporal_momentum_loop(x, m_tensor if m_tensor is not None else m_value, dim, initial)


_BelowAutograd = torch._C._AutoDispatchBelowAutograd
_CPU_KEY, _CUDA_KEY = ("temporal_momentum", "cpu"), ("temporal_momentum", "cuda")  # keys of _backend._AVAILABLE


@functools.cache
def _kernel(name: str):
    """torch.ops.vidmem_ext.<name>.default as the dispatcher's own callable (OpOverload's `_op`, where
    present): a call then skips OpOverload.__call__'s Python frame, about 1 us of a 3 us call."""
    overload = getattr(torch.ops.vidmem_ext, name).default
    return getattr(overload, "_op", overload)


def _eager_call(x, m_tensor, m_value, dim, initial):
    """The op in eager mode, without the per-call Python layers of the registered autograd.

    The registered autograd (torch.library.register_autograd below) serves torch.compile, opcheck and
    direct torch.ops calls; in eager mode its wrapping costs tens of microseconds a call, as much as
    the kernel itself on a 5 MB tensor. Here a call that needs no gradient goes straight to the
    kernel, and one that does goes through _EagerTemporalMomentum: the same setup and backward
    functions as the registered autograd, so the same gradients, double backward included.
    """
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad
        or (m_tensor is not None and m_tensor.requires_grad)
        or (initial is not None and initial.requires_grad)
    )
    if needs_grad:
        return _EagerTemporalMomentum.apply(x, m_tensor, m_value, dim, initial)
    with _BelowAutograd():
        return _kernel("temporal_momentum")(x, m_tensor, m_value, dim, initial)


# --------------------------------------------------------------------------- torch.library registrations

if _backend.compiled():
    # The kernels allocate their outputs with at::empty_like (x's strides when x is dense and
    # non-overlapping), grad_momentum contiguous in the accumulation dtype. The fakes check what the
    # kernels check of devices, dims and shapes: a call that mixes meta and CPU tensors runs them, not
    # the kernels, and must not hand back an uninitialised CPU tensor.
    @torch.library.register_fake("vidmem_ext::temporal_momentum")
    def _temporal_momentum_fake(x, momentum, momentum_value, dim, initial):
        check_args(x, momentum if momentum is not None else momentum_value, dim, initial)
        return torch.empty_like(x)

    @torch.library.register_fake("vidmem_ext::temporal_momentum_backward")
    def _temporal_momentum_backward_fake(grad_y, x, y, momentum, momentum_value, dim, initial, momentum_grad):
        _checks.check_same_device("x", x, grad_y=grad_y, y=y)
        for name, tensor in (("grad_y", grad_y), ("y", y)):
            if tensor.shape != x.shape:
                raise ValueError(f"{name} must have x's shape {tuple(x.shape)}, got {tuple(tensor.shape)}")
            if tensor.dtype != x.dtype:
                raise ValueError(f"{name} must have x's dtype {x.dtype}, got {tensor.dtype}")
        dim, _, _, _ = check_args(x, momentum if momentum is not None else momentum_value, dim, initial)
        slice_shape = x.shape[:dim] + x.shape[dim + 1 :]
        acc = _checks.acc_dtype(x.dtype)
        grad_m = x.new_empty(slice_shape, dtype=acc) if momentum_grad else x.new_empty((0,), dtype=acc)
        grad_init = torch.empty_like(initial) if initial is not None else x.new_empty((0,))
        return torch.empty_like(x), grad_m, grad_init

    def _setup_context(ctx, inputs, output):
        x, momentum, momentum_value, dim, initial = inputs
        ctx.momentum_value, ctx.dim = momentum_value, dim
        # Only the momentum gradient reads x and y (dm = sum a_t (y_{t-1} - x_t)); dx and
        # d(initial) need dy alone, so otherwise neither is kept alive for backward.
        keep_xy = momentum is not None and momentum.requires_grad
        ctx.x_shape, ctx.x_stride, ctx.x_dtype = x.shape, x.stride(), x.dtype
        ctx.save_for_backward(x if keep_xy else None, output if keep_xy else None, momentum, initial)

    def _backward(ctx, grad_y):
        x, y, momentum, initial = ctx.saved_tensors
        if x is None:
            # The op checks x's and y's shape and dtype but does not read them here, and gives grad_x
            # x's strides (as AccumulateGrad expects). grad_y stands in when it matches; else an
            # untouched allocation (no page of it is written or read).
            if grad_y.dtype == ctx.x_dtype and grad_y.stride() == ctx.x_stride:
                x = y = grad_y
            else:
                # With the strides grad_x gets (empty_like's: x's own when x is dense, else dense in x's
                # order), not x's: those would span all of a sliced x's storage. Worked out on meta.
                like_x = torch.empty_strided(ctx.x_shape, ctx.x_stride, dtype=ctx.x_dtype, device="meta")
                x = y = torch.empty_like(like_x, device=grad_y.device)
        want_m = momentum is not None and ctx.needs_input_grad[1]
        args = (grad_y, x, y, momentum, ctx.momentum_value, ctx.dim, initial, want_m)
        if torch.is_grad_enabled() or torch.compiler.is_compiling():  # create_graph: the backward's own autograd
            grad_x, grad_m, grad_init = torch.ops.vidmem_ext.temporal_momentum_backward(*args)
        else:  # a first-order backward: straight to the kernel
            with _BelowAutograd():
                grad_x, grad_m, grad_init = _kernel("temporal_momentum_backward")(*args)
        # grad_m is per lane (frame-slice shape); reduce over the axes momentum broadcasts along.
        grad_m = grad_m.sum_to_size(momentum.shape) if want_m else None
        grad_init = grad_init if initial is not None and ctx.needs_input_grad[4] else None
        return grad_x if ctx.needs_input_grad[0] else None, grad_m, None, None, grad_init

    torch.library.register_autograd("vidmem_ext::temporal_momentum", _backward, setup_context=_setup_context)

    class _EagerTemporalMomentum(torch.autograd.Function):
        """Eager-mode autograd of the op (see _eager_call): _setup_context and _backward as registered."""

        @staticmethod
        def forward(ctx, x, momentum, momentum_value, dim, initial):
            with _BelowAutograd():
                y = _kernel("temporal_momentum")(x, momentum, momentum_value, dim, initial)
            _setup_context(ctx, (x, momentum, momentum_value, dim, initial), y)
            return y

        @staticmethod
        def backward(ctx, grad_y):
            return _backward(ctx, grad_y)

    # ----------------------------------------------------------------------- second order
    # The backward op is linear in grad_y: a_t = gy_t + m a_(t+1) (a reverse scan), then
    #   grad_x_t = c_t a_t        (c_t = 1 - m; c_0 = 1 without initial),
    #   grad_m   = sum_t a_t d_t  (d_t = y_(t-1) - x_t, y_(-1) = initial; d_0 = 0 without initial),
    #   grad_init = m a_0.
    # With cotangents (u, v, w) of (grad_x, grad_m, grad_init), L = sum_t a_t b_t where
    # b_t = c_t u_t + v d_t + [t = 0] w m, so dL/dgy = B, the forward scan B_t = b_t + m B_(t-1);
    # dL/dx_t = -v a_t, dL/dy_t = v a_(t+1), dL/dinitial = v a_0, and
    # dL/dm = sum_t a_(t+1) B_t - sum_(t: c_t = 1 - m) a_t u_t + w a_0.

    def _plain_scan(z: torch.Tensor, m, reverse: bool) -> torch.Tensor:
        """r_t = z_t + m r_(t-1) along axis 0 (r_(t+1) when reverse), from a zero state; z in the acc dtype.

        The op computes (1 - m) r from a zero initial state; lanes with m = 1 are a plain cumulative sum.
        """
        if reverse:
            z = z.flip(0)
        zero = z.new_zeros(z.shape[1:])
        if isinstance(m, float):
            if m == 1.0:
                r = z.cumsum(0)
            else:
                r = torch.ops.vidmem_ext.temporal_momentum(z, None, m, 0, zero) / (1.0 - m)
        else:
            one = m == 1
            scaled = torch.ops.vidmem_ext.temporal_momentum(z, m, 0.0, 0, zero)
            r = torch.where(one, z.cumsum(0), scaled / torch.where(one, torch.ones_like(m), 1 - m))
        return r.flip(0) if reverse else r

    def _backward_setup_context(ctx, inputs, output):
        grad_y, x, y, momentum, momentum_value, dim, initial, momentum_grad = inputs
        ctx.momentum_value, ctx.dim, ctx.momentum_grad = momentum_value, dim, momentum_grad
        ctx.save_for_backward(grad_y, x, y, momentum, initial)

    def _backward_backward(ctx, gg_x, gg_m, gg_init):
        grad_y, x, y, momentum, initial = ctx.saved_tensors
        needs = ctx.needs_input_grad
        dim = ctx.dim % x.dim()
        acc = _checks.acc_dtype(x.dtype)

        def frames(t):
            return t.movedim(dim, 0).to(acc)

        def back(t, like):
            return t.movedim(0, dim).to(like.dtype)

        gy, xf, yf = frames(grad_y), frames(x), frames(y)
        num_frames = gy.shape[0]
        m = ctx.momentum_value if momentum is None else momentum.to(acc)
        has_initial = initial is not None
        u = frames(gg_x) if gg_x is not None else torch.zeros_like(gy)
        v = gg_m.to(acc) if ctx.momentum_grad and gg_m is not None and gg_m.numel() else None
        w = gg_init.to(acc) if has_initial and gg_init is not None and gg_init.numel() else None
        if num_frames == 0:
            zeros = [torch.zeros_like(t) if t is not None else None for t in (grad_y, x, y, momentum)]
            grad_initial = torch.zeros_like(initial) if has_initial else None
            return (*zeros, None, None, grad_initial, None)

        one_minus_m = 1 - m
        c_u = one_minus_m * u
        if not has_initial:  # grad_x_0 = a_0: no (1 - m) on frame 0
            c_u = torch.cat([u[:1], c_u[1:]])
        b = c_u
        if v is not None:
            state_before = (initial.to(acc) if has_initial else xf[0]).unsqueeze(0)
            drift = torch.cat([state_before, yf[:-1]]) - xf  # d_t; d_0 = x_0 - x_0 = 0 without initial
            b = b + v * drift
        if w is not None:
            b = torch.cat([(b[0] + w * m).unsqueeze(0), b[1:]])
        a = _plain_scan(gy, m, reverse=True)
        big_b = _plain_scan(b, m, reverse=False)

        grad_grad_y = back(big_b, grad_y) if needs[0] else None
        grad_x = grad_y_saved = grad_initial = grad_momentum = None
        if v is not None:
            if needs[1]:
                gx = -v * a
                if not has_initial:
                    gx = torch.cat([torch.zeros_like(gx[:1]), gx[1:]])
                grad_x = back(gx, x)
            if needs[2]:
                grad_y_saved = back(torch.cat([v * a[1:], torch.zeros_like(a[:1])]), y)
            if has_initial and needs[6]:
                grad_initial = (v * a[0]).to(initial.dtype)
        if momentum is not None and needs[3]:
            dm = (a[1:] * big_b[:-1]).sum(0)
            dm = dm - ((a * u).sum(0) if has_initial else (a[1:] * u[1:]).sum(0))
            if w is not None:
                dm = dm + w * a[0]
            grad_momentum = dm.sum_to_size(momentum.shape).to(momentum.dtype)
        return grad_grad_y, grad_x, grad_y_saved, grad_momentum, None, None, grad_initial, None

    torch.library.register_autograd(
        "vidmem_ext::temporal_momentum_backward", _backward_backward, setup_context=_backward_setup_context
    )
