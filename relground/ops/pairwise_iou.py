"""Batched pairwise IoU of boxes (``torch.ops.relground.pairwise_iou``)."""
from __future__ import annotations

import torch
from torch import Tensor

from relground.extension import HAS_OPS
from relground.ops._reference import _pairwise_iou_reference, check_same_device

__all__ = ["pairwise_iou"]


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over union of every pair of boxes, per image, in one fused call.

    Equal to ``torchvision.ops.box_iou(boxes1[b], boxes2[b])`` for each ``b``, except that a pair with an
    empty union (two zero-area boxes) gets 0 instead of NaN. Boxes are ``(x1, y1, x2, y2)`` in any unit,
    width ``x2 - x1`` (no ``+1``); a box with ``x2 < x1`` or ``y2 < y1`` counts as zero-area. Any NaN
    coordinate gives IoU 0 for its pairs.

    Args:
        boxes1 (Tensor[B, N, 4] or Tensor[N, 4]): float16/bfloat16/float32/float64, xyxy.
        boxes2 (Tensor[B, M, 4] or Tensor[M, 4]): same dtype, device and number of dimensions as ``boxes1``.

    Returns:
        Tensor[B, N, M] (or Tensor[N, M] for 2-D inputs): IoU in [0, 1], dtype of the inputs (half and
        bfloat16 are computed in float32). Under ``torch.autocast`` the inputs are cast to float32 and so is
        the result. The result carries no gradient (the inputs are detached).

    Raises:
        ValueError: ``boxes1`` and ``boxes2`` are not both 2-D or both 3-D.
        RuntimeError: wrong device, dtype, last dimension or batch size (the message names the argument).

    Example:
        >>> boxes = torch.tensor([[[0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0]]])  # [1, 2, 4]
        >>> relground.ops.pairwise_iou(boxes, boxes)[0, 0]  # inter 2, union 6
        tensor([1.0000, 0.3333])
    """
    if boxes1.dim() not in (2, 3) or boxes1.dim() != boxes2.dim():
        raise ValueError(
            "relground.ops.pairwise_iou: `boxes1` and `boxes2` must both be [N, 4] or both be [B, N, 4], "
            f"got shapes {tuple(boxes1.shape)} and {tuple(boxes2.shape)}"
        )
    check_same_device("pairwise_iou", boxes1=boxes1, boxes2=boxes2)
    squeeze = boxes1.dim() == 2
    if squeeze:
        boxes1, boxes2 = boxes1[None], boxes2[None]  # [1, N, 4], [1, M, 4]
    boxes1, boxes2 = boxes1.detach(), boxes2.detach()
    if HAS_OPS:
        iou = torch.ops.relground.pairwise_iou(boxes1, boxes2)  # [B, N, M]
    else:
        iou = _pairwise_iou_reference(boxes1, boxes2)
    return iou[0] if squeeze else iou


if HAS_OPS:

    @torch.library.register_fake("relground::pairwise_iou")
    def _pairwise_iou_fake(boxes1: Tensor, boxes2: Tensor) -> Tensor:
        check_same_device("pairwise_iou", boxes1=boxes1, boxes2=boxes2)
        torch._check(boxes1.dim() == 3 and boxes2.dim() == 3, lambda: "pairwise_iou: `boxes1`, `boxes2` must be 3-D")
        torch._check(boxes1.shape[0] == boxes2.shape[0], lambda: "pairwise_iou: batch sizes of the boxes differ")
        return boxes1.new_empty(boxes1.shape[0], boxes1.shape[1], boxes2.shape[1])

    # IoU in half precision loses ~3 digits and thresholds (IoU >= 0.5) flip: always run in float32.
    for _device_type in ("cpu", "cuda"):
        torch.library.register_autocast("relground::pairwise_iou", _device_type, torch.float32)
