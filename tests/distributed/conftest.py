"""Shared pieces of the multi-process tests: a small synthetic benchmark and launching torchrun on the loopback."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from relground.experiments.synthetic import prepare_synthetic

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "tests" / "distributed" / "worker.py"

# The full ReIR of configs/synthetic.yaml (VOGN, typed messages, both stages, every loss), narrow and short:
# 8 pairs per step (2 processes x 4), 10 steps, refined boxes re-pooled from step 5.
SMALL_RUN = [
    "model.hidden_dim=16", "model.vogn_dim=8", "model.ranking_dim=8", "model.relation_hidden=8",
    "model.regression_hidden=8", "model.cls_hidden=16", "data.min_size=128", "data.max_size=128",
    "solver.ims_per_batch=8", "solver.max_iter=10", "solver.warmup_iters=2", "solver.steps=[6]",
    "model.refine_start_iteration=5", "train.data_order=distributed", "train.progress_bar=false",
    "train.tensorboard=false", "train.log_period=5",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def synthetic_benchmark(tmp_path_factory) -> Path:
    """40 synthetic images (32 train, ~64 caption pairs) with their relations files."""
    root = tmp_path_factory.mktemp("synthetic") / "synth"
    prepare_synthetic(root, num_images=40, seed=0)
    return root


def write_spec(output: Path, data: Path, **spec) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    path = output / "spec.json"
    path.write_text(json.dumps({"data": str(data), "output": str(output), **spec}))
    return path


def launch(spec: Path, torchrun_args: list[str] | None, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run the worker: alone (``torchrun_args`` None: no process group) or under ``torchrun <args>``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None)
    launcher = [] if torchrun_args is None else ["-m", "torch.distributed.run", *torchrun_args]
    return subprocess.run(
        [sys.executable, *launcher, str(WORKER), str(spec)], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=timeout,
    )


def check(process: subprocess.CompletedProcess) -> None:
    assert process.returncode == 0, process.stderr[-4000:]
