"""Paths that exist but are the wrong kind (a file where a folder is expected, or the reverse), named early.

``open`` and ``mkdir`` would raise ``IsADirectoryError`` / ``FileExistsError`` at the first write, perhaps after
training; these checks run where a path enters and say which setting names it and what to do.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def expect_file(path: str | os.PathLike, what: str, advice: str = "") -> Path:
    """``path`` as a ``Path`` when it is a file.

    Raises:
        FileNotFoundError: nothing there (``"<what> not found: <path>"``).
        ValueError: a folder (or another non-file) there; the message names ``what`` and ``advice``.
    """
    return _expect_kind(Path(path), Path.is_file, "a file", what, advice)


def expect_folder(path: str | os.PathLike, what: str, advice: str = "") -> Path:
    """``path`` as a ``Path`` when it is a folder.

    Raises:
        FileNotFoundError: nothing there.
        ValueError: a file there.
    """
    return _expect_kind(Path(path), Path.is_dir, "a folder", what, advice)


def _expect_kind(path: Path, is_kind, kind: str, what: str, advice: str) -> Path:
    if is_kind(path):
        return path
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}" + (f" ({advice})" if advice else ""))
    raise ValueError(f"{path}: {what} is {_kind(path)}, not {kind}" + (f"; {advice}" if advice else ""))


def check_can_create_folder(path: str | os.PathLike, what: str, advice: str = "") -> Path:
    """``path`` is a folder or can become one: nothing of another kind at it or at any of its parents.

    Raises:
        ValueError: ``path`` or one of its parents exists and is not a folder (the first such path named).
    """
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                where = "" if candidate == path else f" (a parent of {path})"
                raise ValueError(f"{candidate}: {what}{where} is {_kind(candidate)}, not a folder"
                                 + (f"; {advice}" if advice else ""))
            break
    return path


def check_run_folder(output_dir: str | os.PathLike, files: Iterable[str], folders: Iterable[str], what: str) -> None:
    """A run folder and the entries a run writes in it are each absent or of the kind the run writes.

    Args:
        output_dir: the run folder.
        files: names of the files the run writes there (``config.yaml``, ``metrics.csv``).
        folders: names of the folders it writes there (``checkpoints``, ``tensorboard``).
        what: the setting that names the folder (``output_dir``), for the messages.

    Raises:
        ValueError: the first entry of the wrong kind, named with what to do; nothing is written.
    """
    advice = f"choose another {what}, or move that path away (nothing was written)"
    output_dir = check_can_create_folder(output_dir, what, advice)
    for name in folders:
        entry = output_dir / name
        if entry.exists() and not entry.is_dir():
            raise ValueError(f"{entry}: the run writes a folder there but it is {_kind(entry)}; {advice}")
    for name in files:
        entry = output_dir / name
        if entry.exists() and not entry.is_file():
            raise ValueError(f"{entry}: the run writes a file there but it is {_kind(entry)}; {advice}")


def _kind(path: Path) -> str:
    if path.is_dir():
        return "a folder"
    if path.is_file():
        return "a file"
    return "neither a file nor a folder (a socket, device or dangling link)"
