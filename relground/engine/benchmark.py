"""Training-step benchmark: whole optimizer steps timed with the real loader, and with one batch already on the device.

What a step costs is split by explicit timers (synchronised on CUDA) into ``data`` (waiting for the loader),
``backbone`` (image maps and box pooling, the per-box layer4 of the faithful head included), ``heads`` (the rest of
the forward), ``losses``, ``backward`` and ``optimizer``. The model starts from random weights (timing needs
none). ``--synthetic-shapes`` writes a dataset in the Flickr30K layout at chosen shapes (default the paper's:
~600 x 1000 JPEGs, 50 proposals, 5 captions per image) into a temporary folder, so no dataset is needed::

    result = run_benchmark(cfg, steps=10, warmup=2)      # cfg: relground.config.Config
    result["pairs_per_s"], result["paper_schedule_hours"]

Both phases of the schedule are timed: before ``model.refine_start_iteration`` (7.5k: stage 2 on the coarse top-K)
and after (stage 2 re-pools the refined boxes: 90% of the paper's schedule); the top-level numbers are their
mean weighted by each phase's share of ``solver.max_iter`` (``schedule_phases`` holds each). The projections, from
the loader phase (what training sees): ``schedule_hours`` = ``solver.max_iter`` weighted steps, and
``paper_schedule_hours`` = the paper's 3.2M pairs (80,000 steps x 40) at the weighted pairs/s.
:func:`relground.engine.loader_benchmark.run_loader_benchmark` (``--loader-only``): one worker's images/s of each loader against the step's demand.
"""
from __future__ import annotations

import dataclasses
import functools
import resource
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from relground.config import Config, apply_overrides
from relground.data.synthetic.shapes import SyntheticShapes
from relground.data.collate import pad_to_buckets
from relground.engine.cuda_graph import CudaGraphStep
from relground.engine.defaults import build_model, build_train_loader, check_cuda_graph
from relground.engine.solver import build_lr_scheduler, build_optimizer
from relground.utils.env import intra_op_threads, resolve_amp_dtype, resolve_device, seed_all

PAPER_ITERATIONS = 80_000
PAPER_PAIRS_PER_STEP = 40
PHASES = ("data", "backbone", "heads", "losses", "backward", "optimizer")
def synthetic_shapes_config(cfg: Config, root: str | Path, shapes: SyntheticShapes) -> Config:
    """``cfg`` reading the dataset :func:`write_synthetic_shapes` wrote to ``root`` (images of one given size kept at
    their size; Flickr30K's mix resized as the config says)."""
    overrides = [
        "data.dataset=flickr30k",
        f"data.root={root}",
        "data.proposals={root}/proposals.h5",
        "data.relations={root}/relations_{split}.json" if cfg.model.loss.relation else "data.relations=",
        "data.images=",
    ]
    if shapes.proposals:
        overrides.append(f"data.max_proposals={shapes.proposals}")
    if shapes.height and shapes.width:  # one given size: kept as it is; the Flickr30K mix: the config's resize
        short, long = min(shapes.height, shapes.width), max(shapes.height, shapes.width)
        overrides += [f"data.min_size={short}", f"data.max_size={long}"]
    return apply_overrides(cfg, overrides)


