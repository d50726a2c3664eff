"""Temporal momentum (docs/semantics.md, "Temporal momentum"): kernels against the references, gradients,
torch.library integration (opcheck, gradcheck, torch.compile), bad input.

Tolerances, against an fp64 reference on the same (upcast) inputs:
    float64 1e-12; float32 1e-5 (relative to the scale of the values);
    float16 2e-3 and bfloat16 1.6e-2: a few ulp of the output dtype (the kernels accumulate in
    fp32 and round once per output).
Momentum gradients are sums over frames and broadcast axes and get 10x looser tolerances.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import vidmem_ext
from vidmem_ext import _backend, reference
from vidmem_ext import temporal_momentum as tm

pytestmark = pytest.mark.skipif(not _backend.compiled(), reason="vidmem_ext._C is not built")

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def assert_close(actual, expected, tol, scale=None):
    """|actual - expected| <= tol * max(1, scale), scale = max |expected| by default."""
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape
    if expected.numel() == 0:
        return
    if scale is None:
        scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= tol * max(1.0, scale), f"max error {err:.3g} > {tol:.3g} * max(1, {scale:.3g})"


def make_tensor(shape, dtype, layout, gen, device="cpu"):
    """A tensor of `shape` with the given memory layout (values from `gen`)."""
    shape = list(shape)
    if layout == "contiguous" or len(shape) == 0:
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).to(device)
    if layout == "permuted":  # a reversed axis order in memory
        base = torch.randn(shape[::-1], generator=gen, dtype=torch.float64).to(dtype).to(device)
        return base.permute(*reversed(range(len(shape))))
    if layout == "sliced":  # every other element of the last axis, offset along the first
        big = [shape[0] + 1, *shape[1:-1], 2 * shape[-1]] if len(shape) > 1 else [2 * shape[0] + 1]
        base = torch.randn(big, generator=gen, dtype=torch.float64).to(dtype).to(device)
        return base[1:, ..., ::2] if len(shape) > 1 else base[1::2]
    if layout == "expanded":  # the first axis broadcast (stride 0)
        base = torch.randn([1, *shape[1:]], generator=gen, dtype=torch.float64).to(dtype).to(device)
        return base.expand(shape)
    raise ValueError(layout)


def make_momentum(kind, slice_shape, dtype, gen, device="cpu", value=None):
    """A float, a 0-d tensor, a per-channel tensor (last slice axis) or a full frame-slice tensor."""
    acc = acc_dtype(dtype)
    if kind == "float":
        return float(torch.rand((), generator=gen)) if value is None else value
    if kind == "scalar":
        return torch.tensor(float(torch.rand((), generator=gen)) if value is None else value, dtype=acc, device=device)
    if kind == "channel":
        shape = [slice_shape[-1]] if len(slice_shape) else []
    else:  # "full"
        shape = list(slice_shape)
    return torch.rand(shape, generator=gen, dtype=torch.float64).to(acc).to(device)


def reference64(x, m, dim, initial):
    m64 = m.double() if isinstance(m, torch.Tensor) else m
    return reference.temporal_momentum_loop(x.double(), m64, dim, None if initial is None else initial.double())


def slice_shape_of(shape, dim):
    dim %= len(shape)
    return list(shape[:dim]) + list(shape[dim + 1 :])


# --------------------------------------------------------------------------- forward against the references


@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    dim_seed=st.integers(0, 100),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(["contiguous", "permuted", "sliced", "expanded"]),
    m_kind=st.sampled_from(["float", "scalar", "channel", "full"]),
    with_initial=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_forward_matches_references(shape, dim_seed, dtype, layout, m_kind, with_initial, seed):
    gen = torch.Generator().manual_seed(seed)
    dim = dim_seed % len(shape) - (len(shape) if dim_seed % 2 else 0)  # negative dims too
    x = make_tensor(shape, dtype, layout, gen)
    sl = slice_shape_of(shape, dim)
    m = make_momentum(m_kind, sl, dtype, gen)
    initial = make_tensor(sl, dtype, "contiguous", gen) if with_initial else None
    y = tm(x, m, dim, initial)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    expected = reference64(x, m, dim, initial)
    assert_close(y, expected, TOL[dtype])
    if dtype == torch.float64:  # the two references agree
        assert_close(reference.temporal_momentum_matrix(x, m, dim, initial), expected, 1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_equals_loop_reference_in_dtype(dtype):
    # Same inputs, same accumulation dtype: the kernel and the loop reference round the same way.
    gen = torch.Generator().manual_seed(1)
    x = make_tensor((7, 3, 10), dtype, "permuted", gen)
    m = make_momentum("channel", [3, 10], dtype, gen)
    initial = make_tensor((3, 10), dtype, "contiguous", gen)
    y = tm(x, m, 0, initial)
    expected = reference.temporal_momentum_loop(x, m, 0, initial)
    ulp = torch.finfo(dtype).eps
    assert_close(y, expected, 2 * ulp)


def test_output_layout_follows_empty_like():
    x = torch.randn(4, 6, 5).permute(2, 0, 1)  # dense, permuted
    y = tm(x, 0.5, 1)
    assert y.stride() == x.stride()
    xs = torch.randn(4, 6, 10)[..., ::2]  # not dense: output is contiguous
    assert tm(xs, 0.5, 1).is_contiguous()


@pytest.mark.parametrize(
    "shape,dim",
    [((3, 5000), 1), ((6000, 2), 0), ((2, 3, 4500), -1)],  # few lanes, many frames: the CPU splits frames into chunks
)
def test_chunked_frames_match_reference(shape, dim):
    gen = torch.Generator().manual_seed(2)
    x = make_tensor(shape, torch.float64, "contiguous", gen)
    sl = slice_shape_of(shape, dim)
    m = 0.999 + 0.001 * torch.rand(sl, generator=gen, dtype=torch.float64)  # long memory: carries matter
    for initial in (None, torch.randn(sl, generator=gen, dtype=torch.float64)):
        assert_close(tm(x, m, dim, initial), reference64(x, m, dim, initial), 1e-11)
        grads = _kernel_grads(x, m, dim, initial, gen)
        for got, want in zip(grads, _reference_grads(x, m, dim, initial, grads[-1])):
            assert_close(got, want, 1e-10)
    # fp32 rounding accumulates over the EMA's memory, 1 / (1 - m) ~ 1000 frames here; the half
    # types accumulate in fp32 too, then round each output once: within one unit of its last place
    # (relative, per element: these long averages are small, ~0.03, so a tolerance scaled by
    # max(1, |y|) would not see a wrong carry).
    fp32_error = 1000 * 6e-8 * 3
    for dtype, last_place in ((torch.float32, 0.0), (torch.float16, 2.0**-10), (torch.bfloat16, 2.0**-7)):
        xd = x.to(dtype)
        got, want = tm(xd, m.float(), dim).double(), reference64(xd, m.float(), dim, None)
        err = (got - want).abs()
        assert (err <= last_place * want.abs() + fp32_error).all(), f"{dtype}: max error {err.max().item():.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_frames_keep_infinities_and_zeros(dtype):
    # The chunk carries multiply a state by m^1024, which underflows (m = 0.4) or overflows
    # (m = 2) in fp32 and fp64 although no single step does: an infinite state must stay infinite and a zero one
    # zero, as the step-by-step recurrence keeps them, not turn into NaN through 0 * inf.
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(9000, 3, generator=gen, dtype=torch.float64).to(dtype)
    x[0, 0], x[5000, 1] = float("inf"), -float("inf")
    initial = torch.tensor([1.0, float("inf"), -float("inf")], dtype=dtype)
    for init in (None, initial):
        y, want = tm(x, 0.4, 0, init), reference.temporal_momentum_loop(x, 0.4, 0, init)
        assert torch.equal(y.isnan(), want.isnan()) and torch.equal(y.isinf(), want.isinf())
        assert torch.equal(y.isinf() & (y > 0), want.isinf() & (want > 0))
        assert want.isnan().any() == (init is not None)  # inf + -inf in lane 1 with an initial inf
        finite = want.isfinite()
        assert_close(y[finite], want[finite], 1e-5 if dtype == torch.float32 else 1e-12)
    xg = torch.randn(9000, 2, generator=gen, dtype=dtype).requires_grad_()
    grad_y = torch.zeros(9000, 2, dtype=dtype)
    grad_y[-1] = float("inf")
    (got,) = torch.autograd.grad(tm(xg, 0.4, 0), xg, grad_y)
    (want,) = torch.autograd.grad(reference.temporal_momentum_loop(xg, 0.4, 0), xg, grad_y)
    assert torch.equal(got.isinf(), want.isinf()) and not got.isnan().any()
    zeros, m = torch.zeros(9000, 3, dtype=dtype), torch.full((3,), 2.0, dtype=dtype)
    assert torch.equal(tm(zeros, m, 0), zeros)


def test_many_lane_axes_fall_back_to_contiguous_copies():
    # x's axes are scrambled in memory while momentum and initial are laid out in x's axis order,
    # so the seven lane axes cannot collapse into six: the kernels run on contiguous copies.
    gen = torch.Generator().manual_seed(3)
    base = torch.randn([2, 3, 2, 3, 2, 3, 2, 3], generator=gen, dtype=torch.float64)
    x = base.permute(7, 0, 6, 1, 5, 2, 4, 3)
    for dim in (0, 3, -1):
        sl = slice_shape_of(x.shape, dim)
        m = torch.rand(sl, generator=gen, dtype=torch.float64)
        initial = torch.randn(sl, generator=gen, dtype=torch.float64)
        y = tm(x, m, dim, initial)
        assert y.stride() == x.stride()  # written back into an output laid out like x
        assert_close(y, reference64(x, m, dim, initial), 1e-12)
        grads = _kernel_grads(x, m, dim, initial, gen)
        for got, want in zip(grads, _reference_grads(x, m, dim, initial, grads[-1])):
            assert_close(got, want, 1e-11)


# --------------------------------------------------------------------------- special cases


@pytest.mark.parametrize("dtype", DTYPES)
def test_single_frame(dtype):
    gen = torch.Generator().manual_seed(4)
    x = make_tensor((1, 4, 3), dtype, "contiguous", gen)
    assert torch.equal(tm(x, 0.7, 0), x)
    initial = make_tensor((4, 3), dtype, "contiguous", gen)
    assert_close(tm(x, 0.7, 0, initial), reference64(x, 0.7, 0, initial), TOL[dtype])


@pytest.mark.parametrize("shape,dim", [((0, 3), 0), ((3, 0), 0), ((4, 0, 2), 1), ((0,), 0)])
def test_empty(shape, dim):
    x = torch.randn(shape, requires_grad=True)
    m = torch.rand(slice_shape_of(shape, dim), requires_grad=True)
    initial = torch.randn(slice_shape_of(shape, dim), requires_grad=True)
    y = tm(x, m, dim, initial)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(m.grad, torch.zeros_like(m))
    assert torch.equal(initial.grad, torch.zeros_like(initial))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m_kind", ["float", "scalar", "channel"])
def test_momentum_zero_is_identity_and_one_repeats_frame_zero(dtype, m_kind):
    gen = torch.Generator().manual_seed(5)
    x = make_tensor((6, 2, 5), dtype, "sliced", gen)
    sl = [2, 5]
    zero = make_momentum(m_kind, sl, dtype, gen, value=0.0) if m_kind != "channel" else torch.zeros(5)
    one = make_momentum(m_kind, sl, dtype, gen, value=1.0) if m_kind != "channel" else torch.ones(5)
    if m_kind == "channel":
        zero, one = zero.to(acc_dtype(dtype)), one.to(acc_dtype(dtype))
    assert torch.equal(tm(x, zero, 0), x)
    assert torch.equal(tm(x, one, 0), x[:1].expand_as(x))
    initial = make_tensor(sl, dtype, "contiguous", gen)
    assert torch.equal(tm(x, one, 0, initial), initial.expand_as(x))
    assert torch.equal(tm(x, zero, 0, initial), x)


@pytest.mark.parametrize("shape,dim", [((5000, 2), 0), ((2, 5000), 1), ((3, 4100, 2), 1), ((16, 40), 0)])
@pytest.mark.parametrize("with_initial", [False, True])
def test_momentum_one_repeats_a_negative_zero_bit_for_bit(shape, dim, with_initial):
    # Lanes of momentum 1 repeat frame 0 (or initial) bit for bit, -0.0 included, also where long
    # sequences are composed from chunks (their runs start from -0.0, the exact additive identity;
    # +0.0 turned -0.0 into +0.0).
    gen = torch.Generator().manual_seed(23)
    x = torch.randn(shape, generator=gen)
    x.select(dim, 0).fill_(-0.0)
    slice_shape = [s for d, s in enumerate(shape) if d != dim]
    initial = torch.full(slice_shape, -0.0) if with_initial else None
    m = torch.rand(slice_shape, generator=gen)
    m.view(-1)[::2] = 1.0
    for momentum in (1.0, m):
        y = tm(x, momentum, dim, initial)
        ones = (torch.as_tensor(momentum) == 1).expand(slice_shape).unsqueeze(dim).expand(shape)
        assert ones.any() and torch.signbit(y[ones]).all() and (y[ones] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape,dim", [((5, 40), 0), ((40, 5), 1), ((40, 21), 1), ((3, 40, 2), 1)])
def test_endpoint_lanes_ignore_non_finite_gradients_of_what_they_ignore(dtype, shape, dim):
    """A lane of momentum 0 ignores `initial` and a lane of momentum 1 ignores x after frame 0: their
    gradients there are exactly 0 even where grad_y is infinite or NaN (not 0 * inf = NaN), as in the
    reference. Lanes contiguous, frames contiguous (tiles) and strided."""
    gen = torch.Generator().manual_seed(17)
    x = make_tensor(shape, dtype, "contiguous", gen).requires_grad_()
    slice_shape = list(x.select(dim, 0).shape)
    initial = make_tensor(slice_shape, dtype, "contiguous", gen).requires_grad_()
    momentum = torch.rand(slice_shape, generator=gen, dtype=torch.float64).to(acc_dtype(dtype))
    flat = momentum.view(-1)
    flat[0::3], flat[1::3] = 0.0, 1.0
    grad_y = make_tensor(shape, dtype, "contiguous", gen)
    grad_y.view(-1)[::7] = float("inf")
    grad_y.view(-1)[3::11] = float("-inf")
    grad_y.view(-1)[5::13] = float("nan")
    for m in (momentum, 0.0):
        y = tm(x, m, dim, initial)
        got = torch.autograd.grad(y, (x, initial), grad_y)
        x_ref, init_ref = (t.detach().double().requires_grad_() for t in (x, initial))
        m_ref = m.double() if isinstance(m, torch.Tensor) else torch.tensor(m, dtype=torch.float64)
        y_ref = reference.temporal_momentum_loop(x_ref, m_ref, dim, init_ref)
        expected = torch.autograd.grad(y_ref, (x_ref, init_ref), grad_y.double())
        for name, g, e in zip(("x", "initial"), got, expected):
            g = g.double()
            assert torch.equal(g.isnan(), e.isnan()), name  # NaN exactly where the reference has NaN
            exact = e.isinf() | (e == 0)  # infinities and exact zeros are the same in every dtype
            assert torch.equal(g[exact], e[exact]), name
        if m is momentum:
            assert (momentum == 0).any() and torch.equal(got[1][momentum == 0], torch.zeros_like(got[1][momentum == 0]))
        else:
            assert torch.equal(got[1], torch.zeros_like(got[1]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", [((10, 3, 4), 0), ((2, 9, 5), 1), ((4, 3000), 1)])
def test_streaming_equals_one_call(dtype, shape, dim):
    gen = torch.Generator().manual_seed(6)
    x = make_tensor(shape, dtype, "contiguous", gen)
    m = make_momentum("channel", slice_shape_of(shape, dim), dtype, gen)
    whole = tm(x, m, dim)
    frames = x.shape[dim]
    cuts = [0, 1, frames // 3, frames // 2 + 1, frames]
    pieces, state = [], None
    for a, b in itertools.pairwise(cuts):
        piece = tm(x.narrow(dim, a, b - a), m, dim, state)
        state = piece.select(dim, b - a - 1)
        pieces.append(piece)
    streamed = torch.cat(pieces, dim)
    if dtype in (torch.float32, torch.float64):
        assert torch.equal(streamed, whole)  # the same operations in the same order
    else:  # the carried state is rounded to the output dtype
        assert_close(streamed, whole, 2 * TOL[dtype])


def test_inputs_are_not_mutated():
    gen = torch.Generator().manual_seed(7)
    x = make_tensor((5, 3, 4), torch.float32, "permuted", gen).requires_grad_()
    m = torch.rand(4, generator=gen, requires_grad=True)
    initial = torch.randn(3, 4, generator=gen, requires_grad=True)
    before = [t.detach().clone() for t in (x, m, initial)]
    grad_y = torch.randn(5, 3, 4, generator=gen)
    grad_before = grad_y.clone()
    tm(x, m, 0, initial).backward(grad_y)
    for t, b in zip((x, m, initial), before):
        assert torch.equal(t.detach(), b)
    assert torch.equal(grad_y, grad_before)


def test_backward_of_a_slice_allocates_no_more_than_the_slice(monkeypatch):
    # With a float momentum the backward keeps neither x nor y; its stand-in for them must have the
    # strides grad_x gets (dense), not the slice's, which would span the whole parent storage.
    big = torch.randn(64, 20_000, generator=torch.Generator().manual_seed(3))
    x = big[:, :2].requires_grad_()
    allocated = []

    def recording(allocate):
        def allocate_and_record(*args, **kwargs):
            out = allocate(*args, **kwargs)
            if out.device.type != "meta":  # meta tensors hold no memory
                allocated.append(out.untyped_storage().nbytes())
            return out

        return allocate_and_record

    for name in ("empty_strided", "empty_like"):
        monkeypatch.setattr(torch, name, recording(getattr(torch, name)))
    grad_y = torch.randn(2, 64, generator=torch.Generator().manual_seed(4)).t()  # unlike x's strides
    tm(x, 0.9, 0).backward(grad_y)
    assert allocated and max(allocated) <= x.numel() * x.element_size()
    x_ref = x.detach().double().requires_grad_()
    (want,) = torch.autograd.grad(reference.temporal_momentum_loop(x_ref, 0.9, 0), x_ref, grad_y.double())
    assert_close(x.grad, want, TOL[torch.float32])


@pytest.mark.skipif(not _backend.compiled(), reason="needs the compiled kernels")
def test_eager_autograd_equals_the_registered_autograd():
    """The front end's eager autograd and the op's registered autograd: same values, same first- and
    second-order gradients (bit for bit: the same kernels and formulas)."""
    gen = torch.Generator().manual_seed(21)
    x = make_tensor((7, 3, 5), torch.float64, "permuted", gen).requires_grad_()
    m = torch.rand(5, generator=gen, dtype=torch.float64, requires_grad=True)
    initial = torch.randn(3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    grad_y = torch.randn(7, 3, 5, generator=gen, dtype=torch.float64)
    results = []
    for call in (lambda: tm(x, m, 0, initial), lambda: torch.ops.vidmem_ext.temporal_momentum(x, m, 0.0, 0, initial)):
        y = call()
        first = torch.autograd.grad(y, (x, m, initial), grad_y, create_graph=True)
        second = torch.autograd.grad(sum((g * g).sum() for g in first), (x, m, initial))
        results.append((y, *first, *second))
    assert "Eager" in type(tm(x, m, 0, initial).grad_fn).__name__
    for a, b in zip(*results):
        assert torch.equal(a, b)
    with torch.no_grad():  # no gradient needed: straight to the kernel, no graph
        y = tm(x, m, 0, initial)
    assert y.grad_fn is None and not y.requires_grad and torch.equal(y, results[0][0])


@pytest.mark.skipif(not _backend.compiled(), reason="needs the compiled kernels")
@pytest.mark.parametrize("grad_layout", ["like x", "contiguous"])
def test_input_grad_keeps_x_strides(grad_layout):
    """With a float momentum the backward reads neither x nor y; grad_x still gets x's strides (so
    AccumulateGrad keeps it as is), whatever grad_y's layout, and equals the reference's gradient."""
    gen = torch.Generator().manual_seed(23)
    x = torch.randn(4, 6, 5, 3, generator=gen).permute(0, 3, 1, 2).requires_grad_()  # channels-last-like
    grad_y = torch.randn(x.shape, generator=gen)
    grad_y = torch.empty_like(x).copy_(grad_y) if grad_layout == "like x" else grad_y.contiguous()
    (grad_x,) = torch.autograd.grad(tm(x, 0.7, 2), x, grad_y)  # the op's own output (no AccumulateGrad)
    assert grad_x.stride() == x.stride()
    expected = torch.autograd.grad(reference.temporal_momentum_loop(x.double(), 0.7, 2), x, grad_y.double())[0]
    assert_close(grad_x, expected.float(), 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_and_checked_calls_agree(dtype, monkeypatch):
    # A plain call (float momentum, int dim, no initial, no gradient) skips the Python checks; the
    # same call with a numpy momentum and dim, or with x requiring grad, takes the checked path.
    np = pytest.importorskip("numpy")
    gen = torch.Generator().manual_seed(31)
    x = make_tensor((5, 3, 7), dtype, "permuted", gen)
    for dim in (0, 1, -1, -3):
        fast = tm(x, 0.75, dim)
        checked = tm(x, np.float64(0.75), np.int64(dim))
        with_grad = tm(x.detach().requires_grad_(), 0.75, dim).detach()
        expected = reference.temporal_momentum_loop(x.double(), 0.75, dim).to(dtype)
        assert torch.equal(fast, checked) and torch.equal(fast, with_grad)
        assert_close(fast, expected, 1e-5 if dtype == torch.float32 else 1e-2)
    with pytest.raises(IndexError, match="dim 3 is out of range"):
        tm(x, 0.75, 3)
    with pytest.raises(ValueError, match="momentum"):
        tm(x, 1.5, 0)

    def checks_ran(*args, **kwargs):
        raise AssertionError("the full checks ran")

    plain = tm(x, 0.75, -1)
    monkeypatch.setattr(vidmem_ext.momentum, "check_args", checks_ran)
    assert torch.equal(tm(x, 0.75, -1), plain)  # the plain call skipped them
    with pytest.raises(AssertionError, match="the full checks ran"):
        tm(x, np.float64(0.75), -1)


def test_fallback_reference_equals_kernel(monkeypatch):
    gen = torch.Generator().manual_seed(8)
    x = make_tensor((6, 3, 5), torch.float64, "permuted", gen).requires_grad_()
    m = torch.rand(5, generator=gen, dtype=torch.float64, requires_grad=True)
    initial = torch.randn(3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    y_kernel = tm(x, m, 0, initial)
    assert type(y_kernel.grad_fn).__name__ == "_EagerTemporalMomentumBackward"  # the kernel ran (eager autograd)
    g_kernel = torch.autograd.grad(y_kernel.sum(), (x, m, initial))
    plain_kernel = tm(x.detach(), 0.5, 1)
    # Both the checked path (use_kernel) and the plain calls' shortcut (_AVAILABLE) must see it.
    monkeypatch.setattr(_backend, "use_kernel", lambda op, device: False)
    monkeypatch.setattr(_backend, "_AVAILABLE", dict.fromkeys(_backend._AVAILABLE, False))
    plain_fallback = tm(x.detach(), 0.5, 1)
    assert_close(plain_kernel, plain_fallback, 1e-12)
    y_fallback = tm(x, m, 0, initial)
    assert "TemporalMomentum" not in type(y_fallback.grad_fn).__name__  # the reference ran
    g_fallback = torch.autograd.grad(y_fallback.sum(), (x, m, initial))
    assert_close(y_kernel, y_fallback, 1e-12)
    for a, b in zip(g_kernel, g_fallback):
        assert_close(a, b, 1e-12)


# --------------------------------------------------------------------------- gradients


def _kernel_grads(x, m, dim, initial, gen):
    x = x.detach().clone().requires_grad_()
    m = m.detach().clone().requires_grad_() if isinstance(m, torch.Tensor) else m
    initial = None if initial is None else initial.detach().clone().requires_grad_()
    y = tm(x, m, dim, initial)
    # drawn on the CPU (one generator for every device), then moved to y's device
    grad_y = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(device=y.device, dtype=y.dtype)
    inputs = [x] + ([m] if isinstance(m, torch.Tensor) else []) + ([initial] if initial is not None else [])
    return [*torch.autograd.grad(y, inputs, grad_y), grad_y]


def _reference_grads(x, m, dim, initial, grad_y):
    x = x.detach().double().requires_grad_()
    m = m.detach().double().requires_grad_() if isinstance(m, torch.Tensor) else m
    initial = None if initial is None else initial.detach().double().requires_grad_()
    y = reference.temporal_momentum_loop(x, m, dim, initial)
    inputs = [x] + ([m] if isinstance(m, torch.Tensor) else []) + ([initial] if initial is not None else [])
    return [*torch.autograd.grad(y, inputs, grad_y.double(), allow_unused=True), grad_y]


@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    dim_seed=st.integers(0, 10),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(["contiguous", "permuted", "sliced"]),
    m_kind=st.sampled_from(["float", "scalar", "channel", "full"]),
    with_initial=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_gradients_match_reference(shape, dim_seed, dtype, layout, m_kind, with_initial, seed):
    gen = torch.Generator().manual_seed(seed)
    dim = dim_seed % len(shape)
    x = make_tensor(shape, dtype, layout, gen)
    sl = slice_shape_of(shape, dim)
    m = make_momentum(m_kind, sl, dtype, gen)
    initial = make_tensor(sl, dtype, "contiguous", gen) if with_initial else None
    got = _kernel_grads(x, m, dim, initial, gen)
    want = _reference_grads(x, m, dim, initial, got[-1])
    names = ["x"] + (["momentum"] if isinstance(m, torch.Tensor) else []) + (["initial"] if with_initial else [])
    for name, g, w in zip(names, got, want):
        w = torch.zeros_like(g, dtype=torch.float64) if w is None else w  # frame 0 alone does not depend on m
        tol = TOL[dtype] * (10 if name == "momentum" else 2)
        assert g.shape == w.shape, name
        assert_close(g, w, tol), name


@pytest.mark.parametrize(
    "m_kind,with_initial,layout",
    [
        ("float", False, "contiguous"),
        ("scalar", True, "permuted"),
        ("channel", True, "sliced"),
        ("full", False, "sliced"),
    ],
)
def test_gradcheck(m_kind, with_initial, layout):
    gen = torch.Generator().manual_seed(9)
    dim, sl = 1, [5, 4]
    x = make_tensor((5, 3, 4), torch.float64, layout, gen).requires_grad_()
    m = make_momentum(m_kind, sl, torch.float64, gen)
    inputs = [x]
    if isinstance(m, torch.Tensor):
        m = (0.1 + 0.8 * m).requires_grad_()  # keep the finite differences inside [0, 1]
        inputs.append(m)
    initial = torch.randn(sl, generator=gen, dtype=torch.float64, requires_grad=True) if with_initial else None
    if initial is not None:
        inputs.append(initial)

    def fn(*args):
        mm = args[1] if isinstance(m, torch.Tensor) else m
        ii = args[-1] if initial is not None else None
        return tm(args[0], mm, dim, ii)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8)


def test_gradients_are_deterministic():
    gen = torch.Generator().manual_seed(10)
    cases = [((16, 8, 300), 0), ((3, 6000), 1)]  # lane blocks; chunked frames
    for shape, dim in cases:
        x = make_tensor(shape, torch.float32, "contiguous", gen)
        sl = slice_shape_of(shape, dim)
        m = torch.rand([sl[-1]], generator=gen)
        initial = torch.randn(sl, generator=gen)
        first = _kernel_grads(x, m, dim, initial, torch.Generator().manual_seed(11))
        second = _kernel_grads(x, m, dim, initial, torch.Generator().manual_seed(11))
        for a, b in zip(first, second):
            assert torch.equal(a, b)


# --------------------------------------------------------------------------- torch.library integration


def _opcheck_samples(device="cpu"):
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(5, 3, 4, generator=gen, dtype=torch.float64).to(device)
    xp = torch.randn(4, 5, 3, generator=gen).to(device).permute(1, 2, 0)
    xh = torch.randn(6, 4, generator=gen).to(torch.bfloat16).to(device)
    m_channel = torch.rand(4, generator=gen, dtype=torch.float64).to(device)
    m_scalar = torch.rand((), generator=gen).to(device)
    init = torch.randn(3, 4, generator=gen, dtype=torch.float64).to(device)
    init_p = torch.randn(5, 4, generator=gen).to(device)
    return [
        (x, None, 0.9, 0, None),
        (x, m_channel, 0.0, 0, init),
        (xp, m_scalar, 0.0, 1, init_p),
        (xp, None, 0.3, -1, None),
        (xh, None, 0.98, 0, None),
    ]


def _opcheck_ops(device):
    for x, m, mv, dim, init in _opcheck_samples(device):
        torch.library.opcheck(torch.ops.vidmem_ext.temporal_momentum.default, (x, m, mv, dim, init))
        y = torch.ops.vidmem_ext.temporal_momentum(x, m, mv, dim, init)
        grad_y = torch.randn_like(y)
        for want_m in (False, True):
            torch.library.opcheck(
                torch.ops.vidmem_ext.temporal_momentum_backward.default, (grad_y, x, y, m, mv, dim, init, want_m)
            )
        # Autograd registration, with every differentiable input requiring grad.
        if x.dtype == torch.float64:
            xg = x.detach().requires_grad_()
            mg = m.detach().requires_grad_() if m is not None else None
            ig = init.detach().requires_grad_() if init is not None else None
            torch.library.opcheck(torch.ops.vidmem_ext.temporal_momentum.default, (xg, mg, mv, dim, ig))


def test_opcheck_cpu():
    _opcheck_ops("cpu")


def test_torch_compile_fullgraph_no_graph_break():
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(13)

    def step(x, m, initial):
        return (tm(x * 2.0, m, dim=1, initial=initial) + tm(x, 0.5, dim=-1)).square().mean()

    x = torch.randn(2, 6, 4, generator=gen, requires_grad=True)
    m = torch.rand(4, generator=gen, requires_grad=True)
    initial = torch.randn(2, 4, generator=gen, requires_grad=True)
    explanation = torch._dynamo.explain(step)(x, m, initial)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(x, m, initial)
    grads = torch.autograd.grad(loss, (x, m, initial))
    loss_eager = step(x, m, initial)
    grads_eager = torch.autograd.grad(loss_eager, (x, m, initial))
    assert_close(loss, loss_eager, 1e-6)
    for a, b in zip(grads, grads_eager):
        assert_close(a, b, 1e-6)


def test_torch_compile_fullgraph_plain_call():
    # A call that needs no gradient is also traced as the registered op (not the eager shortcut).
    torch._dynamo.reset()
    x = torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(14))

    def plain(t):
        return tm(t, 0.5, 1)

    explanation = torch._dynamo.explain(plain)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    with torch.no_grad():
        assert torch.equal(torch.compile(plain, fullgraph=True, backend="aot_eager")(x), plain(x))
    # a float momentum that changes between calls reaches the checks as a symbolic float
    varying = torch.compile(lambda t, m: tm(t, m, 1), fullgraph=True, backend="aot_eager")
    for m in (0.5, 0.25, 0.9, 0.0, 1.0):
        assert torch.equal(varying(x, m), tm(x, m, 1))


def test_torch_compile_of_torch_func_and_forward_ad_keeps_the_tangents():
    """Compiled torch.func.jvp / grad and forward-mode AD run the reference as eager does (the registered
    op has no forward-mode rule: traced, it would drop the tangent and give zeros), and compiling the op
    raises no warning (a functools.cache'd helper did)."""
    import warnings

    import torch.autograd.forward_ad as fwad

    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(15)
    x, tangent = (t.clone() for t in torch.randn(2, 5, 3, dtype=torch.float64, generator=gen).unbind(0))
    m = torch.rand(3, dtype=torch.float64, generator=gen)

    def jvp(t):
        return torch.func.jvp(lambda u: tm(u, m, 0), (t,), (tangent,))[1]

    def grad(t):
        return torch.func.grad(lambda u: tm(u, m, 0).pow(2).sum())(t)

    def dual(t):
        with fwad.dual_level():
            return fwad.unpack_dual(tm(fwad.make_dual(t, tangent), m, 0)).tangent

    expected_jvp = reference.temporal_momentum_loop(tangent, m, 0).detach()  # the op is linear in x
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for fn in (jvp, dual):
            assert_close(fn(x), expected_jvp, 1e-12)
            assert_close(torch.compile(fn, fullgraph=True, backend="eager")(x), expected_jvp, 1e-12)
        assert expected_jvp.abs().max() > 0
        assert_close(torch.compile(grad, backend="eager")(x), grad(x), 1e-12)
        assert_close(torch.compile(lambda t: tm(t, m, 0) * 2, fullgraph=True)(x), 2 * tm(x, m, 0), 1e-12)
    ours = [str(w.message) for w in caught if "vidmem_ext" in str(w.message) or "lru_cache" in str(w.message)]
    assert not ours, ours


# --------------------------------------------------------------------------- bad input


def test_bad_input_errors_name_the_argument():
    x = torch.randn(4, 3, 2)
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        tm(torch.ones(4, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        tm(torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        tm([1.0, 2.0])
    for bad in (-0.1, 1.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="momentum must be in"):
            tm(x, bad)
    with pytest.raises(ValueError, match="momentum of shape .* does not broadcast"):
        tm(x, torch.rand(3), dim=0)  # slice is (3, 2): a (3,) tensor does not broadcast
    with pytest.raises(ValueError, match="momentum is on meta"):
        tm(x, torch.rand(2, device="meta"))
    with pytest.raises(ValueError, match="initial must have the frame-slice shape"):
        tm(x, 0.5, 0, torch.randn(3))
    with pytest.raises(ValueError, match="initial must have x's dtype"):
        tm(x, 0.5, 0, torch.randn(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="initial is on meta"):
        tm(x, 0.5, 0, torch.randn(3, 2, device="meta"))
    with pytest.raises(IndexError, match="dim 3 is out of range"):
        tm(x, 0.5, 3)
    with pytest.raises(IndexError, match="dim -4 is out of range"):
        tm(x, 0.5, -4)


def test_direct_op_calls_are_checked_too():
    x = torch.randn(4, 3)
    op = torch.ops.vidmem_ext.temporal_momentum
    with pytest.raises(ValueError, match="momentum must be in"):
        op(x, None, 1.5, 0, None)
    with pytest.raises(ValueError, match="momentum of shape"):
        op(x, torch.rand(2), 0.0, 0, None)
    with pytest.raises(ValueError, match="initial must have the frame-slice shape"):
        op(x, None, 0.5, 0, torch.randn(4))
    with pytest.raises(IndexError, match="out of range"):
        op(x, None, 0.5, 2, None)
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        op(torch.ones(4, 3, dtype=torch.int32), None, 0.5, 0, None)
    with pytest.raises(ValueError, match="grad_y must have x's shape"):
        torch.ops.vidmem_ext.temporal_momentum_backward(torch.randn(3, 3), x, x, None, 0.5, 0, None, False)
    # the fake kernels (meta tensors) and the CPU kernels raise the same errors
    backward = torch.ops.vidmem_ext.temporal_momentum_backward
    for device in ("cpu", "meta"):
        xd = x.to(device)
        with pytest.raises(TypeError, match="momentum (tensor )?must be floating point"):
            op(xd, torch.ones(3, dtype=torch.int64, device=device), 0.0, 0, None)
        with pytest.raises(ValueError, match="grad_y must have x's dtype"):
            backward(xd.double(), xd, xd, None, 0.5, 0, None, False)
        with pytest.raises(ValueError, match="y must have x's dtype"):
            backward(xd, xd, xd.double(), None, 0.5, 0, None, False)


def test_public_name():
    assert vidmem_ext.temporal_momentum is tm


# --------------------------------------------------------------------------- CUDA


CUDA_CASES = [
    # (shape, dim, layout): regime (a) many lanes; regime (b) contiguous frames; few lanes, strided frames
    ((16, 2, 64, 32), 0, "contiguous"),
    ((2, 16, 64, 32), 1, "contiguous"),
    ((8, 4000), 1, "contiguous"),
    ((3000, 8), 0, "contiguous"),
    ((6, 5, 33), 0, "sliced"),
    ((7, 6, 5), 2, "permuted"),
    ((1, 40, 8), 0, "contiguous"),
]


@pytest.mark.cuda
@pytest.mark.parametrize("shape,dim,layout", CUDA_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_references(shape, dim, layout, dtype):
    gen = torch.Generator().manual_seed(14)
    x = make_tensor(shape, dtype, layout, gen, "cuda")
    sl = slice_shape_of(shape, dim)
    for m_kind, with_initial in [("float", False), ("channel", True), ("scalar", True)]:
        m = make_momentum(m_kind, sl, dtype, gen, "cuda")
        initial = make_tensor(sl, dtype, "contiguous", gen, "cuda") if with_initial else None
        y = tm(x, m, dim, initial)
        assert y.is_cuda and y.dtype == dtype
        m_cpu = m.cpu() if isinstance(m, torch.Tensor) else m
        initial_cpu = None if initial is None else initial.cpu()
        assert_close(y.cpu(), reference64(x.cpu(), m_cpu, dim, initial_cpu), TOL[dtype])
        got = _kernel_grads(x, m, dim, initial, torch.Generator().manual_seed(15))
        want = _reference_grads(x.cpu(), m_cpu, dim, initial_cpu, got[-1].cpu())
        for i, (g, w) in enumerate(zip(got[:-1], want[:-1])):
            tol = TOL[dtype] * (10 if (i == 1 and isinstance(m, torch.Tensor)) else 2)
            assert_close(g.cpu(), torch.zeros_like(g.cpu(), dtype=torch.float64) if w is None else w, tol)
        again = _kernel_grads(x, m, dim, initial, torch.Generator().manual_seed(15))
        for a, b in zip(got, again):
            assert torch.equal(a, b)  # deterministic


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_gives_the_cpu_bits_on_few_frames(dtype):
    # Few frames and lanes take the CUDA lanes kernel, which steps frame by frame as the CPU does: with
    # nvcc's contraction off (-fmad=false) the bits are the CPU's, and the NaNs are where the CPU's are.
    # Their encodings may differ: NVIDIA's fp32 arithmetic gives a canonical NaN, where x86 passes the
    # NaN operand's sign and payload on (bf16 writes 0x7FC0 on both).
    gen = torch.Generator().manual_seed(21)
    x = torch.randn(6, 4, 16, generator=gen, dtype=torch.float64).to(dtype)
    x[2, 0, :4] = float("nan")
    x[2, 1, :4] = -float("nan")
    m = torch.rand(4, 16, generator=gen).to(acc_dtype(dtype))
    m[3, :2] = 0.0
    for momentum in (m, 0.7):
        y_cpu = tm(x, momentum, 0)
        y_cuda = tm(x.cuda(), momentum.cuda() if isinstance(momentum, torch.Tensor) else momentum, 0).cpu()
        nan = y_cpu.isnan()
        assert nan.any() and torch.equal(y_cuda.isnan(), nan)
        assert torch.equal(_bits(y_cuda)[~nan], _bits(y_cpu)[~nan])
        if dtype == torch.bfloat16:
            assert torch.equal(_bits(y_cuda), _bits(y_cpu))


@pytest.mark.cuda
def test_cuda_opcheck_and_streaming():
    _opcheck_ops("cuda")
    x = torch.randn(4, 9000, device="cuda")
    whole = tm(x, 0.99, 1)
    first = tm(x[:, :4000], 0.99, 1)
    rest = tm(x[:, 4000:], 0.99, 1, first[:, -1])
    assert_close(torch.cat([first, rest], 1).cpu(), whole.cpu(), 1e-5)


@pytest.mark.cuda
def test_cuda_honours_the_device_and_stream():
    x = torch.randn(64, 128, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        y = tm(x, 0.9, 0)
    stream.synchronize()
    assert_close(y.cpu(), reference64(x.cpu(), 0.9, 0, None), 1e-5)
    if torch.cuda.device_count() > 1:
        x1 = x.to("cuda:1")
        assert tm(x1, 0.9, 0).device == x1.device


@pytest.mark.cuda
@pytest.mark.slow
def test_cuda_more_than_2_pow_31_elements():
    free, _ = torch.cuda.mem_get_info()
    frames, lanes = 3, 2**29 + 64  # 1.6e9 elements x 2 bytes, twice (x and y)
    if free < 3 * frames * lanes * 2 + 2**30:
        pytest.skip("not enough GPU memory")
    x = torch.ones(frames, lanes, dtype=torch.bfloat16, device="cuda")
    x[1].fill_(3.0)
    x[2, -64:].fill_(-1.0)
    y = tm(x, 0.5, 0)
    # y_1 = (1 + 3) / 2 = 2; y_2 = (2 + 1) / 2 = 1.5, and (2 - 1) / 2 = 0.5 in the last 64 lanes
    assert y[1, -1].item() == 2.0 and y[1, 0].item() == 2.0
    assert y[2, -1].item() == 0.5 and y[2, 0].item() == 1.5
    xt = x.t()  # frames contiguous, 2^29 lanes
    yt = tm(xt, 0.5, 1)
    assert yt[-1, 1].item() == 2.0 and yt[-1, 2].item() == 0.5
