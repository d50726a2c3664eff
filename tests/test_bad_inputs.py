"""Bad and unusual calls across every public entry point, and the input-preservation properties.

The table: each call must raise the stated exception type with a message that names the argument
(docs/errors.md: TypeError for a wrong type or dtype, ValueError for a wrong value, shape or a
disagreement, IndexError for a dim out of range). The CLI rows expect a one-line usage error and
exit status 2. The properties: every op leaves its inputs bit-identical and returns new memory,
whatever the shapes, strides (expanded, sliced, permuted, channels-last) and dtypes.
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import vidmem_ext
from vidmem_ext import cli, pipelines
from vidmem_ext import distributed as vdist
from vidmem_ext.noise import MAX_LAMBDA_I, MAX_LINEAR_SEARCH_TIMES, MAX_RANDOM_SEARCH_TIMES
from vidmem_ext.token_budget import MemoryTerm, term_grid

tm = vidmem_ext.temporal_momentum
noise = vidmem_ext.dependency_noise
step = vidmem_ext.dependency_noise_step
attention = vidmem_ext.temporal_momentum_attention
Packer = vidmem_ext.MultiTermMemoryPacker
plan = vidmem_ext.plan_memory_terms
patchify = vidmem_ext.multi_term_memory_patchification

X = torch.randn(4, 3)
PREV, CANDIDATES = torch.randn(2, 5), torch.randn(3, 2, 5)
Q = torch.randn(4, 2, 3, 8)  # 2 videos x 2 frames, 2 heads, 3 tokens, dim 8
TERM = {"num_latent_frames": 2, "temporal_stride": 1, "spatial_stride": 1, "patch_size": 2}


class UsageError(Exception):
    """What a CLI row raises: argparse's exit status and the last line it printed."""

    def __init__(self, code, stderr: str):
        lines = stderr.strip().splitlines() or [""]
        super().__init__(f"exit {code}: {lines[-1]}")
        self.code, self.lines = code, lines


