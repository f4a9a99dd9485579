"""``relground train --num-gpus 2`` (torchrun's launcher; CPU processes over Gloo here) trains on the same global
batches as one process by default (``train.data_order: distributed``), so the two end at the same weights up to
float32 summation order; the opt-out (``auto``: a ``RandomSampler`` in one process) shows the comparison can fail."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.distributed.conftest import REPO, SMALL_RUN

# the default order, whatever it is; an evaluation on val every 5 steps (rank 0 evaluates, every rank decides)
DEFAULT_ORDER = [o for o in SMALL_RUN if not o.startswith("train.data_order")] + ["train.eval_period=5"]


def _train(output: Path, data: Path, extra: list[str], num_gpus: int = 1) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    sets = [a for o in [f"data.root={data}", *DEFAULT_ORDER, "train.checkpoint_period=100", *extra] for a in ("--set", o)]
    process = subprocess.run(
        [sys.executable, "-m", "relground.cli.main", "train", "--config", "synthetic.yaml", "--output", str(output),
         "--num-gpus", str(num_gpus), *sets],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert process.returncode == 0, process.stderr[-4000:]
    result = json.loads(process.stdout.strip().splitlines()[-1])
    assert sum(line.startswith("{") for line in process.stdout.splitlines()) == 1  # rank 0 prints, alone
    return result


def _weights(output: Path) -> dict[str, torch.Tensor]:
    state = torch.load(output / "checkpoints" / "model_final.pth", weights_only=False)
    return {k: v for k, v in state["model"].items() if v.is_floating_point()}


def _val_rows(output: Path) -> dict[int, float]:
    with open(output / "metrics.csv", newline="") as f:
        return {int(r["iteration"]): float(r["val/mean_iou"]) for r in csv.DictReader(f) if r.get("val/mean_iou")}


def _gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference of any trained tensor (as tests/distributed/test_elastic.py)."""
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.slow
def test_two_processes_train_like_one_by_default(synthetic_benchmark, tmp_path):
    two = _train(tmp_path / "two", synthetic_benchmark, [], num_gpus=2)
    assert two["status"] == "finished" and two["iteration"] == 10
    log = (tmp_path / "two" / "log.txt").read_text()
    assert "on 2 process(es)" in log and log.count("iter 5/10") == 1  # rank 0 writes the log alone
    one = _train(tmp_path / "one", synthetic_benchmark, [])
    gap = _gap(_weights(tmp_path / "one"), _weights(tmp_path / "two"))
    assert gap < 1e-4, gap
    # evaluation during training under DDP: the same validation numbers and the same best model as one process
    one_val, two_val = _val_rows(tmp_path / "one"), _val_rows(tmp_path / "two")
    assert sorted(two_val) == [5, 10] and two_val == pytest.approx(one_val, abs=1e-4)
    best = [torch.load(tmp_path / run / "checkpoints" / "model_best.pth", weights_only=False)["best"]
            for run in ("one", "two")]
    assert best[0]["iteration"] == best[1]["iteration"] and best[0]["value"] == pytest.approx(best[1]["value"], abs=1e-4)
    # the opt-out: one process shuffles by a RandomSampler, other batches, other weights
    auto = _train(tmp_path / "auto", synthetic_benchmark, ["train.data_order=auto"])
    assert auto["iteration"] == 10
    assert _gap(_weights(tmp_path / "one"), _weights(tmp_path / "auto")) > 1e-3


def test_num_gpus_errors(tmp_path, capsys):
    from relground.cli.main import main

    assert main(["train", "--config", "synthetic.yaml", "--output", str(tmp_path / "r"), "--num-gpus", "0"]) == 2
    assert "--num-gpus: must be >= 1, got 0" in capsys.readouterr().err
    # a refused config is said once, by the launcher, before any process starts
    assert main(["train", "--config", "flickr30k_reir.yaml", "--output", str(tmp_path / "f"), "--num-gpus", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("model.backbone_weights is not set") == 1 and not (tmp_path / "f").exists()
    if not torch.cuda.is_available():
        return
    count = torch.cuda.device_count()
    assert main(["train", "--config", "synthetic.yaml", "--num-gpus", str(count + 1)]) == 2
    assert f"this machine has {count} GPU(s)" in capsys.readouterr().err
