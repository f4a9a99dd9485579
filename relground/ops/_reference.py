"""Readable pure-PyTorch references of the native ops.

Used twice: as the fallback when ``relground._C`` is missing (or a model runs with
``model.native_ops=False``), and as the oracle in ``tests/ops``. They favour clarity over speed.
"""
from __future__ import annotations

import torch
from torch import Tensor

from relground.structures.boxes import box_iou


def check_same_device(op: str, **tensors: Tensor | None) -> None:
    """Raise ``RuntimeError`` naming the argument when the tensor arguments of ``op`` are not on one device.

    Checked in Python before dispatch: a ``meta`` tensor among CPU/CUDA ones sends the call to the fake
    kernel, which would return uninitialised memory on the other device instead of reaching the C++ checks.
    ``None`` (an omitted optional tensor) is skipped.

    Example:
        >>> check_same_device("topk_select", scores=torch.zeros(1, 2), valid=torch.zeros(1, 2, device="meta"))
        Traceback (most recent call last):
        RuntimeError: relground.ops.topk_select: `valid` is on meta but `scores` is on cpu; move both to the same device
    """
    first_name, first = None, None
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if first is None:
            first_name, first = name, tensor
        elif tensor.device != first.device:
            raise RuntimeError(
                f"relground.ops.{op}: `{name}` is on {tensor.device} but `{first_name}` is on {first.device}; "
                "move both to the same device"
            )


def _roi_align_avg_reference(
    input: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int = -1, aligned: bool = True
) -> Tensor:
    """torchvision RoIAlign at ``output_size`` x ``output_size`` followed by a spatial mean -> [K, C]."""
    import torchvision  # here, not at the top: `import relground.ops` loads no third-party module but torch

    compute_dtype = input.dtype if input.dtype in (torch.float32, torch.float64) else torch.float32
    pooled = torchvision.ops.roi_align(
        input.to(compute_dtype), rois.to(compute_dtype), output_size, spatial_scale, sampling_ratio, aligned
    )  # [K, C, P, P]
    return pooled.mean((2, 3)).to(input.dtype)


def _pairwise_iou_reference(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair, batched: [B, N, 4] x [B, M, 4] -> [B, N, M] (2-D in, 2-D out).

    xyxy boxes, no +1 in widths; a pair whose union is empty (zero-area boxes) gets IoU 0. The one Python
    IoU of relground, :func:`relground.structures.boxes.box_iou`.
    """
    return box_iou(boxes1, boxes2)


def _topk_select_reference(scores: Tensor, k: int, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Top-k per row of ``scores`` [R, M] among ``valid`` entries; ties to the lower index.

    Slots beyond a row's number of valid entries get index -1 and value -inf.
    """
    # Two stable sorts: by score (NaN first, as torch.topk), then valid before padding, so a valid entry
    # scoring -inf still ranks above the padding and equal scores keep index order.
    _, order = torch.sort(scores, dim=1, descending=True, stable=True)
    if valid is not None:
        _, by_valid = torch.sort(torch.gather(valid, 1, order).to(torch.uint8), dim=1, descending=True, stable=True)
        order = torch.gather(order, 1, by_valid)
    indices = order[:, :k].contiguous()
    values = torch.gather(scores, 1, indices)
    if valid is not None:
        slot_valid = torch.gather(valid, 1, indices)
        indices = indices.masked_fill(~slot_valid, -1)
        values = values.masked_fill(~slot_valid, float("-inf"))
    return values, indices


def _encode_boxes(reference: Tensor, proposals: Tensor, weights: tuple[float, float, float, float]) -> Tensor:
    """R-CNN box encoding of ``reference`` relative to ``proposals`` (torchvision BoxCoder.encode_single)."""
    wx, wy, ww, wh = weights
    ex_w = proposals[..., 2] - proposals[..., 0]
    ex_h = proposals[..., 3] - proposals[..., 1]
    ex_x = proposals[..., 0] + 0.5 * ex_w
    ex_y = proposals[..., 1] + 0.5 * ex_h
    gt_w = reference[..., 2] - reference[..., 0]
    gt_h = reference[..., 3] - reference[..., 1]
    gt_x = reference[..., 0] + 0.5 * gt_w
    gt_y = reference[..., 1] + 0.5 * gt_h
    return torch.stack(
        (wx * (gt_x - ex_x) / ex_w, wy * (gt_y - ex_y) / ex_h, ww * torch.log(gt_w / ex_w), wh * torch.log(gt_h / ex_h)),
        dim=-1,
    )


@torch.no_grad()
def _self_taught_targets_reference(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.6,
    score_gap: float = 0.1,
    weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Self-taught regression targets (paper Sec. 3.3), see ``relground.ops.self_taught_targets``.

    boxes [B, M, 4], scores [B, P, M] -> deltas [B, P, M, 4], selected [B, P, M] bool,
    weight [B, P, M] (scores dtype), anchor [B, P] int64 (-1 when an image has no valid box).
    """
    B, P, M = scores.shape
    out_dtype = scores.dtype
    if boxes.dtype in (torch.float16, torch.bfloat16):  # compute reduced precision in float, as the kernels do
        boxes, scores = boxes.float(), scores.float()
    if valid is None:
        valid = torch.ones(B, M, dtype=torch.bool, device=boxes.device)
    if M > 0:  # anchor = first valid argmax (-1 without a valid box): top-1 of topk_select
        flat_valid = valid[:, None, :].expand(B, P, M).reshape(B * P, M)
        anchor = _topk_select_reference(scores.reshape(B * P, M), 1, flat_valid)[1].reshape(B, P)
    else:
        anchor = torch.full((B, P), -1, dtype=torch.long, device=boxes.device)
    has_valid = anchor >= 0
    safe_anchor = anchor.clamp(min=0)
    anchor_boxes = torch.gather(boxes, 1, safe_anchor[..., None].expand(B, P, 4)) if M > 0 else boxes.new_zeros(B, P, 4)
    iou = _pairwise_iou_reference(anchor_boxes, boxes)  # [B, P, M]
    m_index = torch.arange(M, device=boxes.device)
    identical = (anchor_boxes[:, :, None, :] == boxes[:, None, :, :]).all(-1)
    selected = (
        (iou >= iou_threshold)
        & (m_index[None, None, :] != anchor[..., None])
        & ~identical
        & valid[:, None, :]
        & has_valid[..., None]
    )
    deltas = _encode_boxes(anchor_boxes[:, :, None, :].expand(B, P, M, 4), boxes[:, None].expand(B, P, M, 4), weights)
    deltas = torch.where(selected[..., None], deltas, torch.zeros_like(deltas))
    anchor_score = torch.gather(scores, 2, safe_anchor[..., None])  # [B, P, 1]
    weight = (selected & (anchor_score - scores >= score_gap)).to(out_dtype)
    return deltas.to(out_dtype), selected, weight, anchor
