"""Phrase-grounding metrics: Acc, PointIt, accuracy over IoU thresholds, mean IoU, per type, upper bound.

Protocol (the field's, and the authors' code): a phrase is evaluated when its coreference chain has at
least one box; its ground truth is the union of the chain's boxes (``PhraseAnnotation.union_box``).
A prediction is one box per phrase in original-image pixels, keyed by
``(image_id, sentence_index, first_word_index)`` -- the same key as the ``--predictions`` JSON.

* ``accuracy`` (Acc, Recall@1): share of phrases with IoU(prediction, union box) >= 0.5.
* ``point_it``: share of phrases whose predicted box centre lies inside the union box, borders included.
* ``acc_at_iou``: accuracy at IoU 0.50, 0.55, ..., 0.80 (step 0.05; the paper's Fig. 4 spans 0.5..0.8).
* ``mean_iou``: mean IoU over all evaluated phrases (a missing prediction counts as IoU 0).
* ``per_type``: the same per phrase type, using each phrase's *first* type (``/vehicles/scene`` -> vehicles).
* ``upper_bound``: share of phrases with *any* proposal at IoU >= 0.5 (optionally only the first ``top_m``).

Boxes are 0-based xyxy with width = x2 - x1 (no +1), as in the official Flickr30K Entities parser. An
evaluated phrase without a prediction counts as a miss (IoU 0, no point hit) and is reported in
``missing``; it is never dropped silently.
"""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from relground.structures.records import Box, ImageAnnotation
from relground.data.catalog import TWINS_FILE  # the synthetic generator writes it, the evaluator reads it
from relground.structures.boxes import box_iou

PhraseKey = tuple[str, int, int]  # (image_id, sentence_index, first_word_index)

ACCURACY_IOU = 0.5
# Round so that the keys and comparisons use the decimal thresholds exactly (0.5 + 0.05 * 1 != 0.55 in floats).
IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(7))  # 0.50 .. 0.80
STAGES = ("fused", "stage1", "stage2")


@dataclass(frozen=True)
class EvalPhrase:
    """One evaluated phrase instance: its key, ground truth and grouping labels."""

    key: PhraseKey
    gt_box: Box  # union of the chain's boxes, original pixels, 0-based xyxy
    phrase_type: str  # the phrase's first type
    has_twin: Optional[bool] = None  # an identical distractor exists in the image (synthetic benchmark only)


def phrase_key(image_id: str, sentence_index: int, first_word_index: int) -> PhraseKey:
    """The canonical prediction key (types normalised so JSON and batch metadata compare equal).

    Example:
        >>> phrase_key(1000092795, "0", 3)
        ('1000092795', 0, 3)
    """
    return (str(image_id), int(sentence_index), int(first_word_index))


def evaluation_phrases(
    annotations: Iterable[ImageAnnotation], twins: Optional[Mapping[PhraseKey, bool]] = None
) -> list[EvalPhrase]:
    """The phrases the protocol evaluates: every phrase with a union box, in reading order.

    Args:
        annotations: images of one split (any reader in ``relground.data``).
        twins: optional ``key -> has an identical twin`` flags; keys absent from it get ``None``.

    Returns:
        list[EvalPhrase]: one per grounded phrase (``union_box`` set); phrases without a box are not evaluated.

    Raises:
        ValueError: two evaluated phrases share a key (the key would be ambiguous).

    Example:
        >>> from relground.structures import ImageAnnotation, PhraseAnnotation, SentenceAnnotation
        >>> man = PhraseAnnotation(0, "A man", "1", ("people",), (0.0, 0.0, 10.0, 10.0))
        >>> ball = PhraseAnnotation(3, "a ball", "2", ("other",), None)       # no box: not evaluated
        >>> words = "A man throws a ball .".split()
        >>> image = ImageAnnotation("1", 20, 20, [SentenceAnnotation(0, " ".join(words), words, [man, ball])])
        >>> evaluation_phrases([image])
        [EvalPhrase(key=('1', 0, 0), gt_box=(0.0, 0.0, 10.0, 10.0), phrase_type='people', has_twin=None)]
    """
    phrases: list[EvalPhrase] = []
    seen: set[PhraseKey] = set()
    for image in annotations:
        for sentence in image.sentences:
            for phrase in sentence.phrases:
                if not phrase.grounded:
                    continue
                key = phrase_key(image.image_id, sentence.sentence_index, phrase.first_word_index)
                if key in seen:
                    raise ValueError(f"annotations: duplicate evaluated phrase key {key}")
                seen.add(key)
                phrase_type = phrase.phrase_types[0] if phrase.phrase_types else "other"
                twin = None if twins is None else twins.get(key)
                phrases.append(EvalPhrase(key, tuple(map(float, phrase.union_box)), phrase_type, twin))
    return phrases


