"""The events a fold's training loop emits, and the handler interface that subscribes to them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn


@dataclass
class EpochEnd:
    """A finished epoch: its metrics record (one metrics.jsonl line), the validation
    probabilities, the weights a checkpoint of it would hold (the EMA when kept) and the pool
    indices it trained on, in order."""

    fold: int
    record: dict[str, Any]
    val_probs: np.ndarray
    weights: nn.Module
    sample_indices: list[int]


class Handler:
    """Subscribes to a fold's events; each method does nothing unless overridden."""

    def new_best(self, event: EpochEnd) -> None:
        """The epoch has the lowest validation loss so far (called before epoch_end)."""

    def epoch_end(self, event: EpochEnd) -> None:
        """The epoch is trained and validated; its resume state is saved after the handlers."""

    def close(self) -> None:
        """The fold's loop is left, done or not."""


class Handlers(Handler):
    """Several handlers, called in order."""

    def __init__(self, handlers: list[Handler]) -> None:
        self.handlers = handlers

    def new_best(self, event: EpochEnd) -> None:
        for h in self.handlers:
            h.new_best(event)

    def epoch_end(self, event: EpochEnd) -> None:
        for h in self.handlers:
            h.epoch_end(event)

    def close(self) -> None:
        for h in self.handlers:
            h.close()
