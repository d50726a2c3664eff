"""vidmem_ext.distributed.temporal_momentum on real gloo process groups (2 and 3 CPU processes).

Each spawned group runs every case at once (process start-up dominates on a
small machine). Every rank builds the same full video from a seed, runs the
single-process op on the concatenated frames (fp64 unless stated) as the
reference, runs the distributed op on its block, and writes one record per
case to a JSON file; the tests below read the records and show every failure.
"""

from __future__ import annotations

import datetime
import json
import os
import time
import traceback
import warnings
import zlib

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import vidmem_ext
from vidmem_ext import distributed as vdist

SPAWN_TIMEOUT_S = 150  # generous: the machine may be busy; a healthy run takes a few seconds
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=30)  # a hung collective fails the case instead of the run

# Splits of the frames over the ranks: uneven, empty first / middle / last blocks, all empty.
SPLITS = {
    2: [[3, 5], [0, 4], [4, 0], [1, 1], [6, 2], [0, 0]],
    3: [[5, 0, 3], [0, 4, 0], [1, 1, 6], [0, 0, 4], [2, 3, 4], [3, 0, 0]],
}

# (name, layout, momentum kind, initial?) -- layout: frame dim and the full-video shape for F frames.
VARIANTS = [
    ("float m, no initial, dim 0", 0, "float", False),
    ("per-channel m tensor, initial, dim 1", 1, "channel", True),
    ("per-lane m tensor, no initial, dim -1", -1, "lane", False),
    ("per-channel m tensor, no initial, dim 0", 0, "channel", False),
    ("float m, initial, dim 1", 1, "float", True),
]


def _full_shape(dim: int, frames: int) -> tuple[int, ...]:
    return {0: (frames, 2, 3), 1: (2, frames, 3), -1: (2, 3, frames)}[dim]


