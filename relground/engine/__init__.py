"""Training engine: the trainer loop and its hooks, solver, checkpoints and data-parallel helpers.

``train(cfg)`` is the one-call entry point; ``Trainer`` the loop (see :mod:`relground.engine.trainer`).
"""
from relground.engine.checkpoint import Checkpointer, load_checkpoint
from relground.engine.hooks import HookBase
from relground.engine.solver import build_lr_scheduler, build_optimizer
from relground.engine.trainer import Trainer, train

__all__ = [
    "Checkpointer",
    "HookBase",
    "SolverConfig",
    "TrainConfig",
    "Trainer",
    "build_lr_scheduler",
    "build_optimizer",
    "load_checkpoint",
    "train",
]
