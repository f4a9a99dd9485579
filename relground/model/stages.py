"""What :class:`relground.model.reir.ReIR` passes between its stages and returns, and the small functions it
chooses once at construction for the variants beyond the paper (stage isolation, stage-2 pooling)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from relground.structures.batch import GroundingBatch, image_codes


# Stage isolation (``detach_stage2_inputs``, ``detach_regression_inputs``): pass the inputs on, or cut their gradient.
def keep_gradient(*tensors: Optional[Tensor]) -> tuple[Optional[Tensor], ...]:
    return tensors


def detach_all(*tensors: Optional[Tensor]) -> tuple[Optional[Tensor], ...]:
    return tuple(None if t is None else t.detach() for t in tensors)


# ``stage2_pooling``: the attention [B, P, K] that pools z^f, from alpha^f and the fused alpha^c * alpha^f.
def pool_fused(fine: Tensor, fused: Tensor) -> Tensor:
    return fused  # the authors: alpha^c_k * alpha^f_k, not renormalised


def pool_fine(fine: Tensor, fused: Tensor) -> Tensor:
    return fine  # the paper (Sec. 3.3): z^f = sum_k alpha^f_k x'_k


STAGE2_POOLING: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"fused": pool_fused, "fine": pool_fine}


@dataclass
class ReIROutput:
    """What :class:`ReIR` returns. Boxes are xyxy in resized-image pixels (divide by ``batch.scales``).

    Attributes:
        losses: unweighted loss terms that were active (rec_s1, rec_s2, rank_s1, rank_s2, reg_s1, reg_s2, rel).
        total_loss: sum of ``losses`` weighted by the LossConfig lambdas (0-dim; zero without losses).
        boxes (Tensor[B, P, 4]): final prediction: argmax of the fused score, both stages' deltas applied
            (single-stage models: the stage-1 prediction).
        scores (Tensor[B, P]): fused score alpha^c * alpha^f of the chosen box (single-stage: alpha^c).
        boxes_stage1 (Tensor[B, P, 4]): argmax of alpha^c, stage-1 delta applied.
        boxes_stage2 (Tensor[B, P, 4] | None): argmax of alpha^f alone, both deltas applied; None for single-stage.
        attention_stage1 (Tensor[B, P, M]): alpha^c.
        topk_index (Tensor[B, P, K] | None): the proposals kept for stage 2 (-1 = empty slot).
        attention_stage2 (Tensor[B, P, K] | None): alpha^f.
    """

    losses: dict[str, Tensor]
    total_loss: Tensor
    boxes: Tensor
    scores: Tensor
    boxes_stage1: Tensor
    boxes_stage2: Optional[Tensor] = None
    attention_stage1: Optional[Tensor] = None
    topk_index: Optional[Tensor] = None
    attention_stage2: Optional[Tensor] = None


@dataclass
class CoarseStage:
    """Stage 1 over all M proposals."""

    attention: Tensor  # alpha^c [B, P, M], zero rows for padding phrases
    pooled: Tensor  # z^c [B, P, d]
    deltas: Optional[Tensor]  # delta^c [B, P, M, 4]; None without F_reg


@dataclass
class TopK:
    """Each phrase's K best proposals by alpha^c, and the features stage 2 reads of them."""

    index: Tensor  # [B, P, K] long, -1 = empty slot
    valid: Tensor  # [B, P, K] bool
    attention: Tensor  # alpha^c_k [B, P, K], 0 in empty slots
    boxes: Tensor  # [B, P, K, 4] the boxes the features were pooled from (refined once re-pooling starts)
    refined: Tensor  # [B, P, K, 4] the stage-1-refined boxes (= the proposals without F_reg), no gradient
    features: Tensor  # x_k [B, P, K, d]
    pooled: Optional[Tensor]  # F_reg's box input [B, P, K, d'] with regression_input pooled | grid, else None


@dataclass
class FineStage:
    """Stage 2 over each phrase's top-K, after the visual object graph."""

    features: Tensor  # x'_k [B, P, K, d], the graph's output
    attention: Tensor  # alpha^f [B, P, K]
    fused: Tensor  # alpha^c_k * alpha^f_k [B, P, K], the inference score (Eq. 11)
    pooling: Tensor  # the attention that pooled z^f [B, P, K] (``stage2_pooling``)
    pooled: Tensor  # z^f [B, P, d]
    deltas: Optional[Tensor]  # delta^f [B, P, K, 4]; None without F_reg


def batch_image_ids(batch: GroundingBatch) -> Optional[list[str]]:
    if len(batch.meta) != batch.batch_size or any("image_id" not in m for m in batch.meta):
        return None
    return [str(m["image_id"]) for m in batch.meta]


def with_image_codes(batch: GroundingBatch) -> GroundingBatch:
    """``batch`` with its integer image codes (``image_keys``, ``image_index``, ``image_firsts``), made on the host
    from ``meta``'s image ids and copied to the images' device when the collate function did not make them (a
    hand-built batch); ``batch`` itself when it has them. Without image ids every item is its own image (no
    ``image_keys``). The static-shape step (``ReIR._prepare_static``) and the CUDA-graph step, which must make them
    before its capture (a host-to-device copy cannot be captured), both call this."""
    if batch.image_index is not None:
        return batch
    ids = batch_image_ids(batch)
    if ids is None:
        every = torch.arange(batch.batch_size)
        codes = {"image_keys": None, "image_index": every, "image_firsts": every}
    else:
        codes = image_codes(ids)
    device = batch.images.device
    codes = {k: None if v is None else v.to(device, non_blocking=True) for k, v in codes.items()}
    return dataclasses.replace(batch, **codes)


def pick(values: Tensor, index: Tensor) -> Tensor:
    """values [B, P, X, ...] at index [B, P] -> [B, P, ...]."""
    return torch.gather(
        values, 2, index.reshape(index.shape + (1,) * (values.dim() - 2)).expand(index.shape + (1,) + values.shape[3:])
    ).squeeze(2)


def check_prior(batch: GroundingBatch) -> None:
    B, M, _ = batch.proposals.shape
    P = batch.phrase_valid.shape[1]
    if batch.category_prior.shape != (B, P, M):
        raise ValueError(
            f"batch.category_prior must be [B, P, M] = {(B, P, M)}, got {tuple(batch.category_prior.shape)}"
        )
