"""``relground data stand-in``: the real annotations with stand-in images and proposals train and evaluate.

The dry run of the real data path (README, "Real data"): ``configs/flickr30k_reir.yaml`` with a small backbone
over a subset of the REAL Flickr30K Entities annotations, captions and SceneGraphParser relations, then evaluated
on the real test annotations; the same shapes for ReferItGame's split files.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from relground.cli.main import main
from relground.data.catalog import load_split
from relground.data.proposals import ProposalStore
from relground.data.stand_in import STAND_IN_CLASSES, write_stand_in
from relground.evaluation.evaluator import evaluation_phrases
from tests.data.conftest import run_data_cli

# configs/flickr30k_reir.yaml's method, shrunk to CPU test size: only backbone, widths, image scale and schedule.
SMALL = [
    "model.backbone=resnet10", "model.backbone_weights=random", "model.stride_in_1x1=false", "model.box_head=fast",
    "model.hidden_dim=64", "model.word_dim=50", "model.vogn_dim=32", "model.ranking_dim=32", "model.relation_hidden=64",
    "model.regression_hidden=32", "data.min_size=200", "data.max_size=320", "data.num_workers=0",
    "data.batch_size=4", "solver.ims_per_batch=4", "solver.max_iter=12", "solver.warmup_iters=4", "solver.steps=[10]",
    "model.refine_start_iteration=6", "train.log_period=4", "train.checkpoint_period=12",
]


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def test_flickr_stand_in_files_match_the_real_annotations(flickr_root, tmp_path):
    summary = write_stand_in("flickr30k", flickr_root, tmp_path / "f", splits=("test",), images=5, num_proposals=50)
    assert summary["splits"]["test"]["images"] == 5
    real = load_split("flickr30k", flickr_root, "test")[:5]
    stand_in = load_split("flickr30k", tmp_path / "f", "test")
    assert [im.image_id for im in stand_in] == [im.image_id for im in real]  # the split file's first five
    store = ProposalStore(tmp_path / "f" / "proposals_test.h5")
    for image in stand_in:
        with Image.open(image.image_path) as jpeg:
            assert jpeg.size == (image.width, image.height)  # the annotated size
        proposals = store[image.image_id]
        assert proposals.boxes.shape == (50, 4) and (proposals.labels < len(STAND_IN_CLASSES)).all()
        # Jittered ground truth: every annotated box has a proposal overlapping it well.
        for boxes in image.chain_boxes.values():
            for box in boxes:
                lo = np.maximum(proposals.boxes[:, :2], box[:2])
                hi = np.minimum(proposals.boxes[:, 2:], box[2:])
                inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
                union = np.prod(np.subtract(box[2:], box[:2])) + np.prod(proposals.boxes[:, 2:] - proposals.boxes[:, :2], 1)
                assert (inter / (union - inter)).max() > 0.5


def test_referit_stand_in_keeps_the_first_images_and_their_queries(referit_root, tmp_path):
    assert run_data_cli(["stand-in", "--dataset", "referit", "--root", str(referit_root), "--out",
                         str(tmp_path / "r"), "--images", "4", "--split", "test"]) == 0
    real = load_split("referit", referit_root, "test")[:4]
    stand_in = load_split("referit", tmp_path / "r", "test")
    assert [(im.image_id, len(im.sentences)) for im in stand_in] == [(im.image_id, len(im.sentences)) for im in real]
    for image in stand_in:
        with Image.open(image.image_path) as jpeg:
            assert jpeg.size == (image.width, image.height)  # the size in referit_imsize.json
    assert set(ProposalStore(tmp_path / "r" / "proposals_test.h5").image_ids) == {im.image_id for im in real}


def test_real_test_split_has_the_evaluated_phrase_count(flickr_root):
    # The evaluator's own enumeration over the full real test split: the number the field reports.
    assert len(evaluation_phrases(load_split("flickr30k", flickr_root, "test"))) == 14481


@pytest.mark.slow
def test_dry_run_trains_the_real_config_on_real_annotations(flickr_root, tmp_path, capsys):
    pytest.importorskip("sng_parser")
    root, run = tmp_path / "f", tmp_path / "run"
    assert run_data_cli(["stand-in", "--dataset", "flickr30k", "--root", str(flickr_root), "--out", str(root),
                         "--images", "16", "--split", "train", "--split", "test"]) == 0
    # Relations parsed from the real captions; min-freq 1 because 16 images hold few repeats (the full train
    # split at --min-freq 100 gives the config's categories).
    assert run_data_cli(["relations", "--root", str(root), "--split", "train", "--min-freq", "1", "--workers", "1",
                         "--out", str(root / "relations_train.json")]) == 0
    assert run_data_cli(["relations", "--root", str(root), "--split", "test", "--workers", "1", "--categories",
                         str(root / "relations_train.json"), "--out", str(root / "relations_test.json")]) == 0
    capsys.readouterr()
    overrides = [f"data.root={root}", *SMALL]
    assert main(["train", "--config", "flickr30k_reir.yaml", "--output", str(run), *_sets(overrides)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["status"] == "finished" and result["iteration"] == 12
    losses = {k: v for k, v in result["metrics"].items() if k.startswith("loss/")}
    assert {"loss/rank_s1", "loss/rank_s2", "loss/rec_s2", "loss/rel"} <= set(losses)
    assert all(math.isfinite(v) for v in losses.values()) and math.isfinite(result["metrics"]["total_loss"])

    assert main(["evaluate", "--checkpoint", str(run), "--split", "test", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = len(evaluation_phrases(load_split("flickr30k", root, "test")))
    assert metrics["count"] == metrics["predicted"] == expected > 0 and metrics["missing"] == 0
    assert 0.0 <= metrics["accuracy"] <= metrics["upper_bound"] and metrics["upper_bound"] > 0.5
