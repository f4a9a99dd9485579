"""The one Python-side IoU (relground.structures.boxes): torchvision's numbers, the kernels' rule."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou as tv_box_iou

from relground.extension import HAS_OPS
from relground.structures.boxes import box_area, box_iou, box_iou_single


def _random_boxes(gen: torch.Generator, n: int, dtype=torch.float64) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 100
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 40 + 0.5
    return torch.cat([xy, xy + wh], dim=1).to(dtype)  # [n, 4] valid xyxy


def test_equals_torchvision_bit_for_bit_on_valid_boxes():
    gen = torch.Generator().manual_seed(0)
    a, b = _random_boxes(gen, 50), _random_boxes(gen, 70)
    assert torch.equal(box_iou(a, b), tv_box_iou(a, b))  # float64: identical, not merely close


def test_batched_and_2d_agree():
    gen = torch.Generator().manual_seed(1)
    a, b = _random_boxes(gen, 3 * 5).reshape(3, 5, 4), _random_boxes(gen, 3 * 4).reshape(3, 4, 4)
    out = box_iou(a, b)
    assert out.shape == (3, 5, 4)
    for i in range(3):
        assert torch.equal(out[i], box_iou(a[i], b[i]))


def test_empty_union_inverted_and_nan_give_zero():
    zero = torch.tensor([[5.0, 5.0, 5.0, 5.0]], dtype=torch.float64)
    assert box_iou(zero, zero).item() == 0.0  # torchvision gives NaN here
    inverted = torch.tensor([[10.0, 0.0, 0.0, 10.0]], dtype=torch.float64)  # x2 < x1: area 0
    assert box_area(inverted).item() == 0.0
    assert box_iou(inverted, torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=torch.float64)).item() == 0.0
    nan = torch.tensor([[float("nan"), 0.0, 1.0, 1.0]], dtype=torch.float64)
    assert box_iou(nan, torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)).item() == 0.0


def test_single_pair_matches_the_tensor_version_exactly():
    gen = torch.Generator().manual_seed(2)
    a, b = _random_boxes(gen, 40), _random_boxes(gen, 40)
    full = box_iou(a, b)
    for i in range(40):
        for j in range(40):
            assert box_iou_single(a[i].numpy(), b[j].numpy()) == full[i, j].item()
    assert box_iou_single([0, 0, 2, 2], (1, 0, 3, 2)) == pytest.approx(2 / 6)
    assert box_iou_single(np.array([5.0, 5, 5, 5]), np.array([5.0, 5, 5, 5])) == 0.0
    assert box_iou_single([10.0, 0, 0, 10], [0.0, 0, 10, 10]) == 0.0
    assert box_iou_single([float("nan"), 0, 1, 1], [0.0, 0, 1, 1]) == 0.0


@pytest.mark.skipif(not HAS_OPS, reason="relground._C not built")
def test_same_numbers_as_the_native_kernel():
    gen = torch.Generator().manual_seed(3)
    a, b = _random_boxes(gen, 2 * 30).reshape(2, 30, 4), _random_boxes(gen, 2 * 20).reshape(2, 20, 4)
    assert torch.equal(box_iou(a, b), torch.ops.relground.pairwise_iou(a, b))
