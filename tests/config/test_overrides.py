"""Overrides as a detectron2 / mmdetection user types them, the merged config printed, every number range-checked."""
from __future__ import annotations

import math

import pytest
import yaml

from relground.cli.main import main
from relground.config import Config, load_config
from relground.config.loader import shipped_config
from relground.config.ranges import NUMERIC_RANGES, check_numeric_ranges, numeric_values


def test_several_pairs_per_set_and_the_cfg_options_spelling(tmp_path, capsys):
    argv = ["config", "show", "--config", "synthetic.yaml", "--set", "solver.base_lr=2e-3", "model.top_k=3",
            "--set", "seed=7", "--cfg-options", "solver.max_iter=11", "seed=8"]
    assert main(argv) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["solver"]["base_lr"] == 2e-3 and shown["model"]["top_k"] == 3 and shown["solver"]["max_iter"] == 11
    assert shown["seed"] == 8  # later pairs win, across --set and --cfg-options
    # what config show prints is the config itself: it loads back to the same frozen config
    path = tmp_path / "shown.yaml"
    path.write_text(yaml.safe_dump(shown))
    assert load_config(path) == load_config("synthetic.yaml", ["solver.base_lr=2e-3", "model.top_k=3",
                                                                "solver.max_iter=11", "seed=8"])


def test_config_show_prints_the_defaults_and_bases_merged(capsys):
    assert main(["config", "show", "--config", "referit_reir.yaml"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["data"]["dataset"] == "referit"  # its own key
    assert shown["solver"]["max_iter"] == load_config("flickr30k_reir.yaml").solver.max_iter  # from its _base_
    assert "weight_decay_norm" in shown["solver"]  # a default no file sets


def test_keys_are_case_insensitive_and_misspelt_ones_suggested(capsys):
    cfg = load_config("synthetic.yaml", ["SOLVER.MAX_ITER=12", "Model.Loss.Lambda_Reg=0.5"])
    assert cfg.solver.max_iter == 12 and cfg.model.loss.lambda_reg == 0.5
    with pytest.raises(ValueError, match=r"unknown config key 'SOLVER\.MAX_ITR'; did you mean 'solver\.max_iter'"):
        load_config("synthetic.yaml", ["SOLVER.MAX_ITR=12"])
    assert main(["config", "show", "--config", "synthetic.yaml", "--set", "TRAIN.LOG_PERIODE=3"]) == 2
    assert "did you mean 'train.log_period'" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("solver.base_lr=nan", "config key 'solver.base_lr': must be a finite number, got 'nan'"),
    ("solver.base_lr=.inf", "config key 'solver.base_lr': must be a finite number, got inf"),
    ("train.max_loss=inf", "config key 'train.max_loss': must be a finite number"),  # an Optional[float]
    ("model.loss.lambda_rel=-inf", "config key 'model.loss.lambda_rel': must be a finite number"),
    ("solver.momentum=1.5", r"config key 'solver.momentum': must be in \[0, 1\), got 1.5"),
    ("solver.clip_grad_norm=0", r"config key 'solver.clip_grad_norm': must be in \(0, inf\), got 0.0"),
    ("model.relation_hidden=0", r"config key 'model.relation_hidden': must be in \[1, inf\), got 0"),
    ("model.loss.ranking_stages=[1,3]", "ranking_stages"),
    ("seed=-1", r"config key 'seed': must be in \[0, 4294967295\], got -1"),
])
def test_non_finite_and_out_of_range_numbers_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("synthetic.yaml", [override])


def test_a_nan_learning_rate_stops_train_before_anything_starts(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", "synthetic.yaml", "--output", str(run), "--set", "solver.base_lr=nan"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("relground train: error: config key 'solver.base_lr'") and "finite" in err
    assert not run.exists()  # nothing started: no run folder


def test_a_nan_in_a_yaml_file_is_named_with_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"_base_: {shipped_config('synthetic.yaml')}\nsolver: {{base_lr: .nan}}\n")
    with pytest.raises(ValueError, match=r"c\.yaml: config key 'solver\.base_lr': must be a finite number"):
        load_config(path)


def test_every_numeric_key_has_a_range_and_every_shipped_config_is_inside():
    keys = {key for key, _ in numeric_values(Config())}
    missing = sorted(keys - set(NUMERIC_RANGES))
    assert not missing, f"numeric config keys without a range in relground/config/ranges.py: {missing}"
    optional = {"solver.ims_per_batch", "solver.clip_grad_norm", "train.max_loss"}  # None by default
    added_elsewhere = {"model.loss.reference_images", "model.softmax_epsilon", "train.eval_period"}  # other branches
    stale = sorted(set(NUMERIC_RANGES) - keys - optional - added_elsewhere)
    assert not stale, f"ranges of keys that no longer exist: {stale}"
    for name in ("synthetic.yaml", "flickr30k_reir.yaml", "flickr30k_reir_authors.yaml", "flickr30k_reir_paper.yaml",
                 "referit_reir.yaml"):
        check_numeric_ranges(load_config(name))


def test_the_range_check_sees_values_that_bypass_the_parser():
    # dataclasses.replace builds a Config without the override parser: the range check still runs
    import dataclasses
    cfg = load_config("synthetic.yaml")
    with pytest.raises(ValueError, match="solver.gamma"):
        dataclasses.replace(cfg, solver=dataclasses.replace(cfg.solver, gamma=-0.5))
    with pytest.raises(ValueError, match="model.cls_bias': must be a finite number"):
        dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, cls_bias=math.nan))


def test_a_subcommands_mistake_prints_the_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", "synthetic.yaml", "--bogus"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("usage: relground train ")
    assert "relground train: error: unrecognized arguments: --bogus" in err
    with pytest.raises(SystemExit):
        main(["data", "stats", "--dataset", "synthetic", "--root", "x", "--bogus"])
    err = capsys.readouterr().err
    assert err.startswith("usage: relground data stats ") and "relground data stats: error: unrecognized" in err


def test_a_user_error_names_the_whole_subcommand(capsys):
    assert main(["config", "show", "--config", "synthetic.yaml", "--set", "solver.base_lr=nan"]) == 2
    assert capsys.readouterr().err.startswith("relground config show: error: config key 'solver.base_lr'")
