"""``roi_align_avg``: RoIAlign followed by the mean over its bins, fused into one C-vector per box.

Native kernels: ``csrc/cpu/roi_align_avg_cpu.cpp`` and ``kernels/roi_align_avg_cuda.cu``; schema in
``csrc/ops/roi_align_avg.cpp``. This module adds the fake (meta) kernels, the autograd formula and the
autocast rule, and falls back to ``relground.ops._reference._roi_align_avg_reference`` when the
extension is not built.
"""
from __future__ import annotations

import torch
from torch import Tensor

from relground.extension import HAS_OPS
from relground.ops._reference import _roi_align_avg_reference, check_same_device

__all__ = ["roi_align_avg"]


def roi_align_avg(
    input: Tensor,
    rois: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> Tensor:
    """Average of torchvision's RoIAlign over its ``P x P`` bins, one feature vector per box.

    Equal to ``torchvision.ops.roi_align(input, rois, output_size, spatial_scale, sampling_ratio,
    aligned).mean((2, 3))`` but it never builds the ``[K, C, P, P]`` tensor: the bilinear sample
    weights of one box are separable, so the mean is ``sum_y sum_x Wy[y] Wx[x] input[n, :, y, x]``
    with per-box 1-D weights ``Wy``, ``Wx``. Reads ``input`` in place when it is channels_last.

    Differentiable w.r.t. ``input`` (not ``rois``); double backward raises. Under ``torch.autocast``
    (CPU or CUDA) the op runs in **float32**: ``input`` and ``rois`` are cast to float32 and the
    output is float32, as torchvision does for ``roi_align`` (box coordinates in half precision
    would be off by pixels). float16 and bfloat16 inputs outside autocast are supported and
    accumulate in float32. The CUDA backward uses atomics; with
    ``torch.use_deterministic_algorithms(True)`` CUDA inputs take the reference path instead.

    Args:
        input (Tensor[N, C, H, W]): feature maps, float32/float64/float16/bfloat16, contiguous or
            channels_last.
        rois (Tensor[K, 5] or list[Tensor[L_i, 4]]): boxes ``(batch_index, x1, y1, x2, y2)`` in input-image
            pixels (same dtype and device as ``input``), or one ``[L_i, 4]`` xyxy tensor per image.
        output_size (int or tuple[int, int]): the RoIAlign grid ``P`` (or ``(P_h, P_w)``) whose bins
            are averaged.
        spatial_scale (float): feature-map pixels per input pixel, e.g. 1/16 for stride 16. Default 1.0.
        sampling_ratio (int): samples per bin along each axis; ``<= 0`` means adaptive,
            ``ceil(roi_size / P)`` per box. Default -1.
        aligned (bool): shift boxes by -0.5 pixel (pixel-centre model). ``False`` reproduces the legacy
            RoIAlign, which also forces box sizes >= 1. Default True.

    Returns:
        Tensor[K, C]: mean RoIAlign feature of each box, in ``input``'s dtype (float32 under autocast).

    Raises:
        RuntimeError: wrong rank/shape, dtype or device mismatch, NaN/inf in ``rois``, or a batch
            index outside ``[0, N)``; the message names the argument.

    Example::

        >>> features = torch.arange(16.0).reshape(1, 1, 4, 4)  # one 4x4 map, values 0..15
        >>> rois = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]])  # the whole map
        >>> roi_align_avg(features, rois, output_size=2, spatial_scale=1.0, sampling_ratio=2)
        tensor([[7.5000]])
    """
    if isinstance(rois, (list, tuple)):  # one [L_i, 4] tensor per image; a Tensor is checked by the op itself
        # torchvision only here: `import relground.ops` loads no third-party module but torch.
        from torchvision.ops._utils import check_roi_boxes_shape, convert_boxes_to_roi_format

        _check_box_list(rois, input)
        check_roi_boxes_shape(rois)
        rois = convert_boxes_to_roi_format(rois)
    check_same_device("roi_align_avg", input=input, rois=rois)
    pooled_height, pooled_width = (output_size, output_size) if isinstance(output_size, int) else output_size
    if not HAS_OPS or (input.is_cuda and torch.are_deterministic_algorithms_enabled()):
        output_hw = (pooled_height, pooled_width)
        return _roi_align_avg_reference(input, rois, output_hw, spatial_scale, sampling_ratio, aligned)
    return torch.ops.relground.roi_align_avg(
        input, rois, pooled_height, pooled_width, float(spatial_scale), int(sampling_ratio), bool(aligned)
    )


def _check_box_list(rois, input: Tensor) -> None:
    """A per-image box list must give one Tensor[L_i, 4] for each of ``input``'s N images, at least one (an empty
    list would reach ``torch.cat``; more lists than images would point past the batch)."""
    n = input.shape[0] if isinstance(input, Tensor) and input.dim() == 4 else None
    if len(rois) == 0:
        raise ValueError("relground.ops.roi_align_avg: `rois` is an empty list; pass one Tensor[L_i, 4] of boxes per "
                         f"image of `input` ({'N=' + str(n) if n is not None else 'N'} of them, L_i may be 0), or a "
                         "Tensor[K, 5] (K may be 0)")
    bad = next((i for i, boxes in enumerate(rois) if not isinstance(boxes, Tensor)), None)
    if bad is not None:
        raise ValueError(f"relground.ops.roi_align_avg: `rois[{bad}]` is a {type(rois[bad]).__name__}, expected a "
                         "Tensor[L_i, 4] of boxes")
    if n is not None and len(rois) > n:
        raise ValueError(f"relground.ops.roi_align_avg: `rois` has {len(rois)} box lists but `input` holds {n} "
                         "image(s); pass one list per image")


def _is_channels_last(input: Tensor) -> bool:
    # Same rule as the C++ host functions: the kernels read channels_last storage in place.
    return input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous()


if HAS_OPS:

    @torch.library.register_fake("relground::roi_align_avg")
    def _roi_align_avg_fake(input, rois, pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned):
        check_same_device("roi_align_avg", input=input, rois=rois)
        torch._check(input.dim() == 4, lambda: f"roi_align_avg: `input` must be 4-D, got {tuple(input.shape)}")
        torch._check(rois.dim() == 2 and rois.shape[1] == 5, lambda: "roi_align_avg: `rois` must be [K, 5]")
        torch._check(input.dtype == rois.dtype, lambda: "roi_align_avg: `input` and `rois` dtypes differ")
        return input.new_empty((rois.shape[0], input.shape[1]))  # [K, C]

    @torch.library.register_fake("relground::_roi_align_avg_backward")
    def _roi_align_avg_backward_fake(
        grad, rois, pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned,
        batch_size, channels, height, width, channels_last,
    ):  # fmt: skip
        check_same_device("_roi_align_avg_backward", grad=grad, rois=rois)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        return grad.new_empty((batch_size, channels, height, width), memory_format=memory_format)

    def _setup_context(ctx, inputs, output):
        input, rois, pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned = inputs
        ctx.save_for_backward(rois)
        ctx.args = (pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned)
        ctx.input_shape = input.shape
        ctx.channels_last = _is_channels_last(input)

    def _backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        batch_size, channels, height, width = ctx.input_shape
        grad_input = torch.ops.relground._roi_align_avg_backward(
            grad, rois, *ctx.args, batch_size, channels, height, width, ctx.channels_last
        )
        return grad_input, None, None, None, None, None, None

    def _double_backward(ctx, grad):
        raise RuntimeError("relground.ops.roi_align_avg: double backward is not supported")

    def _setup_backward_context(ctx, inputs, output):
        pass

    torch.library.register_autograd("relground::roi_align_avg", _backward, setup_context=_setup_context)
    torch.library.register_autograd(
        "relground::_roi_align_avg_backward", _double_backward, setup_context=_setup_backward_context
    )
    # float32 under autocast, as torchvision's roi_align: half-precision box coordinates lose pixels.
    for _device_type in ("cpu", "cuda"):
        torch.library.register_autocast("relground::roi_align_avg", _device_type, torch.float32)
