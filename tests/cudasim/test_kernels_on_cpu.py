"""The CUDA kernels (kernels/*.cu), run by the CPU CUDA-semantics runtime, against the CPU kernels and the op tests'
independent references: every op test's samples, every dtype, forward and backward, both layouts, and shapes that
make each loop of the kernels run several times."""
from __future__ import annotations

import math

import pytest
import torch

import relground
from tests.ops import test_pairwise_iou, test_roi_align_avg, test_self_taught_targets, test_topk_select
from tests.ops.op_tester import assert_outputs_close
from tests.ops.test_pairwise_iou import random_boxes
from tests.ops.test_roi_align_avg import make_input, random_rois, torchvision_roi_align_avg
from tests.ops.test_self_taught_targets import clustered_boxes, random_attention
from tests.ops.test_topk_select import random_scores, random_valid

# The op tests' testers (module attributes, so that pytest does not collect their classes here again).
TESTERS = {
    "topk_select": test_topk_select.TestTopkSelect,
    "self_taught_targets": test_self_taught_targets.TestSelfTaughtTargets,
    "pairwise_iou": test_pairwise_iou.TestPairwiseIoU,
    "roi_align_avg": test_roi_align_avg.TestRoIAlignAvg,
}
# The ops whose CUDA and CPU kernels share their arithmetic (csrc/include/relground/box_math.h, score_order.h) and
# compile without FMA contraction on both (-fmad=false, -ffp-contract=off): bit-identical results. roi_align_avg
# sums in another order (a warp reduction) and is compared with tolerances.
BIT_EXACT = ("topk_select", "self_taught_targets", "pairwise_iou")
CASES = [(name, dtype) for name, cls in TESTERS.items() for dtype in cls.dtypes]
cpu_ops = pytest.mark.skipif(not relground.HAS_OPS, reason="relground._C not built: no CPU twin to compare with")


def _label(dtype):
    return str(dtype).removeprefix("torch.")


def assert_identical(actual, expected, msg):
    if isinstance(actual, (tuple, list)):
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_identical(a, e, f"{msg} [output {i}]")
        return
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, msg
    same = (actual == expected) | (actual != actual) & (expected != expected)
    assert bool(same.all()), f"{msg}: {int((~same).sum())} elements differ"


@pytest.mark.parametrize("name, dtype", CASES, ids=[f"{n}-{_label(d)}" for n, d in CASES])
def test_op_test_samples_match_reference_and_cpu_kernel(cudasim, name, dtype):
    tester = TESTERS[name]()
    samples = list(tester.sample_inputs("cpu", dtype))
    assert samples
    for sample in samples:
        args, kwargs = tester.op_inputs(sample)
        actual = getattr(cudasim, name)(*args, **kwargs)
        expected = tester.reference_fn(*sample.args, **sample.kwargs)
        if isinstance(actual, torch.Tensor):
            expected = expected.reshape(actual.shape)
        assert_outputs_close(actual, expected, f"{name} {sample.name!r}: runtime vs reference")
        if relground.HAS_OPS:
            twin = getattr(torch.ops.relground, name)(*args, **kwargs)
            if name in BIT_EXACT:
                assert_identical(actual, twin, f"{name} {sample.name!r}: runtime vs CPU kernel")
            else:
                assert_outputs_close(actual, twin, f"{name} {sample.name!r}: runtime vs CPU kernel")


BACKWARD_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


@pytest.mark.parametrize("dtype", BACKWARD_DTYPES, ids=_label)
@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "nhwc"))
def test_roi_align_avg_backward_matches_autograd_of_torchvision(cudasim, dtype, channels_last):
    g = torch.Generator().manual_seed(3)
    for aligned, sampling_ratio in ((False, 2), (True, 0), (True, -1)):
        input = make_input(2, 40, 9, 8, g, "cpu", dtype, channels_last)
        rois = torch.tensor([[0, 0.5, 0.5, 6.0, 7.5], [1, -2.0, 1.0, 12.0, 4.0], [1, 3.0, 3.0, 3.0, 3.0],
                             [0, 0.0, 0.0, 8.0, 9.0]], dtype=dtype)
        grad = torch.randn(rois.shape[0], 40, generator=g, dtype=torch.float64).to(dtype)
        args = (grad, rois, 3, 2, 0.9, sampling_ratio, aligned, 2, 40, 9, 8, channels_last)
        actual = cudasim._roi_align_avg_backward(*args)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        assert actual.dtype == dtype and actual.is_contiguous(memory_format=fmt)
        x = input.detach().double().requires_grad_()
        out = torchvision_roi_align_avg(x, rois.double(), (3, 2), 0.9, sampling_ratio, aligned)
        (expected,) = torch.autograd.grad(out, x, grad.double())
        assert_outputs_close(actual, expected, f"aligned={aligned} sr={sampling_ratio}: runtime vs autograd")
        if relground.HAS_OPS:
            assert_outputs_close(actual, torch.ops.relground._roi_align_avg_backward(*args), "runtime vs CPU kernel")


