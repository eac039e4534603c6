"""Checkpoints: model weights as safetensors (no code can run on load), training state via
`torch.save` loaded with `weights_only=True`; every write is atomic."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from pneumo.utils.errors import PneumoError
from pneumo.utils.fsutil import BackgroundWriter, atomic_write_bytes


def unwrap(model: nn.Module) -> nn.Module:
    """The module whose state dict is saved (the original of a torch.compile'd model)."""
    return getattr(model, "_orig_mod", model)


def save_weights(path: Path, model: nn.Module, meta: dict[str, Any], writer: BackgroundWriter | None = None) -> None:
    """Write the model's weights and `meta` (JSON) to one safetensors file, atomically (by `writer`,
    in the background, when given)."""
    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    # Serialised in memory, written by Python: a full disk surfaces as an OSError we report.
    _write(path, save(state, metadata={"pneumo": json.dumps(meta)}), writer)


def _write(path: Path, data: bytes | memoryview, writer: BackgroundWriter | None) -> None:
    if writer is None:
        atomic_write_bytes(path, data)
    else:
        writer.write(path, data)


def load_weights_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read (state_dict, meta) from a safetensors file written by `save_weights`."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("pneumo", "{}"))
        return load_file(str(path)), meta
    except FileNotFoundError as exc:
        raise PneumoError(f"{path}: checkpoint not found") from exc
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as exc:
        raise PneumoError(f"{path}: not a readable safetensors checkpoint ({exc})") from exc


def save_state(path: Path, state: dict[str, Any], writer: BackgroundWriter | None = None) -> None:
    """torch.save a dict of tensors and plain values, atomically (by `writer`, in the background, when
    given). Serialised in memory first: a full disk surfaces as an OSError rather than torch's opaque
    writer error, and the tensors may change as soon as this returns."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    _write(path, buffer.getbuffer(), writer)


def load_state(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True: a file that would run code is refused, never executed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise PneumoError(
            f"{path}: refused to load (not a plain tensor checkpoint: {str(exc).splitlines()[0]})"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise PneumoError(f"{path}: unreadable or truncated checkpoint ({str(exc).splitlines()[0]})") from exc
