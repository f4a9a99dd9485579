"""relground.ops.self_taught_targets against torchvision (box_iou + BoxCoder) and a float64 Python loop."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder

import relground
from relground.ops import self_taught_targets
from tests.ops._hypothesis import given, settings, st  # skips only the property tests without it
from tests.ops.op_tester import OpTester, SampleInput, assert_outputs_close
from tests.ops.test_pairwise_iou import iou_float64, random_boxes
from tests.ops.test_topk_select import random_valid
from tests.utils import cpu_and_cuda

needs_ops = pytest.mark.skipif(not relground.HAS_OPS, reason="native extension relground._C not built")
ALL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def self_taught_targets_loop(boxes, scores, iou_threshold=0.6, score_gap=0.1, weights=WEIGHTS, valid=None):
    """float64 Python loop over images, phrases and proposals, following the op's documented definition."""
    B, P, M = scores.shape
    bx, sc = boxes.double().cpu().tolist(), scores.double().cpu().tolist()
    deltas = torch.zeros(B, P, M, 4, dtype=torch.float64)
    selected = torch.zeros(B, P, M, dtype=torch.bool)
    weight = torch.zeros(B, P, M, dtype=torch.float64)
    anchor = torch.full((B, P), -1, dtype=torch.long)
    wx, wy, ww, wh = weights
    for b in range(B):
        real = [m for m in range(M) if valid is None or bool(valid[b, m])]
        for p in range(P):
            if not real:
                continue
            a = min(real, key=lambda m: (not math.isnan(sc[b][p][m]), -sc[b][p][m], m))  # first argmax, NaN wins
            anchor[b, p] = a
            gx1, gy1, gx2, gy2 = bx[b][a]
            for m in real:
                if m == a or bx[b][m] == bx[b][a] or iou_float64(bx[b][a], bx[b][m]) < iou_threshold:
                    continue
                ex1, ey1, ex2, ey2 = bx[b][m]
                ew, eh, gw, gh = ex2 - ex1, ey2 - ey1, gx2 - gx1, gy2 - gy1
                selected[b, p, m] = True
                deltas[b, p, m] = torch.tensor([
                    wx * ((gx1 + 0.5 * gw) - (ex1 + 0.5 * ew)) / ew,
                    wy * ((gy1 + 0.5 * gh) - (ey1 + 0.5 * eh)) / eh,
                    ww * math.log(gw / ew),
                    wh * math.log(gh / eh),
                ], dtype=torch.float64)
                weight[b, p, m] = float(sc[b][p][a] - sc[b][p][m] >= score_gap)
    return deltas, selected, weight, anchor


def clustered_boxes(B, M, dtype=torch.float32, device="cpu", seed=0, contiguous=True):
    """Boxes [B, M, 4] that jitter around 3 centres per image, so many pairs pass IoU 0.6; some exact duplicates."""
    g = torch.Generator().manual_seed(seed)
    centres = random_boxes(B, 3, dtype=torch.float64, seed=seed) * 2 + 10  # sides >= 2
    pick = torch.randint(0, 3, (B, M), generator=g)
    boxes = torch.gather(centres, 1, pick[..., None].expand(B, M, 4))
    boxes = boxes + torch.randn(B, M, 4, generator=g, dtype=torch.float64) * 3
    boxes[..., 2:] = torch.maximum(boxes[..., 2:], boxes[..., :2] + 1)
    if M >= 4:
        boxes[:, 3] = boxes[:, 0]  # identical boxes: never selected against each other
    boxes = boxes.to(dtype=dtype, device=device)
    if not contiguous:
        boxes = boxes.transpose(-1, -2).contiguous().transpose(-1, -2)
    return boxes


