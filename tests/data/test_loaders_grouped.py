"""Every loader on grouped captions (issue 23): the PIL batches, each distinct image decoded once (counted), batches
of one orientation pad less (bytes measured), resume part-way through an epoch without decoding the skipped
batches, the background prefetch thread, and ``data.loader: auto``.

DALI runs its CPU operators here (``device_id=None``); its GPU (``mixed``) decoding needs a GPU.
"""
from __future__ import annotations

import pytest
import torch

from relground.config.data import DataConfig
from relground.data.aspect_grouping import AspectRatioGroupedBatchSampler, is_landscape
from relground.data.dataset import GroundingDataset, build_dataloader
from relground.data.device_decode import CPU_DECODE_TOLERANCE, DeviceBatches
from relground.data.loader_choice import choose_loader
from relground.data.proposals import ProposalStore
from relground.engine.stream import DataStream
from tests.data.conftest import GREY_LEVEL, fake_prior

MIN_SIZE, MAX_SIZE, M = 64, 100, 10
CAPTIONS, BATCH = 5, 5  # a grouped batch of the fixture: one image's five captions (or two images' chunks)


@pytest.fixture(scope="module")
def parts(grounding_parts):
    return grounding_parts


def dataset(parts, **kwargs) -> GroundingDataset:
    images, proposals, captions, phrases = parts
    return GroundingDataset(images, ProposalStore(proposals), captions, phrases, fake_prior, max_proposals=M,
                            min_size=MIN_SIZE, max_size=MAX_SIZE, **kwargs)


def config(loader: str, **kwargs) -> DataConfig:
    values = dict(loader=loader, batch_size=BATCH, captions_per_image=CAPTIONS, num_workers=0, min_size=MIN_SIZE,
                  max_size=MAX_SIZE)
    return DataConfig(**{**values, **kwargs})


class DecodeCounter:
    """Counts ``GroundingDataset.decode_image`` calls (the PIL and torchvision paths' decodes)."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[str] = []
        original = GroundingDataset.decode_image

        def counted(ds, record, image_size):
            self.calls.append(record.image_id)
            return original(ds, record, image_size)

        monkeypatch.setattr(GroundingDataset, "decode_image", counted)


def distinct_images(batches) -> int:
    return sum(len({m["image_id"] for m in b.meta}) for b in batches)


def assert_same_batches(batches, reference, tolerance: dict) -> None:
    assert len(batches) == len(reference) > 0
    for got, ref in zip(batches, reference):
        assert [m for m in got.meta] == [m for m in ref.meta]  # same pairs, same order
        assert got.images.shape == ref.images.shape and got.images.dtype == torch.float32
        diff = (got.images - ref.images).abs() / GREY_LEVEL["caffe_bgr"]
        assert diff.max().item() <= tolerance["max"] and diff.mean().item() <= tolerance["mean"]
        for name in ("image_sizes", "scales", "proposals", "category_prior", "words", "image_index", "image_firsts"):
            torch.testing.assert_close(getattr(got, name), getattr(ref, name), rtol=0, atol=0)


def test_pil_grouped_decodes_each_distinct_image_once(parts, monkeypatch):
    counter = DecodeCounter(monkeypatch)
    batches = list(build_dataloader(config("pil"), dataset(parts), train=True, seed=1))
    pairs = sum(b.batch_size for b in batches)
    assert len(counter.calls) == distinct_images(batches) < pairs  # shared images: fewer decodes than pairs
    for b in batches:  # every row still holds its own image (the PIL batch layout)
        for k, first in enumerate(b.image_firsts[b.image_index].tolist()):
            assert torch.equal(b.images[k], b.images[first])


@pytest.mark.parametrize("raw", ["torchvision", "decoded"])
def test_torchvision_grouped_gives_the_pil_batches(parts, monkeypatch, raw):
    """``torchvision``: finished in the workers (no GPU) or raw uint8 rows per distinct image finished by
    DeviceBatches; both give the PIL loader's batches, decoding each distinct image once."""
    reference = list(build_dataloader(config("pil"), dataset(parts), train=True, seed=1))
    counter = DecodeCounter(monkeypatch)
    loader = build_dataloader(config("torchvision"), dataset(parts, raw_images=raw), train=True, seed=1)
    assert isinstance(loader, DeviceBatches) == (raw == "decoded")
    batches = list(loader)
    assert len(counter.calls) == distinct_images(batches) < sum(b.batch_size for b in batches)
    assert_same_batches(batches, reference, CPU_DECODE_TOLERANCE)


def test_dali_grouped_gives_the_pil_batches(parts):
    pytest.importorskip("nvidia.dali", reason="nvidia-dali-cuda130 not installed")
    from relground.data.dali import PIL_TOLERANCE, DaliGroundingLoader

    reference = list(build_dataloader(config("pil"), dataset(parts), train=True, seed=1))
    loader = build_dataloader(config("dali"), dataset(parts, load_images=False), train=True, seed=1)
    assert isinstance(loader, DaliGroundingLoader) and loader.loader_name == "dali"
    for epoch in range(2):  # a second epoch after DALI's end-of-epoch reset
        loader.batch_sampler.set_epoch(0)
        before = loader.decoded_images
        batches = list(loader)
        assert loader.decoded_images - before == distinct_images(batches) < sum(b.batch_size for b in batches)
        assert_same_batches(batches, reference, PIL_TOLERANCE)


