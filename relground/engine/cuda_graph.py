"""Whole training steps as CUDA graphs (``train.cuda_graph``): forward, losses, backward and the optimizer step
captured once per batch shape, then replayed.

PyTorch's "whole-network capture" pattern (CUDA semantics, "CUDA Graphs")::

    step = CudaGraphStep(model, optimizer, amp_dtype=torch.bfloat16)   # model: model.static_shapes, on CUDA
    values, names = step(batch, iteration)   # Tensor[1 + T] float64 on the device: total_loss, then each term
    scheduler.step()

1. The batch is padded to its bucket (:func:`relground.data.collate.pad_to_buckets`, idempotent when the loader
   did it with ``data.shape_buckets``) and keyed by its tensors' shapes, dtypes and devices and by the model's
   phase (:func:`schedule_phase`: the model's ``step_phase(iteration)``, e.g. ReIR's before and after
   ``refine_start_iteration``; a captured step replays the branches it was captured with).
2. A new key: the batch is copied into new static input buffers; warm-up steps run on a side stream (lazy
   initialisations: cuBLAS/cuDNN workspaces, autograd state), after which the parameters, buffers, momentum and RNG
   states are put back as they were (the warm-up trains nothing); ``optimizer.zero_grad(set_to_none=True)``, so
   that backward allocates the gradients from the graphs' memory pool; the step is captured with
   ``torch.cuda.graph`` on that same side stream (as ``torch.cuda.make_graphed_callables`` does: the workspaces
   the warm-up made are the capture's; ``capture_error_mode="thread_local"``: the loader's pin-memory thread may
   allocate pinned memory meanwhile). A capture runs nothing: the step is then replayed.
3. A known key: the batch is copied into its buffers and the graph replayed.
4. A step of another phase than the previous step's drops the graphs of every other phase with their static
   inputs (the iteration only grows, so they would never replay again; :meth:`CudaGraphStep.reset` after a resume).

The optimizer must be torch's fused SGD (what :func:`relground.engine.solver.build_optimizer` picks on CUDA): its
kernel reads the lr from a float32 device tensor when given one (``torch._fused_sgd_``'s tensor-lr overload),
whereas the foreach path turns a tensor lr into a host scalar. During warm-up and capture each param group's
``lr`` is such a tensor; otherwise it stays the float the lr scheduler writes (checkpoints and schedules as
without graphs), and is written into the tensor (``fill_``, no host sync) before every replay. Every momentum
buffer exists before capture (:func:`ensure_momentum_buffers`), so the captured step is not a "first step".
Autocast runs with ``cache_enabled=False`` (its cast cache may not outlive a capture). The losses are written
into one static float64 device tensor ``[1 + T]`` per graph that the caller reads before the next step (a later
replay of any graph may overwrite it, see below).

Memory: all graphs share one private pool (``torch.cuda.graph_pool_handle()``), so the pool holds about one step's
peak rather than one per captured shape. PyTorch documents sharing as safe for graphs replayed in their capture
order and never concurrently; ours replay in data order, which is safe for the reason behind that rule: no graph
reads memory another graph wrote. Replays never overlap (one thread, one after the other on the current stream);
each replay reads only tensors allocated outside the pool (parameters, buffers, momentum, the lr tensors, its
static inputs, cloned before capture) and writes every intermediate before reading it; the pool tensors that
outlive a replay are its loss values (read by the caller before the next step) and the gradients (read by nothing
outside the graph; set to None before every capture and eager step). :data:`MAX_GRAPHS` caps the live graphs (each
costs a capture and its loss tensor); a batch with a new shape beyond them runs eagerly (same arithmetic, with a
warning once). :attr:`CudaGraphStep.counts` says how many steps were captured, replayed and run eagerly. After the
optimizer's state is replaced (``load_state_dict``: new momentum tensors), :meth:`CudaGraphStep.reset` drops the
graphs.

Limits: a :class:`~relground.structures.batch.GroundingBatch`, one process (no DDP), one micro-batch per step,
no fp16 GradScaler, no host store inside the step (``model.cache_features``), and a model whose training step
reads no device value on the host and copies nothing from the host (``model.static_shapes``, a frozen backbone).
A capture that runs out of memory raises ``torch.OutOfMemoryError`` unchanged. Not yet run on a GPU: written
against the PyTorch documentation and source, tested on CPU only where no capture is involved.
"""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from relground.data.collate import pad_to_buckets
from relground.engine import distributed as du
from relground.engine.solver import ensure_momentum_buffers
from relground.model.stages import with_image_codes
from relground.structures.batch import GroundingBatch