def paired_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of corresponding boxes: Tensor[N, 4] x Tensor[N, 4] -> Tensor[N] (zero-area pairs get 0).

    Example:
        >>> paired_iou(torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]]), torch.tensor([[0.0, 0, 10, 5], [20, 20, 30, 30]]))
        tensor([0.5000, 0.0000])
    """
    # box_iou is batched [B, N, 4] x [B, M, 4]; one pair per batch item gives the diagonal only.
    return box_iou(boxes1[:, None, :], boxes2[:, None, :])[:, 0, 0]


def point_hits(pred_boxes: Tensor, gt_boxes: Tensor) -> Tensor:
    """PointIt hits: centre of each predicted box inside its ground-truth box, borders included.

    Args:
        pred_boxes: Tensor[N, 4] xyxy.
        gt_boxes: Tensor[N, 4] xyxy.

    Returns:
        Tensor[N] bool.

    Example:
        >>> point_hits(torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]]), torch.tensor([[0.0, 0, 10, 5], [20, 20, 30, 30]]))
        tensor([ True, False])
    """
    cx = (pred_boxes[:, 0] + pred_boxes[:, 2]) / 2
    cy = (pred_boxes[:, 1] + pred_boxes[:, 3]) / 2
    return (cx >= gt_boxes[:, 0]) & (cx <= gt_boxes[:, 2]) & (cy >= gt_boxes[:, 1]) & (cy <= gt_boxes[:, 3])


def _rate(hits: Tensor) -> Optional[float]:
    # None (JSON null) rather than NaN for an empty group, so the output stays strict JSON.
    return float(hits.double().mean()) if hits.numel() else None


def _summary(ious: Tensor, points: Tensor, thresholds: Sequence[float]) -> dict[str, Any]:
    """Acc, PointIt, mean IoU and accuracy per threshold of one group of phrases (Tensor[N] each)."""
    return {
        "count": int(ious.numel()),
        "accuracy": _rate(ious >= ACCURACY_IOU),
        "point_it": _rate(points),
        "mean_iou": float(ious.mean()) if ious.numel() else None,
        "acc_at_iou": {f"{t:.2f}": _rate(ious >= t) for t in thresholds},
    }


def grounding_metrics(
    phrases: Sequence[EvalPhrase],
    predictions: Mapping[PhraseKey, Sequence[float]],
    *,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> dict[str, Any]:
    """Score one box per phrase against the union boxes.

    Args:
        phrases: the evaluated phrases (``evaluation_phrases``).
        predictions: ``key -> [x1, y1, x2, y2]`` in original pixels; keys of non-evaluated phrases are ignored.
        iou_thresholds: thresholds of ``acc_at_iou`` (default 0.50..0.80, step 0.05).

    Returns:
        dict with ``count``, ``predicted``, ``missing`` (evaluated phrases without a prediction, scored as
        misses), ``accuracy``, ``point_it``, ``mean_iou``, ``acc_at_iou`` (``"0.50" -> acc``), ``per_type``
        (first type -> the same summary) and, when twin flags are known, ``twin`` / ``no_twin`` summaries.
        Rates are fractions in [0, 1]; ``None`` for an empty group.

    Example:
        >>> from relground.evaluation.evaluator import EvalPhrase, grounding_metrics
        >>> gt = [EvalPhrase(("1", 0, 0), (0.0, 0.0, 10.0, 10.0), "people")]
        >>> grounding_metrics(gt, {("1", 0, 0): [0.0, 0.0, 10.0, 5.0]})["accuracy"]  # IoU exactly 0.5
        1.0
    """
    n = len(phrases)
    gt = torch.tensor([p.gt_box for p in phrases], dtype=torch.float64).reshape(n, 4)  # [N, 4]
    pred = torch.zeros(n, 4, dtype=torch.float64)  # [N, 4]
    found = torch.zeros(n, dtype=torch.bool)  # [N]
    for i, phrase in enumerate(phrases):
        box = predictions.get(phrase.key)
        if box is not None:
            pred[i] = torch.as_tensor(box, dtype=torch.float64)
            found[i] = True
    ious = torch.where(found, paired_iou(pred, gt), torch.zeros(n, dtype=torch.float64))  # [N]
    points = point_hits(pred, gt) & found  # [N]

    metrics = _summary(ious, points, iou_thresholds)
    metrics["predicted"] = int(found.sum())
    metrics["missing"] = n - metrics["predicted"]

    by_type: dict[str, list[int]] = defaultdict(list)
    for i, phrase in enumerate(phrases):
        by_type[phrase.phrase_type].append(i)
    metrics["per_type"] = {
        name: _summary(ious[idx], points[idx], iou_thresholds) for name, idx in sorted(by_type.items())
    }

    if any(p.has_twin is not None for p in phrases):
        for name, flag in (("twin", True), ("no_twin", False)):
            idx = [i for i, p in enumerate(phrases) if p.has_twin is flag]
            metrics[name] = _summary(ious[idx], points[idx], iou_thresholds)
    return metrics


def proposal_upper_bound(
    phrases: Sequence[EvalPhrase],
    proposals: Mapping[str, Tensor],
    *,
    top_m: Optional[int] = None,
    iou: float = ACCURACY_IOU,
) -> dict[str, Any]:
    """Share of phrases with any proposal at IoU >= ``iou``: the best Acc a box *selector* can reach.

    Args:
        phrases: the evaluated phrases.
        proposals: ``image_id -> Tensor[M, 4]`` xyxy in original pixels, ordered by detector score.
        top_m: use only the first ``top_m`` proposals of each image (``None`` = all), e.g. the M the model used.
        iou: hit threshold (default 0.5).

    Returns:
        dict with ``upper_bound`` (fraction), ``count``, ``top_m`` and ``images_without_proposals``
        (images of evaluated phrases missing from ``proposals``; their phrases count as misses).

    Example:
        >>> phrases = [EvalPhrase(("1", 0, 0), (0.0, 0.0, 10.0, 10.0), "people")]
        >>> proposal_upper_bound(phrases, {"1": torch.tensor([[0.0, 0, 9, 9], [10.0, 10, 20, 20]])}, top_m=1)
        {'upper_bound': 1.0, 'count': 1, 'top_m': 1, 'images_without_proposals': 0}
    """
    by_image: dict[str, list[int]] = defaultdict(list)
    for i, phrase in enumerate(phrases):
        by_image[phrase.key[0]].append(i)
    hits = torch.zeros(len(phrases), dtype=torch.bool)
    missing_images = 0
    for image_id, idx in by_image.items():
        boxes = proposals.get(image_id)
        if boxes is None:
            missing_images += 1
            continue
        boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)[:top_m]  # [M, 4]
        if boxes.shape[0] == 0:
            continue
        gt = torch.tensor([phrases[i].gt_box for i in idx], dtype=torch.float64)  # [n, 4]
        hits[idx] = (box_iou(gt, boxes) >= iou).any(dim=1)  # [n, M] -> [n]
    return {
        "upper_bound": _rate(hits),
        "count": len(phrases),
        "top_m": top_m,
        "images_without_proposals": missing_images,
    }


def evaluate_predictions(
    annotations: Iterable[ImageAnnotation],
    predictions: Mapping[PhraseKey, Sequence[float]],
    *,
    proposals: Optional[Mapping[str, Tensor]] = None,
    top_m: Optional[int] = None,
    twins: Optional[Mapping[PhraseKey, bool]] = None,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> dict[str, Any]:
    """``grounding_metrics`` over a split's annotations, plus the proposal upper bound when proposals are given.

    Args:
        annotations: images of the split.
        predictions: ``key -> box`` in original pixels.
        proposals: optional ``image_id -> Tensor[M, 4]`` (original pixels) for ``upper_bound``.
        top_m: proposals per image counted by the upper bound (``None`` = all).
        twins: optional ``key -> has an identical twin`` flags (adds ``twin`` / ``no_twin`` groups).
        iou_thresholds: thresholds of ``acc_at_iou``.

    Returns:
        dict: :func:`grounding_metrics`' keys, plus ``upper_bound``, ``upper_bound_top_m`` and
        ``images_without_proposals`` when ``proposals`` is given.

    Example:
        >>> from relground.structures import ImageAnnotation, PhraseAnnotation, SentenceAnnotation
        >>> man = PhraseAnnotation(0, "A man", "1", ("people",), (0.0, 0.0, 10.0, 10.0))
        >>> image = ImageAnnotation("1", 20, 20, [SentenceAnnotation(0, "A man runs", ["A", "man", "runs"], [man])])
        >>> metrics = evaluate_predictions([image], {("1", 0, 0): [0.0, 0.0, 10.0, 5.0]},
        ...                                proposals={"1": torch.tensor([[0.0, 0, 9, 9]])})
        >>> metrics["accuracy"], metrics["mean_iou"], metrics["upper_bound"]
        (1.0, 0.5, 1.0)
    """
    phrases = evaluation_phrases(annotations, twins)
    metrics = grounding_metrics(phrases, predictions, iou_thresholds=iou_thresholds)
    if proposals is not None:
        bound = proposal_upper_bound(phrases, proposals, top_m=top_m)
        metrics["upper_bound"] = bound["upper_bound"]
        metrics["upper_bound_top_m"] = top_m
        metrics["images_without_proposals"] = bound["images_without_proposals"]
    return metrics


def load_twins(root, annotations: Iterable[ImageAnnotation]) -> Optional[dict[PhraseKey, bool]]:
    """Identical-twin flags of a dataset's evaluated phrases, from ``ROOT/twins.json`` when it exists.

    ``twins.json`` (written by the synthetic benchmark) maps an image id to the chain ids of its objects that
    have an identical twin in the image: ``{"1000003": ["40", "41"]}``. A phrase "has a twin" when its own
    chain is listed (a plural phrase covering both twins has its own chain and is not ambiguous).

    Args:
        root: dataset root.
        annotations: the split's images.

    Returns:
        ``key -> bool`` for every evaluated phrase, or ``None`` when the dataset has no ``twins.json``.

    Raises:
        ValueError: the file is not ``{image_id: [chain id, ...]}`` (names the file and image id).
    """
    path = Path(root) / TWINS_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected {{image_id: [chain id, ...]}}, got {type(raw).__name__}")
    for image_id, chains in raw.items():
        if not isinstance(chains, list):
            raise ValueError(f"{path}: image {image_id!r}: expected a list of chain ids, got {chains!r}")
    twins: dict[PhraseKey, bool] = {}
    for image in annotations:
        chains = {str(c) for c in raw.get(image.image_id, [])}
        for sentence in image.sentences:
            for phrase in sentence.phrases:
                if phrase.grounded:
                    key = phrase_key(image.image_id, sentence.sentence_index, phrase.first_word_index)
                    twins[key] = phrase.phrase_id in chains
    return twins


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """A few human-readable lines (percentages) of a metrics dict."""
    def pct(x: float) -> str:
        return "  n/a" if x is None else f"{100 * x:5.2f}"

    lines = [
        f"phrases {metrics['count']}  missing {metrics.get('missing', 0)}",
        f"Acc {pct(metrics['accuracy'])}%  PointIt {pct(metrics['point_it'])}%  mean IoU {pct(metrics['mean_iou'])}%",
        "Acc@IoU " + "  ".join(f"{t}:{pct(a)}" for t, a in metrics["acc_at_iou"].items()),
    ]
    if "upper_bound" in metrics:
        lines.append(f"proposal upper bound {pct(metrics['upper_bound'])}%")
    for stage in ("stage1", "stage2"):
        if stage in metrics:
            lines.append(f"{stage}: Acc {pct(metrics[stage]['accuracy'])}%  PointIt {pct(metrics[stage]['point_it'])}%")
    for name, group in metrics.get("per_type", {}).items():
        lines.append(f"  {name:<12} {group['count']:>6}  Acc {pct(group['accuracy'])}%")
    return "\n".join(lines)
