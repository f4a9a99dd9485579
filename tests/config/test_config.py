"""Config: YAML files with _base_, typed overrides, unknown-key errors with suggestions, frozen, round trip."""
from __future__ import annotations

import dataclasses
import re
import signal
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
import yaml

from relground.cli.main import main as cli_main
from relground.config import (
    Config,
    apply_overrides,
    find_config,
    from_dict,
    load_config,
    parse_value,
    save_config,
    to_dict,
    valid_keys,
)
from relground.engine.checkpoint import Checkpointer
from tests.utils import REPO

CONFIGS = REPO / "configs"


@dataclass(frozen=True)
class Inner:
    ratio: float = 0.5
    sizes: tuple[int, ...] = (1, 2)


@dataclass(frozen=True)
class Toy:
    """Every field kind the overrides must handle."""

    flag: bool = False
    count: int = 3
    rate: float = 0.1
    label: str = "a"
    names: list[str] = field(default_factory=list)
    pair: tuple[float, float] = (0.0, 1.0)
    maybe: Optional[int] = None
    mode: Literal["x", "y"] = "x"
    inner: Inner = field(default_factory=Inner)


def _write(path, tree):
    path.write_text(yaml.safe_dump(tree))
    return path


def test_overrides_are_parsed_by_field_type():
    cfg = apply_overrides(
        Toy(),
        [
            "flag=true", "count=7", "rate=1e-3", "label=123", "names=[a, b]", "pair=[2, 3.5]",
            "maybe=4", "mode=y", "inner.ratio=2", "inner.sizes=[5]",
        ],
    )
    assert cfg == Toy(True, 7, 1e-3, "123", ["a", "b"], (2.0, 3.5), 4, "y", Inner(2.0, (5,)))
    assert isinstance(cfg.rate, float) and isinstance(cfg.inner.ratio, float) and isinstance(cfg.pair, tuple)
    assert apply_overrides(cfg, ["maybe=none", "flag=no"]).maybe is None
    assert parse_value("off", bool, "flag") is False


@pytest.mark.parametrize(
    "override, message",
    [
        ("count=1.5", r"config key 'count': expected int, got 1.5"),
        ("count=true", r"config key 'count': expected int"),
        ("rate=fast", r"config key 'rate': expected float, got 'fast'"),
        ("flag=maybe", r"config key 'flag': expected a bool"),
        ("pair=[1]", r"config key 'pair': expected 2 values"),
        ("names=word", r"config key 'names': expected list\[str\]"),
        ("mode=z", r"config key 'mode': must be one of \['x', 'y'\], got 'z'"),
        ("maybe=abc", r"config key 'maybe': expected Optional\[int\]"),
        ("inner.sizes=[1, x]", r"config key 'inner.sizes\[1\]': expected int"),
        ("count", r"must look like key=value"),
    ],
)
def test_override_type_errors_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(Toy(), [override])


@pytest.mark.parametrize(
    "override, suggestion",
    [
        ("solver.base_lrr=1", "'solver.base_lr'"),
        ("solver.lr=1", "'solver.base_lr'"),
        ("model.loss.lambda_rg=1", "'model.loss.lambda_reg'"),
        ("train.acumulation_steps=2", "'train.accumulation_steps'"),
        ("sed=3", "'seed'"),
    ],
)
def test_unknown_key_error_suggests_the_closest_keys(override, suggestion):
    key = override.split("=")[0]
    with pytest.raises(ValueError, match=rf"unknown config key '{key}'; did you mean .*{suggestion}"):
        load_config(None, [override])


