"""Two training processes (Gloo, CPU), SIGTERM to rank 0 only: every rank stops after the same step, rank 0
writes the checkpoint, and both exit with 128 + SIGTERM and no traceback.

The two processes are started as torchrun starts its workers (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``) but without its agent, so that each rank's own exit status is seen (the agent
would stop rank 1 itself once rank 0 exits). Before the fix rank 1 died in ``cli/train.py`` with ``TypeError:
int() argument must be ... 'NoneType'``: only rank 0 knew the signal.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_rank(rank: int, port: int, bench: Path, output: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
           "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    argv = [sys.executable, "-m", "relground.cli.main", "train", "--config", "synthetic.yaml", "--output", str(output),
            "--set", f"data.root={bench}", "--set", "solver.max_iter=500", "--set", "solver.ims_per_batch=4",
            "--set", "train.checkpoint_period=1000", "--set", "train.log_period=1", "--set", "train.tensorboard=false",
            "--set", "train.progress_bar=false", "--set", "train.data_order=distributed", "--set", "train.device=cpu"]
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def test_sigterm_to_rank_0_stops_every_rank_cleanly(bench, tmp_path):
    output = tmp_path / "run"
    port = _free_port()
    logs = [tmp_path / f"rank{r}.log" for r in range(2)]
    ranks = [_start_rank(r, port, bench, output, logs[r]) for r in range(2)]
    try:
        deadline = time.monotonic() + 240
        metrics = output / "metrics.csv"
        # training has started once rank 0 logged two steps
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
            assert time.monotonic() < deadline, [log.read_text()[-2000:] for log in logs]
            assert all(p.poll() is None for p in ranks), [log.read_text()[-2000:] for log in logs]
            time.sleep(0.2)
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
