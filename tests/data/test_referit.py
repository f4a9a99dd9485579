"""ReferItGame reader against the text_objseg JSON files read independently."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from relground.data.referit import load_referit
from tests.data.conftest import REFERIT_MINI
from tests.utils import needs_shared_data


def check_against_json(folder: Path, split: str) -> int:
    images = load_referit(folder, split)
    queries = json.loads((folder / f"referit_query_{split}.json").read_text())
    bboxes = json.loads((folder / "referit_bbox.json").read_text())
    sizes = json.loads((folder / "referit_imsize.json").read_text())
    expected = sorted((crop, " ".join(e.split())) for crop, exprs in queries.items() for e in exprs)
    got = []
    for image in images:
        assert [image.width, image.height] == sizes[f"{image.image_id}.jpg"]
        assert [s.sentence_index for s in image.sentences] == list(range(len(image.sentences)))
        for s in image.sentences:
            (p,) = s.phrases
            assert p.phrase_id.split("_")[0] == image.image_id
            assert (p.first_word_index, p.num_words, p.text) == (0, len(s.words), s.text)
            assert s.words == s.text.split(" ")
            assert list(p.union_box) == [float(v) for v in bboxes[p.phrase_id]]  # 0-based inclusive, kept as is
            got.append((p.phrase_id, p.text))
    assert sorted(got) == expected
    return len(got)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_fixture_matches_json(split):
    assert check_against_json(REFERIT_MINI, split) > 0


def test_whitespace_is_normalised_and_order_follows_imlist():
    images = load_referit(REFERIT_MINI, "test")
    assert [im.image_id for im in images] == (REFERIT_MINI / "referit_test_imlist.txt").read_text().split()
    texts = {p.phrase_id: s.text for im in images for s in im.sentences for p in s.phrases}
    assert texts["38677_3"] == "green"  # "green " in the file


def test_parent_folder_is_accepted(tmp_path):
    shutil.copytree(REFERIT_MINI, tmp_path / "text_objseg")
    assert len(load_referit(tmp_path, "val")) == len(load_referit(REFERIT_MINI, "val"))


@pytest.fixture
def broken(tmp_path):
    shutil.copytree(REFERIT_MINI, tmp_path / "r")
    return tmp_path / "r"


def _edit_json(path: Path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_missing_box_names_file_and_crop(broken):
    _edit_json(broken / "referit_bbox.json", lambda d: d.pop("25247_2"))
    with pytest.raises(ValueError, match=r"referit_bbox\.json: no box for imcrop '25247_2'"):
        load_referit(broken, "test")


def test_box_outside_image(broken):
    def grow(d):
        d["6882_1"][2] = 10_000

    _edit_json(broken / "referit_bbox.json", grow)
    with pytest.raises(ValueError, match=r"referit_bbox\.json: imcrop '6882_1'.*outside the 360x480 image"):
        load_referit(broken, "test")


def test_missing_size_and_missing_split(broken):
    _edit_json(broken / "referit_imsize.json", lambda d: d.pop("6882.jpg"))
    with pytest.raises(ValueError, match=r"referit_imsize\.json: no size for image '6882\.jpg'"):
        load_referit(broken, "test")
    with pytest.raises(FileNotFoundError, match=r"referit_query_nosplit\.json"):
        load_referit(broken, "nosplit")
    with pytest.raises(FileNotFoundError, match="referit_bbox.json not found"):
        load_referit(broken / "Annotations", "test")


def test_broken_json(broken):
    (broken / "referit_query_val.json").write_text('{"10917_1": [')
    with pytest.raises(ValueError, match=r"referit_query_val\.json: broken JSON"):
        load_referit(broken, "val")


@needs_shared_data
@pytest.mark.parametrize("split, queries", [("test", 60105), ("val", 5842), ("train", 54134)])
def test_real_split_counts(referit_root, split, queries):
    assert check_against_json(referit_root, split) == queries
