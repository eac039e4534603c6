"""Batches of letterboxed uint8 pixels by index: from the decode cache or decoded on demand."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from pneumo.data.cache import DecodedImages
from pneumo.utils.balance import SAMPLER_POWER


class PixelDataset(Dataset):
    """Index -> (1, S, S) uint8 pixels; fetched a whole batch at a time (`__getitems__`)."""

    def __init__(self, decoded: DecodedImages) -> None:
        self.decoded = decoded

    def __len__(self) -> int:
        return len(self.decoded.files)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        return torch.from_numpy(self.decoded.read(idx)).unsqueeze(1), torch.from_numpy(idx)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])


def _keep_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


def make_loader(dataset: PixelDataset, batches: list[np.ndarray], device: torch.device, workers: int) -> DataLoader:
    """Iterate the given batches in order; decode in `workers` processes only without a cache."""
    return DataLoader(
        dataset,
        batch_sampler=[b.tolist() for b in batches],
        collate_fn=_keep_batch,
        num_workers=0 if dataset.decoded.pixels is not None else workers,
        pin_memory=device.type == "cuda",
        # Its own generator: starting an iterator must not draw from the global RNG that
        # dropout uses, or a fold resumed mid-epoch would see different dropout masks.
        generator=torch.Generator().manual_seed(0),
    )


def sample_weights(labels: np.ndarray, n_classes: int, power: float = 1.0) -> torch.Tensor:
    """Per-sample weights 1 / (count of its class) ** power."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    return torch.as_tensor(counts[labels] ** -power, dtype=torch.float64)


def train_batches(
    indices: np.ndarray, labels: np.ndarray, n_classes: int, batch_size: int, generator: torch.Generator, balance: str
) -> list[np.ndarray]:
    """One epoch of training batches over `indices`: a WeightedRandomSampler for the `--balance`
    choices in SAMPLER_POWER, a plain shuffle otherwise.

    The last incomplete batch is dropped (a batch of one breaks batch norm) unless it is the
    only one.
    """
    if balance in SAMPLER_POWER:
        weights = sample_weights(labels, n_classes, SAMPLER_POWER[balance])
        sampler = WeightedRandomSampler(weights, len(indices), replacement=True, generator=generator)
        order = np.fromiter(iter(sampler), dtype=np.int64, count=len(indices))
    else:
        order = torch.randperm(len(indices), generator=generator).numpy()
    picked = indices[order]
    n_full = max(1, len(picked) // batch_size)
    return [picked[i * batch_size : (i + 1) * batch_size] for i in range(n_full)]


def steps_per_epoch(n_samples: int, batch_size: int) -> int:
    return max(1, n_samples // batch_size)


def eval_batches(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Batches over `indices` in order, keeping the last partial batch."""
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
