"""Small masked building blocks shared by the ReIR modules (padding-aware softmax and BatchNorm)."""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
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


def stable_masked_softmax(logits: Tensor, mask: Tensor, epsilon: float, dim: int = -1) -> Tensor:
    """The authors' ``numerical_stability_masked_softmax`` (``model.softmax_epsilon`` > 0, docs/fidelity.md D6):
    exp(x - max(x * mask)) over the masked entries divided by (their sum + ``epsilon``). Rows sum to a little less
    than 1, and to ~0 when every masked score is far below 0 (the max then counts the masked entries as 0).

    Args / Returns: as :func:`masked_softmax`, plus ``epsilon`` (the authors': 1e-6).
    """
    mask = mask.expand_as(logits)
    shift = (logits * mask.to(logits.dtype)).amax(dim=dim, keepdim=True)
    # masked entries get exp(-inf) = 0 (the authors multiply by the mask: the same where their exp is finite)
    exps = torch.exp(torch.where(mask, logits - shift, torch.full_like(logits, float("-inf"))))
    return exps / (exps.sum(dim=dim, keepdim=True) + epsilon)


def stable_softmax(logits: Tensor, epsilon: float, dim: int = -1) -> Tensor:
    """The authors' ``numerical_stability_softmax``: exp(x - max x) / (sum + ``epsilon``) (see
    :func:`stable_masked_softmax`)."""
    exps = torch.exp(logits - logits.amax(dim=dim, keepdim=True))
    return exps / (exps.sum(dim=dim, keepdim=True) + epsilon)


def softmax_with_mask(epsilon: float):
    """``masked_softmax`` (``epsilon`` 0) or the authors' :func:`stable_masked_softmax` with ``epsilon``."""
    if epsilon == 0:
        return masked_softmax
    return lambda logits, mask, dim=-1: stable_masked_softmax(logits, mask, epsilon, dim)


