"""DALI (CPU decoding) against the PIL path: same non-image fields, images within a measured tolerance."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from relground.config.data import DataConfig
from relground.data.dataset import GroundingDataset, build_dataloader
from relground.data.proposals import ProposalStore
from tests.data.conftest import GREY_LEVEL, fake_prior

pytest.importorskip("nvidia.dali", reason="nvidia-dali-cuda130 not installed")
from relground.data.dali import PIL_TOLERANCE, DaliGroundingLoader  # noqa: E402

MIN_SIZE, MAX_SIZE, M = 64, 100, 10
@pytest.fixture(scope="module")
def parts(grounding_parts):
    return grounding_parts


def datasets(parts, pixel_format):
    images, proposals, captions, phrases = parts
    common = dict(max_proposals=M, min_size=MIN_SIZE, max_size=MAX_SIZE, pixel_format=pixel_format)
    pil = GroundingDataset(images, ProposalStore(proposals), captions, phrases, fake_prior, **common)
    dali = GroundingDataset(images, ProposalStore(proposals), captions, phrases, fake_prior, load_images=False, **common)
    return pil, dali


@pytest.mark.parametrize("pixel_format", ["caffe_bgr", "torchvision"])
def test_dali_cpu_matches_pil(parts, pixel_format):
    pil, dali = datasets(parts, pixel_format)
    index = {(m.meta["image_id"], m.meta["sentence_index"]): i for i, m in enumerate(pil[i] for i in range(len(pil)))}
    seen = 0
    worst_max, worst_mean = 0.0, 0.0
    for batch in DaliGroundingLoader(dali, batch_size=4):
        for k, meta in enumerate(batch.meta):
            item = pil[index[(meta["image_id"], meta["sentence_index"])]]
            h, w = item.image_size
            assert batch.image_sizes[k].tolist() == [h, w]
            assert batch.scales[k].item() == pytest.approx(item.scale)
            diff = (batch.images[k, :, :h, :w] - item.image).abs() / GREY_LEVEL[pixel_format]
            worst_max, worst_mean = max(worst_max, diff.max().item()), max(worst_mean, diff.mean().item())
            assert (batch.images[k, :, h:, :] == 0).all() and (batch.images[k, :, :, w:] == 0).all()
            torch.testing.assert_close(batch.proposals[k], item.proposals)
            torch.testing.assert_close(batch.category_prior[k, : item.category_prior.shape[0]], item.category_prior)
            assert batch.meta[k] == item.meta
            seen += 1
    assert seen == len(pil)  # every pair exactly once, DALI's padding dropped
    print(f"DALI CPU vs PIL ({pixel_format}): max {worst_max:.2f}, mean {worst_mean:.3f} grey levels")
    assert worst_max <= PIL_TOLERANCE["max"] and worst_mean <= PIL_TOLERANCE["mean"]


def test_dali_textured_jpeg_within_tolerance(parts, tmp_path):
    """A high-frequency (noise) JPEG: the hardest case for decoder/resampler differences."""
    from PIL import Image

    images, proposals, captions, phrases = parts
    image = images[0]
    rng = np.random.default_rng(0)
    path = tmp_path / f"{image.image_id}.jpg"
    Image.fromarray(rng.integers(0, 256, (image.height, image.width, 3), dtype=np.uint8)).save(path, quality=75)
    common = dict(max_proposals=M, min_size=MIN_SIZE, max_size=MAX_SIZE, image_dir=str(tmp_path))
    one = [dataclasses.replace(image)]
    pil = GroundingDataset(one, ProposalStore(proposals), captions, phrases, fake_prior, **common)
    dali = GroundingDataset(one, ProposalStore(proposals), captions, phrases, fake_prior, load_images=False, **common)
    batch = next(iter(DaliGroundingLoader(dali, batch_size=1)))
    item = pil[0]
    diff = (batch.images[0] - item.image).abs()
    print(f"DALI CPU vs PIL (noise JPEG): max {diff.max():.2f}, mean {diff.mean():.3f} grey levels")
    assert diff.max() <= PIL_TOLERANCE["max"] and diff.mean() <= PIL_TOLERANCE["mean"]


def _loader(ds, name, **kwargs):
    cfg = DataConfig(loader=name, batch_size=4, num_workers=0, min_size=MIN_SIZE, max_size=MAX_SIZE)
    return build_dataloader(cfg, ds, train=True, seed=3, **kwargs)


def test_dali_shards_are_the_pil_shards_and_disjoint(parts):
    pil, dali = datasets(parts, "caffe_bgr")
    shards = []
    for r in range(2):
        got = [[(m["image_id"], m["sentence_index"]) for m in b.meta] for b in _loader(dali, "dali", rank=r, world_size=2)]
        want = [[(m["image_id"], m["sentence_index"]) for m in b.meta] for b in _loader(pil, "pil", rank=r, world_size=2)]
        assert got == want and got
        shards.append({pair for batch in got for pair in batch})
    assert not shards[0] & shards[1]


def test_dali_shuffles_per_epoch_but_keeps_every_pair(parts):
    _, dali = datasets(parts, "caffe_bgr")
    loader = _loader(dali, "dali")
    epochs = []
    for epoch in range(2):
        loader.batch_sampler.set_epoch(epoch)
        epochs.append([(m["image_id"], m["sentence_index"]) for b in loader for m in b.meta])
    every = {(m.meta["image_id"], m.meta["sentence_index"]) for m in (dali[i] for i in range(len(dali)))}
    for pairs in epochs:  # each pair at most once (the last partial batch dropped: training)
        assert len(set(pairs)) == len(pairs) >= len(every) - 3 and set(pairs) <= every
    assert epochs[0] != epochs[1]