@pytest.mark.parametrize("loader_name", ["pil", "dali"])
def test_resume_mid_epoch_skips_without_decoding(parts, monkeypatch, loader_name):
    """A stream stopped after k batches and resumed gives the same next batches; the k batches are not decoded."""
    if loader_name == "dali":
        pytest.importorskip("nvidia.dali", reason="nvidia-dali-cuda130 not installed")
    cfg = config(loader_name, captions_per_image=2, batch_size=2, aspect_grouping=True)

    def stream():
        return DataStream(build_dataloader(cfg, dataset(parts, load_images=loader_name != "dali"), train=True, seed=2))

    first = stream()
    per_epoch = len(first.loader)
    assert per_epoch >= 3
    consumed = [next(first) for _ in range(per_epoch + 1)]  # across an epoch boundary
    state = first.state_dict()
    expected = [next(first) for _ in range(2)]
    counter = DecodeCounter(monkeypatch)
    resumed = stream()
    resumed.load_state_dict(state)
    got = [next(resumed) for _ in range(2)]
    assert [b.meta for b in got] == [b.meta for b in expected] and consumed[-1].meta != got[0].meta
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)
    decoded = resumed.loader.decoded_images if loader_name == "dali" else len(counter.calls)
    # Only the two batches asked for (DALI may prefetch one more), never the epoch's first batch again.
    assert decoded <= distinct_images(got) + (2 if loader_name == "dali" else 0)


def test_aspect_grouping_pads_less(parts):
    """Per-pair batches of mixed orientations pad to a square; grouped by orientation they pad less (bytes)."""
    ds = dataset(parts)
    assert {is_landscape(im.height, im.width) for im in ds.images} == {True, False}
    bytes_per_pair = {}
    for grouping in (False, True):
        cfg = config("pil", captions_per_image=1, batch_size=4, aspect_grouping=grouping)
        batches = [b for epoch in range(3) for b in _epoch(build_dataloader(cfg, ds, train=True, seed=0), epoch)]
        pairs = sum(b.batch_size for b in batches)
        bytes_per_pair[grouping] = sum(b.images.numel() * b.images.element_size() for b in batches) / pairs
        if grouping:
            for b in batches:
                assert len({bool(w > h) for h, w in b.image_sizes.tolist()}) == 1  # one orientation
    print(f"image bytes per pair: mixed {bytes_per_pair[False]:.0f}, grouped {bytes_per_pair[True]:.0f}")
    assert bytes_per_pair[True] < 0.85 * bytes_per_pair[False]


def _epoch(loader, epoch):
    sampler = loader.batch_sampler.sampler  # RandomSampler (reshuffles by itself) or the aspect sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    return list(loader)


def test_aspect_sampler_keeps_every_pair_and_chunks():
    landscape = [i % 4 == 0 for i in range(12)]  # 0, 4, 8 landscape
    inner = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    batches = list(AspectRatioGroupedBatchSampler(inner, landscape, 4, drop_last=False))
    assert batches == [[1, 2, 3, 5], [6, 7, 9, 10], [0, 4, 8], [11]]  # inner order within a bucket, tails last
    assert list(AspectRatioGroupedBatchSampler(inner, landscape, 4)) == batches[:2]  # partial buckets dropped
    resumed = AspectRatioGroupedBatchSampler(inner, landscape, 4)
    resumed.set_start_batch(1)
    assert list(resumed) == batches[1:2]


def test_background_thread_gives_the_same_batches_and_raises(parts):
    cfg = config("pil", captions_per_image=1, batch_size=3)
    plain = list(build_dataloader(cfg, dataset(parts), train=False))
    threaded = DeviceBatches(build_dataloader(cfg, dataset(parts), train=False), MIN_SIZE, MAX_SIZE, "caffe_bgr",
                             "cpu", background=True)
    assert_same_batches(list(threaded), plain, {"max": 0.0, "mean": 0.0})

    def broken():
        yield plain[0]
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(DeviceBatches(broken(), MIN_SIZE, MAX_SIZE, "caffe_bgr", "cpu", background=True))


def test_auto_loader_choice():
    assert choose_loader("auto", cuda=True, dali="2.4.0")[0] == "dali"
    assert choose_loader("auto", cuda=True, dali=None)[0] == "torchvision"
    assert choose_loader("auto", cuda=False, dali="2.4.0")[0] == "pil"
    assert choose_loader("pil", cuda=True, dali="2.4.0")[0] == "pil"
    with pytest.raises(ValueError, match="data.loader: 'dali' needs NVIDIA DALI"):
        choose_loader("dali", cuda=True, dali=None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (DALI mixed decoding, nvJPEG, prefetch thread)")
def test_gpu_loaders_grouped_give_the_pil_batches(parts):
    """On a GPU: DALI ``mixed`` and torchvision (JPEG bytes -> nvJPEG, prefetch thread) on grouped captions."""
    from relground.data.device_decode import TORCHVISION_TOLERANCE

    reference = list(build_dataloader(config("pil"), dataset(parts), train=True, seed=1))
    loader = build_dataloader(config("torchvision"), dataset(parts, raw_images="jpeg"), train=True, seed=1,
                              device_id=0)
    batches = [b.to("cpu") for b in loader]
    assert_same_batches(batches, reference, TORCHVISION_TOLERANCE)
    if pytest.importorskip("nvidia.dali", reason="nvidia-dali-cuda130 not installed"):
        from relground.data.dali import PIL_TOLERANCE

        dali = build_dataloader(config("dali"), dataset(parts, load_images=False), train=True, seed=1, device_id=0)
        batches = [b.to("cpu") for b in dali]
        assert all(b.images.device.type == "cpu" for b in batches)
        assert_same_batches(batches, reference, PIL_TOLERANCE)
