"""Data-parallel helpers over ``torch.distributed``: process group set-up, rank queries, reductions.

One process per device, launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``) or by ``torch.multiprocessing.spawn`` with an explicit ``init_method``
(tests use a temporary file). NCCL on GPUs, Gloo on CPUs. Every helper also works without a process group
(a single process is rank 0 of a world of size 1), so the trainer has no separate single-process path.

Example::

    torchrun --nproc_per_node 4 -m relground.cli.main train --config configs/flickr30k_reir.yaml
    torchrun --nnodes 2 --nproc_per_node 4 --max-restarts 3 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \
        --rdzv-id RUN -m relground.cli.main train --config configs/flickr30k_reir.yaml   # on each node

What makes N processes train the model of one (global losses, negatives and BatchNorm statistics) and how a
restarted group resumes: docs/distributed.md.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist

from relground.data.samplers import ResumableDistributedSampler  # noqa: F401  (re-exported)


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    """Index of this process's device on its node (``LOCAL_RANK`` from torchrun, else 0)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def restarted_by_torchrun() -> bool:
    """True in a process group that torchrun restarted (``--max-restarts``) after a worker failed."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def is_main_process() -> bool:
    """Rank 0 alone logs, writes files and checkpoints."""
    return get_rank() == 0


def default_backend(device: torch.device | str) -> str:
    """NCCL for CUDA tensors, Gloo otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_distributed(
    device: torch.device | str,
    *,
    init_method: Optional[str] = None,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    timeout_s: float = 1800.0,
) -> bool:
    """Join the process group when launched as several processes; a no-op for a single process.

    Args:
        device: the device this process trains on; picks the backend (NCCL for ``cuda``, else Gloo).
        init_method: rendezvous URL (``"file:///tmp/x"``, ``"tcp://host:port"``); default ``"env://"``
            (torchrun's variables).
        rank: this process's rank; default ``$RANK``.
        world_size: number of processes; default ``$WORLD_SIZE`` (1 when unset: no process group).
        timeout_s: collective timeout in seconds (default 30 min, torch's default).

    Returns:
        True when a process group is (now) initialised.

    Raises:
        ValueError: ``rank`` is outside ``[0, world_size)``.
    """
    if is_distributed():
        return True
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    if world_size <= 1:
        return False
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=timeout_s)
    if init_method is None and restarted_by_torchrun():
        # A restarted group may meet in the store of the failed one (torchrun's agent store outlives the round):
        # a rank could read a dead peer's address before its new peer overwrites it, and Gloo's connect fails.
        # Keys under a per-attempt prefix are never stale.
        store, rank, world_size = next(dist.rendezvous("env://", rank, world_size, timeout=timeout))
        store = dist.PrefixStore(f"relground/attempt_{os.environ['TORCHELASTIC_RESTART_COUNT']}", store)
        dist.init_process_group(
            backend=default_backend(device), store=store, rank=rank, world_size=world_size, timeout=timeout
        )
        return True
    dist.init_process_group(
        backend=default_backend(device),
        init_method=init_method or "env://",
        rank=rank,
        world_size=world_size,
        timeout=timeout,
    )
    return True


def destroy_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity for one process); returns ``tensor``."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def stop_signal_of_group(signum: Optional[int]) -> int:
    """The signal that stops the group: the largest signal number any rank received (0: none). Every rank must
    call it together; a rank that received none then reports the signal that stopped the others, so every rank
    ends with the same exit status (``128 + signal``)."""
    value = torch.tensor([int(signum or 0)], dtype=torch.int64)
    if is_distributed():
        if dist.get_backend() == "nccl":
            value = value.cuda()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


def reduce_dict_mean(values: Mapping[str, float], device: torch.device | str = "cpu") -> dict[str, float]:
    """Mean of each scalar over ranks (every rank must pass the same keys). Used for logging only."""
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    stacked = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    stacked /= get_world_size()
    return dict(zip(keys, stacked.tolist()))


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` for one process)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
