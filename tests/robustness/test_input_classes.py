"""Second pass (issue 24), input files: each case and the class it stands for.

* every duplicated key or id in an input file (split lists, predictions, relations and ReferIt JSON);
* every value whose type is coerced (proposal labels and sizes, XML coordinates, relation fields, pickle labels);
* every index that points outside its file (relations for a sentence that does not exist, relation categories
  outside the file's or the model's categories: caught when the split is loaded, skipped under
  ``data.skip_invalid``), a box list longer than the batch;
* a UTF-8 byte-order mark at the start of a text or JSON file (accepted: same records as without);
* proposals made for another image size in ``Grounder.ground``; ``ops.roi_align_avg(feat, [])``.
"""
from __future__ import annotations

import json
import pickle
import logging
import re
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from relground.engine.checkpoint import load_checkpoint
from relground.engine.defaults import build_split_dataset, model_from_checkpoint, num_relation_classes, train
from tests.robustness.conftest import TEST_IMAGE, tiny_config
from tests.robustness.test_inputs import XML, evaluate_argv, run_cli

TRAIN_IMAGE = "1000000"  # the first image of the synthetic train split


def evaluate_error(run: Path, root: Path, capsys) -> str:
    code, _, err = run_cli(evaluate_argv(run, root), capsys)
    assert code == 2 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("relground evaluate: error: "), err
    return line


def edit_relations(root: Path, split: str, edit) -> Path:
    path = root / f"relations_{split}.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


# ------------------------------------------------------------------------------ duplicated keys and ids


def test_an_id_listed_twice_in_a_split_list_is_named_or_skipped(run, fresh_root, capsys):
    from relground.data.flickr30k import SkipReport, load_flickr30k

    (fresh_root / "test.txt").write_text(f"{TEST_IMAGE}\n{TEST_IMAGE}\n")
    line = evaluate_error(run, fresh_root, capsys)
    assert re.search(rf"test\.txt:2: image id '{TEST_IMAGE}' is listed again \(first on line 1\); each image would be "
                     r"sampled twice", line), line
    train_ids = (fresh_root / "train.txt").read_text().split()
    (fresh_root / "train.txt").write_text("\n".join(train_ids + train_ids[:3]) + "\n")  # three repeats at the end
    report = SkipReport()
    images = load_flickr30k(fresh_root, "train", skip_invalid=True, report=report)
    assert [im.image_id for im in images] == train_ids and len(report) == 3
    assert "is listed again" in report.skipped[0][1]


DUPLICATED_JSON_KEYS = [  # (case id, file, (old, new) text edit, regex)
    ("relations-image-twice", "relations_test.json", ('"images": {', f'"images": {{"{TEST_IMAGE}": {{}}, '),
     rf"relations_test\.json: \['images'\]: key '{TEST_IMAGE}' is given twice in one object"),
    ("relations-sentence-twice", "relations_test.json", (f'"{TEST_IMAGE}": {{', f'"{TEST_IMAGE}": {{"0": [], '),
     rf"relations_test\.json: \['images'\]\['{TEST_IMAGE}'\]: key '0' is given twice"),
]


@pytest.mark.parametrize("case_id, relative, edit, expected", DUPLICATED_JSON_KEYS, ids=[c[0] for c in DUPLICATED_JSON_KEYS])
def test_a_json_key_given_twice_is_named(case_id, relative, edit, expected, run, fresh_root, capsys):
    path = fresh_root / relative
    text = path.read_text()
    assert edit[0] in text
    path.write_text(text.replace(edit[0], edit[1], 1))
    assert re.search(expected, evaluate_error(run, fresh_root, capsys))


