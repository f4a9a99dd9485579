"""Atomic file writes: a file is replaced whole or not at all, even under SIGKILL or power loss."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

TMP_PREFIX = ".tmp-"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write_fn) -> Path:
    """Write a file atomically: ``write_fn(binary file object)`` fills a temporary file that replaces ``path``.

    Args:
        path: destination; its folder must exist.
        write_fn: called once with the open temporary file.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())  # data on disk before the rename makes it visible
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # the rename itself survives a power loss
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` through :func:`atomic_write`."""
    return atomic_write(path, lambda f: torch.save(obj, f))
