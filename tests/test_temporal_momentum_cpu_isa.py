"""Temporal momentum CPU kernels on every instruction-set path (docs/cpu_kernels.md).

VIDMEM_EXT_CPU_ISA (read at every call) forces a path: each path the machine supports must give
the same bits as the portable one, forward and backward, on every layout kernel (lanes
contiguous, frames contiguous with tiles transposed in registers, strided), every dtype, float
and tensor momenta (with exact 0 and 1 lanes), with and without `initial`, and the portable
path must agree with the fp64 reference within the tolerances of test_temporal_momentum.py:
float64 1e-12, float32 1e-5, float16 2e-3, bfloat16 1.6e-2 (momentum gradients 10x looser).
"""

from __future__ import annotations

import itertools
import os
import platform
import shutil
import subprocess
import sys
import zlib

import pytest
import torch

import vidmem_ext
from vidmem_ext import _backend, cli, reference

pytestmark = [
    pytest.mark.skipif(not _backend.compiled(), reason="vidmem_ext._C is not built"),
    pytest.mark.usefixtures("one_torch_thread"),  # small tensors; the thread test sets its own counts
]

ENV = "VIDMEM_EXT_CPU_ISA"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VECTOR_ISAS = ["avx2", "avx512_nobf16", "avx512"]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

