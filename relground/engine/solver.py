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

from typing import Optional

import torch
from torch import nn
from torch.optim import SGD, Optimizer
from torch.optim.lr_scheduler import ChainedScheduler, LinearLR, LRScheduler, MultiStepLR
from torch.optim.optimizer import _get_fused_kernels_supported_devices  # torch's own list; no public API yet

from relground.config.solver import SolverConfig

# Parameters of these layers get ``weight_decay_norm`` (detectron2's SOLVER.WEIGHT_DECAY_NORM, default 0).
_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


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
    optimizer = SGD(groups, lr=cfg.base_lr, momentum=cfg.momentum, fused=fused or None, foreach=None if fused else True)
    ensure_momentum_buffers(optimizer)
    return optimizer


def ensure_momentum_buffers(optimizer: Optimizer) -> None:
    """Give every parameter of a momentum SGD a zero momentum buffer where it has none yet.

    torch's fused SGD treats a step as "first" only when *no* parameter has a buffer; a parameter whose first
    gradient arrives later (the stage-2 heads before ``refine_start_iteration``) then reaches the kernel with a
    ``None`` buffer and the step raises ``TypeError``. With ``dampening == 0`` a zero buffer gives the same first
    update as torch's own initialisation, bit for bit (``buf = momentum * 0 + g = g``). Call it after building
    the optimizer and after ``optimizer.load_state_dict`` (a checkpoint may hold buffers for some parameters only).
    """
    for group in optimizer.param_groups:
        if not group.get("momentum"):
            continue
        if group.get("dampening", 0) != 0:
            # buf = momentum * 0 + (1 - dampening) * g would differ from torch's first update (buf = g).
            raise ValueError(f"solver: a zero momentum buffer needs dampening 0, got {group['dampening']}")
        for param in group["params"]:
            state = optimizer.state[param]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)


def build_lr_scheduler(cfg: SolverConfig, optimizer: Optimizer) -> LRScheduler:
    """Linear warm-up x multi-step decay, stepped once per optimizer step (see the module docstring)."""
    decay = MultiStepLR(optimizer, milestones=list(cfg.steps), gamma=cfg.gamma)
    if cfg.warmup_iters == 0:
        return decay
    warmup = LinearLR(optimizer, start_factor=cfg.warmup_factor, end_factor=1.0, total_iters=cfg.warmup_iters)
    return ChainedScheduler([warmup, decay], optimizer=optimizer)