def test_yaml_load_with_base_inheritance_and_file_errors(tmp_path):
    _write(tmp_path / "base.yaml", {"seed": 1, "solver": {"base_lr": "1e-3", "steps": [10, 20]}, "train": {"log_period": 5}})
    child = _write(
        tmp_path / "child.yaml",
        {"_base_": "base.yaml", "solver": {"max_iter": 30}, "train": {"log_period": 7}, "model": {"loss": {"lambda_reg": 0.3}}},
    )
    cfg = load_config(child, ["solver.max_iter=40"])
    assert cfg.seed == 1 and cfg.solver.base_lr == 1e-3 and cfg.solver.steps == (10, 20)  # from the base
    assert cfg.solver.max_iter == 40 and cfg.train.log_period == 7 and cfg.loss.lambda_reg == 0.3
    assert cfg.solver.momentum == 0.9  # untouched default

    bad = _write(tmp_path / "bad.yaml", {"solver": {"base_lr": 1e-3, "max_itr": 5}})
    with pytest.raises(ValueError, match=r"bad.yaml: unknown config key 'solver.max_itr'; did you mean 'solver.max_iter'"):
        load_config(bad)
    wrong = _write(tmp_path / "wrong.yaml", {"train": {"keep_checkpoints": "many"}})
    with pytest.raises(ValueError, match=r"config key 'train.keep_checkpoints': expected int"):
        load_config(wrong)
    invalid = _write(tmp_path / "invalid.yaml", {"solver": {"steps": [20, 10]}})  # the section's own check
    with pytest.raises(ValueError, match=r"invalid.yaml: solver.steps must be increasing"):
        load_config(invalid)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    cycle = _write(tmp_path / "cycle.yaml", {"_base_": "cycle.yaml"})
    with pytest.raises(ValueError, match="_base_ cycle"):
        load_config(cycle)


