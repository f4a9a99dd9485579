"""relground.ops.pairwise_iou against torchvision.ops.box_iou and a float64 Python loop."""
from __future__ import annotations

import pytest
import torch
import torchvision

import relground
from relground.ops import pairwise_iou
from tests.ops._hypothesis import given, settings, st  # skips only the property tests without it
from tests.ops.op_tester import OpTester, SampleInput, assert_outputs_close
from tests.utils import cpu_and_cuda

needs_ops = pytest.mark.skipif(not relground.HAS_OPS, reason="native extension relground._C not built")
ALL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def random_boxes(*shape: int, dtype=torch.float32, device="cpu", seed: int = 0, contiguous: bool = True):
    """Boxes [*shape, 4], xyxy in a 100-pixel image with sides 1..60; non-contiguous when asked (same values)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(*shape, 2, generator=g, dtype=torch.float64) * 60
    wh = 1 + torch.rand(*shape, 2, generator=g, dtype=torch.float64) * 59
    boxes = torch.cat((xy, xy + wh), dim=-1).to(dtype=dtype, device=device)
    if not contiguous:  # same values, coordinates stored planar: stride 1 along the boxes, not the coordinates
        boxes = boxes.transpose(-1, -2).contiguous().transpose(-1, -2)
        assert not boxes.is_contiguous()
    return boxes


def iou_float64(a, b) -> float:
    """IoU of two xyxy boxes in float64 Python arithmetic; zero-area boxes clamp to 0, empty union -> 0."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    area_a = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)
    area_b = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def pairwise_iou_loop(boxes1, boxes2):
    """float64 Python loop over images and pairs; 2-D in, 2-D out like the op."""
    squeeze = boxes1.dim() == 2
    b1 = (boxes1[None] if squeeze else boxes1).double().cpu().tolist()
    b2 = (boxes2[None] if squeeze else boxes2).double().cpu().tolist()
    out = torch.tensor(
        [[[iou_float64(x, y) for y in image2] for x in image1] for image1, image2 in zip(b1, b2)], dtype=torch.float64
    ).reshape(len(b1), len(b1[0]) if b1 else 0, len(b2[0]) if b2 else 0)
    return out[0] if squeeze else out


class TestPairwiseIoU(OpTester):
    dtypes = ALL_DTYPES
    op = torch.ops.relground.pairwise_iou.default if relground.HAS_OPS else None

    def fn(self, boxes1, boxes2):
        return pairwise_iou(boxes1, boxes2)

    def reference_fn(self, boxes1, boxes2):
        return pairwise_iou_loop(boxes1, boxes2)

    def op_inputs(self, sample):
        boxes1, boxes2 = sample.args
        if boxes1.dim() == 2:  # the op itself is batched only; the wrapper adds the batch dim
            boxes1, boxes2 = boxes1[None], boxes2[None]
        return (boxes1, boxes2), {}

    def sample_inputs(self, device, dtype):
        for seed in (0, 1):
            yield SampleInput((random_boxes(3, 5, dtype=dtype, device=device, seed=seed),
                               random_boxes(3, 7, dtype=dtype, device=device, seed=seed + 10)), name=f"batched-{seed}")
        yield SampleInput((random_boxes(2, 4, dtype=dtype, device=device, seed=2, contiguous=False),
                           random_boxes(2, 6, dtype=dtype, device=device, seed=3, contiguous=False)),
                          name="non-contiguous")
        yield SampleInput((random_boxes(6, dtype=dtype, device=device, seed=4),
                           random_boxes(3, dtype=dtype, device=device, seed=5)), name="2-D")
        degenerate = torch.tensor([[[0, 0, 0, 0], [5, 5, 5, 9], [3, 3, 1, 1], [0, 0, 4, 4]]], dtype=dtype, device=device)
        yield SampleInput((degenerate, degenerate), name="degenerate")
        yield SampleInput((random_boxes(2, 0, dtype=dtype, device=device), random_boxes(2, 3, dtype=dtype,
                                                                                        device=device)), name="N=0")
        yield SampleInput((random_boxes(2, 3, dtype=dtype, device=device), random_boxes(2, 0, dtype=dtype,
                                                                                        device=device)), name="M=0")


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("seed", (0, 1, 2))
def test_matches_torchvision_box_iou(device, dtype, seed):
    boxes1 = random_boxes(4, 9, dtype=dtype, device=device, seed=seed)
    boxes2 = random_boxes(4, 11, dtype=dtype, device=device, seed=seed + 100)
    iou = pairwise_iou(boxes1, boxes2)  # [4, 9, 11]
    expected = torch.stack([torchvision.ops.box_iou(b1, b2) for b1, b2 in zip(boxes1, boxes2)])
    assert iou.shape == (4, 9, 11) and iou.dtype == dtype
    assert_outputs_close(iou, expected, "vs torchvision.ops.box_iou")
    assert (iou > 0).any()  # the sample has real overlaps, so the comparison means something


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_zero_area_boxes_give_zero_not_nan(device):
    boxes = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 1.0, 5.0], [0.0, 0.0, 3.0, 3.0]],
                         device=device)
    iou = pairwise_iou(boxes, boxes)  # [4, 4]
    assert not iou.isnan().any()
    assert iou[:3, :3].eq(0).all()  # zero-area vs zero-area, including a box with itself
    assert iou[3, 3] == 1
    assert torchvision.ops.box_iou(boxes, boxes)[:3, :3].isnan().all()  # what the op improves on


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_autocast_runs_in_float32(device):
    boxes1 = random_boxes(2, 5, device=device, seed=0)
    boxes2 = random_boxes(2, 4, device=device, seed=1)
    amp_dtype = torch.bfloat16 if device == "cpu" else torch.float16
    with torch.autocast(device, dtype=amp_dtype):
        iou = pairwise_iou(boxes1.to(amp_dtype), boxes2)
    assert iou.dtype == torch.float32
    assert_outputs_close(iou, pairwise_iou_loop(boxes1.to(amp_dtype), boxes2))


