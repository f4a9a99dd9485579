"""Exact resume after a real SIGKILL / SIGTERM of a training process.

The interrupted training runs in a child process (``python -m tests.engine.test_resume ...``, the ``main``
below; the uninterrupted and resumed runs call the same ``main`` in the test process):
a toy float64 model with dropout (so the RNG state matters) over shuffled data (so the data position
matters), checkpointing every iteration and slowed down by a hook so the parent can kill it mid-run.
A resumed run must end with exactly the parameters of an uninterrupted run, and every checkpoint file
left on disk by the killed process must load.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from relground.engine.checkpoint import Checkpointer, load_checkpoint
from relground.engine.hooks import HookBase
from relground.config import SolverConfig, TrainConfig
from relground.engine.trainer import Trainer
from tests.engine import ToyDataset, ToyModel, parameters_of, toy_loader
from tests.utils import REPO

MAX_ITER = 30  # 40 items / batch 4 = 10 iterations per epoch: the kill lands mid-epoch, resume spans epochs


class Throttle(HookBase):
    """Sleeps after each step so the parent has time to signal a run in progress."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def after_step(self) -> None:
        time.sleep(self.seconds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ToyModel(dropout=0.2)
    solver = SolverConfig(base_lr=0.01, max_iter=MAX_ITER, warmup_iters=3, steps=(20,), ims_per_batch=4)
    cfg = TrainConfig(checkpoint_period=1, keep_checkpoints=3, log_period=5, progress_bar=False, tensorboard=False)
    trainer = Trainer(model, toy_loader(ToyDataset(40), 4, seed=5), solver, cfg, args.output, device="cpu", seed=10)
    if args.sleep:
        trainer.register_hooks([Throttle(args.sleep)])
    start = trainer.resume_or_load(resume=args.resume)
    result = trainer.train()
    torch.save(parameters_of(model), Path(args.output) / "params.pt")
    print(json.dumps({"start": start, **result}), flush=True)
    return 0


def _command(output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tests.engine.test_resume", "--output", str(output), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _run_here(output: Path, *extra: str, capsys) -> dict:
    """Run ``main`` in this process (the uninterrupted and the resumed runs; only the killed one needs a child)."""
    threads = torch.get_num_threads()
    try:
        assert main(["--output", str(output), *extra]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _start_and_signal(output: Path, signum: int, after_iteration: int) -> subprocess.Popen:
    """Start a throttled run and send ``signum`` once a checkpoint of ``after_iteration`` or later exists."""
    child = subprocess.Popen(
        _command(output, "--sleep", "0.1"), cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    checkpointer = Checkpointer(output / "checkpoints")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and child.poll() is None:
        found = checkpointer.periodic_checkpoints()
        if found and found[-1][0] >= after_iteration:
            child.send_signal(signum)
            break
        time.sleep(0.01)
    child.wait(timeout=60)
    return child


@pytest.fixture
def uninterrupted(tmp_path_factory, capsys) -> dict[str, torch.Tensor]:
    output = tmp_path_factory.mktemp("uninterrupted")
    result = _run_here(output, capsys=capsys)
    assert result["status"] == "finished" and result["iteration"] == MAX_ITER
    return torch.load(output / "params.pt")


def _assert_same_parameters(output: Path, reference: dict[str, torch.Tensor]) -> None:
    resumed = torch.load(output / "params.pt")
    assert resumed.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(resumed[name], value), name  # exact, float64


def test_resume_after_sigkill_is_exact(tmp_path, uninterrupted, capsys):
    child = _start_and_signal(tmp_path, signal.SIGKILL, after_iteration=8)
    assert child.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    checkpoints = Checkpointer(tmp_path / "checkpoints").periodic_checkpoints()
    assert checkpoints and checkpoints[-1][0] < MAX_ITER
    for iteration, path in checkpoints:  # never half-written: every file loads completely
        state = load_checkpoint(path)
        assert state["iteration"] == iteration
        assert state["optimizer"]["state"]
        assert state["data"]["epoch"] * 10 + state["data"]["batch_in_epoch"] == iteration  # 10 batches per epoch

    result = _run_here(tmp_path, "--resume", capsys=capsys)
    assert result["start"] == checkpoints[-1][0] >= 8
    assert result["status"] == "finished" and result["iteration"] == MAX_ITER
    _assert_same_parameters(tmp_path, uninterrupted)


def test_sigterm_checkpoints_then_resume_is_exact(tmp_path, uninterrupted, capsys):
    child = _start_and_signal(tmp_path, signal.SIGTERM, after_iteration=5)
    out, err = child.communicate()
    assert child.returncode == 0, err[-3000:]
    stopped = json.loads(out.strip().splitlines()[-1])
    assert stopped["status"] == "interrupted" and stopped["signal"] == signal.SIGTERM
    assert 5 <= stopped["iteration"] < MAX_ITER
    latest = Checkpointer(tmp_path / "checkpoints").latest()
    assert stopped["checkpoint"] == str(latest)
    assert load_checkpoint(latest)["iteration"] == stopped["iteration"]

    result = _run_here(tmp_path, "--resume", capsys=capsys)
    assert result["start"] == stopped["iteration"] and result["status"] == "finished"
    _assert_same_parameters(tmp_path, uninterrupted)


if __name__ == "__main__":
    sys.exit(main())


def test_ranks_that_would_resume_from_different_checkpoints_stop_with_a_message(monkeypatch):
    from pathlib import Path

    from relground.engine import defaults

    # two ranks' choices, as all_gather_object would return them
    monkeypatch.setattr(defaults.du, "all_gather_object", lambda obj: [obj, ("model_0000004.pth", 4)])
    with pytest.raises(ValueError, match="rank 0: model_0000006.pth; rank 1: model_0000004.pth"):
        defaults.check_ranks_resume_alike(Path("/run/checkpoints/model_0000006.pth"), {"iteration": 6})
    monkeypatch.setattr(defaults.du, "all_gather_object", lambda obj: [obj, obj])
    defaults.check_ranks_resume_alike(Path("/run/checkpoints/model_0000006.pth"), {"iteration": 6})  # agree: no error