def random_attention(B, P, M, dtype=torch.float32, device="cpu", seed=0, contiguous=True):
    g = torch.Generator().manual_seed(seed + 1)
    scores = torch.rand(B, P, M, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    return scores if contiguous else scores.transpose(1, 2).contiguous().transpose(1, 2)


class TestSelfTaughtTargets(OpTester):
    dtypes = ALL_DTYPES
    op = torch.ops.relground.self_taught_targets.default if relground.HAS_OPS else None

    def fn(self, *args, **kwargs):
        return self_taught_targets(*args, **kwargs)

    def reference_fn(self, *args, **kwargs):
        return self_taught_targets_loop(*args, **kwargs)

    def op_inputs(self, sample):
        boxes, scores = sample.args
        kw = {"iou_threshold": 0.6, "score_gap": 0.1, "weights": WEIGHTS, "valid": None, **sample.kwargs}
        return (boxes, scores, kw["iou_threshold"], kw["score_gap"], list(kw["weights"]), kw["valid"]), {}

    def sample_inputs(self, device, dtype):
        for seed in (0, 1):
            yield SampleInput((clustered_boxes(3, 12, dtype, device, seed), random_attention(3, 4, 12, dtype, device,
                                                                                             seed)),
                              {"valid": random_valid(3, 12, device, seed, min_valid=1)}, name=f"padded-{seed}")
        yield SampleInput((clustered_boxes(2, 9, dtype, device, 2, contiguous=False),
                           random_attention(2, 3, 9, dtype, device, 2, contiguous=False)),
                          {"iou_threshold": 0.5, "score_gap": 0.05, "weights": (1.0, 2.0, 3.0, 4.0)},
                          name="non-contiguous, other parameters")
        yield SampleInput((clustered_boxes(2, 1, dtype, device, 3), random_attention(2, 2, 1, dtype, device, 3)),
                          name="one proposal")
        yield SampleInput((clustered_boxes(2, 5, dtype, device, 4), random_attention(2, 3, 5, dtype, device, 4)),
                          {"valid": torch.tensor([[False] * 5, [True] * 5], device=device)}, name="image without boxes")
        yield SampleInput((clustered_boxes(2, 0, dtype, device), random_attention(2, 3, 0, dtype, device)), name="M=0")
        yield SampleInput((clustered_boxes(2, 4, dtype, device), random_attention(2, 0, 4, dtype, device)), name="P=0")


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("seed", (0, 1, 2))
def test_matches_torchvision_per_image_loop(device, dtype, seed):
    B, P, M = 3, 4, 15
    boxes = clustered_boxes(B, M, dtype, device, seed)
    scores = random_attention(B, P, M, dtype, device, seed)
    valid = random_valid(B, M, device, seed, min_valid=1)
    deltas, selected, weight, anchor = self_taught_targets(boxes, scores, valid=valid)
    coder = BoxCoder(WEIGHTS)
    for b in range(B):
        for p in range(P):
            a = int(torch.argmax(scores[b, p].masked_fill(~valid[b], -math.inf)))
            assert anchor[b, p] == a
            anchor_box = boxes[b, a]
            iou = torchvision.ops.box_iou(anchor_box[None], boxes[b])[0]  # [M]
            identical = (boxes[b] == anchor_box).all(-1)
            expected_selected = (iou >= 0.6) & valid[b] & ~identical
            expected_selected[a] = False
            assert torch.equal(selected[b, p], expected_selected)
            expected_deltas = coder.encode_single(anchor_box.expand(M, 4), boxes[b])  # [M, 4]
            assert_outputs_close(deltas[b, p][expected_selected], expected_deltas[expected_selected])
            assert deltas[b, p][~expected_selected].eq(0).all()
            gap_ok = scores[b, p, a] - scores[b, p] >= 0.1
            assert torch.equal(weight[b, p], (expected_selected & gap_ok).to(dtype))
    assert selected.any() and (selected & (weight == 0)).any() and (weight == 1).any()  # all branches hit


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_identical_boxes_and_score_gap_boundary(device):
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0],   # anchor
                           [0.0, 0.0, 10.0, 10.0],   # identical to the anchor: excluded
                           [0.0, 0.0, 10.0, 11.0],   # IoU 10/11, gap exactly 0.25 -> weight 1
                           [0.0, 0.0, 11.0, 10.0],   # IoU 10/11, gap 0.125 < 0.25 -> weight 0
                           [0.0, 0.0, 10.0, 20.0]]], device=device)  # IoU 0.5 < 0.6: not selected
    scores = torch.tensor([[[1.0, 0.5, 0.75, 0.875, 0.0]]], device=device)  # binary fractions: exact gaps
    deltas, selected, weight, anchor = self_taught_targets(boxes, scores, score_gap=0.25)
    assert anchor.tolist() == [[0]]
    assert selected.tolist() == [[[False, False, True, True, False]]]
    assert weight.tolist() == [[[0.0, 0.0, 1.0, 0.0, 0.0]]]
    expected = BoxCoder(WEIGHTS).encode_single(boxes[0, :1].expand(2, 4), boxes[0, 2:4])
    assert_outputs_close(deltas[0, 0, 2:4], expected)
    _, selected_at_half, _, _ = self_taught_targets(boxes, scores, iou_threshold=0.5)
    assert selected_at_half[0, 0, 4]  # IoU exactly 0.5 passes ">= iou_threshold"


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_ties_go_to_lower_index_and_no_valid_box(device):
    boxes = clustered_boxes(2, 6, device=device)
    scores = torch.zeros(2, 2, 6, device=device)
    scores[:, :, 2] = scores[:, :, 4] = 1.0
    valid = torch.tensor([[True, True, False, True, True, True], [False] * 6], device=device)
    _, selected, weight, anchor = self_taught_targets(boxes, scores, valid=valid)
    assert anchor.tolist() == [[4, 4], [-1, -1]]  # index 2 is invalid, so the tie at 4 wins
    assert not selected[1].any() and not weight[1].any()


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_autocast_runs_in_float32(device):
    boxes, scores = clustered_boxes(2, 8, device=device), random_attention(2, 3, 8, device=device)
    amp_dtype = torch.bfloat16 if device == "cpu" else torch.float16
    with torch.autocast(device, dtype=amp_dtype):
        outputs = self_taught_targets(boxes, scores.to(amp_dtype))  # mixed dtypes are fine under autocast
    assert outputs[0].dtype == outputs[2].dtype == torch.float32
    assert_outputs_close(outputs, self_taught_targets_loop(boxes, scores.to(amp_dtype)))