def run_cli(*argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main(list(argv))
        except SystemExit as exc:
            raise UsageError(exc.code, err.getvalue()) from None
    raise AssertionError(f"no usage error for {argv}")


def _packer():
    return Packer([TERM], 3, 8)


def _history(**kw):
    return torch.zeros(1, 3, 2, 4, 4, **kw)


def _rope_frames(frame_indices):
    """pooled_rope of coordinate features (frame, row, column) over the given history frame indices."""
    return _packer().pooled_rope(lambda f, r, c: torch.stack([f, r, c], dim=-1), 4, 4, frame_indices=frame_indices)


class _FakeUnet:
    attn_processors: dict = {}


class _FakePipe:
    unet = _FakeUnet()


def _processor_without_frames():
    class _Attn:  # just enough of diffusers' Attention for the processor to reach its check
        spatial_norm = group_norm = None

    return vidmem_ext.TemporalMomentumAttnProcessor(0.5)(_Attn(), torch.zeros(2, 4, 8))


# (id, call, exception type, text the message must contain: the argument's name)
CASES = [
    # ---- temporal_momentum
    ("tm x not a tensor", lambda: tm([1.0, 2.0], 0.5), TypeError, "x"),
    ("tm x int64", lambda: tm(torch.ones(3, 2, dtype=torch.int64), 0.5), TypeError, "x must be a floating"),
    ("tm x bool", lambda: tm(torch.ones(3, 2, dtype=torch.bool), 0.5), TypeError, "x must be a floating"),
    ("tm x complex", lambda: tm(torch.ones(3, 2, dtype=torch.complex64), 0.5), TypeError, "x must be a floating"),
    ("tm momentum > 1", lambda: tm(X, 1.5), ValueError, "momentum"),
    ("tm momentum < 0", lambda: tm(X, -0.1), ValueError, "momentum"),
    ("tm momentum nan", lambda: tm(X, math.nan), ValueError, "momentum"),
    ("tm momentum inf", lambda: tm(X, math.inf), ValueError, "momentum"),
    ("tm momentum huge int", lambda: tm(X, 10**400), ValueError, "momentum"),
    ("tm momentum str", lambda: tm(X, "0.5"), TypeError, "momentum"),
    ("tm momentum bool", lambda: tm(X, True), TypeError, "momentum"),
    ("tm momentum None", lambda: tm(X, None), TypeError, "momentum"),
    ("tm momentum int tensor", lambda: tm(X, torch.tensor([1, 0, 1])), TypeError, "momentum"),
    ("tm momentum bad shape", lambda: tm(X, torch.rand(5)), ValueError, "momentum"),
    ("tm momentum other device", lambda: tm(X, torch.rand(3, device="meta")), ValueError, "momentum"),
    ("tm x sparse", lambda: tm(X.to_sparse(), 0.5), TypeError, "x must be a dense (strided) tensor"),
    ("tm momentum sparse", lambda: tm(X, torch.rand(3).to_sparse()), TypeError, "momentum must be a dense"),
    ("tm initial sparse", lambda: tm(X, 0.5, 0, torch.rand(3).to_sparse()), TypeError, "initial must be a dense"),
    ("tm dim too large", lambda: tm(X, 0.5, 2), IndexError, "dim"),
    ("tm dim too small", lambda: tm(X, 0.5, -3), IndexError, "dim"),
    ("tm dim float", lambda: tm(X, 0.5, 1.0), TypeError, "dim"),
    ("tm dim bool", lambda: tm(X, 0.5, True), TypeError, "dim"),
    ("tm dim numpy bool", lambda: tm(X, 0.5, np.bool_(False)), TypeError, "dim"),
    ("tm x 0-d", lambda: tm(torch.tensor(1.0), 0.5), IndexError, "dim"),
    ("tm initial bad shape", lambda: tm(X, 0.5, 0, torch.zeros(4)), ValueError, "initial"),
    ("tm initial bad dtype", lambda: tm(X, 0.5, 0, torch.zeros(3, dtype=torch.float64)), ValueError, "initial"),
    ("tm initial list", lambda: tm(X, 0.5, 0, [0.0, 0.0, 0.0]), TypeError, "initial"),
    ("tm initial other device", lambda: tm(X, 0.5, 0, torch.zeros(3, device="meta")), ValueError, "initial"),
    # ---- dependency_noise
    ("noise shape int", lambda: noise(4), TypeError, "shape"),
    ("noise shape str", lambda: noise("23"), TypeError, "shape"),
    ("noise shape 1-d", lambda: noise((4,)), ValueError, "shape"),
    ("noise shape negative", lambda: noise((2, -1)), ValueError, "shape[1]"),
    ("noise shape float entry", lambda: noise((2, 3.0)), TypeError, "shape[1]"),
    ("noise shape bool entry", lambda: noise((2, True)), TypeError, "shape[1]"),
    ("noise lambda negative", lambda: noise((2, 3), -1.0), ValueError, "lambda_i"),
    ("noise lambda nan", lambda: noise((2, 3), math.nan), ValueError, "lambda_i"),
    ("noise lambda inf", lambda: noise((2, 3), math.inf), ValueError, "lambda_i"),
    ("noise lambda str", lambda: noise((2, 3), "0.1"), TypeError, "lambda_i"),
    ("noise lambda bool", lambda: noise((2, 3), True), TypeError, "lambda_i"),
    ("noise lambda huge int", lambda: noise((2, 3), 10**400), ValueError, "lambda_i"),
    ("noise lambda above bound", lambda: noise((2, 3), MAX_LAMBDA_I + 0.5), ValueError, "lambda_i"),
    ("noise R zero", lambda: noise((2, 3), 0.1, 0), ValueError, "random_search_times"),
    ("noise R 10**12", lambda: noise((2, 3), 0.1, 10**12), ValueError, "random_search_times"),
    ("noise R 2**63-1", lambda: noise((2, 3), 0.1, 2**63 - 1), ValueError, "random_search_times"),
    ("noise R 2**70", lambda: noise((2, 3), 0.1, 2**70), ValueError, "random_search_times"),
    ("noise R bound+1", lambda: noise((2, 3), 0.1, MAX_RANDOM_SEARCH_TIMES + 1), ValueError, "random_search_times"),
    ("noise R float", lambda: noise((2, 3), 0.1, 2.5), TypeError, "random_search_times"),
    ("noise L negative", lambda: noise((2, 3), 0.1, 10, -1), ValueError, "linear_search_times"),
    ("noise L 10**12", lambda: noise((2, 3), 0.1, 10, 10**12), ValueError, "linear_search_times"),
    ("noise L 2**70", lambda: noise((2, 3), 0.1, 10, 2**70), ValueError, "linear_search_times"),
    ("noise L str", lambda: noise((2, 3), 0.1, 10, "15"), TypeError, "linear_search_times"),
    ("noise frame_dim batch", lambda: noise((2, 3), frame_dim=0), ValueError, "frame_dim"),
    ("noise frame_dim out of range", lambda: noise((2, 3), frame_dim=5), IndexError, "frame_dim"),
    ("noise frame_dim str", lambda: noise((2, 3), frame_dim="1"), TypeError, "frame_dim"),
    ("noise seed and generator", lambda: noise((2, 3), seed=1, generator=torch.Generator()), ValueError, "seed"),
    ("noise seed float", lambda: noise((2, 3), seed=1.5), TypeError, "seed"),
    ("noise seed bool", lambda: noise((2, 3), seed=True), TypeError, "seed"),
    ("noise generator int", lambda: noise((2, 3), generator=3), TypeError, "generator"),
    ("noise dtype int32", lambda: noise((2, 3), dtype=torch.int32), TypeError, "dtype"),
    ("noise dtype False", lambda: noise((2, 3), dtype=False), TypeError, "dtype"),
    ("noise dtype 0", lambda: noise((2, 3), dtype=0), TypeError, "dtype"),
    ("noise device bogus", lambda: noise((2, 3), device="bogus"), ValueError, "device"),
    # no CUDA here, or an index past the last device
    ("noise device missing", lambda: noise((2, 3), device=f"cuda:{torch.cuda.device_count()}"), ValueError, "device"),
    # ---- dependency_noise_step
    ("step prev list", lambda: step([1.0], CANDIDATES, 0.1), TypeError, "prev"),
    ("step prev int64", lambda: step(PREV.long(), CANDIDATES.long(), 0.1), TypeError, "prev"),
    ("step candidates list", lambda: step(PREV, [PREV], 0.1), TypeError, "candidates"),
    ("step candidates dtype", lambda: step(PREV, CANDIDATES.double(), 0.1), ValueError, "candidates"),
    ("step candidates device", lambda: step(PREV, CANDIDATES.to("meta"), 0.1), ValueError, "candidates"),
    ("step prev 0-d", lambda: step(torch.tensor(1.0), torch.randn(2), 0.1), ValueError, "prev"),
    ("step candidates shape", lambda: step(PREV, torch.randn(3, 2, 4), 0.1), ValueError, "candidates"),
    ("step no candidates", lambda: step(PREV, torch.randn(0, 2, 5), 0.1), ValueError, "candidates"),
    ("step lambda negative", lambda: step(PREV, CANDIDATES, -0.5), ValueError, "lambda_i"),
    ("step lambda str", lambda: step(PREV, CANDIDATES, "x"), TypeError, "lambda_i"),
    ("step lambda 1e8", lambda: step(PREV, CANDIDATES, 1e8), ValueError, "lambda_i"),
    ("step L negative", lambda: step(PREV, CANDIDATES, 0.1, -1), ValueError, "linear_search_times"),
    ("step L bound+1", lambda: step(PREV, CANDIDATES, 0.1, MAX_LINEAR_SEARCH_TIMES + 1), ValueError, "linear_search"),
    ("step L float", lambda: step(PREV, CANDIDATES, 0.1, 1.0), TypeError, "linear_search_times"),
    # ---- token budget
    ("budget terms str", lambda: patchify("abc", 8, 8), TypeError, "terms"),
    ("budget terms dict", lambda: patchify(TERM, 8, 8), TypeError, "terms"),
    ("budget term int", lambda: patchify([5], 8, 8), TypeError, "terms[0]"),
    ("budget term missing key", lambda: patchify([{"num_latent_frames": 1}], 8, 8), ValueError, "terms[0]"),
    ("budget term stride 0", lambda: patchify([{**TERM, "temporal_stride": 0}], 8, 8), ValueError, "temporal_stride"),
    ("budget term frames < 0", lambda: patchify([{**TERM, "num_latent_frames": -1}], 8, 8), ValueError, "terms[0]"),
    ("budget term float", lambda: patchify([{**TERM, "patch_size": 2.0}], 8, 8), TypeError, "patch_size"),
    ("budget latent_h negative", lambda: patchify([TERM], -1, 8), ValueError, "latent_h"),
    ("budget latent_w str", lambda: patchify([TERM], 8, "8"), TypeError, "latent_w"),
    ("MemoryTerm frames < 0", lambda: MemoryTerm(-1), ValueError, "num_latent_frames"),
    ("MemoryTerm stride float", lambda: MemoryTerm(1, 1.5), TypeError, "temporal_stride"),
    ("MemoryTerm patch bool", lambda: MemoryTerm(1, 1, 1, True), TypeError, "patch_size"),
    ("term_grid latent negative", lambda: term_grid(MemoryTerm(1), 4, -4), ValueError, "latent_w"),
    # ---- planner
    ("plan frames negative", lambda: plan(-1, 8, 8, 100), ValueError, "history_frames"),
    ("plan budget float", lambda: plan(4, 8, 8, 1.5), TypeError, "token_budget"),
    ("plan budget too small", lambda: plan(40, 60, 104, 10), ValueError, "token_budget"),
    ("plan max_stride 3", lambda: plan(4, 8, 8, 100, max_stride=3), ValueError, "max_stride"),
    ("plan patch 0", lambda: plan(4, 8, 8, 100, patch_size=0), ValueError, "patch_size"),
    ("plan recent negative", lambda: plan(4, 8, 8, 100, recent_frames=-2), ValueError, "recent_frames"),
    ("plan latent negative", lambda: plan(4, -8, 8, 100), ValueError, "latent_h"),
    # ---- packer
    ("packer terms str", lambda: Packer("abc", 3, 8), TypeError, "terms"),
    ("packer term missing key", lambda: Packer([{"patch_size": 2}], 3, 8), ValueError, "terms[0]"),
    ("packer in_channels 0", lambda: Packer([TERM], 0, 8), ValueError, "in_channels"),
    ("packer embed_dim float", lambda: Packer([TERM], 3, 8.0), TypeError, "embed_dim"),
    ("packer history list", lambda: _packer()([0.0]), TypeError, "history"),
    ("packer history sparse", lambda: _packer()(_history().to_sparse()), TypeError, "history must be a dense"),
    ("packer history 4-D", lambda: _packer()(torch.zeros(1, 3, 2, 4)), ValueError, "history"),
    ("packer history channels", lambda: _packer()(torch.zeros(1, 4, 2, 4, 4)), ValueError, "history"),
    ("packer history frames", lambda: _packer()(torch.zeros(1, 3, 3, 4, 4)), ValueError, "history"),
    ("packer history int64", lambda: _packer()(_history(dtype=torch.int64)), TypeError, "history"),
    ("packer history fp64", lambda: _packer()(_history(dtype=torch.float64)), ValueError, "history"),
    ("packer history bf16", lambda: _packer()(_history(dtype=torch.bfloat16)), ValueError, "history"),
    ("packer init from Linear", lambda: _packer().init_from_patch_embed(nn.Linear(2, 2)), TypeError, "conv"),
    ("packer init kernel", lambda: _packer().init_from_patch_embed(nn.Conv3d(3, 8, 2, 2)), ValueError, "conv"),
    ("packer history other device", lambda: _packer()(_history(device="meta")), ValueError, "history is on meta"),
    ("positions latent negative", lambda: _packer().positions(-1, 4), ValueError, "latent_h"),
    ("positions dtype int64", lambda: _packer().positions(4, 4, dtype=torch.int64), TypeError, "dtype"),
    ("positions dtype str", lambda: _packer().positions(4, 4, dtype="float32"), TypeError, "dtype"),
    ("positions device bogus", lambda: _packer().positions(4, 4, device="bogus"), ValueError, "device"),
    ("rope frame_indices str", lambda: _rope_frames("ab"), TypeError, "frame_indices"),
    ("rope frame_indices dict", lambda: _rope_frames({1: 2}), TypeError, "frame_indices"),
    (
        "rope frame_indices complex",
        lambda: _rope_frames(torch.ones(2, dtype=torch.complex64)),
        TypeError,
        "frame_indices",
    ),
    ("rope frame_indices bool", lambda: _rope_frames([True, False]), TypeError, "frame_indices"),
    # ---- attention and processor
    ("attn q list", lambda: attention([0.0], Q, Q, num_frames=2), TypeError, "q"),
    ("attn k 3-D", lambda: attention(Q, Q[0], Q, num_frames=2), ValueError, "k"),
    ("attn k int64, momentum 0", lambda: attention(Q, Q.long(), Q, 0.0, num_frames=2), TypeError, "k must"),
    ("attn k int64, momentum 0.5", lambda: attention(Q, Q.long(), Q, 0.5, num_frames=2), TypeError, "k must"),
    ("attn v dtype", lambda: attention(Q, Q, Q.double(), num_frames=2), ValueError, "v dtype"),
    ("attn v batch", lambda: attention(Q, Q, Q[:2], num_frames=2), ValueError, "batch"),
    ("attn num_frames 0", lambda: attention(Q, Q, Q, num_frames=0), ValueError, "num_frames"),
    ("attn num_frames None", lambda: attention(Q, Q, Q, num_frames=None), TypeError, "num_frames"),
    ("attn num_frames float", lambda: attention(Q, Q, Q, num_frames=2.0), TypeError, "num_frames"),
    ("attn batch not multiple", lambda: attention(Q, Q, Q, num_frames=3), ValueError, "num_frames"),
    ("attn momentum 2", lambda: attention(Q, Q, Q, 2.0, num_frames=2), ValueError, "momentum"),
    ("attn momentum huge int", lambda: attention(Q, Q, Q, 10**400, num_frames=2), ValueError, "momentum"),
    ("attn momentum int tensor", lambda: attention(Q, Q, Q, torch.tensor(1), num_frames=2), TypeError, "momentum"),
    ("attn momentum shape", lambda: attention(Q, Q, Q, torch.rand(7), num_frames=2), ValueError, "momentum"),
    (
        "attn momentum v shape",
        lambda: attention(Q, Q, Q[..., :6], torch.rand(2, 1, 8), num_frames=2),
        ValueError,
        "v's",
    ),
    ("processor momentum -1", lambda: vidmem_ext.TemporalMomentumAttnProcessor(-1.0), ValueError, "momentum"),
    ("processor num_frames 0", lambda: vidmem_ext.TemporalMomentumAttnProcessor(0.5, 0), ValueError, "num_frames"),
    ("processor call, no num_frames", _processor_without_frames, RuntimeError, "num_frames"),
    # ---- pipelines (argument checks that run before the pipeline does any work)
    ("video num_frames 0", lambda: pipelines.zero_shot_video(_FakePipe(), "a", 0), ValueError, "num_frames"),
    ("tiny sd image_size str", lambda: pipelines.tiny_stable_diffusion(image_size="32"), TypeError, "image_size"),
    ("tiny sd image_size odd", lambda: pipelines.tiny_stable_diffusion(image_size=33), ValueError, "image_size"),
    (
        "tiny sd gain nan",
        lambda: pipelines.tiny_stable_diffusion(attention_gain=math.nan),
        ValueError,
        "attention_gain",
    ),
    ("tiny sd gain str", lambda: pipelines.tiny_stable_diffusion(attention_gain="x"), TypeError, "attention_gain"),
    ("tiny sd seed 2**64", lambda: pipelines.tiny_stable_diffusion(seed=2**64), ValueError, "seed"),
    ("tiny sd device bogus", lambda: pipelines.tiny_stable_diffusion(device="bogus"), ValueError, "device"),
    ("video momentum 2", lambda: pipelines.zero_shot_video(_FakePipe(), "a", 2, 2.0), ValueError, "momentum"),
    ("video pipe", lambda: pipelines.zero_shot_video(object(), "a", 2), TypeError, "pipe"),
    ("video latents", lambda: pipelines.zero_shot_video(_FakePipe(), "a", 2, latents=1), TypeError, "latents"),
    ("video generator", lambda: pipelines.zero_shot_video(_FakePipe(), "a", 2, generator=3), TypeError, "generator"),
    ("video prompt", lambda: pipelines.zero_shot_video(_FakePipe(), 5, 2), TypeError, "prompt"),
    (
        "processors num_frames",
        lambda: pipelines.temporal_momentum_processors(None, 0.5, 0).__enter__(),
        ValueError,
        "num_frames",
    ),  # fmt: skip
    # ---- distributed (local checks run before any collective; no group needed)
    ("dist x_local list", lambda: vdist.temporal_momentum([1.0], 0.5), TypeError, "x_local"),
    ("dist momentum 2", lambda: vdist.temporal_momentum(X, 2.0), ValueError, "momentum"),
    ("dist momentum huge int", lambda: vdist.temporal_momentum(X, 10**400), ValueError, "momentum"),
    ("dist dim", lambda: vdist.temporal_momentum(X, 0.5, 3), IndexError, "dim"),
    ("dist initial shape", lambda: vdist.temporal_momentum(X, 0.5, initial=torch.zeros(2)), ValueError, "initial"),
    ("dist no process group", lambda: vdist.temporal_momentum(X, 0.5), RuntimeError, "process group"),
    # ---- command line
    ("cli budget latent negative", lambda: run_cli("budget", "--latent=-5x10"), UsageError, "--latent"),
    ("cli budget latent text", lambda: run_cli("budget", "--latent", "5by10"), UsageError, "--latent"),
    ("cli budget latent 3 parts", lambda: run_cli("budget", "--latent", "1x2x3"), UsageError, "--latent"),
    ("cli budget term stride 0", lambda: run_cli("budget", "--term", "1:0:1:1"), UsageError, "--term"),
    ("cli budget term short", lambda: run_cli("budget", "--term", "1:1"), UsageError, "--term"),
    ("cli budget term negative", lambda: run_cli("budget", "--term", "-1:1:1:1"), UsageError, "--term"),
    ("cli budget unknown flag", lambda: run_cli("budget", "--frames", "3"), UsageError, "--frames"),
    ("cli info extra", lambda: run_cli("info", "--bogus"), UsageError, "--bogus"),
    ("cli unknown command", lambda: run_cli("bogus"), UsageError, "bogus"),
]


def test_the_table_is_large_enough():
    assert len(CASES) >= 80
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("name, call, error, names", CASES, ids=[case[0] for case in CASES])
def test_bad_call(name, call, error, names):
    with pytest.raises(Exception) as info:
        call()
    assert type(info.value) is error or (error is not UsageError and isinstance(info.value, error)), (
        f"{name}: expected {error.__name__}, got {type(info.value).__name__}: {info.value}"
    )
    assert names in str(info.value), f"{name}: the message does not name {names!r}: {info.value}"
    if error is UsageError:
        assert info.value.code == 2
        assert info.value.lines[-1].startswith("python -m vidmem_ext") and "error:" in info.value.lines[-1]


# --------------------------------------------------------------------------- properties: inputs untouched


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "sliced", "permuted", "expanded", "channels_last"]


