"""Proposals HDF5: layout, round trip, validation, atomic writes, worker pickling, converters."""
from __future__ import annotations

import json
import pickle

import h5py
import numpy as np
import pytest
import torch

from relground.data.proposals import (
    ProposalSet,
    ProposalStore,
    convert_bottom_up,
    detect_proposals,
    write_proposals,
)
from tests.data.conftest import FLICKR_MINI, run_data_cli

CLASSES = ["man", "dog", "traffic light"]


def random_set(rng, m, width=64, height=48) -> ProposalSet:
    xy = rng.uniform(0, [width / 2, height / 2], size=(m, 2))
    wh = rng.uniform(1, [width / 2, height / 2], size=(m, 2))
    return ProposalSet(np.hstack([xy, xy + wh]), rng.random(m), rng.integers(0, len(CLASSES), m), width, height)


@pytest.fixture
def sets():
    rng = np.random.default_rng(0)
    return {"1000092795": random_set(rng, 7), "42": random_set(rng, 0), "7": random_set(rng, 3, 20, 30)}


def test_layout_matches_the_contract(tmp_path, sets):
    path = write_proposals(tmp_path / "p.h5", sets, CLASSES)
    with h5py.File(path, "r") as f:  # read with h5py directly, not through ProposalStore
        assert f.attrs["format_version"] == 1
        assert json.loads(f.attrs["class_names"]) == CLASSES
        assert sorted(f["images"].keys()) == sorted(sets)
        g = f["images/1000092795"]
        assert g["boxes"].dtype == np.float32 and g["boxes"].shape == (7, 4)
        assert g["scores"].dtype == np.float32 and g["scores"].shape == (7,)
        assert g["labels"].dtype == np.int64 and g["labels"].shape == (7,)
        assert (g.attrs["width"], g.attrs["height"]) == (64, 48)


def test_round_trip(tmp_path, sets):
    store = ProposalStore(write_proposals(tmp_path / "p.h5", sets, CLASSES))
    assert store.class_names == CLASSES
    assert sorted(store.image_ids) == sorted(sets) and len(store) == 3
    assert "7" in store and 7 in store and "8" not in store
    for image_id, expected in sets.items():
        got = store[image_id]
        np.testing.assert_array_equal(got.boxes, expected.boxes.astype(np.float32))
        np.testing.assert_array_equal(got.scores, expected.scores.astype(np.float32))
        np.testing.assert_array_equal(got.labels, expected.labels)
        assert (got.width, got.height) == (expected.width, expected.height)


def test_missing_image_names_file_and_id(tmp_path, sets):
    store = ProposalStore(write_proposals(tmp_path / "p.h5", sets, CLASSES))
    with pytest.raises(KeyError, match=r"p\.h5.*'123'"):
        store["123"]


def test_missing_or_foreign_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        ProposalStore(tmp_path / "nope.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("x", data=[1])
    with pytest.raises(ValueError, match="other.h5.*not a relground proposals file"):
        ProposalStore(tmp_path / "other.h5")


@pytest.mark.parametrize(
    "row, message",
    [
        ([np.nan, 0, 5, 5], "non-finite"),
        ([10, 0, 5, 5], "x2 < x1"),
        ([0, 0, 5, 49 + 2], "box outside the 64x48 image"),
        ([-3, 0, 5, 5], "box outside"),
    ],
)
def test_validation_names_file_image_and_row(tmp_path, sets, row, message):
    bad = sets["1000092795"]
    bad.boxes[4] = row
    with pytest.raises(ValueError, match=rf"bad\.h5: image '1000092795', row 4: {message}"):
        write_proposals(tmp_path / "bad.h5", sets, CLASSES)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left behind


def test_small_overhang_is_tolerated(tmp_path):
    # Detectors round a fraction of a pixel past the border: accepted within the tolerance.
    ok = ProposalSet(np.array([[-0.5, 0, 64.5, 48.4]]), np.array([1.0]), np.array([0]), 64, 48)
    assert ProposalStore(write_proposals(tmp_path / "p.h5", {"a": ok}, CLASSES))["a"].boxes.shape == (1, 4)


def test_label_outside_class_names(tmp_path, sets):
    sets["7"].labels[1] = len(CLASSES)
    with pytest.raises(ValueError, match=r"image '7', row 1: label outside \[0, 3\)"):
        write_proposals(tmp_path / "p.h5", sets, CLASSES)


def test_write_is_atomic(tmp_path, sets, monkeypatch):
    path = write_proposals(tmp_path / "p.h5", sets, CLASSES)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(h5py.Group, "create_dataset", boom)
    with pytest.raises(OSError, match="disk full"):
        write_proposals(path, sets, CLASSES)
    assert path.read_bytes() == before  # the old file survives a failed rewrite
    assert [p.name for p in tmp_path.iterdir()] == ["p.h5"]


class _ReadBoxes(torch.utils.data.Dataset):
    def __init__(self, store, ids):
        self.store, self.ids = store, ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return torch.from_numpy(self.store[self.ids[i]].boxes)


def test_store_is_picklable_and_reopens_in_workers(tmp_path, sets):
    store = ProposalStore(write_proposals(tmp_path / "p.h5", sets, CLASSES))
    store["7"]  # open the handle in this process first: it must not be pickled
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone["7"].boxes, sets["7"].boxes.astype(np.float32))
    ids = sorted(sets)
    loader = torch.utils.data.DataLoader(_ReadBoxes(store, ids), batch_size=None, num_workers=2)
    for image_id, boxes in zip(ids, loader):
        np.testing.assert_array_equal(boxes.numpy(), sets[image_id].boxes.astype(np.float32))


