"""The training loop: a bare detectron2-style trainer with hook points. It knows no ``Config``.

Public API (``train(cfg)``, which builds the model and data from a ``Config`` and runs this loop, lives in
:mod:`relground.engine.defaults`)::

    trainer = Trainer(model, data_loader, solver_cfg, train_cfg, output_dir, seed=10)
    trainer.register_hooks([MyEvalHook()])  # subclasses of relground.engine.hooks.HookBase
    trainer.resume_or_load(resume=True)     # exact resume from <output_dir>/checkpoints, if any
    result = trainer.train()

Model protocol: ``model(batch, iteration=it)`` returns an object with ``total_loss`` (scalar Tensor) and
``losses`` (``dict[str, Tensor]`` of scalar, unweighted components, for logging); with ``train.compile`` it also
has ``compile_step()``, which makes later calls run through ``torch.compile``. A batch is anything the
data loader yields; it is moved with ``batch.to(device)`` when it has that method, and counted with
``batch.batch_size`` (else ``len(batch)``). With ``train.cuda_graph`` the whole step (forward, losses, backward,
optimizer step) is replayed from a CUDA graph per batch shape (:mod:`relground.engine.cuda_graph`; batches are
``GroundingBatch``), and the loss guard reads its losses after the step.

One iteration = one optimizer step over ``train.accumulation_steps`` micro-batches, so the effective batch
is per-process batch x world size x accumulation steps (``solver.ims_per_batch``). More processes give ReIR the
model of a larger batch; more micro-batches do not quite (batch statistics and loss means per micro-batch, see
docs/distributed.md). Everything that makes a
resumed run identical to an uninterrupted one lives in the checkpoint: model, optimizer, lr scheduler,
GradScaler, every rank's python/numpy/torch(/cuda) RNG state, the data position (sampler epoch + batches
consumed in it) and hook states.

Over 400 lines because the step (with its cross-rank loss guard) and the exact-resume state it must agree with
are kept in one file.
"""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from relground.config.solver import SolverConfig
from relground.config.train import TrainConfig
from relground.engine import distributed as du
from relground.engine.checkpoint import (
    FINAL_NAME, CheckpointError, Checkpointer, capture_rng_state, check_resumable, find_loadable_checkpoint,
    load_checkpoint, restore_rng_state, warn_broken_checkpoints,
)
from relground.engine.cuda_graph import CudaGraphStep
from relground.engine.hooks import HookBase, MetricsWriter, PeriodicCheckpointer, ProgressBar, SignalHandler
from relground.engine.solver import build_lr_scheduler, build_optimizer, ensure_momentum_buffers, per_process_batch_size
from relground.engine.stream import DataStream
from relground.utils.env import resolve_amp_dtype, resolve_device, seed_all


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def _batch_size(batch: Any) -> int:
    return int(batch.batch_size) if hasattr(batch, "batch_size") else len(batch)