@needs_ops
def test_torch_compile_fullgraph():
    boxes, scores = clustered_boxes(2, 6), random_attention(2, 2, 6)
    compiled = torch.compile(self_taught_targets, fullgraph=True, backend="aot_eager")
    for actual, expected in zip(compiled(boxes, scores), self_taught_targets(boxes, scores)):
        torch.testing.assert_close(actual, expected, atol=0, rtol=0)


def test_no_gradient_flows():
    boxes = clustered_boxes(1, 5).requires_grad_()
    outputs = self_taught_targets(boxes, random_attention(1, 2, 5).requires_grad_())
    assert not any(t.requires_grad for t in outputs)


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 3), P=st.integers(1, 3), M=st.integers(1, 8), seed=st.integers(0, 2**31 - 1),
       iou_threshold=st.floats(0.3, 0.9), score_gap=st.floats(0.0, 0.5))
def test_property_consistent_and_matches_loop(B, P, M, seed, iou_threshold, score_gap):
    boxes = clustered_boxes(B, M, torch.float64, seed=seed)
    scores = random_attention(B, P, M, torch.float64, seed=seed)
    valid = random_valid(B, M, seed=seed)
    deltas, selected, weight, anchor = self_taught_targets(boxes, scores, iou_threshold, score_gap, valid=valid)
    assert (weight <= selected.double()).all()  # weight only where selected
    assert torch.equal(anchor >= 0, valid.any(1, keepdim=True).expand(B, P))
    real = anchor.clamp(min=0)
    assert not torch.gather(selected, 2, real[..., None]).any()  # the anchor never targets itself
    assert_outputs_close((deltas, selected, weight, anchor),
                         self_taught_targets_loop(boxes, scores, iou_threshold, score_gap, valid=valid))


@needs_ops
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"boxes": torch.rand(2, 5)}, "`boxes` must have 3 dimensions"),
        ({"boxes": torch.rand(2, 5, 3)}, "`boxes` must have last dimension 4"),
        ({"scores": torch.rand(2, 3, 4)}, "`scores` must have shape"),
        ({"scores": torch.rand(2, 3, 5, dtype=torch.float64)}, "`scores` has dtype"),
        ({"iou_threshold": 0.0}, r"`iou_threshold` must be in \(0, 1\]"),
        ({"iou_threshold": 1.5}, r"`iou_threshold` must be in \(0, 1\]"),
        ({"score_gap": math.nan}, "`score_gap` must be finite"),
        ({"weights": (1.0, 1.0, 1.0)}, "`weights` must have 4 values"),
        ({"valid": torch.ones(2, 5)}, "`valid` must be a bool tensor"),
        ({"valid": torch.ones(2, 4, dtype=torch.bool)}, r"`valid` must have shape \[B, M\]"),
        ({"boxes": torch.tensor([[[0, 0, 1, math.inf]] * 5] * 2)}, r"`boxes` must be finite, got inf at boxes\[0, 0, 3\]"),
    ],
)
def test_bad_input_errors(kwargs, match):
    args = {"boxes": clustered_boxes(2, 5), "scores": random_attention(2, 3, 5), **kwargs}
    with pytest.raises(RuntimeError, match=match):
        self_taught_targets(**args)


def test_non_finite_padding_boxes_are_allowed():
    boxes = clustered_boxes(1, 4)
    boxes[0, 3] = math.nan  # padding
    valid = torch.tensor([[True, True, True, False]])
    _, selected, _, _ = self_taught_targets(boxes, random_attention(1, 2, 4), valid=valid)
    assert not selected[..., 3].any()


@needs_ops
@pytest.mark.needs_cuda
def test_device_mismatch_error():
    with pytest.raises(RuntimeError, match="`scores` is on"):
        self_taught_targets(clustered_boxes(1, 3, device="cuda"), random_attention(1, 1, 3))
