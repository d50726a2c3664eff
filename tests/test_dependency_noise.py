"""Dependency noise (docs/semantics.md, "Dependency noise"): the step op against the literal reference, the fused
generator against the literal algorithm in distribution, its randomness plumbing, layouts, bad
input, memory, and (under the `cuda` marker) CPU/CUDA agreement.
"""

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import vidmem_ext
from vidmem_ext import _backend, noise, reference

pytestmark = pytest.mark.skipif(not _backend.compiled(), reason="vidmem_ext._C is not built")

EPS = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}
ACC = {torch.float16: torch.float32, torch.bfloat16: torch.float32, torch.float32: torch.float32}
ACC[torch.float64] = torch.float64
FRAME_ATOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 8e-3, torch.bfloat16: 6e-2}


# --------------------------------------------------------------------------- helpers


def search_in_float64(prev, candidates, lambda_i, linear_search_times, eps):
    """The literal search replayed in float64 on the exact statistics, with its rounding margins.

    Returns (index_is_clear, alpha_low, alpha_high) per batch item. An implementation computing in
    precision eps may decide a comparison differently from another when the two compared errors are
    within its rounding of each other: margin = 64 eps * (the size of the summed terms + lambda).
    The random search's choice is "clear" when its two smallest errors are further apart than that.
    For the line search, every decision within the margin is followed both ways, which gives the
    interval of alphas that correct implementations can return (usually a single value).
    """
    batch = prev.shape[0]
    p = prev.double().reshape(batch, -1)
    n = candidates.double().reshape(candidates.shape[0], batch, -1)
    w = p.exp()
    mean_wp = (w * p).mean(1)
    stats = (w * n).mean(2)  # (R, B)
    err = (mean_wp - stats - lambda_i).abs()
    size = (w * (p.abs() + n.abs().amax(0))).mean(1) + lambda_i
    margin = 2 * (4 + math.log2(max(p.shape[1], 1))) * eps * size
    ordered = err.sort(0).values
    gap = ordered[1] - ordered[0] if err.shape[0] > 1 else torch.full_like(mean_wp, math.inf)
    chosen = stats[err.argmin(0), torch.arange(batch)]
    low, high = torch.empty(batch, dtype=torch.float64), torch.empty(batch, dtype=torch.float64)
    for b in range(batch):
        low[b], high[b] = _line_search_outcomes(
            mean_wp[b].item(), chosen[b].item(), ordered[0, b].item(), lambda_i, linear_search_times, margin[b].item()
        )
    return gap > margin, low, high


def _line_search_outcomes(mean_wp, chosen, bound, lambda_i, steps_left, margin, alpha=0.1, step=0.1, best=0.0):
    """(lowest, highest) alpha the line search can end on when near-tie decisions may go either way."""
    while steps_left > 0:
        a = min(max(alpha, 0.0), 1.0)
        e = abs((1 - math.sqrt(a)) * mean_wp - math.sqrt(1 - a) * chosen - lambda_i)
        # At a = 1 every implementation computes e = |0 - lambda| exactly; with lambda = 0 it always passes.
        exact = a == 1.0 and (lambda_i == 0.0 or best == 1.0)
        if not exact and abs(e - bound) <= margin:
            if (steps_left + 1) * step < 1e-9:  # whatever follows moves alpha by less than this
                return best - (steps_left + 1) * step, best + (steps_left + 1) * step
            accept = _line_search_outcomes(mean_wp, chosen, e, lambda_i, steps_left - 1, margin, alpha + step, step, a)
            reject = _line_search_outcomes(
                mean_wp, chosen, bound, lambda_i, steps_left - 1, margin, alpha - 0.8 * step, 0.2 * step, best
            )
            return min(accept[0], reject[0]), max(accept[1], reject[1])
        if e <= bound:
            bound, best, alpha = e, a, alpha + step
        else:
            alpha, step = alpha - 0.8 * step, 0.2 * step
        steps_left -= 1
    return best, best


def ks_distance(a, b):
    """Two-sample Kolmogorov-Smirnov statistic."""
    a, b = a.double().sort().values, b.double().sort().values
    pooled = torch.cat([a, b]).sort().values
    cdf_a = torch.searchsorted(a, pooled, right=True).double() / a.numel()
    cdf_b = torch.searchsorted(b, pooled, right=True).double() / b.numel()
    return (cdf_a - cdf_b).abs().max().item()


def ks_critical(n, m, c_alpha=1.949):
    """KS critical distance at significance 0.001 (c(0.001) = 1.949)."""
    return c_alpha * math.sqrt((n + m) / (n * m))


def transitions(x, alphas):
    """Per (batch item, transition i -> i+1) of (B, F, N) noise: alpha (rounded to 1e-6: the two float
    paths may differ by an ulp on the same lattice value), and for alpha < 0.98 the chosen candidate
    n* = (frame - sqrt(a) p) / sqrt(1 - a), its standardised statistic S(n*) / sigma and its variance."""
    p, f = x[:, :-1].double(), x[:, 1:].double()
    a = alphas[:, 1:].double()
    w = p.exp()
    sigma = w.square().sum(-1).sqrt() / p.shape[-1]
    keep = a < 0.98
    n = (f - a.sqrt()[..., None] * p) / (1 - a).clamp(min=1e-12).sqrt()[..., None]
    z = (w * n).mean(-1) / sigma
    return (a.flatten() * 1e6).round(), z[keep], n.var(-1)[keep]