def test_a_predictions_entry_with_box_twice_is_named(tmp_path):
    from relground.evaluation.predictions import load_predictions

    path = tmp_path / "p.json"
    entry = '{"image_id": "1", "sentence_index": 0, "first_word_index": 0, "box": [0, 0, 1, 1]'
    path.write_text(f'[{entry}}}, {entry}, "box": [5, 5, 9, 9]}}]')
    with pytest.raises(ValueError, match=r"p\.json: entry \[1\]: key 'box' is given twice in one object"):
        load_predictions(path)
    path.write_text(f"\ufeff[{entry}}}]")  # a byte-order mark is accepted
    assert load_predictions(path) == {("1", 0, 0): [0.0, 0.0, 1.0, 1.0]}


def test_a_referit_key_given_twice_is_named(tmp_path):
    from relground.data.referit import load_referit

    (tmp_path / "referit_query_test.json").write_text('{"8756_1": ["a dog"], "8756_1": ["a cat"]}')
    (tmp_path / "referit_bbox.json").write_text('{"8756_1": [0, 0, 9, 9]}')
    (tmp_path / "referit_imsize.json").write_text('{"8756.jpg": [20, 20]}')
    with pytest.raises(ValueError, match=r"referit_query_test\.json: the top-level object: key '8756_1' is given twice"):
        load_referit(tmp_path, "test")
    (tmp_path / "referit_query_test.json").write_text('\ufeff{"8756_1": ["a dog"]}')
    assert [s.text for s in load_referit(tmp_path, "test")[0].sentences] == ["a dog"]


# ------------------------------------------------------------------------------ coerced types


def rewrite_dataset(root: Path, name: str, values, attr: bool = False) -> None:
    with h5py.File(root / "proposals.h5", "r+") as f:
        group = f["images"][TEST_IMAGE]
        if attr:
            group.attrs[name] = values
        else:
            del group[name]
            group.create_dataset(name, data=values)


COERCED = [  # (case id, corruption of the copy, regex)
    ("proposal-label-4.5", lambda r: rewrite_dataset(r, "labels", np.array([4.5] + [1.0] * 34)),
     rf"proposals\.h5: image '{TEST_IMAGE}', row 0: label 4\.5 is not a whole number \(stored as float64"),
    ("proposal-width-128.5", lambda r: rewrite_dataset(r, "width", 128.5, attr=True),
     rf"proposals\.h5: image '{TEST_IMAGE}': attr width/height 128\.5 is not a whole number"),
    ("xml-fractional-coordinate", lambda r: _replace(r / XML, "<xmin>110</xmin>", "<xmin>110.5</xmin>"),
     r"1000009\.xml: <bndbox>/<xmin> is not a whole number of pixels: '110\.5'"),
    ("relation-subject-float", lambda r: edit_relations(r, "test", lambda d: _first(d).update(subject=1.0)),
     r"relations_test\.json: image '1000009' sentence 0: relation fields of the wrong type"),
    ("relation-subject-bool", lambda r: edit_relations(r, "test", lambda d: _first(d).update(subject=True)),
     r"relations_test\.json: image '1000009' sentence 0: relation fields of the wrong type"),
    ("relation-category-float", lambda r: edit_relations(r, "test", lambda d: _first(d).update(categories=[0.5])),
     r"relations_test\.json: image '1000009' sentence 0: relation fields of the wrong type"),
]


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _first(data: dict) -> dict:
    return data["images"][TEST_IMAGE]["0"][0]


@pytest.mark.parametrize("case_id, corrupt, expected", COERCED, ids=[c[0] for c in COERCED])
def test_a_value_that_would_be_coerced_is_named(case_id, corrupt, expected, run, fresh_root, capsys):
    corrupt(fresh_root)
    assert re.search(expected, evaluate_error(run, fresh_root, capsys))


def test_whole_numbers_stored_as_floats_still_load(fresh_root):
    from relground.data.proposals import ProposalStore

    clean = ProposalStore(fresh_root / "proposals.h5")[TEST_IMAGE]
    rewrite_dataset(fresh_root, "labels", clean.labels.astype(np.float32))
    rewrite_dataset(fresh_root, "width", float(clean.width), attr=True)
    again = ProposalStore(fresh_root / "proposals.h5")[TEST_IMAGE]
    assert np.array_equal(again.labels, clean.labels) and again.width == clean.width


