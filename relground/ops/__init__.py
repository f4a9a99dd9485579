"""Fused native ops of relground (``torch.ops.relground.*``) with documented wrappers.

Each op has: a schema in ``csrc/ops/<op>.cpp``, a CPU kernel in ``csrc/cpu/<op>_cpu.cpp``, a
CUDA kernel in ``kernels/<op>_cuda.cu``, a wrapper with fake/autograd/autocast registration in
``relground/ops/<op>.py``, and a pure-PyTorch reference in ``relground/ops/_reference.py`` used as
fallback and as test oracle.
"""
from relground import extension as _extension
from relground.ops._cuda_arch import register_card_check as _register_card_check
from relground.ops.pairwise_iou import pairwise_iou
from relground.ops.roi_align_avg import roi_align_avg
from relground.ops.self_taught_targets import self_taught_targets
from relground.ops.topk_select import topk_select

__all__ = ["roi_align_avg", "pairwise_iou", "topk_select", "self_taught_targets"]

# A card the build has no code for is refused when CUDA starts, not with "no kernel image" inside training.
if _extension.HAS_OPS:
    _register_card_check(_extension.build_info())
