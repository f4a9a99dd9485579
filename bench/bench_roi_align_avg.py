"""Speed of relground.ops.roi_align_avg against torchvision's roi_align(...).mean((2, 3)), same run.

pytest-benchmark mode (CPU case; the GPU cases run only when CUDA is available)::

    pytest bench/bench_roi_align_avg.py --benchmark-only

bench/conftest.py prints the speedup of each fused op over its baseline at the end.

Script mode, prints a table of median times and speedups (torch.utils.benchmark timers)::

    python bench/bench_roi_align_avg.py [--cpu-only]

Cases (from the issue):
  * CPU: float32, N=1, C=256, 64x64 map, 512 RoIs, P=7, sampling_ratio=2. Targets: forward >= 3x,
    forward+backward >= 2x.
  * GPU: N=40 maps of C=2048 x 38 x 63, 2000 RoIs (50 per map), P=7, sampling_ratio=2, float32 and
    bfloat16. torchvision's CUDA roi_align has no bfloat16 kernel, so the bf16 baseline is the
    reference path (cast to float32, roi_align, mean). Also reports the achieved GB/s, counting the
    feature-map bytes the op must read: for each RoI, its support rows x support columns x C.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

if __name__ == "__main__":  # script mode: import the checkout without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relground.ops import roi_align_avg
from relground.ops._reference import _roi_align_avg_reference

STRIDE = 16  # feature-map stride: spatial_scale = 1/16, boxes in image pixels


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    device: str
    dtype: torch.dtype
    batch_size: int
    channels: int
    height: int
    width: int
    num_rois: int
    output_size: int = 7
    sampling_ratio: int = 2
    channels_last: bool = False


CPU_CASES = [Case("cpu-fp32", "cpu", torch.float32, 1, 256, 64, 64, 512)]
GPU_CASES = [
    Case("cuda-fp32", "cuda", torch.float32, 40, 2048, 38, 63, 2000),
    Case("cuda-bf16", "cuda", torch.bfloat16, 40, 2048, 38, 63, 2000),
    Case("cuda-bf16-nhwc", "cuda", torch.bfloat16, 40, 2048, 38, 63, 2000, channels_last=True),
]


def make_inputs(case: Case, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random features [N, C, H, W] and detection-like boxes [K, 5] spread evenly over the images.

    The features are drawn on the case's device in its dtype and layout (no host copy: the GPU cases are 196M
    values); build them once per case and share them between the timed closures (make_step).
    """
    generator = torch.Generator().manual_seed(seed)
    memory_format = torch.channels_last if case.channels_last else torch.contiguous_format
    input = torch.empty(case.batch_size, case.channels, case.height, case.width, device=case.device,
                        dtype=case.dtype, memory_format=memory_format)
    input.normal_(generator=torch.Generator(device=case.device).manual_seed(seed))
    image_w, image_h = case.width * STRIDE, case.height * STRIDE
    corners = torch.rand(case.num_rois, 2, 2, generator=generator) * torch.tensor([image_w, image_h])
    boxes = torch.cat((corners.min(dim=1).values, corners.max(dim=1).values), dim=1)  # xyxy
    batch_index = torch.arange(case.num_rois) % case.batch_size
    rois = torch.cat((batch_index[:, None].float(), boxes), dim=1)
    return input, rois.to(device=case.device, dtype=case.dtype)


def fused(input, rois, case: Case):
    return roi_align_avg(input, rois, case.output_size, 1.0 / STRIDE, case.sampling_ratio, True)


def unfused(input, rois, case: Case):
    if input.dtype == torch.bfloat16 and input.is_cuda:  # no bf16 CUDA kernel in torchvision
        return _roi_align_avg_reference(input, rois, case.output_size, 1.0 / STRIDE, case.sampling_ratio, True)
    pooled = torchvision.ops.roi_align(input, rois, case.output_size, 1.0 / STRIDE, case.sampling_ratio, True)
    return pooled.mean((2, 3))


IMPLS = {"fused": fused, "torchvision": unfused}


