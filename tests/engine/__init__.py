"""Toy model and data for the engine tests, following the trainer's protocol without the real ReIR stack.

``ToyModel(batch, iteration)`` returns ``ToyOutput(total_loss, losses)`` like ``ReIR``; ``ToyDataset``
yields fixed float64 regression pairs; ``toy_loader`` batches them through the engine's resumable sampler.
They live here (not in a test module) because the resume test runs them in a child process too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from relground.data.samplers import ResumableDistributedSampler

FEATURES = 6


@dataclass
class ToyBatch:
    x: Tensor  # [B, FEATURES]
    y: Tensor  # [B]

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    def to(self, device, non_blocking: bool = False) -> "ToyBatch":
        return ToyBatch(self.x.to(device, non_blocking=non_blocking), self.y.to(device, non_blocking=non_blocking))


@dataclass
class ToyOutput:
    total_loss: Tensor  # scalar
    losses: dict[str, Tensor]


class ToyDataset(Dataset):
    """``size`` fixed pairs ``(x, y)`` with ``y = x . w + noise`` (float64, from ``seed``)."""

    def __init__(self, size: int = 64, seed: int = 123) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(size, FEATURES, generator=generator, dtype=torch.float64)
        weights = torch.randn(FEATURES, generator=generator, dtype=torch.float64)
        self.y = self.x @ weights + 0.1 * torch.randn(size, generator=generator, dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.x[index], self.y[index]


def collate_toy(items) -> ToyBatch:
    xs, ys = zip(*items)
    return ToyBatch(torch.stack(xs), torch.stack(ys))


def toy_loader(
    dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0
) -> DataLoader:
    sampler = ResumableDistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=True
    )
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_toy, drop_last=True)


class ToyModel(nn.Module):
    """A two-layer MLP regressor in float64 with two logged loss components.

    Args:
        dropout: dropout probability (> 0 makes the result depend on the RNG state, for the resume test).
        nan_at: iteration at which the ``mse`` loss becomes NaN (for the NaN-guard test).
        blow_up_at: iteration from which the ``mse`` loss is multiplied by 1e12 (finite, for the max_loss guard).
    """

    def __init__(self, dropout: float = 0.0, nan_at: Optional[int] = None, blow_up_at: Optional[int] = None) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(FEATURES, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 1)
        ).double()
        self.nan_at = nan_at
        self.blow_up_at = blow_up_at
        self.seen_dtypes: list[torch.dtype] = []  # dtype of the prediction at each call (autocast check)

    def forward(self, batch: ToyBatch, iteration: int) -> ToyOutput:
        prediction = self.net(batch.x).squeeze(1)  # [B]
        self.seen_dtypes.append(prediction.dtype)
        error = prediction.to(batch.y.dtype) - batch.y
        mse = error.pow(2).mean()
        l1 = error.abs().mean()
        if iteration == self.nan_at:
            mse = mse * float("nan")
        if self.blow_up_at is not None and iteration >= self.blow_up_at:
            mse = mse * 1e12
        losses = {"mse": mse, "l1": l1}
        return ToyOutput(total_loss=mse + 0.5 * l1, losses=losses)


def parameters_of(model: nn.Module) -> dict[str, Tensor]:
    """Detached CPU copies of the parameters, for comparing runs."""
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters()}
