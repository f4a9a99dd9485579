"""Images finished on the device: the ``torchvision`` loader (``data.loader: torchvision``).

The workers hand over *raw* images, uint8 and unresized, in pinned memory (4 bytes a pixel less than the PIL
path's float32 batch, and before the 600 / 1000 upscale of a typical Flickr30K image: ~5x fewer bytes):

- on CPU the worker decodes with ``torchvision.io.decode_jpeg`` (libjpeg-turbo): ``images`` is uint8
  ``[B, 3, H0, W0]``, each image zero-padded to the batch's largest *original* size;
- with CUDA the worker only reads the file: ``images`` is the JPEG bytes, uint8 ``[B, N]`` zero-padded, each
  item's length in ``meta[i]["jpeg_bytes"]``, decoded by nvJPEG (``decode_jpeg(device="cuda")``) here.

:func:`finish_images` then resizes and normalises every image with :func:`~relground.data.transforms.transform_image`
(the PIL path's very function, run on the tensor's device) and pads them as ``collate_grounding`` does, giving
the PIL path's ``GroundingBatch``. :class:`DeviceBatches` wraps the ``DataLoader``: on CUDA it copies and
finishes the *next* batch on a side stream while the caller's step runs; on CPU it finishes in the main process.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Optional

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from relground.data.transforms import transform_image
from relground.structures.batch import GroundingBatch

# Largest / mean per-pixel difference (0..255 grey levels) to the PIL path that tests/data/test_decode_paths.py
# accepts. CPU: PIL and torchvision.io both decode with libjpeg-turbo and resize with the same torchvision call
# (bit-identical with Pillow 11 / torchvision 0.29); one level allows another libjpeg-turbo build's rounding.
# nvJPEG: its own IDCT and chroma upsampling, and the CUDA resize works in float (the CPU one in uint8), so the
# DALI bound (dali.PIL_TOLERANCE, measured max 8 / mean 0.19 on a white-noise JPEG) applies.
CPU_DECODE_TOLERANCE = {"max": 1.0, "mean": 0.05}
TORCHVISION_TOLERANCE = {"max": 10.0, "mean": 0.5}


def read_image(path, decode: bool) -> Tensor:
    """A JPEG file as decoded RGB uint8 ``[3, H, W]`` (``decode``) or its bytes, uint8 ``[N]``."""
    data = read_file(str(path))
    return decode_jpeg(data, mode=ImageReadMode.RGB) if decode else data


def finish_images(
    batch: GroundingBatch, min_size: int, max_size: int, pixel_format: str, device: Optional[torch.device] = None
) -> GroundingBatch:
    """Decode (when bytes), resize and normalise a raw batch's images on ``device``; other fields move there too.

    Args:
        batch (GroundingBatch): ``images`` uint8 ``[B, 3, H0, W0]`` (decoded, padded; ``meta[i]["original_size"]``)
            or ``[B, N]`` (JPEG bytes; ``meta[i]["jpeg_bytes"]``). A float ``images`` (PIL path) passes unchanged.
        min_size (int), max_size (int), pixel_format (str): as ``transform_image``.
        device (torch.device, optional): where to finish; default the batch's device.

    Returns:
        GroundingBatch: ``images`` float32 ``[B, 3, H, W]`` zero-padded to the largest resized image, the PIL
        path's layout; sizes come from ``image_sizes`` (the annotated size's resize, as the DALI path).
    """
    device = torch.device(device) if device is not None else batch.images.device
    raw = batch.images
    if raw.dtype != torch.uint8:
        return batch.to(device, non_blocking=True)
    # Everything but the images first (the JPEG bytes stay on the host: nvJPEG reads them there).
    moved = dataclasses.replace(batch, images=raw.new_zeros(raw.shape[0], 0)).to(device, non_blocking=True)
    if raw.dim() == 2:  # JPEG bytes
        datas = [raw[i, : m["jpeg_bytes"]].cpu() for i, m in enumerate(batch.meta)]
        decoded = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
        if isinstance(decoded, Tensor):
            decoded = [decoded]
    else:
        raw = raw.to(device, non_blocking=True)
        decoded = [raw[i, :, : m["original_size"][0], : m["original_size"][1]] for i, m in enumerate(batch.meta)]
    sizes = batch.image_sizes.tolist()  # host tensor: no device sync
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    images = torch.zeros(len(decoded), 3, height, width, device=device)
    for i, image in enumerate(decoded):
        pixels, _ = transform_image(image, min_size, max_size, pixel_format)
        if tuple(pixels.shape[-2:]) != tuple(sizes[i]):
            raise ValueError(f"image {batch.meta[i].get('image_id')!r}: decoded to {tuple(image.shape[-2:])} pixels, "
                             f"not its annotated size {tuple(batch.meta[i]['original_size'])}")
        images[i, :, : pixels.shape[1], : pixels.shape[2]] = pixels
    return dataclasses.replace(moved, images=images)


class DeviceBatches:
    """Batches of a loader finished on ``device``, the next one prepared on a side stream (CUDA).

    Args:
        loader (Iterable[GroundingBatch]): a ``DataLoader`` (its ``sampler``, ``batch_sampler``, ``generator``,
            ``batch_size`` are exposed, so :class:`relground.engine.stream.DataStream` resumes through this).
        min_size (int), max_size (int), pixel_format (str): see :func:`finish_images`.
        device (torch.device | str): ``cuda[:i]``: copy + decode + resize on a side stream, one batch ahead
            (the caller's stream waits for it; tensors ``record_stream`` ed); ``cpu``: finish in place.

    A float batch (the PIL loader) is only moved, so this is also the PIL path's side-stream prefetcher.
    """

    def __init__(self, loader: Iterable, min_size: int, max_size: int, pixel_format: str, device="cpu") -> None:
        self.loader = loader
        self.min_size, self.max_size, self.pixel_format = min_size, max_size, pixel_format
        self.device = torch.device(device)

    def __getattr__(self, name: str):
        if name == "loader":  # not yet set (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def _finish(self, batch: GroundingBatch) -> GroundingBatch:
        return finish_images(batch, self.min_size, self.max_size, self.pixel_format, self.device)

    def __iter__(self) -> Iterator[GroundingBatch]:
        batches = iter(self.loader)
        if self.device.type != "cuda":
            for batch in batches:
                yield self._finish(batch)
            return
        side = torch.cuda.Stream(self.device)

        def prepare() -> Optional[GroundingBatch]:
            batch = next(batches, None)
            if batch is None:
                return None
            with torch.cuda.stream(side):
                return self._finish(batch)

        ready = prepare()
        while ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(side)
            for value in vars(ready).values():
                if isinstance(value, Tensor) and value.is_cuda:
                    value.record_stream(current)  # made on ``side``, used on ``current``: keep until used
            batch, ready = ready, prepare()  # the next batch's copy overlaps the caller's step
            yield batch