# --- shapes that make every loop run several times ---------------------------------------------------------------


@pytest.fixture
def small_grid(monkeypatch):
    """Lowers the runtime's grid limit to 3 blocks: launches over it must be split (or capped) by the host code."""
    monkeypatch.setenv("CUDASIM_MAX_GRID_X", "3")


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16), ids=_label)
def test_long_rows_and_split_grids(cudasim, small_grid, dtype):
    """topk_select: rows of 1100 (> 256 threads, and > 1024: a block sized by the row would be refused), 7 rows in
    chunks of 3 blocks; pairwise_iou: 3 blocks of 256 threads over 5600 outputs (grid-stride)."""
    scores, valid = random_scores(7, 1100, dtype, "cpu", 3, levels=50), random_valid(7, 1100, "cpu", 3)
    assert_outputs_close(cudasim.topk_select(scores, 37, valid), TESTERS["topk_select"]().reference_fn(scores, 37, valid),
                         "topk_select")
    b1, b2 = random_boxes(2, 70, dtype=dtype, seed=1), random_boxes(2, 40, dtype=dtype, seed=2)
    assert_outputs_close(cudasim.pairwise_iou(b1, b2), TESTERS["pairwise_iou"]().reference_fn(b1, b2), "pairwise_iou")
    if relground.HAS_OPS:
        assert_identical(cudasim.topk_select(scores, 37, None), torch.ops.relground.topk_select(scores, 37, None),
                         "topk_select vs CPU kernel")


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16), ids=_label)
def test_self_taught_targets_long_rows_and_split_grid(cudasim, small_grid, dtype):
    """M = 300 (> 128 threads), B * P = 8 blocks in chunks of 3. (A test of its own: the kernel has __shared__, so
    scripts/sanitize.sh leaves it out of the run with concurrent blocks.)"""
    boxes, attention = clustered_boxes(2, 300, dtype, "cpu", 5), random_attention(2, 4, 300, dtype, "cpu", 5)
    valid = torch.rand(2, 300, generator=torch.Generator().manual_seed(5)) > 0.2
    args = (boxes, attention, 0.3, 0.05, [10.0, 10.0, 5.0, 5.0], valid)
    expected = TESTERS["self_taught_targets"]().reference_fn(boxes, attention, 0.3, 0.05, (10.0, 10.0, 5.0, 5.0), valid)
    assert_outputs_close(cudasim.self_taught_targets(*args), expected, "self_taught_targets")


@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "nhwc"))
def test_roi_align_avg_channel_tiles_wide_rows_many_rois(cudasim, channels_last):
    """3 channel tiles of 8 warps (NCHW, C = 20) or 2 tiles of 256 threads (NHWC, C = 300); rows of 45 pixels
    (> 32 lanes); 130 RoIs: 260 weight threads in 2 blocks."""
    g = torch.Generator().manual_seed(7)
    channels = 300 if channels_last else 20
    input = make_input(2, channels, 12, 45, g, "cpu", torch.float64, channels_last)
    rois = random_rois(130, 2, 12, 45, 0.5, g, "cpu", torch.float64)
    rois[:3] = torch.tensor([[0, 0.0, 0.0, 90.0, 24.0], [1, -4.0, 2.0, 95.0, 20.0], [1, 10.0, 1.0, 80.0, 23.0]])
    actual = cudasim.roi_align_avg(input, rois, 3, 3, 0.5, 2, True)
    expected = torchvision_roi_align_avg(input, rois, (3, 3), 0.5, 2, True)
    assert_outputs_close(actual, expected, "forward")
    grad = torch.randn(130, channels, generator=g, dtype=torch.float64)
    actual = cudasim._roi_align_avg_backward(grad, rois, 3, 3, 0.5, 2, True, 2, channels, 12, 45, channels_last)
    x = input.detach().requires_grad_()
    (expected,) = torch.autograd.grad(torchvision_roi_align_avg(x, rois, (3, 3), 0.5, 2, True), x, grad)
    assert_outputs_close(actual, expected, "backward")


