"""`pneumo-export` / `python -m pneumo.export`: a finished run's fold ensemble as one ONNX or TorchScript file.

pneumo-export runs/NAME --format onnx                     # runs/NAME/export/ensemble.onnx (+ ensemble.MODEL_CARD.md)
pneumo-export runs/NAME --format torchscript --output model.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pneumo.export.export import TOLERANCE, export_run
from pneumo.export.formats import FORMATS
from pneumo.utils import console
from pneumo.utils.errors import PneumoError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pneumo-export",
        description="Export a finished run's whole fold ensemble (uint8 letterboxed pixels in; P(positive) and the "
        "run's decision out) as one file, with the run's model card beside it and inside it.",
    )
    p.add_argument("run_dir", help="a finished run directory written by train.py")
    p.add_argument("--format", choices=FORMATS, required=True, help="onnx (needs pneumo[export]) or torchscript")
    p.add_argument("--output", default=None, help="the file to write (default RUN_DIR/export/ensemble.onnx|.pt)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the export CLI; returns the exit status (2: bad input)."""
    args = build_parser().parse_args(argv)
    try:
        done = export_run(Path(args.run_dir).expanduser().resolve(), args.format, args.output and Path(args.output))
    except PneumoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    c = done.contract
    console.log(
        f"{args.format}: {done.path} ({done.bytes / 1e6:.1f} MB, folds {c['folds']}); input uint8 "
        f"{c['input']['shape']}; outputs P({c['positive_class']}) and P >= {c['threshold']:.4g} ({c['policy']}); "
        f"checked against pneumo's ensemble: max |dP| {done.max_abs_diff:.1e} (<= {TOLERANCE:g}); "
        f"model card: {done.card}"
    )
    return 0
