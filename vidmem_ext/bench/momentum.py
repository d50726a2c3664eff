"""Temporal momentum against x.clone(), its references and the peers, forward and forward+backward.

Implementations, each timed on the same data:
  vidmem_ext      the fused op (through autograd for forward+backward);
  loop            reference.temporal_momentum_loop (one PyTorch step per frame);
  matrix          reference.temporal_momentum_matrix (skipped where F x F x lanes is over a budget);
  compiled loop   torch.compile of the loop (skipped for F > 64, where it unrolls too far, and in --quick);
  accelerated-scan warp / triton, fla hgrn chunk / fused_recurrent (CUDA only, when importable): each in
                  its own layout, (1, lanes, F) for accelerated-scan and (1, F, lanes) for HGRN, with gates
                  and tokens prepared outside the timing.
Useful bytes: forward reads x and writes y (as a clone does); forward+backward also reads dy and
writes dx. `x_clone` is the time over the clone time of the same tensor in the same run, and
`of_clone_bw` the fraction of clone bandwidth (bytes ratio / time ratio).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import reference
from .timing import MAPPED_LIMIT_BYTES, allocation_mode, alternating, median_time

MOMENTUM = 0.98


@dataclass(frozen=True)
class Layout:
    label: str
    size: tuple[int, ...]
    dim: int


# Issue 13's layouts, about 25 MB in fp32 each (under glibc's 32 MB mmap threshold, so memory stays
# mapped), at 16 frames and at 1024 frames (4096 for the long frames-last case).
LAYOUTS = [
    Layout("(F,B,N,C) F=16", (16, 2, 1024, 192), 0),
    Layout("(B,F,N,C) F=16", (2, 16, 1024, 192), 1),
    Layout("(B,C,F,H,W) F=16", (2, 16, 16, 40, 60), 2),
    Layout("(B,F,C,H,W) F=16", (2, 16, 4, 96, 128), 1),
    Layout("frames last F=16", (393216, 16), -1),
    Layout("(F,B,N,C) F=1024", (1024, 2, 16, 192), 0),
    Layout("(B,F,N,C) F=1024", (2, 1024, 16, 192), 1),
    Layout("(B,C,F,H,W) F=1024", (2, 16, 1024, 12, 16), 2),
    Layout("(B,F,C,H,W) F=1024", (2, 1024, 4, 24, 32), 1),
    Layout("frames last 1536x4096", (1536, 4096), -1),
]
# CUDA: also a size that fills the memory bandwidth (672 MB in fp32, many times any L2).
CUDA_LAYOUTS = [*LAYOUTS, Layout("(F,B,N,C) F=16 large", (16, 8, 4096, 320), 0)]
QUICK_LAYOUTS = [
    Layout("(F,B,N,C) F=16", (16, 2, 64, 32), 0),
    Layout("(B,F,N,C) F=16", (2, 16, 64, 32), 1),
    Layout("(B,C,F,H,W) F=16", (2, 4, 16, 8, 12), 2),
    Layout("(B,F,C,H,W) F=16", (2, 16, 4, 8, 12), 1),
    Layout("frames last 96x256", (96, 256), -1),
]

PEER_INSTALL = {"accelerated-scan": "pip install accelerated-scan", "fla": "pip install fla-core"}
# Every implementation a momentum row can name (--impls chooses among these).
IMPLEMENTATIONS = (
    "vidmem_ext",
    "loop",
    "matrix",
    "compiled loop",
    "accelerated-scan warp",
    "accelerated-scan triton",
    "fla hgrn chunk",
    "fla hgrn fused_recurrent",
)
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def default_dtypes(device: torch.device, quick: bool = False) -> list[torch.dtype]:
    # fp16 matters on the CPU (its own conversion path); on CUDA bf16 and fp32 are what models use.
    return [torch.float32, torch.bfloat16] + ([torch.float16] if device.type == "cpu" and not quick else [])


def load_peers(only=None) -> dict[str, object]:
    """Importable peer scans by name, or the reason each is missing (a str). With `only` (a set of
    implementation names), only the peers named there are imported: accelerated-scan's warp scan
    compiles a CUDA extension on its first import, which a run that leaves it out should not pay."""
    peers: dict[str, object] = {}
    wanted = lambda *names: only is None or any(name in only for name in names)  # noqa: E731
    if wanted("accelerated-scan warp"):
        peers.update(_load_accelerated_scan_warp())
    if wanted("accelerated-scan triton"):
        peers.update(_load_accelerated_scan_triton())
    if wanted("fla hgrn chunk", "fla hgrn fused_recurrent"):
        peers.update(_load_fla())
    return peers


def _load_accelerated_scan_warp() -> dict[str, object]:
    peers: dict[str, object] = {}
    try:
        from accelerated_scan.warp import scan as warp_scan  # type: ignore[import-not-found]

        peers["accelerated-scan warp"] = warp_scan
    except Exception as exc:  # noqa: BLE001 - not installed, or its CUDA extension failed to build
        peers["accelerated-scan warp"] = f"not importable ({type(exc).__name__}); {PEER_INSTALL['accelerated-scan']}"
    return peers


def _load_accelerated_scan_triton() -> dict[str, object]:
    peers: dict[str, object] = {}
    try:
        try:
            from accelerated_scan.triton import scan as triton_scan  # type: ignore[import-not-found]
        except ModuleNotFoundError:  # 0.3 renamed its Triton scan to accelerated_scan.scalar
            from accelerated_scan.scalar import scan as triton_scan  # type: ignore[import-not-found]

        peers["accelerated-scan triton"] = triton_scan
    except Exception as exc:  # noqa: BLE001
        peers["accelerated-scan triton"] = f"not importable ({type(exc).__name__}); {PEER_INSTALL['accelerated-scan']}"
    return peers


def _load_fla() -> dict[str, object]:
    peers: dict[str, object] = {}
    try:
        from fla.ops.hgrn import chunk_hgrn, fused_recurrent_hgrn  # type: ignore[import-not-found]

        peers["fla hgrn chunk"] = chunk_hgrn
        peers["fla hgrn fused_recurrent"] = fused_recurrent_hgrn
    except Exception as exc:  # noqa: BLE001
        for name in ("fla hgrn chunk", "fla hgrn fused_recurrent"):
            peers[name] = f"not importable ({type(exc).__name__}); {PEER_INSTALL['fla']}"
    return peers


def _op(x, dim, momentum=MOMENTUM):
    from .. import temporal_momentum

    return temporal_momentum(x, momentum, dim)


def _peer_inputs(name: str, x: torch.Tensor, dim: int):
    """Gates, tokens and a function back to x's layout, in the peer's own layout (prepared once)."""
    frames = x.shape[dim]
    lanes_first = x.movedim(dim, -1).reshape(1, -1, frames)  # (1, lanes, F): accelerated-scan
    if name.startswith("accelerated-scan"):
        if frames & (frames - 1) or frames < 32:
            raise ValueError(f"needs a power-of-two sequence length >= 32, F = {frames}")
        tokens = ((1 - MOMENTUM) * lanes_first).contiguous()
        tokens[..., 0] = lanes_first[..., 0]  # y_0 = x_0
        gates = torch.full_like(tokens, MOMENTUM)
        gates[..., 0] = 0
        return (gates, tokens), lambda out: out
    frames_first = lanes_first.transpose(1, 2).contiguous()  # (1, F, lanes): HGRN
    tokens = (1 - MOMENTUM) * frames_first
    tokens[:, 0] = frames_first[:, 0]
    log_gates = torch.full_like(tokens, math.log(MOMENTUM))
    return (tokens, log_gates), lambda out: (out[0] if isinstance(out, tuple) else out).transpose(1, 2)


def _call_peer(name, fn, args):
    return fn(*args) if name.startswith("accelerated-scan") else fn(*args)[0]


def layouts_for(device: torch.device, quick: bool) -> list[Layout]:
    return QUICK_LAYOUTS if quick else CUDA_LAYOUTS if device.type == "cuda" else LAYOUTS


def measure(layout: Layout, dtype: torch.dtype, device: torch.device, *, quick: bool, compile_loop: bool, peers,
            only=None):  # fmt: skip
    """Rows for one layout and dtype: every implementation (or those named in `only`), forward and
    forward+backward."""
    rows: list[dict] = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(layout.size, generator=gen).to(dtype).to(device)
    grad_y = torch.randn(layout.size, generator=gen).to(dtype).to(device)
    xg = x.detach().requires_grad_()
    numel, elsize = x.numel(), x.element_size()
    dim = layout.dim % x.dim()
    frames = x.shape[dim]
    lanes = numel // frames
    cpu = device.type == "cpu"
    repeats = 3 if quick else (20 if not cpu else 7)
    clone = lambda: x.clone()  # noqa: E731
    t_clone = None if cpu else median_time(clone, device, repeats=repeats)
    # glibc maps a request of the threshold less its chunk header fresh as well: keep a margin
    mapped_note = "memory stays mapped" if numel * elsize < MAPPED_LIMIT_BYTES - 4096 else "over 32 MiB: mapped fresh"

    def add(impl, mode, seconds=None, ratio=None, note="", fresh_ratio=None):
        moved = (2 if mode == "fwd" else 4) * numel * elsize
        if seconds is not None and ratio is None:
            ratio = seconds / t_clone
        rows.append(
            {
                "op": "momentum",
                "case": layout.label,
                "size": "x".join(map(str, layout.size)),
                "dim": dim,
                "dtype": str(dtype).replace("torch.", ""),
                "impl": impl,
                "mode": mode,
                "median_ms": None if seconds is None else seconds * 1e3,
                "x_clone": ratio,
                "of_clone_bw": None if ratio is None else (moved / (2 * numel * elsize)) / ratio,
                "fresh_x_clone": fresh_ratio,
                "note": note,
            }
        )

    def timed(run, n=repeats):
        if not cpu:
            return median_time(run, device, repeats=n, warmup=2 if n > 5 else 1), None
        return alternating(clone, run, repeats=n, warmup=1)

    expected = reference.temporal_momentum_loop(x, MOMENTUM, dim)
    tol = TOLERANCE[dtype]
    expected_grad = None  # the loop reference's dx, computed once, when an implementation's forward passes

    def close(got, want):
        scale = max(1.0, want.float().abs().max().item()) if want.numel() else 1.0
        return torch.allclose(got.float(), want.float(), rtol=tol, atol=tol * scale)

    impls = [("vidmem_ext", lambda t: _op(t, dim))]
    impls.append(("loop", lambda t: reference.temporal_momentum_loop(t, MOMENTUM, dim)))
    if frames * frames * lanes <= (2e13 if not cpu else 2e9):
        impls.append(("matrix", lambda t: reference.temporal_momentum_matrix(t, MOMENTUM, dim)))
    else:
        add("matrix", "fwd", note="skipped: F*F*lanes multiply-adds over the budget")
    if not compile_loop:
        add("compiled loop", "fwd", note="skipped (--quick or --no-compile)")
    elif frames > 64:
        add("compiled loop", "fwd", note="skipped: torch.compile unrolls F steps")
    else:
        impls.append(("compiled loop", _compiled_loop(dim)))

    if only is not None:
        impls = [(impl, fn) for impl, fn in impls if impl in only]
        rows[:] = [r for r in rows if r["impl"] in only]
        peers = {name: peer for name, peer in peers.items() if name in only}
    for impl, fn in impls:
        try:
            got = fn(x)
        except Exception as exc:  # noqa: BLE001 - e.g. torch.compile failing on this build: report, go on
            add(impl, "fwd", note=f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
            continue
        if not torch.allclose(got.float(), expected.float(), rtol=tol, atol=tol):
            add(impl, "fwd", note="skipped: result differs from the loop reference")  # never time a wrong result
            continue
        if expected_grad is None:
            expected_grad = torch.autograd.grad(reference.temporal_momentum_loop(xg, MOMENTUM, dim), xg, grad_y)[0]
        # The references take thousands of launches (GPU) or seconds (CPU) on long sequences: fewer runs.
        n = repeats if impl in ("vidmem_ext", "compiled loop") else min(repeats, 5)
        modes = [("fwd", lambda fn=fn: fn(x))]
        if close(torch.autograd.grad(fn(xg), xg, grad_y)[0], expected_grad):
            modes.append(("fwd+bwd", lambda fn=fn: torch.autograd.grad(fn(xg), xg, grad_y)))
        else:
            add(impl, "fwd+bwd", note="skipped: gradient differs from the loop reference's")
        for mode, run in modes:
            seconds, ratio = timed(run, n)
            fresh = None
            if cpu and impl == "vidmem_ext":
                with allocation_mode("fresh") as ok:
                    fresh = alternating(clone, run, repeats=repeats, warmup=1)[1] if ok else None
            add(impl, mode, seconds, ratio, note=mapped_note if cpu else "", fresh_ratio=fresh)
        if impl == "vidmem_ext":  # with a momentum tensor, the backward also needs x and y (for dm)
            m = torch.full(x.shape[:dim] + x.shape[dim + 1 :], MOMENTUM, device=device, dtype=dtype)
            m.requires_grad_()
            run = lambda m=m: torch.autograd.grad(_op(xg, dim, m), (xg, m), grad_y)  # noqa: E731
            m_ref = m.detach().float().requires_grad_()
            want = torch.autograd.grad(
                reference.temporal_momentum_loop(xg.float(), m_ref, dim), (m_ref,), grad_y.float()
            )
            got_dx, got_dm = run()
            if close(got_dx, expected_grad) and close(got_dm, want[0]):
                seconds, ratio = timed(run)
                add(impl, "fwd+bwd m tensor", seconds, ratio, note="momentum tensor requiring grad")
            else:
                add(impl, "fwd+bwd m tensor", note="skipped: gradient differs from the loop reference's")

    def time_peer(name, peer):
        args, back = _peer_inputs(name, x, dim)
        out = back(_call_peer(name, peer, args))
        want = expected.movedim(dim, -1).reshape(1, -1, frames).float()
        if not torch.allclose(out.float(), want, rtol=tol * 10, atol=tol * 10):
            add(name, "fwd", note="skipped: result differs from the loop reference")  # never time a wrong result
            return
        note = "gates and tokens prepared outside the timing"
        add(name, "fwd", *timed(lambda: _call_peer(name, peer, args)), note=note)
        try:
            leaves = [a.detach().requires_grad_() for a in args]
            grad_out = torch.randn_like(_call_peer(name, peer, leaves))
            add(name, "fwd+bwd", *timed(lambda: torch.autograd.grad(_call_peer(name, peer, leaves), leaves, grad_out)),
                note=f"{note}; gradients of gates and tokens (vidmem_ext's fwd+bwd: of x alone)")  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - reported on the fwd+bwd row, the fwd row stands
            add(name, "fwd+bwd", note=f"skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")

    for name, peer in peers.items():
        if isinstance(peer, str):
            add(name, "fwd", note=f"skipped: {peer}")
            continue
        if cpu:
            add(name, "fwd", note="skipped: CUDA only")
            continue
        try:
            time_peer(name, peer)
        except Exception as exc:  # noqa: BLE001 - a peer's limits (length, dtype) are reported, not fatal
            add(name, "fwd", note=f"skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
    return rows


def _compiled_loop(dim: int):
    torch._dynamo.reset()  # a fresh cache per case: no recompile limit, no dynamic-shape surprises
    compiled = torch.compile(reference.temporal_momentum_loop)
    return lambda t: compiled(t, MOMENTUM, dim)


def cases(device: torch.device, *, quick: bool, dtypes=None, compile_loop: bool = True, impls=None):
    """(label, thunk) pairs; each thunk returns the rows of one layout and dtype."""
    peers = load_peers(impls)
    out = []
    for layout in layouts_for(device, quick):
        for dtype in dtypes or default_dtypes(device, quick):
            label = f"momentum {layout.label} {str(dtype).replace('torch.', '')}"
            thunk = lambda layout=layout, dtype=dtype: measure(  # noqa: E731
                layout, dtype, device, quick=quick, compile_loop=compile_loop and not quick, peers=peers, only=impls
            )
            out.append((label, thunk))
    return out


def goals(rows: list[dict], device: torch.device) -> list[str]:
    """The performance goals (issues 13 and 16) as lines: each with its measured ratio and met / NOT met."""
    lines = []
    cpu_targets = {"float32": 1.15, "bfloat16": 1.3, "float16": 1.3}  # issue 13 sets none for float64
    for r in rows:
        if r["op"] == "momentum" and r["impl"] == "-":  # a whole case the --budget skipped: its goals unmeasured
            lines.append(f"{r['case']}: not measured ({r['note']}) NOT met")
            continue
        if r["op"] != "momentum" or r["impl"] != "vidmem_ext":
            continue
        if device.type == "cuda" and r["mode"] in ("fwd", "fwd+bwd"):
            target, figure, what = (0.85 if r["mode"] == "fwd" else 0.70), r["of_clone_bw"], " of clone bandwidth"
            goal = f"goal >= {target}"
        elif device.type == "cpu" and r["mode"] == "fwd" and r["dtype"] in cpu_targets:
            target, figure, what = cpu_targets[r["dtype"]], r["x_clone"], "x clone time"
            goal = f"goal <= {target}"
        elif device.type == "cpu" and r["mode"] == "fwd+bwd" and r["dtype"] == "float32":
            target, figure, what, goal = 2.6, r["x_clone"], "x clone time", "goal <= 2.6"
        else:
            continue
        head = f"momentum {r['mode']} {r['case']} {r['dtype']}"
        if figure is None:  # skipped or failed: the goal is not met, and the line says why
            lines.append(f"{head}: not measured ({r['note'] or 'no figure'}) ({goal}) NOT met")
            continue
        ok = figure >= target if goal.startswith("goal >=") else figure <= target
        lines.append(f"{head}: {figure:.3f}{what} ({goal}) {'met' if ok else 'NOT met'}")
    # Faster than the peers and the compiled loop, each on its own layout: on the CPU by the ratios to
    # clone time measured in each one's own alternating blocks (absolute times come minutes apart on a
    # shared machine), on CUDA by the event-timed medians.
    figure_of = "x_clone" if device.type == "cpu" else "median_ms"
    best = {}
    for r in rows:
        if r["op"] == "momentum" and r.get(figure_of) is not None:
            best.setdefault((r["case"], r["dtype"], r["mode"]), {})[r["impl"]] = r[figure_of]
    for (case, dtype, mode), times in best.items():
        ours = times.get("vidmem_ext")
        for other in ("compiled loop", *[k for k in times if k.startswith(("accelerated-scan", "fla"))]):
            if ours is not None and other in times:
                ok = ours <= times[other]
                lines.append(f"momentum {mode} {case} {dtype}: {times[other] / ours:.3f}x faster than {other} "
                             f"{'met' if ok else 'NOT met'}")  # fmt: skip
    return lines
