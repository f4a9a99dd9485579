"""Checkpoints on disk: atomic writes, keep-last-k, finding the newest, RNG state capture.

A checkpoint is one ``torch.save`` file holding a plain dict (model, optimizer, scheduler, scaler, trainer
position, hook states, RNG states, config). It is written to a temporary file in the same folder, flushed,
``fsync``-ed and renamed over the destination with ``os.replace`` (atomic on POSIX), then the folder is
``fsync``-ed. A process killed at any instant (SIGKILL included) therefore leaves either the old file or
the new one, never a truncated one; at worst an orphan ``.tmp`` file, which is ignored and cleaned up.

Layout of ``<output_dir>/checkpoints``::

    model_0005000.pth  model_0010000.pth  ...  model_final.pth

The newest checkpoint is found from the file names alone (no separate pointer file that a kill could
leave one write behind).
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from relground.utils.io import TMP_PREFIX, atomic_torch_save

CHECKPOINT_PATTERN = re.compile(r"^model_(\d+)\.pth$")
FINAL_NAME = "model_final.pth"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint dict written by :class:`Checkpointer`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a relground checkpoint (no ``"model"`` entry).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    # weights_only=False: the file also holds optimizer/RNG/config state (plain containers and numpy arrays)
    # written by this package; load only checkpoints you trust, as with any pickle.
    state = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path}: not a relground checkpoint (expected a dict with a 'model' entry)")
    return state


def capture_rng_state() -> dict[str, Any]:
    """RNG states of python, numpy, torch CPU and (when initialised) every CUDA device."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def assert_finite_state(model_state: dict[str, torch.Tensor]) -> None:
    """Refuse to checkpoint a model with NaN/inf parameters, so the last good checkpoint stays the newest.

    Raises:
        FloatingPointError: naming the first non-finite entry.
    """
    for name, tensor in model_state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise FloatingPointError(f"model state '{name}' holds NaN/inf; refusing to write the checkpoint")


class Checkpointer:
    """Writes and finds checkpoints in one folder, keeping the newest ``keep_last`` periodic ones.

    Args:
        directory: checkpoint folder (created when ``save`` is first called).
        keep_last: number of periodic ``model_<iter>.pth`` files to keep (>= 1); ``model_final.pth`` is
            never deleted.
    """

    def __init__(self, directory: str | os.PathLike, keep_last: int = 3) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last

    def periodic_checkpoints(self) -> list[tuple[int, Path]]:
        """``(iteration, path)`` of every ``model_<iter>.pth``, oldest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = CHECKPOINT_PATTERN.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def save(self, state: dict[str, Any], iteration: int, final: bool = False) -> Path:
        """Write ``state`` atomically as ``model_<iteration>.pth`` (or ``model_final.pth``), then prune.

        Raises:
            FloatingPointError: the model state is not finite (nothing is written).
        """
        assert_finite_state(state["model"])
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / (FINAL_NAME if final else f"model_{iteration:07d}.pth")
        atomic_torch_save(state, path)
        self._prune()
        return path

    def _prune(self) -> None:
        for _, path in self.periodic_checkpoints()[: -self.keep_last]:
            path.unlink(missing_ok=True)
        for orphan in self.directory.glob(TMP_PREFIX + "*"):  # left by a process killed mid-write
            orphan.unlink(missing_ok=True)

    def latest(self) -> Optional[Path]:
        """The newest complete checkpoint: ``model_final.pth`` if present, else the highest iteration, else None."""
        final = self.directory / FINAL_NAME
        if final.is_file():
            return final
        found = self.periodic_checkpoints()
        return found[-1][1] if found else None
