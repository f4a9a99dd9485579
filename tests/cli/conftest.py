"""One tiny trained run per session (10 synthetic images, 1 iteration): what ``ground`` needs a checkpoint for."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from relground.engine.defaults import train
from relground.experiments.synthetic import prepare_synthetic, synthetic_config

TEST_IMAGE = "1000009"  # the test split's one image at 10 images, seed 0


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("cli")
    prepare_synthetic(base / "data", 10, seed=0)
    cfg = synthetic_config(None, base / "data", base / "run", iterations=1,
                           overrides=["solver.ims_per_batch=4", "train.tensorboard=false", "train.progress_bar=false"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train(cfg)["status"] == "finished"
    return base