def laid_out(shape, layout: str, dtype, gen) -> torch.Tensor:
    """A random tensor of `shape` with the given memory layout (values never all zero)."""
    shape = tuple(shape)
    if layout == "sliced" and shape:
        base = torch.randn(*shape[:-1], 2 * shape[-1] + 1, generator=gen)
        t = base[..., 1::2]
    elif layout == "permuted" and len(shape) >= 2:
        order = list(range(len(shape)))[::-1]
        t = torch.randn([shape[i] for i in order], generator=gen).permute(*order)
    elif layout == "expanded" and shape:
        t = torch.randn(1, *shape[1:], generator=gen).expand(shape)  # overlapping memory along dim 0
    elif layout == "channels_last" and len(shape) in (4, 5):
        fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        t = torch.randn(shape, generator=gen).contiguous(memory_format=fmt)
    else:
        t = torch.randn(shape, generator=gen)
    t = t.to(dtype) if layout != "expanded" else t.to(dtype).expand(shape)
    assert t.shape == shape
    return t


def _bits(t: torch.Tensor) -> torch.Tensor:
    as_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.detach().contiguous().view(as_int).clone()


def _snapshot(tensors):
    return [(t, t.stride(), t.storage_offset(), _bits(t)) for t in tensors]


def _check_untouched_and_fresh(snapshot, outputs):
    for t, stride, offset, bits in snapshot:
        assert t.stride() == stride and t.storage_offset() == offset
        assert torch.equal(_bits(t), bits), "an input was modified"
    inputs = {t.untyped_storage().data_ptr() for t, *_ in snapshot if t.numel()}
    for out in outputs:
        if isinstance(out, torch.Tensor) and out.numel():
            assert out.untyped_storage().data_ptr() not in inputs, "an output aliases an input"