class _StepTimer:
    """Accumulates wall time per phase; on CUDA each boundary synchronises so a phase owns its kernels."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = defaultdict(float)
        self.enabled = True

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.totals[name] += time.perf_counter() - start


def _wrap(obj: Any, method: str, timer: _StepTimer, phase: str, counter: Optional[list[int]] = None) -> None:
    """Time ``obj.method`` under ``phase`` (an instance attribute shadows the class method); nested calls count once."""
    original = getattr(obj, method)

    def timed(*args, **kwargs):
        if getattr(timer, "_inside", None) == phase:
            return original(*args, **kwargs)
        timer._inside = phase
        try:
            with timer.phase(phase):
                return original(*args, **kwargs)
        finally:
            timer._inside = None

    setattr(obj, method, timed)


def _instrument(model: nn.Module, timer: _StepTimer, images_seen: list[int]) -> None:
    backbone = model.backbone
    for method in ("shared_image_maps", "box_features", "box_grid_features", "box_features_with_grid"):
        _wrap(backbone, method, timer, "backbone")
    _wrap(model, "_losses", timer, "losses")
    maps_of = backbone._maps_of

    def counted(images):
        images_seen.append(images.shape[0])
        return maps_of(images)

    backbone._maps_of = counted


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _time_steps(
    step: Callable[[Any], None],
    next_batch: Callable[[], Any],
    steps: int,
    warmup: int,
    timer: _StepTimer,
    images_seen: list[int],
    pairs_seen: list[int],
) -> dict[str, Any]:
    for _ in range(warmup):
        step(next_batch())
    timer.totals.clear()
    images_seen.clear()
    pairs_seen.clear()
    timer.sync()
    start = time.perf_counter()
    for _ in range(steps):
        with timer.phase("data"):
            batch = next_batch()
        step(batch)
    timer.sync()
    elapsed = time.perf_counter() - start
    step_ms = 1000 * elapsed / steps
    # heads_ms is filled in by _split_heads: the forward is timed whole, the backbone and the losses inside it
    phases = {name: 1000 * timer.totals.get(name, 0.0) / steps for name in (*PHASES, "forward_total")}
    pairs = sum(pairs_seen) / steps
    return {
        "step_ms": step_ms,
        "pairs_per_step": pairs,
        "pairs_per_s": pairs / (elapsed / steps),
        "backbone_images_per_step": sum(images_seen) / steps,
        **{f"{name}_ms": value for name, value in phases.items()},
    }


def run_benchmark(
    cfg: Config,
    steps: int = 10,
    warmup: int = 2,
    compile: bool = False,
    device_batch: bool = True,
    share_maps: bool = True,
) -> dict[str, Any]:
    """Time ``steps`` optimizer steps (after ``warmup``) of the training configuration ``cfg``.

    Args:
        cfg: the experiment config (``data.*`` must point at a dataset; see :func:`write_synthetic_shapes`).
        steps, warmup: timed and untimed steps per phase.
        compile: run the model's training forward and losses through ``torch.compile(fullgraph=True)``
            (:meth:`ReIR.compile_step`; turns ``model.static_shapes`` on; the phase split is then not measured).
        device_batch: also time steps on one batch already on the device (no loader).
        share_maps: captions of one image share its backbone pass (False: one pass per pair, as before grouping
            existed; for comparisons).

    Returns:
        dict with the loader phase's ``pairs_per_s``, ``step_ms``, ``data_ms``, ``backbone_ms``, ``heads_ms``,
        ``losses_ms``, ``backward_ms``, ``optimizer_ms``, ``pairs_per_step``, ``backbone_images_per_step``,
        ``paper_schedule_hours``, ``peak_memory_mb`` (CUDA: peak allocated; CPU: peak RSS of the process), the
        device-batch phase under ``device_batch`` (same keys, or None), and ``device``, ``amp``, ``head``,
        ``compiled``, ``steps``, ``warmup``, ``captions_per_image``, ``fold_backbone_bn``, ``channels_last``,
        ``cuda_graph`` (``train.cuda_graph``: the steps replayed from CUDA graphs, phases not split) and
        ``cuda_graph_counts`` (captured, replayed and eager steps, warm-up included; None without graphs).
    """
    if compile and not cfg.model.static_shapes:  # the default step reads counts on the host: not compilable whole
        cfg = dataclasses.replace(cfg, model=cfg.model.replace(static_shapes=True))
    check_cuda_graph(cfg)
    device = resolve_device(cfg.train.device)
    amp_dtype = resolve_amp_dtype(cfg.train.amp, device)
    with intra_op_threads(cfg.train.threads if device.type == "cpu" else 0):
        seed_all(cfg.seed)
        loader, model_args = build_train_loader(cfg)
        model = build_model(cfg, model_args, word_vectors=False).to(device)  # random weights: timing needs none
        model.train()
        model.backbone.share_maps = share_maps
        optimizer = build_optimizer(cfg.solver, model)
        scheduler = build_lr_scheduler(cfg.solver, optimizer)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        timer = _StepTimer(device)
        images_seen: list[int] = []
        pairs_seen: list[int] = []
        distinct_seen: list[int] = []
        forward = model
        if compile:
            model.compile_step()
            timer.enabled = False  # timers inside a compiled graph would break it
        graphed = None
        if cfg.train.cuda_graph:
            pad = functools.partial(pad_to_buckets, image_bucket=cfg.data.image_bucket)
            graphed = CudaGraphStep(model, optimizer, amp_dtype=amp_dtype, clip_grad_norm=cfg.solver.clip_grad_norm,
                                    pad=pad)
            timer.enabled = False  # a replayed step has no phases to time
        elif not compile:
            _instrument(model, timer, images_seen)
        iteration = [0]

        def step(batch) -> None:
            pairs_seen.append(batch.batch_size)
            distinct_seen.append(len({m.get("image_id") for m in batch.meta}))
            if graphed is not None:  # forward, losses, backward and optimizer step in one replay
                values, _ = graphed(batch, iteration[0])
                values.tolist()  # one host read of the losses a step, as the trainer's guard
                scheduler.step()
                iteration[0] += 1
                return
            optimizer.zero_grad(set_to_none=True)
            with timer.phase("forward_total"):
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    out = forward(batch, iteration=iteration[0])
            # one host read of the losses a step, as the trainer's NaN guard
            torch.stack([v.detach().reshape(()).double() for v in (out.total_loss, *out.losses.values())]).tolist()
            with timer.phase("backward"):
                scaler.scale(out.total_loss).backward()
            with timer.phase("optimizer"):
                if cfg.solver.clip_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.solver.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
            iteration[0] += 1

        batches = _endless(loader)

        def next_loader_batch():
            return next(batches).to(device, non_blocking=True)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        whole = compile or graphed is not None  # the step is not split into timed phases
        # Both phases of the schedule: stage 2 re-pools the refined boxes from model.refine_start_iteration on.
        start = min(cfg.model.refine_start_iteration, cfg.solver.max_iter)
        weights = {"before_refine": start / cfg.solver.max_iter, "after_refine": 1 - start / cfg.solver.max_iter}
        schedule_phases, on_device_phases = {}, {}
        for phase, first_iteration in (("before_refine", 0), ("after_refine", cfg.model.refine_start_iteration)):
            iteration[0] = first_iteration
            distinct_seen.clear()
            row = _time_steps(step, next_loader_batch, steps, warmup, timer, images_seen, pairs_seen)
            _split_heads(row, whole)
            row.update(iterations=round(weights[phase] * cfg.solver.max_iter), first_iteration=first_iteration,
                       distinct_images_per_batch=sum(distinct_seen[-steps:]) / steps)
            schedule_phases[phase] = row
            if device_batch:
                fixed = next_loader_batch()
                on_device_phases[phase] = _time_steps(step, lambda: fixed, steps, warmup, timer, images_seen,
                                                      pairs_seen)
                _split_heads(on_device_phases[phase], whole)
        result = _weighted(schedule_phases, weights)
        on_device = _weighted(on_device_phases, weights) if device_batch else None
        if whole:
            result["backbone_images_per_step"] = None
            if on_device is not None:
                on_device["backbone_images_per_step"] = None
        result.update(
            schedule_phases=schedule_phases,
            distinct_images_per_batch=schedule_phases["after_refine"]["distinct_images_per_batch"],
            images_per_batch=result["pairs_per_step"] / cfg.data.captions_per_image,
            loader=getattr(loader, "loader_name", cfg.data.loader),
            pipeline=_pipeline(getattr(loader, "loader_name", cfg.data.loader), device),
            aspect_grouping=cfg.data.aspect_grouping,
            schedule_hours=cfg.solver.max_iter * result["step_ms"] / 3.6e6,
            max_iter=cfg.solver.max_iter,
            paper_schedule_hours=PAPER_ITERATIONS * PAPER_PAIRS_PER_STEP / result["pairs_per_s"] / 3600,
            peak_memory_mb=_peak_memory_mb(device),
            device=_device_name(device),
            amp=cfg.train.amp,
            head=cfg.model.box_head,
            backbone=cfg.model.backbone,
            compiled=bool(compile),
            steps=steps,
            warmup=warmup,
            captions_per_image=cfg.data.captions_per_image,
            share_maps=share_maps,
            fold_backbone_bn=cfg.model.fold_backbone_bn,
            static_shapes=cfg.model.static_shapes,
            channels_last=cfg.model.channels_last,
            cuda_graph=graphed is not None,
            cuda_graph_counts=dict(graphed.counts) if graphed is not None else None,
            cache_features=cfg.model.cache_features,
            num_workers=cfg.data.num_workers,
            threads=cfg.train.threads if device.type == "cpu" else None,
            device_batch=on_device,
        )
        return result


def _weighted(rows: dict[str, dict[str, Any]], weights: dict[str, float]) -> dict[str, Any]:
    """The schedule's mean step: each timed quantity (ms, pairs, images) weighted by its phase's share of the
    iterations; ``pairs_per_s`` = pairs per step / weighted step time (time per pair is what the schedule adds)."""
    out: dict[str, Any] = {}
    first = next(iter(rows.values()))
    for key, value in first.items():
        if key in ("iterations", "first_iteration", "pairs_per_s"):
            continue
        values = [rows[name][key] for name in rows]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and None not in values:
            out[key] = sum(weights[name] * rows[name][key] for name in rows)
        else:
            out[key] = value if len(set(map(str, values))) == 1 else None
    out["pairs_per_s"] = out["pairs_per_step"] / (out["step_ms"] / 1000)
    return out


def _pipeline(loader: str, device: torch.device) -> str:
    """What the chosen loader runs, in words (the JSON's ``pipeline``)."""
    gpu = device.type == "cuda"
    return {
        "dali": "DALI: nvJPEG (mixed) decode + GPU resize/normalise" if gpu else "DALI CPU operators: decode + resize",
        "torchvision": ("torchvision.io: JPEG bytes, nvJPEG decode + GPU resize in a prefetch thread" if gpu
                        else "torchvision.io decode + resize in the workers"),
        "pil": "PIL decode + torchvision resize in the workers" + (", side-stream copy" if gpu else ""),
    }.get(loader, loader) + " (each distinct image once)"


def _split_heads(result: dict[str, Any], compiled: bool) -> None:
    """``heads_ms`` = forward - backbone - losses (the forward was timed whole); None when compiled."""
    forward = result.pop("forward_total_ms", None)
    if compiled:
        for name in ("backbone", "heads", "losses", "backward", "optimizer"):
            result[f"{name}_ms"] = None
        return
    if forward is not None:
        result["heads_ms"] = max(0.0, forward - result["backbone_ms"] - result["losses_ms"])


def _endless(loader) -> Iterator[Any]:
    epoch = 0
    while True:
        sampler = getattr(getattr(loader, "batch_sampler", None), "sampler", None) or getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"
