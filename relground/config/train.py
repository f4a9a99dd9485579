"""``TrainConfig``: how a training run is executed (``train.*``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from relground.utils.env import parse_device


@dataclass(frozen=True)
class TrainConfig:
    """How to run training (``train.*`` in the YAML files).

    Attributes:
        device: ``"auto"`` (``cuda:<LOCAL_RANK>`` when CUDA is available, else ``cpu``), ``"cpu"`` or ``"cuda"``.
        amp: autocast precision: ``"auto"`` (bf16 on GPU, fp32 on CPU), ``"bf16"``, ``"fp16"`` (with a
            ``torch.amp.GradScaler``) or ``"fp32"``.
        accumulation_steps: micro-batches per optimizer step (>= 1).
        checkpoint_period: iterations between checkpoints (5000).
        keep_checkpoints: periodic checkpoints kept on disk (3); ``model_final.pth`` is always kept.
        log_period: iterations between CSV/TensorBoard rows and log lines (20). The lines (iteration, losses, lr,
            pairs/s, ETA, peak memory) go to ``<output_dir>/log.txt`` and, where stderr is not a terminal (a batch
            job), to stderr instead of a bar.
        eval_period: iterations between evaluations on ``data.val_split`` during training, also at the end; 0 (the
            default) = none. Metrics go to metrics.csv / TensorBoard (``val/*``) and the log; the best
            ``train.eval_metric`` so far is kept as ``checkpoints/model_best.pth`` with its value and iteration.
        eval_metric: the metric that picks ``model_best.pth`` (higher is better): ``accuracy`` (default),
            ``point_it``, ``stage1/accuracy``...
        progress_bar: show a tqdm bar on rank 0 (only where stderr is a terminal).
        tensorboard: write TensorBoard events next to ``metrics.csv``.
        find_unused_parameters: DistributedDataParallel flag; True because ReIR leaves heads unused on
            some batches (e.g. the relation classifier when a batch has no relation).
        threads: torch intra-op threads while training on the CPU; 0 = torch's default. The synthetic config
            sets 1: this model's small matrices gain nothing from more, and on a busy 2-core machine spinning
            OpenMP threads made steps ~10x slower (docs/results.md).
        max_loss: stop like the NaN guard when the total or any loss term exceeds this in magnitude; None (default)
            = only NaN/inf stop. A diverging run (a loss at 1e31 hundreds of steps before it turns inf) then ends
            at once, with the last good checkpoint named.
        data_order: ``"distributed"`` (default): the ``DistributedSampler``'s ``(seed, epoch)`` permutation at
            every world size (one process too, as detectron2's ``TrainingSampler``), so that runs with any number
            of processes and the same global batch train on the same global batches (docs/distributed.md);
            ``"auto"``: the opt-out, shuffled by a ``RandomSampler`` in one process (the order before 2026-12-07).
        compile: run the model's training forward and losses through ``torch.compile(fullgraph=True)`` (needs
            ``model.static_shapes``: the default step synchronises with the host and cannot be traced whole).
        cuda_graph: capture forward + losses + backward + optimizer step as one CUDA graph per batch shape and
            replay it (:mod:`relground.engine.cuda_graph`; docs/model.md, "Static-shape mode"). Needs a CUDA
            device, ``model.static_shapes``, ``data.shape_buckets`` (few shapes, so few captures), no feature cache
            (``model.cache_features: false``), one process, ``accumulation_steps`` 1 and no fp16 (its GradScaler
            reads the scale on the host). The losses are read once a step, after the step: the NaN/``max_loss``
            guard then stops training with the update already in the weights in memory (nothing is saved after
            it). Not yet run on a GPU. Default False.
    """

    device: str = "auto"
    amp: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    accumulation_steps: int = 1
    checkpoint_period: int = 5000
    keep_checkpoints: int = 3
    log_period: int = 20
    eval_period: int = 0
    eval_metric: str = "accuracy"
    progress_bar: bool = True
    tensorboard: bool = True
    find_unused_parameters: bool = True
    threads: int = 0
    max_loss: Optional[float] = None
    data_order: Literal["auto", "distributed"] = "distributed"
    compile: bool = False
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        if self.max_loss is not None and not self.max_loss > 0:
            raise ValueError(f"train.max_loss must be > 0 or null, got {self.max_loss}")
        if self.data_order not in ("auto", "distributed"):
            raise ValueError(f"train.data_order must be 'auto' or 'distributed', got {self.data_order!r}")
        if self.eval_period < 0:
            raise ValueError(f"train.eval_period must be >= 0 (0 = no evaluation during training), got {self.eval_period}")
        if self.threads < 0:
            raise ValueError(f"train.threads must be >= 0 (0 = torch's default), got {self.threads}")
        for name in ("accumulation_steps", "checkpoint_period", "keep_checkpoints", "log_period"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        parse_device(self.device, "train.device", allow_auto=True)  # before torch.device below reads it
        if self.cuda_graph:
            if self.device != "auto" and torch.device(self.device).type != "cuda":
                raise ValueError(f"train.cuda_graph needs a CUDA device, got train.device={self.device!r}")
            if self.accumulation_steps != 1:
                raise ValueError(
                    "train.cuda_graph captures whole optimizer steps: train.accumulation_steps must be 1, "
                    f"got {self.accumulation_steps}"
                )
            if self.amp == "fp16":
                raise ValueError(
                    "train.cuda_graph cannot run train.amp=fp16 (the GradScaler reads its scale on the host); "
                    "use bf16 or fp32"
                )