WARMUP_STEPS = 3  # the documented example's warm-up before a capture
MAX_GRAPHS = 16  # live graphs (shapes of the current phase); a new shape beyond them runs eagerly


def schedule_phase(model: nn.Module, iteration: int) -> Hashable:
    """The branches of ``model``'s training step that depend on the iteration number (part of a graph's key: a
    captured step replays the branches it was captured with): ``model.step_phase(iteration)`` when the model has
    that method (:meth:`relground.model.ReIR.step_phase`), else 0 (one phase)."""
    step_phase = getattr(model, "step_phase", None)
    return 0 if step_phase is None else step_phase(iteration)


def graph_key(batch: GroundingBatch, phase: Hashable = ()) -> tuple:
    """What a captured step is specialised on: each tensor field's shape, dtype and device (None fields as None),
    and ``phase``. Two batches with the same key replay the same graph."""
    fields = []
    for f in dataclasses.fields(batch):
        value = getattr(batch, f.name)
        if isinstance(value, Tensor):
            fields.append((f.name, tuple(value.shape), value.dtype, value.device))
        elif value is None:
            fields.append((f.name, None))
    return tuple(fields), phase


def check_capturable(model: nn.Module, optimizer: Optimizer) -> None:
    """Raise ``ValueError`` naming the setting when ``model`` and ``optimizer`` cannot be captured as one step."""
    if du.is_distributed():  # checked before the model is wrapped: the process group is what tells
        raise ValueError("train.cuda_graph runs in one process (DistributedDataParallel's all-reduce is not captured)")
    if not getattr(model, "static_shapes", False):
        raise ValueError(
            "train.cuda_graph needs model.static_shapes: true (the default step reads data-dependent counts on the "
            "host, which a captured graph cannot do)"
        )
    if getattr(getattr(model, "backbone", None), "cache", None) is not None:
        raise ValueError("train.cuda_graph needs model.cache_features: false (the feature cache is a host store)")
    if not all(group.get("fused") for group in optimizer.param_groups):
        raise ValueError(
            "train.cuda_graph needs torch's fused SGD (build_optimizer picks it for CUDA parameters): the foreach "
            "step reads a tensor lr on the host"
        )
    devices = {p.device.type for p in model.parameters()}
    if devices != {"cuda"} or not torch.cuda.is_available():
        raise ValueError(f"train.cuda_graph needs a CUDA device; the model's parameters are on {sorted(devices)}")


@dataclasses.dataclass
class _Captured:
    graph: Any  # torch.cuda.CUDAGraph
    inputs: GroundingBatch  # the static input buffers each step copies its batch into
    values: Tensor  # [1 + T] float64, written by each replay
    names: list[str]  # the T loss terms


