"""Writing and running the two export formats: ONNX (for onnxruntime) and TorchScript (torch.jit).

Each file holds the whole ensemble graph, the contract (JSON, key "pneumo") and the run's
model card (key "MODEL_CARD.md"): ONNX as metadata properties, TorchScript as extra files.
"""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumo.utils.errors import PneumoError

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
CONTRACT_KEY, CARD_KEY = "pneumo", "MODEL_CARD.md"
OPSET = 17  # GridSample (test-time-augmentation views) needs 16
INPUT, OUTPUTS = "pixels", ("probability", "decision")


def require(module: str) -> ModuleType:
    """Import an optional export dependency, or one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PneumoError(
            f"--format onnx needs {module}, which is not installed: pip install 'pneumo[export]' "
            "(onnx and onnxruntime; or pip install -r requirements-dev.txt)"
        ) from exc


def write_onnx(graph: nn.Module, path: Path, example: torch.Tensor, extra: dict[str, str]) -> None:
    """Export `graph` with a dynamic batch axis (TorchScript-based exporter, opset 17); `extra` becomes
    the file's metadata properties."""
    onnx = require("onnx")
    require("onnxruntime")
    axes = {name: {0: "batch"} for name in (INPUT, *OUTPUTS)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
        torch.onnx.export(
            graph, (example,), str(path), dynamo=False, opset_version=OPSET,
            input_names=[INPUT], output_names=list(OUTPUTS), dynamic_axes=axes,
        )  # fmt: skip
    model = onnx.load(str(path))
    for key, value in extra.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def write_torchscript(graph: nn.Module, path: Path, example: torch.Tensor, extra: dict[str, str]) -> None:
    """Trace `graph` (the batch size stays free: the graph reads it from the input) and save it with
    `extra` as extra files."""
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(graph, (example,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files=extra)


def run_file(path: Path, pixels: np.ndarray, threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(P(positive), decision) of an exported file on uint8 `pixels` (B, 1, S, S)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if path.suffix == SUFFIX["onnx"]:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        probability, decision = session.run(list(OUTPUTS), {INPUT: pixels})
        return probability, decision
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        probability, decision = module(torch.from_numpy(pixels))
    return probability.numpy(), decision.numpy()


def read_extra(path: Path) -> dict[str, Any]:
    """The contract and model card stored in an exported file: {"pneumo": dict, "MODEL_CARD.md": str}."""
    if path.suffix == SUFFIX["onnx"]:
        onnx = require("onnx")
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    else:
        props = {CONTRACT_KEY: "", CARD_KEY: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.load(str(path), map_location="cpu", _extra_files=props)
        props = {k: v.decode() if isinstance(v, bytes) else v for k, v in props.items()}
    return {CONTRACT_KEY: json.loads(props[CONTRACT_KEY]), CARD_KEY: props[CARD_KEY]}
