"""The temporal momentum CUDA kernels, run on the CPU by a small emulator (tests/cuda_emulation).

The kernels (csrc/temporal_momentum/*.cu, *.cuh) and the op code of temporal_momentum_cuda_ops.h are
compiled unchanged as C++ against stand-in CUDA headers: a block's 256 threads are fibers,
__syncthreads and warp shuffles are barriers between them (threads resume in a shuffled order
at every barrier), 16-byte accesses must be aligned. This checks the kernels' index math, the
scans and their carries, the chunked two-pass path, the plan's kernel choice and alignment
rules, on machines without a GPU. It does not check the memory model or speed. `sm_count`
stands in for the device's SM count, which steers the plan.

Tolerances as in test_temporal_momentum.py.
"""

from __future__ import annotations

import zlib

import cuda_emulation
import pytest
import torch

import vidmem_ext
from vidmem_ext import reference

pytestmark = pytest.mark.slow  # the first run compiles the emulation (about 2 minutes on 2 cores)

TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = list(TOL)


@pytest.fixture(scope="module")
def emu():
    return cuda_emulation.load()


def assert_close(actual, expected, tol):
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape
    if expected.numel():
        err = (actual - expected).abs().max().item()
        scale = max(1.0, expected.abs().max().item())
        assert err <= tol * scale, f"max error {err:.3g} > {tol:.3g} * {scale:.3g}"


def make_x(shape, dim, dtype, layout, gen):
    if layout == "contiguous":
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    if layout == "sliced":  # every other element of the last axis
        big = [*shape[:-1], 2 * shape[-1]]
        return torch.randn(big, generator=gen, dtype=torch.float64).to(dtype)[..., ::2]
    if layout == "frames_inner":  # the frame axis innermost in memory, whatever dim is
        order = [d for d in range(len(shape)) if d != dim % len(shape)] + [dim % len(shape)]
        base = torch.randn([shape[d] for d in order], generator=gen, dtype=torch.float64).to(dtype)
        return base.permute(*[order.index(d) for d in range(len(shape))])
    raise ValueError(layout)


def reference_outputs(x, m, dim, initial, grad_y):
    """y and the gradients of (x, m, initial) from autograd through the loop reference in fp64."""
    xd = x.double().requires_grad_()
    md = m.double().requires_grad_() if isinstance(m, torch.Tensor) else m
    idd = None if initial is None else initial.double().requires_grad_()
    y = reference.temporal_momentum_loop(xd, md, dim, idd)
    inputs = [t for t in (xd, md, idd) if isinstance(t, torch.Tensor)]
    grads = torch.autograd.grad(y, inputs, grad_y.double(), allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]
    return y, grads


# (shape, dim, layout, sm_count, forward kernel, backward kernel, vectorized, forward chunks > 1)
CASES = [
    ((6, 4, 16), 0, "contiguous", 132, "lanes", "lanes", True, False),
    ((5, 3, 33), 1, "sliced", 132, "lanes", "lanes", False, False),
    ((1, 3, 8), 0, "contiguous", 132, "lanes", "lanes", True, False),
    ((300, 16), 0, "contiguous", 132, "lane_chunks", "lane_chunks", True, True),
    ((80, 512), 0, "contiguous", 1, "lane_chunks", "lane_chunks", True, None),
    ((130, 3, 7), 0, "contiguous", 132, "lane_chunks", "lane_chunks", False, True),
    ((8, 600), 1, "contiguous", 1, "frame_segments", "frame_segments", True, False),
    ((2, 5000), 1, "contiguous", 4, "frame_segments", "frame_segments", True, True),
    ((3, 601), 1, "contiguous", 4, "frame_segments", "frame_segments", False, True),
    ((3, 40, 5), 1, "frames_inner", 132, "frame_segments", "frame_segments", True, False),
]


