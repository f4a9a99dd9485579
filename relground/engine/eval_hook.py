"""Evaluation during training (``train.eval_period``): a detectron2-style ``EvalHook`` that keeps the best model."""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any, Optional

import torch

from relground.engine.checkpoint import BEST_NAME
from relground.engine.distributed import all_gather_object, is_main_process
from relground.engine.hooks import HookBase
from relground.utils.logs import get_logger


class EvalHook(HookBase):
    """Every ``period`` iterations and at the end of training: evaluate, log, and keep the best model (detectron2's
    ``EvalHook`` with mmdet's ``save_best``).

    ``evaluate()`` runs on rank 0 only (the validation split whole, the model unwrapped, no collective inside); its
    metrics reach every rank through one ``all_gather_object``, so all ranks log and decide alike. They go to
    metrics.csv and TensorBoard as ``val/<name>`` and to the log; when ``metrics[metric]`` beats the best so far,
    ``trainer.save_best`` writes ``model_best.pth`` with the metric, its value and the iteration. The best value
    survives a resume (:meth:`state_dict`).

    Args:
        period: iterations between evaluations (> 0).
        evaluate: ``() -> dict`` of flat numbers (nested dicts are flattened as ``name/sub``).
        metric: the key that decides the best model (higher is better). Default ``accuracy``.
        split: name of the evaluated split, for the log and the best checkpoint.
    """

    def __init__(self, period: int, evaluate: Callable[[], dict[str, Any]], metric: str = "accuracy",
                 split: str = "val") -> None:
        if period <= 0:
            raise ValueError(f"train.eval_period must be > 0, got {period}")
        self.period = period
        self.evaluate = evaluate
        self.metric = metric
        self.split = split
        self.best: Optional[float] = None
        self.best_iteration: Optional[int] = None
        self._last_evaluated: Optional[int] = None

    def before_train(self) -> None:
        # A run stopped right after an evaluation resumes from the checkpoint written before it: the best file on
        # disk may be newer than the hook state in that checkpoint.
        checkpointer = self.trainer.checkpointer
        path = checkpointer.directory / BEST_NAME if checkpointer is not None else None
        if path is not None and path.is_file() and self.trainer.start_iter > 0:
            try:
                best = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("best", {})
            except Exception as e:  # a damaged best file: the next better evaluation replaces it
                warnings.warn(f"{path}: unreadable ({type(e).__name__}); it will be replaced", RuntimeWarning)
                return
            if best.get("metric") == self.metric and (self.best is None or best["value"] > self.best):
                self.best, self.best_iteration = float(best["value"]), int(best["iteration"])

    def after_step(self) -> None:
        done = self.trainer.iteration
        if done % self.period == 0 and done < self.trainer.max_iter:
            self._run(done)

    def after_train(self) -> None:
        if self.trainer.status == "finished" and self._last_evaluated != self.trainer.iteration:
            self._run(self.trainer.iteration)

    def _run(self, iteration: int) -> None:
        self._last_evaluated = iteration
        start = time.perf_counter()
        metrics = _flat_numbers(self.evaluate()) if is_main_process() else None
        metrics = all_gather_object(metrics)[0]  # rank 0's, on every rank
        if self.metric not in metrics:
            raise KeyError(f"EvalHook: the evaluation returned no {self.metric!r} (has {sorted(metrics)[:8]})")
        value = metrics[self.metric]
        improved = self.best is None or value > self.best
        if improved:
            self.best, self.best_iteration = value, iteration
        if self.trainer.metrics is not None:
            self.trainer.metrics.write_scalars(iteration, {f"{self.split}/{k}": v for k, v in metrics.items()})
        if is_main_process():
            shown = "  ".join(f"{k} {metrics[k]:.4f}" for k in ("accuracy", "point_it", "upper_bound") if k in metrics)
            get_logger().info(
                f"eval iter {iteration}: {self.split} {shown} ({time.perf_counter() - start:.1f} s); best "
                f"{self.metric} {self.best:.4f} at iter {self.best_iteration}"
            )
        if improved:
            self.trainer.save_best({"metric": self.metric, "value": value, "iteration": iteration,
                                    "split": self.split})

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_iteration": self.best_iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_iteration = state.get("best"), state.get("best_iteration")


_NOT_LOGGED = ("per_type", "acc_at_iou")  # tens of columns each; the evaluate command reports them


def _flat_numbers(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a (nested) metrics dict as ``{"accuracy": .., "stage1/accuracy": ..}``; lists and the rest
    dropped."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if key in _NOT_LOGGED:
            continue
        if isinstance(value, dict):
            flat.update(_flat_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value is not None:
            flat[f"{prefix}{key}"] = float(value)
    return flat
