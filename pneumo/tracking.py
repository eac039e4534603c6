"""Per-fold epoch metrics: `metrics.jsonl` (rewritten atomically) and TensorBoard scalars."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pneumo.fsutil import atomic_write_text


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class FoldLogger:
    """Writes one record per epoch; on resume it starts from the saved history."""

    def __init__(self, fold_dir: Path, history: list[dict[str, Any]]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = fold_dir / "metrics.jsonl"
        self.history = list(history)
        # purge_step drops events a killed run logged past its last checkpointed epoch.
        self.writer = SummaryWriter(str(fold_dir / "tensorboard"), purge_step=len(self.history) + 1)
        self._write_file()

    def _write_file(self) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.history))

    def log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        self._write_file()
        step = int(record["epoch"])
        for name, value in _flatten({k: v for k, v in record.items() if k != "epoch"}).items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
