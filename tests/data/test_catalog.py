"""The dataset catalog: one entry per dataset name, the config's names, readers and layouts."""
from __future__ import annotations

import numpy as np
import pytest

from relground.config.data import DATASETS
from relground.data.catalog import CATALOG, TWINS_FILE, dataset_entry, image_sizes_from_root, load_split
from relground.data.flickr30k import load_flickr30k
from relground.data.proposals import WINDOW_FRACTIONS, sliding_windows
from relground.data.referit import load_referit
from tests.data.conftest import FLICKR_MINI, REFERIT_MINI


def test_the_catalog_and_the_config_name_the_same_datasets():
    assert tuple(CATALOG) == DATASETS
    assert CATALOG["synthetic"].twins_file == TWINS_FILE
    assert CATALOG["flickr30k"].twins_file is None and CATALOG["referit"].twins_file is None


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="--dataset: unknown dataset 'coco'"):
        dataset_entry("coco")
    with pytest.raises(ValueError, match="flickr30k, referit, synthetic"):
        load_split("coco", FLICKR_MINI, "test")


def test_readers_are_the_dataset_readers():
    assert load_split("flickr30k", FLICKR_MINI, "val") == load_flickr30k(FLICKR_MINI, "val")
    assert load_split("synthetic", FLICKR_MINI, "val") == load_flickr30k(FLICKR_MINI, "val")
    assert load_split("referit", REFERIT_MINI, "test") == load_referit(REFERIT_MINI, "test")


def test_stats_referit_adds_queries_and_objects():
    images = load_split("referit", REFERIT_MINI, "test")
    stats = dataset_entry("referit").stats(images)
    assert stats["queries"] == stats["sentences"] and stats["objects"] == stats["chains_with_boxes"]
    assert "queries" not in dataset_entry("flickr30k").stats(load_split("flickr30k", FLICKR_MINI, "val"))


def test_image_sizes_follow_the_root_layout():
    flickr = image_sizes_from_root(FLICKR_MINI)
    images = load_flickr30k(FLICKR_MINI, "val")
    assert all(flickr[im.image_id] == (im.width, im.height) for im in images)
    referit = image_sizes_from_root(REFERIT_MINI)
    assert all(referit[im.image_id] == (im.width, im.height) for im in load_referit(REFERIT_MINI, "test"))


@pytest.mark.parametrize("width, height", [(500, 375), (64, 64)])
def test_sliding_windows_cover_the_image_on_half_window_strides(width, height):
    boxes = sliding_windows(width, height)
    assert boxes.dtype == np.float32 and boxes.shape == (50, 4)
    np.testing.assert_allclose(boxes[0], [0, 0, width, height])
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width + 1e-3).all()
    assert len(WINDOW_FRACTIONS) == 4
    with pytest.raises(ValueError, match="fractions"):
        sliding_windows(10, 10, fractions=(0.0,))
