import math

import pytest
import torch

from relground.losses import self_taught_regression_loss
from relground.ops import _reference

TARGETS = _reference._self_taught_targets_reference


def _encode(anchor, box, weights=(10.0, 10.0, 5.0, 5.0)):
    wx, wy, ww, wh = weights
    bw, bh = box[2] - box[0], box[3] - box[1]
    aw, ah = anchor[2] - anchor[0], anchor[3] - anchor[1]
    return [
        wx * ((anchor[0] + aw / 2) - (box[0] + bw / 2)) / bw,
        wy * ((anchor[1] + ah / 2) - (box[1] + bh / 2)) / bh,
        ww * math.log(aw / bw),
        wh * math.log(ah / bh),
    ]


def _smooth_l1(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def test_zero_when_no_neighbour_passes_the_threshold():
    boxes = torch.tensor(
        [[[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [5.0, 5.0, 15.0, 15.0]]], dtype=torch.float64
    )
    attention = torch.tensor([[[0.7, 0.2, 0.1]]], dtype=torch.float64)
    deltas = torch.randn(1, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    loss = self_taught_regression_loss(deltas, boxes, attention, torch.ones(1, 3, dtype=torch.bool), TARGETS)
    assert loss.item() == 0.0  # IoU(anchor, box 2) = 25 / 175 < 0.6
    loss.backward()
    assert torch.equal(deltas.grad, torch.zeros_like(deltas))


def test_matches_a_loop_with_weights_and_zero_weighted_entries():
    boxes = torch.tensor(
        [[[0.0, 0.0, 10.0, 10.0], [0.5, 0.0, 10.5, 10.0], [0.0, 0.5, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]]],
        dtype=torch.float64,
    )
    attention = torch.tensor([[[0.5, 0.3, 0.45, 0.05]]], dtype=torch.float64)  # box 2 is within 0.1: weight 0
    deltas = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    loss = self_taught_regression_loss(deltas, boxes, attention, torch.ones(1, 4, dtype=torch.bool), TARGETS)
    target = _encode(boxes[0, 0].tolist(), boxes[0, 1].tolist())
    expected = sum(_smooth_l1(deltas[0, 0, 1, c].item() - target[c]) for c in range(4)) / (2 * 4)  # 2 selected
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_invalid_phrases_do_not_count():
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.5, 0.0, 10.5, 10.0]]], dtype=torch.float64)
    attention = torch.tensor([[[0.9, 0.1], [0.9, 0.1]]], dtype=torch.float64)
    deltas = torch.zeros(1, 2, 2, 4, dtype=torch.float64)
    deltas[0, 1] = 100.0  # the invalid phrase's deltas are far off
    valid = torch.ones(1, 2, dtype=torch.bool)
    only_first = self_taught_regression_loss(
        deltas, boxes, attention, valid, TARGETS, phrase_valid=torch.tensor([[True, False]])
    )
    first = self_taught_regression_loss(deltas[:, :1], boxes, attention[:, :1], valid, TARGETS)
    assert only_first.item() == pytest.approx(first.item()) and first.item() > 0
