"""The three image paths on the same JPEGs: PIL (reference), torchvision (raw uint8 / JPEG bytes finished by
``finish_images``) and DALI, all decoding on the CPU here; a CUDA-only test for nvJPEG + the side-stream prefetch.

Tolerances (0..255 grey levels, before normalisation): torchvision on CPU ``CPU_DECODE_TOLERANCE``, max 1 /
mean 0.05 (PIL and ``torchvision.io`` both use libjpeg-turbo and the same resize call: bit-identical here; one
level for another libjpeg-turbo build's rounding). DALI and nvJPEG use their own decoders (IDCT, chroma
upsampling) and resample in float: ``dali.PIL_TOLERANCE`` = ``TORCHVISION_TOLERANCE``, max 10 / mean 0.5.
A white-noise JPEG is the worst case for every decoder.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from relground.config.data import DataConfig
from relground.data.dataset import GroundingDataset, build_dataloader
from relground.data.device_decode import CPU_DECODE_TOLERANCE, TORCHVISION_TOLERANCE, DeviceBatches, finish_images
from relground.data.proposals import ProposalStore
from relground.engine.stream import DataStream
from tests.data.conftest import GREY_LEVEL, fake_prior

MIN_SIZE, MAX_SIZE, M, BATCH = 64, 100, 10, 3
@pytest.fixture(scope="module")
def parts(grounding_parts):
    return grounding_parts


@pytest.fixture(scope="module")
def noise_parts(parts, tmp_path_factory):
    """The same records with every image replaced by a white-noise quality-75 JPEG (the hardest case)."""
    from PIL import Image

    images, proposals, captions, phrases = parts
    folder = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    moved = []
    for image in images:
        path = folder / f"{image.image_id}.jpg"
        Image.fromarray(rng.integers(0, 256, (image.height, image.width, 3), dtype=np.uint8)).save(path, quality=75)
        moved.append(dataclasses.replace(image, image_path=str(path)))
    return moved, proposals, captions, phrases


def dataset(parts, pixel_format, **kwargs):
    images, proposals, captions, phrases = parts
    return GroundingDataset(images, ProposalStore(proposals), captions, phrases, fake_prior, max_proposals=M,
                            min_size=MIN_SIZE, max_size=MAX_SIZE, pixel_format=pixel_format, **kwargs)


def compare_to_pil(batches, pil: GroundingDataset, pixel_format: str) -> tuple[float, float]:
    """Every pair of ``pil`` exactly once in ``batches``; returns the worst (max, mean) grey-level difference."""
    index = {(pil[i].meta["image_id"], pil[i].meta["sentence_index"]): i for i in range(len(pil))}
    seen, worst_max, worst_mean = 0, 0.0, 0.0
    for batch in batches:
        assert batch.images.dtype == torch.float32
        for k, meta in enumerate(batch.meta):
            item = pil[index[(meta["image_id"], meta["sentence_index"])]]
            h, w = item.image_size
            assert tuple(item.image.shape[-2:]) == (h, w)
            assert batch.image_sizes[k].tolist() == [h, w]
            assert batch.scales[k].item() == pytest.approx(item.scale)
            image = batch.images[k].cpu()
            diff = (image[:, :h, :w] - item.image).abs() / GREY_LEVEL[pixel_format]
            worst_max, worst_mean = max(worst_max, diff.max().item()), max(worst_mean, diff.mean().item())
            assert (image[:, h:, :] == 0).all() and (image[:, :, w:] == 0).all()  # the PIL collate's zero padding
            torch.testing.assert_close(batch.proposals[k].cpu(), item.proposals)
            torch.testing.assert_close(batch.category_prior[k, : item.category_prior.shape[0]].cpu(), item.category_prior)
            seen += 1
    assert seen == len(pil)
    return worst_max, worst_mean


def torchvision_loader(ds: GroundingDataset, device_id=None):
    cfg = DataConfig(loader="torchvision", batch_size=BATCH, num_workers=0, min_size=MIN_SIZE, max_size=MAX_SIZE)
    return build_dataloader(cfg, ds, train=False, device_id=device_id)


@pytest.mark.parametrize("raw", ["decoded", "jpeg"])
@pytest.mark.parametrize("pixel_format", ["caffe_bgr", "torchvision"])
@pytest.mark.parametrize("content", ["smooth", "noise"])
def test_torchvision_path_matches_pil(parts, noise_parts, content, pixel_format, raw):
    source = parts if content == "smooth" else noise_parts
    pil = dataset(source, pixel_format)
    loader = torchvision_loader(dataset(source, pixel_format, raw_images=raw))
    assert isinstance(loader, DeviceBatches)
    worst_max, worst_mean = compare_to_pil(loader, pil, pixel_format)
    print(f"torchvision ({raw}) vs PIL, {content} {pixel_format}: max {worst_max:.2f}, mean {worst_mean:.3f} grey levels")
    assert worst_max <= CPU_DECODE_TOLERANCE["max"] and worst_mean <= CPU_DECODE_TOLERANCE["mean"]


@pytest.mark.parametrize("content", ["smooth", "noise"])
def test_dali_path_matches_pil(parts, noise_parts, content):
    pytest.importorskip("nvidia.dali", reason="nvidia-dali-cuda130 not installed")
    from relground.data.dali import PIL_TOLERANCE, DaliGroundingLoader

    source = parts if content == "smooth" else noise_parts
    pil = dataset(source, "caffe_bgr")
    dali = DaliGroundingLoader(dataset(source, "caffe_bgr", load_images=False), batch_size=BATCH)
    worst_max, worst_mean = compare_to_pil(dali, pil, "caffe_bgr")
    print(f"DALI CPU vs PIL, {content}: max {worst_max:.2f}, mean {worst_mean:.3f} grey levels")
    assert worst_max <= PIL_TOLERANCE["max"] and worst_mean <= PIL_TOLERANCE["mean"]


def test_raw_batches_are_uint8_and_unresized(parts):
    """What crosses to the device: uint8, the original size (or the file's bytes), not float32 at 600 / 1000."""
    ds = dataset(parts, "caffe_bgr", raw_images="decoded")
    raw = next(iter(torchvision_loader(ds).loader))
    assert raw.images.dtype == torch.uint8 and raw.images.dim() == 4
    assert raw.images.shape[-2:] == torch.Size([max(m["original_size"][0] for m in raw.meta),
                                                max(m["original_size"][1] for m in raw.meta)])
    jpeg = next(iter(torchvision_loader(dataset(parts, "caffe_bgr", raw_images="jpeg")).loader))
    assert jpeg.images.dtype == torch.uint8 and jpeg.images.dim() == 2
    assert jpeg.images.shape[0] == len(jpeg.image_firsts) < len(jpeg.meta)  # one row per distinct image
    for g, k in enumerate(jpeg.image_firsts.tolist()):
        assert bytes(jpeg.images[g, :2].tolist()) == b"\xff\xd8"  # SOI marker: the file itself
        assert jpeg.meta[k]["jpeg_bytes"] <= jpeg.images.shape[1]
    # Finishing a float (PIL) batch changes nothing.
    pil = next(iter(build_dataloader(DataConfig(batch_size=BATCH, num_workers=0, min_size=MIN_SIZE, max_size=MAX_SIZE),
                                     dataset(parts, "caffe_bgr"), train=False)))
    assert finish_images(pil, MIN_SIZE, MAX_SIZE, "caffe_bgr").images is pil.images


def test_data_stream_through_device_batches(parts):
    """DataStream sees the wrapped DataLoader's sampler / generator, crosses epochs, and resumes mid-epoch."""
    cfg = DataConfig(loader="torchvision", batch_size=2, num_workers=0, min_size=MIN_SIZE, max_size=MAX_SIZE)
    ds = dataset(parts, "caffe_bgr", raw_images="decoded")
    stream = DataStream(build_dataloader(cfg, ds, train=True, seed=3))
    assert stream.generator is not None and stream.sampler is not None
    per_epoch = len(ds) // 2
    seen = [next(stream) for _ in range(per_epoch + 1)]
    state = stream.state_dict()
    expected = [next(stream).meta for _ in range(2)]
    resumed = DataStream(build_dataloader(cfg, dataset(parts, "caffe_bgr", raw_images="decoded"), train=True, seed=3))
    resumed.load_state_dict(state)
    assert [next(resumed).meta for _ in range(2)] == expected
    assert stream.epoch == 1 and all(b.images.dtype == torch.float32 for b in seen)


def test_bad_raw_images_and_loader_names(parts):
    with pytest.raises(ValueError, match="raw_images"):
        dataset(parts, "caffe_bgr", raw_images="png")
    with pytest.raises(ValueError, match="data.loader"):
        DataConfig(loader="nvjpeg")
    assert DataConfig(loader="torchvision", captions_per_image=2).loader == "torchvision"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvJPEG decode, side-stream prefetch)")
