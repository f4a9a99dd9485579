"""``DataStream``: an endless stream of batches over a finite data loader that knows its position (exact resume)."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Optional

import torch


class DataStream:
    """An endless stream of batches over a finite data loader that knows its position for exact resume.

    Each pass over the loader is an epoch; before it the sampler's ``set_epoch(epoch)`` is called (when the
    sampler has one), so a ``DistributedSampler`` shuffles by ``(seed, epoch)`` only. A loader with its own
    ``generator`` (a ``RandomSampler``) has that generator's state at the epoch start saved and restored.
    On resume, the batches already consumed in the epoch are skipped without loading them, through the batch
    sampler's ``set_start_batch`` (:class:`~relground.data.aspect_grouping.ResumableBatchSampler`: grouped
    captions, aspect-ratio groups, the DALI loader) or ``sampler.set_start_index``
    (:class:`~relground.data.samplers.ResumableDistributedSampler`); with any other sampler they are loaded and
    dropped. Iterators are created inside ``torch.random.fork_rng`` so
    the loader's seed draws do not shift the global RNG stream the model uses.

    Args:
        loader: a ``torch.utils.data.DataLoader`` (or any re-iterable of batches).
    """

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader
        self.epoch = 0
        self.batch_in_epoch = 0
        self._iterator: Optional[Iterator] = None
        self._epoch_generator_state: Optional[torch.Tensor] = None  # loader.generator at this epoch's start
        self._pending_generator_state: Optional[torch.Tensor] = None  # to restore at the next epoch start

    @property
    def sampler(self) -> Any:
        batch_sampler = getattr(self.loader, "batch_sampler", None)
        return getattr(batch_sampler, "sampler", None) or getattr(self.loader, "sampler", None)

    @property
    def generator(self) -> Optional[torch.Generator]:
        return getattr(self.loader, "generator", None)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}
        if self.generator is not None:
            if self._iterator is not None:
                state["generator"] = self._epoch_generator_state
            elif self._pending_generator_state is not None:
                state["generator"] = self._pending_generator_state
            else:  # between epochs: the next epoch starts from the current state
                state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self._pending_generator_state = state.get("generator")
        self._iterator = None

    def _start_epoch(self) -> None:
        sampler, generator = self.sampler, self.generator
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        if generator is not None:
            if self._pending_generator_state is not None:
                generator.set_state(self._pending_generator_state)
                self._pending_generator_state = None
            self._epoch_generator_state = generator.get_state()
        skip = self.batch_in_epoch
        batch_size = getattr(self.loader, "batch_size", None)
        batch_sampler = getattr(self.loader, "batch_sampler", None)
        if skip and hasattr(batch_sampler, "set_start_batch"):  # skips batch plans (relground.data.aspect_grouping)
            batch_sampler.set_start_batch(skip)
            skip = 0
        elif skip and batch_size and hasattr(sampler, "set_start_index"):
            sampler.set_start_index(skip * batch_size)
            skip = 0
        with torch.random.fork_rng(devices=[]):
            self._iterator = iter(self.loader)
        for _ in range(skip):
            next(self._iterator)

    def __iter__(self) -> "DataStream":
        return self

    def __next__(self) -> Any:
        for _ in range(2):  # at most one epoch boundary per batch; a second means an empty loader
            if self._iterator is None:
                self._start_epoch()
            try:
                batch = next(self._iterator)
            except StopIteration:
                self.epoch += 1
                self.batch_in_epoch = 0
                self._iterator = None
                continue
            self.batch_in_epoch += 1
            return batch
        raise ValueError("data loader: an epoch yielded no batch (empty dataset, or drop_last with a batch too large)")
