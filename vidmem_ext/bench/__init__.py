"""`python -m vidmem_ext bench`: time every op against its references and peers, on CPU or CUDA.

    python -m vidmem_ext bench [--device cpu|cuda] [--ops momentum,noise,packer,attention] [--quick] [--out DIR]

Prints a table with the device name, torch version and build, and writes bench.json, bench.md and
bench.png (fraction of x.clone() bandwidth per shape and implementation) to --out. Peers that are
not installed are reported as skipped, with the command that installs them. The scripts in
benchmarks/ call the same functions (vidmem_ext.bench.momentum, .noise, .packer, .attention).
"""

from __future__ import annotations

import argparse
import math
import os
import time

OPS = ("momentum", "noise", "packer", "attention")
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp64": "float64"}
# Bounds that keep a typo from running for hours (a full CPU run takes minutes; 5 runs are what the
# records use) or asking torch for absurd thread counts.
MAX_RUNS = 100
MAX_THREADS = 1024
# The compiled op each benchmarked op runs (the packer is plain PyTorch).
_KERNEL_OF_OP = {"momentum": "temporal_momentum", "attention": "temporal_momentum", "noise": "dependency_noise"}


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repeats (a smoke run, under a minute)")
    parser.add_argument("--out", default="vidmem_ext_bench", help="folder for bench.json, bench.md, bench.png")
    parser.add_argument("--dtypes", default=None, help="comma-separated, e.g. fp32,bf16 (default: per op)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile of the momentum loop")
    parser.add_argument("--stem", default="bench", help="file name stem of the results (default: bench)")
    parser.add_argument("--impls", default=None, help="momentum: only these implementations (e.g. vidmem_ext)")
    parser.add_argument("--budget", type=float, default=None, help="seconds; cases past it are reported as skipped")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--runs", type=int, default=1,
                        help="run every case this many times; each figure is the median over the runs")  # fmt: skip


def parse_dtypes(text: str | None):
    import torch

    from .._checks import float_dtypes

    if not text:
        return None
    out = []
    for name in text.split(","):
        full = DTYPE_NAMES.get(name.strip(), name.strip())
        dtype = getattr(torch, full, None)
        if dtype not in float_dtypes():
            raise ValueError(f"--dtypes: unknown floating dtype {name!r} (use fp32, bf16, fp16, fp64)")
        out.append(dtype)
    return out


def collect(device, ops, *, quick: bool, dtypes=None, compile_loop: bool = True, progress: bool = True,
            impls=None, budget: float | None = None):  # fmt: skip
    """Run the chosen ops' cases; return (rows, goal lines). Cases that start after `budget` seconds
    are reported as skipped rows."""
    from . import attention, momentum, noise, packer
    from .timing import Progress

    modules = {"momentum": momentum, "noise": noise, "packer": packer, "attention": attention}
    plan = []
    for op in ops:
        kwargs = {"quick": quick, "dtypes": dtypes}
        if op == "momentum":
            kwargs.update(compile_loop=compile_loop, impls=impls)
        plan += [(op, label, thunk) for label, thunk in modules[op].cases(device, **kwargs)]
    bar = Progress(len(plan), enabled=progress)
    rows = []
    start = time.perf_counter()
    try:
        for op, label, thunk in plan:
            if budget is not None and time.perf_counter() - start > budget:
                # every key a measured row has, so that the goals and the report read it safely
                rows.append({"op": op, "case": label, "dtype": "-", "impl": "-", "mode": "-", "median_ms": None,
                             "x_clone": None, "of_clone_bw": None, "fresh_x_clone": None,
                             "note": f"skipped: past the --budget of {budget:g} s"})  # fmt: skip
            else:
                rows += thunk()
            bar.step(label)
    finally:
        bar.close()
    if quick:  # tiny shapes measure overheads, not the goals
        return rows, ["goals not evaluated: --quick uses tiny shapes"]
    return rows, momentum.goals(rows, device) + noise.goals(rows, device)


def median_rows(runs: list[list[dict]]) -> list[dict]:
    """One row per case of the first run; each numeric figure is the median of that case's figure over
    the runs that have it (a shared machine's L3 and memory bandwidth change from minute to minute)."""
    import statistics

    def key(row):
        return tuple(row.get(k) for k in ("op", "case", "size", "dtype", "impl", "mode"))

    def number(value) -> bool:
        return isinstance(value, float) and value == value  # NaN would make the median depend on the order

    merged = []
    for row in runs[0]:
        same = [r for rows in runs for r in rows if key(r) == key(row)]
        # A run whose result was wrong (or failed) is not outvoted by the others: the row says so.
        wrong_notes = ("skipped: result differs", "skipped: gradient", "failed")
        wrong = [r for r in same if r.get("wrong") or str(r.get("note", "")).startswith(wrong_notes)]
        if wrong:
            merged.append({**wrong[0], "note": f"{wrong[0]['note']} (in {len(wrong)} of {len(runs)} runs)"})
            continue
        out = dict(row)
        for name, value in row.items():
            if isinstance(value, float):
                values = [r[name] for r in same if number(r.get(name))]
                out[name] = statistics.median(values) if values else None
        # bandwidth from the merged ratio (the median of 1/x is not 1/median(x) for an even count)
        if number(row.get("x_clone")) and number(row.get("of_clone_bw")) and out.get("x_clone"):
            out["of_clone_bw"] = row["of_clone_bw"] * row["x_clone"] / out["x_clone"]
        if len(runs) > 1 and out.get("note") and any(c.isdigit() for c in str(out["note"])):
            out["note"] = f"{out['note']} (note of the first run)"
        merged.append(out)
    return merged


