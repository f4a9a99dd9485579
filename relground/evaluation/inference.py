"""Running a model over a loader: its predicted boxes per stage, and their metrics (``evaluate_model``)."""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor
from tqdm import tqdm

from relground.evaluation.evaluator import (
    STAGES,
    PhraseKey,
    evaluation_phrases,
    grounding_metrics,
    phrase_key,
    proposal_upper_bound,
)
from relground.structures.records import ImageAnnotation
from relground.utils.logs import get_logger, interactive

LOG_LINES = 10  # progress lines per evaluation where no bar shows (a batch job)


@dataclass
class ModelPredictions:
    """Boxes a model predicted over a loader, in original pixels, per stage variant."""

    boxes: dict[str, dict[PhraseKey, list[float]]]  # stage ("fused", "stage1", "stage2") -> key -> box
    proposals: dict[str, Tensor]  # image_id -> Tensor[M, 4], the valid proposals the model saw
    pairs: int = 0  # (image, caption) pairs run
    seconds: float = 0.0  # wall time of the loop, loading included

    def throughput(self) -> dict[str, float]:
        """``{"pairs", "images", "seconds", "pairs_per_s", "images_per_s"}`` of the run."""
        seconds = max(self.seconds, 1e-9)
        images = len(self.proposals)
        return {"pairs": self.pairs, "images": images, "seconds": round(self.seconds, 3),
                "pairs_per_s": self.pairs / seconds, "images_per_s": images / seconds}


def _phrase_keys(meta: Mapping[str, Any]) -> list[PhraseKey]:
    """Keys of one batch item's phrase slots, from ``GroundingBatch.meta`` (``first_word_index`` per phrase)."""
    first_words = meta["first_word_index"]
    if isinstance(first_words, int):
        first_words = [first_words]
    return [phrase_key(meta["image_id"], meta["sentence_index"], w) for w in first_words]


@torch.inference_mode()
def predict(
    model: torch.nn.Module, loader: Iterable, *, progress: bool = False, amp_dtype: Optional[torch.dtype] = None
) -> ModelPredictions:
    """Run ``model`` over ``loader`` and collect the fused, stage-1 and stage-2 boxes in original pixels.

    Args:
        model: a ``relground.model.ReIR`` (set to eval mode here), on the device the batches are moved to.
        loader: yields ``GroundingBatch``; ``meta[b]`` carries ``image_id``, ``sentence_index`` and the
            ``first_word_index`` list of its phrase slots.
        progress: a tqdm bar where stderr is a terminal, else ``LOG_LINES`` log lines (batch jobs).
        amp_dtype: autocast dtype (e.g. ``torch.bfloat16`` on a GPU); None = the model's own precision.
    """
    was_training = model.training  # restored at the end, so a periodic evaluation hook can call this mid-training
    model.eval()
    device = next(model.parameters()).device
    stage_fields = {"fused": "boxes", "stage1": "boxes_stage1", "stage2": "boxes_stage2"}
    boxes: dict[str, dict[PhraseKey, list[float]]] = {stage: {} for stage in STAGES}
    proposals: dict[str, Tensor] = {}
    start = time.perf_counter()
    try:
        pairs = _collect(model, loader, device, stage_fields, boxes, proposals, progress, amp_dtype)
    finally:
        model.train(was_training)
    return ModelPredictions(boxes, proposals, pairs, time.perf_counter() - start)


