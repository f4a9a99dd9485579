"""Two training processes (Gloo, CPU), SIGTERM to rank 0 only: every rank stops after the same step, rank 0
writes the checkpoint, and both exit with 128 + SIGTERM and no traceback.

First the two processes are started as torchrun starts its workers (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``) but without its agent, so that each rank's own exit status is seen (the agent
would stop rank 1 itself once rank 0 exits); then under torchrun itself, each rank's output in its log folder.
Before the fix rank 1 died in ``cli/train.py`` with ``TypeError: int() argument must be ... 'NoneType'``: only
rank 0 knew the signal.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(bench: Path, output: Path) -> list[str]:
    return ["-m", "relground.cli.main", "train", "--config", "synthetic.yaml", "--output", str(output),
            "--set", f"data.root={bench}", "--set", "solver.max_iter=500", "--set", "solver.ims_per_batch=4",
            "--set", "train.checkpoint_period=1000", "--set", "train.log_period=1", "--set", "train.tensorboard=false",
            "--set", "train.progress_bar=false", "--set", "train.data_order=distributed", "--set", "train.device=cpu"]


def _start_rank(rank: int, port: int, bench: Path, output: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
           "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    return subprocess.Popen([sys.executable, *_train_args(bench, output)], cwd=REPO, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


def _wait_for_training(output: Path, processes: list[subprocess.Popen], logs) -> None:
    """Until rank 0 logged two steps (training has started on every rank)."""
    deadline = time.monotonic() + 240
    metrics = output / "metrics.csv"
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        assert time.monotonic() < deadline, logs()
        assert all(p.poll() is None for p in processes), logs()
        time.sleep(0.2)


@pytest.mark.slow
def test_sigterm_to_rank_0_stops_every_rank_cleanly(bench, tmp_path):
    output = tmp_path / "run"
    port = _free_port()
    logs = [tmp_path / f"rank{r}.log" for r in range(2)]
    ranks = [_start_rank(r, port, bench, output, logs[r]) for r in range(2)]
    try:
        _wait_for_training(output, ranks, lambda: [log.read_text()[-2000:] for log in logs])
        ranks[0].send_signal(signal.SIGTERM)  # rank 0 only
        codes = [p.wait(timeout=120) for p in ranks]
    finally:
        for p in ranks:
            if p.poll() is None:
                p.kill()
    texts = [log.read_text() for log in logs]
    for rank, (code, text) in enumerate(zip(codes, texts)):
        assert "Traceback" not in text, (rank, text[-3000:])
        assert code == 128 + signal.SIGTERM, (rank, code, text[-3000:])
    assert '"status": "interrupted"' in texts[0] and f'"signal": {int(signal.SIGTERM)}' in texts[0]
    checkpoints = sorted(p.name for p in (output / "checkpoints").glob("model_*.pth"))
    assert len(checkpoints) == 1 and checkpoints[0] != "model_final.pth", checkpoints  # the stop's checkpoint


def _worker_of_rank(agent_pid: int, rank: int) -> int:
    """The pid of torchrun's worker with ``RANK=rank`` (a child of the agent, found through /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == agent_pid and f"RANK={rank}".encode() in (stat.parent / "environ").read_bytes().split(b"\0"):
                return int(stat.parent.name)
        except (OSError, IndexError, ValueError):
            continue
    raise AssertionError(f"no worker of rank {rank} under torchrun {agent_pid}")


@pytest.mark.slow
def test_sigterm_to_rank_0_under_torchrun_leaves_no_traceback_on_any_rank(bench, tmp_path):
    output, logs = tmp_path / "run", tmp_path / "logs"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
            "--log-dir", str(logs), "-r", "3", "--no-python", sys.executable, *_train_args(bench, output)]
    agent = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rank_logs = lambda: {str(p.relative_to(logs)): p.read_text()[-2000:] for p in logs.rglob("*.log")}  # noqa: E731
    try:
        _wait_for_training(output, [agent], rank_logs)
        os.kill(_worker_of_rank(agent.pid, 0), signal.SIGTERM)
        agent_output = agent.communicate(timeout=120)[0]
    finally:
        if agent.poll() is None:
            agent.kill()
    texts = rank_logs()
    assert len([n for n in texts if n.endswith("stderr.log")]) == 2, texts
    for name, text in texts.items():
        assert "Traceback" not in text and "TypeError" not in text, (name, text)
    # torchrun reports rank 0's status (143); rank 1 either ended the same way or was stopped by the agent after it
    assert re.search(r"exitcode\s*:\s*143", agent_output), agent_output[-3000:]
    for rank_code in re.findall(r"rank\s*:\s*1 .*?exitcode\s*:\s*(-?\d+)", agent_output, re.S):
        assert int(rank_code) in (143, -15), agent_output[-3000:]
    assert len(list((output / "checkpoints").glob("model_*.pth"))) == 1
