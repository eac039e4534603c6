"""`pneumo-audit` / `python -m pneumo.audit_cli PATH/chest_xray [--image-size 224] [--out audit.json]`.

Decodes the data set through the cache and prints, per statistic, its distribution per split and
class, its label AUC in the pool and its shift AUC per evaluation split (pneumo.data.audit).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pneumo.data.audit import audit, audit_table, pool_and_evals
from pneumo.data.cache import default_cache_dir
from pneumo.data.dataset import scan
from pneumo.data.prepare import DecodeSpec, decode_images
from pneumo.utils import console
from pneumo.utils.errors import PneumoError
from pneumo.utils.fsutil import atomic_write_json


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Audit a data directory for shortcut statistics.")
    p.add_argument("data_dir", help="dataset root holding train/[val/][test/]{CLASS_A,CLASS_B}/")
    p.add_argument("--image-size", type=int, default=224, help="decode size for the pixel statistics")
    p.add_argument("--cache-dir", default=None, help=f"decode cache (default {default_cache_dir()})")
    p.add_argument("--keep-val-apart", action="store_true", help="audit val/ as an evaluation split")
    p.add_argument("--out", default=None, help="write the audit as JSON here")
    args = p.parse_args(argv)
    try:
        layout = scan(args.data_dir)
        decoded = decode_images(layout, DecodeSpec(args.image_size, cache_dir=args.cache_dir))
        labels, pool, evals = pool_and_evals(layout, decoded, args.keep_val_apart)
        report = audit(decoded, labels, layout.classes, layout.positive_index, pool, evals)
    except PneumoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    console.console.print(audit_table(report))
    for line in report["warnings"]:
        console.warn(line)
    if args.out:
        atomic_write_json(Path(args.out), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
