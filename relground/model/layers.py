"""Small masked building blocks shared by the ReIR modules (padding-aware softmax and BatchNorm)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def masked_softmax(logits: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax over the entries where ``mask`` is True; masked entries get exactly 0.

    A row whose mask is all False gets all zeros (not NaN), so callers decide how to guard it.

    Args:
        logits (Tensor[..., N]): scores, any float dtype.
        mask (Tensor[..., N]): bool, broadcastable to ``logits``.
        dim: the softmax dimension. Default -1.

    Returns:
        Tensor[..., N]: probabilities summing to 1 over each row with at least one True entry.

    Example:
        >>> masked_softmax(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([True, False, True]))
        tensor([0.1192, 0.0000, 0.8808])
    """
    mask = mask.expand_as(logits)
    filled = logits.masked_fill(~mask, float("-inf"))
    # An all-masked row would be softmax(-inf, ..., -inf) = NaN; give it finite logits, then zero it.
    any_valid = mask.any(dim=dim, keepdim=True)
    filled = torch.where(any_valid, filled, torch.zeros_like(filled))
    probs = F.softmax(filled, dim=dim)
    return probs.masked_fill(~mask, 0.0)


def masked_batch_norm(norm: nn.BatchNorm1d, x: Tensor, valid: Tensor, running_stats: bool = False) -> Tensor:
    """Apply ``norm`` to the valid rows of ``x`` only, so padding never enters the batch statistics.

    Args:
        norm: a BatchNorm1d over the last dimension of ``x``.
        x (Tensor[..., D]): features.
        valid (Tensor[...]): bool, True for real rows.
        running_stats: normalise with the running statistics even in training mode and leave them unchanged
            (rows from another distribution than the one the statistics describe).

    Returns:
        Tensor[..., D]: normalised valid rows, zeros elsewhere.
    """
    rows = x[valid]  # [N, D]
    if norm.training and (running_stats or rows.shape[0] < 2):
        # Batch statistics of one row are undefined (BatchNorm raises): use the running estimates.
        normed = F.batch_norm(rows, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)
    else:
        normed = norm(rows)
    out = x.new_zeros(x.shape[:-1] + (normed.shape[-1],))
    out[valid] = normed.to(out.dtype)
    return out
