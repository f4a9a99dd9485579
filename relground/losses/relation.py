"""Relation classification loss (paper Eq. 16-17): multi-label BCE on pairs of stage-2 phrase vectors."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relground.config.model import check_relation_form
from relground.losses._dtype import upcast



def relation_class_weights(counts: Sequence[float] | Tensor, weight_range: float = 9.0) -> Tensor:
    """Per-class weights ``1 + weight_range * minmax(1 / sqrt(count))``: rare relations weigh up to 10x.

    Args:
        counts (Tensor[C_r]): training-set count of each relation category (zeros are treated as 1).
        weight_range: 9 as the authors.

    Returns:
        Tensor[C_r] float32 in [1, 1 + weight_range]; all ones when every count is equal.

    Raises:
        ValueError: ``counts`` is not 1-D or has a negative entry.

    Example:
        >>> relation_class_weights([100, 400, 25])  # the rarest class weighs 10, the most frequent 1
        tensor([ 4.,  1., 10.])
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.dim() != 1 or (counts < 0).any():
        raise ValueError(
            f"relation_class_counts must be a 1-D sequence of counts >= 0, got shape {tuple(counts.shape)}"
        )
    inverse = counts.clamp(min=1).rsqrt()
    spread = inverse.max() - inverse.min()
    normalised = (inverse - inverse.min()) / spread if spread > 0 else torch.zeros_like(inverse)
    return (1.0 + weight_range * normalised).float()


