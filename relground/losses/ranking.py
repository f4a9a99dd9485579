"""Image-caption ranking loss (the paper's Suppl., after Align2Ground): softmax-normalised similarities,
hardest negative, margin 0.2, both directions; and a contrastive (InfoNCE) alternative.

Under data parallelism :func:`global_ranking_loss` builds the similarity over the global batch (embeddings
all-gathered with gradients), so the loss does not depend on the number of processes (docs/distributed.md)."""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import Tensor, nn

from relground.losses._dtype import upcast


class RankingEmbedding(nn.Module):
    """S = MLP_v(image vector) . MLP_s(sentence vector)^T / sqrt(D).

    Args:
        visual_dim: width of the pooled visual vectors (d).
        text_dim: width of the sentence feature (d).
        embed_dim: D. Authors: 512.
        projection: ``mlp`` (Linear-ReLU-Linear each side, relground) or ``linear`` (one Linear each side, the
            authors' code; ``model.ranking_projection``).

    Example:
        >>> embedding = RankingEmbedding(visual_dim=8, text_dim=6, embed_dim=4)
        >>> pooled, valid, sentence = torch.randn(3, 2, 8), torch.ones(3, 2, dtype=torch.bool), torch.randn(3, 6)
        >>> embedding(pooled, valid, sentence).shape  # S: [B images, B captions], float32
        torch.Size([3, 3])
    """

    def __init__(self, visual_dim: int, text_dim: int, embed_dim: int = 512, projection: str = "mlp"):
        super().__init__()
        if projection not in ("mlp", "linear"):
            raise ValueError(f"model.ranking_projection must be 'mlp' or 'linear', got {projection!r}")
        if projection == "linear":
            self.visual, self.text = nn.Linear(visual_dim, embed_dim), nn.Linear(text_dim, embed_dim)
        else:
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
        image, text = self.embed(pooled, phrase_valid, sentence)
        return image @ text.T * self.scale

    def embed(self, pooled: Tensor, phrase_valid: Tensor, sentence: Tensor) -> tuple[Tensor, Tensor]:
        """MLP_v(image vector) [B, D] and MLP_s(sentence vector) [B, D] (arguments as :meth:`forward`)."""
        weights = phrase_valid.to(pooled.dtype)
        image = (pooled * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp(min=1)  # [B, d]
        return self.visual(image), self.text(sentence)


def softmax_epsilon(scores: Tensor, dim: int, epsilon: float = 0.0) -> Tensor:
    """softmax(scores) (``epsilon`` 0), or the authors' exp(x - max x) / (sum + ``epsilon``) (docs/fidelity.md D6)."""
    if epsilon == 0:
        return torch.softmax(scores, dim=dim)
    exps = torch.exp(scores - scores.amax(dim=dim, keepdim=True))
    return exps / (exps.sum(dim=dim, keepdim=True) + epsilon)


def ranking_loss(
    similarity: Tensor, margin: float = 0.2, negative_mask: Optional[Tensor] = None, epsilon: float = 0.0
) -> Tensor:
    """Hardest-negative ranking loss on softmax-normalised similarities, both directions.

    For rows (image -> captions) P = softmax(S, dim=1) and the loss is
    ``sum_i max_{j != i} ReLU(P_ij - P_ii + margin)``; likewise for columns (caption -> images) with
    softmax(S, dim=0). The two are summed (sum over the batch, as the authors).

    Args:
        similarity (Tensor[B, B]): S, diagonal = matching pairs.
        margin: in probability units. Default 0.2.
        negative_mask (Tensor[B, B]): bool, True where (i, j) may serve as a negative; None = every j != i.
            Pass False for pairs of the same image (its other captions are not negatives).
        epsilon: the authors' softmax epsilon (``model.softmax_epsilon``); 0 = exact softmax.

    Returns:
        Tensor[]: the loss; 0 when no pair has a negative.

    Example:
        >>> ranking_loss(torch.eye(3) * 2.0)  # matching pairs already ahead by more than the margin
        tensor(0.)
        >>> ranking_loss(torch.zeros(3, 3))  # flat similarity: 2 directions x 3 rows x margin 0.2
        tensor(1.2000)
    """
    B = similarity.shape[0]
    if similarity.shape != (B, B):
        raise ValueError(f"similarity must be square [B, B], got {tuple(similarity.shape)}")
    eye = torch.eye(B, dtype=torch.bool, device=similarity.device)
    negatives = ~eye if negative_mask is None else (negative_mask & ~eye)
    total = upcast(similarity.new_zeros(()))
    for dim in (1, 0):  # image -> caption (rows), caption -> image (columns)
        probs = softmax_epsilon(upcast(similarity), dim, epsilon)
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

    Example:
        >>> contrastive_ranking_loss(torch.zeros(3, 3))  # flat similarity: 2 log 3
        tensor(2.1972)
        >>> contrastive_ranking_loss(torch.eye(3) * 2.0)
        tensor(0.4791)
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


def _all_gather_with_gradient(tensor: Tensor) -> list[Tensor]:
    """Every process's ``tensor`` (same shape), rank order; the backward sums the gradients back to their owner."""
    with warnings.catch_warnings():  # recent torch flags these autograd-aware collectives as deprecated (private successor)
        warnings.filterwarnings("ignore", r"torch\.distributed\.nn\.functional", FutureWarning)
        return list(dist_nn.all_gather(tensor))


def _hinge_terms(probs: Tensor, positive: Tensor, negatives: Tensor, margin: float) -> Tensor:
    """sum_i max_j ReLU(probs_ij - positive_i + margin) over the allowed j (0 when none): [b, B], [b], [b, B]."""
    violation = torch.relu(probs - positive[:, None] + margin).masked_fill(~negatives, 0.0)
    return violation.max(dim=1).values.sum()


def global_ranking_loss(
    image: Tensor,
    text: Tensor,
    scale: float,
    image_keys: Optional[Tensor] = None,
    form: str = "hinge",
    margin: float = 0.2,
    epsilon: float = 0.0,
) -> Tensor:
    """This process's share of the ranking loss over the GLOBAL batch of a data-parallel step.

    Every process gathers all image and caption embeddings (with gradients: the backward pass sends each
    process the gradient of every other process's terms with respect to its own embeddings), computes the rows
    of its own images against every caption (softmax over captions) and the columns of its own captions
    against every image (softmax over images). The shares summed over processes are exactly
    :func:`ranking_loss` (or :func:`contrastive_ranking_loss`) of the whole global batch; the value returned
    is that share times the world size, so that DistributedDataParallel's gradient *average* gives the
    gradient of the global loss, and the mean of the returned values over processes is the global loss.

    Args:
        image (Tensor[b, D]): MLP_v of this process's pairs (:meth:`RankingEmbedding.embed`).
        text (Tensor[b, D]): MLP_s of this process's captions.
        scale: 1 / sqrt(D).
        image_keys (Tensor[b]): int64 key of each pair's image, equal for pairs of one image on any process
            (other captions of the same image are not negatives); None = only the matching pair is excluded.
        form: ``hinge`` or ``contrastive``.
        margin: hinge margin in probability units.
        epsilon: the authors' softmax epsilon (hinge form); 0 = exact softmax.

    Returns:
        Tensor[]: world size x (this process's rows + columns); every process must have the same b.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    b = image.shape[0]
    images = torch.cat(_all_gather_with_gradient(image))  # [B, D], B = world x b, rank order
    texts = torch.cat(_all_gather_with_gradient(text))  # [B, D]
    own = torch.arange(b, device=image.device) + rank * b  # global index of this process's pairs
    if image_keys is None:
        keys = torch.arange(world * b, device=image.device)  # every pair its own image
        local_keys = own
    else:
        gathered = [torch.empty_like(image_keys) for _ in range(world)]
        dist.all_gather(gathered, image_keys)
        keys, local_keys = torch.cat(gathered), image_keys
    negatives = local_keys[:, None] != keys[None, :]  # [b, B]: own pair i vs global j (same mask both ways)
    negatives[torch.arange(b, device=image.device), own] = False
    rows = upcast(image @ texts.T * scale)  # [b, B]: own images vs all captions
    columns = upcast(images @ text.T * scale)  # [B, b]: all images vs own captions
    if form == "contrastive":
        keep = negatives.clone()
        keep[torch.arange(b, device=image.device), own] = True
        row_scores = rows.masked_fill(~keep, float("-inf"))
        column_scores = columns.T.masked_fill(~keep, float("-inf"))  # [b, B]: own captions vs all images
        share = F.cross_entropy(row_scores, own, reduction="sum") + F.cross_entropy(column_scores, own, reduction="sum")
        return share * world / (world * b)  # mean over the global rows, times world (DDP averages)
    row_probs = softmax_epsilon(rows, 1, epsilon)  # image -> captions
    column_probs = softmax_epsilon(columns, 0, epsilon).T  # caption -> images, [b, B]
    index = torch.arange(b, device=image.device)
    share = _hinge_terms(row_probs, row_probs[index, own], negatives, margin)
    share = share + _hinge_terms(column_probs, column_probs[index, own], negatives, margin)
    return share * world
