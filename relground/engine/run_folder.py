"""The run folder (``output_dir``): what a run writes there, checked before anything is built or written."""
from __future__ import annotations

from pathlib import Path

from relground.utils.paths import check_run_folder

# What a run writes in its output_dir (each checked to be absent or of this kind before anything is built).
RUN_FILES = ("config.yaml", "metrics.csv")
RUN_FOLDERS = ("checkpoints", "tensorboard")


def check_output_dir(output_dir: Path) -> None:
    """``output_dir`` and the entries a run writes there are absent or of the right kind (``ValueError`` naming the
    first that is not: an existing file given as ``--output``, a folder where ``metrics.csv`` goes, ...)."""
    check_run_folder(output_dir, RUN_FILES, RUN_FOLDERS, "output_dir (--output)")


def nothing_to_resume(output_dir: Path) -> str:
    """Why ``--resume`` of ``output_dir`` has nothing to continue from, and what to do."""
    if not output_dir.exists():
        state = "does not exist"
    elif not (output_dir / "checkpoints").is_dir():
        state = "has no checkpoints folder"
    else:
        state = "holds no checkpoint (checkpoints/ is empty)"
    return (f"--resume: the run folder {output_dir} {state}, so there is nothing to resume; check output_dir / "
            "--output (a typo?), or add --fresh-if-no-checkpoint to start a new run there (nothing was written)")