shapes = st.lists(st.integers(1, 4), min_size=1, max_size=4)
fast = settings(max_examples=25, deadline=None)


@fast
@given(
    shape=shapes,
    frames=st.integers(1, 5),
    layout=st.sampled_from(LAYOUTS),
    dtype=st.sampled_from(DTYPES),
    m_kind=st.sampled_from(["float", "0", "1", "tensor"]),
    with_initial=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_temporal_momentum_keeps_inputs(shape, frames, layout, dtype, m_kind, with_initial, seed):
    gen = torch.Generator().manual_seed(seed)
    dim = seed % (len(shape) + 1)
    full = list(shape)
    full.insert(dim, frames)
    x = laid_out(full, layout, dtype, gen)
    slice_shape = tuple(shape)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    momentum = {"float": 0.7, "0": 0.0, "1": 1.0}.get(m_kind)
    if momentum is None:
        momentum = laid_out(slice_shape[-1:], "contiguous", acc, gen).sigmoid()
    initial = laid_out(slice_shape, layout, dtype, gen) if with_initial else None
    inputs = [t for t in (x, momentum, initial) if isinstance(t, torch.Tensor)]
    snapshot = _snapshot(inputs)
    y = tm(x, momentum, dim, initial)
    _check_untouched_and_fresh(snapshot, [y])
    assert y.shape == x.shape and y.dtype == dtype


@fast
@given(
    batch=st.integers(1, 3),
    frame=shapes,
    candidates=st.integers(1, 4),
    layout=st.sampled_from(LAYOUTS),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_dependency_noise_step_keeps_inputs(batch, frame, candidates, layout, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    prev = laid_out([batch, *frame], layout, dtype, gen)
    cands = laid_out([candidates, batch, *frame], layout, dtype, gen)
    snapshot = _snapshot([prev, cands])
    outputs = step(prev, cands, 0.3, 5)
    _check_untouched_and_fresh(snapshot, outputs)
    assert outputs[0].shape == prev.shape


@fast
@given(
    videos=st.integers(1, 2),
    frames=st.integers(1, 3),
    heads=st.integers(1, 2),
    tokens=st.integers(1, 4),
    layout=st.sampled_from(LAYOUTS),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    m_kind=st.sampled_from(["float", "0", "1", "tensor"]),
    seed=st.integers(0, 2**16),
)
def test_attention_keeps_inputs(videos, frames, heads, tokens, layout, dtype, m_kind, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = [videos * frames, heads, tokens, 4]
    q, k, v = (laid_out(shape, layout, dtype, gen) for _ in range(3))
    momentum = {"float": 0.6, "0": 0.0, "1": 1.0}.get(m_kind)
    if momentum is None:
        momentum = torch.rand(heads, 1, 1, generator=gen, dtype=dtype)
    inputs = [q, k, v] + ([momentum] if isinstance(momentum, torch.Tensor) else [])
    snapshot = _snapshot(inputs)
    out = attention(q, k, v, momentum, num_frames=frames)
    _check_untouched_and_fresh(snapshot, [out])


@fast
@given(
    batch=st.integers(1, 2),
    height=st.integers(1, 5),
    width=st.integers(1, 5),
    layout=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**16),
)
def test_packer_keeps_inputs(batch, height, width, layout, seed):
    gen = torch.Generator().manual_seed(seed)
    packer = Packer([{**TERM, "num_latent_frames": 3, "temporal_stride": 2}, TERM], 3, 8)
    history = laid_out([batch, 3, 5, height, width], layout, torch.float32, gen)
    snapshot = _snapshot([history])
    with torch.no_grad():
        tokens, positions = packer(history)
    _check_untouched_and_fresh(snapshot, [tokens, positions])