def _make_inputs(seed: int, dim: int, frames: int, m_kind: str, with_initial: bool, dtype=torch.float64):
    """The same full inputs on every rank: x, momentum (float or tensor), initial, upstream gradient."""
    gen = torch.Generator().manual_seed(seed)
    shape = _full_shape(dim, frames)
    slice_shape = tuple(s for i, s in enumerate(shape) if i != dim % len(shape))
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if m_kind == "float":
        momentum = 0.8
    elif m_kind == "channel":  # includes the edges 0 (identity) and 1 (first frame)
        momentum = torch.tensor([0.0, 0.7, 1.0], dtype=torch.float64)
    else:
        momentum = torch.rand(slice_shape, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    initial = torch.randn(slice_shape, generator=gen, dtype=torch.float64) if with_initial else None
    upstream = torch.randn(shape, generator=gen, dtype=torch.float64)
    cast = (lambda t: t.to(dtype)) if dtype != torch.float64 else (lambda t: t)
    return cast(x), momentum, None if initial is None else cast(initial), cast(upstream)


def _leaf(t):
    return t.detach().clone().requires_grad_(True) if isinstance(t, torch.Tensor) else t


def _max_err(a, b) -> float:
    if a is None or b is None:  # no gradient = a zero gradient (e.g. the reference on zero frames)
        if a is None and b is None:
            return 0.0
        a, b = (torch.zeros_like(b), b) if a is None else (a, torch.zeros_like(a))
    if a.shape != b.shape:
        return float("inf")
    return 0.0 if a.numel() == 0 else (a.double() - b.double()).abs().max().item()


def _reduced(t, group):
    """Sum of a replicated argument's local gradients over the group (what a DDP all-reduce gives)."""
    t = t.detach().clone()
    dist.all_reduce(t, group=group)
    return t


def _match_case(rank, world, group, name, sizes, dim, m_kind, with_initial, dtype=torch.float64, tol=1e-11):
    """Forward and every gradient against the single-process op over the concatenated frames."""
    seed = zlib.crc32(repr((sizes, dim, m_kind, with_initial, str(dtype))).encode())  # the same on every rank
    x, momentum, initial, upstream = _make_inputs(seed, dim, sum(sizes), m_kind, with_initial, dtype)

    x_ref, m_ref, init_ref = _leaf(x), _leaf(momentum), _leaf(initial)
    y_ref = vidmem_ext.temporal_momentum(x_ref, m_ref, dim, init_ref)
    (y_ref.double() * upstream.double()).sum().backward()

    start, length = sum(sizes[:rank]), sizes[rank]
    x_local = _leaf(x.narrow(dim, start, length))
    m_local, init_local = _leaf(momentum), _leaf(initial)
    y = vdist.temporal_momentum(x_local, m_local, dim, group, initial=init_local)
    (y.double() * upstream.narrow(dim, start, length).double()).sum().backward()

    errors = {
        "y": _max_err(y, y_ref.narrow(dim, start, length)),
        "dx": _max_err(x_local.grad, x_ref.grad.narrow(dim, start, length)),
    }
    if isinstance(momentum, torch.Tensor):
        errors["dmomentum (sum over ranks)"] = _max_err(_reduced(m_local.grad, group), m_ref.grad)
    if initial is not None:
        errors["dinitial (sum over ranks)"] = _max_err(_reduced(init_local.grad, group), init_ref.grad)
    shape_ok = y.shape == x_local.shape and y.dtype == x_local.dtype
    scale = 1 + (x.abs().max().item() if x.numel() else 0.0)
    ok = shape_ok and all(e <= tol * scale for e in errors.values())
    detail = f"sizes={sizes} dtype={dtype} shape_ok={shape_ok} " + ", ".join(f"{k}: {v:.3g}" for k, v in errors.items())
    return {"kind": "match", "case": name, "ok": ok, "detail": detail}


def _error_case(rank, group, name, expected_type, expected_text, call):
    """Every rank must raise the same clear error (and the group must stay usable)."""
    try:
        call()
    except expected_type as exc:
        ok = expected_text in str(exc)
        return {"kind": "error", "case": name, "ok": ok, "detail": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # wrong type: report it
        return {"kind": "error", "case": name, "ok": False, "detail": f"unexpected {type(exc).__name__}: {exc}"}
    return {"kind": "error", "case": name, "ok": False, "detail": f"rank {rank}: no error raised"}


def _error_cases(rank, world, group):
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    records = []
    mixed_shape = torch.randn(2, 6, 4, dtype=torch.float64) if rank == 1 else x  # same numel, other shape
    records.append(
        _error_case(
            rank,
            group,
            "frame-slice shapes differ",
            ValueError,
            "same frame-slice shape",
            lambda: vdist.temporal_momentum(mixed_shape, 0.9, 0, group),
        )
    )
    init = torch.zeros(4, 6, dtype=torch.float64) if rank == 0 else None
    records.append(
        _error_case(
            rank,
            group,
            "initial on one rank only",
            ValueError,
            "on every rank or on none",
            lambda: vdist.temporal_momentum(x, 0.9, 0, group, initial=init),
        )
    )
    records.append(
        _error_case(
            rank,
            group,
            "float momentum differs",
            ValueError,
            "momentum must be the same on every rank",
            lambda: vdist.temporal_momentum(x, 0.9 if rank else 0.5, 0, group),
        )
    )
    mixed_dtype = x.float() if rank == world - 1 else x.half()  # same message size (fp32 carry), other dtype
    records.append(
        _error_case(
            rank,
            group,
            "dtypes differ",
            ValueError,
            "same dtype on every rank",
            lambda: vdist.temporal_momentum(mixed_dtype, 0.9, 0, group),
        )
    )
    # Disagreements that change the payload's size: before the header had its own collective, gloo
    # aborted the process (SIGABRT) on these. Now every rank raises the same ValueError.
    fp64_vs_fp32 = x.float() if rank == 0 else x
    records.append(
        _error_case(
            rank,
            group,
            "fp32 on rank 0, fp64 elsewhere",
            ValueError,
            "rank 0: torch.float32, rank 1: torch.float64",
            lambda: vdist.temporal_momentum(fp64_vs_fp32, 0.9, 0, group),
        )
    )
    other_numel = torch.randn(3, 4, 5 + rank, dtype=torch.float64)
    records.append(
        _error_case(
            rank,
            group,
            "frame slices of different sizes",
            ValueError,
            "rank 0: (4, 5), rank 1: (4, 6)",
            lambda: vdist.temporal_momentum(other_numel, 0.9, 0, group),
        )
    )
    m_kind = torch.full((6,), 0.9, dtype=torch.float64) if rank == world - 1 else 0.9
    records.append(
        _error_case(
            rank,
            group,
            "float momentum on some ranks, a tensor on another",
            ValueError,
            f"rank {world - 1}: a tensor",
            lambda: vdist.temporal_momentum(x, m_kind, 0, group),
        )
    )
    x_grad = x.clone().requires_grad_(rank == 0)
    records.append(
        _error_case(
            rank,
            group,
            "requires_grad on one rank only",
            RuntimeError,
            "autograd must be recording",
            lambda: vdist.temporal_momentum(x_grad, 0.9, 0, group),
        )
    )
    # One rank's own arguments fail their checks: it raises its error, the others raise too at once
    # (they used to wait in the header exchange until the collective timed out).
    bad_momentum = 1.5 if rank == world - 1 else 0.9
    records.append(
        _error_case(
            rank,
            group,
            "a bad momentum on the last rank only",
            ValueError,
            "momentum must be in [0, 1]" if rank == world - 1 else f"arguments of ranks [{world - 1}] failed",
            lambda: vdist.temporal_momentum(x, bad_momentum, 0, group),
        )
    )
    bad_initial = torch.zeros(5, dtype=torch.float64) if rank == 0 else None
    records.append(
        _error_case(
            rank,
            group,
            "an initial of the wrong shape on rank 0 only",
            ValueError,
            "initial must have the frame-slice shape" if rank == 0 else "arguments of ranks [0] failed",
            lambda: vdist.temporal_momentum(x, 0.9, 0, group, initial=bad_initial),
        )
    )

    square = torch.randn(4, 4, dtype=torch.float64)  # the same frame-slice shape along either axis
    records.append(
        _error_case(
            rank,
            group,
            "ranks scan along different axes",
            ValueError,
            "dim must be the same frame axis",
            lambda: vdist.temporal_momentum(square, 0.9, rank % 2, group),
        )
    )
    # `initial` passed fourth (where group goes) on the last rank only: it raises its TypeError, the others
    # raise at once (they waited in the header exchange until the collective timed out)
    misplaced = torch.zeros(4, 6, dtype=torch.float64) if rank == world - 1 else group
    records.append(
        _error_case(
            rank,
            group,
            "initial passed as group on the last rank only",
            TypeError if rank == world - 1 else ValueError,
            "pass initial by keyword" if rank == world - 1 else f"arguments of ranks [{world - 1}] failed",
            lambda: vdist.temporal_momentum(x, 0.9, 0, misplaced),
        )
    )

    def second_order():
        x_leaf = x.clone().requires_grad_(True)
        y = vdist.temporal_momentum(x_leaf, 0.7, 0, group)
        (g,) = torch.autograd.grad(y.pow(2).sum(), x_leaf, create_graph=True)
        torch.autograd.grad(g.sum(), x_leaf)

    records.append(_error_case(rank, group, "create_graph", RuntimeError, "second-order gradients", second_order))
    return records


def _bytes_cases(rank, world, group):
    """Communication: one all-gather each way, O(world x frame slice), independent of the number of frames."""
    records = []
    slice_numel = 4 * 6
    seen = []
    for frames in (2, 40):
        x = torch.randn(frames, 4, 6, dtype=torch.float64, requires_grad=True)
        with vdist.record_communication() as log:
            vdist.temporal_momentum(x, 0.9, 0, group).sum().backward()
        seen.append([(e["direction"], e["sent_bytes"], e["gathered_bytes"]) for e in log])
    expected = [
        ("header", vdist.HEADER_BYTES, world * vdist.HEADER_BYTES),
        ("forward", 2 * slice_numel * 8, world * 2 * slice_numel * 8),
        ("backward", slice_numel * 8, world * slice_numel * 8),
    ]
    ok = all(s == expected for s in seen)
    records.append({"kind": "bytes", "case": "fp64 forward+backward", "ok": ok, "detail": f"{seen} vs {expected}"})

    x = torch.randn(5, 4, 6, dtype=torch.float16)
    with torch.no_grad(), vdist.record_communication() as log:
        vdist.temporal_momentum(x, 0.9, 0, group)
    got = [(e["direction"], e["sent_bytes"]) for e in log]
    expected = [("header", vdist.HEADER_BYTES), ("forward", 2 * slice_numel * 4)]  # half types carry fp32 states
    records.append({"kind": "bytes", "case": "fp16, no grad", "ok": got == expected, "detail": f"{got} vs {expected}"})

    x = torch.randn(5, 4, 0)  # an empty frame slice: empty messages, the world size all the same
    with torch.no_grad(), vdist.record_communication() as log:
        vdist.temporal_momentum(x, 0.9, 0, group)
    got = [(e["direction"], e["sent_bytes"], e["world_size"]) for e in log]
    expected = [("header", vdist.HEADER_BYTES, world), ("forward", 0, world)]
    records.append({"kind": "bytes", "case": "empty slice", "ok": got == expected, "detail": f"{got} vs {expected}"})
    return records


def _other_cases(rank, world, group):
    records = []
    # fp32 and fp16 against the single-process op in the same dtype.
    sizes = SPLITS[world][0]
    records.append(_match_case(rank, world, group, "fp32", sizes, 1, "channel", True, torch.float32, tol=2e-6))
    records.append(_match_case(rank, world, group, "fp16", sizes, 0, "float", False, torch.float16, tol=4e-3))
    records.append(_rounded_once_case(rank, world, group))
    # Only the momentum tensor requires grad (x does not): empty blocks must still join the backward exchange.
    x, momentum, _, upstream = _make_inputs(7, 0, 6, "lane", False)
    m_ref = _leaf(momentum)
    (vidmem_ext.temporal_momentum(x, m_ref, 0) * upstream).sum().backward()
    sizes = [0] * (world - 1) + [6]
    start, length = sum(sizes[:rank]), sizes[rank]
    m_local = _leaf(momentum)
    y = vdist.temporal_momentum(x.narrow(0, start, length), m_local, 0, group)
    (y * upstream.narrow(0, start, length)).sum().backward()
    err = _max_err(_reduced(m_local.grad, group), m_ref.grad)
    records.append({"kind": "match", "case": "only momentum requires grad", "ok": err < 1e-11, "detail": f"{err}"})
    # Inference: no grad anywhere, one exchange; the output is a new tensor and the input is untouched.
    x, _, _, _ = _make_inputs(8, 0, 5, "float", False)
    sizes = [5] + [0] * (world - 1)
    start, length = sum(sizes[:rank]), sizes[rank]
    x_local = x.narrow(0, start, length).clone()
    before = x_local.clone()
    with torch.no_grad():
        y = vdist.temporal_momentum(x_local, 0.8, 0, group)
    err = _max_err(y, vidmem_ext.temporal_momentum(x, 0.8, 0).narrow(0, start, length))
    ok = err < 1e-12 and torch.equal(x_local, before) and not y.requires_grad
    records.append({"kind": "match", "case": "no grad", "ok": ok, "detail": f"err={err}"})
    return records


def _rounded_once_case(rank, world, group):
    """bf16 blocks accumulate in fp32 and round once, as the single-process op: within half a unit in
    the last place of the exact result (rounding the zero-state scan to bf16 first gave up to 2 units)."""
    gen = torch.Generator().manual_seed(31)
    frames = 40 * world
    x = (torch.randn(frames, 64, generator=gen, dtype=torch.float64) * 3 + 5).to(torch.bfloat16)
    exact = vidmem_ext.reference.temporal_momentum_loop(x.double(), 0.98, 0)
    start, length = 40 * rank, 40
    with torch.no_grad():
        y = vdist.temporal_momentum(x.narrow(0, start, length), 0.98, 0, group).double()
    want = exact.narrow(0, start, length)
    # half an ulp of bf16 (2^-8 relative to the binade, so up to 2^-8 of |want|), plus fp32's share
    ratio = ((y - want).abs() / (2.0**-8 * want.abs() + 1e-6)).max().item()
    return {"kind": "match", "case": "bf16 rounded once", "ok": ratio <= 1.0, "detail": f"error / bound {ratio:.3g}"}


def _exact_edges_cases(rank, world, group):
    """Momentum exactly 0 or 1 is exact across ranks too: inf and NaN in frames that a lane ignores stay out."""
    frames = 3 * world
    x = torch.randn(frames, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x[1, :, 0] = float("inf")  # a later frame: m = 1 lanes ignore it
    x[2, 0, :] = float("nan")
    momentum = torch.tensor([0.0, 0.7, 1.0], dtype=torch.float64)
    start, length = 3 * rank, 3
    records = []
    # A float momentum as the kernels read it, rounded to the accumulation dtype: 1 - 1e-9 is exactly 1 in
    # fp32 (every frame is frame 0, however many ranks), and -0.0 is momentum 0 on every rank.
    x32 = x.float()
    y = vdist.temporal_momentum(x32.narrow(0, start, length), 1 - 1e-9, 0, group)
    ok = torch.equal(y.nan_to_num(), x32[:1].expand(length, 2, 3).nan_to_num())
    records.append({"kind": "match", "case": "fp32 momentum 1 - 1e-9 is 1", "ok": ok, "detail": f"{y.flatten()[:6]}"})
    y = vdist.temporal_momentum(x.narrow(0, start, length), -0.0 if rank else 0.0, 0, group)
    ok = torch.equal(y.nan_to_num(), x.narrow(0, start, length).nan_to_num())
    records.append({"kind": "match", "case": "momentum -0.0 and 0.0 agree", "ok": ok, "detail": f"{y.flatten()[:6]}"})
    # momentum 1 repeats a -0.0 frame 0 or initial with its sign, on every rank
    signed = x.clone()
    signed[0] = -0.0
    for initial in (None, torch.full((2, 3), -0.0, dtype=torch.float64)):
        y = vdist.temporal_momentum(signed.narrow(0, start, length), 1.0, 0, group, initial=initial)
        ok = bool((y == 0).all() and torch.signbit(y).all())
        name = f"momentum 1 keeps -0.0 ({'initial' if initial is not None else 'frame 0'})"
        records.append({"kind": "match", "case": name, "ok": ok, "detail": f"{y.flatten()[:6]}"})
    for m in (0.0, 1.0, momentum):
        y = vdist.temporal_momentum(x.narrow(0, start, length), m, 0, group)
        want = vidmem_ext.temporal_momentum(x, m, 0).narrow(0, start, length)
        if isinstance(m, torch.Tensor):  # the 0 and 1 lanes; 0.7 only agrees to rounding (another fold order)
            y, want = y[..., ::2], want[..., ::2]
        exact = torch.equal(y.isnan(), want.isnan()) and torch.equal(
            y.nan_to_num(0.0, posinf=1e300), want.nan_to_num(0.0, posinf=1e300)
        )
        name = f"momentum {m.tolist() if isinstance(m, torch.Tensor) else m}"
        records.append({"kind": "match", "case": f"exact edges, {name}", "ok": exact, "detail": f"{y} vs {want}"})
    return records


def _infinity_cases(rank, world, group):
    """An inf in frame 0 stays inf on later ranks, where m^(t+1) and the carries' m^L underflow (0 * inf)."""
    frames = 200 * world  # 0.4^200 underflows in fp32
    x = torch.randn(frames, 2, 3, generator=torch.Generator().manual_seed(6))
    x[0, :, 0] = float("inf")
    x[0, 1, 1] = -float("inf")
    start, length = 200 * rank, 200
    records = []
    for m in (0.4, torch.full((3,), 0.4)):
        xg = x.narrow(0, start, length).clone().requires_grad_()
        y = vdist.temporal_momentum(xg, m, 0, group)
        want = vidmem_ext.temporal_momentum(x, m, 0).narrow(0, start, length)
        grad_y = torch.zeros(length, 2, 3)
        if rank == world - 1:
            grad_y[-1] = float("inf")  # a is infinite from the last frame down, across the ranks
        (gx,) = torch.autograd.grad(y, xg, grad_y)
        ok = torch.equal(y.isinf(), want.isinf()) and torch.equal(y.isinf() & (y > 0), want.isinf() & (want > 0))
        ok = ok and not y.isnan().any() and gx.isinf().all().item() and not gx.isnan().any()
        name = "tensor" if isinstance(m, torch.Tensor) else "float"
        detail = f"{y.isnan().sum().item()} NaN outputs, {gx.isnan().sum().item()} NaN gradients"
        records.append({"kind": "match", "case": f"infinities, {name} momentum", "ok": ok, "detail": detail})
    # A momentum that rounds to 0 in fp32 (the accumulation dtype) is momentum 0, as the kernels read it.
    y = vdist.temporal_momentum(x.narrow(0, start, length), 1e-50, 0, group)
    ok = torch.equal(y, x.narrow(0, start, length))
    records.append({"kind": "match", "case": "momentum 1e-50 in fp32", "ok": ok, "detail": f"{y.flatten()[:6]}"})
    # Momentum 0 is exact backward too: an infinite gradient stays in its frame (no 0 * inf through carries).
    x = torch.randn(3 * world, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    grad_y = torch.zeros(3 * world, 3, dtype=torch.float64)
    grad_y[-2, 0] = float("inf")
    for m in (0.0, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64, requires_grad=True)):
        xs = x.clone().requires_grad_()
        (want,) = torch.autograd.grad(vidmem_ext.temporal_momentum(xs, m, 0), xs, grad_y)
        xl = x.narrow(0, 3 * rank, 3).clone().requires_grad_()
        (got,) = torch.autograd.grad(vdist.temporal_momentum(xl, m, 0, group), xl, grad_y.narrow(0, 3 * rank, 3))
        want = want.narrow(0, 3 * rank, 3)[:, 0]
        ok = torch.equal(got[:, 0], want)
        name = "tensor" if isinstance(m, torch.Tensor) else "float"
        records.append({"kind": "match", "case": f"momentum 0 gradient, {name}", "ok": ok, "detail": f"{got[:, 0]}"})
    return records


def _subgroup_cases(rank, world):
    """A group that excludes global rank 0: group ranks, not global ranks, order the blocks."""
    members = list(range(1, world))
    group = dist.new_group(members)  # every process must create it
    if rank not in members:  # new_group gave this process a placeholder, not a group
        return [
            _error_case(
                rank,
                group,
                "a process outside the group",
                RuntimeError,
                "not a member of the given process group",
                lambda: vdist.temporal_momentum(torch.randn(3, 4), 0.9, 0, group),
            )
        ]
    group_rank = members.index(rank)
    sizes = [3, 5][: len(members)] if len(members) == 2 else [4]
    x, momentum, initial, upstream = _make_inputs(11, 0, sum(sizes), "channel", True)
    x_ref, m_ref, init_ref = _leaf(x), _leaf(momentum), _leaf(initial)
    y_ref = vidmem_ext.temporal_momentum(x_ref, m_ref, 0, init_ref)
    (y_ref * upstream).sum().backward()
    start, length = sum(sizes[:group_rank]), sizes[group_rank]
    x_local, m_local, init_local = _leaf(x.narrow(0, start, length)), _leaf(momentum), _leaf(initial)
    y = vdist.temporal_momentum(x_local, m_local, 0, group, initial=init_local)
    (y * upstream.narrow(0, start, length)).sum().backward()
    errs = [
        _max_err(y, y_ref.narrow(0, start, length)),
        _max_err(x_local.grad, x_ref.grad.narrow(0, start, length)),
        _max_err(_reduced(m_local.grad, group), m_ref.grad),
        _max_err(_reduced(init_local.grad, group), init_ref.grad),
    ]
    return [{"kind": "match", "case": f"subgroup {members}", "ok": max(errs) < 1e-11, "detail": f"{errs}"}]


def _worker(rank: int, world: int, store_path: str, out_dir: str):
    warnings.filterwarnings("ignore", message=".*slow Python reference", category=RuntimeWarning)  # no kernels yet
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store_path}", rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT
    )
    records = []

    def run(fn, *args, **kwargs):
        try:
            out = fn(*args, **kwargs)
            records.extend(out if isinstance(out, list) else [out])
        except Exception:
            name = f"{fn.__name__}{args[3:5] if len(args) > 4 else ''}"
            records.append({"kind": "crash", "case": name, "ok": False, "detail": traceback.format_exc()})

    try:
        for sizes in SPLITS[world]:
            for name, dim, m_kind, with_initial in VARIANTS:
                run(_match_case, rank, world, None, name, sizes, dim, m_kind, with_initial)
        run(_error_cases, rank, world, None)
        run(_bytes_cases, rank, world, None)
        run(_other_cases, rank, world, None)
        run(_exact_edges_cases, rank, world, None)
        run(_infinity_cases, rank, world, None)
        if world >= 3:
            run(_subgroup_cases, rank, world)
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(records, f)
        dist.destroy_process_group()


_GROUPS: dict[int, tuple] = {}  # world -> (spawn context, output dir), started together
_RESULTS: dict[int, dict[int, list[dict]]] = {}


def _start_groups(tmp_path_factory):
    """Start the 2- and 3-process groups at once: their start-ups (importing torch) and waits overlap."""
    for world in SPLITS:
        if world not in _GROUPS:
            out_dir = str(tmp_path_factory.mktemp(f"gloo{world}"))
            store = os.path.join(out_dir, "store")
            context = mp.spawn(_worker, args=(world, store, out_dir), nprocs=world, join=False)
            _GROUPS[world] = (context, out_dir, time.monotonic() + SPAWN_TIMEOUT_S)


def _join_group(world: int) -> dict[int, list[dict]]:
    if world in _RESULTS:
        return _RESULTS[world]
    context, out_dir, deadline = _GROUPS[world]
    try:
        while not context.join(timeout=max(deadline - time.monotonic(), 0.1)):
            if time.monotonic() > deadline:
                pytest.fail(f"the {world}-process gloo group did not finish within {SPAWN_TIMEOUT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
                process.join(5)
    results = {}
    for rank in range(world):
        with open(os.path.join(out_dir, f"rank{rank}.json")) as f:
            results[rank] = json.load(f)
    _RESULTS[world] = results
    return results


@pytest.fixture(scope="module", params=sorted(SPLITS), ids=lambda w: f"world{w}")
def group_results(request, tmp_path_factory):
    _start_groups(tmp_path_factory)
    return request.param, _join_group(request.param)


@pytest.fixture(scope="module", autouse=True)
def _no_process_left_behind():
    """If a run stops early (e.g. -x), end the workers this module started and never joined."""
    yield
    for context, _, _ in _GROUPS.values():
        for process in context.processes:
            if process.is_alive():
                process.terminate()
                process.join(5)


def _check(results, kinds, minimum):
    records = [(rank, r) for rank, rs in results.items() for r in rs if r["kind"] in kinds]
    failures = [f"rank {rank} [{r['kind']}] {r['case']}: {r['detail']}" for rank, r in records if not r["ok"]]
    assert not failures, f"{len(failures)} of {len(records)} checks failed:\n" + "\n".join(failures)
    assert len(records) >= minimum, f"only {len(records)} checks ran (expected at least {minimum})"


def test_forward_and_gradients_match_single_process(group_results):
    world, results = group_results
    # every split x every variant on every rank, plus fp32/fp16/momentum-only/no-grad, 3 exact-edge cases,
    # 5 infinity cases (+ subgroup for world 3)
    _check(results, {"match", "crash"}, world * (len(SPLITS[world]) * len(VARIANTS) + 13))


def test_inconsistent_arguments_raise_the_same_error_on_every_rank(group_results):
    world, results = group_results
    _check(results, {"error"}, world * 11)


def test_communication_is_one_gather_each_way_independent_of_frames(group_results):
    world, results = group_results
    _check(results, {"bytes"}, world * 3)


def test_local_argument_errors_need_no_group():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="momentum must be in"):
        vdist.temporal_momentum(x, 1.5)
    with pytest.raises(IndexError, match="out of range"):
        vdist.temporal_momentum(x, 0.9, dim=2)
    with pytest.raises(ValueError, match="does not broadcast"):
        vdist.temporal_momentum(x, torch.rand(4), dim=0)
    with pytest.raises(ValueError, match="frame-slice shape"):
        vdist.temporal_momentum(x, 0.9, initial=torch.zeros(4))
    with pytest.raises(TypeError, match="floating"):
        vdist.temporal_momentum(x.long(), 0.9)
    with pytest.raises(TypeError, match="group must be a torch.distributed.ProcessGroup or None, got Tensor"):
        vdist.temporal_momentum(x, 0.9, 0, torch.zeros(3))  # initial passed fourth, as the single-process op takes it
    if not dist.is_initialized():
        with pytest.raises(RuntimeError, match="init_process_group"):
            vdist.temporal_momentum(x, 0.9)


def test_reachable_from_the_package():
    import vidmem_ext.distributed

    assert vidmem_ext.distributed.temporal_momentum is vdist.temporal_momentum
