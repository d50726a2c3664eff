"""Frame-sharded temporal momentum over torch.distributed: time per call and bytes communicated.

Run with torchrun, one process per rank (gloo on CPU, nccl on GPUs):

    torchrun --nproc_per_node 2 benchmarks/dist_momentum.py                  # 128 frames, slice 2x256x64, fp32
    torchrun --nproc_per_node 4 benchmarks/dist_momentum.py --frames 256 --slice 2,1024,64 --dtype bfloat16
    torchrun --nproc_per_node 2 benchmarks/dist_momentum.py --quick          # small and fast
    torchrun --nproc_per_node 3 benchmarks/dist_momentum.py --split 60,0,68  # uneven blocks, one empty

Each rank holds frames/N frames (the remainder goes to the last ranks), or the blocks
given by --split. Reported
per call, as the median over repeats of the slowest rank:
- distributed: vidmem_ext.distributed.temporal_momentum, forward and forward+backward;
- local only: the single-process op on this rank's block alone (no exchange, not the
  right answer across blocks): the baseline, so distributed / local is the price of
  the exchange;
- gather all: all-gather every frame, run the op on the whole video, keep the own block
  (forward only): what the exchange avoids.
Bytes are measured from the gathered tensors (vidmem_ext.distributed.record_communication
for ours, the gathered video for the naive way). Before timing, every rank checks its
block against the single-process op on the whole video (built from a common seed).
Rank 0 prints a table and writes benchmarks/results/dist_momentum_w<N>_<device>.{json,md}
(dist_momentum_quick_w<N>_... with --quick). Bad options are usage errors (exit 2) before any
process group starts.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's vidmem_ext

from _timing import device_name, median_time, write_results  # noqa: E402  (benchmarks/ is the script dir)

import vidmem_ext  # noqa: E402
from vidmem_ext import _backend  # noqa: E402
from vidmem_ext import distributed as vdist  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def block_sizes(frames: int, world: int) -> list[int]:
    base, extra = divmod(frames, world)
    return [base + (1 if r >= world - extra else 0) for r in range(world)]


def max_over_ranks(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def check_against_single_process(device, dtype, slice_shape, world, rank):
    """Each rank's block (forward and dx) equals the single-process op over the whole video."""
    frames = 3 * world + 1
    gen = torch.Generator().manual_seed(1234)
    video = torch.randn(frames, *slice_shape, generator=gen, dtype=torch.float64).to(device)
    upstream = torch.randn(video.shape, generator=gen, dtype=torch.float64).to(device)
    sizes = block_sizes(frames, world)
    start = sum(sizes[:rank])
    full = video.clone().requires_grad_(True)
    (vidmem_ext.temporal_momentum(full, 0.9, 0) * upstream).sum().backward()
    local = video.narrow(0, start, sizes[rank]).clone().requires_grad_(True)
    y = vdist.temporal_momentum(local, 0.9, 0)
    (y * upstream.narrow(0, start, sizes[rank])).sum().backward()
    ref = vidmem_ext.temporal_momentum(video, 0.9, 0).narrow(0, start, sizes[rank])
    err = max((y - ref).abs().max().item(), (local.grad - full.grad.narrow(0, start, sizes[rank])).abs().max().item())
    err = max_over_ranks(err)
    if err > 1e-10:
        raise SystemExit(f"distributed result differs from the single-process op by {err:.3g} (fp64)")
    return err


