"""Training engine: the bare loop and its hook points, solver, checkpoints, data-parallel helpers, and the assembly.

* :mod:`~relground.engine.trainer`, :mod:`~relground.engine.hooks`, :mod:`~relground.engine.eval_hook`,
  :mod:`~relground.engine.checkpoint`,
  :mod:`~relground.engine.distributed`, :mod:`~relground.engine.solver`: the loop; they know no ``Config``.
* :mod:`~relground.engine.defaults`: builds datasets, loaders and the model from a ``Config``; ``train(cfg)``.
* :mod:`~relground.engine.predictor`: ``TrainedModel``, a trained checkpoint evaluated on dataset splits.
"""
from relground.engine.checkpoint import Checkpointer, load_checkpoint
from relground.engine.defaults import train
from relground.engine.eval_hook import EvalHook
from relground.engine.hooks import HookBase
from relground.engine.predictor import TrainedModel, resolve_checkpoint
from relground.engine.solver import build_lr_scheduler, build_optimizer
from relground.engine.trainer import Trainer

__all__ = [
    "Checkpointer",
    "EvalHook",
    "HookBase",
    "TrainedModel",
    "Trainer",
    "build_lr_scheduler",
    "build_optimizer",
    "load_checkpoint",
    "resolve_checkpoint",
    "train",
]