def test_a_fractional_label_in_a_bottom_up_pickle_is_named(tmp_path):
    from relground.data.proposals import convert_bottom_up

    rows = np.array([[0, 0, 5, 5, 0.9, 1.0000001], [1, 1, 6, 6, 0.8, 4.5]])
    (tmp_path / "p.pkl").write_bytes(pickle.dumps({"img": {"boxes": rows}}))
    with pytest.raises(ValueError, match=r"p\.pkl: image 'img', row 1: label \(column 5\) 4\.5 is not a whole number"):
        convert_bottom_up(tmp_path / "p.pkl", ["a", "b", "c", "d", "e"], {"img": (10, 10)})
    (tmp_path / "p.pkl").write_bytes(pickle.dumps({"img": {"boxes": rows[:1]}}))  # float noise is rounded
    assert convert_bottom_up(tmp_path / "p.pkl", ["a", "b"], {"img": (10, 10)})["img"].labels.tolist() == [1]


# ------------------------------------------------------------------------------ indices outside their file


def _one_category(data: dict, used: int) -> None:
    data["categories"] = [{"name": "left of", "count": 1}]
    _first(data)["categories"] = [used]


OUTSIDE = [  # (case id, edit of relations_test.json, regex)
    ("sentence-that-does-not-exist", lambda d: d["images"][TEST_IMAGE].update({"7": []}),
     r"relations_test\.json: image '1000009': relations for sentence '7', which does not exist \(the sentences file "
     r"has 2: 0\.\.1\)"),
    ("category-999", lambda d: _one_category(d, 999),
     r"relations_test\.json: image '1000009' sentence 0: relation category 999 outside the file's 1 categories"),
    ("categories-list-cut-short", lambda d: _first(d).update(categories=[0]),  # the file has no category at all
     r"relations_test\.json: image '1000009' sentence 0: relation category 0 outside the file's 0 categories"),
    ("phrase-index", lambda d: _first(d).update(object=9),
     r"relations_test\.json: image '1000009' sentence 0: phrase index out of range .*the sentence has 4 phrase"),
]


@pytest.mark.parametrize("case_id, edit, expected", OUTSIDE, ids=[c[0] for c in OUTSIDE])
def test_an_index_outside_its_file_is_named_at_load(case_id, edit, expected, run, fresh_root, capsys):
    edit_relations(fresh_root, "test", edit)
    assert re.search(expected, evaluate_error(run, fresh_root, capsys))


def test_a_category_outside_the_models_is_named_when_the_dataset_is_built(run, fresh_root):
    """The test file's own categories allow it, but the model was trained with fewer (C_r): named before any batch."""
    state = load_checkpoint(run / "checkpoints" / "model_final.pth")
    _, cfg, model_args = model_from_checkpoint(state, [f"data.root={fresh_root}"])
    classes = num_relation_classes(cfg, model_args)

    def more_categories(data):
        data["categories"] = [{"name": f"c{i}", "count": 1} for i in range(classes + 5)]
        _first(data)["categories"] = [classes + 2]

    edit_relations(fresh_root, "test", more_categories)
    with pytest.raises(ValueError, match=rf"relations_test\.json: image '1000009' sentence 0: relation category "
                                         rf"{classes + 2} outside the model's {classes} relation categories"):
        build_split_dataset(cfg, "test", model_args)


