"""Samplers of the data layer: a ``DistributedSampler`` that can resume part-way through an epoch."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Optional

from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` that can start an epoch part-way, so a resumed run skips batches without loading them.

    The permutation of an epoch depends only on ``(seed, epoch)`` (as in ``DistributedSampler``), so a
    resumed run that calls ``set_epoch(e)`` and ``set_start_index(i)`` yields exactly the indices the
    interrupted run would have yielded from position ``i`` of epoch ``e`` on. The start index resets to 0
    at the next ``set_epoch``.

    Args:
        dataset: the map-style dataset (only its length is used).
        num_replicas: world size (default: the process group's).
        rank: this process's rank (default: the process group's).
        shuffle: permute each epoch (default True).
        seed: permutation seed, identical on every rank (default 0).
        drop_last: drop the tail so every rank gets the same count (default False: pad by repeating).
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: Optional[int] = None,
        rank: Optional[int] = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(
            dataset,
            num_replicas=num_replicas,  # None: torch takes both from the process group
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.start_index = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.start_index = 0

    def set_start_index(self, start_index: int) -> None:
        """Skip the first ``start_index`` samples of this rank's share of the current epoch."""
        if not 0 <= start_index <= self.num_samples:
            raise ValueError(f"start_index must be in [0, {self.num_samples}], got {start_index}")
        self.start_index = start_index

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start_index :])

    def __len__(self) -> int:
        return self.num_samples - self.start_index

