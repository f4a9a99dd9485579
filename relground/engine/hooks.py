"""Trainer hooks: checkpointing, metric logging (CSV + TensorBoard + log lines), progress bar, signal handling
(periodic evaluation with the best checkpoint: :mod:`relground.engine.eval_hook`).

A hook sees the trainer through ``self.trainer`` (set by ``Trainer.register_hooks``) and may act at four
points: ``before_train``, ``before_step``, ``after_step``, ``after_train`` (the last runs even when training
fails). Hooks that need to survive a resume return their state from ``state_dict``; the trainer stores it in
every checkpoint. Hooks run on every rank (some take part in collectives); only rank 0 writes files.

Per-step values a hook can read after ``run_step``: ``trainer.step_metrics`` =
``{"total_loss", "loss/<name>" ..., "lr", "images", "time", "data_time"}`` (this rank; ``images`` counts
all ranks).
"""
from __future__ import annotations

import csv
import datetime
import math
import os
import resource
import signal
import threading
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from tqdm.auto import tqdm

from relground.engine.distributed import is_main_process, reduce_dict_mean
from relground.utils.logs import get_logger, interactive

if TYPE_CHECKING:
    from relground.engine.trainer import Trainer


class HookBase:
    """Base class: every method is a no-op; override the ones you need."""

    trainer: "Trainer"

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class PeriodicCheckpointer(HookBase):
    """Checkpoint every ``period`` iterations, on a signal-requested stop, and at the end (``model_final.pth``).

    Nothing is written when training fails (e.g. the NaN guard fired), so the newest checkpoint on disk
    is the last good one. Every rank calls ``trainer.save_checkpoint`` (it gathers per-rank RNG states);
    rank 0 writes.

    Args:
        period: iterations between checkpoints (> 0).
    """

    def __init__(self, period: int) -> None:
        if period <= 0:
            raise ValueError(f"train.checkpoint_period must be > 0, got {period}")
        self.period = period

    def after_step(self) -> None:
        done = self.trainer.iteration
        if done % self.period == 0 and done < self.trainer.max_iter:
            self.trainer.save_checkpoint()

    def after_train(self) -> None:
        if self.trainer.status == "finished":
            self.trainer.save_checkpoint(final=True)
        elif self.trainer.status == "interrupted":
            self.trainer.save_checkpoint()


