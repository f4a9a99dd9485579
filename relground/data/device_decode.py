"""Images finished on the device: the ``torchvision`` loader (``data.loader: torchvision``).

The workers hand over *raw* images, uint8 and unresized, in pinned memory (4 bytes a pixel less than the PIL
path's float32 batch, and before the 600 / 1000 upscale of a typical Flickr30K image: ~5x fewer bytes):

- ``raw_images="decoded"``: the worker decodes with ``torchvision.io.decode_jpeg`` (libjpeg-turbo): ``images`` is
  uint8 ``[G, 3, H0, W0]``, one row per distinct image, zero-padded to the batch's largest *original* size;
- with CUDA the worker only reads the file: ``images`` is the JPEG bytes, uint8 ``[G, N]`` zero-padded, each
  image's length in ``meta[i]["jpeg_bytes"]``, decoded by nvJPEG (``decode_jpeg(device="cuda")``) here.

:func:`finish_images` then resizes and normalises every image with :func:`~relground.data.transforms.transform_image`
(the PIL path's very function, run on the tensor's device) and pads them as ``collate_grounding`` does, giving
the PIL path's ``GroundingBatch``; each distinct image of the batch is decoded and resized once. :class:`DeviceBatches`
wraps the ``DataLoader``: on CUDA a background thread copies and finishes the *next* batch on a side stream while
the caller's step runs. Without a GPU the torchvision loader finishes its images in the workers (no raw hand-over).
"""
from __future__ import annotations

import dataclasses
import queue
import threading
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

    Each distinct image is decoded and resized once: the raw rows are the batch's distinct images (``image_firsts``
    order, :func:`relground.data.collate.collate_grounding`), or one per item; the finished rows are then gathered
    per item (``image_index``), so the result has the PIL path's layout.

    Args:
        batch (GroundingBatch): ``images`` uint8 ``[G, 3, H0, W0]`` (decoded, padded; ``meta[i]["original_size"]``)
            or ``[G, N]`` (JPEG bytes; ``meta[i]["jpeg_bytes"]``), G = distinct images or items. A float
            ``images`` (PIL path) passes unchanged.
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
    b = len(batch.meta)
    if raw.shape[0] == b or batch.image_firsts is None:
        rows, index = list(range(b)), None  # one raw row per item
    else:
        rows, index = batch.image_firsts.tolist(), batch.image_index  # one per distinct image
    if raw.dim() == 2:  # JPEG bytes
        datas = [raw[g, : batch.meta[i]["jpeg_bytes"]].cpu() for g, i in enumerate(rows)]
        decoded = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
        if isinstance(decoded, Tensor):
            decoded = [decoded]
    else:
        raw = raw.to(device, non_blocking=True)
        decoded = [raw[g, :, : batch.meta[i]["original_size"][0], : batch.meta[i]["original_size"][1]]
                   for g, i in enumerate(rows)]
    sizes = batch.image_sizes.tolist()  # host tensor: no device sync
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    images = torch.zeros(len(decoded), 3, height, width, device=device)
    for g, (i, image) in enumerate(zip(rows, decoded)):
        pixels, _ = transform_image(image, min_size, max_size, pixel_format)
        if tuple(pixels.shape[-2:]) != tuple(sizes[i]):
            raise ValueError(f"image {batch.meta[i].get('image_id')!r}: decoded to {tuple(image.shape[-2:])} pixels, "
                             f"not its annotated size {tuple(batch.meta[i]['original_size'])}")
        images[g, :, : pixels.shape[1], : pixels.shape[2]] = pixels
    if index is not None:
        images = images.index_select(0, index.to(device, non_blocking=True))  # [G, ...] -> [B, ...]
    return dataclasses.replace(moved, images=images)


_END = object()  # the producer thread's end-of-epoch mark


class DeviceBatches:
    """Batches of a loader finished on ``device`` by a background thread, one batch ahead (CUDA).

    Args:
        loader (Iterable[GroundingBatch]): a ``DataLoader`` (its ``sampler``, ``batch_sampler``, ``generator``,
            ``batch_size`` are exposed, so :class:`relground.engine.stream.DataStream` resumes through this).
        min_size (int), max_size (int), pixel_format (str): see :func:`finish_images`.
        device (torch.device | str): ``cuda[:i]``: copy + decode + resize on a side stream; ``cpu``: finish in place.
        background (bool, optional): fetch and finish in a thread, ``ahead`` batches ahead of the caller. Default:
            on CUDA. The thread takes the loader's wait, the host-to-device copy, nvJPEG's stream synchronisation
            and the resize launches off the training thread; the caller's stream waits on an event of the side
            stream, and the time the caller spends in ``next`` is only the wait for a ready batch (what a
            step's ``data_ms`` should measure).
        ahead (int): batches prepared ahead of the one in use. Default 1.

    A float batch (the PIL loader) is only moved, so this is also the PIL path's side-stream prefetcher.
    """

    def __init__(self, loader: Iterable, min_size: int, max_size: int, pixel_format: str, device="cpu",
                 background: Optional[bool] = None, ahead: int = 1) -> None:
        self.loader = loader
        self.min_size, self.max_size, self.pixel_format = min_size, max_size, pixel_format
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # the prefetch thread needs the index
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.background = self.device.type == "cuda" if background is None else background
        self.ahead = max(1, ahead)

    def __getattr__(self, name: str):
        if name == "loader":  # not yet set (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def _finish(self, batch: GroundingBatch) -> GroundingBatch:
        return finish_images(batch, self.min_size, self.max_size, self.pixel_format, self.device)

    def __iter__(self) -> Iterator[GroundingBatch]:
        # The loader's iterator is made here, in the caller's thread (DataStream makes it under fork_rng: the
        # workers' seed draw must not shift the model's RNG stream), not in the generator below.
        batches = iter(self.loader)
        return self._threaded(batches) if self.background else (self._finish(batch) for batch in batches)

    def _threaded(self, batches: Iterator[GroundingBatch]) -> Iterator[GroundingBatch]:
        ready: queue.Queue = queue.Queue(maxsize=self.ahead)
        stop = threading.Event()
        cuda = self.device.type == "cuda"
        side = torch.cuda.Stream(self.device) if cuda else None

        def put(value) -> bool:
            while not stop.is_set():
                try:
                    ready.put(value, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                if cuda:  # a new thread starts on device 0
                    torch.cuda.set_device(self.device)
                for batch in batches:
                    event = None
                    if cuda:
                        with torch.cuda.stream(side):
                            batch = self._finish(batch)
                            event = torch.cuda.Event()
                            event.record(side)
                    else:
                        batch = self._finish(batch)
                    if not put((batch, event)):
                        return
                put(_END)
            except BaseException as e:  # re-raised in the caller's thread
                put(e)

        thread = threading.Thread(target=produce, name="relground-device-batches", daemon=True)
        thread.start()
        try:
            while True:
                value = ready.get()
                if value is _END:
                    return
                if isinstance(value, BaseException):
                    raise value
                batch, event = value
                if event is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    for tensor in vars(batch).values():
                        if isinstance(tensor, Tensor) and tensor.is_cuda:
                            tensor.record_stream(current)  # made on ``side``, used on ``current``: keep until used
                yield batch
        finally:
            stop.set()
            thread.join(timeout=5)
