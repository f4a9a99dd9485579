"""``relground benchmark --loader-only``: images per second one worker of each loader supplies at a config's shapes,
against the rate the training step needs (bench/RESULTS.md, "Feeding the GPU")."""
from __future__ import annotations

import time
from typing import Any, Optional

import torch

from relground.config import Config, apply_overrides
from relground.data.loader_choice import dali_version
from relground.engine.benchmark import _device_name, _endless, _pipeline
from relground.engine.defaults import build_train_loader
from relground.utils.env import intra_op_threads, resolve_device

TARGET_PAIRS_PER_S = 1800  # the paper's schedule (80k x 40 pairs) in 30 minutes


def run_loader_benchmark(cfg: Config, batches: int = 5, loaders: Optional[list[str]] = None) -> dict[str, Any]:
    """Images per second one worker of each loader supplies at ``cfg``'s shapes, against what the step needs.

    Each loader runs in this process (``data.num_workers=0``: one worker's work, the collate included) with one
    intra-op thread (DALI: one CPU thread) and decodes ``batches`` training batches after one untimed batch.
    The demand: ``TARGET_PAIRS_PER_S`` pairs/s need ``TARGET_PAIRS_PER_S x distinct images / pairs`` images/s
    (grouped captions: fewer). ``workers_needed`` = demand / one worker's supply.

    Returns:
        dict with ``loaders`` (per loader: ``images_per_s_per_worker``, ``ms_per_image``, ``pairs_per_s_per_worker``
        (wall clock), ``cpu_ms_per_image`` and ``images_per_cpu_s`` (this process's CPU time: one idle core),
        ``workers_needed`` (from the wall clock), ``workers_needed_idle_cores`` (from the CPU time), ``pipeline``), ``demand_images_per_s``, ``target_pairs_per_s``, ``device``.
    """
    device = resolve_device(cfg.train.device)
    names = loaders or ["pil", "torchvision"] + (["dali"] if dali_version() else [])
    rows: dict[str, Any] = {}
    images_per_pair = None
    for name in names:
        run_cfg = apply_overrides(cfg, [f"data.loader={name}", "data.num_workers=0"])
        with intra_op_threads(1):
            loader, _ = build_train_loader(run_cfg)
            stream = _endless(loader)
            next(stream)  # untimed: pipeline build, first decode
            images = pairs = 0
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(batches):
                batch = next(stream)
                images += len({m.get("image_id") for m in batch.meta})
                pairs += batch.batch_size
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
            cpu_seconds = time.process_time() - cpu_start  # this process's CPU time, all its threads
        images_per_pair = images / pairs
        rows[name] = {
            "images_per_s_per_worker": images / seconds,
            "ms_per_image": 1000 * seconds / images,
            "pairs_per_s_per_worker": pairs / seconds,
            # On a shared machine the wall time includes waiting for a core; CPU time is one idle core's cost.
            "cpu_ms_per_image": 1000 * cpu_seconds / images,
            "images_per_cpu_s": images / cpu_seconds,
            "pipeline": _pipeline(name, device),
        }
    demand = TARGET_PAIRS_PER_S * (images_per_pair or 1.0)
    for row in rows.values():
        row["workers_needed"] = demand / row["images_per_s_per_worker"]
        row["workers_needed_idle_cores"] = demand / row["images_per_cpu_s"]
    return {
        "loaders": rows,
        "target_pairs_per_s": TARGET_PAIRS_PER_S,
        "distinct_images_per_pair": images_per_pair,
        "demand_images_per_s": demand,
        "captions_per_image": cfg.data.captions_per_image,
        "aspect_grouping": cfg.data.aspect_grouping,
        "batches": batches,
        "device": _device_name(device),
    }
