"""A run's files follow the umask (a team shares run folders): 0644 under 022, 0664 under 002, 0600 under 077."""
from __future__ import annotations

import os
import stat
import threading

import numpy as np
import pytest

from relground.config import load_config, save_config
from relground.data.proposals import ProposalSet, write_proposals
from relground.engine.checkpoint import Checkpointer
from relground.utils.io import atomic_write, current_umask


@pytest.fixture
def umask():
    """Set the process umask for the test, restore it afterwards."""
    previous = os.umask(0o022)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_run_files_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    assert current_umask() == mask
    assert mode(atomic_write(tmp_path / "plain.bin", lambda f: f.write(b"x"))) == expected
    assert mode(save_config(load_config("synthetic.yaml"), tmp_path / "config.yaml")) == expected
    checkpoint = Checkpointer(tmp_path / "checkpoints").save({"model": {}}, 10, final=True)
    assert mode(checkpoint) == expected
    one = ProposalSet(np.array([[0.0, 0.0, 4.0, 4.0]]), np.array([1.0]), np.array([0]), 8, 8)
    assert mode(write_proposals(tmp_path / "proposals.h5", {"a": one}, ["thing"])) == expected


def test_reading_the_umask_leaves_it_unchanged(umask):
    umask(0o027)
    seen = []
    worker = threading.Thread(target=lambda: seen.append(current_umask()))
    worker.start()
    worker.join()
    assert seen == [0o027] and current_umask() == 0o027