def test_a_bad_relation_stops_training_before_iteration_0_or_is_skipped(bench, fresh_root, tmp_path, caplog):
    edit_relations(fresh_root, "train", lambda d: d["images"][TRAIN_IMAGE]["0"][0].update(categories=[999]))
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=rf"relations_train\.json: image '{TRAIN_IMAGE}' sentence 0: relation "
                                             r"category 999 outside the file's 0 categories"):
            train(tiny_config(fresh_root, out, iterations=1))
        assert not out.exists()  # before anything was written, let alone iteration 0
        relground_logger = logging.getLogger("relground")  # it does not propagate to the root (caplog's) handler
        relground_logger.addHandler(caplog.handler)
        try:
            with caplog.at_level("WARNING"):
                result = train(tiny_config(fresh_root, out, iterations=1, overrides=["data.skip_invalid=true"]))
        finally:
            relground_logger.removeHandler(caplog.handler)
    assert result["status"] == "finished"
    assert re.search(rf"relations_train\.json: skipped 1 invalid item\(s\): {TRAIN_IMAGE}: .*relation category 999",
                     caplog.text), caplog.text


def test_a_box_list_longer_than_the_batch_or_empty_is_named():
    from relground import ops

    features = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"roi_align_avg: `rois` is an empty list; pass one Tensor\[L_i, 4\] of boxes "
                                         r"per image of `input` \(N=2"):
        ops.roi_align_avg(features, [], output_size=2)
    with pytest.raises(ValueError, match=r"`rois` has 3 box lists but `input` holds 2 image\(s\)"):
        ops.roi_align_avg(features, [torch.zeros(0, 4)] * 3, output_size=2)
    with pytest.raises(ValueError, match=r"`rois\[0\]` is a list, expected a Tensor\[L_i, 4\]"):
        ops.roi_align_avg(features, [[0.0, 0.0, 4.0, 4.0]], output_size=2)
    boxes = [torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 4.0, 4.0]])]  # fewer boxes than images: fine, as before
    expected = ops.roi_align_avg(features, torch.tensor([[1.0, 0.0, 0.0, 4.0, 4.0]]), output_size=2)
    assert torch.equal(ops.roi_align_avg(features, boxes, output_size=2), expected)


# ------------------------------------------------------------------------------ byte-order marks


def test_a_byte_order_mark_at_the_start_of_a_text_file_is_accepted(bench, fresh_root):
    from relground.data.flickr30k import load_flickr30k

    for relative in (f"Sentences/{TEST_IMAGE}.txt", "test.txt", "relations_test.json"):
        path = fresh_root / relative
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    clean, marked = load_flickr30k(bench, "test"), load_flickr30k(fresh_root, "test")
    assert [s.words for s in marked[0].sentences] == [s.words for s in clean[0].sentences]
    assert marked[0].sentences[0].phrases == clean[0].sentences[0].phrases
    from relground.language.relations import attach_relations

    attach_relations(marked, fresh_root / "relations_test.json")
    attach_relations(clean, bench / "relations_test.json")
    assert marked[0].sentences[0].relations == clean[0].sentences[0].relations


# ------------------------------------------------------------------------------ ground


def test_ground_refuses_proposals_made_for_another_image_size(run, bench):
    from relground.api import Grounder
    from relground.data.proposals import ProposalSet, ProposalStore

    grounder = Grounder.from_checkpoint(run)
    image = bench / "Images" / f"{TEST_IMAGE}.jpg"
    stored = ProposalStore(bench / "proposals.h5")[TEST_IMAGE]
    assert grounder.ground(image, "a red circle", proposals=stored)  # made for this 128x128 image: fine
    other = ProposalSet(stored.boxes, stored.scores, stored.labels, 200, 128)
    with pytest.raises(ValueError, match=r"proposals: the proposals are for a 200x128 image but .*1000009\.jpg is "
                                         r"128x128 pixels"):
        grounder.ground(image, "a red circle", proposals=other)
    with pytest.raises(ValueError, match=r"row 0: box outside the 128x128 image"):
        grounder.ground(image, "a red circle", proposals=np.array([[0.0, 0.0, 500.0, 500.0]]))
    bad_label = ProposalSet(stored.boxes[:1], stored.scores[:1], [99], 128, 128)
    with pytest.raises(ValueError, match=r"row 0: label outside \[0, "):
        grounder.ground(image, "a red circle", proposals=bad_label)
