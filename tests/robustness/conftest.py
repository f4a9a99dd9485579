"""Fixtures of the robustness suite: one small synthetic benchmark and one tiny trained run per session.

Every test corrupts a *copy* (``fresh_root`` / ``fresh_run``), so the session's files stay clean.
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest

from relground.engine.defaults import train
from relground.experiments.synthetic import prepare_synthetic, synthetic_config

NUM_IMAGES = 10  # the generator's minimum: 8 train, 1 val, 1 test
ITERATIONS = 3  # checkpoints model_0000001.pth, model_0000002.pth, model_final.pth
TEST_IMAGE = "1000009"  # the test split's image (the generator's ids are deterministic)


def tiny_config(root: Path, output_dir: Path, iterations: int = ITERATIONS, overrides=()):
    """The tiny run's config: 3 iterations of 4 pairs, a checkpoint every iteration, no TensorBoard."""
    return synthetic_config(
        None, root, output_dir, iterations=iterations,
        overrides=["solver.ims_per_batch=4", "train.checkpoint_period=1", "train.tensorboard=false",
                   "train.progress_bar=false", *overrides],
    )


@pytest.fixture(scope="session")
def bench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("robustness") / "data"
    prepare_synthetic(root, NUM_IMAGES, seed=0)
    assert (root / "test.txt").read_text().split() == [TEST_IMAGE]
    return root


@pytest.fixture(scope="session")
def run(bench, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("robustness") / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(tiny_config(bench, out))
    assert result["status"] == "finished"
    return out


@pytest.fixture
def fresh_root(bench, tmp_path) -> Path:
    """A private copy of the benchmark to corrupt."""
    return Path(shutil.copytree(bench, tmp_path / "data"))


@pytest.fixture
def fresh_run(run, tmp_path) -> Path:
    """A private copy of the trained run folder to corrupt or resume."""
    return Path(shutil.copytree(run, tmp_path / "run"))