class RelationClassifier(nn.Module):
    """F_rel: concat(z_subject, z_object) -> Linear(2d, 1024) -> ReLU -> Linear(1024, C_r).

    With per-pair features (``pair_dim`` > 0) a second network of the same shape reads them and its logits are
    added (a few geometry columns next to 2d feature columns in one layer were learned too slowly to matter). The
    pair features may come per candidate pair with weights (the subject's and the object's box attention): the
    relation's probability is then the weighted mixture over the candidate pairs (multiple-instance learning), so
    a caption's relation rewards the pair of boxes that makes it true instead of the average box of two twins.

    Args:
        hidden_dim: d.
        num_classes: C_r (88 on Flickr30K).
        inner_dim: hidden width. Authors: 1024.
        pair_dim: width e of extra per-pair features (the boxes' relative geometry with
            ``model.relation_geometry``); 0 = the paper's F_rel(z_i, z_j).
        form: the loss the logits are for, which decides how candidate pairs mix: ``bce`` (per-class sigmoid
            probabilities) or ``ce`` (softmax over the classes).

    Example:
        >>> classifier = RelationClassifier(hidden_dim=8, num_classes=3)
        >>> pooled = torch.randn(1, 2, 8)                 # z^f: [B=1, P=2, d]
        >>> relation_index = torch.tensor([[0, 0, 1]])    # item 0: phrase 0 -> phrase 1
        >>> classifier(pooled, relation_index).shape      # logits [R, C_r]
        torch.Size([1, 3])
    """

    def __init__(
        self, hidden_dim: int, num_classes: int, inner_dim: int = 1024, pair_dim: int = 0, form: str = "bce"
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_relation_classes must be >= 1, got {num_classes}")
        check_relation_form(form)
        self.pair_dim = pair_dim
        self.form = form
        self.mlp = nn.Sequential(nn.Linear(2 * hidden_dim, inner_dim), nn.ReLU(), nn.Linear(inner_dim, num_classes))
        self.pair_mlp = (
            nn.Sequential(nn.Linear(pair_dim, inner_dim), nn.ReLU(), nn.Linear(inner_dim, num_classes))
            if pair_dim
            else None
        )

    def forward(
        self,
        pooled: Tensor,
        relation_index: Tensor,
        pair_features: Optional[Tensor] = None,
        pair_weights: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            pooled (Tensor[B, P, d]): stage-2 phrase vectors z^f.
            relation_index (Tensor[R, 3]): (batch item, subject phrase, object phrase).
            pair_features (Tensor[R, e] or Tensor[R, J, e]): required when ``pair_dim`` > 0, else must be None;
                with a J axis, one row per candidate pair.
            pair_weights (Tensor[R, J]): >= 0, summing to 1 over J (a row of zeros counts as uniform); required
                with a J axis.

        Returns:
            Tensor[R, C_r]: logits; with candidate pairs, for ``bce`` log(p / (1 - p)) of the mixture probability
            p = sum_j w_j sigmoid(logit_j), for ``ce`` log p with p = sum_j w_j softmax(logit_j) (whose softmax is
            p), so :func:`relation_loss` applies unchanged.
        """
        if (pair_features is None) != (self.pair_dim == 0):
            raise ValueError(f"RelationClassifier built with pair_dim={self.pair_dim} needs pair_features of that width")
        item, subject, obj = relation_index.unbind(1)
        logits = self.mlp(torch.cat((pooled[item, subject], pooled[item, obj]), dim=1))
        if self.pair_mlp is None:
            return logits
        pair_logits = self.pair_mlp(pair_features.to(pooled.dtype))
        if pair_features.dim() == 2:
            return logits + pair_logits
        if pair_weights is None or pair_weights.shape != pair_features.shape[:2]:
            raise ValueError(
                f"pair_weights must be [R, J] = {tuple(pair_features.shape[:2])} with per-candidate pair_features"
            )
        logits = logits[:, None, :] + pair_logits  # [R, J, C]
        empty = pair_weights.sum(1, keepdim=True) <= 0
        weights = torch.where(empty, torch.ones_like(pair_weights), pair_weights)
        # Clamped: log(0) of an empty slot would turn its zero gradient into NaN.
        log_w = torch.log((weights / weights.sum(1, keepdim=True)).clamp(min=1e-30))[..., None].to(logits.dtype)
        if self.form == "ce":
            return torch.logsumexp(log_w + F.log_softmax(logits, dim=-1), dim=1)
        log_p = torch.logsumexp(log_w + F.logsigmoid(logits), dim=1)
        log_not_p = torch.logsumexp(log_w + F.logsigmoid(-logits), dim=1)
        return log_p - log_not_p


def relation_loss(
    logits: Tensor, labels: Tensor, class_weights: Optional[Tensor] = None, form: str = "bce"
) -> Tensor:
    """The relation loss over the pairs that have at least one category.

    ``bce``: weighted multi-label BCE, mean over (pair, class) (the authors). ``ce``: softmax cross entropy
    against the pair's categories as a distribution (equal shares when it has several), each class's term
    weighted, mean over pairs (the paper's text, Eq. 17).

    Args:
        logits (Tensor[R, C_r]): F_rel outputs.
        labels (Tensor[R, C_r]): multi-hot; an all-zero row (relation text outside the kept categories) is ignored.
        class_weights (Tensor[C_r]): from :func:`relation_class_weights`; None = 1.
        form: ``bce`` or ``ce``.

    Returns:
        Tensor[]: the loss; 0 (connected to ``logits``) when no pair has a category.

    Example:
        >>> logits, labels = torch.tensor([[2.0, -2.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]])  # [R=1, C_r=3]
        >>> relation_loss(logits, labels), relation_loss(logits, labels, form="ce")
        (tensor(0.3157), tensor(0.1429))
    """
    if logits.shape != labels.shape:
        raise ValueError(f"batch.relation_labels must be [R, C_r] = {tuple(logits.shape)}, got {tuple(labels.shape)}")
    check_relation_form(form)
    labelled = labels.sum(1) > 0
    if not labelled.any():
        return logits.sum() * 0.0
    logits = upcast(logits[labelled])
    weight = None if class_weights is None else class_weights.to(logits.dtype)
    targets = labels[labelled].to(logits.dtype)
    if form == "ce":
        return F.cross_entropy(logits, targets / targets.sum(1, keepdim=True), weight=weight)
    return F.binary_cross_entropy_with_logits(logits, targets, weight=weight)


def relation_loss_static(
    logits: Tensor, labels: Tensor, class_weights: Optional[Tensor] = None, form: str = "bce"
) -> Tensor:
    """:func:`relation_loss` without a branch on the labels or a selection of rows (``model.static_shapes``):
    the per-pair terms of every pair, masked to the labelled pairs; the same means (other summation order), 0
    when no pair has a category.

    Args / Returns: as :func:`relation_loss`.
    """
    if logits.shape != labels.shape:
        raise ValueError(f"batch.relation_labels must be [R, C_r] = {tuple(logits.shape)}, got {tuple(labels.shape)}")
    check_relation_form(form)
    logits = upcast(logits)
    targets = labels.to(logits.dtype)
    label_sum = targets.sum(1, keepdim=True)  # [R, 1]
    labelled = (label_sum > 0).to(logits.dtype)  # [R, 1]
    weight = None if class_weights is None else class_weights.to(logits.dtype)
    if form == "ce":
        per_pair = F.cross_entropy(logits, targets / label_sum.clamp(min=1), weight=weight, reduction="none")  # [R]
        return (per_pair * labelled[:, 0]).sum() / labelled.sum().clamp(min=1)
    per_entry = F.binary_cross_entropy_with_logits(logits, targets, weight=weight, reduction="none")  # [R, C]
    return (per_entry * labelled).sum() / (labelled.sum() * logits.shape[1]).clamp(min=1)
