"""``relground.experiments``: synthetic run configs, presets and the ablation tables, without training.

(The demo and the ablation run end to end through the CLI in tests/engine/test_cli.py.)
"""
from __future__ import annotations

import pytest

from relground.config import load_config
from relground.config.model import ModelConfig
from relground.experiments.ablation import ROWS, TABLE2, TABLE3, markdown_tables, run_ablation, summarize
from relground.experiments.demo import results_table, run_demo
from relground.experiments.synthetic import apply_preset, synthetic_config
from tests.utils import REPO


def test_synthetic_config_scales_the_schedule_with_the_iterations(tmp_path):
    base = load_config(REPO / "configs" / "synthetic.yaml")
    cfg = synthetic_config(None, tmp_path / "data", tmp_path / "run", iterations=base.solver.max_iter // 2, seed=3,
                           overrides=["model.top_k=3"], model_overrides={"top_k": 5})
    assert cfg.solver.max_iter == base.solver.max_iter // 2 and cfg.seed == 3
    assert all(s <= b for s, b in zip(cfg.solver.steps, base.solver.steps))
    assert cfg.train.checkpoint_period == cfg.solver.max_iter and not cfg.train.progress_bar
    assert cfg.model.top_k == 5  # model_overrides win over --set
    assert cfg.data.root == str(tmp_path / "data") and cfg.output_dir == str(tmp_path / "run")
    with pytest.raises(ValueError, match="--iterations: must be positive"):
        synthetic_config(None, tmp_path, tmp_path, iterations=0)


def test_apply_preset_keeps_sizes_and_switches_components():
    base = ModelConfig().replace(hidden_dim=16)
    baseline = apply_preset(base, "baseline")
    assert baseline.hidden_dim == 16 and not baseline.vogn and not baseline.vogn_geometry
    assert apply_preset(base, "full").hidden_dim == 16 and apply_preset(base, "full").vogn


def test_ablation_rows_summaries_and_tables():
    assert list(ROWS) == [r.name for r in TABLE2 + TABLE3]
    metrics = [{"accuracy": 0.5, "point_it": 0.6, "mean_iou": 0.4, "upper_bound": 0.9},
               {"accuracy": 0.7, "point_it": 0.6, "mean_iou": 0.4, "upper_bound": 0.9, "val": {"accuracy": 0.65}}]
    summary = summarize(metrics)
    assert summary["accuracy"]["mean"] == pytest.approx(0.6) and summary["accuracy"]["n"] == 2
    assert summary["val_accuracy"]["n"] == 1 and summary["twin_accuracy"]["mean"] is None
    table = markdown_tables({"baseline": summary, "full_k5": summary}, images=10, data_seed=0, iterations=5, seeds=2,
                            config_k=10)
    assert "| baseline |" in table and "60.00 ± 14.14" in table and "the config's K = 10" in table and "| 5 |" in table
    assert "Proposal upper bound (any proposal at IoU >= 0.5): 90.00%" in table


def test_demo_results_table():
    row = {"accuracy": 0.5, "point_it": 0.25, "mean_iou": 0.125, "upper_bound": 0.75, "count": 8,
           "stage1": {"accuracy": 0.4}}
    table = results_table({"baseline": row})
    assert "| baseline | 50.00 | 25.00 | 12.50 | n/a | 40.00 | n/a |" in table
    assert "75.00% of 8 test phrases" in table


def test_argument_errors_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="--images: must be positive"):
        run_demo(tmp_path / "demo", images=0)
    with pytest.raises(ValueError, match="--rows: unknown row"):
        run_ablation(tmp_path / "abl", rows=["nope"])
    with pytest.raises(ValueError, match="--seeds: must be positive"):
        run_ablation(tmp_path / "abl", rows=["full"], seeds=0)
    assert not (tmp_path / "demo").exists() and not (tmp_path / "abl").exists()
