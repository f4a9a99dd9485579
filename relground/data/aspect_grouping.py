"""Batches of one orientation (``data.aspect_grouping``), batch samplers that resume part-way through an epoch, and
the batch sampler every loader shares (:func:`build_batch_sampler`).

A batch pads its images to the largest height and the largest width among them: a 600x900 (landscape) and a
900x600 (portrait) image make a 900x900 batch, 50% more pixels than either, which the backbone convolves in full.
Flickr30K is 70% landscape, 28% portrait, 2% square (its 31,783 annotation files), so mixed batches are the rule.
:class:`AspectRatioGroupedBatchSampler` regroups the pairs of any batch sampler into batches of one orientation,
as detectron2's ``AspectRatioGroupedDataset`` does for a stream of images: it composes with
:class:`~relground.data.samplers.ImageGroupedBatchSampler` (the pairs of one image are consecutive in its stream
and share their image's orientation, so they stay together) and with a plain ``BatchSampler``.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from torch.utils.data import BatchSampler

from relground.config.data import DataConfig
from relground.data.samplers import ImageGroupedBatchSampler, ResumableDistributedSampler

if TYPE_CHECKING:  # dataset.py builds its loaders with build_batch_sampler: a runtime import would be a cycle
    from relground.data.dataset import GroundingDataset


def is_landscape(height: int, width: int) -> bool:
    """The orientation bucket of an image: wider than tall (detectron2: ``w > h``); square goes with portrait."""
    return width > height


def _set_epoch(batch_sampler: Any, epoch: int) -> None:
    """``set_epoch`` on the batch sampler, else on its index sampler (``BatchSampler.sampler``), when either has it."""
    target = batch_sampler if hasattr(batch_sampler, "set_epoch") else getattr(batch_sampler, "sampler", None)
    if hasattr(target, "set_epoch"):
        target.set_epoch(epoch)


class ResumableBatchSampler:
    """A batch sampler that can start an epoch at its ``n``-th batch without loading the ones before.

    The batches of an epoch depend only on ``(seed, epoch)`` (``set_epoch`` is passed on), so skipping the first
    ``n`` index lists gives exactly the batches the interrupted run would have loaded next;
    :class:`relground.engine.stream.DataStream` calls :meth:`set_start_batch` on resume.

    Args:
        batch_sampler: any iterable of index lists whose order is fixed by ``set_epoch`` (e.g.
            ``ImageGroupedBatchSampler``, or a ``BatchSampler`` over a ``ResumableDistributedSampler``).
    """

    def __init__(self, batch_sampler: Iterable[list[int]]) -> None:
        self.batch_sampler = batch_sampler
        self.start_batch = 0

    @property
    def sampler(self) -> "ResumableBatchSampler":
        # DataStream calls set_epoch on ``loader.batch_sampler.sampler``: this one passes it on.
        return self

    def set_epoch(self, epoch: int) -> None:
        _set_epoch(self.batch_sampler, epoch)
        self.start_batch = 0

    def set_start_batch(self, start_batch: int) -> None:
        """Skip the first ``start_batch`` batches of the current epoch (reset by the next ``set_epoch``)."""
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        self.start_batch = start_batch

    def _batches(self) -> Iterator[list[int]]:
        return iter(self.batch_sampler)

    def __iter__(self) -> Iterator[list[int]]:
        for number, batch in enumerate(self._batches()):
            if number >= self.start_batch:
                yield batch

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]


class AspectRatioGroupedBatchSampler(ResumableBatchSampler):
    """Batches of ``batch_size`` pairs whose images all have one orientation, regrouped from ``batch_sampler``.

    The pairs arrive in ``batch_sampler``'s order and go to the bucket of their image's orientation; a bucket that
    reaches ``batch_size`` pairs is a batch (detectron2's ``AspectRatioGroupedDataset``). So the order stays
    ``batch_sampler``'s up to a delay of at most one batch per bucket, every pair of an epoch is seen once, and
    consecutive pairs of one image (``ImageGroupedBatchSampler``'s chunks) stay consecutive. At the epoch's end the
    two partial buckets are dropped (``drop_last``, training) or yielded.

    Args:
        batch_sampler: iterable of index lists (this process's share; its ``set_epoch`` is passed on).
        landscape: per dataset index, whether its image is landscape (:func:`is_landscape`).
        batch_size: pairs per batch.
        drop_last: drop the partial buckets at the epoch's end. Default True.

    Example:
        >>> sampler = AspectRatioGroupedBatchSampler([[0, 1], [2, 3]], [True, False, True, False], 2)
        >>> list(sampler)
        [[0, 2], [1, 3]]
    """

    def __init__(self, batch_sampler: Iterable[list[int]], landscape: Sequence[bool], batch_size: int,
                 drop_last: bool = True) -> None:
        super().__init__(batch_sampler)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.landscape = [bool(v) for v in landscape]
        self.batch_size, self.drop_last = batch_size, drop_last

    def _batches(self) -> Iterator[list[int]]:
        buckets: dict[bool, list[int]] = {True: [], False: []}
        for batch in self.batch_sampler:
            for index in batch:
                bucket = buckets[self.landscape[index]]
                bucket.append(index)
                if len(bucket) == self.batch_size:
                    yield bucket[:]
                    bucket.clear()
        if not self.drop_last:
            yield from (bucket for bucket in buckets.values() if bucket)

    def __len__(self) -> int:
        # The regrouped count depends on the epoch's order only through the tail; counting it is cheap (indices).
        return sum(1 for _ in self._batches())


def build_batch_sampler(cfg: DataConfig, dataset: "GroundingDataset", train: bool, rank: int, world_size: int,
                        seed: int, distributed_order: bool, always: bool = False):
    """The dataset indices of each batch: a batch sampler that resumes part-way (``set_start_batch``), or None
    for plain per-pair batches (the ``DataLoader``'s own sampler then) unless ``always`` (the DALI loader).

    Grouped captions (``data.captions_per_image > 1``, training) pack up to c pairs of an image per batch
    (:class:`ImageGroupedBatchSampler`); otherwise pairs follow the distributed sampler's ``(seed, epoch)`` order.
    ``data.aspect_grouping`` (training) then regroups them by orientation (:class:`AspectRatioGroupedBatchSampler`).
    """
    grouped = train and cfg.captions_per_image > 1
    aspect = train and cfg.aspect_grouping
    if not (grouped or aspect or always):
        return None
    if grouped:
        # Captions of one image in one batch: the model runs its backbone once per distinct image.
        inner = ImageGroupedBatchSampler(
            [image_index for image_index, _ in dataset.pairs], cfg.batch_size, cfg.captions_per_image,
            shuffle=True, seed=seed, drop_last=True, rank=rank, world_size=world_size,
        )
    else:
        # Same (seed, epoch) permutation as DistributedSampler; a resumed run starts mid-epoch without loading
        # the batches it already trained on.
        sampler = ResumableDistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed, drop_last=train
        )
        inner = BatchSampler(sampler, cfg.batch_size, drop_last=train)
    if not aspect:
        return ResumableBatchSampler(inner)
    landscape = [is_landscape(dataset.images[i].height, dataset.images[i].width) for i, _ in dataset.pairs]
    return AspectRatioGroupedBatchSampler(inner, landscape, cfg.batch_size, drop_last=train)