def test_shipped_configs_are_found_by_name_from_any_directory_and_packaged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout: "configs/..." is no relative path here
    assert find_config("synthetic.yaml") == (REPO / "configs" / "synthetic.yaml").resolve()
    assert find_config("configs/flickr30k_reir.yaml").name == "flickr30k_reir.yaml"
    assert load_config("referit_reir.yaml").solver.max_iter == load_config(REPO / "configs" / "referit_reir.yaml").solver.max_iter
    own = _write(tmp_path / "synthetic.yaml", {"seed": 123})  # a file that exists wins over the shipped one
    assert find_config("synthetic.yaml") == own.relative_to(tmp_path) and load_config("synthetic.yaml").seed == 123
    listed = ", ".join(sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
    with pytest.raises(FileNotFoundError, match=rf"nope.yaml.*shipped configs: {re.escape(listed)}"):
        find_config("nope.yaml")
    from relground.experiments.synthetic import synthetic_config

    shipped = load_config(REPO / "configs" / "synthetic.yaml")
    assert synthetic_config(None, tmp_path / "data", tmp_path / "run").model == shipped.model  # found from tmp_path
    with pytest.raises(FileNotFoundError, match=r"^--config: config file not found: nope.yaml"):
        synthetic_config("nope.yaml", tmp_path / "data", tmp_path / "run")


@pytest.mark.slow
def test_a_built_package_carries_the_configs(tmp_path):
    """What a wheel holds: ``setup.py build_py`` copies configs/*.yaml to relground/configs/."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, RELGROUND_SKIP_EXT="1", FORCE_ONLY_CPU="1")
    # egg_info into tmp_path: a relground.egg-info left in the checkout would shadow the installed metadata
    (tmp_path / "egg").mkdir()
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path / "egg"), "build_py", "-d",
                    str(tmp_path / "build")], cwd=REPO, env=env, check=True, capture_output=True)
    shipped = sorted(p.name for p in (tmp_path / "build" / "relground" / "configs").glob("*.yaml"))
    assert shipped == sorted(p.name for p in (REPO / "configs").glob("*.yaml")) and "synthetic.yaml" in shipped


def test_config_is_frozen_and_round_trips_through_yaml(tmp_path):
    cfg = load_config(CONFIGS / "synthetic.yaml", ["model.top_k=3", "solver.steps=[100, 200]"])
    for section, name in (("solver", "base_lr"), ("train", "amp"), ("model", "top_k"), ("data", "root")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(getattr(cfg, section), name, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1
    path = save_config(cfg, tmp_path / "config.yaml")
    assert load_config(path) == cfg
    assert yaml.safe_load(path.read_text())["solver"]["steps"] == [100, 200]
    assert from_dict(Config, to_dict(cfg)) == cfg
    assert {"data.root", "model.loss.lambda_rel", "solver.warmup_iters", "train.amp", "seed"} <= set(valid_keys(Config))


def test_paper_configs_hold_the_paper_settings():
    flickr = load_config(CONFIGS / "flickr30k_reir.yaml")
    assert (flickr.data.dataset, flickr.data.max_proposals, flickr.model.top_k) == ("flickr30k", 50, 5)
    assert (flickr.loss.lambda_reg, flickr.loss.lambda_rel, flickr.loss.lambda_rank, flickr.loss.iou_threshold) == (0.1, 1.0, 1.0, 0.6)
    assert (flickr.solver.base_lr, flickr.solver.ims_per_batch, flickr.solver.max_iter) == (1e-3, 40, 80_000)
    assert (flickr.solver.steps, flickr.solver.warmup_iters, flickr.seed) == ((32_000, 40_000), 500, 10)
    assert (flickr.model.backbone, flickr.model.box_head, flickr.train.amp) == ("resnet101", "faithful", "auto")
    assert flickr.data.relations  # C_r comes from the relations file

    referit = load_config(CONFIGS / "referit_reir.yaml")
    assert referit.data.dataset == "referit" and not referit.loss.relation and not referit.model.vogn
    assert referit.solver == flickr.solver and referit.model.top_k == 5  # inherited through _base_

    synthetic = load_config(CONFIGS / "synthetic.yaml")
    assert synthetic.train.device == "cpu" and synthetic.model.cache_features and synthetic.model.spatial_feature
    assert synthetic.data.min_size <= 256 and synthetic.solver.max_iter <= 2000


def test_train_cli_builds_the_config_and_maps_the_result_to_an_exit_code(tmp_path, monkeypatch, capsys):
    import relground.cli.train as train_cli

    seen = {}

    def fake_train(cfg, resume=False, hooks=(), **options):
        seen.update(cfg=cfg, resume=resume)
        return {"status": "interrupted", "signal": int(signal.SIGTERM), "iteration": 3}

    monkeypatch.setattr(train_cli, "train", fake_train)
    argv = ["train", "--config", str(CONFIGS / "synthetic.yaml"), "--output", str(tmp_path), "--set", "solver.max_iter=9"]
    assert cli_main(argv + ["--resume"]) == 128 + signal.SIGTERM
    assert seen["cfg"].output_dir == str(tmp_path) and seen["cfg"].solver.max_iter == 9 and seen["resume"]

    assert cli_main(["train", "--config", str(CONFIGS / "synthetic.yaml"), "--set", "solver.max_itr=9"]) == 2
    assert "unknown config key 'solver.max_itr'; did you mean 'solver.max_iter'" in capsys.readouterr().err


def test_train_refuses_to_overwrite_a_run_without_resume(tmp_path):
    from relground.engine.defaults import train

    Checkpointer(tmp_path / "checkpoints").save({"model": {}}, 10)
    cfg = load_config(CONFIGS / "synthetic.yaml", [f"output_dir={tmp_path}"])
    with pytest.raises(ValueError, match="already holds checkpoints; resume it"):
        train(cfg)


def test_presets_turn_the_graph_and_relation_extensions_off_with_their_component(tmp_path):
    from relground.experiments.synthetic import synthetic_config

    raw = yaml.safe_load((REPO / "configs" / "synthetic.yaml").read_text())
    raw["model"].update(vogn_geometry=True, relation_geometry=True)
    base = tmp_path / "geometric.yaml"
    base.write_text(yaml.safe_dump(raw))
    expected = {  # preset: (vogn_geometry, relation_geometry)
        "baseline": (False, False), "tsd": (False, False), "tsd_str": (False, False), "tsd_str_noq": (False, False),
        "tsd_vogn_rc": (True, True), "full": (True, True), "full_uniform": (True, True),
    }
    for preset, switches in expected.items():
        model = synthetic_config(str(base), tmp_path / "data", tmp_path / "run", preset=preset).model
        assert (model.vogn_geometry, model.relation_geometry) == switches, preset


def test_a_removed_model_key_loads_at_its_former_default_and_is_refused_at_another_value():
    from relground.config import Config, from_dict

    cfg = from_dict(Config, {"model": {"roi_output_size": 7, "box_coder_weights": [10.0, 10.0, 5.0, 5.0]}})
    assert cfg.model == Config().model
    with pytest.raises(ValueError, match="model.roi_output_size was removed"):
        from_dict(Config, {"model": {"roi_output_size": 14}})


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.data.dataset in ("flickr30k", "referit", "synthetic") and cfg.solver.max_iter > 0
