"""The dependency-noise CUDA kernels, run on the CPU by the emulator (tests/cuda_emulation).

csrc/dependency_noise/dependency_noise.cu and the op code of dependency_noise_cuda_ops.h are
compiled unchanged as C++ against stand-in CUDA headers (see tests/cuda_emulation/README.md):
blocks run one after another in the order asked for (in order, reversed, shuffled), a block's
threads are fibers whose order changes at every barrier, every output and workspace starts as
NaN / all-ones bytes, and a launch over the GPU's limits fails as on a GPU.

The kernels must give the compiled CPU kernels' results for the same seed: the same bits in
fp32, fp16 and bf16 (both compute with every operation rounded on its own and sum in double),
and in fp64 the same frame 0 and alphas with later frames within 1e-14 (libm and the reduction
order differ in the last bits of the double sums).
"""

from __future__ import annotations

import os
import re

import cuda_emulation
import pytest
import torch

import vidmem_ext  # noqa: F401  (registers torch.ops.vidmem_ext)
from vidmem_ext import _backend

pytestmark = [
    pytest.mark.slow,  # the first run compiles the emulation (about 2 minutes on 2 cores)
    pytest.mark.skipif(not _backend.has_kernel("dependency_noise_fill_", "cpu"), reason="CPU kernels not built"),
]

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
ORDERS = {"in_order": cuda_emulation.IN_ORDER, "reversed": cuda_emulation.REVERSED, "shuffled": cuda_emulation.SHUFFLED}
LAMBDA, RANDOM_SEARCH, LINEAR_SEARCH = 0.3, 10, 15


@pytest.fixture(scope="module")
def emu():
    module = cuda_emulation.load()
    yield module
    module.configure()  # the defaults again


def make_out(shape, frame_dim, dtype, layout):
    """An out of `shape` full of NaN (an element never written shows); "permuted": a non-contiguous view (its
    axes stored in reverse)."""
    if layout == "contiguous":
        return torch.full(shape, float("nan"), dtype=dtype)
    return torch.full(shape[::-1], float("nan"), dtype=dtype).permute(*reversed(range(len(shape))))


def assert_same_noise(got, want, dtype, frame_dim):
    assert got.shape == want.shape and got.dtype == want.dtype
    assert not got.isnan().any(), "an element was never written (still the NaN poison)"
    if dtype != torch.float64:
        assert torch.equal(got, want)
        return
    frames_got, frames_want = got.movedim(frame_dim, 1), want.movedim(frame_dim, 1)
    assert torch.equal(frames_got[:, 0], frames_want[:, 0]), "fp64 frame 0 differs"
    err = (frames_got[:, 1:] - frames_want[:, 1:]).abs().max().item() if got.size(frame_dim) > 1 else 0.0
    assert err <= 1e-14 * max(1.0, want.abs().max().item()), f"fp64 frames differ by {err:.3g}"


MAX_GRID_X = 2**31 - 1  # the device's grid x limit

# (shape, frame_dim, layout, grid y limit, blocks per frame at least)
FILL_CASES = [
    ((2, 5, 3, 4), 1, "contiguous", 65535, 1),
    ((3, 4, 6), 2, "permuted", 65535, 1),  # out is a permuted view: filled through a contiguous stand-in
    ((7, 3, 8), 1, "contiguous", 2, 1),  # batch 7 over a grid y cap of 2: the blocks loop over the batch
    ((2, 3, 5000), 1, "contiguous", 65535, 9),  # 5000 elements a frame: many blocks, the last one searches
]