def test_unsplit_grid_over_the_limit_is_refused_by_name(cudasim, small_grid):
    """roi_align_avg's weights launch is not split: 2 * 2000 RoIs need 16 blocks > 3, refused naming the op."""
    input = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    rois = torch.tensor([[0, 0.0, 0.0, 2.0, 2.0]] * 2000, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"relground\.ops\.roi_align_avg: a launch of 16 blocks is outside"):
        cudasim.roi_align_avg(input, rois, 2, 2, 1.0, 2, True)


# --- value checks made on the device -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row, match",
    [
        ([0, 0.0, 0.0, math.nan, 2.0], "`rois` contains NaN or infinite values"),
        ([0, 0.0, -math.inf, 2.0, 2.0], "`rois` contains NaN or infinite values"),
        ([0, 0.0, 0.0, 3e38, 2.0], "overflow once multiplied"),
        ([2, 0.0, 0.0, 2.0, 2.0], r"`rois\[:, 0\]` \(batch index\)"),
        ([-1, 0.0, 0.0, 2.0, 2.0], r"`rois\[:, 0\]` \(batch index\)"),
        ([0.5, 0.0, 0.0, 2.0, 2.0], r"`rois\[:, 0\]` \(batch index\)"),
    ],
)
def test_bad_rois_fail_the_device_side_check(cudasim, row, match):
    input = torch.zeros(2, 3, 4, 4)
    rois = torch.tensor([[1, 0.0, 0.0, 2.0, 2.0], row])
    with pytest.raises(RuntimeError, match="device-side check failed: relground.ops.roi_align_avg: .*" + match):
        cudasim.roi_align_avg(input, rois, 2, 2, 10.0 if "overflow" in match else 1.0, 2, True)
    with pytest.raises(RuntimeError, match="device-side check failed: relground.ops.roi_align_avg: .*" + match):
        cudasim._roi_align_avg_backward(torch.ones(2, 3), rois, 2, 2, 10.0 if "overflow" in match else 1.0, 2, True,
                                        2, 3, 4, 4, False)


def test_self_taught_targets_non_finite_valid_box_fails_the_device_side_check(cudasim):
    boxes, scores = clustered_boxes(2, 5), random_attention(2, 3, 5)
    valid = torch.ones(2, 5, dtype=torch.bool)
    boxes[1, 2, 3] = math.inf
    with pytest.raises(RuntimeError, match=r"device-side check failed: .*`boxes` must be finite \(valid boxes\) \(row 7\)"):
        cudasim.self_taught_targets(boxes, scores, 0.6, 0.1, [10.0, 10.0, 5.0, 5.0], valid)
    valid[1, 2] = False
    cudasim.self_taught_targets(boxes, scores, 0.6, 0.1, [10.0, 10.0, 5.0, 5.0], valid)


# --- on a GPU machine: the runtime against the real CUDA kernels (bench/gpu_check.sh's cudasim_vs_gpu phase) -----


def _to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    return [_to(v, device) for v in value] if isinstance(value, (list, tuple)) else value


@pytest.mark.needs_cuda
@pytest.mark.parametrize("name, dtype", CASES, ids=[f"{n}-{_label(d)}" for n, d in CASES])
def test_runtime_matches_the_gpu(cudasim, name, dtype):
    """The same kernels on the GPU and in the runtime: within the op tests' tolerances (device math, e.g. logf in the
    deltas, rounds apart; roi_align_avg's atomics sum in another order), integer and bool outputs exactly."""
    if not relground.HAS_OPS or not relground.build_info()["cuda_compiled"]:
        pytest.skip("relground._C has no CUDA kernels")
    tester = TESTERS[name]()
    identical = total = 0
    for sample in tester.sample_inputs("cpu", dtype):
        args, kwargs = tester.op_inputs(sample)
        on_cpu = getattr(cudasim, name)(*args, **kwargs)
        on_gpu = _to(getattr(torch.ops.relground, name)(*_to(args, "cuda"), **kwargs), "cpu")
        assert_outputs_close(on_cpu, on_gpu, f"{name} {sample.name!r}: runtime vs GPU")
        for a, g in zip(*(((x,) if isinstance(x, torch.Tensor) else x) for x in (on_cpu, on_gpu))):
            total += 1
            identical += bool(((a == g) | (a != a) & (g != g)).all())
    print(f"{name} {_label(dtype)}: {identical}/{total} outputs bit-identical to the GPU")
