"""Tests of relground.ops.roi_align_avg against torchvision and a float64 Python loop."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision

import relground
from relground.ops import roi_align_avg
from tests.ops._hypothesis import HealthCheck, given, settings, st  # skips only the property tests without it
from tests.ops.op_tester import OpTester, SampleInput, assert_outputs_close
from tests.utils import cpu_and_cuda

needs_ops = pytest.mark.skipif(not relground.HAS_OPS, reason="native extension relground._C not built")
ALL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def roi_align_avg_loop(input, rois, output_size, spatial_scale, sampling_ratio=-1, aligned=True):
    """float64 reference written from the RoIAlign definition: every sample, every bin, then the mean.

    Deliberately the plain 2-D form (no separability), independent of the kernels.
    """
    feats = input.detach().double().cpu().numpy()  # [N, C, H, W]
    boxes = rois.detach().double().cpu().numpy()  # [K, 5]
    pooled_h, pooled_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    _, channels, height, width = feats.shape
    out = np.zeros((boxes.shape[0], channels))

    def bilinear(plane, y, x):
        if y < -1.0 or y > height or x < -1.0 or x > width:
            return np.zeros(channels)
        y, x = max(y, 0.0), max(x, 0.0)
        y_low, x_low = int(y), int(x)
        if y_low >= height - 1:
            y_low = y_high = height - 1
            y = float(y_low)
        else:
            y_high = y_low + 1
        if x_low >= width - 1:
            x_low = x_high = width - 1
            x = float(x_low)
        else:
            x_high = x_low + 1
        ly, lx = y - y_low, x - x_low
        hy, hx = 1.0 - ly, 1.0 - lx
        return (
            hy * hx * plane[:, y_low, x_low]
            + hy * lx * plane[:, y_low, x_high]
            + ly * hx * plane[:, y_high, x_low]
            + ly * lx * plane[:, y_high, x_high]
        )

    offset = 0.5 if aligned else 0.0
    for k, (n, x1, y1, x2, y2) in enumerate(boxes):
        start_w, start_h = x1 * spatial_scale - offset, y1 * spatial_scale - offset
        roi_w, roi_h = x2 * spatial_scale - offset - start_w, y2 * spatial_scale - offset - start_h
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / pooled_h, roi_w / pooled_w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / pooled_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / pooled_w)
        count = max(grid_h * grid_w, 1)
        total = np.zeros(channels)
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                for iy in range(grid_h):
                    y = start_h + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = start_w + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        total += bilinear(feats[int(n)], y, x) / count
        out[k] = total / (pooled_h * pooled_w)
    return torch.from_numpy(out)


def torchvision_roi_align_avg(input, rois, output_size, spatial_scale, sampling_ratio=-1, aligned=True):
    """The unfused path the op replaces, computed in float64."""
    pooled = torchvision.ops.roi_align(
        input.double(), rois.double(), output_size, spatial_scale, sampling_ratio, aligned
    )  # [K, C, P, P]
    return pooled.mean((2, 3))


def random_rois(num_rois, batch_size, height, width, spatial_scale, generator, device, dtype, margin=0.3):
    """Boxes in input pixels over (and slightly past) a height x width map; a few tiny/degenerate ones."""
    image_h, image_w = height / spatial_scale, width / spatial_scale
    xy = torch.rand(num_rois, 2, 2, generator=generator, dtype=torch.float64)
    xy = xy * (1 + 2 * margin) - margin  # [K, 2 corners, (x, y)] in map fractions, some outside
    lo, hi = xy.min(dim=1).values, xy.max(dim=1).values
    boxes = torch.cat((lo, hi), dim=1) * torch.tensor([image_w, image_h, image_w, image_h], dtype=torch.float64)
    batch_index = torch.randint(0, max(batch_size, 1), (num_rois, 1), generator=generator).double()
    return torch.cat((batch_index, boxes), dim=1).to(device=device, dtype=dtype)


def make_input(batch_size, channels, height, width, generator, device, dtype, channels_last=False):
    input = torch.randn(batch_size, channels, height, width, generator=generator, dtype=torch.float64)
    input = input.to(device=device, dtype=dtype)
    return input.contiguous(memory_format=torch.channels_last) if channels_last else input


class TestRoIAlignAvg(OpTester):
    dtypes = ALL_DTYPES
    op = torch.ops.relground.roi_align_avg.default if relground.HAS_OPS else None

    def fn(self, input, rois, output_size, spatial_scale, sampling_ratio, aligned):
        return roi_align_avg(input, rois, output_size, spatial_scale, sampling_ratio, aligned)

    def reference_fn(self, input, rois, output_size, spatial_scale, sampling_ratio, aligned):
        return roi_align_avg_loop(input, rois, output_size, spatial_scale, sampling_ratio, aligned)

    def op_inputs(self, sample):
        input, rois, output_size, spatial_scale, sampling_ratio, aligned = sample.args
        pooled_height, pooled_width = (output_size, output_size) if isinstance(output_size, int) else output_size
        return (input, rois, pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned), {}

    def sample_inputs(self, device, dtype):
        generator = torch.Generator().manual_seed(0)
        case = 0
        for seed_round in range(2):
            for aligned in (True, False):
                for sampling_ratio in (-1, 0, 2):
                    channels_last = case % 2 == 1
                    scale = 0.5 if seed_round else 1.0
                    input = make_input(2, 3, 7, 9, generator, device, dtype, channels_last)
                    rois = random_rois(5, 2, 7, 9, scale, generator, device, dtype)
                    yield SampleInput(
                        (input, rois, 3 - seed_round, scale, sampling_ratio, aligned),
                        name=f"random{case}-aligned{aligned}-sr{sampling_ratio}-cl{channels_last}",
                    )
                    case += 1
        yield from self.edge_case_inputs(device, dtype)

    def edge_case_inputs(self, device, dtype):
        generator = torch.Generator().manual_seed(1)
        input = make_input(2, 4, 6, 5, generator, device, dtype)

        def rois(*rows):
            return torch.tensor(rows, dtype=torch.float64).to(device=device, dtype=dtype)

        yield SampleInput((input, rois().reshape(0, 5), 2, 1.0, -1, True), name="no boxes")
        yield SampleInput((input, rois([1, 1.0, 0.5, 4.0, 5.5]), 2, 1.0, 2, True), name="one proposal")
        outside = rois([0, -30.0, -30.0, -10.0, -12.0], [1, 20.0, 1.0, 40.0, 4.0], [0, 1.0, 30.0, 3.0, 50.0])
        yield SampleInput((input, outside, 2, 1.0, 2, True), name="boxes outside the map")
        yield SampleInput((input, outside, 2, 1.0, -1, False), name="boxes outside the map, adaptive, legacy")
        degenerate = rois([0, 2.0, 2.0, 2.0, 2.0], [1, 1.0, 3.0, 4.0, 3.0], [0, 3.0, 1.0, 1.0, 4.0])
        for aligned in (True, False):
            for sampling_ratio in (-1, 2):
                yield SampleInput(
                    (input, degenerate, 2, 1.0, sampling_ratio, aligned),
                    name=f"degenerate aligned={aligned} sr={sampling_ratio}",
                )
        whole = rois([0, 0.0, 0.0, 5.0, 6.0], [1, -1.0, -1.0, 6.0, 7.0])  # the map and a bit past its border
        yield SampleInput((input, whole, (2, 3), 1.0, 3, True), name="whole map, 2x3 bins")

    # ---- second oracle: torchvision's unfused roi_align + mean ------------------------------------
    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_matches_torchvision(self, device, dtype):
        for sample in self.sample_inputs(device, dtype):
            _, rois, _, _, sampling_ratio, aligned = sample.args
            inverted = (rois[:, 3] < rois[:, 1]) | (rois[:, 4] < rois[:, 2])
            if inverted.any() and sampling_ratio <= 0 and aligned and device == "cpu":
                continue  # torchvision's CPU kernel sizes a vector by the negative adaptive grid and raises
            actual = self.fn(*sample.args)
            expected = torchvision_roi_align_avg(*sample.args)
            assert_outputs_close(actual, expected, f"sample {sample.name!r}")

    # ---- third oracle: the 1x1 identity of shared/notes/kernels.md ----------------------------------
    @pytest.mark.parametrize("device", cpu_and_cuda())
    @pytest.mark.parametrize("output_size,sampling_ratio", [(2, 1), (3, 2), (7, 2)])
    def test_matches_1x1_roi_align(self, device, output_size, sampling_ratio):
        generator = torch.Generator().manual_seed(2)
        input = make_input(2, 5, 12, 10, generator, device, torch.float64)
        rois = random_rois(8, 2, 12, 10, 1.0, generator, device, torch.float64)
        expected = torchvision.ops.roi_align(input, rois, 1, 1.0, output_size * sampling_ratio, True)[:, :, 0, 0]
        torch.testing.assert_close(roi_align_avg(input, rois, output_size, 1.0, sampling_ratio, True), expected)

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_adaptive_matches_1x1_roi_align(self, device):
        # Adaptive sampling is ceil(roi / P) per bin, so the 1x1 form needs P * ceil(roi / P) samples;
        # boxes are square so that one sampling ratio fits both axes.
        input = make_input(1, 3, 20, 20, torch.Generator().manual_seed(3), device, torch.float64)
        for side, output_size in ((3.3, 2), (7.9, 3), (15.0, 4)):
            rois = torch.tensor([[0, 1.0, 2.0, 1.0 + side, 2.0 + side]], dtype=torch.float64, device=device)
            grid = math.ceil(side / output_size)
            expected = torchvision.ops.roi_align(input, rois, 1, 1.0, output_size * grid, True)[:, :, 0, 0]
            torch.testing.assert_close(roi_align_avg(input, rois, output_size, 1.0, -1, True), expected)

    # ---- gradients ---------------------------------------------------------------------------------
    @pytest.mark.parametrize("device", cpu_and_cuda())
    @pytest.mark.parametrize("channels_last", [False, True])
    @pytest.mark.parametrize("aligned,sampling_ratio", [(True, -1), (False, 2), (True, 0)])
    def test_gradcheck(self, device, channels_last, aligned, sampling_ratio):
        generator = torch.Generator().manual_seed(4)
        input = make_input(2, 3, 5, 6, generator, device, torch.float64, channels_last).requires_grad_()
        rois = random_rois(4, 2, 5, 6, 1.0, generator, device, torch.float64)
        op = lambda x: roi_align_avg(x, rois, 2, 1.0, sampling_ratio, aligned)  # noqa: E731
        # The CUDA backward accumulates with atomics: its float64 sums may differ in the last bits between runs.
        nondet_tol = 1e-12 if device == "cuda" else 0.0
        torch.autograd.gradcheck(op, (input,), fast_mode=True, nondet_tol=nondet_tol)

    @pytest.mark.parametrize("device", cpu_and_cuda())
    @pytest.mark.parametrize("channels_last", [False, True])
    def test_backward_matches_torchvision(self, device, dtype, channels_last):
        generator = torch.Generator().manual_seed(5)
        input = make_input(2, 4, 9, 8, generator, device, dtype, channels_last).requires_grad_()
        rois = random_rois(12, 2, 9, 8, 1.0, generator, device, dtype)
        grad_out = torch.randn(12, 4, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
        (grad,) = torch.autograd.grad(roi_align_avg(input, rois, 3, 1.0, -1, True), input, grad_out)
        reference_input = input.detach().double().requires_grad_()
        (expected,) = torch.autograd.grad(
            torchvision_roi_align_avg(reference_input, rois, 3, 1.0, -1, True), reference_input, grad_out.double()
        )
        assert grad.dtype == dtype
        assert grad.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        assert_outputs_close(grad, expected, "grad_input")

    @needs_ops
    def test_double_backward_raises(self):
        input = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
        rois = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]], dtype=torch.float64)
        # The op is linear in `input`, so a second derivative flows only through the incoming gradient.
        grad_out = torch.ones(1, 2, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(roi_align_avg(input, rois, 2, 1.0, 2), input, grad_out, create_graph=True)
        with pytest.raises(RuntimeError, match="double backward"):
            grad.sum().backward()

    # ---- compile and autocast ------------------------------------------------------------------------
    @needs_ops
    def test_torch_compile(self):
        generator = torch.Generator().manual_seed(6)
        input = make_input(1, 3, 6, 6, generator, "cpu", torch.float32)
        rois = random_rois(4, 1, 6, 6, 1.0, generator, "cpu", torch.float32)

        # The op alone: inductor then only emits the call to the extern kernel (generating C++ for
        # surrounding pointwise code costs a minute on 2 cores).
        compiled = torch.compile(lambda x, r: roi_align_avg(x, r, 2, 1.0, 2), fullgraph=True)
        torch.testing.assert_close(compiled(input, rois), torchvision_roi_align_avg(input, rois, 2, 1.0, 2).float())

    @pytest.mark.parametrize("device", cpu_and_cuda())
    @pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
    def test_autocast_runs_in_float32(self, device, input_dtype):
        generator = torch.Generator().manual_seed(7)
        input = make_input(1, 3, 6, 6, generator, device, input_dtype)
        rois = random_rois(4, 1, 6, 6, 1.0, generator, device, input_dtype)
        with torch.autocast(device, dtype=torch.bfloat16):
            output = roi_align_avg(input, rois, 2, 1.0, 2)
        assert output.dtype == torch.float32
        expected = torchvision_roi_align_avg(input, rois, 2, 1.0, 2)
        torch.testing.assert_close(output, expected.float())

    # ---- property tests --------------------------------------------------------------------------
    @settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        batch_size=st.integers(1, 3),
        channels=st.integers(1, 4),
        height=st.integers(1, 9),
        width=st.integers(1, 9),
        num_rois=st.integers(0, 6),
        output_size=st.integers(1, 4),
        spatial_scale=st.sampled_from([0.25, 0.5, 1.0]),
        sampling_ratio=st.integers(-1, 3),
        aligned=st.booleans(),
        channels_last=st.booleans(),
        seed=st.integers(0, 2**16),
    )
    def test_property_matches_references(
        self, batch_size, channels, height, width, num_rois, output_size, spatial_scale, sampling_ratio, aligned,
        channels_last, seed,
    ):  # fmt: skip
        generator = torch.Generator().manual_seed(seed)
        input = make_input(batch_size, channels, height, width, generator, "cpu", torch.float64, channels_last)
        rois = random_rois(num_rois, batch_size, height, width, spatial_scale, generator, "cpu", torch.float64)
        args = (input, rois, output_size, spatial_scale, sampling_ratio, aligned)
        actual = roi_align_avg(*args)
        torch.testing.assert_close(actual, roi_align_avg_loop(*args))
        torch.testing.assert_close(actual, torchvision_roi_align_avg(*args))

    # ---- bad input ---------------------------------------------------------------------------------
    @needs_ops
    @pytest.mark.parametrize(
        "change,match",
        [
            (lambda x, r: (x[0], r), "`input` must have 4 dimensions"),
            (lambda x, r: (x, r[:, :4]), "`rois` must have last dimension 5"),
            (lambda x, r: (x, r[0]), "`rois` must have 2 dimensions"),
            (lambda x, r: (x, r.double()), "`rois` has dtype"),
            (lambda x, r: (x.int(), r.int()), "`input` must be a floating-point"),
            (lambda x, r: (x, r.index_fill(1, torch.tensor([0]), 2.0)), r"`rois\[:, 0\]` \(batch index\)"),
            (lambda x, r: (x, r.index_fill(1, torch.tensor([0]), -1.0)), r"`rois\[:, 0\]` \(batch index\)"),
            (lambda x, r: (x, r.index_fill(1, torch.tensor([0]), 0.5)), r"`rois\[:, 0\]` \(batch index\)"),
            (lambda x, r: (x, r.index_fill(1, torch.tensor([3]), float("nan"))), "`rois` contains NaN"),
            (lambda x, r: (x, r.index_fill(1, torch.tensor([2]), float("inf"))), "`rois` contains NaN or infinite"),
        ],
    )
    def test_bad_input_raises(self, change, match):
        input = torch.randn(2, 3, 5, 5)
        rois = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0], [1, 1.0, 1.0, 4.0, 2.0]])
        bad_input, bad_rois = change(input, rois)
        with pytest.raises(RuntimeError, match=match):
            roi_align_avg(bad_input, bad_rois, 2, 1.0, 2)

    @needs_ops
    @pytest.mark.parametrize(
        "output_size,spatial_scale,match", [(0, 1.0, "`output_size`"), (2, -1.0, "`spatial_scale`")]
    )
    def test_bad_arguments_raise(self, output_size, spatial_scale, match):
        rois = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]])
        with pytest.raises(RuntimeError, match=match):
            roi_align_avg(torch.randn(1, 2, 4, 4), rois, output_size, spatial_scale)

    @needs_ops
    def test_coordinates_overflowing_after_scaling_raise(self):
        # 3e38 is a finite float32, but 3e38 * 16 is not: the kernel would turn it into an index.
        rois = torch.tensor([[0, 0.0, 0.0, 3.0e38, 3.0]])
        with pytest.raises(RuntimeError, match="overflow once multiplied by `spatial_scale`"):
            roi_align_avg(torch.randn(1, 2, 4, 4), rois, 2, 16.0)

    @needs_ops
    @pytest.mark.needs_cuda
    def test_device_mismatch_raises(self):
        rois = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]])
        with pytest.raises(RuntimeError, match="`input` is on cuda"):
            roi_align_avg(torch.randn(1, 2, 4, 4, device="cuda"), rois, 2, 1.0)

    def test_list_of_boxes_matches_tensor_rois(self):
        input = make_input(2, 3, 6, 6, torch.Generator().manual_seed(8), "cpu", torch.float32)
        boxes = [torch.tensor([[0.0, 0.0, 4.0, 3.0]]), torch.tensor([[1.0, 1.0, 5.0, 5.0], [2.0, 0.0, 3.0, 6.0]])]
        rois = torchvision.ops._utils.convert_boxes_to_roi_format(boxes)
        torch.testing.assert_close(roi_align_avg(input, boxes, 2, 1.0, 2), roi_align_avg(input, rois, 2, 1.0, 2))

    # ---- CUDA only ---------------------------------------------------------------------------------
    @needs_ops
    @pytest.mark.needs_cuda
    def test_cuda_deterministic_mode_uses_reference(self):
        generator = torch.Generator().manual_seed(9)
        input = make_input(1, 4, 8, 8, generator, "cuda", torch.float32).requires_grad_()
        rois = random_rois(6, 1, 8, 8, 1.0, generator, "cuda", torch.float32)
        torch.use_deterministic_algorithms(True)
        try:
            grads = [torch.autograd.grad(roi_align_avg(input, rois, 2, 1.0, 2).sum(), input)[0] for _ in range(2)]
        finally:
            torch.use_deterministic_algorithms(False)
        torch.testing.assert_close(grads[0], grads[1], atol=0, rtol=0)

    @needs_ops
    @pytest.mark.needs_cuda
    def test_cuda_64bit_indexing(self):
        # K*C*P*P > 2^31 (the size torchvision's int32 kernel overflows at) and an input of > 2^31
        # elements; references are computed on slices that fit.
        channels, output_size = 2048, 7
        num_rois = 2**31 // (channels * output_size * output_size) + 100
        generator = torch.Generator().manual_seed(10)
        input = make_input(1, channels, 6, 6, generator, "cuda", torch.float16)
        rois = random_rois(num_rois, 1, 6, 6, 1.0, generator, "cuda", torch.float16)
        output = roi_align_avg(input, rois, output_size, 1.0, 2)  # [K, C]
        tail = slice(num_rois - 50, num_rois)
        assert_outputs_close(output[tail], torchvision_roi_align_avg(input, rois[tail], output_size, 1.0, 2))
        del output

        # float32: box coordinates near 32k must be exact. 2.15e9 elements, 8.6 GB.
        big = torch.zeros(2, 1, 2**15, 2**15 + 64, device="cuda", dtype=torch.float32)
        patch = make_input(1, 1, 8, 8, generator, "cuda", torch.float32)
        big[1, :, -8:, -8:] = patch[0]
        height, width = big.shape[2:]
        box = torch.tensor([[1, width - 7.0, height - 6.0, width - 1.0, height - 2.0]], device="cuda")
        local_box = box - torch.tensor([[1, width - 8.0, height - 8.0, width - 8.0, height - 8.0]], device="cuda")
        expected = torchvision_roi_align_avg(patch, local_box, 2, 1.0, 2)
        assert_outputs_close(roi_align_avg(big, box, 2, 1.0, 2), expected)
