"""The ``relground`` logger: lines a cluster job can read (stderr and ``<run folder>/log.txt``), rank 0 only.

detectron2's ``setup_logger`` in small::

    logger = setup_logger(output_dir, rank=0)   # stderr + <output_dir>/log.txt
    logger.info("iter 20/100  total_loss 1.234 ...")

Other ranks get a logger without handlers (their lines are dropped: every rank logs the same values). Progress
shows as a tqdm bar only where stderr is a terminal (:func:`interactive`); in a batch job (SLURM, a pipe, a file)
a bar's ``\\r`` frames would fill the log, so the loops log one line every so often instead.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

LOGGER_NAME = "relground"
LOG_FILE = "log.txt"
_FORMAT = "[%(asctime)s %(name)s] %(message)s"


def interactive() -> bool:
    """True when stderr (where bars and log lines go) is a terminal."""
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


class _RunFolderLog(logging.FileHandler):
    """``log.txt`` opened with its first line, its folder made then: a warning while the data loads may come
    before anything else has created the run folder."""

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def setup_logger(output_dir: Optional[str | Path] = None, rank: int = 0) -> logging.Logger:
    """The ``relground`` logger with a stderr handler and, when ``output_dir`` is given, ``output_dir/log.txt``
    (appended: a resumed run continues the file). Idempotent; rank != 0 gets no handler.

    The stderr handler is bound to the ``sys.stderr`` of this call (pytest's capture, a redirect): a later call
    with another ``sys.stderr`` replaces it.
    """
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):  # one stream handler and one file per run folder, never doubled
        if not getattr(handler, "relground_owned", False):
            continue  # a handler the caller attached (pytest's caplog, an application's) stays
        current = not isinstance(handler, logging.FileHandler) and getattr(handler, "stream", None) is sys.stderr
        if rank != 0 or not current:
            logger.removeHandler(handler)
            handler.close()
    if rank != 0:
        return logger
    if not any(getattr(h, "relground_owned", False) and not isinstance(h, logging.FileHandler) for h in logger.handlers):
        stream = logging.StreamHandler(sys.stderr)
        stream.relground_owned = True
        stream.setFormatter(logging.Formatter(_FORMAT, datefmt="%m/%d %H:%M:%S"))
        # a record logged with extra={"file_only": True} (a metric line while a bar shows) goes to log.txt only
        stream.addFilter(lambda record: not getattr(record, "file_only", False))
        logger.addHandler(stream)
    if output_dir is not None:
        # delay: the file appears with the first line (a run refused before it starts leaves its folder as it was)
        file_handler = _RunFolderLog(Path(output_dir) / LOG_FILE, encoding="utf-8", delay=True)
        file_handler.relground_owned = True
        file_handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
        logger.addHandler(file_handler)
    return logger


def close_log_file() -> None:
    """Detach and close ``log.txt`` (the stderr handler stays)."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler) and getattr(handler, "relground_owned", False):
            logger.removeHandler(handler)
            handler.close()


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)
