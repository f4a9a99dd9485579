"""Self-taught box-regression targets of ReIR (``torch.ops.relground.self_taught_targets``)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from relground.extension import HAS_OPS
from relground.ops._reference import _self_taught_targets_reference, check_same_device

__all__ = ["self_taught_targets"]


def self_taught_targets(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.6,
    score_gap: float = 0.1,
    weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Regression targets that pull overlapping proposals onto each phrase's best box (paper Sec. 3.3).

    For phrase ``p`` of image ``b``: the *anchor* is the valid proposal with the highest score (the lower
    index on ties; NaN counts as highest, as in ``torch.argmax``). A proposal ``m`` is *selected* when it is
    valid, is not the anchor, is not identical to the anchor box, and ``IoU(box m, anchor box) >=
    iou_threshold`` (IoU as ``relground.ops.pairwise_iou``). For selected proposals ``deltas`` is the R-CNN
    encoding of the anchor box relative to box ``m``, exactly
    ``torchvision.models.detection._utils.BoxCoder(weights).encode_single(anchor_box, box_m)``, and
    ``weight`` is 1 when ``scores[anchor] - scores[m] >= score_gap`` (else 0). Everything else is 0/False.

    The outputs are training targets: no gradient flows through them (the inputs are detached).

    Args:
        boxes (Tensor[B, M, 4]): proposals, xyxy, float16/bfloat16/float32/float64. Valid boxes must be
            finite (checked on CPU; on CUDA the check would cost a device sync, so a non-finite box is not
            reported there but gets IoU 0 and is never selected).
        scores (Tensor[B, P, M]): per-phrase proposal scores (e.g. attention), same dtype and device as
            ``boxes``.
        iou_threshold (float): minimum IoU with the anchor, in (0, 1]. Default: 0.6.
        score_gap (float): minimum score margin below the anchor for weight 1. Default: 0.1.
        weights (sequence of 4 floats): ``(wx, wy, ww, wh)`` of the box coder. Default: (10, 10, 5, 5).
        valid (Tensor[B, M] of bool, optional): True for real proposals. Default: all valid.

    Returns:
        tuple: ``deltas`` (Tensor[B, P, M, 4], dtype of ``boxes``), ``selected`` (Tensor[B, P, M] bool),
        ``weight`` (Tensor[B, P, M], dtype of ``scores``), ``anchor`` (Tensor[B, P] int64, -1 for an image
        without a valid box). Half/bfloat16 are computed in float32; under ``torch.autocast`` the inputs are
        cast to float32 and so are the outputs.

    Raises:
        RuntimeError: wrong device, dtype, rank, last dimension, mismatched ``B``/``M``, ``iou_threshold``
            outside (0, 1], ``weights`` not 4 finite values, ``valid`` of another shape/dtype/device, or a
            non-finite valid box on CPU (the message names the argument).

    Example:
        >>> boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 11.0], [20.0, 20.0, 30.0, 30.0]]])
        >>> scores = torch.tensor([[[0.9, 0.5, 0.1]]])  # [B=1, P=1, M=3]
        >>> deltas, selected, weight, anchor = relground.ops.self_taught_targets(boxes, scores)
        >>> anchor, selected, weight
        (tensor([[0]]), tensor([[[False,  True, False]]]), tensor([[[0., 1., 0.]]]))
    """
    check_same_device("self_taught_targets", boxes=boxes, scores=scores, valid=valid)
    boxes, scores = boxes.detach(), scores.detach()
    weights = tuple(float(w) for w in weights)
    if HAS_OPS:
        return torch.ops.relground.self_taught_targets(
            boxes, scores, float(iou_threshold), float(score_gap), list(weights), valid
        )
    return _self_taught_targets_reference(boxes, scores, iou_threshold, score_gap, weights, valid)


if HAS_OPS:

    @torch.library.register_fake("relground::self_taught_targets")
    def _self_taught_targets_fake(boxes, scores, iou_threshold=0.6, score_gap=0.1, weights=(10.0, 10.0, 5.0, 5.0),
                                  valid=None):
        check_same_device("self_taught_targets", boxes=boxes, scores=scores, valid=valid)
        torch._check(boxes.dim() == 3 and scores.dim() == 3, lambda: "self_taught_targets: `boxes`, `scores` 3-D")
        B, P, M = scores.shape
        return (
            boxes.new_empty(B, P, M, 4),
            boxes.new_empty(B, P, M, dtype=torch.bool),
            scores.new_empty(B, P, M),
            scores.new_empty(B, P, dtype=torch.long),
        )

    # Box encodings take logs of width ratios: half precision would make the targets noisy.
    for _device_type in ("cpu", "cuda"):
        torch.library.register_autocast("relground::self_taught_targets", _device_type, torch.float32)
