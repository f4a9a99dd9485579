"""``relground benchmark`` at tiny shapes: the JSON line's fields agree with each other and with the grouping."""
import json
import math

import pytest
import torch

from relground.cli.main import main
from relground.config import load_config
from relground.data.flickr30k import load_flickr30k
from relground.data.proposals import ProposalStore
from relground.data.synthetic.shapes import SyntheticShapes, write_synthetic_shapes
from relground.engine.benchmark import run_benchmark, synthetic_shapes_config
from relground.engine.defaults import build_loader, build_model, build_train_loader
from relground.evaluation.inference import evaluate_model

TINY = ["--synthetic-shapes", "--images", "12", "--height", "64", "--width", "96", "--proposals", "12",
        "--steps", "2", "--warmup", "1", "--json"]
CPU = ["--set", "model.cache_features=false", "--set", "solver.ims_per_batch=10", "--set", "model.hidden_dim=32",
       "--set", "data.num_workers=0", "--set", "train.threads=1"]


def _run(capsys, *extra: str) -> dict:
    assert main(["benchmark", "--config", "synthetic.yaml", *TINY, *CPU, *extra]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return json.loads(lines[-1])


def _check_consistent(row: dict, pairs: int) -> None:
    assert row["pairs_per_step"] == pairs
    assert row["pairs_per_s"] * row["step_ms"] / 1000 == pytest.approx(pairs, rel=1e-6)
    parts = sum(row[f"{name}_ms"] for name in ("data", "backbone", "heads", "losses", "backward", "optimizer"))
    assert 0 < parts <= row["step_ms"] * 1.001  # the phases are inside the step, nothing counted twice


def test_grouped_benchmark_reports_consistent_fields_and_pairs_over_c_backbone_images(capsys):
    result = _run(capsys, "--set", "data.captions_per_image=5")
    for key in ("pairs_per_s", "step_ms", "data_ms", "backbone_images_per_step", "pairs_per_step", "peak_memory_mb",
                "paper_schedule_hours", "device", "amp", "head", "compiled"):
        assert key in result
    _check_consistent(result, 10)
    _check_consistent(result["device_batch"], 10)
    assert result["backbone_images_per_step"] == 2  # 10 pairs / c = 5
    assert result["device_batch"]["backbone_images_per_step"] == 2
    assert result["paper_schedule_hours"] == pytest.approx(80_000 * 40 / result["pairs_per_s"] / 3600)
    assert result["peak_memory_mb"] > 0 and result["compiled"] is False and result["head"] == "fast"
    assert result["device_batch"]["data_ms"] < result["step_ms"]


def test_both_schedule_phases_timed_and_weighted(capsys):
    """Before and after refine_start_iteration (synthetic.yaml: 200 of 800), weighted 1/4 : 3/4; the loader named;
    a grouped batch of 10 pairs holds exactly its 2 distinct images."""
    result = _run(capsys, "--set", "data.captions_per_image=5", "--no-device-batch")
    phases = result["schedule_phases"]
    assert phases["before_refine"]["first_iteration"] == 0 and phases["after_refine"]["first_iteration"] == 200
    assert phases["before_refine"]["iterations"] == 200 and phases["after_refine"]["iterations"] == 600
    expected = 0.25 * phases["before_refine"]["step_ms"] + 0.75 * phases["after_refine"]["step_ms"]
    assert result["step_ms"] == pytest.approx(expected)
    assert result["schedule_hours"] == pytest.approx(800 * expected / 3.6e6)
    assert all(row["distinct_images_per_batch"] == 2 for row in phases.values()) and result["images_per_batch"] == 2
    assert result["loader"] == "pil" and "PIL" in result["pipeline"]


def test_loader_only_reports_each_loader_against_the_demand(capsys):
    result = _run(capsys, "--set", "data.captions_per_image=5", "--loader-only", "--loader-batches", "2")
    assert {"pil", "torchvision"} <= set(result["loaders"])
    assert result["distinct_images_per_pair"] == pytest.approx(0.2)  # 2 images for 10 pairs
    assert result["demand_images_per_s"] == pytest.approx(1800 * 0.2)
    for row in result["loaders"].values():
        assert row["images_per_s_per_worker"] > 0
        assert row["workers_needed"] == pytest.approx(360 / row["images_per_s_per_worker"])


def test_per_pair_backbone_runs_every_pair(capsys):
    result = _run(capsys, "--set", "data.captions_per_image=5", "--per-pair-backbone", "--no-device-batch")
    assert result["backbone_images_per_step"] == 10
    assert result["device_batch"] is None


def test_synthetic_shapes_are_the_requested_ones(tmp_path):
    shapes = SyntheticShapes(images=3, captions_per_image=4, height=70, width=90, proposals=6, phrases=2)
    write_synthetic_shapes(tmp_path, shapes)
    images = load_flickr30k(tmp_path, "train")
    assert len(images) == 3 and all(len(im.sentences) == 4 for im in images)
    assert all(len([p for p in s.phrases if p.grounded]) == 2 for im in images for s in im.sentences)
    store = ProposalStore(tmp_path / "proposals.h5")
    first = store[images[0].image_id]
    assert len(first) == 6 and (first.height, first.width) == (70, 90)
    store.close()


@pytest.mark.needs_cuda
def test_cuda_bf16_training_step_of_the_full_model_and_the_evaluator(tmp_path):
    """First contact on a GPU: one bf16 training step of the full model (every loss) and an evaluation pass."""
    shapes = SyntheticShapes(images=6, captions_per_image=5, height=128, width=192, proposals=10)
    write_synthetic_shapes(tmp_path, shapes)
    overrides = ["train.device=cuda", "train.amp=bf16", "model.cache_features=false", "solver.ims_per_batch=10",
                 "data.captions_per_image=5", "data.num_workers=0", "model.refine_start_iteration=0"]
    cfg = synthetic_shapes_config(load_config("synthetic.yaml", overrides), tmp_path, shapes)
    result = run_benchmark(cfg, steps=1, warmup=1)
    assert math.isfinite(result["pairs_per_s"]) and result["backbone_images_per_step"] == 2
    assert result["peak_memory_mb"] > 0 and result["amp"] == "bf16"

    _, model_args = build_train_loader(cfg)
    model = build_model(cfg, model_args, word_vectors=False).cuda().eval()
    loader = build_loader(cfg, cfg.data.test_split, model_args, train=False)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        metrics = evaluate_model(model, loader)
    assert metrics["count"] > 0 and 0.0 <= metrics["accuracy"] <= 1.0


def test_synthetic_shapes_default_to_flickr30k_statistics(tmp_path):
    """Sizes from Flickr30K's mix (both orientations), 50-100 proposals, five captions, one file per image id."""
    from relground.data.synthetic.shapes import FLICKR30K_SIZES

    write_synthetic_shapes(tmp_path, SyntheticShapes(images=60))
    images = load_flickr30k(tmp_path, "train")
    sizes = {(im.width, im.height) for im in images}
    assert sizes <= {size for size, _ in FLICKR30K_SIZES}
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes)
    assert all(len(im.sentences) == 5 for im in images)
    store = ProposalStore(tmp_path / "proposals.h5")
    counts = [len(store[im.image_id]) for im in images]
    store.close()
    assert min(counts) >= 50 and max(counts) <= 100 and len(set(counts)) > 1
    files = [tmp_path / "Images" / f"{im.image_id}.jpg" for im in images]
    assert all(f.is_file() for f in files) and len({f.stat().st_ino for f in files}) < len(files)  # hard links