def frame_correlation(x, frame_dim=1):
    """Mean Pearson correlation of consecutive frames along frame_dim, per batch item."""
    f = x.movedim(frame_dim, 1).flatten(2).double()
    f = f - f.mean(-1, keepdim=True)
    return torch.nn.functional.cosine_similarity(f[:, 1:], f[:, :-1], dim=-1).mean().item()


def python_philox4x32_10(counter, key):
    """Philox4x32-10 on numpy uint64 arrays holding 32-bit words (an independent transcription)."""
    mask = np.uint64(0xFFFFFFFF)
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in counter)
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c0
        p1 = np.uint64(0xCD9E8D57) * c2
        c0, c1, c2, c3 = (p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & mask, (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & mask
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & mask, (k1 + np.uint64(0xBB67AE85)) & mask
    return c0, c1, c2, c3


def python_frame0(seed, offset, batch, numel, dtype):
    """Frame 0 of batch item `batch` from the documented stream layout, in float64."""
    groups = np.arange((numel + 3) // 4, dtype=np.uint64)
    position = offset + 0  # 2 * frame + purpose, purpose 0: element normals
    counter = (
        np.full_like(groups, position & 0xFFFFFFFF),
        np.full_like(groups, position >> 32),
        groups,
        np.full_like(groups, batch),
    )
    x0, x1, x2, x3 = python_philox4x32_10(counter, (seed & 0xFFFFFFFF, seed >> 32))
    if dtype == torch.float64:
        uniform = [(x.astype(np.float64) + 1) / 2.0**32 for x in (x0, x1, x2, x3)]
    else:
        uniform = [((x >> np.uint64(8)).astype(np.float64) + 1) / 2.0**24 for x in (x0, x1, x2, x3)]
    out = np.empty((len(groups), 4))
    for first, second, cols in ((uniform[0], uniform[1], (0, 1)), (uniform[2], uniform[3], (2, 3))):
        radius = np.sqrt(-2 * np.log(first))
        out[:, cols[0]] = radius * np.cos(2 * np.pi * second)
        out[:, cols[1]] = radius * np.sin(2 * np.pi * second)
    return torch.from_numpy(out.reshape(-1)[:numel])


# --------------------------------------------------------------------------- step op


@given(
    batch=st.integers(1, 6),
    frame_shape=st.lists(st.integers(1, 9), min_size=0, max_size=3),
    num_candidates=st.integers(1, 12),
    lambda_i=st.one_of(st.sampled_from([0.0, 0.01, 1.65, 3.0]), st.floats(0.0, 3.0)),
    linear_search_times=st.integers(0, 20),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    transpose=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_step_matches_literal_reference(
    batch, frame_shape, num_candidates, lambda_i, linear_search_times, dtype, transpose, seed
):
    gen = torch.Generator().manual_seed(seed)
    prev = torch.randn(batch, *frame_shape, generator=gen).to(dtype)
    candidates = torch.randn(num_candidates, batch, *frame_shape, generator=gen).to(dtype)
    if transpose and len(frame_shape) >= 2:  # non-contiguous inputs
        prev = prev.transpose(-1, -2).contiguous().transpose(-1, -2)
        candidates = candidates.transpose(-1, -2).contiguous().transpose(-1, -2)
    prev_copy, candidates_copy = prev.clone(), candidates.clone()

    frame, alpha, index = vidmem_ext.dependency_noise_step(prev, candidates, lambda_i, linear_search_times)
    ref_frame, ref_alpha, ref_index = reference.dependency_noise_step(prev, candidates, lambda_i, linear_search_times)
    assert torch.equal(prev, prev_copy) and torch.equal(candidates, candidates_copy)  # inputs untouched
    assert frame.dtype == dtype and frame.shape == prev.shape
    assert alpha.dtype == ACC[dtype] and index.dtype == torch.int64

    acc = ACC[dtype]
    clear, low, high = search_in_float64(prev.to(acc), candidates.to(acc), lambda_i, linear_search_times, EPS[acc])
    assert torch.equal(index[clear], ref_index[clear])
    slack = 1e-6 if acc == torch.float32 else 1e-12  # alpha arithmetic in acc precision vs float64
    for got in (alpha, ref_alpha):
        assert ((got.double() >= low - slack) & (got.double() <= high + slack))[clear].all()
    # The frame is the composition with the op's own alpha and index.
    rows = torch.arange(batch)
    a = alpha.double().reshape(batch, *([1] * len(frame_shape)))
    expected = a.sqrt() * prev.double() + (1 - a).sqrt() * candidates.double()[index, rows]
    torch.testing.assert_close(frame.double(), expected, atol=FRAME_ATOL[dtype], rtol=0)


def test_step_decides_like_the_reference_on_typical_inputs():
    # On 1024-element frames the random search is never a near-tie (same index everywhere), and
    # rounding-level line-search decisions (the search converging on a zero of the error, where
    # fp32 errors of ~1e-6 decide between steps of ~1e-5) could move alpha by at most 1e-3; in fact
    # the kernel and the literal reference agree to 1e-6 on nearly every item.
    gen = torch.Generator().manual_seed(0)
    agree = total = 0
    for lambda_i in (0.0, 0.01, 0.5, 1.0, 1.65, 3.0):
        prev = torch.randn(64, 4, 16, 16, generator=gen)
        candidates = torch.randn(10, 64, 4, 16, 16, generator=gen)
        _, alpha, index = vidmem_ext.dependency_noise_step(prev, candidates, lambda_i)
        _, ref_alpha, ref_index = reference.dependency_noise_step(prev, candidates, lambda_i)
        clear, low, high = search_in_float64(prev, candidates, lambda_i, 15, EPS[torch.float32])
        assert clear.all() and torch.equal(index, ref_index)
        assert (high - low).max() <= 1e-3
        for got in (alpha, ref_alpha):
            assert ((got.double() >= low - 1e-6) & (got.double() <= high + 1e-6)).all()
        agree += int(((alpha - ref_alpha).abs() <= 1e-6).sum())
        total += alpha.numel()
    assert agree >= 0.95 * total


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_chooses_as_fp64_where_the_fp32_errors_overflow(dtype):
    # A = mean(w p) and S_k about -A, both near 2.5e38: |A - S_k - lambda| exceeds fp32's range for every
    # candidate. An fp32 search would see inf everywhere and keep candidate 0; the search runs in double
    # there, so fp32 chooses what fp64 and the reference choose.
    prev = torch.tensor([[84.0]], dtype=dtype)
    candidates = torch.tensor([[[-84.0]], [[-83.9]]], dtype=dtype)
    _, _, index = vidmem_ext.dependency_noise_step(prev, candidates, 0.5, 0)
    _, _, want = vidmem_ext.dependency_noise_step(prev.double(), candidates.double(), 0.5, 0)
    _, _, ref = reference.dependency_noise_step(prev, candidates, 0.5, 0)
    assert index.tolist() == want.tolist() == ref.tolist() == [1]


def test_step_gradients():
    gen = torch.Generator().manual_seed(1)
    prev = torch.randn(3, 5, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    candidates = torch.randn(4, 3, 5, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, c: vidmem_ext.dependency_noise_step(p, c, 0.5)[0], (prev, candidates))
    frame = vidmem_ext.dependency_noise_step(prev, candidates, 0.5)[0]
    ref = reference.dependency_noise_step(prev, candidates, 0.5)[0]
    grad = torch.randn_like(frame)
    got = torch.autograd.grad(frame, (prev, candidates), grad)
    want = torch.autograd.grad(ref, (prev, candidates), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("layout", ["contiguous", "permuted"])
def test_step_opcheck_and_compile(layout):
    gen = torch.Generator().manual_seed(2)
    prev = torch.randn(2, 3, 8, generator=gen)
    candidates = torch.randn(5, 2, 3, 8, generator=gen)
    if layout == "permuted":  # the kernel's frame is contiguous whatever prev's layout: so is the fake's
        prev, candidates = prev.transpose(1, 2), candidates.transpose(2, 3)
    torch.library.opcheck(torch.ops.vidmem_ext.dependency_noise_step.default, (prev, candidates, 0.7, 15))
    compiled = torch.compile(lambda p, c, lam: vidmem_ext.dependency_noise_step(p, c, lam)[0] * 2 + 1, fullgraph=True)
    # a lambda_i that changes between calls reaches the checks as a symbolic float: no graph break
    for lambda_i in (0.7, 0.3, 1.1):
        want = vidmem_ext.dependency_noise_step(prev, candidates, lambda_i)[0] * 2 + 1
        assert torch.equal(compiled(prev, candidates, lambda_i), want)


def test_step_zero_size():
    frame, alpha, index = vidmem_ext.dependency_noise_step(torch.randn(0, 4), torch.randn(3, 0, 4), 0.1)
    assert frame.shape == (0, 4) and alpha.shape == (0,) and index.shape == (0,)
    # Empty frames: every error is NaN (a mean over nothing), as in the reference: candidate 0, alpha 0.
    got = vidmem_ext.dependency_noise_step(torch.randn(2, 0), torch.randn(3, 2, 0), 0.1)
    want = reference.dependency_noise_step(torch.randn(2, 0), torch.randn(3, 2, 0), 0.1)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"lambda_i": -0.1}, ValueError, "lambda_i"),
        ({"lambda_i": float("nan")}, ValueError, "lambda_i"),
        ({"linear_search_times": -1}, ValueError, "linear_search_times"),
        ({"candidates": torch.randn(3, 2, 5)}, ValueError, "candidates must have shape"),
        ({"candidates": torch.randn(3, 2, 4, 1)}, ValueError, "candidates must have shape"),
        ({"candidates": torch.randn(0, 2, 4)}, ValueError, "at least one candidate"),
        ({"candidates": torch.randn(3, 2, 4, dtype=torch.float64)}, ValueError, "candidates dtype"),
        ({"candidates": torch.randn(3, 2, 4, device="meta")}, ValueError, "candidates are on meta"),
        ({"prev": torch.ones(2, 4, dtype=torch.int32)}, TypeError, "prev must be a floating tensor"),
    ],
)
def test_step_bad_input(kwargs, error, match):
    args = {"prev": torch.randn(2, 4), "candidates": torch.randn(3, 2, 4), "lambda_i": 0.1, "linear_search_times": 15}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        vidmem_ext.dependency_noise_step(**args)


def test_step_op_checks_its_arguments_too():
    # The compiled op is reachable through torch.ops directly: it checks as well, with the Python
    # exception types of the front end and the op's name.
    step = torch.ops.vidmem_ext.dependency_noise_step
    with pytest.raises(ValueError, match="dependency_noise_step: lambda_i"):
        step(torch.randn(2, 4), torch.randn(3, 2, 4), -1.0, 15)
    with pytest.raises(ValueError, match=r"dependency_noise_step: lambda_i must be a finite float in \[0, 10\]"):
        step(torch.randn(2, 4), torch.randn(3, 2, 4), vidmem_ext.noise.MAX_LAMBDA_I * 1.01, 15)
    with pytest.raises(ValueError, match="dependency_noise_step: linear_search_times"):
        step(torch.randn(2, 4), torch.randn(3, 2, 4), 0.1, -1)
    with pytest.raises(ValueError, match="dependency_noise_step: candidates must have shape"):
        step(torch.randn(2, 4), torch.randn(3, 2, 5), 0.1, 15)
    with pytest.raises(ValueError, match="dependency_noise_step: candidates dtype"):
        step(torch.randn(2, 4), torch.randn(3, 2, 4, dtype=torch.float64), 0.1, 15)
    with pytest.raises(TypeError, match="dependency_noise_step: prev must be float16"):
        step(torch.ones(2, 4, dtype=torch.int32), torch.ones(3, 2, 4, dtype=torch.int32), 0.1, 15)
    # meta tensors run the fake kernel, which checks the same (torch.compile's tracing relies on it)
    prev, candidates = torch.empty(2, 4, device="meta"), torch.empty(3, 2, 4, device="meta")
    for args, error, match in (
        ((prev, candidates, -1.0, 15), ValueError, "lambda_i"),
        ((prev, candidates, float("nan"), 15), ValueError, "lambda_i"),
        ((prev, candidates, 0.1, -3), ValueError, "linear_search_times"),
        ((prev, candidates[:0], 0.1, 15), ValueError, "at least one candidate"),
        ((prev, candidates.double(), 0.1, 15), ValueError, "candidates dtype"),
        ((prev.int(), candidates.int(), 0.1, 15), TypeError, "prev must be a floating tensor"),
    ):
        with pytest.raises(error, match=match):
            step(*args)


# --------------------------------------------------------------------------- generator: exact stream


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_frame0_is_the_documented_philox_stream(dtype):
    seed = 0x1234_5678_9ABC_DEF0  # both key words non-zero
    shape = (3, 2, 5, 7)  # 35 elements per frame: the last Philox group is partial
    atol = 2e-6 if dtype == torch.float32 else 1e-12
    x = vidmem_ext.dependency_noise(shape, seed=seed, dtype=dtype)
    for b in range(shape[0]):
        torch.testing.assert_close(x[b, 0].flatten().double(), python_frame0(seed, 0, b, 35, dtype), atol=atol, rtol=0)
    # The op's offset is the first counter position (both 32-bit words of it).
    for offset in (6, 2**32 + 5):
        out = torch.empty(shape, dtype=dtype)
        torch.ops.vidmem_ext.dependency_noise_fill_(out, 0.5, 10, 15, 1, noise._as_int64(seed), offset)
        for b in range(shape[0]):
            want = python_frame0(seed, offset, b, 35, dtype)
            torch.testing.assert_close(out[b, 0].flatten().double(), want, atol=atol, rtol=0)


def test_portable_and_avx2_code_give_the_same_bits(tmp_path):
    code = textwrap.dedent(
        """
        import sys, torch, vidmem_ext
        out = vidmem_ext.dependency_noise((2, 6, 3, 33), 0.4, seed=9, return_alphas=True)
        torch.save(out, sys.argv[1])
        """
    )
    results = []
    for disable in (False, True):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
        if disable:
            env["VIDMEM_EXT_DISABLE_AVX2"] = "1"
        path = tmp_path / f"out{int(disable)}.pt"
        run = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        results.append(torch.load(path))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


# --------------------------------------------------------------------------- generator: distribution


@pytest.mark.parametrize("lambda_i", [0.01, 0.5, 1.2])
def test_generator_matches_the_literal_algorithm_in_distribution(lambda_i):
    # 2000 batch items of 64-element frames, 2 transitions each: alpha, the chosen candidate's
    # standardised statistic and its variance (the conditioned candidate is a full N-vector) have
    # the same distribution as in the eager literal algorithm (two-sample KS at significance 0.001).
    shape = (2000, 3, 64)
    gen = torch.Generator().manual_seed(123)
    ref = transitions(*reference.dependency_noise(shape, lambda_i, generator=gen, return_alphas=True))
    fused = transitions(*vidmem_ext.dependency_noise(shape, lambda_i, seed=321, return_alphas=True))
    for name, r, f in zip(("alpha", "statistic", "variance"), ref, fused):
        assert r.numel() > 1000 and f.numel() > 1000, name
        assert ks_distance(r, f) < ks_critical(r.numel(), f.numel()), name
    # And the alpha means agree within 4 standard errors.
    se = math.sqrt(ref[0].var().item() / ref[0].numel() + fused[0].var().item() / fused[0].numel())
    assert abs(ref[0].mean().item() - fused[0].mean().item()) < 4 * se


def test_no_nan_at_the_default_lambda():
    x, alphas = vidmem_ext.dependency_noise((2, 16, 4, 32, 32), seed=0, return_alphas=True)
    assert torch.isfinite(x).all() and ((alphas >= 0) & (alphas <= 1)).all()
    assert (alphas[:, 0] == 0).all()


def test_lambda_zero_gives_identical_frames_at_realistic_sizes():
    # With N = 4096 elements per frame (a 4 x 32 x 32 latent) the line search reaches alpha = 1,
    # where sqrt(1) p + sqrt(0) n* = p exactly: frames are bit-identical (also in half precision).
    for dtype in (torch.float32, torch.bfloat16):
        x, alphas = vidmem_ext.dependency_noise((2, 8, 4, 32, 32), 0.0, seed=4, dtype=dtype, return_alphas=True)
        assert (alphas[:, 1:] == 1).all()
        assert torch.equal(x[:, 1:], x[:, :-1].clone())
    # The literal algorithm does the same there.
    gen = torch.Generator().manual_seed(4)
    ref, ref_alphas = reference.dependency_noise((2, 8, 4, 32, 32), 0.0, generator=gen, return_alphas=True)
    assert (ref_alphas[:, 1:] == 1).all() and torch.equal(ref[:, 1:], ref[:, :-1])


def test_lambda_zero_on_tiny_frames_is_not_identity_in_the_literal_algorithm_either():
    # With 16 elements per frame, S_k ~ N(0, Q / N^2) is wide: the candidate closest to A makes the
    # random-search error small, and the line search, which only accepts errors below it, stops short
    # of alpha = 1 (or settles on the second zero of |(1 - sqrt a) A - sqrt(1 - a) S*| below 1).
    # The fused generator and the literal algorithm agree on how often alpha = 1 is reached.
    shape = (1500, 2, 16)
    gen = torch.Generator().manual_seed(5)
    _, ref_alphas = reference.dependency_noise(shape, 0.0, generator=gen, return_alphas=True)
    _, alphas = vidmem_ext.dependency_noise(shape, 0.0, seed=5, return_alphas=True)
    ref_rate, rate = (ref_alphas[:, 1] == 1).double().mean().item(), (alphas[:, 1] == 1).double().mean().item()
    assert ref_rate < 0.5 and rate < 0.5
    assert abs(ref_rate - rate) < 4 * math.sqrt(ref_rate * (1 - ref_rate) * 2 / shape[0]) + 1e-3


@pytest.mark.parametrize("lambda_i", [5.0, vidmem_ext.noise.MAX_LAMBDA_I])
def test_large_lambda_gives_uncorrelated_frames(lambda_i):
    # Up to the bound, fp32 keeps the errors apart (far above it, they round to lambda_i and ties
    # walked alpha up to 1: identical frames).
    x, alphas = vidmem_ext.dependency_noise((2, 8, 4, 32, 32), lambda_i, seed=6, return_alphas=True)
    assert (alphas[:, 1:] == 0).all()
    assert abs(frame_correlation(x)) < 0.02


def test_correlation_decreases_as_lambda_grows():
    lambdas = [0.1, 0.4, 0.8, 1.2, 1.6]
    correlations = [frame_correlation(vidmem_ext.dependency_noise((2, 8, 4, 32, 32), lam, seed=7)) for lam in lambdas]
    assert all(a > b for a, b in zip(correlations, correlations[1:])), correlations
    assert correlations[0] > 0.9 and correlations[-1] < 0.2


@pytest.mark.parametrize("lambda_i", [0.01, 1.2, 3.0])
def test_mean_about_zero_std_about_one(lambda_i):
    x = vidmem_ext.dependency_noise((2, 16, 4, 32, 32), lambda_i, seed=8)
    # The chosen candidate is biased towards S(n) = A - lambda, so frames drift by a few hundredths
    # (the literal algorithm does the same); each frame stays close to unit variance.
    assert abs(x.mean().item()) < 0.05
    assert abs(x.std().item() - 1) < 0.03
    per_frame = x.flatten(2).std(-1)
    assert ((per_frame > 0.95) & (per_frame < 1.05)).all()


# --------------------------------------------------------------------------- generator: randomness plumbing


def test_manual_seed_reproduces_and_calls_differ():
    torch.manual_seed(0)
    a = vidmem_ext.dependency_noise((2, 4, 64), 0.5)
    b = vidmem_ext.dependency_noise((2, 4, 64), 0.5)
    torch.manual_seed(0)
    assert torch.equal(vidmem_ext.dependency_noise((2, 4, 64), 0.5), a)
    assert not torch.equal(a, b)
    gen = torch.Generator().manual_seed(3)
    c = vidmem_ext.dependency_noise((2, 4, 64), 0.5, generator=gen)
    gen.manual_seed(3)
    assert torch.equal(vidmem_ext.dependency_noise((2, 4, 64), 0.5, generator=gen), c)


def test_seed_reproduces_and_seeds_differ():
    a = vidmem_ext.dependency_noise((2, 4, 64), 0.5, seed=11, return_alphas=True)
    b = vidmem_ext.dependency_noise((2, 4, 64), 0.5, seed=11, return_alphas=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], vidmem_ext.dependency_noise((2, 4, 64), 0.5, seed=12))
    # Negative and 64-bit seeds are keys too (as their 64-bit patterns).
    assert torch.equal(
        vidmem_ext.dependency_noise((1, 2, 8), seed=-1), vidmem_ext.dependency_noise((1, 2, 8), seed=2**64 - 1)
    )


def test_result_does_not_depend_on_the_thread_count():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = vidmem_ext.dependency_noise((3, 5, 4, 40, 40), 0.5, seed=13, return_alphas=True)
        torch.set_num_threads(max(2, threads))
        many = vidmem_ext.dependency_noise((3, 5, 4, 40, 40), 0.5, seed=13, return_alphas=True)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


# --------------------------------------------------------------------------- layouts and dtypes


def test_frame_dim_2_correlates_along_frames_not_channels():
    x = vidmem_ext.dependency_noise((2, 4, 8, 16, 16), 0.3, frame_dim=2, seed=14)  # (B, C, F, H, W)
    assert frame_correlation(x, frame_dim=2) > 0.6
    assert abs(frame_correlation(x, frame_dim=1)) < 0.05  # consecutive channels are independent
    # It is the (B, F, C, H, W) noise of the same seed, laid out with frames on axis 2, bit for bit.
    same = vidmem_ext.dependency_noise((2, 8, 4, 16, 16), 0.3, frame_dim=1, seed=14)
    assert torch.equal(x, same.transpose(1, 2))
    assert torch.equal(vidmem_ext.dependency_noise((2, 4, 8, 16, 16), 0.3, frame_dim=-3, seed=14), x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype):
    x, alphas = vidmem_ext.dependency_noise((2, 6, 4, 16, 16), 0.5, seed=15, dtype=dtype, return_alphas=True)
    assert x.dtype == dtype and alphas.dtype == ACC[dtype]
    assert torch.isfinite(x).all() and (alphas[:, 1:] > 0).any()
    # Frame 0 is the same standard normal stream as in float32, rounded (fp64 draws its own, finer, uniforms).
    if dtype != torch.float64:
        x32 = vidmem_ext.dependency_noise((2, 6, 4, 16, 16), 0.5, seed=15)
        assert torch.equal(x[:, 0], x32[:, 0].to(dtype))


def test_default_dtype_and_empty_results():
    assert vidmem_ext.dependency_noise((1, 2, 3), seed=0).dtype == torch.get_default_dtype()
    for shape, frame_dim in (((0, 3, 4), 1), ((2, 0, 4), 1), ((2, 3, 0), 1), ((2, 3, 0, 5), 2)):
        x, alphas = vidmem_ext.dependency_noise(shape, seed=0, frame_dim=frame_dim, return_alphas=True)
        assert x.shape == shape and alphas.shape == (shape[0], shape[frame_dim])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"lambda_i": -1.0}, ValueError, "lambda_i"),
        ({"lambda_i": float("nan")}, ValueError, "lambda_i"),
        ({"lambda_i": float("inf")}, ValueError, "lambda_i"),
        ({"lambda_i": "0.1"}, TypeError, "lambda_i"),
        ({"random_search_times": 0}, ValueError, "random_search_times"),
        ({"random_search_times": 2.5}, TypeError, "random_search_times"),
        ({"linear_search_times": -1}, ValueError, "linear_search_times"),
        ({"shape": (4,)}, ValueError, "shape"),
        ({"shape": 4}, TypeError, "shape"),
        ({"shape": (2, -1)}, ValueError, "shape"),
        ({"frame_dim": 0}, ValueError, "frame_dim"),
        ({"frame_dim": 3}, IndexError, "frame_dim"),
        ({"frame_dim": -4}, IndexError, "frame_dim"),
        ({"frame_dim": 1.0}, TypeError, "frame_dim"),
        ({"seed": 1, "generator": torch.Generator()}, ValueError, "either generator or seed"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"generator": 3}, TypeError, "generator"),
        ({"dtype": torch.int32}, TypeError, "dtype"),
        ({"device": "bogus"}, ValueError, "device must name a torch device"),
        pytest.param(
            {"device": "xpu"},
            ValueError,
            "device xpu: this torch build or machine has no xpu device",
            marks=pytest.mark.skipif(hasattr(torch, "xpu") and torch.xpu.is_available(), reason="has an XPU"),
        ),
    ],
)
def test_generator_bad_input(kwargs, error, match):
    args = {"shape": (2, 3, 4)}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        vidmem_ext.dependency_noise(**args)


