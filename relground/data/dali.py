"""NVIDIA DALI image pipeline producing the same image tensors as the PIL path, plus the same other fields.

DALI reads and decodes the JPEGs (``device="mixed"``: nvJPEG on the GPU; ``device_id=None``: CPU decoding),
resizes them to exactly the PIL path's size (``resized_size`` of ``transforms.py``, recomputed in the graph)
with an antialiased linear filter, and normalises them; every other field of the batch comes from
:meth:`GroundingDataset.build_item`, so the two loaders differ only in the decoder and the resampler.

Sharding is DALI's own: ``fn.readers.file(shard_id=rank, num_shards=world_size)``; the reader's labels are
the dataset's pair indices, which is how each decoded image finds its sentence.

Measured difference to the PIL path (tests/data/test_dali.py, DALI 2.4.0 CPU decoding, 0..255 grey levels):
smooth quality-90 JPEGs max 1.0 / mean 0.08 (resampler rounding only); a white-noise quality-75 JPEG
max 8 / mean 0.18. ``PIL_TOLERANCE`` allows max 10 / mean 0.5. GPU (``mixed``, nvJPEG) decoding is not
measured here (no GPU with DALI was available).

``nvidia.dali`` is imported lazily: install ``nvidia-dali-cuda130==2.4.0`` to use this module.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np
import torch

from relground.structures.batch import GroundingBatch
from relground.config.data import IMAGE_BUCKET
from relground.data.collate import collate_grounding
from relground.data.transforms import CAFFE_BGR_MEAN, IMAGENET_MEAN, IMAGENET_STD, resize_scale

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
    files: list[str],
    labels: list[int],
    batch_size: int,
    min_size: int,
    max_size: int,
    pixel_format: str,
    shard_id: int = 0,
    num_shards: int = 1,
    shuffle: bool = False,
    seed: int = 0,
    num_threads: int = 2,
    device_id: Optional[int] = None,
):
    """DALI pipeline: file -> decode -> resize (PIL path's size) -> normalise, CHW float32.

    Args:
        files (list[str]): one JPEG per sample (a file may repeat: one entry per sentence).
        labels (list[int]): one id per sample, returned as the second output.
        batch_size (int): samples per batch.
        min_size (int), max_size (int): resize, pixels.
        pixel_format (str): ``caffe_bgr`` or ``torchvision``.
        shard_id (int), num_shards (int): this process's shard (rank / world size).
        shuffle (bool): reshuffle the whole list every epoch (same seed on every shard, so shards stay
            disjoint). Default False.
        seed (int): shuffling seed. Default 0.
        num_threads (int): CPU threads. Default 2.
        device_id (int, optional): GPU id: ``mixed`` decoding and GPU resize; ``None``: everything on the CPU.

    Returns:
        nvidia.dali.Pipeline: built; outputs ``(images [3, h, w] float32, labels [1] int32)``.
    """
    # optional dependency (NVIDIA DALI): imported only when the dali loader is chosen
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali import math as dmath

    mean, std, bgr = _normalisation(pixel_format)

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed)
    def grounding_images():
        jpegs, ids = fn.readers.file(
            files=files, labels=labels, shard_id=shard_id, num_shards=num_shards, pad_last_batch=True,
            shuffle_after_epoch=shuffle, seed=seed, name="reader",
        )
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
        images = fn.crop_mirror_normalize(images, mean=mean, std=std, output_layout="CHW", dtype=types.FLOAT)
        return images, ids

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


class DaliGroundingLoader:
    """Iterable of :class:`GroundingBatch` whose images come from a DALI pipeline.

    Args:
        dataset (GroundingDataset): built with ``load_images=False``; supplies every non-image field.
        batch_size (int): pairs per batch.
        shuffle (bool): reshuffle every epoch. Default False.
        rank (int), world_size (int): shard of this process. Defaults 0 / 1.
        seed (int): shuffling seed. Default 0.
        num_threads (int): DALI CPU threads. Default 2.
        device_id (int, optional): GPU for ``mixed`` decoding; ``None`` decodes on the CPU.
        shape_buckets (bool), image_bucket (int): as in :func:`relground.data.collate.collate_grounding`.

    Each epoch yields every pair of this shard once (DALI's padding of the last batch is dropped).
    """

    def __init__(
        self,
        dataset: GroundingDataset,
        batch_size: int,
        shuffle: bool = False,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        num_threads: int = 2,
        device_id: Optional[int] = None,
        shape_buckets: bool = False,
        image_bucket: int = IMAGE_BUCKET,
    ) -> None:
        self.dataset = dataset
        self.shape_buckets, self.image_bucket = shape_buckets, image_bucket
        self.batch_size = batch_size
        self.device_id = device_id
        files = [str(dataset.image_path(dataset.images[i])) for i, _ in dataset.pairs]
        # DALI's reader gives shard s the samples [floor(N s / S), floor(N (s + 1) / S)).
        n = len(files)
        self.shard_size = n * (rank + 1) // world_size - n * rank // world_size
        self.pipe = build_pipeline(
            files, list(range(n)), batch_size, dataset.min_size, dataset.max_size, dataset.pixel_format,
            shard_id=rank, num_shards=world_size, shuffle=shuffle, seed=seed, num_threads=num_threads,
            device_id=device_id,
        )

    def __len__(self) -> int:
        return math.ceil(self.shard_size / self.batch_size)

    def __iter__(self) -> Iterator[GroundingBatch]:
        remaining = self.shard_size
        for _ in range(len(self)):
            images, ids = self.pipe.run()
            count = min(self.batch_size, remaining)
            remaining -= count
            items = []
            for k in range(count):
                pair = int(np.array(ids.at(k)).reshape(-1)[0])
                image_index, position = self.dataset.pairs[pair]
                record = self.dataset.images[image_index]
                pixels = _to_torch(images, k, self.device_id)
                scale = resize_scale(record.height, record.width, self.dataset.min_size, self.dataset.max_size)
                items.append(self.dataset.build_item(record, record.sentences[position], pixels,
                                                     tuple(pixels.shape[-2:]), scale))
            yield collate_grounding(items, self.dataset.num_relation_classes, shape_buckets=self.shape_buckets,
                                    image_bucket=self.image_bucket)
