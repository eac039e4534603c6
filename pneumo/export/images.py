"""The exported file's input made from image files: pneumo's own decoder (grayscale, letterbox, the run's
decode-time preprocessing), so a deployment feeds the graph exactly the pixels evaluate.py would.

    from pneumo.export.formats import read_extra, run_file
    from pneumo.export.images import letterboxed
    contract = read_extra(Path("runs/r18/export/ensemble.onnx"))["pneumo"]
    probability, decision = run_file(Path("runs/r18/export/ensemble.onnx"), letterboxed(["a.jpeg"], contract))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.data.images import Preprocess, decode


def letterboxed(paths: Sequence[str | Path], contract: dict[str, Any]) -> np.ndarray:
    """uint8 pixels (n, 1, S, S) of image files, decoded as the exported run decodes them (`contract`:
    the "pneumo" metadata of the file, or a Bundle's contract()); an unreadable file raises."""
    keys = {f.name for f in fields(Preprocess)}
    pre = Preprocess(**{k: v for k, v in contract.get("preprocess", {}).items() if k in keys})
    size = int(contract["image_size"])
    return np.stack([decode(Path(p).read_bytes(), size, pre) for p in paths])[:, None]