def check_arguments(parser: argparse.ArgumentParser, args) -> None:
    """Defaults (--quick's where not given) and usage errors (exit 2), before any process group starts."""
    quick = {"frames": 32, "slice": "1,256,64", "repeats": 5}
    full = {"frames": 128, "slice": "2,256,64", "repeats": 10}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not 1 <= args.frames <= 1 << 20:
        parser.error(f"--frames must be in [1, {1 << 20}], got {args.frames}")
    if not 1 <= args.repeats <= 1000:
        parser.error(f"--repeats must be in [1, 1000], got {args.repeats}")
    if not 0.0 <= args.momentum <= 1.0:  # also refuses nan
        parser.error(f"--momentum must be in [0, 1], got {args.momentum}")
    try:
        args.slice_shape = tuple(int(s) for s in args.slice.split(","))
    except ValueError:
        parser.error(f"--slice must be sizes separated by commas, e.g. 2,256,64, got {args.slice!r}")
    if not args.slice_shape or min(args.slice_shape) < 1:
        parser.error(f"--slice sizes must be >= 1, got {args.slice!r}")
    if args.split is not None:
        try:
            args.sizes = [int(s) for s in args.split.split(",")]
        except ValueError:
            parser.error(f"--split must be block sizes separated by commas, e.g. 60,0,68, got {args.split!r}")
        world = int(os.environ.get("WORLD_SIZE", len(args.sizes)))  # torchrun sets it
        if len(args.sizes) != world or min(args.sizes) < 0 or sum(args.sizes) < 1:
            parser.error(f"--split needs {world} block sizes >= 0 (one per rank, not all 0), got {args.split!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=None, help="frames of the whole video (default 128)")
    parser.add_argument("--split", default=None, help="frames per rank, e.g. 60,0,68 (overrides --frames)")
    parser.add_argument(
        "--slice", default=None, help="frame-slice shape, e.g. batch,tokens,channels (default 2,256,64)"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--momentum", type=float, default=0.98)
    parser.add_argument("--repeats", type=int, default=None, help="default 10")
    parser.add_argument("--backend", choices=["gloo", "nccl"], default=None, help="default: nccl with CUDA, else gloo")
    parser.add_argument(
        "--quick", action="store_true", help="defaults of 32 frames, slice 1,256,64, 5 repeats; writes *_quick_* files"
    )
    parser.add_argument("--no-write", action="store_true", help="print only, do not write benchmarks/results")
    args = parser.parse_args()
    check_arguments(parser, args)

    backend = args.backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    dtype, slice_shape = DTYPES[args.dtype], args.slice_shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fallback notice; reported in the notes instead
        check_error = check_against_single_process(device, torch.float64, slice_shape[-1:], world, rank)

        sizes = block_sizes(args.frames, world)
        if args.split is not None:
            sizes = args.sizes
            args.frames = sum(sizes)
        x = torch.randn(sizes[rank], *slice_shape, device=device, dtype=dtype)
        grad_out = torch.randn_like(x)
        x_grad = x.clone().requires_grad_(True)
        m = args.momentum

        def dist_forward():
            with torch.no_grad():
                return vdist.temporal_momentum(x, m, 0)

        def dist_forward_backward():
            return torch.autograd.grad(vdist.temporal_momentum(x_grad, m, 0), x_grad, grad_out)

        def local_forward():
            with torch.no_grad():
                return vidmem_ext.temporal_momentum(x, m, 0)

        def local_forward_backward():
            return torch.autograd.grad(vidmem_ext.temporal_momentum(x_grad, m, 0), x_grad, grad_out)

        # The naive way: every rank gathers the whole video (blocks padded to the largest, as all_gather needs).
        padded = torch.zeros(max(sizes), *slice_shape, device=device, dtype=dtype)
        gathered = torch.empty(world * max(sizes), *slice_shape, device=device, dtype=dtype)

        def gather_all_forward():
            with torch.no_grad():
                padded[: sizes[rank]].copy_(x)
                (getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor)(gathered, padded)
                video = torch.cat([gathered[q * max(sizes) : q * max(sizes) + sizes[q]] for q in range(world)])
                return vidmem_ext.temporal_momentum(video, m, 0).narrow(0, sum(sizes[:rank]), sizes[rank])

        with vdist.record_communication() as log:
            dist_forward_backward()
        # The forward's bytes include the 128-byte header, exchanged in a collective of its own before the payload.
        header = next(e for e in log if e["direction"] == "header")
        fwd_bytes = dict(next(e for e in log if e["direction"] == "forward"))
        for key in ("sent_bytes", "gathered_bytes"):
            fwd_bytes[key] += header[key]
        bwd_bytes = next(e for e in log if e["direction"] == "backward")

        def timed(fn):
            dist.barrier()
            return max_over_ranks(median_time(fn, device, repeats=args.repeats, warmup=2))

        t_local_f, t_local_fb = timed(local_forward), timed(local_forward_backward)
        t_dist_f, t_dist_fb = timed(dist_forward), timed(dist_forward_backward)
        t_gather_f = timed(gather_all_forward)

    esize = torch.empty((), dtype=dtype).element_size()
    naive_bytes = world * max(sizes) * torch.Size(slice_shape).numel() * esize
    common = {
        "world": world,
        "frames": args.frames,
        "blocks": ",".join(map(str, sizes)),
        "slice": "x".join(map(str, slice_shape)),
    }
    rows = [
        {
            **common,
            "method": "distributed (ours)",
            "fwd_ms": t_dist_f * 1e3,
            "fwd_bwd_ms": t_dist_fb * 1e3,
            "bwd_ms": (t_dist_fb - t_dist_f) * 1e3,
            "fwd_vs_local": t_dist_f / t_local_f,
            "fwd_bwd_vs_local": t_dist_fb / t_local_fb,
            "fwd_sent_B": fwd_bytes["sent_bytes"],
            "fwd_received_B": fwd_bytes["gathered_bytes"],
            "bwd_sent_B": bwd_bytes["sent_bytes"],
            "bwd_received_B": bwd_bytes["gathered_bytes"],
        },
        {
            **common,
            "method": "local only (baseline, no exchange)",
            "fwd_ms": t_local_f * 1e3,
            "fwd_bwd_ms": t_local_fb * 1e3,
            "bwd_ms": (t_local_fb - t_local_f) * 1e3,
            "fwd_vs_local": 1.0,
            "fwd_bwd_vs_local": 1.0,
            "fwd_sent_B": 0,
            "fwd_received_B": 0,
            "bwd_sent_B": 0,
            "bwd_received_B": 0,
        },
        {
            **common,
            "method": "gather all frames (naive, forward)",
            "fwd_ms": t_gather_f * 1e3,
            "fwd_vs_local": t_gather_f / t_local_f,
            "fwd_sent_B": naive_bytes // world,
            "fwd_received_B": naive_bytes,
        },
    ]
    columns = ["method", "world", "frames", "blocks", "slice", "fwd_ms", "fwd_bwd_ms", "bwd_ms"]
    columns += ["fwd_vs_local", "fwd_bwd_vs_local", "fwd_sent_B", "fwd_received_B", "bwd_sent_B", "bwd_received_B"]
    local_op = "Python reference fallback" if device.type in _backend.fallbacks()["temporal_momentum"] else "kernel"
    notes = (
        f"torchrun --nproc_per_node {world}, backend {backend}, {args.dtype}, momentum {m}, "
        f"median of {args.repeats} (slowest rank). Local scans: {local_op}. "
        f"Bytes per call and rank: sent = one message, received = the gathered tensor (world x message). "
        f"Checked against the single-process op (fp64): max error {check_error:.2g}."
    )
    if rank == 0:
        print(f"# dist_momentum on {device_name(device)}: {notes}")
        print(" | ".join(columns))
        for row in rows:
            print(
                " | ".join(f"{row[c]:.4g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns)
            )
        if not args.no_write:
            stem = f"dist_momentum{'_quick' if args.quick else ''}_w{world}"  # --quick never replaces the record
            paths = write_results(stem, device, rows, columns, notes)
            print("wrote", *paths)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
