"""The one Python-side box IoU (xyxy boxes, width = x2 - x1, no ``+1``).

Every Python IoU of relground goes through here: the pure-PyTorch reference of ``relground.ops.pairwise_iou``
(``relground/ops/_reference.py``), the evaluator and the synthetic benchmark's proposal sampler. The rule is
the one of the native kernels (``csrc/include/relground/box_math.h``), operation for operation:

* a box with ``x2 < x1`` or ``y2 < y1`` has area 0;
* ``inter = max(0, min(x2) - max(x1)) * max(0, min(y2) - max(y1))``, ``union = area1 + area2 - inter``;
* a pair whose union is not positive (two zero-area boxes, or a NaN coordinate) gets IoU 0, never NaN;
* finite boxes whose areas overflow the dtype (float32 coordinates ~1e19) are rescaled first (extents halved and
  divided by the pair's largest), so they get a finite IoU (1 for identical boxes); other pairs are untouched.

For valid boxes (``x1 <= x2``, ``y1 <= y2``) with a positive union this equals ``torchvision.ops.box_iou``
bit for bit in float64.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["box_area", "box_iou", "box_iou_single"]


def box_area(boxes: Tensor) -> Tensor:
    """Area of xyxy boxes with negative extents clamped to 0: ``Tensor[..., 4] -> Tensor[...]``."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair of boxes, per image: ``[B, N, 4] x [B, M, 4] -> [B, N, M]`` (2-D in, 2-D out).

    Args:
        boxes1 (Tensor[B, N, 4] or Tensor[N, 4]): xyxy, any floating dtype (computed in that dtype).
        boxes2 (Tensor[B, M, 4] or Tensor[M, 4]): same dtype and number of dimensions.

    Returns:
        Tensor[B, N, M] (or Tensor[N, M]): IoU in [0, 1]; 0 where the union is empty (see the module doc).

    Example:
        >>> box_iou(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 0.0, 3.0, 2.0]]))  # 2 / 6
        tensor([[0.3333]])
    """
    squeeze = boxes1.dim() == 2
    if squeeze:
        boxes1, boxes2 = boxes1[None], boxes2[None]  # [1, N, 4], [1, M, 4]
    area1 = box_area(boxes1)  # [B, N]
    area2 = box_area(boxes2)  # [B, M]
    lt = torch.maximum(boxes1[:, :, None, :2], boxes2[:, None, :, :2])  # [B, N, M, 2]
    rb = torch.minimum(boxes1[:, :, None, 2:], boxes2[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]  # [B, N, M]
    union = area1[:, :, None] + area2[:, None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(inter))
    overflow = area1.isinf()[:, :, None] | area2.isinf()[:, None, :] | inter.isinf() | union.isinf()  # [B, N, M]
    # Finite boxes whose areas overflow the dtype: the native kernels' rescaled rule. Always computed and selected,
    # never branched on, so the function reads no device value (no host sync; compiles without a graph break).
    iou = torch.where(overflow, _iou_rescaled(boxes1, boxes2), iou)
    return iou[0] if squeeze else iou


def _iou_rescaled(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU without overflow, ``[B, N, 4] x [B, M, 4] -> [B, N, M]``: ``iou_rescaled`` of ``box_math.h``.

    IoU is scale-invariant: the extents are halved (``x2 / 2 - x1 / 2`` cannot overflow) and divided by the
    pair's largest one before any product; a non-finite result (an infinite coordinate) gives 0.
    """
    a, b = boxes1[:, :, None, :], boxes2[:, None, :, :]  # [B, N, 1, 4], [B, 1, M, 4]
    aw, ah = (a[..., 2] * 0.5 - a[..., 0] * 0.5).clamp(min=0), (a[..., 3] * 0.5 - a[..., 1] * 0.5).clamp(min=0)
    bw, bh = (b[..., 2] * 0.5 - b[..., 0] * 0.5).clamp(min=0), (b[..., 3] * 0.5 - b[..., 1] * 0.5).clamp(min=0)
    iw = (torch.minimum(a[..., 2], b[..., 2]) * 0.5 - torch.maximum(a[..., 0], b[..., 0]) * 0.5).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) * 0.5 - torch.maximum(a[..., 1], b[..., 1]) * 0.5).clamp(min=0)
    aw, ah, bw, bh = torch.broadcast_tensors(aw, ah, bw, bh)
    scale = torch.maximum(torch.maximum(aw, ah), torch.maximum(bw, bh))  # [B, N, M]
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    aw, ah, bw, bh, iw, ih = (v / safe for v in (aw, ah, bw, bh, iw, ih))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    iou = torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(inter))
    ok = (scale > 0) & (iou >= 0) & (iou <= 1)
    return torch.where(ok, iou, torch.zeros_like(iou))


def box_iou_single(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two boxes in plain Python floats: :func:`box_iou`'s rule and numbers (float64) for one pair.

    For hot loops (the synthetic benchmark's rejection samplers call it thousands of times per image), where a
    tensor call per pair would cost ~50x more.

    Args:
        a, b: 4 numbers each, xyxy (a list, tuple or 1-D numpy array).

    Returns:
        float: IoU in [0, 1].
    """
    ax1, ay1, ax2, ay2 = a.tolist() if hasattr(a, "tolist") else a
    bx1, by1, bx2, by2 = b.tolist() if hasattr(b, "tolist") else b
    iw, ih = min(ax2, bx2) - max(ax1, bx1), min(ay2, by2) - max(ay1, by1)
    if not (iw > 0 and ih > 0):  # no overlap, or a NaN coordinate: 0 as in box_iou
        return 0.0
    # iw > 0 and ih > 0 imply both boxes have positive extents: no clamping needed for the areas.
    inter = iw * ih
    iou = inter / ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter)
    if iou == iou:  # not NaN: no overflow (an overflowing area gives inf - inf or inf / inf)
        return iou
    return float(_iou_rescaled(torch.tensor([[[ax1, ay1, ax2, ay2]]], dtype=torch.float64),
                               torch.tensor([[[bx1, by1, bx2, by2]]], dtype=torch.float64)))