def test_fill_op_checks_its_arguments_too():
    out = torch.empty(2, 3, 4)
    big_r, big_l = vidmem_ext.noise.MAX_RANDOM_SEARCH_TIMES + 1, vidmem_ext.noise.MAX_LINEAR_SEARCH_TIMES + 1
    for args, error, match in (
        ((out, -1.0, 10, 15, 1, 0, 0), ValueError, "lambda_i"),
        ((out, 1e8, 10, 15, 1, 0, 0), ValueError, "lambda_i"),
        ((out, 0.1, 0, 15, 1, 0, 0), ValueError, "random_search_times"),
        ((out, 0.1, big_r, 15, 1, 0, 0), ValueError, "random_search_times"),
        ((out, 0.1, 10, -1, 1, 0, 0), ValueError, "linear_search_times"),
        ((out, 0.1, 10, big_l, 1, 0, 0), ValueError, "linear_search_times"),
        ((out, 0.1, 10, 15, 0, 0, 0), ValueError, "frame_dim must index a non-batch axis"),
        ((out, 0.1, 10, 15, 3, 0, 0), IndexError, "frame_dim 3 is out of range"),
        ((torch.empty(4), 0.1, 10, 15, 1, 0, 0), ValueError, "at least 2 dims"),
        ((torch.empty(2, 3, dtype=torch.int64), 0.1, 10, 15, 1, 0, 0), TypeError, "float16, bfloat16"),
        ((torch.empty(1, 3).expand(2, 3), 0.1, 10, 15, 1, 0, 0), ValueError, "share memory"),
    ):
        with pytest.raises(error, match=f"dependency_noise_fill_: .*{match}"):
            torch.ops.vidmem_ext.dependency_noise_fill_(*args)
        # meta: the fake kernel checks the same
        meta_out = args[0].to("meta")
        meta_out = torch.empty(1, 3, device="meta").expand(2, 3) if match == "share memory" else meta_out
        with pytest.raises(error, match=match):
            torch.ops.vidmem_ext.dependency_noise_fill_(meta_out, *args[1:])