@needs_ops
def test_torch_compile_fullgraph():
    boxes1, boxes2 = random_boxes(2, 3, seed=0), random_boxes(2, 4, seed=1)
    compiled = torch.compile(pairwise_iou, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(boxes1, boxes2), pairwise_iou(boxes1, boxes2), atol=0, rtol=0)


def test_no_gradient_flows():
    boxes1 = random_boxes(1, 3, seed=0).requires_grad_()
    iou = pairwise_iou(boxes1, random_boxes(1, 2, seed=1))
    assert not iou.requires_grad


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 5), m=st.integers(0, 5), seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from(
    (torch.float32, torch.float64)))
def test_property_symmetric_bounded_and_matches_loop(n, m, seed, dtype):
    boxes1 = random_boxes(2, n, dtype=dtype, seed=seed)
    boxes2 = random_boxes(2, m, dtype=dtype, seed=seed + 1)
    iou = pairwise_iou(boxes1, boxes2)
    assert iou.shape == (2, n, m)
    assert ((iou >= 0) & (iou <= 1)).all()
    torch.testing.assert_close(pairwise_iou(boxes2, boxes1), iou.transpose(1, 2), atol=0, rtol=0)
    torch.testing.assert_close(torch.diagonal(pairwise_iou(boxes1, boxes1), dim1=1, dim2=2),
                               torch.ones(2, n, dtype=dtype))  # every sampled box has positive area
    assert_outputs_close(iou, pairwise_iou_loop(boxes1, boxes2))


@needs_ops
@pytest.mark.parametrize(
    "boxes1, boxes2, error, match",
    [
        (torch.rand(2, 3, 4), torch.rand(3, 4), ValueError, "both be"),
        (torch.rand(2, 3, 5), torch.rand(2, 3, 4), RuntimeError, "`boxes1` must have last dimension 4"),
        (torch.rand(2, 3, 4), torch.rand(2, 3, 3), RuntimeError, "`boxes2` must have last dimension 4"),
        (torch.rand(2, 3, 4), torch.rand(3, 3, 4), RuntimeError, "same batch size"),
        (torch.rand(2, 3, 4), torch.rand(2, 3, 4, dtype=torch.float64), RuntimeError, "`boxes2` has dtype"),
        (torch.randint(0, 5, (2, 3, 4)), torch.randint(0, 5, (2, 3, 4)), RuntimeError, "`boxes1` must be a floating"),
        (torch.rand(1, 2, 3, 4), torch.rand(1, 2, 3, 4), ValueError, "both be"),
    ],
)
def test_bad_input_errors(boxes1, boxes2, error, match):
    with pytest.raises(error, match=match):
        pairwise_iou(boxes1, boxes2)


@needs_ops
@pytest.mark.needs_cuda
def test_device_mismatch_error():
    with pytest.raises(RuntimeError, match="`boxes1` is on"):
        pairwise_iou(torch.rand(1, 2, 4, device="cuda"), torch.rand(1, 2, 4))
