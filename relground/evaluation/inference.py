"""Running a model over a loader: its predicted boxes per stage, and their metrics (``evaluate_model``)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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


@dataclass
class ModelPredictions:
    """Boxes a model predicted over a loader, in original pixels, per stage variant."""

    boxes: dict[str, dict[PhraseKey, list[float]]]  # stage ("fused", "stage1", "stage2") -> key -> box
    proposals: dict[str, Tensor]  # image_id -> Tensor[M, 4], the valid proposals the model saw


def _phrase_keys(meta: Mapping[str, Any]) -> list[PhraseKey]:
    """Keys of one batch item's phrase slots, from ``GroundingBatch.meta`` (``first_word_index`` per phrase)."""
    first_words = meta["first_word_index"]
    if isinstance(first_words, int):
        first_words = [first_words]
    return [phrase_key(meta["image_id"], meta["sentence_index"], w) for w in first_words]


@torch.inference_mode()
def predict(model: torch.nn.Module, loader: Iterable, *, progress: bool = False) -> ModelPredictions:
    """Run ``model`` over ``loader`` and collect the fused, stage-1 and stage-2 boxes in original pixels.

    Args:
        model: a ``relground.model.ReIR`` (set to eval mode here).
        loader: yields ``GroundingBatch``; ``meta[b]`` carries ``image_id``, ``sentence_index`` and the
            ``first_word_index`` list of its phrase slots.
        progress: show a tqdm bar.
    """
    was_training = model.training  # restored at the end, so a periodic evaluation hook can call this mid-training
    model.eval()
    device = next(model.parameters()).device
    stage_fields = {"fused": "boxes", "stage1": "boxes_stage1", "stage2": "boxes_stage2"}
    boxes: dict[str, dict[PhraseKey, list[float]]] = {stage: {} for stage in STAGES}
    proposals: dict[str, Tensor] = {}
    try:
        _collect(model, loader, device, stage_fields, boxes, proposals, progress)
    finally:
        model.train(was_training)
    return ModelPredictions(boxes, proposals)


def _collect(model, loader, device, stage_fields, boxes, proposals, progress: bool) -> None:
    """The loop of :func:`predict`: fills ``boxes`` and ``proposals`` in place."""

    for batch in tqdm(loader, desc="evaluate", disable=not progress):
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


def evaluate_model(
    model: torch.nn.Module,
    loader: Iterable,
    *,
    annotations: Optional[Sequence[ImageAnnotation]] = None,
    twins: Optional[Mapping[PhraseKey, bool]] = None,
    progress: bool = False,
    return_predictions: bool = False,
):
    """Evaluate a model over a loader: fused metrics at the top level, ``stage1`` / ``stage2`` variants nested.

    Args:
        model: a ``relground.model.ReIR``.
        loader: a loader of ``GroundingBatch`` (e.g. ``relground.data.dataset.build_dataloader``).
        annotations: the split's images; default ``loader.dataset.images`` (a ``GroundingDataset``).
        twins: optional identical-twin flags (``load_twins``); adds ``twin`` / ``no_twin`` groups.
        progress: show a tqdm bar.
        return_predictions: also return the ``ModelPredictions``.

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
    result = predict(model, loader, progress=progress)
    phrases = evaluation_phrases(annotations, twins)
    metrics = grounding_metrics(phrases, result.boxes["fused"])
    metrics["upper_bound"] = proposal_upper_bound(phrases, result.proposals)["upper_bound"]
    for stage in ("stage1", "stage2"):
        if result.boxes[stage]:  # absent for a single-stage model (no stage 2)
            metrics[stage] = grounding_metrics(phrases, result.boxes[stage])
    return (metrics, result) if return_predictions else metrics
