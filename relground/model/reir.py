"""ReIR: the two-stage Relation-aware Instance Refinement network and its weakly supervised losses.

One forward pass, in the paper's order (shapes: B pairs, M proposals, P phrases, K kept boxes, d features)::

    maps   = backbone(images)                              # C4 or dilated C5, frozen
    x_o    = box_head(proposals)                           # [B, M, d]
    x_q, s = phrase_encoder(words)                         # [B, P, d], [B, d]
    stage 1: alpha^c = softmax_{s_a > 0}(F_cls(x_q, x_o) * s_a)   [B, P, M];  delta^c = F_reg(x_q, x_o)
    top-K by alpha^c; refined boxes re-pooled after cfg.refine_start_iteration          # [B, P, K, d]
    VOGN over parsed relations (+ typed geometric messages, model.vogn_geometry)        # x'_o
    stage 2: alpha^f = softmax_{s_a > 0}(F_cls(x_q, x'_o) * s_a)  [B, P, K];  delta^f = F_reg(x_q, x'_o)
    prediction: argmax_k alpha^c_k * alpha^f_k, box = decode(delta^f, decode(delta^c, proposal))
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from relground.structures.batch import GroundingBatch
from relground.losses import (
    PhraseDecoder,
    RankingEmbedding,
    RelationClassifier,
    contrastive_ranking_loss,
    ranking_loss,
    reconstruction_loss,
    relation_class_weights,
    relation_loss,
    self_taught_regression_loss,
)
from relground.model.backbone import ResNetBackbone
from relground.model.box_head import BoxHead
from relground.config.model import LossConfig, ModelConfig
from relground.model.matching import BoxDecoder, MatchingHeads, gather_topk, prior_attention, select_topk
from relground.model.phrase_encoder import PhraseEncoder
from relground.model.vogn import (
    RelationalGeometryMessages,
    VisualObjectGraph,
    relation_adjacency,
    relation_roles,
    relative_geometry,
)


def op_functions(native: bool) -> SimpleNamespace:
    """The four ops the model uses: ``relground.ops`` (native when built) or the pure-PyTorch references."""
    if native:
        from relground import ops

        return SimpleNamespace(
            roi_align_avg=ops.roi_align_avg, topk_select=ops.topk_select, self_taught_targets=ops.self_taught_targets
        )
    from relground.ops import _reference

    return SimpleNamespace(
        roi_align_avg=_reference._roi_align_avg_reference,
        topk_select=_reference._topk_select_reference,
        self_taught_targets=_reference._self_taught_targets_reference,
    )


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


def _image_ids(batch: GroundingBatch) -> Optional[list[str]]:
    if len(batch.meta) != batch.batch_size or any("image_id" not in m for m in batch.meta):
        return None
    return [str(m["image_id"]) for m in batch.meta]


def _pick(values: Tensor, index: Tensor) -> Tensor:
    """values [B, P, X, ...] at index [B, P] -> [B, P, ...]."""
    return torch.gather(
        values, 2, index.reshape(index.shape + (1,) * (values.dim() - 2)).expand(index.shape + (1,) + values.shape[3:])
    ).squeeze(2)


class ReIR(nn.Module):
    """Relation-aware Instance Refinement (Liu et al., CVPR 2021).

    Args:
        cfg: architecture switches (:class:`ModelConfig`, with its :class:`LossConfig` in ``cfg.loss``).
        caption_vocab_size: caption vocabulary size (id 0 = padding).
        phrase_vocab_size: phrase vocabulary size for reconstruction (id 0 = end).
        num_relation_classes: C_r (88 on Flickr30K).
        relation_class_counts (Sequence[int] | Tensor[C_r]): training counts per relation category for the
            BCE class weights; None = all weights 1.
        loss_cfg: overrides ``cfg.loss`` (for a top-level config that keeps the losses apart).

    Example:
        >>> cfg = ModelConfig.preset("full", backbone="resnet10", hidden_dim=64, word_dim=32)
        >>> model = ReIR(cfg, caption_vocab_size=100, phrase_vocab_size=50, num_relation_classes=8)
        >>> out = model(batch, iteration=0)          # doctest: +SKIP
        >>> out.total_loss.backward()                # doctest: +SKIP
    """

    def __init__(
        self,
        cfg: ModelConfig,
        caption_vocab_size: int,
        phrase_vocab_size: int,
        num_relation_classes: int,
        relation_class_counts: Optional[Sequence[int] | Tensor] = None,
        loss_cfg: Optional[LossConfig] = None,
    ):
        super().__init__()
        if loss_cfg is not None:
            cfg = cfg.replace(loss=loss_cfg)  # re-validates the combination
        self.cfg = cfg
        self.loss_cfg = cfg.loss
        self.ops = op_functions(cfg.native_ops)
        d = cfg.hidden_dim

        self.backbone = ResNetBackbone(
            cfg.backbone,
            box_head=cfg.box_head,
            weights=cfg.backbone_weights,
            stride_in_1x1=cfg.stride_in_1x1,
            frozen=cfg.freeze_backbone,
            output_size=cfg.roi_output_size,
            sampling_ratio=cfg.roi_sampling_ratio,
            roi_align_avg=self.ops.roi_align_avg,
            channels_last=cfg.channels_last,
            cache_max_images=cfg.cache_max_images if cfg.cache_features else 0,
        )
        self.box_head = BoxHead(
            self.backbone.out_channels, d, cfg.spatial_feature, cfg.box_input_norm, cfg.spatial_scale,
            regression_grid=cfg.regression_grid if cfg.box_regression and cfg.regression_input == "grid" else 0,
        )
        self.phrase_encoder = PhraseEncoder(
            caption_vocab_size, cfg.word_dim, d, cfg.rnn_type, cfg.bidirectional, cfg.phrase_batchnorm
        )
        self.regress_pooled = cfg.box_regression and cfg.regression_input in ("pooled", "grid")
        regression_in_dim = self.box_head.pooled_features if self.regress_pooled else d
        heads = (
            d, cfg.box_regression, cfg.regression_uses_phrase, cfg.regression_hidden, cfg.cls_hidden, cfg.cls_bias,
            regression_in_dim,
        )
        self.matching = MatchingHeads(*heads)
        # The authors share F_cls and F_reg between the stages; share_stage_heads=False gives stage 2 its own.
        self.matching_stage2 = MatchingHeads(*heads) if cfg.two_stage and not cfg.share_stage_heads else None
        self.box_decoder = BoxDecoder(cfg.box_coder_weights, cfg.bbox_clip)
        self.graph = VisualObjectGraph(d, cfg.vogn_dim, cfg.vogn_variant, cfg.vogn_weights) if cfg.vogn else None
        self.relational = (
            RelationalGeometryMessages(d, num_relation_classes, cfg.relation_hidden) if cfg.vogn_geometry else None
        )

        loss = self.loss_cfg
        self.decoder = PhraseDecoder(phrase_vocab_size, d, cfg.word_dim, d) if loss.reconstruction_stages else None
        own_decoder = cfg.separate_stage2_decoder and 2 in loss.reconstruction_stages
        self.decoder_stage2 = PhraseDecoder(phrase_vocab_size, d, cfg.word_dim, d) if own_decoder else None
        self.ranking = RankingEmbedding(d, d, cfg.ranking_dim) if loss.ranking else None
        self.relation = (
            RelationClassifier(
                d, num_relation_classes, cfg.relation_hidden, 4 if cfg.relation_geometry else 0, loss.relation_form
            )
            if loss.relation
            else None
        )
        if relation_class_counts is not None:
            weights = relation_class_weights(relation_class_counts, loss.relation_weight_range)
            if weights.numel() != num_relation_classes:
                raise ValueError(
                    f"relation_class_counts has {weights.numel()} entries, "
                    f"num_relation_classes is {num_relation_classes}"
                )
            self.register_buffer("relation_weights", weights)
        else:
            self.relation_weights = None

    def _embed_boxes(
        self, maps: Tensor, boxes: Tensor, valid: Tensor, sizes: Tensor, running_stats: bool = False
    ) -> tuple[Tensor, Optional[Tensor]]:
        """x_o of ``boxes`` [B, X, d], and the pooled feature [B, X, d'] when F_reg reads it (else None)."""
        out = self.box_head(
            self.backbone, maps, boxes, valid, sizes, running_stats=running_stats, return_pooled=self.regress_pooled
        )
        return out if self.regress_pooled else (out, None)

    def _regression_inputs(self, phrases: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
        """What F_reg reads: x_q and the box features, detached with ``cfg.detach_regression_inputs``."""
        if self.cfg.detach_regression_inputs:
            return phrases.detach(), boxes.detach()
        return phrases, boxes

    @classmethod
    def from_config(cls, cfg: ModelConfig, *args, **kwargs) -> "ReIR":
        """Same as the constructor (detectron2-style entry point)."""
        return cls(cfg, *args, **kwargs)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that learn (the frozen backbone excluded), for the optimiser."""
        return [p for p in self.parameters() if p.requires_grad]

    def load_pretrained_word_vectors(self, matrix: Tensor) -> None:
        """Initialise the caption word embedding; see :meth:`PhraseEncoder.load_pretrained_word_vectors`."""
        self.phrase_encoder.load_pretrained_word_vectors(matrix)

    def forward(
        self, batch: GroundingBatch, iteration: Optional[int] = None, compute_losses: Optional[bool] = None
    ) -> ReIROutput:
        """
        Args:
            batch: a :class:`GroundingBatch` (boxes in resized-image pixels).
            iteration: the training iteration (schedules refined-box re-pooling and the regression loss);
                None = evaluation (refined boxes, every loss that is on).
            compute_losses: default ``self.training``.

        Returns:
            :class:`ReIROutput`.
        """
        cfg, loss_cfg, ops = self.cfg, self.loss_cfg, self.ops
        compute_losses = self.training if compute_losses is None else compute_losses
        proposals, proposal_valid, prior = batch.proposals, batch.proposal_valid, batch.category_prior
        phrase_valid, sizes = batch.phrase_valid, batch.image_sizes
        B, M, _ = proposals.shape
        P = phrase_valid.shape[1]
        if prior.shape != (B, P, M):
            raise ValueError(f"batch.category_prior must be [B, P, M] = {(B, P, M)}, got {tuple(prior.shape)}")
        image_ids = _image_ids(batch)

        # Features.
        maps = self.backbone.image_maps(batch.images, sizes, image_ids)
        x_o, pooled_o = self._embed_boxes(maps, proposals, proposal_valid, sizes)  # [B, M, d], [B, M, d'] | None
        x_q, sentence = self.phrase_encoder(batch.words, batch.word_lengths, batch.phrase_spans, phrase_valid)

        # Stage 1: coarse matching over all proposals.
        logits1 = self.matching.logits(x_q, x_o)  # [B, P, M]
        _, att1, _ = prior_attention(logits1, prior, proposal_valid[:, None, :], cfg.score_fusion)
        att1 = att1 * phrase_valid[..., None]  # [B, P, M], zero rows for padding phrases
        z1 = torch.einsum("bpm,bmd->bpd", att1, x_o)  # z^c [B, P, d]
        reg_o = x_o if pooled_o is None else pooled_o
        deltas1 = self.matching.deltas(*self._regression_inputs(x_q, reg_o)) if cfg.box_regression else None

        best1 = att1.argmax(-1)  # [B, P]
        proposals_per_phrase = proposals[:, None].expand(B, P, M, 4)
        boxes_stage1 = _pick(proposals_per_phrase, best1)  # [B, P, 4]
        if deltas1 is not None:
            boxes_stage1 = self.box_decoder(_pick(deltas1, best1), boxes_stage1, sizes)
        out = ReIROutput(
            losses={},
            total_loss=z1.new_zeros(()),
            boxes=boxes_stage1,
            scores=_pick(att1[..., None], best1)[..., 0],
            boxes_stage1=boxes_stage1,
            attention_stage1=att1,
        )

        # Stage 2: fine matching over each phrase's top-K.
        stage2_boxes = z2 = deltas2 = att2 = slot_valid = pool2 = x_k_pregraph = None
        if cfg.two_stage:
            index, slot_valid = select_topk(att1, proposal_valid, cfg.top_k, ops.topk_select)  # [B, P, K]
            slot_valid = slot_valid & phrase_valid[..., None]
            K = index.shape[2]
            att1_k = gather_topk(att1, index, per_phrase=True) * slot_valid  # [B, P, K]
            boxes_k = gather_topk(proposals, index)  # [B, P, K, 4]
            refined_k = boxes_k
            if deltas1 is not None:
                refined_k = self.box_decoder(gather_topk(deltas1, index, per_phrase=True), boxes_k, sizes).detach()
            repool = cfg.box_regression and (iteration is None or iteration >= cfg.refine_start_iteration)
            if repool:  # normalised like the proposals (running statistics), see BoxHead
                x_k, pooled_k = self._embed_boxes(
                    maps, refined_k.reshape(B, P * K, 4), slot_valid.reshape(B, P * K), sizes, running_stats=True
                )
                x_k = x_k.reshape(B, P, K, -1)  # [B, P, K, d]
                pooled_k = None if pooled_k is None else pooled_k.reshape(B, P, K, -1)  # [B, P, K, d']
                stage2_boxes = refined_k
            else:  # the authors' warm-up: stage 2 reuses the unrefined top-K features
                x_k = gather_topk(x_o, index) * slot_valid[..., None]
                pooled_k = None if pooled_o is None else gather_topk(pooled_o, index) * slot_valid[..., None]
                stage2_boxes = boxes_k
            x_q2 = x_q
            if cfg.detach_stage2_inputs:  # stage-2 losses then leave the encoder and box head to stage 1
                x_q2, x_k, att1_k = x_q.detach(), x_k.detach(), att1_k.detach()
                pooled_k = None if pooled_k is None else pooled_k.detach()
            x_k_pregraph = x_k
            if self.graph is not None:
                x_k = self.graph(x_k, att1_k, relation_adjacency(batch.relation_index, phrase_valid))
            if self.relational is not None:
                roles = relation_roles(batch.relation_index, batch.relation_labels, phrase_valid)
                x_k = self.relational(x_k, stage2_boxes, att1_k, roles)
            reg_k = x_k if pooled_k is None else pooled_k  # the authors' F_reg reads the graph-refined x'_k

            fine_heads = self.matching if self.matching_stage2 is None else self.matching_stage2
            logits2 = fine_heads.logits(x_q2, x_k)  # [B, P, K]
            prior_k = gather_topk(prior, index, per_phrase=True) * slot_valid
            _, att2, _ = prior_attention(logits2, prior_k, slot_valid, cfg.score_fusion)  # alpha^f [B, P, K]
            fused = att1_k * att2  # s = s^c * s^f as probabilities (never sign-flipped), not renormalised
            # z^f [B, P, d]: the authors pool with the fused attention; the paper (Sec. 3.3) with alpha^f alone.
            pool2 = fused if cfg.stage2_pooling == "fused" else att2
            z2 = torch.einsum("bpk,bpkd->bpd", pool2, x_k)
            deltas2 = fine_heads.deltas(*self._regression_inputs(x_q2, reg_k)) if cfg.box_regression else None

            def predict(choice: Tensor) -> Tensor:  # [B, P] slot -> box with both stages' deltas
                box = _pick(refined_k, choice)
                return box if deltas2 is None else self.box_decoder(_pick(deltas2, choice), box, sizes)

            best = fused.argmax(-1)
            out.boxes, out.scores = predict(best), _pick(fused[..., None], best)[..., 0]
            out.boxes_stage2 = predict(att2.argmax(-1))
            out.topk_index, out.attention_stage2 = index, att2

        if not compute_losses:
            return out

        # Losses (Eq. 12-17), unweighted per term.
        losses: dict[str, Tensor] = {}
        targets = batch.phrase_targets
        pooled = {1: z1, 2: z2}
        for stage in loss_cfg.reconstruction_stages:
            decoder = self.decoder_stage2 if stage == 2 and self.decoder_stage2 is not None else self.decoder
            losses[f"rec_s{stage}"] = reconstruction_loss(decoder, pooled[stage], targets, phrase_valid)
        if self.ranking is not None:
            negatives = None
            if image_ids is not None:  # other captions of the same image are not negatives
                codes = {image_id: n for n, image_id in enumerate(dict.fromkeys(image_ids))}
                ids = torch.tensor([codes[i] for i in image_ids], device=z1.device)
                negatives = ids[:, None] != ids[None, :]
            for stage in loss_cfg.ranking_stages if cfg.two_stage else (1,):
                similarity = self.ranking(pooled[stage], phrase_valid, sentence)
                if loss_cfg.ranking_form == "contrastive":
                    losses[f"rank_s{stage}"] = contrastive_ranking_loss(similarity, negatives)
                else:
                    losses[f"rank_s{stage}"] = ranking_loss(similarity, loss_cfg.ranking_margin, negatives)
        regression_on = loss_cfg.regression and (iteration is None or iteration >= loss_cfg.regression_start_iteration)
        if regression_on:
            kwargs = dict(
                iou_threshold=loss_cfg.iou_threshold, score_gap=loss_cfg.score_gap, weights=cfg.box_coder_weights
            )
            losses["reg_s1"] = self_taught_regression_loss(
                deltas1, proposals, att1, proposal_valid, ops.self_taught_targets, phrase_valid=phrase_valid, **kwargs
            )
            if cfg.two_stage:
                # Each phrase has its own K boxes: treat every (item, phrase) as an "image" with one phrase.
                losses["reg_s2"] = self_taught_regression_loss(
                    deltas2.reshape(B * P, 1, K, 4),
                    stage2_boxes.reshape(B * P, K, 4),
                    att2.reshape(B * P, 1, K),
                    slot_valid.reshape(B * P, K),
                    ops.self_taught_targets,
                    **kwargs,
                )
        if self.relation is not None and batch.relation_index.shape[0] > 0:
            # Typed messages carry the relation's categories: F_rel must not read them back from z^f.
            features = x_k if self.relational is None else x_k_pregraph
            # With relation_geometry the box choice learns from the pairs' geometry, not from appearance.
            weights = pool2.detach() if cfg.relation_geometry else pool2
            z_rel = z2 if features is x_k and weights is pool2 else torch.einsum("bpk,bpkd->bpd", weights, features)
            pair = pair_weights = None
            if cfg.relation_geometry:  # every (subject box, object box) pair, weighted by their attention
                item, subject, obj = batch.relation_index.unbind(1)
                source, target = stage2_boxes[item, subject], stage2_boxes[item, obj]  # [R, K, 4]
                R = source.shape[0]
                pair = relative_geometry(source[:, :, None], target[:, None]).reshape(R, K * K, 4)
                pair_weights = (pool2[item, subject][:, :, None] * pool2[item, obj][:, None]).reshape(R, K * K)
            logits = self.relation(z_rel, batch.relation_index, pair, pair_weights)
            losses["rel"] = relation_loss(logits, batch.relation_labels, self.relation_weights, loss_cfg.relation_form)

        weight = {
            "rec": loss_cfg.lambda_rec,
            "rank": loss_cfg.lambda_rank,
            "reg": loss_cfg.lambda_reg,
            "rel": loss_cfg.lambda_rel,
        }
        out.losses = losses
        out.total_loss = sum(
            (weight[name.split("_")[0]] * value for name, value in losses.items()), z1.new_zeros(()).float()
        )
        return out