def make_step(impl: str, case: Case, backward: bool, inputs: tuple[torch.Tensor, torch.Tensor] | None = None):
    """A closure running one forward (and backward) pass, synchronised on CUDA so timers see the work.

    ``inputs``: the case's (features, rois) from make_inputs, shared (not copied) between closures.
    """
    input, rois = inputs if inputs is not None else make_inputs(case)
    fn = IMPLS[impl]
    if backward:
        input = input.detach().requires_grad_()  # a new leaf over the same storage
        grad_out = torch.ones(case.num_rois, case.channels, device=case.device, dtype=case.dtype)

    def step():
        output = fn(input, rois, case)
        if backward:
            (grad,) = torch.autograd.grad(output, input, grad_out)
        if input.is_cuda:
            torch.cuda.synchronize()

    return step


def feature_bytes_read(case: Case, rois: torch.Tensor) -> int:
    """Bytes of feature map the fused op must read: per RoI (``rois`` of make_inputs), support rows x support
    columns x C."""
    boxes = rois[:, 1:].double().cpu().numpy() / STRIDE - 0.5  # aligned=True
    total = 0
    for x1, y1, x2, y2 in boxes:
        rows = _support(y1, y2 - y1, case.output_size, case.sampling_ratio, case.height)
        cols = _support(x1, x2 - x1, case.output_size, case.sampling_ratio, case.width)
        total += rows * cols
    return total * case.channels * torch.finfo(case.dtype).bits // 8


def _support(start: float, size: float, pooled: int, grid: int, limit: int) -> int:
    """Number of distinct pixels the bilinear samples of one axis touch (torchvision's rules)."""
    samples = start + (np.arange(pooled * grid) + 0.5) * size / (pooled * grid)
    samples = samples[(samples >= -1) & (samples <= limit)].clip(min=0)
    low = np.minimum(samples.astype(np.int64), limit - 1)
    high = np.minimum(low + 1, limit - 1)
    return len(np.union1d(low, high))


# ---- pytest-benchmark mode ---------------------------------------------------------------------------
def _cases():
    gpu = [pytest.param(c, marks=pytest.mark.needs_cuda, id=c.name) for c in GPU_CASES]
    return [pytest.param(c, id=c.name) for c in CPU_CASES] + gpu


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward_backward"])
@pytest.mark.parametrize("case", _cases())
def test_roi_align_avg(benchmark, case, backward, impl):
    benchmark.group = f"{case.name}-{'forward_backward' if backward else 'forward'}"
    benchmark.extra_info["baseline"] = impl == "torchvision"
    benchmark(make_step(impl, case, backward))


# ---- script mode ---------------------------------------------------------------------------------------
def _median_seconds(step, label: str) -> float:
    from torch.utils import benchmark as torch_benchmark

    step()  # warm-up (allocations, first-call dispatch)
    timer = torch_benchmark.Timer(stmt="step()", globals={"step": step}, label=label)
    return timer.blocked_autorange(min_run_time=1.0).median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-only", action="store_true", help="skip the GPU cases even if CUDA is available")
    args = parser.parse_args()
    cases = CPU_CASES + ([] if args.cpu_only or not torch.cuda.is_available() else GPU_CASES)
    header = f"{'case':<16} {'pass':<17} {'torchvision ms':>14} {'fused ms':>9} {'speedup':>8} {'fused GB/s':>10}"
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, threads {torch.get_num_threads()}")
    print(header)
    print("-" * len(header))
    for case in cases:
        inputs = make_inputs(case)  # once per case: the GPU cases' features are 0.4-0.8 GB
        read_bytes = feature_bytes_read(case, inputs[1])
        for backward in (False, True):
            label = "forward+backward" if backward else "forward"
            baseline = _median_seconds(make_step("torchvision", case, backward, inputs), label)
            fused_s = _median_seconds(make_step("fused", case, backward, inputs), label)
            bandwidth = "" if backward else f"{read_bytes / fused_s / 1e9:10.1f}"
            print(
                f"{case.name:<16} {label:<17} {baseline * 1e3:14.3f} {fused_s * 1e3:9.3f} "
                f"{baseline / fused_s:7.2f}x {bandwidth:>10}", flush=True
            )
        del inputs
        if case.device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