# (shape, dim, memory layout): odd sizes leave lane and frame tails on every vector width.
CASES = [
    ((9, 37, 5), 0, "contiguous"),  # frames outermost, lanes contiguous
    ((3, 19, 21), 1, "contiguous"),  # frame axis in the middle, contiguous inner block
    ((16, 3, 250), 1, "contiguous"),  # 250-lane blocks: 8 vectors, then blocks of 4, 2, 1 and a tail
    ((2, 3, 17, 5, 7), 2, "contiguous"),  # (B, C, F, H, W)
    ((33, 45), 1, "contiguous"),  # frames last: tiles
    ((6, 7, 35), 1, "frames_last"),  # frames contiguous in memory, logical dim 1
    ((3, 5000), 1, "contiguous"),  # few lanes, many frames: chunked frames on the tile path
    ((5000, 3), 0, "contiguous"),  # chunked frames on the lane path
    ((11, 13, 6), 0, "strided"),  # neither lanes nor frames contiguous: scalar loops
]


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits, so that -0.0 != 0.0 and NaN payloads count."""
    t = t.detach().contiguous()
    return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])


def make_x(shape, dim, layout, dtype, gen):
    if layout == "frames_last":  # frame axis contiguous in memory, at logical position dim
        base = torch.randn([s for i, s in enumerate(shape) if i != dim] + [shape[dim]], generator=gen,
                           dtype=torch.float64)  # fmt: skip
        return base.to(dtype).movedim(-1, dim)
    if layout == "strided":  # every other element of the last two axes
        big = list(shape[:-2]) + [2 * shape[-2], 2 * shape[-1]]
        return torch.randn(big, generator=gen, dtype=torch.float64).to(dtype)[..., ::2, ::2]
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def make_momentum(kind, slice_shape, dtype, gen):
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    if kind == "float":
        return 0.9
    m = torch.rand(slice_shape, generator=gen, dtype=torch.float64).to(acc)
    if kind == "tensor_endpoints":  # exact 0 and 1 lanes among the others
        m.view(-1)[::3] = 0.0
        m.view(-1)[1::3] = 1.0
    return m


def run(monkeypatch, isa, x, m, dim, initial, grad_y):
    """Forward and (with grad_y) the gradients of x, a momentum tensor and initial, on one path."""
    monkeypatch.setenv(ENV, isa)
    if grad_y is None:
        return [vidmem_ext.temporal_momentum(x, m, dim, initial)]
    xg = x.detach().clone().requires_grad_()
    mg = m.detach().clone().requires_grad_() if isinstance(m, torch.Tensor) else m
    ig = initial.detach().clone().requires_grad_() if initial is not None else None
    y = vidmem_ext.temporal_momentum(xg, mg, dim, ig)
    inputs = [t for t in (xg, mg, ig) if isinstance(t, torch.Tensor)]
    return [y, *torch.autograd.grad(y, inputs, grad_y)]


def reference64(x, m, dim, initial, grad_y):
    x64 = x.detach().double().requires_grad_()
    m64 = m.detach().double().requires_grad_() if isinstance(m, torch.Tensor) else m
    i64 = initial.detach().double().requires_grad_() if initial is not None else None
    y = reference.temporal_momentum_loop(x64, m64, dim, i64)
    if grad_y is None:
        return [y]
    inputs = [t for t in (x64, m64, i64) if isinstance(t, torch.Tensor)]
    return [y, *torch.autograd.grad(y, inputs, grad_y.double())]


def supported_isas(monkeypatch):
    """The vector paths this CPU runs (asking for another one is an error that says so)."""
    x = torch.ones(2, 3)
    found = []
    for isa in VECTOR_ISAS:
        monkeypatch.setenv(ENV, isa)
        try:
            vidmem_ext.temporal_momentum(x, 0.5, 0)
        except ValueError as err:
            assert "does not support" in str(err)
            continue
        found.append(isa)
    monkeypatch.delenv(ENV)
    return found


@pytest.fixture
def isas(monkeypatch):
    found = supported_isas(monkeypatch)
    if not found:
        pytest.skip("this CPU has none of the vector paths (AVX2, AVX-512)")
    return found


@pytest.mark.parametrize("shape,dim,layout", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_path_gives_the_portable_bits(monkeypatch, isas, shape, dim, layout, dtype):
    # crc32, not hash(): str hashes change from one process to the next, and so would the data.
    gen = torch.Generator().manual_seed(zlib.crc32(repr((shape, dim, layout, str(dtype))).encode()))
    x = make_x(shape, dim, layout, dtype, gen)
    assert x.shape == shape
    slice_shape = [s for i, s in enumerate(shape) if i != dim]
    checked = 0
    for m_kind, with_initial, backward in itertools.product(
        ["float", "tensor", "tensor_endpoints"], [False, True], [False, True]
    ):
        m = make_momentum(m_kind, slice_shape, dtype, gen)
        initial = torch.randn(slice_shape, generator=gen, dtype=torch.float64).to(dtype) if with_initial else None
        grad_y = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype) if backward else None
        portable = run(monkeypatch, "portable", x, m, dim, initial, grad_y)
        # The fp64 loop reference takes seconds over thousands of frames; the chunked cases
        # are checked against it in test_temporal_momentum.py.
        expected = reference64(x, m, dim, initial, grad_y) if shape[dim] <= 64 else []
        for k, (got, want) in enumerate(zip(portable, expected)):
            is_dm = isinstance(m, torch.Tensor) and k == 2
            tol = TOL[dtype] * (10 if is_dm else 1)
            scale = max(1.0, want.abs().max().item())
            err = (got.double() - want).abs().max().item()
            assert err <= tol * scale, f"portable {m_kind} init={with_initial} output {k}: error {err:.3g}"
        for isa in isas:
            out = run(monkeypatch, isa, x, m, dim, initial, grad_y)
            for k, (a, b) in enumerate(zip(portable, out)):
                assert torch.equal(bits(a), bits(b)), f"{isa} differs from portable: {m_kind} init={with_initial} {k}"
                checked += 1
    assert checked >= len(isas) * 12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,dim", [((5, 70), 0), ((70, 21), 1)])
def test_special_values_give_the_same_bits(monkeypatch, isas, dtype, shape, dim):
    """NaN, infinities, denormals (of fp32: bf16 keeps them) and -0 through every conversion."""
    gen = torch.Generator().manual_seed(3)
    x32 = torch.randn(shape, generator=gen)
    flat = x32.view(-1)
    flat[::7] = float("nan")
    flat[1::11] = float("inf")
    flat[2::13] = -float("inf")
    flat[3::5] = torch.tensor(1e-39) * torch.randn(flat[3::5].shape, generator=gen)  # fp32 denormals
    flat[4::17] = -0.0
    x = x32.to(dtype)
    slice_shape = [s for i, s in enumerate(shape) if i != dim]
    m = make_momentum("tensor_endpoints", slice_shape, dtype, gen)
    for momentum in (m, 0.0, 1.0, 0.5):
        portable = run(monkeypatch, "portable", x, momentum, dim, None, None)[0]
        # y_0 = x_0 bit for bit and momentum 0 is the identity (NaN payloads are not kept: a
        # NaN comes out as the one torch's scalar conversion gives).
        identity = isinstance(momentum, float) and momentum == 0.0
        same_as_x = portable if identity else portable.select(dim, 0)
        x_part = x if identity else x.select(dim, 0)
        assert torch.equal(same_as_x.isnan(), x_part.isnan())
        assert torch.equal(bits(same_as_x)[~x_part.isnan()], bits(x_part)[~x_part.isnan()])
        for isa in isas:
            out = run(monkeypatch, isa, x, momentum, dim, None, None)[0]
            what = f"{isa}, momentum {momentum if isinstance(momentum, float) else 'tensor'}"
            # NaN where the portable path has NaN; every other element bit for bit (which of two
            # NaN operands an addition returns is the hardware's choice, not the kernel's).
            nan = portable.isnan()
            assert torch.equal(out.isnan(), nan), what
            assert torch.equal(bits(out)[~nan], bits(portable)[~nan]), what


def test_bfloat16_rounding_of_fp32_denormals(monkeypatch, isas):
    """A momentum step that lands on an fp32 denormal rounds as torch does (the AVX-512 BF16
    instruction would flush it to zero)."""
    x = torch.tensor([[3e-39], [5e-39]], dtype=torch.float32).expand(2, 64).contiguous().to(torch.bfloat16)
    expected = reference.temporal_momentum_loop(x, 0.5, 0)
    assert expected[1].float().abs().min() > 0
    for isa in ["portable", *isas]:
        monkeypatch.setenv(ENV, isa)
        assert torch.equal(bits(vidmem_ext.temporal_momentum(x, 0.5, 0)), bits(expected)), isa


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_streaming_stores_give_the_same_bits(monkeypatch, isas, dtype):
    """Large outputs take non-temporal stores (here forced from 0 bytes on): the same bits, on
    both vector layouts, with unaligned rows. Frames-last half types stream pairs of tiles (32
    frames, whole lines) and store the last frames through the cache: 96 frames are pairs only,
    83 leave a tail and rows that are not line-aligned; a momentum tensor (dm reads x and y too)
    takes single tiles. Half-type rows of 16 frames (half a line each) stream two rows a line
    (150 and 37 lanes: full groups, and last groups of 6 and 5 rows). Frames-last rows of fewer
    than 4 tiles (16 and 40 fp32 frames, 16 fp64) are not walked: on AVX-512, with a float
    momentum, their backward prefetches the rows of the next batch of four row groups, up to a
    last partial group, in one task (150 lanes) and in two (600 lanes: 416 + 184). Prefetches
    cannot change the bits: these cases check that the code around them does not either."""
    monkeypatch.setenv("VIDMEM_EXT_CPU_STREAMING_BYTES", "0")
    gen = torch.Generator().manual_seed(5)
    cases = [((16, 7001), 0), ((499, 260), 1), ((3, 130, 33), 1), ((40, 96), 1), ((37, 83), 1)]
    cases += [((150, 16), 1), ((600, 40), 1), ((37, 16), 1)]
    for (shape, dim), kind in itertools.product(cases, ["float", "tensor"]):
        x = torch.randn(shape, generator=gen).to(dtype)
        grad_y = torch.randn(shape, generator=gen).to(dtype)
        m = make_momentum(kind, x.select(dim, 0).shape, dtype, gen)
        portable = run(monkeypatch, "portable", x, m, dim, None, grad_y)
        for isa in isas:
            for a, b in zip(portable, run(monkeypatch, isa, x, m, dim, None, grad_y)):
                assert torch.equal(bits(a), bits(b)), (isa, shape, kind)


# Frames-last shapes whose tiles take the prefetching, skewed walk (fp32 and fp64, 4 tiles or
# more per row): rows 4 KiB apart (the longest lags: 1024 fp32 or 512 fp64 frames), 32 KiB apart
# and chunked, rows not whole lines apart (no skew), and few tiles (the plain walk on AVX-512).
WALKED = [((40, 1024), torch.float32), ((20, 4096), torch.float32), ((3, 8192), torch.float32),
          ((37, 2053), torch.float32), ((33, 80), torch.float32), ((24, 512), torch.float64)]  # fmt: skip


@pytest.mark.parametrize("shape,dtype", WALKED)
@pytest.mark.parametrize("streaming", ["0", None])
def test_walked_tiles_give_the_plain_bits(monkeypatch, isas, shape, dtype, streaming):
    """The walk's ramps (rows before their first tile or past their last step with momentum 1,
    frame 0 without initial with momentum 0) must leave the bits of a plain walk: the strided
    scalar loops on the same values in another layout, and every path."""
    if streaming is not None:
        monkeypatch.setenv("VIDMEM_EXT_CPU_STREAMING_BYTES", streaming)
    gen = torch.Generator().manual_seed(shape[1])
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    grad_y = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    grad_y[1, :5] = -0.0
    # The same values with neither axis contiguous: the strided scalar loops, forward and backward.
    x_strided, grad_y_strided = (torch.zeros(shape[0], 2 * shape[1], dtype=dtype)[:, ::2].copy_(t) for t in (x, grad_y))
    checked = 0
    for m_kind, with_initial, m_grad in itertools.product(
        ["float", "tensor", "tensor_endpoints"], [False, True], [False, True]
    ):
        m = make_momentum(m_kind, shape[:1], dtype, gen)
        if m_grad and not isinstance(m, torch.Tensor):
            continue
        initial = torch.randn(shape[:1], generator=gen, dtype=torch.float64).to(dtype) if with_initial else None
        # a momentum gradient reads x and y: that backward takes the plain walk; the others walk
        plain = forward_backward(monkeypatch, "portable", x_strided, m, m_grad, initial, grad_y_strided)
        assert x_strided.stride(1) == 2
        for isa in ["portable", *isas]:
            got = forward_backward(monkeypatch, isa, x, m, m_grad, initial, grad_y)
            for k, (a, b) in enumerate(zip(plain, got, strict=True)):
                assert torch.equal(bits(a), bits(b)), f"{isa} {m_kind} init={with_initial} dm={m_grad} output {k}"
                checked += 1
    assert checked >= 10 * (1 + len(isas)) * 2


def forward_backward(monkeypatch, isa, x, m, m_grad, initial, grad_y):
    """y and the gradients of x, initial and (if m_grad) the momentum tensor, keeping x's strides."""
    monkeypatch.setenv(ENV, isa)
    xg = x.detach().requires_grad_()  # a view: the same strides (clone would make it contiguous)
    ig = initial.detach().clone().requires_grad_() if initial is not None else None
    mg = m.detach().clone().requires_grad_() if m_grad else m
    y = vidmem_ext.temporal_momentum(xg, mg, 1, ig)
    inputs = [t for t in (xg, ig, mg if m_grad else None) if t is not None]
    return [y, *torch.autograd.grad(y, inputs, grad_y)]