def _write_pickle(path, entries):
    with open(path, "wb") as f:
        pickle.dump(entries, f)


def test_convert_bottom_up_keeps_first_m(tmp_path):
    rng = np.random.default_rng(1)
    raw = {}
    for image_id, n in (("a", 60), (17, 4)):
        s = random_set(rng, n)
        raw[image_id] = {"boxes": np.hstack([s.boxes, s.scores[:, None], s.labels[:, None]])}
    _write_pickle(tmp_path / "bu.pkl", raw)
    sets = convert_bottom_up(tmp_path / "bu.pkl", CLASSES, {"a": (64, 48), "17": (64, 48)}, max_proposals=50)
    assert sorted(sets) == ["17", "a"]
    assert len(sets["a"]) == 50 and len(sets["17"]) == 4
    for key, src in (("a", raw["a"]["boxes"][:50]), ("17", raw[17]["boxes"])):
        np.testing.assert_allclose(sets[key].boxes, src[:, :4], rtol=1e-6)
        np.testing.assert_allclose(sets[key].scores, src[:, 4], rtol=1e-6)
        np.testing.assert_array_equal(sets[key].labels, src[:, 5].astype(np.int64))


def test_convert_bottom_up_errors(tmp_path):
    _write_pickle(tmp_path / "bad.pkl", {"a": {"boxes": np.zeros((3, 5))}})
    with pytest.raises(ValueError, match=r"bad\.pkl: image 'a': 'boxes' must be \[N, 6\]"):
        convert_bottom_up(tmp_path / "bad.pkl", CLASSES, {"a": (64, 48)})
    _write_pickle(tmp_path / "nosize.pkl", {"b": {"boxes": np.zeros((3, 6))}})
    with pytest.raises(ValueError, match=r"nosize\.pkl: image 'b': no image size"):
        convert_bottom_up(tmp_path / "nosize.pkl", CLASSES, {"a": (64, 48)})
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        convert_bottom_up(tmp_path / "missing.pkl", CLASSES, {})


def test_convert_proposals_cli_reads_sizes_from_annotations(tmp_path):
    # Box right at the border of 1016887272 (333 x 500 in its XML): valid only with the XML's size.
    _write_pickle(tmp_path / "bu.pkl", {"1016887272": {"boxes": np.array([[0, 0, 332, 499, 0.9, 2]])}})
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    argv = ["data", "convert-proposals", "--pickle", str(tmp_path / "bu.pkl"), "--class-names",
            str(tmp_path / "classes.txt"), "--root", str(FLICKR_MINI), "--out", str(tmp_path / "out.h5")]
    assert run_data_cli(argv[1:]) == 0
    store = ProposalStore(tmp_path / "out.h5")
    assert store.class_names == CLASSES
    got = store["1016887272"]
    assert (got.width, got.height) == (333, 500) and got.labels.tolist() == [2]


def test_detect_proposals_with_local_tiny_detector(tmp_path):
    from PIL import Image
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    kwargs = {"num_classes": 4, "min_size": 64, "max_size": 96, "rpn_pre_nms_top_n_test": 50,
              "rpn_post_nms_top_n_test": 20}
    model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, **kwargs)
    torch.save(model.state_dict(), tmp_path / "tiny.pth")
    rng = np.random.default_rng(0)
    paths = []
    for name, (h, w) in (("img_a", (40, 60)), ("img_b", (72, 50))):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{name}.jpg")
        paths.append(tmp_path / f"{name}.jpg")
    sets = detect_proposals(paths, tmp_path / "tiny.pth", "fasterrcnn_mobilenet_v3_large_320_fpn",
                            max_proposals=5, model_kwargs=kwargs)
    assert sorted(sets) == ["img_a", "img_b"]
    assert (sets["img_a"].width, sets["img_a"].height) == (60, 40)
    for s in sets.values():
        assert 0 < len(s) <= 5
        assert (np.diff(s.scores) <= 0).all()  # highest score first
        assert ((s.labels >= 1) & (s.labels < 4)).all()  # background (0) never returned
        assert (s.boxes[:, 2] <= s.width).all() and (s.boxes[:, 3] <= s.height).all()
    out = write_proposals(tmp_path / "det.h5", sets, [str(i) for i in range(4)])
    assert len(ProposalStore(out)) == 2


def test_detect_proposals_refuses_missing_weights_and_unknown_arch(tmp_path):
    with pytest.raises(FileNotFoundError, match="none.pth"):
        detect_proposals([], tmp_path / "none.pth")
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="arch: 'not_a_detector'"):
        detect_proposals([], tmp_path / "w.pth", arch="not_a_detector")


def test_detect_proposals_cli_names_bad_arguments(tmp_path):
    argv = ["detect-proposals", "--images", str(tmp_path / "none"), "--weights", "w.pth", "--out", "o.h5"]
    with pytest.raises(FileNotFoundError, match="--images: folder not found"):
        run_data_cli(argv)
    (tmp_path / "empty").mkdir()
    argv[2] = str(tmp_path / "empty")
    with pytest.raises(ValueError, match="--images: no .jpg"):
        run_data_cli(argv)
