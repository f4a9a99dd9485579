"""Top-k per row among the valid entries of a padded score matrix (``torch.ops.relground.topk_select``)."""
from __future__ import annotations

import torch
from torch import Tensor

from relground.extension import HAS_OPS
from relground.ops._reference import _topk_select_reference, check_same_device

__all__ = ["topk_select"]


def topk_select(scores: Tensor, k: int, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The ``k`` highest scores of each row, considering only the entries marked valid.

    Rows are padded to a common length ``M`` (e.g. images with fewer than ``M`` proposals); ``valid``
    marks the real entries. Equal to ``torch.topk(scores.masked_fill(~valid, -inf), k)`` with two
    refinements: ties go to the lower index (deterministic on every device), and an invalid entry is never
    returned: when a row has fewer than ``k`` valid entries, the extra slots hold index -1 and value -inf
    (so a valid entry whose score is -inf still ranks above the padding).

    NaN scores rank above every number, as in ``torch.topk`` / ``torch.sort``; several NaNs keep index order.
    No gradient: the outputs are constants for autograd (``values`` can be re-gathered from ``scores`` with
    ``indices`` where a gradient is needed).

    Args:
        scores (Tensor[R, M]): float16/bfloat16/float32/float64.
        k (int): number of entries to keep per row, ``0 <= k <= M``.
        valid (Tensor[R, M] of bool, optional): True for real entries. Default: all valid.

    Returns:
        tuple: ``values`` (Tensor[R, k], dtype of ``scores``; float32 under ``torch.autocast``), sorted
        in descending order, and ``indices`` (Tensor[R, k] int64, column indices into ``scores``, -1 for
        padding slots).

    Raises:
        RuntimeError: wrong rank or dtype, ``k < 0`` or ``k > M``, ``valid`` of another shape, dtype or device
            (the message names the argument).

    Example:
        >>> scores = torch.tensor([[0.1, 0.9, 0.9, 0.5]])
        >>> valid = torch.tensor([[True, True, True, False]])
        >>> relground.ops.topk_select(scores, 4, valid)
        (tensor([[0.9000, 0.9000, 0.1000,   -inf]]), tensor([[ 1,  2,  0, -1]]))
    """
    check_same_device("topk_select", scores=scores, valid=valid)
    scores = scores.detach()
    if HAS_OPS:
        return torch.ops.relground.topk_select(scores, k, valid)
    return _topk_select_reference(scores, k, valid)


if HAS_OPS:

    @torch.library.register_fake("relground::topk_select")
    def _topk_select_fake(scores: Tensor, k: int, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_same_device("topk_select", scores=scores, valid=valid)
        torch._check(scores.dim() == 2, lambda: "topk_select: `scores` must be 2-D")
        torch._check(0 <= k <= scores.shape[1], lambda: f"topk_select: `k` must be in [0, M], got {k}")
        return scores.new_empty(scores.shape[0], k), scores.new_empty(scores.shape[0], k, dtype=torch.long)

    # A ranking needs no fp32, but half scores would come back as half: keep the output dtype predictable.
    for _device_type in ("cpu", "cuda"):
        torch.library.register_autocast("relground::topk_select", _device_type, torch.float32)
