"""No op's CUDA path reads a device value on the host (a sync: illegal inside CUDA-graph capture, a stall of the
device queue elsewhere). The CUDA host functions run here in the CPU CUDA-semantics runtime, under the profiler;
every ATen op they call is recorded, and none may be one that copies a device value to the host."""
from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from tests.ops.test_roi_align_avg import make_input, random_rois
from tests.ops.test_self_taught_targets import clustered_boxes, random_attention
from tests.ops.test_topk_select import random_scores, random_valid

# ATen ops that read a device tensor's value on the host (each synchronises the stream on CUDA).
HOST_READS = {
    "aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::equal", "aten::allclose",
    "aten::nonzero", "aten::masked_select", "aten::unique", "aten::_unique", "aten::_unique2", "aten::unique_dim",
    "aten::unique_consecutive", "aten::tolist", "aten::repeat_interleave",
}


def host_reads(fn) -> list[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sorted({event.name for event in prof.events() if event.name in HOST_READS})


def calls():
    g = torch.Generator().manual_seed(0)
    input = make_input(2, 16, 8, 8, g, "cpu", torch.float32)
    rois = random_rois(5, 2, 8, 8, 1.0, g, "cpu", torch.float32)
    boxes, scores = clustered_boxes(2, 6), random_attention(2, 3, 6)
    valid = torch.ones(2, 6, dtype=torch.bool)
    s, v = random_scores(4, 9), random_valid(4, 9)
    return {
        "roi_align_avg": lambda ops: ops.roi_align_avg(input, rois, 2, 2, 1.0, 2, True),
        "roi_align_avg channels_last": lambda ops: ops.roi_align_avg(
            input.contiguous(memory_format=torch.channels_last), rois, 2, 2, 1.0, -1, False),
        "_roi_align_avg_backward": lambda ops: ops._roi_align_avg_backward(
            torch.ones(5, 16), rois, 2, 2, 1.0, 2, True, 2, 16, 8, 8, False),
        "topk_select": lambda ops: ops.topk_select(s, 3, v),
        "self_taught_targets": lambda ops: ops.self_taught_targets(boxes, scores, 0.6, 0.1, [10.0, 10.0, 5.0, 5.0],
                                                                   valid),
        "pairwise_iou": lambda ops: ops.pairwise_iou(boxes, boxes),
    }


def test_cuda_paths_read_no_device_value_on_the_host(cudasim):
    found = {name: reads for name, call in calls().items() if (reads := host_reads(lambda: call(cudasim)))}
    assert not found, f"host reads of device values in the CUDA path: {found}"


def test_the_probe_sees_a_host_read_made_in_cpp():
    """The CPU kernels check values on the host (free there): the same probe sees those C++ reads."""
    import relground

    if not relground.HAS_OPS:
        import pytest

        pytest.skip("relground._C not built")
    assert "aten::item" in host_reads(lambda: calls()["roi_align_avg"](torch.ops.relground))
