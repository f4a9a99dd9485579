"""Evaluator: hand-made edge cases, float64 loop references, and the real Flickr30K Entities test split."""
from __future__ import annotations

import json
import re
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from relground.structures.batch import GroundingBatch
from relground.structures.records import ImageAnnotation, PhraseAnnotation, SentenceAnnotation
from relground.evaluation.evaluator import (
    IOU_THRESHOLDS,
    EvalPhrase,
    evaluate_predictions,
    evaluation_phrases,
    grounding_metrics,
    paired_iou,
    proposal_upper_bound,
)
from relground.evaluation.inference import evaluate_model
from relground.evaluation.predictions import load_predictions, save_predictions
from relground.evaluation.visualize import PALETTE, draw_groundings, plot_accuracy_vs_iou
from tests.utils import SHARED_DATA, needs_shared_data


def iou_loop(a, b) -> float:
    """IoU of two xyxy boxes, plain float64 Python (no +1); empty union -> 0."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def centre_inside(pred, gt) -> bool:
    cx, cy = (pred[0] + pred[2]) / 2, (pred[1] + pred[3]) / 2
    return gt[0] <= cx <= gt[2] and gt[1] <= cy <= gt[3]


def one(gt_box, phrase_type="people", key=("img", 0, 0), twin=None) -> EvalPhrase:
    return EvalPhrase(key, tuple(map(float, gt_box)), phrase_type, twin)


# ---------------------------------------------------------------- hand-made cases


@pytest.mark.parametrize(
    "pred, hit",
    [
        ((0, 0, 10, 5), True),  # IoU exactly 0.5 counts (>=)
        ((0, 0, 10, 4.99), False),  # just below
        ((0, 0, 10, 10), True),
        ((20, 20, 30, 30), False),  # disjoint
    ],
)
def test_accuracy_threshold_is_inclusive(pred, hit):
    metrics = grounding_metrics([one((0, 0, 10, 10))], {("img", 0, 0): pred})
    assert metrics["accuracy"] == float(hit)
    assert metrics["mean_iou"] == pytest.approx(iou_loop(pred, (0, 0, 10, 10)))


def test_acc_at_iou_thresholds_use_decimal_values():
    # IoU exactly 0.55 and 0.8: counted at those thresholds, not at the next ones.
    assert list(IOU_THRESHOLDS) == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8]
    phrases = [one((0, 0, 100, 100), key=("a", 0, 0)), one((0, 0, 100, 100), key=("a", 0, 3))]
    metrics = grounding_metrics(phrases, {("a", 0, 0): (0, 0, 100, 55), ("a", 0, 3): (0, 0, 100, 80)})
    acc = metrics["acc_at_iou"]
    assert acc["0.55"] == 1.0 and acc["0.60"] == 0.5 and acc["0.80"] == 0.5
    assert acc == {f"{t:.2f}": np.mean([0.55 >= t, 0.8 >= t]) for t in IOU_THRESHOLDS}


@pytest.mark.parametrize(
    "pred, hit",
    [
        ((8, 0, 12, 10), True),  # centre (10, 5) on the right border: inclusive
        ((8, 10, 12, 10), True),  # centre (10, 10) on the corner
        ((8.02, 0, 12, 10), False),  # centre 10.01 just outside
        ((-2, -2, 2, 2), True),  # centre (0, 0) on the top-left corner
    ],
)
def test_point_it_border_is_inside(pred, hit):
    metrics = grounding_metrics([one((0, 0, 10, 10))], {("img", 0, 0): pred})
    assert metrics["point_it"] == float(hit) == float(centre_inside(pred, (0, 0, 10, 10)))


def test_zero_area_boxes_score_iou_zero_without_nan():
    phrases = [one((0, 0, 10, 10), key=("z", 0, 0)), one((4, 4, 4, 4), key=("z", 0, 2))]
    predictions = {("z", 0, 0): (5, 5, 5, 5), ("z", 0, 2): (4, 4, 4, 4)}  # degenerate pred; identical degenerate pair
    metrics = grounding_metrics(phrases, predictions)
    assert metrics["mean_iou"] == 0.0 and metrics["accuracy"] == 0.0
    assert metrics["point_it"] == 1.0  # both centres lie inside (the second on the degenerate box itself)


def test_missing_predictions_are_misses_and_counted():
    phrases = [one((0, 0, 10, 10), key=("m", 0, i)) for i in range(4)]
    predictions = {("m", 0, 0): (0, 0, 10, 10), ("m", 0, 1): (0, 0, 10, 10), ("other", 0, 0): (0, 0, 1, 1)}
    metrics = grounding_metrics(phrases, predictions)
    assert metrics["count"] == 4 and metrics["predicted"] == 2 and metrics["missing"] == 2
    assert metrics["accuracy"] == 0.5 and metrics["point_it"] == 0.5 and metrics["mean_iou"] == 0.5
    # A missing prediction must not score even where a zero box's centre would be inside the GT.
    at_origin = grounding_metrics([one((0, 0, 10, 10))], {})
    assert at_origin["point_it"] == 0.0 and at_origin["missing"] == 1


def test_per_type_uses_first_type_and_twin_groups():
    image = ImageAnnotation(
        "7",
        100,
        100,
        [
            SentenceAnnotation(
                0,
                "a man on a car in a street",
                "a man on a car in a street".split(),
                [
                    PhraseAnnotation(0, "a man", "1", ("people",), (0, 0, 10, 10)),
                    PhraseAnnotation(3, "a car", "2", ("vehicles", "scene"), (20, 20, 40, 40)),
                    PhraseAnnotation(6, "a street", "3", ("scene",), (0, 50, 100, 100)),
                ],
            )
        ],
    )
    predictions = {("7", 0, 0): (0, 0, 10, 10), ("7", 0, 3): (0, 0, 5, 5), ("7", 0, 6): (0, 50, 100, 100)}
    twins = {("7", 0, 0): True, ("7", 0, 3): True, ("7", 0, 6): False}
    metrics = evaluate_predictions([image], predictions, twins=twins)
    assert set(metrics["per_type"]) == {"people", "vehicles", "scene"}  # "a car" counts as vehicles only
    assert metrics["per_type"]["vehicles"]["accuracy"] == 0.0 and metrics["per_type"]["vehicles"]["count"] == 1
    assert metrics["per_type"]["scene"]["accuracy"] == 1.0
    assert metrics["twin"]["count"] == 2 and metrics["twin"]["accuracy"] == 0.5
    assert metrics["no_twin"]["count"] == 1 and metrics["no_twin"]["accuracy"] == 1.0
    assert "twin" not in evaluate_predictions([image], predictions)


def test_ungrounded_phrases_are_not_evaluated_and_duplicates_rejected():
    words = "a man and the sky".split()
    phrases = [
        PhraseAnnotation(0, "a man", "1", ("people",), (0, 0, 5, 5)),
        PhraseAnnotation(3, "the sky", "0", ("notvisual",), None),
    ]
    image = ImageAnnotation("9", 10, 10, [SentenceAnnotation(2, " ".join(words), words, phrases)])
    assert [p.key for p in evaluation_phrases([image])] == [("9", 2, 0)]
    with pytest.raises(ValueError, match="duplicate"):
        evaluation_phrases([image, image])


def test_paired_iou_matches_torchvision_diagonal():
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(64, 2, generator=g, dtype=torch.float64) * 50
    wh = torch.rand(64, 2, generator=g, dtype=torch.float64) * 30
    a = torch.cat([xy, xy + wh], 1)
    b = a + torch.randn(64, 4, generator=g, dtype=torch.float64) * 5
    b = torch.cat([b[:, :2], torch.maximum(b[:, 2:], b[:, :2])], 1)
    expected = torchvision.ops.box_iou(a, b).diagonal()
    torch.testing.assert_close(paired_iou(a, b), expected)


def test_proposal_upper_bound_and_top_m():
    phrases = [one((0, 0, 10, 10), key=("u", 0, 0)), one((50, 50, 60, 60), key=("u", 0, 2)), one((0, 0, 4, 4), key=("v", 0, 0))]
    proposals = {"u": torch.tensor([[0.0, 0, 10, 6], [90, 90, 99, 99], [50, 50, 61, 61]])}  # "v" has none
    expected_all = [
        any(iou_loop(p.gt_box, box) >= 0.5 for box in proposals.get(p.key[0], torch.empty(0, 4)).tolist()) for p in phrases
    ]
    full = proposal_upper_bound(phrases, proposals)
    assert full["upper_bound"] == pytest.approx(np.mean(expected_all)) == pytest.approx(2 / 3)
    assert full["images_without_proposals"] == 1
    assert proposal_upper_bound(phrases, proposals, top_m=2)["upper_bound"] == pytest.approx(1 / 3)


# ---------------------------------------------------------------- predictions file


def test_predictions_file_round_trip(tmp_path):
    predictions = {("1", 0, 2): [1.0, 2.0, 3.0, 4.5], ("2", 4, 0): [0.0, 0.0, 9.0, 9.0]}
    save_predictions(predictions, tmp_path / "p.json")
    assert load_predictions(tmp_path / "p.json") == predictions


@pytest.mark.parametrize(
    "entries, message",
    [
        ({"image_id": "1"}, "expected a JSON list"),
        ([{"image_id": "1", "sentence_index": 0, "box": [0, 0, 1, 1]}], r"entry 0: missing field 'first_word_index'"),
        ([{"image_id": "1", "sentence_index": 0, "first_word_index": 0, "box": [0, 0, 1, 1]}, {"image_id": "1", "sentence_index": "x", "first_word_index": 0, "box": [0, 0, 1, 1]}], r"entry 1: field 'sentence_index'"),
        ([{"image_id": "1", "sentence_index": 0, "first_word_index": 0, "box": [0, 0, 1]}], r"entry 0: field 'box'"),
        ([{"image_id": "1", "sentence_index": 0, "first_word_index": 0, "box": [5, 0, 1, 1]}], r"entry 0: field 'box' has x2 < x1"),
        ([{"image_id": "1", "sentence_index": 0, "first_word_index": 0, "box": [0, 0, 1, 1]}] * 2, r"entry 1: duplicate"),
    ],
)
def test_predictions_file_errors_name_file_entry_and_field(tmp_path, entries, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=message) as info:
        load_predictions(path)
    assert str(path) in str(info.value)


def test_predictions_file_missing_or_not_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_predictions(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        load_predictions(tmp_path / "broken.json")


# ---------------------------------------------------------------- evaluate_model over batches


class _OracleModel(torch.nn.Module):
    """Predicts the batch's own ground truth (fused), GT shifted right by its width (stage 1), GT cut to 60% height (stage 2)."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # evaluate_model reads the device from a parameter

    def forward(self, batch, iteration=None):
        gt = torch.nan_to_num(batch.gt_boxes)
        shifted = gt.clone()
        shifted[..., 0::2] += (gt[..., 2:3] - gt[..., 0:1])
        shorter = gt.clone()
        shorter[..., 3] = gt[..., 1] + 0.6 * (gt[..., 3] - gt[..., 1])
        return type("Out", (), {"boxes": gt, "boxes_stage1": shifted, "boxes_stage2": shorter})()