def _check_arguments(args, parser: argparse.ArgumentParser):
    """(ops, dtypes, impls) from args; any bad option is a usage error (exit 2) before anything runs or is written."""
    from ..demo_model import check_out_dir, name_max
    from .momentum import IMPLEMENTATIONS

    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    unknown = [op for op in ops if op not in OPS]
    if unknown or not ops:
        given = ", ".join(unknown) or "(none given)"
        parser.error(f"--ops: unknown op(s) {given}; choose from {', '.join(OPS)}")
    try:
        dtypes = parse_dtypes(args.dtypes)
    except ValueError as exc:
        parser.error(str(exc))
    impls = None
    if args.impls is not None:
        impls = {name.strip() for name in args.impls.split(",") if name.strip()}
        wrong = sorted(impls - set(IMPLEMENTATIONS))
        if wrong or not impls:
            parser.error(f"--impls: unknown implementation(s) {', '.join(wrong) or '(none given)'}; "
                         f"choose from {', '.join(IMPLEMENTATIONS)}")  # fmt: skip
        if "momentum" not in ops:
            parser.error("--impls selects momentum implementations, but --ops has no momentum")
    if not 1 <= args.runs <= MAX_RUNS:
        parser.error(f"--runs must be in [1, {MAX_RUNS}], got {args.runs}")
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        parser.error(f"--threads must be in [1, {MAX_THREADS}], got {args.threads}")
    if args.budget is not None and not (math.isfinite(args.budget) and args.budget >= 0):
        parser.error(f"--budget must be a finite number of seconds >= 0, got {args.budget}")
    stem = args.stem
    if not stem or stem in (".", "..") or "/" in stem or os.sep in stem or stem.startswith("."):
        parser.error(f"--stem must be a plain file name (no folder, not hidden), got {stem!r}")
    check_out_dir(parser, args.out)
    longest = f"{stem}.json"  # and .md, .png
    if len(os.fsencode(longest)) > name_max(args.out):
        parser.error(f"--stem is too long for a file name here ({len(longest)} characters with .json)")
    return ops, dtypes, impls


def run(args, parser: argparse.ArgumentParser | None = None) -> int:
    import torch

    from .. import _backend
    from .report import text_table, write
    from .timing import allocation_mode, build_info, device_name

    if parser is None:
        parser = argparse.ArgumentParser(prog="python -m vidmem_ext bench")
    ops, dtypes, impls = _check_arguments(args, parser)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available to this torch")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    meta = {"device": device_name(device), "device_type": device.type, **build_info()}
    meta["date"] = time.strftime("%Y-%m-%d %H:%M")
    # the command's own settings, so that a record says how it was made
    meta["settings"] = {k: v for k, v in sorted(vars(args).items()) if isinstance(v, (str, int, float, type(None)))}
    timing = []
    if device.type == "cpu":
        with allocation_mode("mapped") as mapped:
            pass  # stays in effect for the run (see timing.allocation_mode)
        if "momentum" in ops:
            timing.append(
                "momentum (CPU): medians of runs in blocks of 3 alternating with x.clone() (the first run of each "
                "block untimed), ratios = median of per-block ratios"
            )
        timing.append(
            "memory stays mapped (mallopt raised glibc's mmap and trim thresholds; tensors <= 32 MB)"
            + ("; fresh_x_clone: the same with every allocation mapped fresh" if "momentum" in ops else "")
            if mapped
            else "mallopt unavailable: allocations over the default threshold are mapped fresh"
        )
        if hasattr(os, "getloadavg"):
            meta["load"] = "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())
    elif "momentum" in ops:
        timing.append("momentum (CUDA): medians of event-timed runs; clone timed the same way in the same run")
    others = [op for op in ops if op != "momentum"]
    if others:
        baselines = {"attention": "sdpa", "noise": "torch.randn", "packer": "conv3d"}
        timing.append(
            f"{', '.join(others)}: medians of repeated calls, ratios to "
            + ", ".join(baselines[op] for op in others)
            + " timed the same way in the same run"
        )
    meta["timing"] = "; ".join(timing)
    print(f"vidmem_ext bench on {meta['device']}: torch {meta['torch']} ({meta['torch_build']}), "
          f"compiled kernels: {meta['compiled']}{'; --quick' if args.quick else ''}", flush=True)  # fmt: skip

    # Without compiled kernels for this device the ops run the Python reference: say so on every such row.
    fallback = {op for op, kernel in _KERNEL_OF_OP.items() if op in ops and not _backend.compiled_for(kernel, device)}
    runs = []
    for _ in range(args.runs):
        rows, goals = collect(device, ops, quick=args.quick, dtypes=dtypes, compile_loop=not args.no_compile,
                              progress=not args.no_progress, impls=impls, budget=args.budget)  # fmt: skip
        runs.append(rows)
    if device.type == "cpu":
        meta["cpu_streaming"] = _backend.cpu_streaming_note()
    if args.runs > 1:
        from . import momentum, noise

        rows = median_rows(runs)
        goals = goals if args.quick else momentum.goals(rows, device) + noise.goals(rows, device)
        meta["timing"] += f"; every figure is the median over {args.runs} runs of the whole benchmark"
    for row in rows:
        if row.get("op") in fallback and row.get("impl") == "vidmem_ext":
            note = "Python reference: no compiled kernels for this device"
            row["note"] = f"{note}; {row['note']}" if row.get("note") else note
    if fallback:  # their goal lines would judge the reference's timings: replaced by one line that says so
        goals = [g for g in goals if not g.startswith(tuple(fallback))]
        goals.insert(0, f"goals of {', '.join(sorted(fallback))} not met: measured on the Python reference")
    print(text_table(rows))
    if goals:
        print("== goals")
        print("\n".join(goals))
    paths = write(args.out, meta, rows, goals, stem=args.stem)
    print("wrote", *paths)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vidmem_ext bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv), parser)