@pytest.mark.parametrize("shape,frame_dim,layout,max_grid_y,min_chunks", FILL_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("order", list(ORDERS))
def test_emulated_fill_matches_cpu(emu, shape, frame_dim, layout, max_grid_y, min_chunks, dtype, order):
    emu.configure(max_grid_y=max_grid_y, block_order=ORDERS[order])
    seed = 1000 + len(shape) * 10 + shape[0]
    out = make_out(shape, frame_dim, dtype, layout)
    alphas, plan = emu.noise_fill(out, LAMBDA, RANDOM_SEARCH, LINEAR_SEARCH, frame_dim, seed, 4)
    assert plan["chunks"] >= min_chunks and plan["grid_y"] == min(shape[0], max_grid_y)
    want = make_out(shape, frame_dim, dtype, layout)
    want_alphas = torch.ops.vidmem_ext.dependency_noise_fill_(
        want, LAMBDA, RANDOM_SEARCH, LINEAR_SEARCH, frame_dim, seed, 4
    )
    assert_same_noise(out, want, dtype, frame_dim)
    assert torch.equal(alphas, want_alphas)
    assert (alphas[:, 1:] > 0).any(), "the searches never accepted an alpha: the comparison is too weak"


# (prev shape, candidates R, layout, grid y limit, blocks per frame at least, grid x limit)
STEP_CASES = [
    ((2, 4, 5), 3, "contiguous", 65535, 1, MAX_GRID_X),
    ((3, 6, 2), 4, "permuted", 65535, 1, MAX_GRID_X),  # prev is a permuted view
    ((5, 16), 2, "contiguous", 2, 1, 2),  # batch 5 over grid caps of 2: the search blocks loop over the batch
    ((3, 400), 3, "contiguous", 65535, 1, 1),  # one block writes all 1200 elements, 128 at a time
    ((2, 3000), 5, "contiguous", 65535, 5, MAX_GRID_X),  # many statistics blocks per batch item
]


@pytest.mark.parametrize("shape,num_candidates,layout,max_grid_y,min_chunks,max_grid_x", STEP_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("order", list(ORDERS))
def test_emulated_step_matches_cpu(emu, shape, num_candidates, layout, max_grid_y, min_chunks, max_grid_x, dtype,
                                   order):  # fmt: skip
    emu.configure(max_grid_y=max_grid_y, block_order=ORDERS[order], max_grid_x=max_grid_x)
    gen = torch.Generator().manual_seed(sum(shape) + num_candidates)
    prev = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    if layout == "permuted":
        prev = prev.permute(*reversed(range(prev.dim()))).contiguous().permute(*reversed(range(prev.dim())))
    candidates = torch.randn((num_candidates, *shape), generator=gen, dtype=torch.float64).to(dtype)
    frame, alpha, index, plan = emu.noise_step(prev, candidates, LAMBDA, LINEAR_SEARCH)
    assert plan["chunks"] >= min_chunks and plan["grid_y"] == min(shape[0], max_grid_y)
    assert plan["max_grid_x"] == min(max_grid_x, 2**20)
    want_frame, want_alpha, want_index = torch.ops.vidmem_ext.dependency_noise_step(
        prev, candidates, LAMBDA, LINEAR_SEARCH
    )
    assert torch.equal(index, want_index)
    assert torch.equal(alpha, want_alpha)
    if dtype == torch.float64:
        assert (frame - want_frame).abs().max().item() <= 1e-14 * max(1.0, want_frame.abs().max().item())
    else:
        assert torch.equal(frame, want_frame)


def test_emulated_ops_raise_the_checked_error_types(emu):
    emu.configure()
    with pytest.raises(ValueError, match="dependency_noise_fill_: lambda_i"):
        emu.noise_fill(torch.empty(2, 3, 4), -1.0, 10, 15, 1, 0, 0)
    with pytest.raises(TypeError, match="dependency_noise_step: prev must be float16"):
        emu.noise_step(torch.ones(2, 4, dtype=torch.int32), torch.ones(3, 2, 4, dtype=torch.int32), 0.1, 15)


# --------------------------------------------------------------------------- the emulator itself


def test_emulator_poisons_what_the_ops_allocate(emu):
    assert emu.poisoned_empty(64).isnan().all()


def test_emulator_runs_every_block_of_a_3d_grid(emu):
    emu.configure(block_order=cuda_emulation.SHUFFLED)
    status, threads = emu.probe_launch("count", 3, 2, 2, 64)
    assert (status, threads) == ("no error", 3 * 2 * 2 * 64)


@pytest.mark.parametrize(
    "grid,block,what",
    [
        ((1, 1, 1), 1056, "block of 1056 threads"),
        ((1, 65536, 1), 32, "over the device's limits"),
        ((1, 1, 65536), 32, "over the device's limits"),
    ],
)
def test_emulator_refuses_launches_over_the_gpu_limits(emu, grid, block, what):
    emu.configure()
    status, threads = emu.probe_launch("count", *grid, block)
    assert what in status and threads == 0


def test_emulator_grid_y_limit_is_the_device_setting(emu):
    emu.configure(max_grid_y=2)
    status, _ = emu.probe_launch("count", 1, 3, 1, 32)
    assert "over the device's limits" in status
    emu.configure()


def test_emulator_reports_a_divergent_barrier_and_goes_on(emu):
    emu.configure()
    status, _ = emu.probe_launch("divergent_barrier", 1, 1, 1, 32)
    assert "deadlock" in status
    assert emu.probe_launch("count", 2, 1, 1, 32) == ("no error", 64)  # the next launch runs normally


def test_emulator_reports_threads_at_different_barriers(emu):
    emu.configure()
    status, threads = emu.probe_launch("divergent_lines", 1, 1, 1, 64)
    assert "divergent barrier" in status and "__syncthreads" in status
    assert threads == 0  # the launch ended at the barrier
    assert emu.probe_launch("count", 1, 1, 1, 32) == ("no error", 32)


def test_emulator_poisons_the_shared_memory_of_every_kernel(emu):
    # The (kernel, variable) pairs of the __shared__ variables the emulator fills before each block:
    # every __shared__ declaration in csrc/ (grep finds ten), and the probes' two.
    found = {
        (re.sub(r"<.*", "", name.split("(")[0]).rsplit("::", 1)[-1], name.rsplit("::", 1)[-1])
        for name in (n.replace("(anonymous namespace)::", "") for n in emu.shared_variable_names())
    }
    assert found == {
        ("fill_frame_kernel", "scratch"),
        ("fill_frame_kernel", "last_block"),
        ("step_stats_kernel", "scratch"),
        ("step_search_kernel", "scratch"),
        ("forward_frames_kernel", "warp_maps"),
        ("backward_frames_kernel", "warp_maps"),
        ("backward_frames_kernel", "warp_dm"),
        ("forward_lanes_kernel", "row_maps"),
        ("backward_lanes_kernel", "row_maps"),
        ("backward_lanes_kernel", "row_dm"),
        ("missing_barrier_kernel", "published"),
        ("shared_unwritten_kernel", "words"),
    }
    declarations = sum(
        open(os.path.join(root, f)).read().count("__shared__ ")
        for root, _, files in os.walk(os.path.join(cuda_emulation.ROOT, "csrc"))
        for f in files
        if f.endswith((".cu", ".cuh"))
    )
    assert declarations == 10  # a new one belongs in the set above


def test_emulator_starts_every_block_with_poisoned_shared_memory(emu):
    emu.configure(block_order=cuda_emulation.SHUFFLED)
    try:
        # Each block writes its shared word; the next block must find 0xFF bytes again.
        assert emu.probe_launch("shared_unwritten", 5, 1, 1, 32) == ("no error", 5)
    finally:
        emu.configure()


def test_emulator_runs_warps_out_of_lockstep(emu):
    # A write after a warp shuffle overtakes another warp's read that no __syncthreads protects:
    # the emulator must let one warp run ahead, or such missing barriers pass unseen.
    emu.configure()
    status, stale_reads = emu.probe_launch("missing_barrier", 3, 1, 1, 64)
    assert status == "no error"
    assert stale_reads > 0


def test_emulator_shuffles_move_64_bits_exactly(emu):
    values = torch.arange(32, dtype=torch.int64) + (2**53 + 1)  # not representable as double
    values[::3] = -values[::3] * 977
    swapped = emu.swap_neighbours(values)
    assert torch.equal(swapped, values.view(16, 2).flip(1).reshape(32))