def _progress(loader: Iterable, enabled: bool) -> Iterator:
    """``loader`` with a tqdm bar (a terminal) or a log line every ~1/``LOG_LINES`` of it (no terminal)."""
    if not enabled:
        yield from loader
        return
    if interactive():
        yield from tqdm(loader, desc="evaluate")
        return
    total = len(loader) if hasattr(loader, "__len__") else None
    every = max(1, -(-total // LOG_LINES)) if total else 50
    start = time.perf_counter()
    done = 0
    for batch in loader:
        yield batch
        done += 1
        if done % every == 0 or done == total:
            rate = done / max(time.perf_counter() - start, 1e-9)
            get_logger().info(f"evaluate: batch {done}/{total or '?'}  {rate:.2f} batches/s")


def _collect(model, loader, device, stage_fields, boxes, proposals, progress: bool, amp_dtype) -> int:
    """The loop of :func:`predict`: fills ``boxes`` and ``proposals`` in place; returns the pairs run."""
    pairs = 0
    for batch in _progress(loader, progress):
        pairs += len(batch.meta)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            output = model(batch.to(device), None)  # iteration None = evaluation: refined boxes, no schedules
        scales = batch.scales.double().cpu()[:, None, None]  # [B, 1, 1]
        per_stage = {  # stage -> [B, P, 4] original pixels; single-stage models have no boxes_stage2
            s: getattr(output, f).double().cpu() / scales
            for s, f in stage_fields.items()
            if getattr(output, f, None) is not None
        }
        valid = batch.phrase_valid.cpu()  # [B, P]
        for b, meta in enumerate(batch.meta):
            for p, key in enumerate(_phrase_keys(meta)):
                if not valid[b, p]:
                    continue
                for stage, stage_boxes in per_stage.items():
                    boxes[stage][key] = stage_boxes[b, p].tolist()
            keep = batch.proposal_valid[b].cpu()  # [M]
            proposals[str(meta["image_id"])] = batch.proposals[b].cpu().double()[keep] / float(batch.scales[b])
    return pairs


def evaluate_model(
    model: torch.nn.Module,
    loader: Iterable,
    *,
    annotations: Optional[Sequence[ImageAnnotation]] = None,
    twins: Optional[Mapping[PhraseKey, bool]] = None,
    progress: bool = False,
    return_predictions: bool = False,
    amp_dtype: Optional[torch.dtype] = None,
):
    """Evaluate a model over a loader: fused metrics at the top level, ``stage1`` / ``stage2`` variants nested.

    Args:
        model: a ``relground.model.ReIR``.
        loader: a loader of ``GroundingBatch`` (e.g. ``relground.data.dataset.build_dataloader``).
        annotations: the split's images; default ``loader.dataset.images`` (a ``GroundingDataset``).
        twins: optional identical-twin flags (``load_twins``); adds ``twin`` / ``no_twin`` groups.
        progress: a tqdm bar (terminal) or log lines (batch job).
        return_predictions: also return the ``ModelPredictions`` (with the run's throughput).
        amp_dtype: autocast dtype (``torch.bfloat16`` on a GPU); None = full precision.

    Returns:
        ``metrics``, or ``(metrics, ModelPredictions)`` with ``return_predictions``. ``metrics`` holds
        ``grounding_metrics`` of the fused boxes plus ``upper_bound`` (over the proposals the model saw,
        i.e. the top-M it used), ``stage1`` and ``stage2`` (the same metrics of each stage's own argmax box;
        ``stage2`` only for two-stage models).

    Raises:
        ValueError: no annotations given and the loader's dataset has none.
    """
    dataset = getattr(loader, "dataset", None)
    if annotations is None:
        annotations = getattr(dataset, "images", None)  # GroundingDataset keeps the split's ImageAnnotations
        if annotations is None:
            raise ValueError("evaluate_model: pass annotations= (the loader's dataset has no .images)")
    result = predict(model, loader, progress=progress, amp_dtype=amp_dtype)
    phrases = evaluation_phrases(annotations, twins)
    metrics = grounding_metrics(phrases, result.boxes["fused"])
    metrics["upper_bound"] = proposal_upper_bound(phrases, result.proposals)["upper_bound"]
    for stage in ("stage1", "stage2"):
        if result.boxes[stage]:  # absent for a single-stage model (no stage 2)
            metrics[stage] = grounding_metrics(phrases, result.boxes[stage])
    return (metrics, result) if return_predictions else metrics