def test_fill_op_on_a_non_contiguous_out():
    out = torch.empty(3, 4, 2).transpose(0, 1)[:2].transpose(0, 1)  # (3, 2, 2) view, not contiguous
    assert not out.is_contiguous()
    alphas = torch.ops.vidmem_ext.dependency_noise_fill_(out, 0.3, 10, 15, 1, 21, 0)
    want = torch.empty(3, 2, 2)
    want_alphas = torch.ops.vidmem_ext.dependency_noise_fill_(want, 0.3, 10, 15, 1, 21, 0)
    assert torch.equal(out, want) and torch.equal(alphas, want_alphas)


def test_fill_opcheck_and_compile():
    out = torch.empty(2, 3, 4, 5)
    torch.library.opcheck(torch.ops.vidmem_ext.dependency_noise_fill_.default, (out, 0.3, 10, 15, 2, 5, 0))
    compiled = torch.compile(lambda lam: vidmem_ext.dependency_noise((2, 3, 40), lam, seed=5), fullgraph=True)
    for lambda_i in (0.3, 0.7, 0.05):  # changing lambda_i: no graph break, no recompile into an error
        assert torch.equal(compiled(lambda_i), vidmem_ext.dependency_noise((2, 3, 40), lambda_i, seed=5))


def test_fallback_runs_the_reference(monkeypatch):
    monkeypatch.setattr(_backend, "use_kernel", lambda op, device: False)
    x, alphas = vidmem_ext.dependency_noise((2, 3, 16), 0.5, seed=17, return_alphas=True)
    gen = torch.Generator().manual_seed(vidmem_ext.noise._mix_seed(17))
    want, want_alphas = reference.dependency_noise((2, 3, 16), 0.5, generator=gen, return_alphas=True)
    assert torch.equal(x, want) and torch.equal(alphas, want_alphas)
    # torch's CPU generator keeps 32 bits of its seed: the fallback mixes all 64 in first
    noise = lambda seed: vidmem_ext.dependency_noise((1, 2, 16), 0.5, seed=seed)  # noqa: E731
    for a, b in ((0, 2**32), (-1, 2**63 - 1), (0, 2**63)):
        assert not torch.equal(noise(a), noise(b)), (a, b)
    assert torch.equal(noise(-1), noise(-1))
    prev, candidates = torch.randn(2, 16), torch.randn(4, 2, 16)
    for got, ref in zip(
        vidmem_ext.dependency_noise_step(prev, candidates, 0.5), reference.dependency_noise_step(prev, candidates, 0.5)
    ):
        assert torch.equal(got, ref)
    # an empty batch gives empty outputs, as the kernel does (autograd connected likewise)
    for dtype, requires_grad in ((torch.float16, False), (torch.float32, True), (torch.float64, False)):
        prev = torch.randn(0, 3).to(dtype).requires_grad_(requires_grad)
        got = vidmem_ext.dependency_noise_step(prev, torch.randn(2, 0, 3).to(dtype), 0.5)
        want = torch.ops.vidmem_ext.dependency_noise_step(prev, torch.randn(2, 0, 3).to(dtype), 0.5, 15)
        assert [(t.shape, t.dtype, t.requires_grad) for t in got] == [(t.shape, t.dtype, t.requires_grad) for t in want]


