"""Data preparation that matches the config: proposals per split where the config reads them, ReferIt images under
data.root, a relation vocabulary of 0 categories refused."""
from __future__ import annotations

import argparse
import importlib.util
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from relground.cli import data as data_cli
from relground.cli.main import main
from relground.config import load_config
from relground.data.dataset import image_file_problem
from relground.data.catalog import load_split
from relground.data.proposals import ProposalSet, ProposalStore, write_proposals
from relground.data.stand_in import write_stand_in
from relground.language import relations as rel
from tests.language.test_relations import _write_dataset
from tests.utils import FIXTURES

CLASSES = ["person", "dog", "ball"]


def split_ids(root: Path, split: str) -> list[str]:
    """The split file, read directly (independent of the reader)."""
    return [line.strip() for line in (root / f"{split}.txt").read_text().splitlines() if line.strip()]


@pytest.fixture
def flickr_root(tmp_path) -> Path:
    root = Path(shutil.copytree(FIXTURES / "flickr30k_mini", tmp_path / "flickr"))
    return root


def write_pickle(path: Path, image_ids) -> Path:
    rng = np.random.default_rng(0)
    raw = {}
    for image_id in image_ids:
        xy = rng.uniform(0, 100, (6, 2))
        boxes = np.hstack([xy, xy + rng.uniform(5, 50, (6, 2)), rng.uniform(0, 1, (6, 1)), rng.integers(0, 3, (6, 1))])
        raw[image_id] = {"boxes": boxes}
    path.write_bytes(pickle.dumps(raw))
    (path.parent / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return path


def test_convert_proposals_split_writes_the_split_where_the_config_reads_it(flickr_root, tmp_path, capsys):
    every_id = [i for split in ("train", "val", "test") for i in split_ids(flickr_root, split)]
    bu = write_pickle(tmp_path / "bu.pkl", every_id)
    for split in ("train", "test"):
        assert main(["data", "convert-proposals", "--pickle", str(bu), "--class-names", str(tmp_path / "classes.txt"),
                     "--config", "flickr30k_reir.yaml", "--root", str(flickr_root), "--split", split]) == 0
        out = capsys.readouterr().out
        cfg = load_config("flickr30k_reir.yaml", [f"data.root={flickr_root}"])
        expected = Path(cfg.data.proposals_path(split))  # what training and evaluation open
        assert expected == flickr_root / f"proposals_{split}.h5" and expected.is_file()
        assert sorted(ProposalStore(expected).image_ids) == sorted(split_ids(flickr_root, split))
        assert f"wrote {len(split_ids(flickr_root, split))} images to {expected}" in out
        assert "where data.proposals = '{root}/proposals_{split}.h5' reads them" in out


def test_convert_proposals_without_a_split_needs_out_and_warns_of_missing_images(flickr_root, tmp_path, capsys):
    test_ids = split_ids(flickr_root, "test")
    bu = write_pickle(tmp_path / "bu.pkl", test_ids[1:])
    base = ["data", "convert-proposals", "--pickle", str(bu), "--class-names", str(tmp_path / "classes.txt"),
            "--root", str(flickr_root)]
    assert main(base) == 2
    assert "--out: required without --split" in capsys.readouterr().err
    assert main(base + ["--split", "test"]) == 0
    captured = capsys.readouterr()
    assert f"warning: 1 of the test split's {len(test_ids)} images have no proposals" in captured.err
    assert sorted(ProposalStore(flickr_root / "proposals_test.h5").image_ids) == sorted(test_ids[1:])
    # an --out elsewhere is written, with a note of where the config reads
    assert main(base + ["--split", "test", "--out", str(tmp_path / "elsewhere.h5")]) == 0
    assert f"note: the config reads the test split's proposals from {flickr_root / 'proposals_test.h5'}" in \
        capsys.readouterr().out


def test_detect_proposals_split_runs_on_the_splits_images_only(flickr_root, tmp_path, monkeypatch, capsys):
    seen = []

    def fake_detector(paths, weights, arch, max_proposals, score_threshold, device):  # the detector itself: not here
        seen.extend(Path(p) for p in paths)
        one = ProposalSet(np.array([[0.0, 0.0, 4.0, 4.0]]), np.array([1.0]), np.array([1]), 8, 8)
        return {Path(p).stem: one for p in paths}

    monkeypatch.setattr(data_cli, "detect_proposals", fake_detector)
    images = flickr_root / "Images"
    images.mkdir()
    for image_id in split_ids(flickr_root, "train") + split_ids(flickr_root, "val"):
        (images / f"{image_id}.jpg").write_bytes(b"")
    argv = ["data", "detect-proposals", "--weights", str(tmp_path / "w.pth"), "--root", str(flickr_root),
            "--split", "val"]
    assert main(argv) == 0  # --images defaults to the dataset's folder under the root
    assert seen == [images / f"{i}.jpg" for i in split_ids(flickr_root, "val")]
    assert sorted(ProposalStore(flickr_root / "proposals_val.h5").image_ids) == sorted(split_ids(flickr_root, "val"))
    assert main(argv[:-1] + ["test"]) == 2  # the test images are not there: named, nothing run
    assert "--images: " in capsys.readouterr().err and len(seen) == len(split_ids(flickr_root, "val"))


def test_referit_images_follow_data_root(tmp_path):
    out = tmp_path / "somewhere" / "referit"
    write_stand_in("referit", FIXTURES / "referit_mini", out, ("test",), 2, 5, 0)
    cfg = load_config("referit_reir.yaml", [f"data.root={out}"])
    images = load_split("referit", cfg.data.root, "test")
    for image in images:  # what the dataset checks before training: the file at the configured place is readable
        assert image_file_problem(cfg.data.images or None, image) is None
        assert Path(image.image_path).parent == out / "images"


requires_parser = pytest.mark.skipif(importlib.util.find_spec("sng_parser") is None, reason="SceneGraphParser missing")


def relations_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _write_dataset(root, {
        "1": ["[/EN#1/shapes a red circle] to the left of [/EN#2/shapes a blue square]"],
        "2": ["[/EN#3/shapes a green triangle] to the left of [/EN#4/shapes a red circle]"],
        "3": ["[/EN#5/shapes a blue circle] above [/EN#6/shapes a green square]"],
    })
    (root / "train.txt").write_text("1\n2\n3\n")
    return root


@requires_parser
def test_a_relation_vocabulary_of_zero_categories_is_refused(tmp_path, capsys):
    root = relations_root(tmp_path)
    out = tmp_path / "relations_train.json"
    argv = ["data", "relations", "--root", str(root), "--split", "train", "--out", str(out), "--workers", "1",
            "--cache-dir", str(tmp_path / "cache")]
    assert main(argv + ["--min-freq", "100"]) == 2
    err = capsys.readouterr().err
    assert "--min-freq 100: 0 relation categories" in err and "'to the left of', 2 times" in err
    assert "--min-freq 1 keeps 'to the left of'" in err
    assert not out.exists()  # nothing written
    assert main(argv + ["--min-freq", "1"]) == 0  # the suggested value works
    assert [c["name"] for c in json.loads(out.read_text())["categories"]] == ["to the left of"]


def test_training_warns_loudly_on_a_relations_file_without_categories(tmp_path):
    path = tmp_path / "relations_train.json"
    path.write_text(json.dumps({"categories": [], "min_freq": 100, "images": {}}))
    with pytest.warns(UserWarning, match=r"0 relation categories \(built with --min-freq 100\).*lower"):
        assert rel.load_categories(path) == []
    path.write_text(json.dumps({"categories": [{"name": "on", "count": 3}], "min_freq": 1, "images": {}}))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rel.load_categories(path) == [{"name": "on", "count": 3}]