def per_item_batch_norm(norm: nn.BatchNorm1d, x: Tensor, valid: Tensor, running_stats: bool = False) -> Tensor:
    """``model.phrase_norm: caption`` / ``model.box_norm: image`` (the authors' code, docs/fidelity.md D2-D3):
    in training, each batch item's valid rows are normalised with their own statistics, one BatchNorm call (and
    one update of the running statistics) per item in item order; an item with one row is repeated twice (the
    authors' rule for one-phrase captions: the row then normalises to exactly the bias). ``running_stats`` is
    ignored in training (the authors normalise the refined top-K boxes with their own statistics too); in
    evaluation the running statistics normalise every row, as :func:`masked_batch_norm`.

    Args:
        norm: a BatchNorm1d over the last dimension.
        x (Tensor[B, N, D]): features.
        valid (Tensor[B, N]): bool.

    Returns:
        Tensor[B, N, D]: normalised valid rows, zeros elsewhere.
    """
    if not norm.training:
        return masked_batch_norm(norm, x, valid, running_stats)
    out = x.new_zeros(x.shape)
    for item in range(x.shape[0]):
        rows = x[item][valid[item]]  # [n, D]
        if rows.shape[0] == 0:
            continue
        normed = norm(rows.repeat(2, 1))[:1] if rows.shape[0] == 1 else norm(rows)
        out[item, valid[item]] = normed.to(out.dtype)
    return out


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

    Inside an initialised process group, training-mode statistics are those of the GLOBAL batch (every
    process's valid rows, see :func:`_global_batch_norm`), so the model and its running statistics are the same
    whatever the number of processes.
    """
    rows = x[valid]  # [N, D]
    if norm.training and not running_stats and dist.is_available() and dist.is_initialized():
        normed = _global_batch_norm(norm, rows)
    elif norm.training and (running_stats or rows.shape[0] < 2):
        # Batch statistics of one row are undefined (BatchNorm raises): use the running estimates.
        normed = F.batch_norm(rows, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)
    else:
        normed = norm(rows)
    out = x.new_zeros(x.shape[:-1] + (normed.shape[-1],))
    out[valid] = normed.to(out.dtype)
    return out


def masked_batch_norm_static(norm: nn.BatchNorm1d, x: Tensor, valid: Tensor, running_stats: bool = False) -> Tensor:
    """:func:`masked_batch_norm` without host synchronisation or data-dependent shapes (``model.static_shapes``).

    Every row is normalised and the invalid ones are zeroed; the batch statistics are masked sums over the valid
    rows (one all-reduce of them inside a process group), and "fewer than 2 valid rows" selects the running
    estimates with ``torch.where`` instead of a branch. Same function as :func:`masked_batch_norm`, other
    summation order (not bit-identical).

    Args / Returns: as :func:`masked_batch_norm`.
    """
    shape = x.shape
    rows = x.reshape(-1, shape[-1])  # [N, D], every row, padding included
    mask = valid.reshape(-1)  # [N]
    if not norm.training or running_stats:
        normed = F.batch_norm(rows, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)
    else:
        normed = _masked_training_norm(norm, rows, mask)
    return torch.where(mask[:, None], normed.to(x.dtype), torch.zeros((), dtype=x.dtype, device=x.device)).reshape(
        shape[:-1] + (normed.shape[-1],)
    )


def _masked_training_norm(norm: nn.BatchNorm1d, rows: Tensor, mask: Tensor) -> Tensor:
    """Training-mode BatchNorm of ``rows`` [N, D] with the statistics of the rows where ``mask`` [N] is True (of
    every process's, inside a process group), running estimates updated in place; < 2 such rows: the running
    estimates normalise and stay unchanged, as in :func:`masked_batch_norm`."""
    weights = mask.to(torch.float32)[:, None]  # [N, 1]
    wide = rows.float()
    if dist.is_available() and dist.is_initialized():
        wide = wide.double()  # sums of squares across processes: float64, as _global_batch_norm
        stats = torch.cat(((wide * weights).sum(0), (wide * wide * weights).sum(0), weights.sum(0).double()))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"torch\.distributed\.nn\.functional", FutureWarning)
            stats = dist_nn.all_reduce(stats)
        dim = rows.shape[1]
        count = stats[-1]
        mean = stats[:dim] / count.clamp(min=1)
        var = (stats[dim : 2 * dim] / count.clamp(min=1) - mean * mean).clamp(min=0.0)
    else:  # two passes over the masked rows: no cancellation in the variance
        count = weights.sum()
        mean = (wide * weights).sum(0) / count.clamp(min=1)
        var = (((wide - mean) ** 2) * weights).sum(0) / count.clamp(min=1)
    enough = count >= 2  # 0-dim bool, stays on the device
    if norm.track_running_stats and norm.running_mean is not None:
        with torch.no_grad():
            norm.num_batches_tracked.add_(enough.to(norm.num_batches_tracked.dtype))
            if norm.momentum is None:  # cumulative average
                momentum = 1.0 / norm.num_batches_tracked.clamp(min=1).to(torch.float32)
            else:
                momentum = norm.momentum
            # enough * momentum, not torch.where with a new device tensor: no host-to-device copy in the step
            momentum = enough.to(torch.float32) * momentum
            unbiased = var * (count / (count - 1).clamp(min=1))
            norm.running_mean.copy_(norm.running_mean * (1 - momentum) + mean.to(norm.running_mean.dtype) * momentum)
            norm.running_var.copy_(norm.running_var * (1 - momentum) + unbiased.to(norm.running_var.dtype) * momentum)
    if norm.running_mean is not None:
        # < 2 valid rows: the running estimates (as they were: no update happened above)
        mean = torch.where(enough, mean.to(norm.running_mean.dtype), norm.running_mean)
        var = torch.where(enough, var.to(norm.running_var.dtype), norm.running_var)
    normed = ((wide - mean.to(wide.dtype)) * torch.rsqrt(var.to(wide.dtype) + norm.eps)).to(rows.dtype)
    if norm.affine:
        normed = normed * norm.weight + norm.bias
    return normed


def _global_batch_norm(norm: nn.BatchNorm1d, rows: Tensor) -> Tensor:
    """Training-mode BatchNorm of ``rows`` [N, D] with the statistics of every process's rows (collective).

    ``torch.nn.SyncBatchNorm`` runs on CUDA tensors only; this one runs on any device: one differentiable
    all-reduce of (sum, sum of squares, count) in float64, then the single-process BatchNorm's arithmetic:
    the biased variance normalises, the unbiased one enters ``running_var``, with ``norm.momentum`` (or the
    cumulative average when it is None). Every process computes the same statistics, so the running estimates
    agree on every rank. Fewer than 2 rows in the global batch: the running estimates normalise, as in
    :func:`masked_batch_norm`.
    """
    wide = rows.double()
    count = wide.new_full((1,), float(rows.shape[0]))
    stats = torch.cat((wide.sum(0), (wide * wide).sum(0), count))  # [2 D + 1]
    with warnings.catch_warnings():  # recent torch flags these autograd-aware collectives as deprecated (private successor)
        warnings.filterwarnings("ignore", r"torch\.distributed\.nn\.functional", FutureWarning)
        stats = dist_nn.all_reduce(stats)  # the backward all-reduces the gradients of the statistics
    dim = rows.shape[1]
    total = int(stats[-1].item())
    if total < 2:
        return F.batch_norm(rows, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)
    mean = stats[:dim] / total
    var = (stats[dim : 2 * dim] / total - mean * mean).clamp(min=0.0)  # biased, as BatchNorm normalises
    if norm.track_running_stats and norm.running_mean is not None:
        with torch.no_grad():
            norm.num_batches_tracked.add_(1)
            momentum = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
            norm.running_mean.mul_(1 - momentum).add_(mean.to(norm.running_mean.dtype), alpha=momentum)
            unbiased = var * (total / (total - 1))
            norm.running_var.mul_(1 - momentum).add_(unbiased.to(norm.running_var.dtype), alpha=momentum)
    normed = ((wide - mean) * torch.rsqrt(var + norm.eps)).to(rows.dtype)
    if norm.affine:
        normed = normed * norm.weight + norm.bias
    return normed