def test_bad_streaming_threshold_is_an_error(monkeypatch):
    monkeypatch.setenv("VIDMEM_EXT_CPU_STREAMING_BYTES", "lots")
    with pytest.raises(ValueError, match="VIDMEM_EXT_CPU_STREAMING_BYTES"):
        vidmem_ext.temporal_momentum(torch.ones(2, 2), 0.5, 0)
    with pytest.raises(ValueError, match="VIDMEM_EXT_CPU_STREAMING_BYTES.*'lots'"):
        _backend._C.cpu_streaming_policy()
    assert any("VIDMEM_EXT_CPU_STREAMING_BYTES must be" in line for line in cli.info_lines())


def test_streaming_policy_is_measured_once_within_the_cache_sizes(monkeypatch):
    """Without the knob, the threshold comes from a probe run once per process (on x86-64): at
    least one core's private cache (1 MiB at the least), and the same on every later call."""
    monkeypatch.delenv("VIDMEM_EXT_CPU_STREAMING_BYTES", raising=False)
    threshold, source = _backend._C.cpu_streaming_policy()
    assert source == ("measured" if platform.machine() in ("x86_64", "AMD64") else "cache size")
    assert 2**20 <= threshold <= 2**40
    assert _backend._C.cpu_streaming_policy() == (threshold, source)
    line = next(line for line in cli.info_lines() if "streamed" in line)
    assert f"({source})" in line and "MiB" in line
    monkeypatch.setenv("VIDMEM_EXT_CPU_STREAMING_BYTES", "12345")
    assert _backend._C.cpu_streaming_policy() == (12345, "VIDMEM_EXT_CPU_STREAMING_BYTES")


