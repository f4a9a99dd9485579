"""Optimizer and learning-rate schedule: SGD with linear warm-up and multi-step decay (the paper's recipe).

Paper (Sec. 4.1) and the authors' detectron2 code: SGD, lr 1e-3, momentum 0.9, weight decay 5e-4, batch 40
image-caption pairs, 80k iterations, lr x0.1 at 32k and 40k, 500 warm-up iterations. The warm-up starts at
``warmup_factor x base_lr`` (detectron2's default 1/1000) and rises linearly to ``base_lr`` at ``warmup_iters``.
Both pieces are torch's own schedulers (``LinearLR`` and ``MultiStepLR``) chained multiplicatively, so at
optimizer step ``t`` (0-based; the scheduler steps once per optimizer step)::

    lr(t) = base_lr * (warmup_factor + (1 - warmup_factor) * min(t, warmup_iters) / warmup_iters)
                    * gamma ** (number of milestones <= t)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn
from torch.optim import SGD, Optimizer
from torch.optim.lr_scheduler import ChainedScheduler, LinearLR, LRScheduler, MultiStepLR

# Parameters of these layers get ``weight_decay_norm`` (detectron2's SOLVER.WEIGHT_DECAY_NORM, default 0).
_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


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


def per_process_batch_size(cfg: SolverConfig, world_size: int, accumulation_steps: int) -> Optional[int]:
    """``ims_per_batch / (world_size x accumulation_steps)``, or None when ``ims_per_batch`` is not set.

    Raises:
        ValueError: ``solver.ims_per_batch`` is not divisible by ``world_size x accumulation_steps``.
    """
    if cfg.ims_per_batch is None:
        return None
    shards = world_size * accumulation_steps
    if cfg.ims_per_batch % shards:
        raise ValueError(
            f"solver.ims_per_batch={cfg.ims_per_batch} is not divisible by world size {world_size} x "
            f"train.accumulation_steps {accumulation_steps}"
        )
    return cfg.ims_per_batch // shards


def parameter_groups(model: nn.Module, weight_decay: float, weight_decay_norm: float) -> list[dict]:
    """Trainable parameters split into two groups by weight decay (frozen parameters are left out).

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay}, {"params": [...], "weight_decay": weight_decay_norm}]``
        without empty groups.
    """
    regular, norm, seen = [], [], set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))  # shared parameters go into one group only
            (norm if isinstance(module, _NORM_LAYERS) else regular).append(param)
    groups = [{"params": regular, "weight_decay": weight_decay}, {"params": norm, "weight_decay": weight_decay_norm}]
    return [g for g in groups if g["params"]]


def _fused_supported(params: list[torch.Tensor]) -> bool:
    """Fused SGD needs floating-point parameters on a device torch has fused kernels for."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    devices = _get_fused_kernels_supported_devices()
    return all(p.is_floating_point() and p.device.type in devices for p in params)


def build_optimizer(cfg: SolverConfig, model: nn.Module) -> Optimizer:
    """SGD over the model's trainable parameters, fused kernels where supported, else the foreach path.

    Raises:
        ValueError: the model has no trainable parameter.
    """
    groups = parameter_groups(model, cfg.weight_decay, cfg.weight_decay_norm)
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise ValueError("model: no trainable parameter (requires_grad) to optimise")
    fused = _fused_supported(params)
    return SGD(groups, lr=cfg.base_lr, momentum=cfg.momentum, fused=fused or None, foreach=None if fused else True)


def build_lr_scheduler(cfg: SolverConfig, optimizer: Optimizer) -> LRScheduler:
    """Linear warm-up x multi-step decay, stepped once per optimizer step (see the module docstring)."""
    decay = MultiStepLR(optimizer, milestones=list(cfg.steps), gamma=cfg.gamma)
    if cfg.warmup_iters == 0:
        return decay
    warmup = LinearLR(optimizer, start_factor=cfg.warmup_factor, end_factor=1.0, total_iters=cfg.warmup_iters)
    return ChainedScheduler([warmup, decay], optimizer=optimizer)
