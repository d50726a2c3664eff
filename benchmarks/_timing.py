"""The benchmark scripts' shared helpers, now in the package (vidmem_ext.bench.timing / .report).

Kept so that `from _timing import ...` in the scripts of this folder works; the scripts write their
results as JSON and a Markdown table (with the device name) under benchmarks/results/.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's vidmem_ext

from vidmem_ext.bench import report  # noqa: E402
from vidmem_ext.bench.timing import alternating, device_name, median_time  # noqa: E402, F401

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _writable_folder(path: str) -> str:
    """argparse type of --out: a folder that is, or can be made, writable; checked before the run."""
    import argparse

    from vidmem_ext.demo_model import check_out_dir

    class _Refuse:
        def error(self, message):
            raise argparse.ArgumentTypeError(message)

    check_out_dir(_Refuse(), path)
    return path


def add_out_argument(parser) -> None:
    """--out: where the results go (default benchmarks/results/, the recorded ones; a scratch folder keeps them)."""
    parser.add_argument(
        "--out",
        type=_writable_folder,
        default=RESULTS_DIR,
        help="folder for the .json and .md results (default: benchmarks/results)",
    )


def write_results(
    name: str, device, rows: list[dict], columns: list[str], notes: str = "", out_dir: str = RESULTS_DIR
) -> tuple[str, str]:
    """Write rows as <out_dir>/<name>_<device type>.json and .md; return both paths."""
    device = torch.device(device)
    return report.write_results(out_dir, name, device_name(device), device.type, rows, columns, notes)