def test_results_do_not_depend_on_the_thread_count(monkeypatch):
    gen = torch.Generator().manual_seed(7)
    threads = torch.get_num_threads()
    for shape, dim in [((16, 3000), 0), ((300, 64), 1), ((3, 9000), 1)]:
        x = torch.randn(shape, generator=gen)
        grad_y = torch.randn(shape, generator=gen)
        m = torch.rand(x.select(dim, 0).shape, generator=gen)
        outs = []
        try:
            for n in (1, 2, 3):
                torch.set_num_threads(n)
                outs.append(run(monkeypatch, "auto", x, m, dim, None, grad_y))
        finally:
            torch.set_num_threads(threads)
        for other in outs[1:]:
            for a, b in zip(outs[0], other):
                assert torch.equal(bits(a), bits(b)), shape


def test_unknown_or_unsupported_path_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(ENV, "sse9")
    with pytest.raises(ValueError, match=ENV):
        vidmem_ext.temporal_momentum(torch.ones(2, 2), 0.5, 0)
    monkeypatch.setenv(ENV, "portable")
    out = vidmem_ext.temporal_momentum(torch.ones(2, 2), 0.5, 0)
    assert torch.equal(out, torch.ones(2, 2))


def test_backward_without_momentum_gradient_keeps_neither_x_nor_y():
    """dx is a reverse EMA of dy alone: with a float momentum, autograd saves neither x nor y."""
    x = torch.randn(6, 5, requires_grad=True)
    y = vidmem_ext.temporal_momentum(x, 0.7, 0)
    x_saved, y_saved, m_saved, initial_saved = y.grad_fn.saved_tensors
    assert x_saved is None and y_saved is None and m_saved is None and initial_saved is None
    m = torch.rand(5, requires_grad=True)  # a momentum gradient needs them
    assert all(t is not None for t in vidmem_ext.temporal_momentum(x, m, 0).grad_fn.saved_tensors[:3])
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    x64 = x.detach().double().requires_grad_()
    (want,) = torch.autograd.grad(reference.temporal_momentum_loop(x64, 0.7, 0), x64, torch.ones(6, 5).double())
    assert (grad.double() - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize("shape,dim", [((9, 40), 0), ((40, 9), 1)])  # lane kernel, tile kernel
def test_backward_endpoints_are_exact_on_every_path(monkeypatch, isas, shape, dim):
    """m = 0: a_t = dy_t, so dx = dy bit for bit; m = 1: dx_t = 0 for t >= 1 even where a_t is
    infinite (no 0 * inf); whatever non-finite values the other frames hold."""
    gen = torch.Generator().manual_seed(11)
    grad_y = torch.randn(shape, generator=gen)
    grad_y.select(dim, shape[dim] - 1).fill_(float("inf"))
    grad_y.select(dim, shape[dim] // 2).fill_(float("nan"))
    lanes = grad_y.select(dim, 0).numel()
    m = torch.tensor([0.0, 1.0, 0.5] * lanes)[:lanes]
    x = torch.randn(shape, generator=gen)
    for isa in ["portable", *isas]:
        (dx,) = run(monkeypatch, isa, x, m.clone(), dim, None, grad_y)[1:2]
        zero_lanes, one_lanes = m == 0, m == 1
        assert torch.equal(bits(dx.movedim(dim, -1)[zero_lanes]), bits(grad_y.movedim(dim, -1)[zero_lanes])), isa
        later = dx.movedim(dim, -1)[one_lanes][:, 1:]
        assert torch.equal(bits(later), bits(torch.zeros_like(later))), isa


VALGRIND_SCRIPT = r"""
import os, sys
import torch
import vidmem_ext
from vidmem_ext import reference

torch.set_num_threads(1)
os.environ["VIDMEM_EXT_CPU_ISA"] = "avx512"
try:
    vidmem_ext.temporal_momentum(torch.randn(4, 4), 0.5, 0)
    sys.exit("valgrind's CPU reports AVX-512: this check would prove nothing")
except ValueError as exc:
    assert "does not support" in str(exc), exc
for isa in ("auto", "portable"):
    os.environ["VIDMEM_EXT_CPU_ISA"] = isa
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)):
        x = torch.randn(16, 40, dtype=torch.float64).to(dtype)
        want = reference.temporal_momentum_loop(x.double(), 0.5, 0)
        for got in (vidmem_ext.temporal_momentum(x, 0.5, 0), vidmem_ext.temporal_momentum(x.t(), 0.5, 1).t()):
            err = (got.double() - want).abs().max().item()
            assert err <= tol * max(1.0, want.abs().max().item()), (isa, dtype, err)
print("ran without AVX-512")
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_runs_on_a_cpu_without_avx512(monkeypatch, tmp_path):
    if "avx2" not in supported_isas(monkeypatch):
        pytest.skip("checks the x86 vector paths")
    # valgrind's emulated CPU has AVX2 but not AVX-512. A kernel table built for a set the CPU lacks
    # (as the first call once did for every set) dies there with SIGILL; the AVX2 and portable paths
    # must run and agree with the reference.
    script = tmp_path / "no_avx512.py"
    script.write_text(VALGRIND_SCRIPT)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("VIDMEM_EXT_CPU_ISA", None)
    run = subprocess.run(["valgrind", "--tool=none", "--quiet", sys.executable, str(script)], env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0 and "ran without AVX-512" in run.stdout, run.stderr[-3000:]
