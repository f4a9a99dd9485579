"""Atomic file writes: a file is replaced whole or not at all, even under SIGKILL or power loss."""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from relground.utils.errors import WriteError

TMP_PREFIX = ".tmp-"
# The write was refused for room, not for a bug: disk full, file-size limit (ulimit -f), disk quota.
SPACE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_umask() -> int:
    """This process's umask, read without changing it where Linux shows it (``/proc/self/status``); elsewhere set
    and restored at once (another thread creating a file in that instant would get the default mode)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write_fn) -> Path:
    """Write a file atomically: ``write_fn(binary file object)`` fills a temporary file that replaces ``path``.

    Args:
        path: destination; its folder must exist.
        write_fn: called once with the open temporary file.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        WriteError: the disk is full, a quota or a file-size limit (``ulimit -f``) was reached: one line naming
            ``path``; ``path`` is unchanged and no temporary file is left.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; a run's files follow the umask as open() would
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())  # data on disk before the rename makes it visible
        os.replace(tmp_name, path)
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        refused = _space_error(exc)
        if refused is not None:
            raise WriteError(
                f"{path}: cannot be written: {os.strerror(refused.errno).lower()} (errno {refused.errno}); "
                f"{'the previous ' + path.name + ' is unchanged' if path.exists() else 'it was not created'} and no "
                "temporary file was left. Free some space (or raise the limit) and run again"
            ) from None
        raise
    _fsync_dir(path.parent)  # the rename itself survives a power loss
    return path


def _space_error(exc: BaseException) -> Optional[OSError]:
    """The "no space" ``OSError`` behind ``exc``: itself, or the one torch's zip writer turned into a
    ``RuntimeError('[enforce fail at inline_container.cc] unexpected pos ...')`` (found in ``__context__``)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in SPACE_ERRNOS:
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` through :func:`atomic_write`."""
    return atomic_write(path, lambda f: torch.save(obj, f))
