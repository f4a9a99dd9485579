"""``SolverConfig``: the optimiser and learning-rate schedule settings (``solver.*``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional


@dataclass(frozen=True)
class SolverConfig:
    """Optimisation settings (``solver.*`` in the YAML files). Defaults are the paper's Flickr30K recipe.

    Attributes:
        optimizer: only ``"sgd"`` (the paper's choice).
        base_lr: peak learning rate (1e-3).
        momentum: SGD momentum (0.9).
        weight_decay: L2 weight decay (5e-4) for every trainable parameter outside normalisation layers.
        weight_decay_norm: weight decay of normalisation-layer parameters (0, detectron2's default).
        ims_per_batch: global effective batch in (image, sentence) pairs per optimizer step
            = per-process batch x world size x ``train.accumulation_steps``. When set (the paper: 40) it
            decides the per-process batch (``data.batch_size`` is then derived from it); ``None`` (default)
            keeps ``data.batch_size`` per process.
        max_iter: number of optimizer steps (80k).
        steps: iterations at which the lr is multiplied by ``gamma`` ((32k, 40k)).
        gamma: decay factor (0.1).
        warmup_iters: length of the linear warm-up in iterations (500; 0 disables it).
        warmup_factor: lr multiplier at iteration 0 of the warm-up (1/1000).
        clip_grad_norm: clip the global gradient L2 norm to this value; ``None`` (default) = no clipping.
    """

    optimizer: Literal["sgd"] = "sgd"
    base_lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    weight_decay_norm: float = 0.0
    ims_per_batch: Optional[int] = None
    max_iter: int = 80_000
    steps: tuple[int, ...] = (32_000, 40_000)
    gamma: float = 0.1
    warmup_iters: int = 500
    warmup_factor: float = 1e-3
    clip_grad_norm: Optional[float] = None

    def __post_init__(self) -> None:
        if self.base_lr <= 0:
            raise ValueError(f"solver.base_lr must be > 0, got {self.base_lr}")
        if self.max_iter < 0:
            raise ValueError(f"solver.max_iter must be >= 0, got {self.max_iter}")
        if self.ims_per_batch is not None and self.ims_per_batch < 1:
            raise ValueError(f"solver.ims_per_batch must be >= 1, got {self.ims_per_batch}")
        if list(self.steps) != sorted(self.steps) or any(s <= 0 for s in self.steps):
            raise ValueError(f"solver.steps must be increasing positive iterations, got {self.steps}")
        if self.warmup_iters < 0 or not 0 < self.warmup_factor <= 1:
            raise ValueError(
                f"solver.warmup_iters must be >= 0 and solver.warmup_factor in (0, 1], "
                f"got {self.warmup_iters} and {self.warmup_factor}"
            )