def test_cuda_decode_and_prefetch_match_cpu(parts, noise_parts):
    """nvJPEG + GPU resize against the PIL path, and the side-stream prefetcher: same batches in the same order."""
    for source in (parts, noise_parts):
        pil = dataset(source, "caffe_bgr")
        loader = torchvision_loader(dataset(source, "caffe_bgr", raw_images="jpeg"), device_id=0)
        batches = list(loader)
        assert all(b.images.is_cuda and b.proposals.is_cuda for b in batches)
        worst_max, worst_mean = compare_to_pil(batches, pil, "caffe_bgr")
        print(f"nvJPEG vs PIL: max {worst_max:.2f}, mean {worst_mean:.3f} grey levels")
        assert worst_max <= TORCHVISION_TOLERANCE["max"] and worst_mean <= TORCHVISION_TOLERANCE["mean"]
        # The PIL loader on a GPU: prefetched (side stream) batches equal to the CPU loader's, in order.
        cfg = DataConfig(batch_size=BATCH, num_workers=0, min_size=MIN_SIZE, max_size=MAX_SIZE)
        on_gpu = build_dataloader(cfg, pil, train=False, device_id=0)
        assert isinstance(on_gpu, DeviceBatches)
        for cpu_batch, gpu_batch in zip(build_dataloader(cfg, pil, train=False), on_gpu, strict=True):
            torch.matmul(torch.ones(256, 256, device="cuda"), torch.ones(256, 256, device="cuda"))  # a "step"
            assert gpu_batch.images.is_cuda
            torch.testing.assert_close(gpu_batch.images.cpu(), cpu_batch.images, rtol=0, atol=0)