class Trainer:
    """Iteration-based training: SGD + warm-up/multi-step lr, torch.amp, DDP, accumulation, hooks, exact resume.

    Args:
        model: follows the model protocol in the module docstring; moved to ``device`` (and wrapped in
            DistributedDataParallel when a process group is initialised).
        data_loader: yields this process's batches (e.g. a DataLoader over a
            :class:`~relground.data.samplers.ResumableDistributedSampler`).
        solver: optimizer and lr schedule (``max_iter`` = number of iterations).
        cfg: :class:`TrainConfig`.
        output_dir: run folder for checkpoints and logs; ``None`` trains in memory (no default hooks
            except the progress bar).
        device: overrides ``cfg.device``.
        seed: seed of python/numpy/torch for this run (rank r uses ``seed + r``, so dropout differs
            per rank); replaced by the checkpoint's RNG states on resume.
        checkpoint_extra: more entries stored in every checkpoint (e.g. ``config``, model build arguments).
        pad_batch: with ``train.cuda_graph``, how a batch is padded to its bucketed shapes (``defaults.train``
            passes ``pad_to_buckets`` at ``data.image_bucket``); None = :class:`CudaGraphStep`'s default.
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable,
        solver: SolverConfig,
        cfg: TrainConfig = TrainConfig(),
        output_dir: Optional[str | Path] = None,
        *,
        device: Optional[str | torch.device] = None,
        seed: Optional[int] = None,
        checkpoint_extra: Optional[dict[str, Any]] = None,
        pad_batch: Optional[Callable[[Any], Any]] = None,
    ) -> None:
        self.solver = solver
        self.cfg = cfg
        self.device = torch.device(device) if device is not None else resolve_device(cfg.device)
        self.amp_dtype = resolve_amp_dtype(cfg.amp, self.device)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.world_size = du.get_world_size()
        self.rank = du.get_rank()
        if seed is not None:
            seed_all(seed + self.rank)

        model.to(self.device)
        if cfg.compile:
            # the model compiles its own step (host-side preparation stays eager; its parameters keep their names)
            if not hasattr(model, "compile_step"):
                raise ValueError(f"train.compile needs a model with compile_step(); {type(model).__name__} has none")
            model.compile_step()
        self.optimizer = build_optimizer(solver, model)
        self.scheduler = build_lr_scheduler(solver, self.optimizer)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.graph_step: Optional[CudaGraphStep] = None
        if cfg.cuda_graph:  # before the DDP wrapper: CudaGraphStep refuses a process group (check_capturable)
            options = {} if pad_batch is None else {"pad": pad_batch}
            self.graph_step = CudaGraphStep(
                model, self.optimizer, amp_dtype=self.amp_dtype, clip_grad_norm=solver.clip_grad_norm, **options
            )
        if du.is_distributed():
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # broadcast_buffers=False: nothing to broadcast, the head BatchNorms' running statistics are computed
            # from the global batch on every process (relground.model.layers.masked_batch_norm)
            model = DistributedDataParallel(
                model,
                device_ids=device_ids,
                broadcast_buffers=False,
                find_unused_parameters=cfg.find_unused_parameters,
            )
        self.model = model
        self.data = DataStream(data_loader)
        self.checkpointer = (
            Checkpointer(self.output_dir / "checkpoints", keep_last=cfg.keep_checkpoints) if self.output_dir else None
        )

        self.max_iter = solver.max_iter
        self.start_iter = 0
        self.iteration = 0  # completed optimizer steps
        self.iter = 0  # index of the step being run (valid inside before_step/after_step)
        self.status: Literal["created", "running", "finished", "interrupted", "failed"] = "created"
        self.step_metrics: dict[str, float] = {}
        self.last_checkpoint: Optional[Path] = None
        self._final_iteration_to_keep: Optional[int] = None  # iteration of the finished run's final file being extended
        self._stop_signal: Optional[int] = None
        self._batch_size_checked = False
        self._hooks: list[HookBase] = []
        self.metrics: Optional[MetricsWriter] = None
        self.register_hooks(self.default_hooks())

    # ------------------------------------------------------------------ hooks
    def default_hooks(self) -> list[HookBase]:
        """Signal handling, periodic checkpoints, CSV/TensorBoard metrics and a progress bar."""
        if self.output_dir is None:
            return [ProgressBar(enabled=self.cfg.progress_bar)]
        self.metrics = MetricsWriter(self.output_dir, self.cfg.log_period, tensorboard=self.cfg.tensorboard)
        return [
            SignalHandler(),
            PeriodicCheckpointer(self.cfg.checkpoint_period),
            self.metrics,
            ProgressBar(self.metrics, enabled=self.cfg.progress_bar),
        ]

    def register_hooks(self, hooks: Sequence[HookBase]) -> None:
        """Append hooks; they run in registration order at each hook point."""
        for hook in hooks:
            hook.trainer = self
            self._hooks.append(hook)

    def request_stop(self, signum: int) -> None:
        """Stop after the current step and checkpoint (called by :class:`SignalHandler`)."""
        self._stop_signal = signum

    # ------------------------------------------------------------------ loop
    def train(self) -> dict[str, Any]:
        """Run iterations ``start_iter .. max_iter - 1`` and call the hooks.

        Returns:
            dict with ``status`` (``"finished"`` or ``"interrupted"``), ``iteration`` (completed steps),
            ``signal`` (the stopping signal number or None), ``checkpoint`` (path of the last checkpoint
            written, or None), ``output_dir`` and ``metrics`` (the last logged row).

        Raises:
            FloatingPointError: a loss became NaN/inf (no checkpoint is written after it).
        """
        self.status = "running"
        self.model.train()
        for hook in self._hooks:
            hook.before_train()
        try:
            for self.iter in range(self.start_iter, self.max_iter):
                for hook in self._hooks:
                    hook.before_step()
                stop = self.run_step()
                self.iteration = self.iter + 1
                for hook in self._hooks:
                    hook.after_step()
                if stop:
                    self.status = "interrupted"
                    break
            else:
                self.status = "finished"
        except BaseException:
            self.status = "failed"
            raise
        finally:
            for hook in self._hooks:
                hook.after_train()
        return {
            "status": self.status,
            "iteration": self.iteration,
            "signal": self._stop_signal,
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "output_dir": str(self.output_dir) if self.output_dir else None,
            "metrics": dict(self.metrics.latest) if self.metrics else {},
        }

    def run_step(self) -> bool:
        """One optimizer step over ``accumulation_steps`` micro-batches.

        Returns:
            True when a stop was requested (on any rank) and training should end after this step.

        Raises:
            FloatingPointError: naming the non-finite loss and the iteration.
        """
        if self.graph_step is not None:
            return self._run_graph_step()
        accumulation = self.cfg.accumulation_steps
        start = time.perf_counter()
        data_time = 0.0
        images = 0
        scalars: list[dict[str, torch.Tensor]] = []  # per micro-batch: total_loss and components, detached
        self.optimizer.zero_grad(set_to_none=True)
        for micro in range(accumulation):
            tick = time.perf_counter()
            batch = next(self.data)
            data_time += time.perf_counter() - tick
            if hasattr(batch, "to"):
                batch = batch.to(self.device, non_blocking=True)
            images += self._check_batch_size(_batch_size(batch))
            # gradients are all-reduced only on the last micro-batch of the step
            last = micro == accumulation - 1
            sync = self.model.no_sync() if isinstance(self.model, DistributedDataParallel) and not last else nullcontext()
            with sync:
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    output = self.model(batch, iteration=self.iter)
                losses = {"total_loss": output.total_loss, **output.losses}
                scalars.append({n: v.detach().reshape(()).double() for n, v in losses.items()})
                # a non-finite loss is caught below, before the optimizer step (its gradients are never applied)
                self.scaler.scale(output.total_loss / accumulation).backward()
        # every loss any micro-batch reported (a term may be absent from one, e.g. no relation in it: 0 there)
        names = [n for n in dict.fromkeys(n for step in scalars for n in step) if n != "total_loss"]
        zero = scalars[-1]["total_loss"].new_zeros(())
        values = torch.stack([torch.stack([s.get(n, zero) for n in ["total_loss", *names]]) for s in scalars])
        stop, totals = self._guard(values, names)  # the step's one host sync (and all-reduce)

        lr = self.optimizer.param_groups[0]["lr"]  # the lr this step uses
        if self.solver.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(unwrap(self.model).parameters(), self.solver.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self._record_metrics(totals, names, lr, images, start, data_time)
        return stop

    def _run_graph_step(self) -> bool:
        """:meth:`run_step` under ``train.cuda_graph``: one batch, the whole step replayed from its captured graph;
        its losses are read once, after the step (the guard then cannot keep the update out of the weights)."""
        start = time.perf_counter()
        batch = next(self.data)
        data_time = time.perf_counter() - start
        images = self._check_batch_size(_batch_size(batch))
        lr = self.optimizer.param_groups[0]["lr"]  # the lr this step uses
        values, names = self.graph_step(batch, self.iter)  # moves the batch; [1 + T] on the device, from the replay
        stop, totals = self._guard(values[None], names, stepped=True)  # the step's one host sync
        self.scheduler.step()
        self._record_metrics(totals, names, lr, images, start, data_time)
        return stop

    def _record_metrics(
        self, totals: list[float], names: list[str], lr: float, images: int, start: float, data_time: float
    ) -> None:
        self.step_metrics = {
            "total_loss": totals[0],
            **{f"loss/{n}": v for n, v in zip(names, totals[1:])},
            "lr": lr,
            "images": float(images * self.world_size),
            "time": time.perf_counter() - start,
            "data_time": data_time,
        }

    def _guard(self, values: torch.Tensor, names: list[str], stepped: bool = False) -> tuple[bool, list[float]]:
        """NaN/inf (and ``max_loss``) guard on a step's losses, agreed over ranks together with the stop flag.

        Args:
            values (Tensor[A, 1 + T]): each micro-batch's ``[total_loss, *components]`` (float64, on the device).
            names: the T component names.
            stepped: the optimizer step has run already (a replayed CUDA graph), which the error message says.

        Returns:
            ``(stop, totals)``: True when a stop was requested on any rank; the step's ``[total, *components]``
            averaged over micro-batches (this rank's, for logging).

        Raises:
            FloatingPointError: naming the non-finite (or too large) loss and the iteration.
        """
        # One small all-reduce and one host sync a step: the flags travel with the values logging reads.
        limit = self.cfg.max_loss
        bad = ~torch.isfinite(values)
        if limit is not None:
            bad |= values.abs() > limit
        bad_here = bad.any(0).double()  # [1 + T]: per loss, on this rank
        flags = torch.cat((bad_here, bad_here.new_tensor([float(self._stop_signal is not None)])))
        if du.is_distributed():
            flags = du.all_reduce_sum(flags)  # [1 + T + 1]: per loss on any rank, then the stop flag
        accumulation = values.shape[0]
        host = torch.cat((flags, bad_here, values.sum(0) / accumulation, values.flatten())).tolist()
        width = values.shape[1]
        flags, bad_here = host[: width + 1], host[width + 1 : 2 * width + 1]
        totals, local = host[2 * width + 1 : 3 * width + 1], host[3 * width + 1 :]
        if any(f > 0 for f in flags[:width]):
            # name a component before the total: it says where the NaN came from
            order = list(range(1, width)) + [0]
            labels = ["total_loss"] + names
            column = next((c for c in order if bad_here[c] > 0), None)
            if column is None:
                where = "a loss is NaN/inf or above train.max_loss on another rank"
            else:
                value = next(
                    v for v in local[column::width] if not math.isfinite(v) or (limit is not None and abs(v) > limit)
                )
                if math.isfinite(value):
                    where = f"loss '{labels[column]}' is {value:.3g}, above train.max_loss={limit:g}"
                else:
                    where = f"loss '{labels[column]}' is {value}"
            good = self.checkpointer.latest() if self.checkpointer else None
            when = (
                "training stopped after the captured step had updated the weights in memory (train.cuda_graph)"
                if stepped
                else "training stopped before the optimizer step"
            )
            raise FloatingPointError(
                f"{where} at iteration {self.iter}; {when}. "
                + (f"The last good checkpoint is {good} (nothing newer was written)." if good else "No checkpoint was written.")
            )
        stop = flags[width] > 0
        if stop and du.is_distributed():  # every rank sees the same flag, so all take part; one not signalled
            self._stop_signal = du.stop_signal_of_group(self._stop_signal)  # reports the signal that stopped the group
        return stop, totals

    def _check_batch_size(self, size: int) -> int:
        """The first batch must hold ``solver.ims_per_batch / (world size x accumulation steps)`` items (when set)."""
        if not self._batch_size_checked:
            self._batch_size_checked = True
            expected = per_process_batch_size(self.solver, self.world_size, self.cfg.accumulation_steps)
            if expected is not None and size != expected:
                raise ValueError(
                    f"solver.ims_per_batch={self.solver.ims_per_batch} needs {expected} items per process batch "
                    f"(world size {self.world_size} x train.accumulation_steps {self.cfg.accumulation_steps}), "
                    f"but the data loader yields {size}"
                )
        return size

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Optional[dict[str, Any]]:
        """Everything needed to resume exactly. Collective (gathers every rank's RNG state); None off rank 0."""
        rng = du.all_gather_object(capture_rng_state())
        if not du.is_main_process():
            return None
        return {
            **self.checkpoint_extra,
            "iteration": self.iteration,
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "data": self.data.state_dict(),
            "hooks": {f"{i}:{type(h).__name__}": h.state_dict() for i, h in enumerate(self._hooks)},
            "rng": rng,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (on every rank)."""
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        ensure_momentum_buffers(self.optimizer)  # a checkpoint may predate a parameter's first gradient
        if self.graph_step is not None:
            self.graph_step.reset()  # the graphs were captured on the momentum buffers just replaced
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.data.load_state_dict(state["data"])
        for i, hook in enumerate(self._hooks):
            hook_state = state.get("hooks", {}).get(f"{i}:{type(hook).__name__}")
            if hook_state:
                hook.load_state_dict(hook_state)
        if state.get("world_size", 1) == self.world_size:
            restore_rng_state(state["rng"][self.rank])
        else:
            warnings.warn(
                f"checkpoint was written by {state.get('world_size')} processes, resuming with {self.world_size}: "
                "RNG states and data order are not restored exactly",
                RuntimeWarning,
            )
        self.start_iter = self.iteration = int(state["iteration"])

    def save_checkpoint(self, final: bool = False) -> Optional[Path]:
        """Write a checkpoint of the current state (collective; rank 0 writes). Returns its path on rank 0.
        A run extending a finished one keeps the former ``model_final.pth`` (``Checkpointer.save``'s ``keep_final_of``)."""
        if self.checkpointer is None:
            return None
        state = self.state_dict()
        if state is not None:
            self.last_checkpoint = self.checkpointer.save(state, self.iteration, final, keep_final_of=self._final_iteration_to_keep)
        self._final_iteration_to_keep = None
        du.barrier()  # no rank runs ahead while rank 0 writes (a later failure must not outrun the file)
        return self.last_checkpoint

    def save_best(self, best: dict[str, Any]) -> Optional[Path]:
        """Write ``model_best.pth`` (rank 0; the model and ``checkpoint_extra``, enough for evaluation and
        ``Grounder``, not to resume) with ``best`` (metric, value, iteration, split). No collective."""
        if self.checkpointer is None or not du.is_main_process():
            return None
        state = {**self.checkpoint_extra, "iteration": self.iteration, "model": unwrap(self.model).state_dict(),
                 "best": dict(best)}
        return self.checkpointer.save_best(state)

    def resume_or_load(self, resume: bool = True, weights: Optional[str | Path] = None) -> int:
        """Resume from the newest checkpoint in ``<output_dir>/checkpoints`` that loads (when ``resume``; newer
        unreadable ones are named in a warning and left on disk), else load ``weights``' model. Writes nothing.

        Returns:
            The iteration training will start from.

        Raises:
            CheckpointError: checkpoints exist but none loads, or the one found does not fit (named).
            ValueError: the run already finished at ``solver.max_iter``.
        """
        if resume and self.checkpointer is not None:
            path, state, broken = find_loadable_checkpoint(self.checkpointer)
            warn_broken_checkpoints(broken, path)
            return self.resume_from(path, state) if path is not None else self.start_iter
        if weights is not None:
            state = load_checkpoint(weights, map_location="cpu")
            try:
                unwrap(self.model).load_state_dict(state["model"])
            except RuntimeError as e:
                raise CheckpointError(weights, f"its weights do not fit this model: {str(e).splitlines()[0]}") from None
        return self.start_iter

    def resume_from(self, path: str | Path, state: dict[str, Any]) -> int:
        """Restore ``state`` (loaded from ``path``); a finished run is extended only when ``solver.max_iter`` is
        above its iteration (``check_resumable``). Raises ``CheckpointError`` naming ``path`` when it does not fit."""
        path = Path(path)
        iteration = check_resumable(path, state, self.max_iter)
        try:
            self.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as e:
            raise CheckpointError(path, f"cannot resume this run from it ({type(e).__name__}: {str(e).splitlines()[0]})") from None
        self.last_checkpoint = path
        self._final_iteration_to_keep = iteration if path.name == FINAL_NAME else None
        return self.start_iter
