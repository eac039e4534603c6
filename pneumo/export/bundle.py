"""A finished run's fold ensemble gathered for export: its fold models (the weights evaluation loads,
EMA where the run used it), their normalisations, the run's decision and how its pixels are made."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from pneumo.data.images import DECODER_VERSION, Preprocess
from pneumo.evaluation.decision import run_decision
from pneumo.export.graph import EnsembleGraph, view_grids
from pneumo.models.fold_model import FoldModel, load_fold_model
from pneumo.utils.errors import PneumoError
from pneumo.utils.fsutil import read_json
from pneumo.utils.run_files import BEST, RESULT, fold_dir, folds_to_train, read_config


@dataclass
class Bundle:
    """The fold models of a run and the facts an exported file records about them."""

    run_dir: Path
    models: list[FoldModel]
    decision: dict[str, Any]

    @property
    def meta(self) -> dict[str, Any]:
        return self.models[0].meta

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def tta(self) -> str:
        return self.meta.get("tta") or "none"

    def graph(self) -> EnsembleGraph:
        """The ensemble as one module, on the CPU, in float32."""
        return EnsembleGraph(
            [m.model.float().to(memory_format=torch.contiguous_format) for m in self.models],
            [m.norm for m in self.models],
            int(self.meta["positive"]),
            float(self.decision["threshold"]),
            view_grids(self.tta, self.image_size),
        )

    def contract(self) -> dict[str, Any]:
        """What the exported file expects and returns (stored in the file, printed by the CLI)."""
        classes, positive = list(self.meta["classes"]), int(self.meta["positive"])
        return {
            "run": self.run_dir.name,
            "model": self.meta["model"],
            "folds": [m.fold for m in self.models],
            "classes": classes,
            "positive_class": classes[positive],
            "input": {
                "name": "pixels",
                "shape": ["batch", 1, self.image_size, self.image_size],
                "dtype": "uint8",
                "meaning": "grayscale pixels 0..255, letterboxed to a black square of image_size as "
                "pneumo.export.images.letterboxed (pneumo.data.images.decode) makes them",
            },
            "outputs": {
                "probability": f"P({classes[positive]}), float32 (batch,): mean of the fold models' softmax",
                "decision": f"bool (batch,): probability >= threshold (True: {classes[positive]})",
            },
            "image_size": self.image_size,
            "preprocess": {**asdict(Preprocess.from_dict(self.meta)), "decoder_version": DECODER_VERSION},
            "normalisation": {str(m.fold): {"mean": m.mean, "std": m.std} for m in self.models},
            "tta": self.tta,
            "threshold": float(self.decision["threshold"]),
            "policy": self.decision["policy"],
            "chosen_on": self.decision.get("chosen_on", ""),
        }


def load_bundle(run_dir: Path) -> Bundle:
    """Every finished fold model of `run_dir` (as evaluate.py loads them) and the run's decision."""
    config = read_config(run_dir)
    folds = folds_to_train(config)
    missing = [k for k in folds if not (fold_dir(run_dir, k) / RESULT).exists()]
    if missing:
        raise PneumoError(f"{run_dir}: fold(s) {missing} have not finished; resume the run (train.py) first")
    done = [k for k in folds if read_json(fold_dir(run_dir, k) / RESULT)["status"] == "done"]
    if not done:
        raise PneumoError(f"{run_dir}: no fold finished; nothing to export")
    cpu = torch.device("cpu")
    models = [load_fold_model(fold_dir(run_dir, k) / BEST, cpu, expect_model=config.get("model")) for k in done]
    return Bundle(run_dir, models, run_decision(run_dir))
