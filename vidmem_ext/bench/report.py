"""Result files of the benchmarks: JSON, a Markdown table per op, a PNG plot, and a printed table."""

from __future__ import annotations

import json
import math
import os
import time

# Printed / Markdown columns per op (the JSON keeps every field).
COLUMNS = {
    "momentum": ["case", "dtype", "impl", "mode", "median_ms", "x_clone", "of_clone_bw", "fresh_x_clone", "note"],
    "noise": ["case", "dtype", "impl", "median_ms", "x_randn", "note"],
    "packer": ["case", "dtype", "impl", "mode", "median_ms", "speedup_vs_conv3d", "peak_mib", "note"],
    "attention": ["case", "dtype", "impl", "median_ms", "x_sdpa", "note"],
}


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def markdown(meta: dict, rows: list[dict], goals: list[str]) -> str:
    lines = [f"# vidmem_ext bench on {meta['device']}", ""]
    lines.append(
        f"torch {meta['torch']} ({meta['torch_build']}), vidmem_ext {meta['vidmem_ext']} "
        f"(compiled: {meta['compiled']}), {meta['date']}; {meta['timing']}."
    )
    if meta.get("load"):
        lines.append(f"Load when measured: {meta['load']}.")
    if meta.get("cpu_streaming"):
        lines.append(f"{meta['cpu_streaming']}.")
    lines.append("")
    for op, columns in COLUMNS.items():
        op_rows = [r for r in rows if r["op"] == op]
        if not op_rows:
            continue
        lines += [f"## {op}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in op_rows]
        lines.append("")
    if goals:
        lines += ["## goals", ""] + [f"- {g}" for g in goals] + [""]
    return "\n".join(lines)


def text_table(rows: list[dict]) -> str:
    """A plain aligned table of every op's rows (what the command prints)."""
    out = []
    for op, columns in COLUMNS.items():
        op_rows = [r for r in rows if r["op"] == op]
        if not op_rows:
            continue
        cells = [columns] + [[_cell(r.get(c)) for c in columns] for r in op_rows]
        widths = [min(max(len(row[i]) for row in cells), 44) for i in range(len(columns))]
        widths[-1] = max(len(row[-1]) for row in cells)  # the note, last, is never cut
        out.append(f"== {op}")
        for row in cells:
            out.append("  ".join(cell[:w].ljust(w) for cell, w in zip(row, widths)).rstrip())
    return "\n".join(out)


def plot(meta: dict, rows: list[dict], path: str) -> bool:
    """Bars of the fraction of clone bandwidth per shape and implementation (momentum rows); False if none."""
    try:
        from .._plot import bar_chart
    except ImportError:  # Pillow is an optional extra
        print("no PNG plot: Pillow is not installed (pip install pillow)")
        return False
    groups: dict[str, list[tuple[str, float]]] = {}
    for r in rows:
        if r["op"] == "momentum" and r.get("of_clone_bw") is not None and r["mode"] in ("fwd", "fwd+bwd"):
            groups.setdefault(f"{r['case']} {r['dtype']} {r['mode']}", []).append((r["impl"], r["of_clone_bw"]))
    if not groups:
        return False
    image = bar_chart(
        list(groups.items()),
        title=f"temporal momentum: fraction of x.clone() bandwidth, {meta['device']}",
        xlabel="fraction of clone bandwidth (1 = as fast as a clone moving the same bytes)",
        reference=1.0,
    )
    image.save(path)
    return True


def _json_rows(rows: list[dict]) -> list[dict]:
    """Rows with NaN and infinities as null: strict JSON has no such numbers."""
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]


def write(out_dir: str, meta: dict, rows: list[dict], goals: list[str], stem: str = "bench") -> list[str]:
    """Write <stem>.json, <stem>.md and <stem>.png (when there is something to plot) under out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"{stem}.json"), os.path.join(out_dir, f"{stem}.md")]
    with open(paths[0], "w") as f:
        json.dump({**meta, "goals": goals, "rows": _json_rows(rows)}, f, indent=1, allow_nan=False)
    with open(paths[1], "w") as f:
        f.write(markdown(meta, rows, goals))
    png = os.path.join(out_dir, f"{stem}.png")
    if plot(meta, rows, png):
        paths.append(png)
    elif os.path.isfile(png):
        os.remove(png)  # an earlier run's plot beside this run's results would pass for this run's
    return paths


def write_results(results_dir: str, name: str, device_label: str, device_type: str, rows, columns, notes=""):
    """The scripts' format in benchmarks/results/: <name>_<device type>.json and .md with chosen columns."""
    import torch

    os.makedirs(results_dir, exist_ok=True)
    meta = {"benchmark": name, "device": device_label, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    stem = os.path.join(results_dir, f"{name}_{device_type}")
    with open(stem + ".json", "w") as f:
        json.dump({**meta, "rows": _json_rows(rows)}, f, indent=1, allow_nan=False)
    lines = [f"# {name} on {meta['device']}", "", f"torch {meta['torch']}, {meta['date']}. {notes}".rstrip(), ""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return stem + ".json", stem + ".md"