@pytest.mark.parametrize("shape,dim,layout,sms,fwd_kernel,bwd_kernel,vectorized,chunked", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_cuda_kernels_match_reference(emu, shape, dim, layout, sms, fwd_kernel, bwd_kernel, vectorized,
                                               chunked, dtype):  # fmt: skip
    if dtype == torch.float64 and fwd_kernel == "frame_segments" and shape[dim] > 1000:
        pytest.skip("slow to emulate; the float32 case runs the same code")
    # crc32, not hash(): str hashes change from one process to the next, and so would the data.
    gen = torch.Generator().manual_seed(zlib.crc32(repr((shape, dim, str(dtype))).encode()))
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = make_x(shape, dim, dtype, layout, gen)
    slice_shape = [s for d, s in enumerate(shape) if d != dim % len(shape)]
    variants = [
        (0.7, None),  # float momentum, frame 0 resets
        (0.9 + 0.1 * torch.rand(slice_shape[-1:], generator=gen, dtype=torch.float64).to(acc), True),  # per channel
        (torch.tensor(0.95, dtype=acc), True),  # 0-d tensor
    ]
    for m, with_initial in variants:
        initial = torch.randn(slice_shape, generator=gen, dtype=torch.float64).to(dtype) if with_initial else None
        m_tensor = m if isinstance(m, torch.Tensor) else None
        m_value = 0.0 if m_tensor is not None else m
        y, plan = emu.forward(x, m_tensor, m_value, dim, initial, sms)
        assert plan["kernel"] == fwd_kernel
        assert (plan["vector"] > 1) == vectorized
        if chunked is not None:
            assert (plan["chunks"] > 1) == chunked, plan
        # Autograd hands grad_y over laid out like y, which is laid out like x.
        grad_y = torch.empty_like(x).copy_(torch.randn(shape, generator=gen, dtype=torch.float64))
        gx, gm, gi, bplan = emu.backward(grad_y, x, y, m_tensor, m_value, dim, initial, m_tensor is not None, sms)
        assert bplan["kernel"] == bwd_kernel

        y_ref, grads_ref = reference_outputs(x, m, dim, initial, grad_y)
        assert_close(y, y_ref, TOL[dtype])
        assert_close(gx, grads_ref[0], 2 * TOL[dtype])
        if m_tensor is not None:
            assert_close(gm.sum_to_size(m_tensor.shape), grads_ref[1], 10 * TOL[dtype])
        if initial is not None:
            assert_close(gi, grads_ref[-1], 2 * TOL[dtype])

        # Threads resume in a different order every run, and blocks run reversed or shuffled here:
        # results must not depend on either.
        for order in (cuda_emulation.REVERSED, cuda_emulation.SHUFFLED):
            emu.configure(block_order=order)
            try:
                y2, _ = emu.forward(x, m_tensor, m_value, dim, initial, sms)
                gx2, gm2, gi2, _ = emu.backward(
                    grad_y, x, y, m_tensor, m_value, dim, initial, m_tensor is not None, sms
                )
            finally:
                emu.configure()  # the defaults again
            for a, b in ((y, y2), (gx, gx2), (gm, gm2), (gi, gi2)):
                assert torch.equal(a, b)


# (shape, dim, layout, sm_count): each kernel with at least two work units (the lanes kernel's
# unit is 256 lane vectors: 2048 lanes of fp32 make two), two of them chunked.
GRID_STRIDE_CASES = [((4, 2048), 0, "contiguous", 132), CASES[4][:4], CASES[7][:4], CASES[8][:4], CASES[9][:4]]


@pytest.mark.parametrize("shape,dim,layout,sms", [case[:4] for case in GRID_STRIDE_CASES])
@pytest.mark.parametrize("max_grid_x", [1, 3])
def test_emulated_kernels_loop_over_a_capped_grid(emu, shape, dim, layout, sms, max_grid_x):
    # With the device's grid x limit lowered, blocks take several work units each through their
    # grid-stride loops (which otherwise run once): the bits must not change.
    gen = torch.Generator().manual_seed(zlib.crc32(repr((shape, dim, max_grid_x)).encode()))
    x = make_x(shape, dim, torch.float32, layout, gen)
    slice_shape = [s for d, s in enumerate(shape) if d != dim % len(shape)]
    m = 0.5 + 0.5 * torch.rand(slice_shape, generator=gen)
    initial = torch.randn(slice_shape, generator=gen)
    grad_y = torch.empty_like(x).copy_(torch.randn(shape, generator=gen))

    def run():
        y, plan = emu.forward(x, m, 0.0, dim, initial, sms)
        grads = emu.backward(grad_y, x, y, m, 0.0, dim, initial, True, sms)
        return (y, *grads[:3]), plan

    want, want_plan = run()
    emu.configure(max_grid_x=max_grid_x)
    try:
        got, plan = run()
    finally:
        emu.configure()
    assert plan == {**want_plan, "max_grid": max_grid_x}
    assert want_plan["max_grid"] == 2**30  # the kernels' own cap below the device's 2**31 - 1
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    y_ref, (gx_ref, gm_ref, gi_ref) = reference_outputs(x, m, dim, initial, grad_y)
    assert_close(got[0], y_ref, TOL[torch.float32])
    assert_close(got[1], gx_ref, 2 * TOL[torch.float32])


@pytest.mark.parametrize("shape,dim,layout,sms", [CASES[4][:4], CASES[5][:4], CASES[7][:4], CASES[8][:4]])
def test_emulated_scans_keep_infinities(emu, shape, dim, layout, sms):
    # The scans' composed maps and the chunk carries multiply states by m^n, which underflows to 0
    # at m = 0.4 over a few hundred frames: an infinite state must stay infinite, as the
    # step-by-step recurrence keeps it, not become NaN through 0 * inf.
    gen = torch.Generator().manual_seed(zlib.crc32(repr(shape).encode()))
    x = make_x(shape, dim, torch.float32, layout, gen)
    first = [slice(None)] * len(shape)
    first[dim] = 0
    x[tuple(first)] = float("inf")  # frame 0 of every lane
    y, plan = emu.forward(x, None, 0.4, dim, None, sms)
    want = reference.temporal_momentum_loop(x, 0.4, dim)
    assert torch.equal(y.isinf(), want.isinf()) and not y.isnan().any(), plan
    last = [slice(None)] * len(shape)
    last[dim] = -1
    grad_y = torch.zeros(shape)
    grad_y[tuple(last)] = float("inf")  # the backward's a is infinite from the last frame down
    gx, _, _, bplan = emu.backward(grad_y, x, y, None, 0.4, dim, None, False, sms)
    xg = x.detach().requires_grad_()
    (want_gx,) = torch.autograd.grad(reference.temporal_momentum_loop(xg, 0.4, dim), xg, grad_y)
    assert torch.equal(gx.isinf(), want_gx.isinf()) and not gx.isnan().any(), bplan
    # A momentum tensor above 1 on zeros: m^n overflows where frame 0's reset has decay 0; the
    # composed decay must stay 0 (the reset discards the state), not 0 * inf = NaN.
    zeros = torch.zeros_like(x)
    m = torch.full([s for d, s in enumerate(shape) if d != dim % len(shape)], 2.0)
    y, plan = emu.forward(zeros, m, 0.0, dim, None, sms)
    assert torch.equal(y, zeros), plan


def test_emulated_misaligned_vector_access_is_caught_by_the_plan(emu):
    # A storage offset of one element breaks 16-byte alignment: the plan must fall back to scalar access.
    x = torch.randn(4 * 64 + 1)[1:].view(4, 64)
    y, plan = emu.forward(x, None, 0.5, 0, None, 132)
    assert plan["vector"] == 1
    assert_close(y, reference.temporal_momentum_loop(x.double(), 0.5, 0), 1e-6)
    xf = torch.randn(2 * 1024 + 1)[1:].view(2, 1024)
    yf, plan = emu.forward(xf, None, 0.5, 1, None, 1)
    assert plan["kernel"] == "frame_segments" and plan["vector"] == 1
    assert_close(yf, reference.temporal_momentum_loop(xf.double(), 0.5, 1), 1e-6)


def test_emulated_backward_with_grad_y_laid_out_unlike_x(emu):
    # Frames contiguous in x and y but not in grad_y: the backward takes the strided-frames kernel.
    gen = torch.Generator().manual_seed(5)
    x = make_x((3, 40, 5), 1, torch.float32, "frames_inner", gen)
    m = torch.rand(5, generator=gen)
    initial = torch.randn(3, 5, generator=gen)
    y, plan = emu.forward(x, m, 0.0, 1, initial, 132)
    assert plan["kernel"] == "frame_segments"
    grad_y = torch.randn(3, 40, 5, generator=gen)
    gx, gm, gi, bplan = emu.backward(grad_y, x, y, m, 0.0, 1, initial, True, 132)
    assert bplan["kernel"] == "lane_chunks"
    y_ref, (gx_ref, gm_ref, gi_ref) = reference_outputs(x, m, 1, initial, grad_y)
    assert_close(gx, gx_ref, 2e-5)
    assert_close(gm.sum_to_size(m.shape), gm_ref, 1e-4)
    assert_close(gi, gi_ref, 2e-5)


def _same_bits(a, b):
    nan_a, nan_b = a.isnan(), b.isnan()
    return torch.equal(nan_a, nan_b) and torch.equal(a.masked_fill(nan_a, 0), b.masked_fill(nan_b, 0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_lanes_kernel_gives_the_cpu_bits(emu, dtype):
    # The lanes kernel steps frame by frame as the CPU kernels do, and builds without contraction (as
    # nvcc with -fmad=false): every value has the CPU's bits, NaNs included (convert.cuh writes 0x7E00
    # with the sign for fp16 and 0x7FC0 for bf16, where CUDA's own conversions would give 0x7FFF).
    gen = torch.Generator().manual_seed(23)
    x = torch.randn(6, 4, 16, generator=gen, dtype=torch.float64).to(dtype)
    x[2, 0, :4] = float("nan")
    x[2, 1, :4] = -float("nan")
    m = torch.rand(4, 16, generator=gen, dtype=torch.float64).to(
        torch.float64 if dtype == torch.float64 else torch.float32
    )
    m[1, :2] = 0.0  # y = x there: the sign of the NaN survives
    y, plan = emu.forward(x, m, 0.0, 0, None, 132)
    assert plan["kernel"] == "lanes"
    want = vidmem_ext.temporal_momentum(x, m, 0)
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
    nan = want.isnan()
    assert nan.sum() > 8 and torch.equal(y.view(bits), want.view(bits))
    nan_bits = set(want.view(bits)[nan].tolist())
    if dtype == torch.float16:  # 0x7E00 with the sign: a negative NaN is among them
        assert nan_bits == {0x7E00, 0xFE00 - 0x10000}
    elif dtype == torch.bfloat16:  # 0x7FC0, without the sign
        assert nan_bits == {0x7FC0}


@pytest.mark.parametrize(
    "shape,dim,layout,sms,kernel",
    [
        ((6, 4, 16), 0, "contiguous", 132, "lanes"),
        ((300, 16), 0, "contiguous", 132, "lane_chunks"),
        ((130, 3, 7), 0, "contiguous", 132, "lane_chunks"),
        ((2, 5000), 1, "contiguous", 4, "frame_segments"),
        ((3, 40, 5), 1, "frames_inner", 132, "frame_segments"),
    ],
)
def test_emulated_momentum_zero_and_one_are_exact(emu, shape, dim, layout, sms, kernel):
    # Lanes with momentum exactly 0 return x, exactly 1 frame 0, bit for bit, next to NaN and inf frames
    # (docs/errors.md); their gradients are those of a copy. The scans of pairs and the chunk carries
    # may build NaN for such lanes; ema_step / ema_reverse_step must discard it.
    gen = torch.Generator().manual_seed(17)
    x = make_x(shape, dim, torch.float32, layout, gen)
    frames = shape[dim]
    x.select(dim, frames // 2).fill_(float("nan"))
    x.select(dim, frames - 1).fill_(float("inf"))
    slice_shape = [s for d, s in enumerate(shape) if d != dim % len(shape)]
    m = torch.tensor([0.0, 1.0, 0.5]).repeat(slice_shape[-1])[: slice_shape[-1]]
    grad_y = torch.empty_like(x).copy_(torch.randn(shape, generator=gen))
    grad_y.select(dim, max(frames // 3, 1) if frames > 1 else 0).fill_(float("inf"))
    for momentum, m_tensor, m_value in ((m, m, 0.0), (0.0, None, 0.0), (1.0, None, 1.0)):
        y, plan = emu.forward(x, m_tensor, m_value, dim, None, sms)
        assert plan["kernel"] == kernel
        lanes = torch.broadcast_to(torch.as_tensor(momentum), slice_shape).unsqueeze(dim % len(shape)).expand(shape)
        first = x.narrow(dim, 0, 1).expand(shape)
        assert _same_bits(y[lanes == 0], x[lanes == 0])
        assert _same_bits(y[lanes == 1], first[lanes == 1])
        gx, _, _, _ = emu.backward(grad_y, x, y, m_tensor, m_value, dim, None, False, sms)
        assert _same_bits(gx[lanes == 0], grad_y[lanes == 0])
        later = (lanes == 1) & (
            torch.arange(frames).reshape([-1 if d == dim % len(shape) else 1 for d in range(len(shape))]) > 0
        )
        assert torch.equal(gx[later], torch.zeros_like(gx[later]))
        # with `initial`: lanes of momentum 0 ignore it, so its gradient is 0 there even where a_0 is
        # infinite (m * a_0 would be NaN)
        initial = torch.randn(slice_shape, generator=gen)
        y, _ = emu.forward(x, m_tensor, m_value, dim, initial, sms)
        grad_y0 = grad_y.clone()
        grad_y0.select(dim, 0).fill_(float("inf"))
        _, _, gi, _ = emu.backward(grad_y0, x, y, m_tensor, m_value, dim, initial, False, sms)
        zero = torch.broadcast_to(torch.as_tensor(momentum), slice_shape) == 0
        assert torch.equal(gi[zero], torch.zeros_like(gi[zero])) and not gi.isnan().any()
        # a -0.0 initial is repeated bit for bit by lanes of momentum 1, through the scans and carries too
        y, _ = emu.forward(x, m_tensor, m_value, dim, torch.full(slice_shape, -0.0), sms)
        assert torch.signbit(y[lanes == 1]).all() and (y[lanes == 1] == 0).all()