class MetricsWriter(HookBase):
    """Every ``period`` iterations (and at the last one): window means of each loss, the lr and images/s.

    Values are averaged over the window and over ranks, then rank 0 appends one row to
    ``<output_dir>/metrics.csv`` and writes the same scalars to TensorBoard (``<output_dir>/tensorboard``).
    On resume, rows and events at or after the resumed iteration (written after the checkpoint by the
    interrupted run) are dropped so the logs have no duplicates.

    Args:
        output_dir: run folder.
        period: logging period in iterations (> 0).
        tensorboard: also write TensorBoard events (default True).
    """

    def __init__(self, output_dir: str | Path, period: int, tensorboard: bool = True) -> None:
        if period <= 0:
            raise ValueError(f"train.log_period must be > 0, got {period}")
        self.output_dir = Path(output_dir)
        self.period = period
        self.tensorboard = tensorboard
        self.csv_path = self.output_dir / "metrics.csv"
        self.latest: dict[str, float] = {}  # the last logged row (also read by ProgressBar and train())
        self._window: dict[str, list[float]] = defaultdict(list)
        self._window_start = 0.0
        self._tb = None

    def before_train(self) -> None:
        self._window_start = time.perf_counter()
        if not is_main_process():
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._truncate_csv(self.trainer.start_iter)
        if self.tensorboard:
            # local: torch.utils.tensorboard loads TensorBoard (~1 s); runs with train.tensorboard=false skip it
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events the interrupted run wrote after its last checkpoint
            purge_step = self.trainer.start_iter + 1 if self.trainer.start_iter else None
            self._tb = SummaryWriter(str(self.output_dir / "tensorboard"), purge_step=purge_step)

    def after_step(self) -> None:
        for key, value in self.trainer.step_metrics.items():
            self._window[key].append(value)
        done = self.trainer.iteration
        if done % self.period == 0 or done == self.trainer.max_iter:
            self._flush(done)

    def after_train(self) -> None:
        if self._window.get("time") and self.trainer.status != "failed":
            self._flush(self.trainer.iteration)
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def _flush(self, iteration: int) -> None:
        window, self._window = self._window, defaultdict(list)
        wall = time.perf_counter() - self._window_start
        self._window_start = time.perf_counter()
        means = {k: math.fsum(v) / len(v) for k, v in window.items() if k not in ("images", "time", "data_time")}
        means["time_per_iter"] = math.fsum(window["time"]) / len(window["time"])
        means["data_time"] = math.fsum(window["data_time"]) / len(window["data_time"])
        means = reduce_dict_mean(means, self.trainer.device)  # collective: every rank flushes together
        means["images_per_s"] = math.fsum(window["images"]) / max(wall, 1e-9)
        row = {"iteration": iteration, **{k: means[k] for k in sorted(means)}}
        self.latest = row
        if not is_main_process():
            return
        self._log_line(row)
        self._append_csv(row)
        if self._tb is not None:
            for key, value in row.items():
                if key != "iteration":
                    self._tb.add_scalar(key if "/" in key else f"train/{key}", value, iteration)
            self._tb.flush()

    def write_scalars(self, iteration: int, values: dict[str, float]) -> None:
        """One more row (e.g. an evaluation's ``val/*``) in metrics.csv and TensorBoard; rank 0 writes."""
        if not is_main_process():
            return
        self._append_csv({"iteration": iteration, **values})
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, iteration)
            self._tb.flush()

    def _log_line(self, row: dict[str, float]) -> None:
        """``iter 20/100  total_loss 1.2345  loss/rec_s2 ...  lr 1.00e-03  pairs/s 12.3  eta 0:01:23  max_mem 1.2G``:
        on stderr where no bar shows (a batch job), always in log.txt."""
        trainer = self.trainer
        losses = "  ".join(f"{k} {row[k]:.4f}" for k in ["total_loss", *(k for k in row if k.startswith("loss/"))])
        eta = datetime.timedelta(seconds=round(row["time_per_iter"] * (trainer.max_iter - row["iteration"])))
        line = (
            f"iter {row['iteration']}/{trainer.max_iter}  {losses}  lr {row['lr']:.2e}  "
            f"pairs/s {row['images_per_s']:.1f}  eta {eta}  max_mem {_max_memory(trainer.device)}"
        )
        get_logger().info(line, extra={"file_only": interactive()})

    def _append_csv(self, row: dict[str, float]) -> None:
        rows = []
        if self.csv_path.is_file():
            with open(self.csv_path, newline="") as f:
                reader = csv.DictReader(f)
                columns = list(reader.fieldnames or [])
                if set(row) - set(columns):  # a new metric appeared: rewrite with the wider header
                    rows = list(reader)
        else:
            columns = []
        if rows or not columns:
            columns = columns + [k for k in row if k not in columns]
            with open(self.csv_path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=columns, restval="").writerow(row)

    def _truncate_csv(self, start_iter: int) -> None:
        if not self.csv_path.is_file():
            return
        rows, dropped = [], []
        try:
            with open(self.csv_path, newline="", encoding="utf-8", errors="replace") as f:
                reader = csv.DictReader(f)
                columns = list(reader.fieldnames or [])
                for r in reader:
                    try:
                        if None in r:  # more fields than the header
                            raise ValueError("extra fields")
                        keep = int(r.get("iteration") or "") <= start_iter
                    except ValueError:  # a damaged row (e.g. a write cut by a crash): a log line, not state
                        dropped.append(reader.line_num)
                        continue
                    if keep:
                        rows.append(r)
        except csv.Error as e:
            reason = f"damaged ({e})"
        else:
            if not columns:
                return  # empty file: _append_csv writes the header
            reason = None if "iteration" in columns else f"no 'iteration' column in its header {columns[:5]}"
        if reason is not None:  # not a log this code can read: keep it aside, start a new one
            aside = self.csv_path.with_name(self.csv_path.name + ".damaged")
            os.replace(self.csv_path, aside)
            warnings.warn(f"{self.csv_path}: {reason}; moved to {aside}, starting a new log", RuntimeWarning, stacklevel=2)
            return
        if dropped:
            warnings.warn(f"{self.csv_path}: dropped {len(dropped)} unreadable row(s) (line(s) {dropped[:5]}) while "
                          "resuming", RuntimeWarning, stacklevel=2)
        with open(self.csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)


def _max_memory(device: torch.device) -> str:
    """Peak memory of this process: CUDA allocations on a GPU, the resident set (``ru_maxrss``) on the CPU."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes
    return f"{peak / 2**30:.2f}G"


class ProgressBar(HookBase):
    """A tqdm bar over iterations on rank 0, showing the latest logged loss, lr and images/s; only where stderr is
    a terminal (a batch job gets :class:`MetricsWriter`'s log lines instead of ``\r`` frames).

    Args:
        metrics: the ``MetricsWriter`` whose latest row is shown (optional).
        enabled: False hides the bar.
    """

    def __init__(self, metrics: Optional[MetricsWriter] = None, enabled: bool = True) -> None:
        self.metrics = metrics
        self.enabled = enabled
        self._bar = None
        self._shown: Optional[dict] = None

    def before_train(self) -> None:
        self._bar = tqdm(
            total=self.trainer.max_iter,
            initial=self.trainer.start_iter,
            desc="train",
            unit="it",
            dynamic_ncols=True,
            disable=not (self.enabled and is_main_process() and interactive()),
        )

    def after_step(self) -> None:
        self._bar.update(1)
        latest = self.metrics.latest if self.metrics is not None else None
        if latest and latest is not self._shown:
            self._shown = latest
            self._bar.set_postfix(
                loss=f"{latest['total_loss']:.4f}", lr=f"{latest['lr']:.2e}", img_s=f"{latest['images_per_s']:.1f}"
            )

    def after_train(self) -> None:
        if self._bar is not None:
            self._bar.close()


class SignalHandler(HookBase):
    """On the first SIGTERM/SIGINT, ask the trainer to stop after the current step (it then checkpoints).

    A second SIGINT raises ``KeyboardInterrupt`` as usual (no checkpoint). Handlers are installed only in
    the main thread and restored after training.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        self.trainer.request_stop(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once

    def before_train(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            warnings.warn("SignalHandler: not in the main thread; SIGTERM/SIGINT will not checkpoint", RuntimeWarning)
            return
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def after_train(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