# --------------------------------------------------------------------------- memory


PEAK_MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys, torch, vidmem_ext
    from vidmem_ext import reference
    torch.set_num_threads(1)

    def rss_kib(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field))

    def peak_extra_kib(fn):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set size to the current one
        before = rss_kib("VmRSS")
        out = fn()
        return rss_kib("VmHWM") - before, out

    shape = (1, 16, 16, 64, 64)  # 4 MiB of float32 output
    vidmem_ext.dependency_noise((1, 2, 64), seed=0)  # load everything first
    reference.dependency_noise((1, 2, 64))
    fused, out = peak_extra_kib(lambda: vidmem_ext.dependency_noise(shape, seed=0))
    output_kib = out.numel() * out.element_size() // 1024
    del out
    eager, out = peak_extra_kib(lambda: reference.dependency_noise(shape, 0.01, 3, 5))
    print(output_kib, fused, eager)
    """
)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_fused_generator_peak_memory_is_the_output():
    # Peak resident memory of one call, measured in a fresh process: the fused generator needs the
    # output plus O(B * R) bookkeeping; the eager reference holds R candidates, every frame and a copy.
    run = subprocess.run([sys.executable, "-c", PEAK_MEMORY_SCRIPT], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    output_kib, fused_kib, eager_kib = map(int, run.stdout.split())
    assert fused_kib <= output_kib + 256, (output_kib, fused_kib)  # page and allocator granularity
    assert eager_kib > 1.5 * output_kib  # the measurement does see extra memory when there is some


# --------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("frame_dim", [1, 2])
def test_cuda_matches_cpu_with_seed(dtype, frame_dim):
    shape = (3, 4, 6, 20, 24)
    for lambda_i in (0.0, 0.01, 0.5, 1.5):
        cpu, cpu_alphas = vidmem_ext.dependency_noise(
            shape, lambda_i, seed=99, frame_dim=frame_dim, dtype=dtype, return_alphas=True
        )
        gpu, gpu_alphas = vidmem_ext.dependency_noise(
            shape, lambda_i, seed=99, frame_dim=frame_dim, dtype=dtype, device="cuda", return_alphas=True
        )
        if dtype == torch.float64:
            # Not bitwise: the CPU and CUDA kernels add their double statistics in different orders
            # (and libm and CUDA's exp/log/sin differ in the last bit), which moves the last bits.
            assert (gpu.cpu() - cpu).abs().max().item() <= 1e-14
            assert (gpu_alphas.cpu().double() - cpu_alphas.double()).abs().max().item() <= 1e-14
        else:
            # fp32 math rounded step by step on both (no FMA contraction; -ffp-contract=off on the CPU),
            # statistics summed in double and rounded once: the same bits.
            assert torch.equal(gpu.cpu(), cpu)
            assert torch.equal(gpu_alphas.cpu(), cpu_alphas)


@pytest.mark.cuda
def test_cuda_generator_offsets_advance_and_manual_seed_reproduces():
    gen = torch.cuda.default_generators[torch.cuda.current_device()]
    before = gen.get_offset()
    vidmem_ext.dependency_noise((2, 4, 64), 0.5, device="cuda")
    assert gen.get_offset() == before + 4 * 2 * 4  # two counter positions per frame, 4 draws each
    torch.manual_seed(0)
    a = vidmem_ext.dependency_noise((2, 4, 64), 0.5, device="cuda")
    b = vidmem_ext.dependency_noise((2, 4, 64), 0.5, device="cuda")
    torch.manual_seed(0)
    assert torch.equal(vidmem_ext.dependency_noise((2, 4, 64), 0.5, device="cuda"), a)
    assert not torch.equal(a, b)
    again = vidmem_ext.dependency_noise((3, 5, 4, 40, 40), 0.5, seed=13, device="cuda")
    assert torch.equal(again, vidmem_ext.dependency_noise((3, 5, 4, 40, 40), 0.5, seed=13, device="cuda"))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cuda_step_matches_cpu(dtype):
    gen = torch.Generator().manual_seed(3)
    prev = torch.randn(5, 3, 40, 33, generator=gen).to(dtype)
    candidates = torch.randn(10, 5, 3, 40, 33, generator=gen).to(dtype)
    for lambda_i in (0.0, 0.5, 1.65, 3.0):
        cpu = vidmem_ext.dependency_noise_step(prev, candidates, lambda_i)
        gpu = vidmem_ext.dependency_noise_step(prev.cuda(), candidates.cuda(), lambda_i)
        acc = ACC[dtype]
        clear, low, high = search_in_float64(prev.to(acc), candidates.to(acc), lambda_i, 15, EPS[acc])
        assert torch.equal(gpu[2].cpu()[clear], cpu[2][clear])
        got = gpu[1].cpu().double()
        assert ((got >= low - 1e-6) & (got <= high + 1e-6))[clear].all()


@pytest.mark.cuda
def test_cuda_opcheck():
    out = torch.empty(2, 3, 4, 5, device="cuda")
    torch.library.opcheck(torch.ops.vidmem_ext.dependency_noise_fill_.default, (out, 0.3, 10, 15, 2, 5, 0))
    prev, candidates = torch.randn(2, 3, 8, device="cuda"), torch.randn(5, 2, 3, 8, device="cuda")
    torch.library.opcheck(torch.ops.vidmem_ext.dependency_noise_step.default, (prev, candidates, 0.7, 15))


@pytest.mark.cuda
def test_cuda_peak_memory_is_the_output():
    shape = (2, 16, 16, 60, 104)
    vidmem_ext.dependency_noise((1, 2, 64), seed=0, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = vidmem_ext.dependency_noise(shape, seed=0, device="cuda")
    torch.cuda.synchronize()
    output_bytes = out.numel() * out.element_size()
    extra = torch.cuda.max_memory_allocated() - before - output_bytes
    assert extra <= 64 * 1024 + 4096 * shape[0], extra  # alphas, partial sums, coefficients, counters
