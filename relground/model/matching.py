"""Phrase-box matching shared by the coarse (stage 1) and fine (stage 2) levels (paper Eq. 2-4, 9-10).

F_cls and F_reg act on concat(x_q, x_o). Both start with a Linear layer on that concat, which equals
``W_q x_q + W_o x_o + b``: computing the two halves separately and broadcasting is the same function without
materialising the [B, P, M, 2d] concat.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from relground.model.layers import masked_softmax, softmax_with_mask

BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # R-CNN delta weights (wx, wy, ww, wh), as torchvision and detectron2
BOX_CODER_CLIP = math.log(1000.0 / 16)  # largest dw/dh before exp(), as torchvision and detectron2


class MatchingHeads(nn.Module):
    """F_cls and F_reg (Linear(2d -> 256) + ReLU + Linear(256 -> 4)) on concat(x_q, x_o).

    F_cls is Linear(2d -> 1) as the authors (``cls_hidden=0``), or the paper's "fully-connected network"
    Linear(2d -> h) + ReLU + Linear(h -> 1) (``cls_hidden=h``). The single Linear ranks a phrase's boxes by a
    phrase-independent term (the phrase only enters through s_a); the hidden layer lets the phrase's words
    (e.g. a colour) pick among boxes with the same detector label.

    Args:
        hidden_dim: d.
        regression: build F_reg (STR).
        regression_uses_phrase: F_reg sees x_q (False = the "STR w/o x_q" ablation: F_reg on x_o only).
        regression_hidden: hidden width of F_reg. Default 256.
        cls_hidden: hidden width of F_cls; 0 = a single Linear layer (authors). Default 0.
        cls_bias: initial bias of F_cls's output layer. Default 0. With ``s = s_hat * s_a`` a positive start
            makes every s_hat > 0 at first, so the untrained model follows the category prior instead of
            inverting it wherever s_hat happens to be negative (see docs/model.md "Sign handling").
        regression_in_dim: width of the box input of F_reg; default ``hidden_dim`` (x_o). The pooled ResNet
            feature and the grid feature are wider (``ModelConfig.regression_input`` ``pooled`` / ``grid``).
        init: ``relground`` (each split Linear PyTorch's default for its own input, F_reg's output N(0, 1e-3)) or
            ``pytorch`` (every first layer as PyTorch initialises the one Linear(2d -> .) on the concat, F_reg's
            output PyTorch's default: the authors' code, which never calls its ``init_weights``; ``cls_bias`` is
            added to the output bias).
    """

    def __init__(
        self,
        hidden_dim: int,
        regression: bool = True,
        regression_uses_phrase: bool = True,
        regression_hidden: int = 256,
        cls_hidden: int = 0,
        cls_bias: float = 0.0,
        regression_in_dim: Optional[int] = None,
        init: str = "relground",
    ):
        super().__init__()
        if cls_hidden < 0:
            raise ValueError(f"model.cls_hidden must be >= 0, got {cls_hidden}")
        width = cls_hidden or 1
        self.cls_phrase = nn.Linear(hidden_dim, width, bias=False)
        self.cls_box = nn.Linear(hidden_dim, width)
        self.cls_out = nn.Linear(cls_hidden, 1) if cls_hidden else None
        output_bias = self.cls_out.bias if self.cls_out is not None else self.cls_box.bias
        nn.init.constant_(output_bias, cls_bias)
        self.regression = regression
        self.regression_uses_phrase = regression_uses_phrase
        if regression:
            self.reg_phrase = nn.Linear(hidden_dim, regression_hidden, bias=False) if regression_uses_phrase else None
            self.reg_box = nn.Linear(regression_in_dim or hidden_dim, regression_hidden)
            self.reg_out = nn.Linear(regression_hidden, 4)
            # Start from "no change": zero deltas keep the detector's boxes until regression learns.
            nn.init.normal_(self.reg_out.weight, std=0.001)
            nn.init.zeros_(self.reg_out.bias)
        if init == "pytorch":
            self._init_as_concat_linear(hidden_dim, regression_in_dim or hidden_dim, cls_bias)

    @torch.no_grad()
    def _init_as_concat_linear(self, hidden_dim: int, regression_in_dim: int, cls_bias: float) -> None:
        """PyTorch's default initialisation of one Linear on concat(x_q, x_o): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        for its weight and bias, fan_in the concat's width (``head_init: pytorch``)."""

        def uniform(tensors, fan_in):
            bound = 1.0 / math.sqrt(fan_in)
            for tensor in tensors:
                nn.init.uniform_(tensor, -bound, bound)

        uniform((self.cls_phrase.weight, self.cls_box.weight, self.cls_box.bias), 2 * hidden_dim)
        if self.cls_out is None:
            self.cls_box.bias.add_(cls_bias)
        if self.regression:
            fan_in = regression_in_dim + (hidden_dim if self.reg_phrase is not None else 0)
            first = [self.reg_box.weight, self.reg_box.bias] + ([self.reg_phrase.weight] if self.reg_phrase else [])
            uniform(first, fan_in)
            uniform((self.reg_out.weight, self.reg_out.bias), self.reg_out.in_features)

    def logits(self, phrases: Tensor, boxes: Tensor) -> Tensor:
        """F_cls.

        Args:
            phrases (Tensor[B, P, d]): x_q.
            boxes (Tensor[B, M, d] | Tensor[B, P, K, d]): x_o shared by all phrases, or per phrase.

        Returns:
            Tensor[B, P, M] (or [B, P, K]): s_hat.
        """
        box_term = self.cls_box(boxes)  # [B, M, h] or [B, P, K, h]
        if box_term.dim() == 3:
            box_term = box_term[:, None]  # [B, 1, M, h]
        hidden = self.cls_phrase(phrases)[:, :, None, :] + box_term  # [B, P, M|K, h]
        if self.cls_out is None:
            return hidden.squeeze(-1)
        return self.cls_out(torch.relu(hidden)).squeeze(-1)

    def deltas(self, phrases: Tensor, boxes: Tensor) -> Tensor:
        """F_reg.

        Args:
            phrases (Tensor[B, P, d]): x_q.
            boxes (Tensor[B, M, d'] | Tensor[B, P, K, d']): x_o, or the pooled feature (d' = regression_in_dim).

        Returns:
            Tensor[B, P, M, 4] (or [B, P, K, 4]): R-CNN deltas, phrase-specific unless the phrase is dropped.
        """
        box_term = self.reg_box(boxes)  # [B, M, h] or [B, P, K, h]
        if box_term.dim() == 3:
            box_term = box_term[:, None]  # [B, 1, M, h]
        if self.reg_phrase is not None:
            box_term = box_term + self.reg_phrase(phrases)[:, :, None, :]  # [B, P, M, h]
        else:
            box_term = box_term.expand(phrases.shape[0], phrases.shape[1], -1, -1)
        return self.reg_out(torch.relu(box_term))


def fuse_prior(logits: Tensor, prior: Tensor, fusion: str = "product") -> Tensor:
    """Fused score s = s_hat x s_a (Eq. 4).

    ``product`` (authors): ``s_hat * s_a``. With s_a >= 0 a larger prior *amplifies* s_hat's sign, so for a
    negative logit a stronger prior lowers the score. ``sigmoid_product``: ``sigmoid(s_hat) * s_a`` is increasing in
    both and >= 0. Either way an entry with s_a = 0 is masked out of the softmax (see :func:`prior_attention`).
    """
    if fusion == "product":
        return logits * prior
    if fusion == "sigmoid_product":
        return torch.sigmoid(logits) * prior
    raise ValueError(f"model.score_fusion must be 'product' or 'sigmoid_product', got {fusion!r}")


def prior_attention(
    logits: Tensor,
    prior: Tensor,
    valid: Tensor,
    fusion: str = "product",
    epsilon: float = 0.0,
    empty_prior: str = "all_boxes",
) -> tuple[Tensor, Tensor, Tensor]:
    """Attention over boxes masked to s_a > 0 (the authors' softmax), with a guard for all-zero rows.

    A phrase whose every valid box has s_a = 0 (no word of it is near any detector label) would have no box at
    all; for such a row the prior is taken as 1 and the softmax runs over all valid boxes, so the learned
    s_hat alone decides.

    Args:
        logits (Tensor[B, P, X]): s_hat.
        prior (Tensor[B, P, X]): s_a >= 0.
        valid (Tensor[B, P, X] | Tensor[B, 1, X]): bool, real boxes.
        fusion: see :func:`fuse_prior`.
        epsilon: 0 = exact masked softmax; > 0 = the authors' (``model.softmax_epsilon``, docs/fidelity.md D6).
        empty_prior: ``all_boxes`` (the guard above) or ``none`` (no guard: such a row's attention is all zero, the
            authors', ``model.empty_prior``).

    Returns:
        score (Tensor[B, P, X]): fused s (Eq. 4 / 9).
        attention (Tensor[B, P, X]): alpha, 0 outside ``mask``; rows without any valid box are all zero.
        mask (Tensor[B, P, X]): bool, the entries the softmax ran over.
    """
    valid = valid.expand_as(prior)
    with_prior = (prior > 0) & valid
    if empty_prior == "none":
        mask = with_prior
    else:
        row_has_prior = with_prior.any(-1, keepdim=True)  # [B, P, 1]
        prior = torch.where(row_has_prior, prior, torch.ones_like(prior))
        mask = torch.where(row_has_prior, with_prior, valid)
    score = fuse_prior(logits, prior, fusion)
    return score, softmax_with_mask(epsilon)(score, mask), mask


def gather_topk(values: Tensor, index: Tensor, per_phrase: bool = False) -> Tensor:
    """Gather the top-K entries of every phrase along the box axis.

    Args:
        values (Tensor[B, M, ...] | Tensor[B, P, M, ...]): per-box values, shared by the phrases
            (``per_phrase=False``) or per phrase (``per_phrase=True``).
        index (Tensor[B, P, K]): long; -1 (empty slots) reads box 0, callers mask those slots.
        per_phrase: layout of ``values``.

    Returns:
        Tensor[B, P, K, ...]
    """
    B, P, _ = index.shape
    index = index.clamp(min=0)
    batch = torch.arange(B, device=index.device)[:, None, None]
    if per_phrase:
        return values[batch, torch.arange(P, device=index.device)[None, :, None], index]
    return values[batch, index]


def select_topk(
    attention: Tensor, valid: Tensor, k: int, topk_select: Callable[..., tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor]:
    """Top-K boxes per phrase by attention (ties to the lower index) with ``relground.ops.topk_select``.

    Args:
        attention (Tensor[B, P, M]): stage-1 attention.
        valid (Tensor[B, M]): bool, real proposals (boxes masked by s_a still fill the K slots, with attention 0).
        k: K.
        topk_select: the native op or its reference.

    Returns:
        index (Tensor[B, P, K]): long, -1 in slots beyond the image's number of valid proposals.
        slot_valid (Tensor[B, P, K]): bool, index >= 0.
    """
    B, P, M = attention.shape
    k = min(k, M)
    row_valid = valid[:, None, :].expand(B, P, M).reshape(B * P, M)
    _, index = topk_select(attention.detach().reshape(B * P, M).contiguous(), k, row_valid.contiguous())
    index = index.reshape(B, P, k)
    return index, index >= 0


class BoxDecoder:
    """R-CNN delta decoding (torchvision's ``BoxCoder.decode_single``: dw/dh clamped at ``clip``) followed by
    clipping to the image.

    The decoding is torchvision's arithmetic, operation for operation (``tests/model/test_matching.py`` compares
    bit for bit), written out because ``decode_single`` builds a device tensor from the scalar 0.5: a host-to-device
    copy inside the step, which CUDA-graph capture (``train.cuda_graph``) refuses.

    Args:
        weights: (wx, wy, ww, wh). Default :data:`BOX_CODER_WEIGHTS` (10, 10, 5, 5).
        clip: largest dw/dh before exp(). Default :data:`BOX_CODER_CLIP` log(1000/16).
    """

    def __init__(
        self, weights: tuple[float, float, float, float] = BOX_CODER_WEIGHTS, clip: float = BOX_CODER_CLIP
    ):
        self.weights = tuple(float(w) for w in weights)
        self.clip = float(clip)

    def decode(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """``deltas`` [N, 4] applied to ``boxes`` [N, 4] (xyxy), without clipping to an image."""
        boxes = boxes.to(deltas.dtype)
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights
        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = torch.clamp(deltas[:, 2::4] / ww, max=self.clip)  # keeps exp() finite
        dh = torch.clamp(deltas[:, 3::4] / wh, max=self.clip)
        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        half_w = 0.5 * (torch.exp(dw) * widths[:, None])
        half_h = 0.5 * (torch.exp(dh) * heights[:, None])
        return torch.stack(
            (pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), dim=2
        ).flatten(1)

    def __call__(self, deltas: Tensor, boxes: Tensor, image_sizes: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            deltas (Tensor[B, ..., 4]): predicted deltas.
            boxes (Tensor[B, ..., 4]): reference boxes, xyxy resized pixels (same shape as ``deltas``).
            image_sizes (Tensor[B, 2]): (height, width) to clip to; None = no clipping.

        Returns:
            Tensor[B, ..., 4]: decoded boxes.
        """
        shape = deltas.shape
        decoded = self.decode(deltas.reshape(-1, 4), boxes.reshape(-1, 4).to(deltas.dtype)).reshape(shape)
        if image_sizes is None:
            return decoded
        view = (shape[0],) + (1,) * (len(shape) - 2)
        height = image_sizes[:, 0].to(decoded.dtype).reshape(view)
        width = image_sizes[:, 1].to(decoded.dtype).reshape(view)
        x1, y1, x2, y2 = decoded.unbind(-1)
        zero = torch.zeros((), dtype=decoded.dtype, device=decoded.device)
        return torch.stack(
            (
                torch.minimum(x1.clamp(min=0), width),
                torch.minimum(y1.clamp(min=0), height),
                torch.maximum(torch.minimum(x2, width), zero),
                torch.maximum(torch.minimum(y2, height), zero),
            ),
            dim=-1,
        )
