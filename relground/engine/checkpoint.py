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
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch

from relground.utils.errors import WriteError
from relground.utils.io import TMP_PREFIX, atomic_torch_save

CHECKPOINT_PATTERN = re.compile(r"^model_(\d+)\.pth$")
FINAL_NAME = "model_final.pth"
BEST_NAME = "model_best.pth"  # the best evaluation so far (train.eval_period), with its metric and iteration
# A finished run that is extended keeps its former final checkpoint under this name (never pruned).
ARCHIVED_FINAL_PATTERN = re.compile(r"^model_final_(\d+)\.pth$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: empty, truncated, not a torch file, or not a relground checkpoint.

    The message names the file and what was expected; ``path`` holds the file.
    """

    def __init__(self, path: str | os.PathLike, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint dict written by :class:`Checkpointer`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError (a ``ValueError``): the file is empty, truncated or garbage (torch / pickle cannot read
            it), or it is not a relground checkpoint (no ``"model"`` entry); the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(path, "empty file (expected a torch.save checkpoint)")
    # weights_only=False: the file also holds optimizer/RNG/config state (plain containers and numpy arrays)
    # written by this package; load only checkpoints you trust, as with any pickle.
    damaged = _zip_damage(path)
    if damaged:
        raise CheckpointError(path, damaged)
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except MemoryError:
        raise
    except Exception as e:  # torch / zipfile / pickle raise many types for a damaged file: one named error
        raise CheckpointError(
            path, f"cannot be read as a torch checkpoint (truncated, damaged or not a torch.save file): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(path, "not a relground checkpoint (expected a dict with a 'model' entry)")
    return state


def _zip_damage(path: Path) -> Optional[str]:
    """Why a zip-format ``torch.save`` file is damaged (a record failing its CRC-32, a bad archive), or None.

    torch's reader does not check the CRCs, so a flipped byte in a tensor would load as other weights; reading
    every record once through :mod:`zipfile` checks them (legacy non-zip files are left to ``torch.load``).
    """
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as e:
        return f"damaged checkpoint archive ({type(e).__name__}: {e})"
    return f"damaged checkpoint: record {bad!r} fails its CRC check (a corrupted byte)" if bad else None


def flatten_config(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"hidden_dim": 8}}`` -> ``{"model.hidden_dim": 8}`` (lists and scalars are leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten_config(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_differences(saved: dict, requested: dict, may_differ: Iterable[str] = ()) -> list[str]:
    """``key: checkpoint X, requested Y`` for every dotted config key whose values differ, keys in ``may_differ``
    (exact keys, or prefixes ending in ``.``) excepted. Keys present on one side only count as differing."""
    allowed = tuple(may_differ)
    a, b = flatten_config(saved), flatten_config(requested)
    lines = []
    for key in sorted(set(a) | set(b)):
        if key in allowed or any(p.endswith(".") and key.startswith(p) for p in allowed):
            continue
        left, right = a.get(key, "<absent>"), b.get(key, "<absent>")
        if _normalise(left) != _normalise(right):
            lines.append(f"{key}: checkpoint {left!r}, requested {right!r}")
    return lines


def _normalise(value: Any) -> Any:
    return [_normalise(v) for v in value] if isinstance(value, (list, tuple)) else value


def find_loadable_checkpoint(
    checkpointer: "Checkpointer", map_location: str | torch.device = "cpu"
) -> tuple[Optional[Path], Optional[dict], list[tuple[Path, str]]]:
    """The newest checkpoint of ``checkpointer`` that loads, falling back past broken ones.

    Returns:
        ``(path, state, broken)``: the checkpoint used (``None``, ``None`` when there is none that loads) and
        ``(path, reason)`` for each newer checkpoint that could not be read (left on disk untouched).
    """
    broken: list[tuple[Path, str]] = []
    for path in checkpointer.candidates():
        try:
            return path, load_checkpoint(path, map_location=map_location), broken
        except (CheckpointError, FileNotFoundError) as e:
            broken.append((path, str(e)))
    return None, None, broken


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

    def save(self, state: dict[str, Any], iteration: int, final: bool = False, keep_final_of: Optional[int] = None) -> Path:
        """Write ``state`` atomically as ``model_<iteration>.pth`` (or ``model_final.pth``), then prune.

        Args:
            keep_final_of: when a run extends a finished one (whose ``model_final.pth`` is at this iteration), that
                file is first kept as ``model_final_<iteration>.pth``; a periodic write then removes the
                ``model_final.pth`` name so that the new file is the newest checkpoint.

        Raises:
            FloatingPointError: the model state is not finite (nothing is written).
            WriteError: the disk refused the write (full, quota, ``ulimit -f``); names the newest intact checkpoint.
        """
        assert_finite_state(state["model"])
        self.directory.mkdir(parents=True, exist_ok=True)
        if keep_final_of is not None:
            self.archive_final(keep_final_of)
        path = self.directory / (FINAL_NAME if final else f"model_{iteration:07d}.pth")
        try:
            atomic_torch_save(state, path)
        except WriteError as e:  # disk full: name the checkpoint a resume would continue from
            previous = self.latest()
            kept = f"the newest intact checkpoint is {previous}" if previous else "no earlier checkpoint exists"
            raise WriteError(f"{e}; {kept} (--resume continues from it)") from None
        if keep_final_of is not None and not final:
            (self.directory / FINAL_NAME).unlink(missing_ok=True)  # the archive holds it
        self._prune()
        return path

    def save_best(self, state: dict[str, Any]) -> Path:
        """Write ``state`` atomically as ``model_best.pth`` (never pruned, never a resume candidate)."""
        assert_finite_state(state["model"])
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / BEST_NAME
        atomic_torch_save(state, path)
        return path

    def _prune(self) -> None:
        for _, path in self.periodic_checkpoints()[: -self.keep_last]:
            path.unlink(missing_ok=True)
        for orphan in self.directory.glob(TMP_PREFIX + "*"):  # left by a process killed mid-write
            orphan.unlink(missing_ok=True)

    def latest(self) -> Optional[Path]:
        """The newest complete checkpoint: ``model_final.pth`` if present, else the highest iteration, else None."""
        candidates = self.candidates()
        return candidates[0] if candidates else None

    def candidates(self) -> list[Path]:
        """Every checkpoint, newest first: ``model_final.pth``, then ``model_<iter>.pth`` and archived
        ``model_final_<iter>.pth`` files by decreasing iteration (a resume falls back along this list)."""
        final = self.directory / FINAL_NAME
        found = self.periodic_checkpoints()
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                match = ARCHIVED_FINAL_PATTERN.match(path.name)
                if match:
                    found.append((int(match.group(1)), path))
        ordered = [path for _, path in sorted(found, key=lambda item: (item[0], item[1].name), reverse=True)]
        return ([final] if final.is_file() else []) + ordered

    def archive_final(self, iteration: int) -> Optional[Path]:
        """Keep ``model_final.pth`` (of a finished run at ``iteration``) as ``model_final_<iteration>.pth``.

        A hard link (a copy where links are not supported), so the original name stays valid until the caller
        replaces it; returns the archive path, or None when there is no final file.
        """
        final = self.directory / FINAL_NAME
        if not final.is_file():
            return None
        archive = self.directory / f"model_final_{iteration:07d}.pth"
        if not archive.exists():
            try:
                os.link(final, archive)
            except OSError:
                shutil.copy2(final, archive)
        return archive


def warn_broken_checkpoints(broken: Sequence[tuple[Path, str]], used: Optional[Path]) -> None:
    """Name each checkpoint a resume skipped; raise when there were checkpoints but none loads.

    Raises:
        CheckpointError: ``used`` is None and ``broken`` is not empty (nothing to fall back to).
    """
    for path, reason in broken:
        fallback = f"resuming from the previous one, {used}" if used is not None else "no older checkpoint loads"
        warnings.warn(f"skipping unreadable checkpoint ({reason}); {fallback}", RuntimeWarning, stacklevel=3)
    if used is None and broken:
        raise CheckpointError(
            broken[0][0].parent,
            f"none of the {len(broken)} checkpoint(s) can be read (" + "; ".join(r for _, r in broken) + "); "
            "nothing was changed. Remove them to start over, or train into another output_dir",
        )


def check_resumable(path: Path, state: dict, max_iter: int) -> int:
    """The iteration of a checkpoint a run of ``max_iter`` iterations can continue from.

    Raises:
        ValueError: the checkpoint is at or past ``max_iter``: a finished run (``model_final.pth``) is extended
            only with a larger ``solver.max_iter`` (its final file is then kept), never rewritten.
    """
    iteration = int(state.get("iteration", 0))
    if iteration >= max_iter:
        is_final = path.name == FINAL_NAME or bool(ARCHIVED_FINAL_PATTERN.match(path.name))
        raise ValueError(
            f"{path}: the run already {'finished' if is_final else 'reached'} iteration {iteration} and "
            f"solver.max_iter={max_iter}: nothing to resume. To train longer, resume with solver.max_iter above "
            f"{iteration}" + (f" (its {FINAL_NAME} is then kept as model_final_{iteration:07d}.pth)." if is_final else ".")
        )
    return iteration