def _tiny_batch(images: list[ImageAnnotation], scale: float) -> GroundingBatch:
    """One batch item per sentence, GT scaled into resized pixels, proposals = GT boxes + one far box."""
    items = [(im, s) for im in images for s in im.sentences]
    b, p, m = len(items), max(len(s.phrases) for _, s in items), 3
    gt = torch.full((b, p, 4), float("nan"))
    valid = torch.zeros(b, p, dtype=torch.bool)
    proposals = torch.zeros(b, m, 4)
    meta = []
    for i, (im, s) in enumerate(items):
        for j, ph in enumerate(s.phrases):
            if ph.union_box is not None:
                gt[i, j] = torch.tensor(ph.union_box) * scale
                valid[i, j] = True
        proposals[i, 0] = gt[i, 0]
        proposals[i, 1] = torch.tensor([0.0, 0, 1, 1])
        meta.append({"image_id": im.image_id, "sentence_index": s.sentence_index,
                     "first_word_index": [ph.first_word_index for ph in s.phrases]})
    zeros = torch.zeros(b, dtype=torch.long)
    return GroundingBatch(
        images=torch.zeros(b, 3, 4, 4), image_sizes=torch.zeros(b, 2, dtype=torch.long), scales=torch.full((b,), scale),
        proposals=proposals, proposal_valid=torch.tensor([[True, True, False]] * b),
        proposal_labels=torch.zeros(b, m, dtype=torch.long), category_prior=torch.ones(b, p, m),
        words=torch.zeros(b, 1, dtype=torch.long), word_lengths=zeros, phrase_spans=torch.zeros(b, p, 2, dtype=torch.long),
        phrase_valid=valid, phrase_targets=torch.zeros(b, p, 1, dtype=torch.long),
        relation_index=torch.zeros(0, 3, dtype=torch.long), relation_labels=torch.zeros(0, 1), gt_boxes=gt, meta=meta,
    )


