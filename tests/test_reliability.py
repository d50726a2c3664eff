"""Issue 12: no silent wrong answer, no killed process, no unbounded call (one test or more per item).

The distributed items (4, and item 2 across ranks) are in test_distributed.py; the table of bad
calls and the input-preservation properties are in test_bad_inputs.py.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import vidmem_ext
from vidmem_ext import _backend, reference
from vidmem_ext.noise import MAX_LINEAR_SEARCH_TIMES, MAX_RANDOM_SEARCH_TIMES

tm = vidmem_ext.temporal_momentum
compiled = pytest.mark.skipif(not _backend.compiled(), reason="needs the compiled kernels")


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    yield


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN where the other has NaN, and the same sign of zero."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    nan_a, nan_b = a.isnan(), b.isnan()
    a0, b0 = a.masked_fill(nan_a, 0), b.masked_fill(nan_b, 0)
    return torch.equal(nan_a, nan_b) and torch.equal(a0, b0) and torch.equal(a0.signbit(), b0.signbit())


# --------------------------------------------------------------------------- item 1: second order


def test_second_order_gradient_of_the_issue_example():
    x = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64, requires_grad=True)
    gx = torch.autograd.grad(tm(x, 0.6).pow(2).sum(), x, create_graph=True)[0]
    got = torch.autograd.grad(gx.sum(), x)[0]
    xr = x.detach().clone().requires_grad_()
    gr = torch.autograd.grad(reference.temporal_momentum_loop(xr, 0.6).pow(2).sum(), xr, create_graph=True)[0]
    want = torch.autograd.grad(gr.sum(), xr)[0]
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got, torch.tensor([4.352, 1.568, 1.28, 0.8], dtype=torch.float64))


@pytest.mark.parametrize("momentum_kind", ["float", "0-d", "per-channel", "with edges 0 and 1"])
@pytest.mark.parametrize("with_initial", [False, True])
@pytest.mark.parametrize("dim", [0, 1])
def test_gradgradcheck(momentum_kind, with_initial, dim):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 5, 3, dtype=torch.float64, generator=gen).requires_grad_()
    slice_shape = (5, 3) if dim == 0 else (4, 3)
    initial = torch.randn(slice_shape, dtype=torch.float64, generator=gen).requires_grad_() if with_initial else None
    if momentum_kind == "float":
        momentum = 0.7
    elif momentum_kind == "0-d":
        momentum = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    elif momentum_kind == "per-channel":
        momentum = (torch.rand(3, dtype=torch.float64, generator=gen) * 0.9).requires_grad_()
    else:  # gradcheck perturbs m around 0 and 1: the formulas are smooth there, only the values are exact
        momentum = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64, requires_grad=True)
    tensors = [x] + [t for t in (momentum, initial) if isinstance(t, torch.Tensor)]

    def call(*args):
        it = iter(args[1:])
        m = next(it) if isinstance(momentum, torch.Tensor) else momentum
        init = next(it) if initial is not None else None
        return tm(args[0], m, dim, init)

    assert gradcheck(call, tensors)
    assert gradgradcheck(call, tensors)


@compiled
def test_second_order_matches_the_reference_in_fp32_and_per_lane():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(6, 2, 3, generator=gen)
    m = torch.rand(2, 3, generator=gen)
    init = torch.randn(2, 3, generator=gen)
    results = []
    for fn in (tm, reference.temporal_momentum_loop):
        xs, ms, inits = (t.clone().requires_grad_() for t in (x, m, init))
        y = fn(xs, ms, 0, inits)
        grads = torch.autograd.grad(
            (y.sin() * torch.arange(6.0).view(6, 1, 1)).sum(), (xs, ms, inits), create_graph=True
        )
        penalty = sum(g.pow(2).sum() for g in grads)
        results.append(torch.autograd.grad(penalty, (xs, ms, inits)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-5)


@compiled
def test_backward_op_keeps_opcheck_and_compile():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(5, 4, dtype=torch.float64, generator=gen)
    y = tm(x, 0.8)
    m = torch.full((4,), 0.8, dtype=torch.float64)
    gy = torch.randn(5, 4, dtype=torch.float64, generator=gen)
    args = (gy.requires_grad_(), x.requires_grad_(), y.requires_grad_(), m.requires_grad_(), 0.0, 0, None, True)
    torch.library.opcheck(torch.ops.vidmem_ext.temporal_momentum_backward.default, args)

    def penalty(x, m):
        (gx,) = torch.autograd.grad(tm(x, m).pow(2).sum(), x, create_graph=True)
        return gx.pow(2).sum()

    xs = torch.randn(5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    ms = torch.full((4,), 0.7, dtype=torch.float64, requires_grad=True)
    eager = torch.autograd.grad(penalty(xs, ms), (xs, ms))
    compiled_fn = torch.compile(lambda x, m: tm(x, m).pow(2).sum(), fullgraph=True)
    torch.testing.assert_close(
        torch.autograd.grad(compiled_fn(xs, ms), xs)[0], torch.autograd.grad(tm(xs, ms).pow(2).sum(), xs)[0]
    )
    assert all(torch.isfinite(g).all() for g in eager)


# --------------------------------------------------------------------------- item 2: momentum 0 and 1 exact


def _poisoned(frames=6, dtype=torch.float32):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(frames, 2, 3, generator=gen).to(dtype)
    x[2, 0, 0] = float("nan")
    x[3, 1, :] = float("inf")
    x[frames - 1, 0, 1] = -float("inf")
    return x


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("path", ["op", "reference"])
def test_momentum_zero_and_one_are_exact(dtype, path):
    fn = tm if path == "op" else reference.temporal_momentum_loop
    x = _poisoned(dtype=dtype)
    init = torch.randn(2, 3).to(dtype)
    for initial in (None, init):
        assert _same_bits(fn(x, 0.0, 0, initial), x)
        first = x[0] if initial is None else initial
        assert _same_bits(fn(x, 1.0, 0, initial), first.expand_as(x).contiguous())
        # The tensor spelling, per lane: 0, 1 and 0.5 side by side (the last dim).
        m = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        y = fn(x, m, 0, initial)
        assert _same_bits(y[..., 0], x[..., 0])
        assert _same_bits(y[..., 1], first[..., 1].expand_as(x[..., 1]).contiguous())


def test_momentum_zero_and_one_are_exact_on_the_chunked_cpu_path():
    x = torch.randn(5000, 3)  # few lanes, many frames: the CPU kernel splits the frames into chunks
    x[1500, 0] = float("nan")
    x[3000, 1] = float("inf")
    y = tm(x, torch.tensor([0.0, 1.0, 0.9]))
    assert _same_bits(y[:, 0], x[:, 0])
    assert _same_bits(y[:, 1], x[0, 1].expand(5000).contiguous())
    # 0 < m < 1: the NaN propagates forward from its frame (IEEE arithmetic), never backward.
    z = tm(x, 0.5)
    assert not z[:1500].isnan().any() and z[1500:, 0].isnan().all()
    # An inf stays non-finite; it may turn into NaN where a chunk's carry multiplies it by m^1024 = 0 (underflow).
    assert z[:3000, 1].isfinite().all() and not z[3000:, 1].isfinite().any()


def test_momentum_edges_in_backward_are_the_gradients_of_a_copy():
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(5, 3, dtype=torch.float64)
    upstream[3] = float("inf")
    (gx,) = torch.autograd.grad(tm(x, 1.0), x, upstream)
    assert torch.equal(gx[1:], torch.zeros(4, 3, dtype=torch.float64))  # y_t = x_0: nothing reaches x_t, t > 0
    upstream[3] = float("nan")
    (gx,) = torch.autograd.grad(tm(x, 0.0), x, upstream)
    assert _same_bits(gx, upstream)  # identity


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_agrees_with_the_tensor_spelling_at_0_and_1(dtype):
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2 * 4, 2, 5, 8, generator=gen).to(dtype) for _ in range(3))
    k[5, 0, 1] = float("inf")  # a later frame of video 1
    for m in (0.0, 1.0):
        as_float = vidmem_ext.temporal_momentum_attention(q, k, v, m, num_frames=4)
        as_tensor = vidmem_ext.temporal_momentum_attention(q, k, v, torch.tensor(m, dtype=dtype), num_frames=4)
        assert _same_bits(as_float, as_tensor)


# --------------------------------------------------------------------------- item 3: fp32 statistics


@pytest.mark.parametrize("level", [30.0, 60.0, 84.0, 86.0, 88.5, 89.0, 120.0])
@pytest.mark.parametrize("path", ["op", "reference"])
def test_fp32_step_chooses_what_fp64_chooses_at_large_prev(level, path):
    step = vidmem_ext.dependency_noise_step if path == "op" else reference.dependency_noise_step
    gen = torch.Generator().manual_seed(8)
    prev = level + 0.25 * torch.randn(3, 64, generator=gen, dtype=torch.float64)
    prev[1] = torch.randn(64, generator=gen, dtype=torch.float64)  # an ordinary item in the same batch
    candidates = torch.randn(6, 3, 64, generator=gen, dtype=torch.float64)
    frame64, alpha64, index64 = step(prev, candidates, 0.1)
    frame32, alpha32, index32 = step(prev.float(), candidates.float(), 0.1)
    assert torch.equal(index32, index64)
    torch.testing.assert_close(alpha32.double(), alpha64, atol=1e-6, rtol=0)
    assert frame32.isfinite().all()
    torch.testing.assert_close(frame32.double(), frame64, atol=1e-4, rtol=1e-5)


# --------------------------------------------------------------------------- item 5: bounded search counts


@pytest.mark.parametrize("value", [MAX_RANDOM_SEARCH_TIMES + 1, 10**12, 2**63 - 1, 2**70])
def test_random_search_times_is_bounded(value, monkeypatch):
    def no_work(*args, **kwargs):  # the check must come before any kernel or reference is chosen
        raise AssertionError("dependency_noise went on to choose an implementation")

    monkeypatch.setattr(vidmem_ext.noise._backend, "use_kernel", no_work)
    with pytest.raises(ValueError, match="random_search_times"):
        vidmem_ext.dependency_noise((1, 2, 4), random_search_times=value, seed=0)


@pytest.mark.parametrize("value", [MAX_LINEAR_SEARCH_TIMES + 1, 10**12, 2**63 - 1, 2**70])
def test_linear_search_times_is_bounded(value):
    with pytest.raises(ValueError, match="linear_search_times"):
        vidmem_ext.dependency_noise((1, 2, 4), linear_search_times=value, seed=0)
    with pytest.raises(ValueError, match="linear_search_times"):
        vidmem_ext.dependency_noise_step(torch.zeros(1, 4), torch.zeros(2, 1, 4), 0.1, value)


@compiled
def test_bounds_hold_in_the_cpp_checks_too():
    prev, candidates = torch.zeros(1, 4), torch.zeros(2, 1, 4)
    with pytest.raises(ValueError, match="linear_search_times"):
        torch.ops.vidmem_ext.dependency_noise_step(prev, candidates, 0.1, MAX_LINEAR_SEARCH_TIMES + 1)


def test_the_largest_allowed_counts_finish():
    # About 0.1 s each on 2 idle cores; what is checked here is that they return valid noise.
    for counts in ({"random_search_times": MAX_RANDOM_SEARCH_TIMES}, {"linear_search_times": MAX_LINEAR_SEARCH_TIMES}):
        x, alphas = vidmem_ext.dependency_noise((1, 2, 4), seed=0, return_alphas=True, **counts)
        assert x.shape == (1, 2, 4) and torch.isfinite(x).all()
        assert alphas[0, 0] == 0 and 0 <= alphas[0, 1] <= 1


# --------------------------------------------------------------------------- item 6: numpy scalars


def test_numpy_scalars_are_accepted_alike():
    x = torch.randn(4, 3)
    torch.testing.assert_close(tm(x, np.float32(0.5), np.int64(1)), tm(x, 0.5, 1))
    torch.testing.assert_close(tm(x, np.float64(0.25)), tm(x, 0.25))
    a = vidmem_ext.dependency_noise((np.int64(2), 3, 4), np.float32(0.5), np.int32(4), np.int16(3), seed=np.int64(1))
    b = vidmem_ext.dependency_noise((2, 3, 4), 0.5, 4, 3, seed=1)
    assert torch.equal(a, b)
    q = torch.randn(4, 1, 3, 2)
    got = vidmem_ext.temporal_momentum_attention(q, q, q, np.float32(0.5), num_frames=np.int64(2))
    torch.testing.assert_close(got, vidmem_ext.temporal_momentum_attention(q, q, q, 0.5, num_frames=2))
    assert vidmem_ext.plan_memory_terms(np.int64(4), 8, 8, np.int32(100)) == vidmem_ext.plan_memory_terms(4, 8, 8, 100)
    for bad in (np.bool_(True), True):
        with pytest.raises(TypeError, match="dim"):
            tm(x, 0.5, bad)
        with pytest.raises(TypeError, match="momentum"):
            tm(x, bad)


# --------------------------------------------------------------------------- item 7: torch.func


def test_torch_func_grad_jacrev_vmap():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(5, 3, dtype=torch.float64, generator=gen)
    m = torch.tensor([0.2, 0.6, 0.9], dtype=torch.float64)

    def loss(x, m):
        return (tm(x, m) ** 2).sum()

    xs, ms = x.clone().requires_grad_(), m.clone().requires_grad_()
    want_x, want_m = torch.autograd.grad(loss(xs, ms), (xs, ms))
    got_x, got_m = torch.func.grad(loss, argnums=(0, 1))(x, m)
    torch.testing.assert_close(got_x, want_x)
    torch.testing.assert_close(got_m, want_m)

    jac = torch.func.jacrev(lambda x: tm(x, 0.7))(x)
    assert jac.shape == (5, 3, 5, 3)
    eye = torch.eye(15, dtype=torch.float64).reshape(15, 5, 3)
    rows = torch.stack([torch.autograd.grad(tm(xs, 0.7), xs, e)[0] for e in eye])
    torch.testing.assert_close(jac.reshape(15, 5, 3), rows)

    batch = torch.randn(4, 5, 3, dtype=torch.float64, generator=gen)
    per_item = torch.func.vmap(torch.func.grad(lambda x: loss(x, m)))(batch)
    for i in range(4):
        xi = batch[i].clone().requires_grad_()
        torch.testing.assert_close(per_item[i], torch.autograd.grad(loss(xi, m), xi)[0])


@pytest.mark.parametrize("momentum", [1 - 1e-9, 1e-60, 0.3])
def test_transforms_round_a_float_momentum_as_the_kernels_do(momentum):
    # Under torch.func the op runs the reference. It must read a float momentum as the kernels do, rounded
    # to fp32 for fp32 x: 1 - 1e-9 is exactly 1 there (frame 0 repeated, bit for bit, past inf and NaN
    # frames), 1e-60 exactly 0 (x itself).
    x = torch.tensor([[1.0, 4.0, -2.0], [float("inf"), float("nan"), 3.0], [2.0, 5.0, 0.5]])
    eager = tm(x, momentum, 0)
    in_vmap = torch.func.vmap(lambda t: tm(t, momentum, 0), in_dims=1, out_dims=1)(x)
    assert torch.equal(eager.isnan(), in_vmap.isnan())
    assert torch.equal(eager.nan_to_num(), in_vmap.nan_to_num())
    if momentum != 0.3:
        assert torch.equal(eager.nan_to_num(), (x[:1].expand_as(x) if momentum > 0.5 else x).nan_to_num())


def test_reverse_transforms_keep_the_exact_lanes_of_a_captured_momentum():
    # Under torch.func.vjp (the reference runs) a momentum that carries no tangent keeps the endpoints'
    # exact branch: infinite cotangents give what eager autograd gives, no 0 * inf = NaN.
    gen = torch.Generator().manual_seed(12)
    x, initial, cotangent = (torch.randn(s, generator=gen) for s in ((5, 3), (3,), (5, 3)))
    m = torch.tensor([0.0, 1.0, 0.5])
    cotangent[0, 0] = cotangent[1, 1] = float("inf")
    _, vjp = torch.func.vjp(lambda x, i: tm(x, m, 0, i), x, initial)
    got = vjp(cotangent)
    xs, inits = x.clone().requires_grad_(), initial.clone().requires_grad_()
    want = torch.autograd.grad(tm(xs, m, 0, inits), (xs, inits), cotangent)
    for g, w in zip(got, want):
        assert not g.isnan().any() and torch.equal(g, w)


def test_compiled_fallback_takes_a_changing_float_momentum(monkeypatch):
    # Without the kernels the op runs the reference, which reads a float momentum rounded to the
    # accumulation dtype; compiled, a momentum that changes between calls must not need its value.
    monkeypatch.setattr(vidmem_ext._backend, "use_kernel", lambda op, device: False)
    torch._dynamo.reset()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(13))
    compiled = torch.compile(lambda t, m: tm(t, m, 0), fullgraph=True, backend="eager")
    for m in (0.5, 0.25, 0.0, 1.0, 1 - 1e-9):
        assert torch.equal(compiled(x, m), vidmem_ext.reference.temporal_momentum_loop(x, m, 0))
    assert torch.equal(compiled(x, 1 - 1e-9), x[:1].expand_as(x))


def test_forward_and_reverse_mode_agree_at_momentum_0_and_1():
    # Lanes of momentum exactly 0 or 1 take the exact endpoint values, but d/dm there is the formula's
    # (the one-sided limit): forward mode (jacfwd, jvp, forward_ad), where m carries a tangent without
    # requiring grad, must give it too, not the 0 of the endpoint's constant branch.
    import torch.autograd.forward_ad as fwAD

    x = torch.tensor([[1.0, 1.0, 2.0], [3.0, 3.0, -1.0], [7.0, 7.0, 4.0]], dtype=torch.float64)
    m = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)

    def f(m):
        return tm(x, m, 0).sum()

    reverse = torch.func.jacrev(f)(m)
    torch.testing.assert_close(reverse, torch.tensor([-10.0, -6.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(torch.func.jacfwd(f)(m), reverse)
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(f(fwAD.make_dual(m, torch.ones_like(m)))).tangent
    torch.testing.assert_close(tangent, reverse.sum())


@pytest.mark.parametrize("x_requires_grad", [False, True])
def test_forward_mode_ad_carries_tangents(x_requires_grad):
    # torch.autograd.forward_ad: the tangent of the output must be the directional derivative (the
    # kernels implement no jvp: the op runs the reference then), never silently dropped.
    import torch.autograd.forward_ad as fwAD

    gen = torch.Generator().manual_seed(10)
    x, m, initial = (torch.randn(s, dtype=torch.float64, generator=gen) for s in ((6, 3), (3,), (3,)))
    tx, tmom, ti = (torch.randn_like(t) for t in (x, m, initial))
    m = m.sigmoid()

    def f(x, m, initial):
        return tm(x, m, 0, initial)

    _, want = torch.func.jvp(f, (x, m, initial), (tx, tmom, ti))
    _, want_x_only = torch.func.jvp(lambda x: tm(x, 0.6), (x,), (tx,))
    with fwAD.dual_level():
        xd = fwAD.make_dual(x.clone().requires_grad_(x_requires_grad), tx)
        got = fwAD.unpack_dual(f(xd, fwAD.make_dual(m, tmom), fwAD.make_dual(initial, ti))).tangent
        got_x_only = fwAD.unpack_dual(tm(xd, 0.6)).tangent
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_x_only, want_x_only)
    # forward-over-reverse: the tangent of a gradient (a Hessian-vector product)
    g, tg = torch.randn_like(x), torch.randn_like(x)
    with fwAD.dual_level():
        xs = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(tm(xs, 0.7), xs, fwAD.make_dual(g, tg), create_graph=True)
        got = fwAD.unpack_dual(grad).tangent
    with fwAD.dual_level():
        xs = x.clone().requires_grad_()
        ref = vidmem_ext.reference.temporal_momentum_loop(xs, 0.7, 0)
        (grad,) = torch.autograd.grad(ref, xs, fwAD.make_dual(g, tg), create_graph=True)
        want = fwAD.unpack_dual(grad).tangent
    assert got is not None
    torch.testing.assert_close(got, want)


# --------------------------------------------------------------------------- items 8 and 9: meta and empty


@pytest.mark.parametrize("seed", [None, 0])
def test_meta_noise_without_warnings(seed):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, alphas = vidmem_ext.dependency_noise((2, 3, 4), seed=seed, device="meta", return_alphas=True)
        assert out.device.type == "meta" and out.shape == (2, 3, 4) and out.dtype == torch.get_default_dtype()
        assert alphas.device.type == "meta" and alphas.shape == (2, 3)
        half = vidmem_ext.dependency_noise((2, 5, 4), seed=seed, device="meta", dtype=torch.float16, frame_dim=2)
        assert half.dtype == torch.float16 and half.shape == (2, 5, 4)
        y = tm(torch.empty(4, 3, device="meta"), 0.5)
        assert y.device.type == "meta" and y.shape == (4, 3)
        frame, alpha, index = vidmem_ext.dependency_noise_step(
            torch.empty(2, 5, device="meta"), torch.empty(3, 2, 5, device="meta"), 0.1
        )
        assert frame.shape == (2, 5) and alpha.shape == (2,) and index.dtype == torch.int64


def test_empty_shapes_are_checked_before_the_stream_layout():
    out = vidmem_ext.dependency_noise((2**33, 2, 0), seed=0)
    assert out.shape == (2**33, 2, 0) and out.numel() == 0
    out, alphas = vidmem_ext.dependency_noise((2, 3, 0), seed=0, return_alphas=True)
    assert out.shape == (2, 3, 0) and torch.equal(alphas, torch.zeros(2, 3))


@compiled
@pytest.mark.parametrize("shape, frame_dim", [((2**32, 0, 2**32), 2), ((2**33, 0, 2**31), -1)])
def test_empty_out_whose_sizes_wrap_is_an_error_not_a_crash(shape, frame_dim):
    # batch x frames = 2**64 wrapped to 0 and divided by it (SIGFPE) in the op's own checks
    code = (
        "import torch, vidmem_ext.noise\n"
        f"out = torch.empty({shape})\n"
        "try:\n"
        f"    torch.ops.vidmem_ext.dependency_noise_fill_(out, 0.1, 10, 15, {frame_dim}, 0, 0)\n"
        "except (ValueError, RuntimeError) as exc:\n"
        "    print('raised', type(exc).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-500:]}"
    assert result.stdout.startswith("raised")


@compiled
def test_fill_refuses_an_out_whose_elements_share_memory():
    out = torch.zeros(2, 1, 4).expand(2, 3, 4)
    with pytest.raises(ValueError, match="dependency_noise_fill_: out has elements that share memory"):
        torch.ops.vidmem_ext.dependency_noise_fill_(out, 0.1, 10, 15, 1, 0, 0)
    assert torch.equal(out, torch.zeros(2, 3, 4))


@compiled
def test_meta_and_cpu_arguments_together_are_refused():
    # Such a call dispatches to the fake kernels, not the CPU kernels: they must check devices (and
    # what else the kernels check) instead of returning an uninitialised CPU tensor.
    import vidmem_ext.noise  # noqa: F401 - registers the noise ops' fakes

    ops = torch.ops.vidmem_ext
    x, meta = torch.randn(5, 3, 4), torch.empty(5, 3, 4, device="meta")
    calls = [
        (lambda: ops.temporal_momentum(x, torch.full((3, 4), 0.5, device="meta"), 0.0, 0, None), "momentum is on meta"),
        (lambda: ops.temporal_momentum(x, None, 0.5, 0, torch.zeros(3, 4, device="meta")), "initial is on meta"),
        (lambda: ops.temporal_momentum_backward(meta, x, x, None, 0.5, 0, None, False), "grad_y is on meta"),
        (lambda: ops.temporal_momentum_backward(x, x, meta, None, 0.5, 0, None, False), "y is on meta"),
        (
            lambda: ops.dependency_noise_step(x, torch.empty(3, 5, 3, 4, device="meta"), 0.1, 15),
            "candidates are on meta",
        ),
        (lambda: ops.temporal_momentum(meta, torch.empty(7, device="meta"), 0.0, 0, None), "does not broadcast"),
        (lambda: ops.temporal_momentum_backward(meta, meta, meta[:2], None, 0.5, 0, None, False), "y must have"),
    ]
    for call, message in calls:
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(IndexError, match="dim 99"):
        ops.temporal_momentum(meta, None, 0.5, 99, None)


# --------------------------------------------------------------------------- items 10, 11 and 13 (budget)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64, torch.bfloat16])
def test_packer_names_the_history_dtype(dtype):
    packer = vidmem_ext.MultiTermMemoryPacker([{"num_latent_frames": 2, "temporal_stride": 1,
                                               "spatial_stride": 1, "patch_size": 2}], 3, 8)  # fmt: skip
    history = torch.zeros(1, 3, 2, 4, 4, dtype=dtype)
    error = TypeError if dtype == torch.int64 else ValueError
    with pytest.raises(error, match="history") as info:
        packer(history)
    assert str(dtype) in str(info.value)
    if dtype.is_floating_point:
        assert "torch.float32" in str(info.value)


def test_distributed_is_an_attribute():
    import vidmem_ext as package

    assert package.distributed.temporal_momentum is not None
    assert "distributed" in dir(package)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "vidmem_ext", *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    "args, names",
    [
        (["budget", "--latent=-5x10"], "--latent"),
        (["budget", "--latent", "5by10"], "--latent"),
        (["budget", "--term", "1:0:1:1"], "--term"),
        (["budget", "--term", "a:b"], "--term"),
        (["info", "--bogus"], "--bogus"),
    ],
)
def test_cli_bad_arguments_are_one_line_usage_errors(args, names):
    result = _cli(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert names in result.stderr.strip().splitlines()[-1]
    assert result.stdout == ""
