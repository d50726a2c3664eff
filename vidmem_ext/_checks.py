"""Argument checks shared by every op's front end (one vocabulary for errors, docs/errors.md).

Conventions: a wrong Python type or tensor dtype raises TypeError, a wrong value or shape (or
two arguments that disagree) raises ValueError, a dim out of range raises IndexError; every
message starts with the argument's name. Numbers are accepted as Python and numpy scalars
alike (`numbers.Real`, `operator.index`); bool is rejected where a number is expected, since
`True` frames or a `False` momentum is a caller's bug.

Standard library only at import time (`token_budget` uses the integer checks without torch);
the tensor checks import torch when called.
"""

from __future__ import annotations

import math
import numbers
import operator

FLOAT_DTYPE_NAMES = "float16, bfloat16, float32 or float64"


def float_dtypes() -> tuple:
    """The floating dtypes every op takes. (Not functools.cache'd: torch.compile warns about such calls.)"""
    import torch

    return (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def acc_dtype(dtype):
    """The accumulation dtype: float64 for float64, float32 for the others (half types accumulate in fp32)."""
    import torch

    return torch.float64 if dtype == torch.float64 else torch.float32


def int_text(value: int, max_digits: int = 1200) -> str:
    """value in decimal, or, when it may have more than max_digits digits (Python prints at most
    sys.get_int_max_str_digits(), 4300 by default), as the power of two it is or is just above."""
    if value.bit_length() * 0.30103 < max_digits - 1:  # log10(2): digits, conservatively
        return str(value)
    k = abs(value).bit_length() - 1
    sign = "-" if value < 0 else ""
    return f"{sign}2**{k}" if abs(value) == 1 << k else f"{sign}about 2**{k}"


def check_int(value, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (Python, numpy or 0-d integer tensor, anything with __index__) in [minimum, maximum]."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool {value!r}")
    try:
        result = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if minimum is not None and result < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {int_text(result)}")
    if maximum is not None and result > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {int_text(result)}")
    return result


def check_real(
    value, name: str, minimum: float | None = None, maximum: float | None = None, *, finite: bool = True
) -> float:
    """A real number (Python or numpy scalar, not bool), not NaN, finite unless finite=False, in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        result = float(value)
    except OverflowError:  # an int beyond float's range
        raise ValueError(f"{name} is out of range, got {value!r}") from None
    # Comparisons, not math.isnan / isinf: torch.compile passes a float that changes between calls as a
    # symbolic float, which comparisons handle (as guards) and math functions do not.
    if result != result or (finite and abs(result) == math.inf):
        raise ValueError(f"{name} must be a finite number, got {result}")
    if minimum is not None and result < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {result}")
    if maximum is not None and result > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {result}")
    return result


def check_momentum(momentum, name: str = "momentum"):
    """A real number in [0, 1] (returned as float) or a floating tensor (returned as is; callers check its shape)."""
    if type(momentum) is float and 0.0 <= momentum <= 1.0:  # the common call, checked first (ops run per frame)
        return momentum
    import torch

    if isinstance(momentum, torch.Tensor):
        if not momentum.is_floating_point():
            raise TypeError(f"{name} tensor must be floating point, got {momentum.dtype}")
        return check_strided(momentum, name)
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise TypeError(f"{name} must be a float in [0, 1] or a tensor, got {type(momentum).__name__}")
    try:
        value = float(momentum)
    except OverflowError:  # an int beyond float's range
        raise ValueError(f"{name} must be in [0, 1], got {momentum!r}") from None
    if not 0.0 <= value <= 1.0:  # also NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def check_tensor(value, name: str):
    import torch

    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return check_strided(value, name)


def check_device(device, name: str = "device"):
    """device as a torch.device (None stays None); ValueError naming the argument otherwise."""
    import torch

    try:
        return torch.device(device) if device is not None else None
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{name} must name a torch device, got {device!r} ({exc})") from None


def check_strided(value, name: str):
    """A dense (strided) tensor: the kernels and references index memory; sparse layouts are refused by name."""
    import torch

    if value.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {value.layout}; use .to_dense()")
    return value


def check_float_tensor(value, name: str):
    """A tensor of one of the four floating dtypes."""
    check_tensor(value, name)
    if value.dtype not in float_dtypes():
        raise TypeError(f"{name} must be a floating tensor ({FLOAT_DTYPE_NAMES}), got {value.dtype}")
    return value


def broadcasts_to(shape, target) -> bool:
    """Whether a tensor of `shape` broadcasts to `target` without growing it."""
    import torch

    try:
        return torch.broadcast_shapes(shape, target) == tuple(target)
    except RuntimeError:
        return False


def check_same_device(first_name: str, first, **others) -> None:
    """ValueError unless every tensor in `others` (None skipped) is on `first`'s device.

    The fake kernels call it: a call that mixes meta and real tensors dispatches to them, and without
    it would return an uninitialised tensor on the real device.
    """
    for name, tensor in others.items():
        if tensor is not None and tensor.device != first.device:
            raise ValueError(f"{name} is on {tensor.device} but {first_name} is on {first.device}")


def check_dim(dim, ndim: int, tensor_name: str = "x", name: str = "dim") -> int:
    """An axis index of a tensor with `ndim` dims (negative allowed), returned in [0, ndim)."""
    dim = check_int(dim, name)
    if ndim == 0:
        raise IndexError(f"{name}: {tensor_name} is 0-dimensional and has no axis {dim}")
    if not -ndim <= dim < ndim:
        raise IndexError(f"{name} {dim} is out of range for {tensor_name} with {ndim} dimensions")
    return dim % ndim
