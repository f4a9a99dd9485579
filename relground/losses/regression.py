"""Self-taught regression loss (paper Eq. 15): each phrase's most attended box is the pseudo ground truth of
its overlapping neighbours."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from relground.losses._dtype import upcast
from relground.ops._reference import _encode_boxes


def self_taught_regression_loss(
    deltas: Tensor,
    boxes: Tensor,
    attention: Tensor,
    valid: Tensor,
    targets_fn: Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]],
    iou_threshold: float = 0.6,
    score_gap: float = 0.1,
    weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
    phrase_valid: Tensor | None = None,
    per_item: bool = False,
    target_gradient: bool = False,
) -> Tensor:
    """Smooth-L1 (beta 1) between predicted deltas and the self-taught targets.

    The anchor of each phrase is its argmax-attention box; every other box with IoU >= ``iou_threshold``
    (exact duplicates excluded) is *selected* and targets the delta to the anchor, with weight 1 only if its
    attention is at least ``score_gap`` below the anchor's (else 0). As the authors: the mean over all
    selected entries' coordinates, zero-weighted ones included; 0 when nothing is selected.

    Args:
        deltas (Tensor[B, P, M, 4]): predicted deltas.
        boxes (Tensor[B, M, 4]): the boxes the deltas refer to (xyxy resized pixels).
        attention (Tensor[B, P, M]): attention that picks the anchor (no gradient flows through it).
        valid (Tensor[B, M]): bool, real boxes.
        targets_fn: ``relground.ops.self_taught_targets`` or its reference.
        iou_threshold: tau. Default 0.6.
        score_gap: minimum attention gap for weight 1. Default 0.1.
        weights: box-coder weights. Default (10, 10, 5, 5).
        phrase_valid (Tensor[B, P]): bool, phrases that count; None = all.
        per_item: return (sum, count) per item instead of the mean: Tensor[B] each, the weighted smooth-L1 summed
            over the item's selected entries and 4 x their number (``loss.normalization: image``).
        target_gradient: build the targets from ``boxes`` with their gradient (the authors' stage 2 after the
            refinement start, ``model.detach_refined_boxes: false``); the selection stays the op's.

    Returns:
        Tensor[]: the loss.

    Example:
        >>> boxes = torch.tensor([[[0.0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]]])  # [B=1, M=3, 4]
        >>> attention = torch.tensor([[[0.8, 0.1, 0.1]]])      # [B, P=1, M]: box 0 is the anchor
        >>> deltas = torch.zeros(1, 1, 3, 4)                    # [B, P, M, 4]: no refinement predicted
        >>> valid = torch.ones(1, 3, dtype=torch.bool)
        >>> self_taught_regression_loss(deltas, boxes, attention, valid, relground.ops.self_taught_targets)
        tensor(0.1465)
    """
    targets, selected, weight, anchor = targets_fn(
        boxes.detach(), attention.detach(), iou_threshold, score_gap, weights, valid
    )  # [B, P, M, 4], [B, P, M], [B, P, M], [B, P]
    if phrase_valid is not None:
        selected = selected & phrase_valid[..., None]
    if target_gradient:
        targets = differentiable_targets(boxes, anchor, selected, weights)
    count = selected.sum()
    per_coord = F.smooth_l1_loss(upcast(deltas), upcast(targets), reduction="none", beta=1.0)  # [B, P, M, 4]
    weighted = per_coord * (upcast(weight) * selected)[..., None]
    if per_item:
        return weighted.flatten(1).sum(1), (selected.flatten(1).sum(1) * 4).to(weighted.dtype)
    # No branch on the count (a host read): with nothing selected every weight is 0 and the loss is 0 / 1.
    return weighted.sum() / (count * 4).clamp(min=1)


def differentiable_targets(boxes: Tensor, anchor: Tensor, selected: Tensor, weights: tuple[float, ...]) -> Tensor:
    """The self-taught targets [B, P, M, 4] encoded again from ``boxes`` [B, M, 4] with their gradient: the delta
    from each box to its phrase's anchor box (``anchor`` [B, P]), zero where not ``selected`` [B, P, M]."""
    B, P, M = selected.shape
    anchor_boxes = torch.gather(boxes, 1, anchor.clamp(min=0)[..., None].expand(B, P, 4))  # [B, P, 4]
    # entries not selected encode a unit box against itself: finite, so their zero gradient stays zero (not NaN)
    unit = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=boxes.dtype, device=boxes.device)
    keep = selected[..., None]
    reference = torch.where(keep, anchor_boxes[:, :, None, :].expand(B, P, M, 4), unit)
    proposals = torch.where(keep, boxes[:, None].expand(B, P, M, 4), unit)
    return torch.where(keep, _encode_boxes(reference, proposals, weights), torch.zeros((), dtype=boxes.dtype))
