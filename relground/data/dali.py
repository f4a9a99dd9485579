"""NVIDIA DALI image pipeline producing the same image tensors as the PIL path, plus the same other fields.

DALI decodes the JPEGs (``device="mixed"``: nvJPEG on the GPU; ``device_id=None``: CPU decoding), resizes them to
exactly the PIL path's size (``resized_size`` of ``transforms.py``, recomputed in the graph) with an antialiased
linear filter, and normalises them; every other field of the batch comes from
:meth:`GroundingDataset.item_without_image`, so the loaders differ only in the decoder and the resampler.

The batches are the other loaders' batches: the same batch sampler (:func:`relground.data.dataset.build_batch_sampler`:
per pair, grouped captions, aspect-ratio groups; sharded by rank) chooses each batch's pairs; the batch's *distinct*
images are read and handed to the pipeline (``fn.external_source``), each decoded once, and every pair references
its image's row (``image_index``). Resuming part-way through an epoch skips batch plans, not decoded batches.

Measured difference to the PIL path (tests/data/test_dali.py, DALI 2.4.0 CPU decoding, 0..255 grey levels):
smooth quality-90 JPEGs max 1.0 / mean 0.08 (resampler rounding only); a white-noise quality-75 JPEG
max 8 / mean 0.18. ``PIL_TOLERANCE`` allows max 10 / mean 0.5. GPU (``mixed``, nvJPEG) decoding is not
measured here (no GPU with DALI was available).

``nvidia.dali`` is imported lazily: install ``nvidia-dali-cuda130==2.4.0`` to use this module.
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import BatchSampler, SequentialSampler

from relground.structures.batch import GroundingBatch
from relground.config.data import IMAGE_BUCKET
from relground.data.collate import collate_grounding
from relground.data.transforms import CAFFE_BGR_MEAN, IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:  # dataset.py builds DALI loaders: a runtime import would be a cycle
    from relground.data.dataset import GroundingDataset

# Largest per-pixel difference (0..255 grey levels) between DALI's and PIL's decode + resize that the
# tests accept, and the largest mean difference. libjpeg-turbo (PIL) and DALI's decoder use different
# IDCT / chroma upsampling, and the resamplers round differently.
PIL_TOLERANCE = {"max": 10.0, "mean": 0.5}


def _normalisation(pixel_format: str) -> tuple[list[float], list[float], bool]:
    """``(mean, std, bgr)`` on the 0..255 scale, matching ``transforms.normalize``."""
    if pixel_format == "caffe_bgr":
        return list(CAFFE_BGR_MEAN), [1.0, 1.0, 1.0], True
    if pixel_format == "torchvision":
        return [255.0 * m for m in IMAGENET_MEAN], [255.0 * s for s in IMAGENET_STD], False
    raise ValueError(f"pixel_format: {pixel_format!r} is not 'caffe_bgr' or 'torchvision'")


def build_pipeline(
    source,
    batch_size: int,
    min_size: int,
    max_size: int,
    pixel_format: str,
    seed: int = 0,
    num_threads: int = 2,
    device_id: Optional[int] = None,
):
    """DALI pipeline: JPEG bytes -> decode -> resize (PIL path's size) -> normalise, CHW float32.

    Args:
        source (Callable[[], list[np.ndarray]]): called once per batch (possibly ahead: DALI prefetches), returns
            the batch's JPEG files as uint8 arrays (at most ``batch_size``); raises ``StopIteration`` at the end of
            an epoch.
        batch_size (int): the most images a batch holds.
        min_size (int), max_size (int): resize, pixels.
        pixel_format (str): ``caffe_bgr`` or ``torchvision``.
        seed (int): DALI's seed (nothing random runs in the graph). Default 0.
        num_threads (int): CPU threads. Default 2.
        device_id (int, optional): GPU id: ``mixed`` decoding and GPU resize; ``None``: everything on the CPU.

    Returns:
        nvidia.dali.Pipeline: built; one output, the images ``[3, h, w]`` float32.
    """
    # optional dependency (NVIDIA DALI): imported only when the dali loader is chosen
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali import math as dmath

    mean, std, bgr = _normalisation(pixel_format)

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed)
    def grounding_images():
        jpegs = fn.external_source(source=source, batch=True, dtype=types.UINT8, ndim=1, name="jpegs")
        images = fn.decoders.image(jpegs, device="cpu" if device_id is None else "mixed",
                                   output_type=types.BGR if bgr else types.RGB)
        # Size from the JPEG header (CPU) so the resize arguments are CPU data in both decoding modes.
        shape = fn.peek_image_shape(jpegs, dtype=types.FLOAT)  # [H, W, C]
        h, w = shape[0], shape[1]
        scale = dmath.min(min_size / dmath.min(h, w), max_size / dmath.max(h, w))
        # Same size as transforms.resized_size: floor(x * scale + 0.5), at least 1.
        new_h = dmath.max(dmath.floor(h * scale + 0.5), 1.0)
        new_w = dmath.max(dmath.floor(w * scale + 0.5), 1.0)
        images = fn.resize(images, resize_y=new_h, resize_x=new_w, interp_type=types.INTERP_LINEAR, antialias=True)
        return fn.crop_mirror_normalize(images, mean=mean, std=std, output_layout="CHW", dtype=types.FLOAT)

    pipe = grounding_images()
    pipe.build()
    return pipe


def _to_torch(tensor_list, index: int, device_id: Optional[int]) -> torch.Tensor:
    if device_id is None:
        return torch.from_numpy(np.array(tensor_list.at(index)))  # copy: DALI reuses its buffers
    from nvidia.dali.plugin.pytorch import feed_ndarray

    sample = tensor_list[index]
    out = torch.empty(tuple(sample.shape()), dtype=torch.float32, device=f"cuda:{device_id}")
    feed_ndarray(sample, out, cuda_stream=torch.cuda.current_stream(device_id))
    return out


def distinct_firsts(items) -> list[int]:
    """The first item of each distinct image id, in batch order (``GroundingBatch.image_firsts``)."""
    first: dict[str, int] = {}
    for k, item in enumerate(items):
        first.setdefault(str(item.meta["image_id"]), k)
    return list(first.values())


class DaliGroundingLoader:
    """Iterable of :class:`GroundingBatch` whose images come from a DALI pipeline, each distinct image decoded once.

    Args:
        dataset (GroundingDataset): built with ``load_images=False``; supplies every non-image field.
        batch_size (int): pairs per batch (the most distinct images a batch can hold).
        batch_sampler (Iterable[list[int]], optional): the batches' dataset indices, as the other loaders use
            (:func:`relground.data.dataset.build_batch_sampler`); its ``set_epoch`` / ``set_start_batch`` are
            reached through :attr:`batch_sampler` (:class:`relground.engine.stream.DataStream`). Default: the
            dataset's order in batches of ``batch_size``, the last one partial (evaluation).
        num_threads (int): DALI CPU threads. Default 2.
        device_id (int, optional): GPU for ``mixed`` decoding; ``None`` decodes on the CPU.
        seed (int): DALI's seed. Default 0.
        shape_buckets (bool), image_bucket (int): as in :func:`relground.data.collate.collate_grounding`.

    ``decoded_images`` counts the images handed to DALI (for tests and the benchmark).
    """

    def __init__(
        self,
        dataset: GroundingDataset,
        batch_size: int,
        batch_sampler=None,
        num_threads: int = 2,
        device_id: Optional[int] = None,
        seed: int = 0,
        shape_buckets: bool = False,
        image_bucket: int = IMAGE_BUCKET,
    ) -> None:
        self.dataset = dataset
        if batch_sampler is None:
            batch_sampler = BatchSampler(SequentialSampler(range(len(dataset))), batch_size, drop_last=False)
        self.batch_sampler = batch_sampler
        self.batch_size = None  # DataStream: skip through batch_sampler.set_start_batch, not a sample index
        self.max_images = batch_size
        self.shape_buckets, self.image_bucket = shape_buckets, image_bucket
        self.device_id = device_id
        self.decoded_images = 0
        self._plans: Iterator[list[int]] = iter(())
        self._fed: deque = deque()  # (items, firsts) of the batches handed to DALI, in order
        self._epoch_open = False
        self._pipe_args = (batch_size, dataset.min_size, dataset.max_size, dataset.pixel_format, seed,
                           num_threads, device_id)
        self.pipe = build_pipeline(self._next_images, *self._pipe_args)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def _next_images(self) -> list[np.ndarray]:
        """DALI's source: the next batch's distinct JPEG files (its items kept for the outputs)."""
        indices = next(self._plans)  # StopIteration: DALI ends the epoch after the batches already made
        items = self.dataset.__getitems__(indices)
        firsts = distinct_firsts(items)
        self._fed.append((items, firsts))
        self.decoded_images += len(firsts)
        paths = [self.dataset.image_path(self.dataset.record_of(items[k].meta["image_id"])) for k in firsts]
        return [np.fromfile(path, dtype=np.uint8) for path in paths]

    def __iter__(self) -> Iterator[GroundingBatch]:
        if self._epoch_open:  # an epoch left part-way: DALI holds prefetched batches of it, so start afresh
            self.pipe = build_pipeline(self._next_images, *self._pipe_args)
        self._fed.clear()
        self._plans = iter(self.batch_sampler)  # made here, in the caller's thread (DataStream: under fork_rng)
        self._epoch_open = True
        return self._batches()

    def _batches(self) -> Iterator[GroundingBatch]:
        while True:
            try:
                (outputs,) = self.pipe.run()
            except StopIteration:
                self.pipe.reset()
                self._epoch_open = False
                return
            items, firsts = self._fed.popleft()
            yield self._collate(items, firsts, outputs)

    def _collate(self, items, firsts: list[int], outputs) -> GroundingBatch:
        """The batch of ``items``: DALI's distinct images padded (``[G, 3, H, W]``), then one row per item."""
        height = max(item.image_size[0] for item in items)
        width = max(item.image_size[1] for item in items)
        device = "cpu" if self.device_id is None else f"cuda:{self.device_id}"
        distinct = torch.zeros(len(firsts), 3, height, width, device=device)
        for g, k in enumerate(firsts):
            pixels = _to_torch(outputs, g, self.device_id)
            if tuple(pixels.shape[-2:]) != tuple(items[k].image_size):
                raise ValueError(f"image {items[k].meta['image_id']!r}: DALI resized it to {tuple(pixels.shape[-2:])}"
                                 f" pixels, not {tuple(items[k].image_size)} (its annotated size's resize)")
            distinct[g, :, : pixels.shape[1], : pixels.shape[2]] = pixels
        row = {str(items[k].meta["image_id"]): g for g, k in enumerate(firsts)}
        index = torch.tensor([row[str(item.meta["image_id"])] for item in items], device=device)
        return collate_grounding(items, self.dataset.num_relation_classes, images=distinct.index_select(0, index),
                                 shape_buckets=self.shape_buckets, image_bucket=self.image_bucket)