def test_evaluate_model_maps_back_to_original_pixels_and_reports_stages():
    words = "a dog near a red ball".split()
    image = ImageAnnotation("42", 200, 100, [
        SentenceAnnotation(0, " ".join(words), words, [
            PhraseAnnotation(0, "a dog", "1", ("animals",), (10, 10, 50, 60)),
            PhraseAnnotation(3, "a red ball", "2", ("other",), (120, 30, 140, 50)),
        ]),
        SentenceAnnotation(1, "a dog", ["a", "dog"], [PhraseAnnotation(0, "a dog", "1", ("animals",), (10, 10, 50, 60))]),
    ])
    loader = [_tiny_batch([image], scale=1.6)]
    model = _OracleModel().train()
    metrics = evaluate_model(model, loader, annotations=[image])
    assert model.training  # the mode is restored for a caller in the middle of training
    assert metrics["count"] == 3 and metrics["missing"] == 0
    assert metrics["accuracy"] == 1.0 and metrics["mean_iou"] == pytest.approx(1.0)
    assert metrics["stage1"]["accuracy"] == 0.0 and metrics["stage1"]["mean_iou"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["stage2"]["mean_iou"] == pytest.approx(0.6) and metrics["stage2"]["accuracy"] == 1.0
    # Proposal 0 is the first phrase's GT in each sentence: 2 of 3 phrases (the dog, twice) are covered.
    assert metrics["upper_bound"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="annotations"):
        evaluate_model(_OracleModel(), loader)


# ---------------------------------------------------------------- figures


def _has_colour(png: Path, rgb, tolerance=12) -> bool:
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    target = np.array([round(255 * c) for c in rgb])
    return bool((np.abs(pixels - target).max(axis=-1) <= tolerance).any())


def test_accuracy_plot_writes_png(tmp_path):
    curves = {"full": {"0.50": 0.6, "0.60": 0.5, "0.70": 0.3}, "baseline": {"0.50": 0.4, "0.60": 0.2, "0.70": 0.1}}
    out = plot_accuracy_vs_iou(curves, tmp_path / "fig4" / "acc.png", mean_ious={"full": 0.5, "baseline": 0.35})
    assert out.is_file() and Image.open(out).size == (1000, 380)
    assert _has_colour(out, PALETTE[0]) and _has_colour(out, PALETTE[1])
    with pytest.raises(ValueError, match="curves"):
        plot_accuracy_vs_iou({}, tmp_path / "x.png")


def test_draw_groundings_colours_boxes_and_phrases(tmp_path):
    image = np.full((60, 80, 3), 255, dtype=np.uint8)
    words = "a man throws a ball".split()
    out = draw_groundings(image, words, [(0, 2), (3, 5)], [(5, 5, 40, 55), (50, 10, 70, 30)], tmp_path / "g.png",
                          dashed_boxes=[None, (45, 5, 75, 35)])
    assert out.is_file()
    assert _has_colour(out, PALETTE[0]) and _has_colour(out, PALETTE[1]) and not _has_colour(out, PALETTE[2])
    with pytest.raises(ValueError, match="2 spans but 1 boxes"):
        draw_groundings(image, words, [(0, 2), (3, 5)], [(5, 5, 40, 55)], tmp_path / "h.png")


# ---------------------------------------------------------------- real Flickr30K Entities test split


FLICKR = SHARED_DATA / "flickr30k_entities"
PHRASE = re.compile(r"\[/EN#(\d+)((?:/[^ \]]+)+) ([^\]]*)\]")


@pytest.fixture(scope="module")
def flickr_test_root(tmp_path_factory) -> Path:
    """The test split's XML and sentence files unpacked from the release tarball (one streaming pass)."""
    root = tmp_path_factory.mktemp("flickr30k_test")
    ids = set((FLICKR / "test.txt").read_text().split())
    with tarfile.open(FLICKR / "annotations.tar.xz") as tar:
        for member in tar:  # extract while streaming: going back would decompress the archive again
            if member.isfile() and Path(member.name).stem in ids:
                tar.extract(member, root, filter="data")
    (root / "test.txt").write_text((FLICKR / "test.txt").read_text())
    return root


def _independent_ground_truth(root: Path) -> list[tuple[tuple[str, int, int], tuple, str]]:
    """(key, union box, first type) of every evaluated test phrase, parsed here with regex + ElementTree."""
    out = []
    for image_id in (root / "test.txt").read_text().split():
        boxes: dict[str, list] = {}
        for obj in ET.parse(root / "Annotations" / f"{image_id}.xml").getroot().iter("object"):
            bnd = obj.find("bndbox")
            if bnd is None:
                continue
            box = [float(bnd.find(t).text) - 1 for t in ("xmin", "ymin", "xmax", "ymax")]
            for name in obj.findall("name"):
                boxes.setdefault(name.text.strip(), []).append(box)
        lines = (root / "Sentences" / f"{image_id}.txt").read_text(encoding="utf-8").split("\n")
        for line_no, line in enumerate(lines):
            position = 0  # words before the current match
            cursor = 0
            for match in PHRASE.finditer(line):
                position += len(line[cursor : match.start()].split())
                cursor = match.end()
                chain, types, text = match.group(1), match.group(2).strip("/").split("/"), match.group(3)
                if chain != "0" and chain in boxes:
                    b = boxes[chain]
                    union = (min(x[0] for x in b), min(x[1] for x in b), max(x[2] for x in b), max(x[3] for x in b))
                    out.append(((image_id, line_no, position), union, types[0]))
                position += len(text.split())
    return out


@needs_shared_data
def test_real_flickr30k_test_split_oracle_and_shifted(flickr_test_root):
    from relground.data.flickr30k import load_flickr30k

    truth = _independent_ground_truth(flickr_test_root)
    assert len(truth) == 14481  # the count the README (and the field) states
    images = load_flickr30k(flickr_test_root, "test")

    oracle = {key: list(box) for key, box, _ in truth}
    metrics = evaluate_predictions(images, oracle)
    assert metrics["count"] == 14481 and metrics["missing"] == 0
    assert metrics["accuracy"] == 1.0 and metrics["point_it"] == 1.0 and metrics["mean_iou"] == pytest.approx(1.0)

    # Deterministic shifts of 0..60% of the box width/height; every 11th phrase left without a prediction.
    shifted, expected_iou, expected_point, types = {}, [], [], {}
    for i, (key, box, first_type) in enumerate(truth):
        w, h = box[2] - box[0], box[3] - box[1]
        dx, dy = w * (i % 7) / 10, h * (i % 3) / 10
        pred = (box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy)
        types.setdefault(first_type, []).append(i)
        if i % 11 == 0:
            expected_iou.append(0.0)
            expected_point.append(False)
            continue
        shifted[key] = list(pred)
        expected_iou.append(iou_loop(pred, box))
        expected_point.append(centre_inside(pred, box))
    expected_iou = np.array(expected_iou)
    metrics = evaluate_predictions(images, shifted)
    assert metrics["missing"] == len(range(0, len(truth), 11))
    assert metrics["accuracy"] == pytest.approx(np.mean(expected_iou >= 0.5), abs=1e-12)
    assert metrics["point_it"] == pytest.approx(np.mean(expected_point), abs=1e-12)
    assert metrics["mean_iou"] == pytest.approx(expected_iou.mean(), abs=1e-9)
    for t in IOU_THRESHOLDS:
        assert metrics["acc_at_iou"][f"{t:.2f}"] == pytest.approx(np.mean(expected_iou >= t), abs=1e-12)
    assert set(metrics["per_type"]) == set(types)
    for name, idx in types.items():
        assert metrics["per_type"][name]["count"] == len(idx)
        assert metrics["per_type"][name]["accuracy"] == pytest.approx(np.mean(expected_iou[idx] >= 0.5), abs=1e-12)
    assert 0.05 < metrics["accuracy"] < 0.95  # the shifts produce a genuine mix of hits and misses
