"""Image-caption ranking loss (the paper's Suppl., after Align2Ground): softmax-normalised similarities,
hardest negative, margin 0.2, both directions; and a contrastive (InfoNCE) alternative."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relground.losses._dtype import upcast


class RankingEmbedding(nn.Module):
    """S = MLP_v(image vector) . MLP_s(sentence vector)^T / sqrt(D).

    Args:
        visual_dim: width of the pooled visual vectors (d).
        text_dim: width of the sentence feature (d).
        embed_dim: D. Authors: 512.
    """

    def __init__(self, visual_dim: int, text_dim: int, embed_dim: int = 512):
        super().__init__()
        self.visual = nn.Sequential(nn.Linear(visual_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, embed_dim))
        self.text = nn.Sequential(nn.Linear(text_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, embed_dim))
        self.scale = 1.0 / math.sqrt(embed_dim)

    def forward(self, pooled: Tensor, phrase_valid: Tensor, sentence: Tensor) -> Tensor:
        """
        Args:
            pooled (Tensor[B, P, d]): per-phrase pooled visual vectors of one stage.
            phrase_valid (Tensor[B, P]): bool.
            sentence (Tensor[B, d]): sentence features.

        Returns:
            Tensor[B, B]: S[i, j] = similarity of image i and caption j.
        """
        weights = phrase_valid.to(pooled.dtype)
        image = (pooled * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp(min=1)  # [B, d]
        return self.visual(image) @ self.text(sentence).T * self.scale


def ranking_loss(similarity: Tensor, margin: float = 0.2, negative_mask: Optional[Tensor] = None) -> Tensor:
    """Hardest-negative ranking loss on softmax-normalised similarities, both directions.

    For rows (image -> captions) P = softmax(S, dim=1) and the loss is
    ``sum_i max_{j != i} ReLU(P_ij - P_ii + margin)``; likewise for columns (caption -> images) with
    softmax(S, dim=0). The two are summed (sum over the batch, as the authors).

    Args:
        similarity (Tensor[B, B]): S, diagonal = matching pairs.
        margin: in probability units. Default 0.2.
        negative_mask (Tensor[B, B]): bool, True where (i, j) may serve as a negative; None = every j != i.
            Pass False for pairs of the same image (its other captions are not negatives).

    Returns:
        Tensor[]: the loss; 0 when no pair has a negative.
    """
    B = similarity.shape[0]
    if similarity.shape != (B, B):
        raise ValueError(f"similarity must be square [B, B], got {tuple(similarity.shape)}")
    eye = torch.eye(B, dtype=torch.bool, device=similarity.device)
    negatives = ~eye if negative_mask is None else (negative_mask & ~eye)
    total = upcast(similarity.new_zeros(()))
    for dim in (1, 0):  # image -> caption (rows), caption -> image (columns)
        probs = torch.softmax(upcast(similarity), dim=dim)
        positive = probs.diagonal()
        # Row i of the violation matrix compares i's positive with i's negatives in this direction.
        candidates = probs if dim == 1 else probs.T
        violation = torch.relu(candidates - positive[:, None] + margin).masked_fill(
            ~negatives if dim == 1 else ~negatives.T, 0.0
        )
        total = total + violation.max(dim=1).values.sum()
    return total


def contrastive_ranking_loss(similarity: Tensor, negative_mask: Optional[Tensor] = None) -> Tensor:
    """InfoNCE over the batch, both directions: cross-entropy of each image against all captions and of each
    caption against all images, the matching pair being the class (CLIP's loss, temperature folded into S).

    An alternative to :func:`ranking_loss`: on the synthetic benchmark the hardest-negative loss stayed at
    2 B margin (every softmax probability 1/B) for whole runs, i.e. the similarity never left its flat start
    (docs/results.md); the cross-entropy rewards every gain of the matching pair over all others.

    Args:
        similarity (Tensor[B, B]): S, diagonal = matching pairs.
        negative_mask (Tensor[B, B]): bool, True where (i, j) may serve as a negative; pairs that are neither
            (other captions of the same image) are left out of the softmax. None = every j != i.

    Returns:
        Tensor[]: mean over rows of the two directions' cross-entropies, summed.
    """
    B = similarity.shape[0]
    if similarity.shape != (B, B):
        raise ValueError(f"similarity must be square [B, B], got {tuple(similarity.shape)}")
    scores = upcast(similarity)
    if negative_mask is not None:
        keep = negative_mask | torch.eye(B, dtype=torch.bool, device=similarity.device)
        scores = scores.masked_fill(~keep, float("-inf"))
    target = torch.arange(B, device=similarity.device)
    return F.cross_entropy(scores, target) + F.cross_entropy(scores.T, target)
