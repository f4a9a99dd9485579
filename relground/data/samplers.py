"""Samplers of the data layer: a ``DistributedSampler`` that can resume part-way through an epoch, and a batch
sampler that groups the captions of one image (one backbone pass per image)."""
from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from typing import Optional

import torch
from torch.utils.data import Dataset, Sampler
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



class ImageGroupedBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` (image, caption) pairs drawn as up to ``captions_per_image`` captions of each image,
    so a batch holds about ``batch_size / captions_per_image`` distinct images and the backbone (run once per
    distinct image, see :meth:`relground.model.backbone.ResNetBackbone.shared_image_maps`) does that many passes.

    An epoch visits every pair once. Each image's pairs are shuffled and cut into chunks of up to
    ``captions_per_image``; the chunks of all images are shuffled and packed in order into batches of exactly
    ``batch_size`` pairs (a chunk that does not fit is split, its rest opening the next batch). With every image
    holding a multiple of ``c`` pairs and ``batch_size`` a multiple of ``c``, each batch has exactly
    ``batch_size / c`` images (an image with more than c pairs has several chunks, which may meet in one batch:
    fewer images, never more). The order depends only on ``(seed, epoch)``; with ``world_size > 1`` rank ``r``
    takes batches ``r, r + world_size, ...`` (equal counts on every rank).

    Args:
        image_of_item: the image key of each dataset index (``dataset.pairs[i][0]``).
        batch_size: pairs per batch.
        captions_per_image: c, the most pairs of one image in a chunk.
        shuffle: shuffle images' pairs and chunks each epoch (False: dataset order, chunked). Default True.
        seed: shuffling seed. Default 0.
        drop_last: drop the last incomplete batch. Default True.
        rank, world_size: this process's shard. Defaults 0, 1.
    """

    def __init__(
        self,
        image_of_item: Sequence[Hashable],
        batch_size: int,
        captions_per_image: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1 or captions_per_image < 1:
            raise ValueError(f"batch_size ({batch_size}) and captions_per_image ({captions_per_image}) must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: {rank} must be in [0, world_size={world_size})")
        self.items_of_image: dict[Hashable, list[int]] = {}
        for item, image in enumerate(image_of_item):
            self.items_of_image.setdefault(image, []).append(item)
        self.num_items = len(image_of_item)
        self.batch_size, self.captions_per_image = batch_size, captions_per_image
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    @property
    def sampler(self) -> "ImageGroupedBatchSampler":
        # DataStream looks for set_epoch on ``loader.batch_sampler.sampler``: this sampler keeps its own epoch.
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        c = self.captions_per_image
        chunks: list[list[int]] = []
        for items in self.items_of_image.values():
            if self.shuffle:
                items = [items[i] for i in torch.randperm(len(items), generator=generator).tolist()]
            chunks.extend(items[i : i + c] for i in range(0, len(items), c))
        if self.shuffle:
            chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]
        flat = [item for chunk in chunks for item in chunk]  # packing in order = cutting the chunk stream
        batches = [flat[i : i + self.batch_size] for i in range(0, len(flat), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def _num_batches(self) -> int:
        total = self.num_items // self.batch_size if self.drop_last else -(-self.num_items // self.batch_size)
        return total // self.world_size if self.world_size > 1 else total

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all_batches()
        mine = batches[self.rank :: self.world_size]
        return iter(mine[: self._num_batches()])

    def __len__(self) -> int:
        return self._num_batches()