class CudaGraphStep:
    """One training step (forward, losses, backward, optional gradient clipping, optimizer step) replayed from a
    CUDA graph captured per batch shape and phase (module docstring).

    Args:
        model: in training mode, on CUDA, with ``static_shapes`` (:func:`check_capturable`); called as
            ``model(batch, iteration=it)`` and returning ``total_loss`` and ``losses``.
        optimizer: torch's fused SGD over the model's trainable parameters (with its momentum buffers).
        amp_dtype: autocast dtype (bf16), None for fp32.
        clip_grad_norm: clip the gradients' global L2 norm to this inside the step; None = no clipping.
        pad: pads a batch to its bucketed shapes. Default :func:`pad_to_buckets` (128-pixel image buckets).
        phase: ``(model, iteration) -> hashable``, the iteration-dependent branches. Default :func:`schedule_phase`.
        warmup_steps: warm-up steps before each capture (undone). Default 3.
        max_graphs: live graphs kept (the current phase's shapes; all share one memory pool). Default 16.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        *,
        amp_dtype: Optional[torch.dtype] = None,
        clip_grad_norm: Optional[float] = None,
        pad: Callable[[GroundingBatch], GroundingBatch] = pad_to_buckets,
        phase: Callable[[nn.Module, int], Hashable] = schedule_phase,
        warmup_steps: int = WARMUP_STEPS,
        max_graphs: int = MAX_GRAPHS,
    ) -> None:
        check_capturable(model, optimizer)
        self.model, self.optimizer = model, optimizer
        self.amp_dtype, self.clip_grad_norm = amp_dtype, clip_grad_norm
        self.pad, self.phase = pad, phase
        self.warmup_steps, self.max_graphs = warmup_steps, max_graphs
        self.device = next(model.parameters()).device
        self.parameters = [p for group in optimizer.param_groups for p in group["params"]]
        # the lr of each param group as the fused kernel reads it during a replay (float32, on the device)
        self.lr = [torch.zeros((), dtype=torch.float32, device=self.device) for _ in optimizer.param_groups]
        self.graphs: dict[tuple, _Captured] = {}
        self.counts = {"captured": 0, "replayed": 0, "eager": 0}
        self.stream: Optional[torch.cuda.Stream] = None  # warm-ups and captures, made at the first capture
        self.pool: Optional[Any] = None  # the graphs' shared memory pool handle, made at a capture when None
        self.current_phase: Optional[Hashable] = None  # the previous step's phase

    def __call__(self, batch: GroundingBatch, iteration: int) -> tuple[Tensor, list[str]]:
        """Run one training step on ``batch`` (replayed, captured first for a new shape, or eager beyond
        ``max_graphs``).

        Returns:
            ``(values, names)``: values (Tensor[1 + T] float64, on the device): ``total_loss`` then the T terms
            ``names``; read it before the next step (a later replay may overwrite it).
        """
        batch = self.pad(with_image_codes(batch.to(self.device, non_blocking=True)))
        batch = dataclasses.replace(batch, meta=[])  # nothing in a static step reads strings
        phase = self.phase(self.model, iteration)
        if phase != self.current_phase:  # the other phases' graphs will not replay again: free them
            self._drop(keep=lambda key: key[1] == phase)
            self.current_phase = phase
        key = graph_key(batch, phase)
        entry = self.graphs.get(key)
        if entry is None and len(self.graphs) >= self.max_graphs:
            if self.counts["eager"] == 0:
                warnings.warn(
                    f"train.cuda_graph: {self.max_graphs} batch shapes of this phase captured already; steps with a "
                    "new shape run eagerly (data.shape_buckets keeps the shapes few)",
                    RuntimeWarning,
                )
            self.counts["eager"] += 1
            self.optimizer.zero_grad(set_to_none=True)
            return self._step(batch, iteration)
        if entry is None:
            entry = self._capture(batch, iteration, key)
        else:
            for name, buffer in _tensor_fields(entry.inputs):
                buffer.copy_(getattr(batch, name), non_blocking=True)
        self._write_lr()
        entry.graph.replay()
        self.counts["replayed"] += 1
        return entry.values, entry.names

    def reset(self) -> None:
        """Drop every captured graph (after the optimizer's or the model's tensors were replaced)."""
        self._drop()
        self.current_phase = None

    def _drop(self, keep: Callable[[tuple], bool] = lambda key: False) -> None:
        """Drop the graphs whose key ``keep`` refuses, with their static inputs and loss tensors. ``reset()``
        gives up a graph's share of the pool now rather than at garbage collection. With no graph left the next
        capture takes a new pool: the allocator shares a pool only while a live graph holds it (an internal assert
        otherwise), and the old one is freed once its last tensors are (the gradients, at the next
        ``zero_grad``)."""
        for key in [key for key in self.graphs if not keep(key)]:
            self.graphs.pop(key).graph.reset()
        if not self.graphs:
            self.pool = None

    def _step(self, batch: GroundingBatch, iteration: int) -> tuple[Tensor, list[str]]:
        """The step itself, as captured: forward + losses under autocast, backward, clipping, optimizer step."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None,
                            cache_enabled=False):
            output = self.model(batch, iteration=iteration)
        losses = {"total_loss": output.total_loss, **output.losses}
        values = torch.stack([v.detach().reshape(()).double() for v in losses.values()])  # [1 + T]
        output.total_loss.backward()
        if self.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.parameters, self.clip_grad_norm)
        self.optimizer.step()
        return values, list(losses)[1:]

    def _capture(self, batch: GroundingBatch, iteration: int, key: tuple) -> _Captured:
        inputs = dataclasses.replace(batch, **{name: t.clone() for name, t in _tensor_fields(batch)})
        ensure_momentum_buffers(self.optimizer)
        self._write_lr()
        saved = self._state()
        if self.stream is None:  # every warm-up and capture on one stream (captures sharing a pool need the same)
            self.stream = torch.cuda.Stream(self.device)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        side = self.stream
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), self._tensor_lr():
            for _ in range(self.warmup_steps):
                self.optimizer.zero_grad(set_to_none=True)
                self._step(inputs, iteration)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._restore(saved)
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates the gradients from the graphs' pool
        graph = torch.cuda.CUDAGraph()
        try:
            with self._tensor_lr(), torch.cuda.graph(
                graph, pool=self.pool, stream=side, capture_error_mode="thread_local"
            ):
                values, names = self._step(inputs, iteration)
        except RuntimeError as e:
            if not self.graphs:
                self.pool = None  # the failed graph was the pool's only holder (see _drop)
            if isinstance(e, torch.OutOfMemoryError):
                raise  # a RuntimeError too, but no host synchronisation: unchanged
            raise RuntimeError(
                "train.cuda_graph: capturing the training step failed; the step must neither read a device value on "
                "the host nor copy from host memory (e.g. torch.tensor(..., device='cuda')) inside it: "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from e
        entry = self.graphs[key] = _Captured(graph, inputs, values, names)
        self.counts["captured"] += 1
        return entry

    def _write_lr(self) -> None:
        for lr, group in zip(self.lr, self.optimizer.param_groups):
            if not isinstance(group["lr"], Tensor):
                lr.fill_(group["lr"])

    @contextmanager
    def _tensor_lr(self) -> Iterator[None]:
        """Each param group's ``lr`` is its device tensor inside (the fused step then reads it on the device)."""
        floats = [group["lr"] for group in self.optimizer.param_groups]
        try:
            for lr, group in zip(self.lr, self.optimizer.param_groups):
                group["lr"] = lr
            yield
        finally:
            for value, group in zip(floats, self.optimizer.param_groups):
                group["lr"] = value

    def _tensors(self) -> list[Tensor]:
        """Everything a warm-up step changes in place: trainable parameters, buffers, momentum buffers."""
        states = self.optimizer.state.values()
        momentum = [s["momentum_buffer"] for s in states if s.get("momentum_buffer") is not None]
        return [p for p in self.model.parameters() if p.requires_grad] + list(self.model.buffers()) + momentum

    def _state(self) -> tuple[list[Tensor], Tensor, Tensor]:
        with torch.no_grad():
            tensors = [t.detach().clone() for t in self._tensors()]
        return tensors, torch.get_rng_state(), torch.cuda.get_rng_state(self.device)

    def _restore(self, state: tuple[list[Tensor], Tensor, Tensor]) -> None:
        """Put back what the warm-up changed, in place (the graph is captured on these very tensors)."""
        tensors, cpu_rng, cuda_rng = state
        with torch.no_grad():
            for target, saved in zip(self._tensors(), tensors):
                target.copy_(saved)
        torch.set_rng_state(cpu_rng)
        torch.cuda.set_rng_state(cuda_rng, self.device)


def _tensor_fields(batch: GroundingBatch) -> list[tuple[str, Tensor]]:
    fields = ((f.name, getattr(batch, f.name)) for f in dataclasses.fields(batch))
    return [(name, value) for name, value in fields if isinstance(value, Tensor)]
