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

The paper's model is the straight path through :meth:`ReIR.forward`. The variants beyond it are chosen once, in
``__init__``, as modules or functions: ``matching_stage2`` (``share_stage_heads: false``), ``relational``
(``vogn_geometry``), the pair-geometry branch of ``relation`` (``relation_geometry``), the box head's pooled/grid
output for F_reg (``regression_input``), the stage isolations ``stage2_inputs`` / ``regression_inputs``
(``detach_stage2_inputs`` / ``detach_regression_inputs``) and ``stage2_pooling``. The records passed between
the stages and those functions live in :mod:`relground.model.stages`.

Over 400 lines because the forward pass and every step it calls are kept in one file, to be read in order.
"""

from __future__ import annotations

import dataclasses
import functools
from types import SimpleNamespace
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from relground import ops
from relground.config.model import ModelConfig
from relground.losses import (
    PhraseDecoder,
    RankingEmbedding,
    RelationClassifier,
    contrastive_ranking_loss,
    ranking_loss,
    reconstruction_loss,
    reconstruction_loss_static,
    relation_class_weights,
    phrase_target_lengths,
    relation_loss,
    relation_loss_static,
    self_taught_regression_loss,
)
from relground.losses.ranking import global_ranking_loss
from relground.ops import _reference
from relground.structures.batch import GroundingBatch, image_key
from relground.model.backbone import ImageMaps, ResNetBackbone
from relground.model.box_head import BoxHead
from relground.model.matching import BOX_CODER_WEIGHTS, BoxDecoder, MatchingHeads, gather_topk, prior_attention
from relground.model.matching import select_topk
from relground.model.phrase_encoder import PhraseEncoder
from relground.model.stages import (
    STAGE2_POOLING,
    CoarseStage,
    FineStage,
    ReIROutput,
    TopK,
    batch_image_ids,
    check_prior,
    detach_all,
    keep_gradient,
    pick,
    with_image_codes,
)
from relground.model.vogn import (
    RelationalGeometryMessages,
    VisualObjectGraph,
    candidate_pair_geometry,
    relation_adjacency,
    relation_roles,
)


def op_functions(native: bool) -> SimpleNamespace:
    """The ops the model uses: ``relground.ops`` (native when built) or the pure-PyTorch references."""
    if native:
        return SimpleNamespace(
            roi_align_avg=ops.roi_align_avg, topk_select=ops.topk_select, self_taught_targets=ops.self_taught_targets
        )
    return SimpleNamespace(
        roi_align_avg=_reference._roi_align_avg_reference,
        topk_select=_reference._topk_select_reference,
        self_taught_targets=_reference._self_taught_targets_reference,
    )


class ReIR(nn.Module):
    """Relation-aware Instance Refinement (Liu et al., CVPR 2021).

    Args:
        cfg: architecture switches (:class:`ModelConfig`, with its :class:`LossConfig` in ``cfg.loss``).
        caption_vocab_size: caption vocabulary size (id 0 = padding).
        phrase_vocab_size: phrase vocabulary size for reconstruction (id 0 = end).
        num_relation_classes: C_r (88 on Flickr30K).
        relation_class_counts (Sequence[int] | Tensor[C_r]): training counts per relation category for the
            BCE class weights; None = all weights 1.

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
    ):
        super().__init__()
        # The order in which modules are created below is the order initialisation draws random numbers:
        # changing it changes every trained number. Attribute names are the checkpoints' keys.
        self.cfg = cfg
        self.ops = op_functions(cfg.native_ops)
        d, loss = cfg.hidden_dim, cfg.loss

        self.backbone = ResNetBackbone(
            cfg.backbone,
            box_head=cfg.box_head,
            weights=cfg.backbone_weights,
            stride_in_1x1=cfg.stride_in_1x1,
            frozen=cfg.freeze_backbone,
            roi_align_avg=self.ops.roi_align_avg,
            channels_last=cfg.channels_last,
            cache_max_images=cfg.cache_max_images if cfg.cache_features else 0,
            fold_bn=cfg.fold_backbone_bn,
        )
        # regression_input: F_reg reads x_o (authors), or the box head's input ("pooled") or a grid ("grid").
        self.regress_pooled = cfg.box_regression and cfg.regression_input in ("pooled", "grid")
        grid = cfg.regression_grid if cfg.box_regression and cfg.regression_input == "grid" else 0
        self.box_head = BoxHead(
            self.backbone.out_channels,
            d,
            cfg.spatial_feature,
            cfg.box_input_norm,
            cfg.spatial_scale,
            grid,
            static_shapes=cfg.static_shapes,
            norm_per_image=cfg.box_norm == "image",
        )
        self.phrase_encoder = PhraseEncoder(
            caption_vocab_size,
            cfg.word_dim,
            d,
            cfg.rnn_type,
            cfg.bidirectional,
            static_shapes=cfg.static_shapes,
            norm_per_caption=cfg.phrase_norm == "caption",
        )
        heads = (
            d, cfg.box_regression, cfg.regression_uses_phrase, cfg.regression_hidden, cfg.cls_hidden, cfg.cls_bias,
            self.box_head.pooled_features if self.regress_pooled else d,
        )
        self.matching = MatchingHeads(*heads, init=cfg.head_init)  # F_cls, F_reg
        # The authors share F_cls and F_reg between the stages; share_stage_heads=False gives stage 2 its own.
        separate = cfg.two_stage and not cfg.share_stage_heads
        self.matching_stage2 = MatchingHeads(*heads, init=cfg.head_init) if separate else None
        self.box_decoder = BoxDecoder()
        self.graph = (
            VisualObjectGraph(
                d, cfg.vogn_dim, cfg.vogn_variant, cfg.vogn_weights, cfg.vogn_zero_gates, cfg.softmax_epsilon
            )
            if cfg.vogn
            else None
        )
        self.relational = (
            RelationalGeometryMessages(d, num_relation_classes, cfg.relation_hidden) if cfg.vogn_geometry else None
        )
        decoder_args = (phrase_vocab_size, d, cfg.word_dim, d, cfg.decoder_rnn_type, cfg.decoder_input == "tied")
        self.decoder = PhraseDecoder(*decoder_args) if loss.reconstruction_stages else None
        own_decoder = cfg.separate_stage2_decoder and 2 in loss.reconstruction_stages
        self.decoder_stage2 = PhraseDecoder(*decoder_args) if own_decoder else None
        self.ranking = RankingEmbedding(d, d, cfg.ranking_dim, cfg.ranking_projection) if loss.ranking else None
        pair_dim = 4 if cfg.relation_geometry else 0  # relative geometry of every candidate box pair
        self.relation = (
            RelationClassifier(d, num_relation_classes, cfg.relation_hidden, pair_dim, loss.relation_form)
            if loss.relation
            else None
        )
        if relation_class_counts is not None:
            weights = relation_class_weights(relation_class_counts)
            if weights.numel() != num_relation_classes:
                raise ValueError(
                    f"relation_class_counts has {weights.numel()} entries, "
                    f"num_relation_classes is {num_relation_classes}"
                )
            self.register_buffer("relation_weights", weights)
        else:
            self.relation_weights = None

        # Strategies (plain functions, no parameters).
        self.stage2_inputs = detach_all if cfg.detach_stage2_inputs else keep_gradient
        self.regression_inputs = detach_all if cfg.detach_regression_inputs else keep_gradient
        self.stage2_pooling = STAGE2_POOLING[cfg.stage2_pooling]
        self.ranking_loss = (
            contrastive_ranking_loss
            if loss.ranking_form == "contrastive"
            else functools.partial(ranking_loss, epsilon=cfg.softmax_epsilon)
        )
        # boxes of the predictions: clipped to the image (relground) or not (the authors)
        self.clip_predictions = cfg.clip_predictions
        # static_shapes: the masked forms of the data-dependent steps, and the step torch.compile may trace whole
        self.static_shapes = cfg.static_shapes
        self._compiled_step: Optional[Callable[..., ReIROutput]] = None  # set by compile_step

    @property
    def fine_heads(self) -> MatchingHeads:
        """F_cls / F_reg of stage 2: stage 1's (authors) or its own (``share_stage_heads: false``)."""
        return self.matching if self.matching_stage2 is None else self.matching_stage2

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
        check_prior(batch)
        compute_losses = self.training if compute_losses is None else compute_losses
        # The schedules as Python booleans: a compiled step specialises on them, not on every iteration number.
        refine = iteration is None or iteration >= self.cfg.refine_start_iteration
        regress = iteration is None or iteration >= self.cfg.loss.regression_start_iteration
        if not self.static_shapes:
            return self._forward(batch, batch_image_ids(batch), None, refine, regress, compute_losses)
        batch, maps = self._prepare_static(batch)
        step = self._forward if self._compiled_step is None else self._compiled_step
        return step(batch, None, maps, refine, regress, compute_losses)

    def compile_step(self, **options) -> None:
        """Run the training forward and losses through ``torch.compile(fullgraph=True, **options)`` from now on
        (``train.compile``, ``relground benchmark --compile``). Needs ``model.static_shapes``."""
        if not self.static_shapes:
            raise ValueError(
                "train.compile (--compile) needs model.static_shapes: true (the default step reads data-dependent "
                "counts on the host, so it cannot be compiled whole)"
            )
        compiled = torch.compile(self._forward, fullgraph=True, **options)

        def step(*args):
            with torch._dynamo.config.patch(allow_rnn=True):  # Dynamo traces nn.GRU / nn.LSTM only on request
                return compiled(*args)

        self._compiled_step = step

    def step_phase(self, iteration: Optional[int]) -> tuple[bool, bool]:
        """The branches of a step that depend on ``iteration``, as :meth:`forward` computes them: (re-pool the
        refined boxes: ``refine_start_iteration``; the regression loss: ``loss.regression_start_iteration``). Steps
        of one phase run the same operations (``train.cuda_graph`` captures a graph per batch shape and phase)."""
        return (
            iteration is None or iteration >= self.cfg.refine_start_iteration,
            iteration is None or iteration >= self.cfg.loss.regression_start_iteration,
        )

    def _prepare_static(self, batch: GroundingBatch) -> tuple[GroundingBatch, Optional[ImageMaps]]:
        """Host-side part of a static-shape step: the batch's integer image codes (when the collate function did
        not make them), the cached maps (the feature cache is a host store: it stays outside a compiled step), and
        the batch without its ``meta`` (nothing in the step reads strings)."""
        batch = with_image_codes(batch)
        maps = None
        if self.backbone.cache is not None:
            maps = self.backbone.shared_image_maps(batch.images, batch.image_sizes, batch_image_ids(batch))
        return dataclasses.replace(batch, meta=[]), maps

    def _forward(
        self,
        batch: GroundingBatch,
        image_ids: Optional[list[str]],
        maps: Optional[ImageMaps],
        refine: bool,
        regress: bool,
        compute_losses: bool,
    ) -> ReIROutput:
        """:meth:`forward` after its host-side part; with ``static_shapes`` no step reads a device value."""
        sizes, phrase_valid = batch.image_sizes, batch.phrase_valid

        # Features: frozen backbone maps, box features, phrase features.
        # C4 (faithful) | dilated C5 (fast), one backbone pass per distinct image: captions of one image share it
        if maps is None and self.static_shapes:
            maps = self.backbone.shared_image_maps(batch.images, sizes, None, batch.image_index, batch.image_firsts)
        elif maps is None:
            maps = self.backbone.shared_image_maps(batch.images, sizes, image_ids)
        x_o, pooled_o = self._embed_boxes(maps, batch.proposals, batch.proposal_valid, sizes)
        # x_o [B, M, d]; pooled_o [B, M, d'] (F_reg's box input with regression_input pooled | grid) or None
        x_q, sentence = self.phrase_encoder(batch.words, batch.word_lengths, batch.phrase_spans, phrase_valid)
        # x_q [B, P, d]; sentence [B, d]

        # Stage 1: coarse matching over all M proposals + self-taught regression.
        coarse = self._coarse_stage(batch, x_q, x_o, pooled_o)  # alpha^c [B, P, M], z^c [B, P, d], delta^c
        out = self._predict_stage1(batch, coarse)  # argmax alpha^c, delta^c applied

        # Stage 2: top-K -> visual object graph -> fine matching + regression.
        topk = fine = None
        if self.cfg.two_stage:
            topk = self._select_topk(batch, maps, coarse, x_o, pooled_o, refine)  # alpha^c_k, x_k [B, P, K, d]
            x_q2, topk.features, topk.attention, topk.pooled = self.stage2_inputs(
                x_q, topk.features, topk.attention, topk.pooled
            )  # as they are, or detached (detach_stage2_inputs)
            x_k = self._object_graph(batch, topk.features, topk.boxes, topk.attention)  # x'_k [B, P, K, d]
            fine = self._fine_stage(batch, x_q2, x_k, topk)  # alpha^f [B, P, K], z^f [B, P, d], delta^f
            self._predict_stage2(out, sizes, topk, fine)  # argmax alpha^c_k alpha^f_k, both deltas applied

        if compute_losses:
            out.losses = self._losses(batch, regress, image_ids, sentence, coarse, topk, fine)
            out.total_loss = self._total_loss(out.losses, coarse.pooled)
        return out

    # --- features -------------------------------------------------------------------------------------------

    def _embed_boxes(
        self, maps: ImageMaps, boxes: Tensor, valid: Tensor, sizes: Tensor, running_stats: bool = False
    ) -> tuple[Tensor, Optional[Tensor]]:
        """x_o of ``boxes`` [B, X, d], and the pooled feature [B, X, d'] when F_reg reads it (else None)."""
        out = self.box_head(
            self.backbone, maps, boxes, valid, sizes, running_stats=running_stats, return_pooled=self.regress_pooled
        )
        return out if self.regress_pooled else (out, None)

    def _deltas(self, heads: MatchingHeads, phrases: Tensor, boxes: Tensor) -> Optional[Tensor]:
        """F_reg [B, P, X, 4] (None without STR), on the inputs ``regression_inputs`` lets through."""
        return heads.deltas(*self.regression_inputs(phrases, boxes)) if heads.regression else None

    # --- stage 1 --------------------------------------------------------------------------------------------

    def _coarse_stage(self, batch: GroundingBatch, x_q: Tensor, x_o: Tensor, pooled_o: Optional[Tensor]) -> CoarseStage:
        """alpha^c = softmax_{s_a > 0}(F_cls(x_q, x_o) * s_a) (Eq. 2-4), z^c and delta^c = F_reg(x_q, x_o)."""
        logits = self.matching.logits(x_q, x_o)  # s_hat [B, P, M]
        valid = batch.proposal_valid[:, None, :]  # [B, 1, M]
        _, attention, _ = prior_attention(
            logits, batch.category_prior, valid, self.cfg.score_fusion, self.cfg.softmax_epsilon, self.cfg.empty_prior
        )
        attention = attention * batch.phrase_valid[..., None]  # [B, P, M], zero rows for padding phrases
        pooled = torch.einsum("bpm,bmd->bpd", attention, x_o)  # z^c [B, P, d]
        deltas = self._deltas(self.matching, x_q, x_o if pooled_o is None else pooled_o)  # [B, P, M, 4] | None
        return CoarseStage(attention, pooled, deltas)

    def _predict_stage1(self, batch: GroundingBatch, coarse: CoarseStage) -> ReIROutput:
        """The output of a single-stage model: argmax alpha^c, stage-1 delta applied."""
        proposals, att1 = batch.proposals, coarse.attention
        B, M, _ = proposals.shape
        best = att1.argmax(-1)  # [B, P]
        boxes = pick(proposals[:, None].expand(B, att1.shape[1], M, 4), best)  # [B, P, 4]
        if coarse.deltas is not None:
            boxes = self.box_decoder(pick(coarse.deltas, best), boxes, batch.image_sizes if self.clip_predictions else None)
        return ReIROutput(
            losses={},
            total_loss=coarse.pooled.new_zeros(()),
            boxes=boxes,
            scores=pick(att1[..., None], best)[..., 0],
            boxes_stage1=boxes,
            attention_stage1=att1,
        )

    # --- stage 2 --------------------------------------------------------------------------------------------

    def _select_topk(
        self,
        batch: GroundingBatch,
        maps: ImageMaps,
        coarse: CoarseStage,
        x_o: Tensor,
        pooled_o: Optional[Tensor],
        refine: bool,
    ) -> TopK:
        """Top-K by alpha^c and their features: the refined boxes re-pooled from ``refine_start_iteration`` (and
        in evaluation), the unrefined proposals' features before it (the authors' warm-up)."""
        sizes, phrase_valid = batch.image_sizes, batch.phrase_valid
        att1 = coarse.attention
        index, valid = select_topk(att1, batch.proposal_valid, self.cfg.top_k, self.ops.topk_select)  # [B, P, K]
        valid = valid & phrase_valid[..., None]
        B, P, K = index.shape
        att1_k = gather_topk(att1, index, per_phrase=True) * valid  # [B, P, K]
        boxes_k = gather_topk(batch.proposals, index)  # [B, P, K, 4]
        refined_k = boxes_k
        if coarse.deltas is not None:
            refined_k = self.box_decoder(gather_topk(coarse.deltas, index, per_phrase=True), boxes_k, sizes)
            # the authors' refined boxes keep their gradient into the stage-2 regression targets (D5)
            refined_k = refined_k.detach() if self.cfg.detach_refined_boxes else refined_k
        repool = coarse.deltas is not None and refine
        if repool:  # normalised like the proposals (running statistics), see BoxHead
            x_k, pooled_k = self._embed_boxes(
                maps, refined_k.reshape(B, P * K, 4), valid.reshape(B, P * K), sizes, running_stats=True
            )
            x_k = x_k.reshape(B, P, K, -1)  # [B, P, K, d]
            pooled_k = None if pooled_k is None else pooled_k.reshape(B, P, K, -1)  # [B, P, K, d']
            return TopK(index, valid, att1_k, refined_k, refined_k, x_k, pooled_k)
        x_k = gather_topk(x_o, index) * valid[..., None]  # [B, P, K, d]
        pooled_k = None if pooled_o is None else gather_topk(pooled_o, index) * valid[..., None]  # [B, P, K, d']
        return TopK(index, valid, att1_k, boxes_k, refined_k, x_k, pooled_k)

    def _object_graph(self, batch: GroundingBatch, x_k: Tensor, boxes_k: Tensor, att1_k: Tensor) -> Tensor:
        """x'_k [B, P, K, d]: the VOGN's messages between related phrases (Eq. 5-8), then, with
        ``vogn_geometry``, the typed per-box geometric messages."""
        if self.graph is not None:
            x_k = self.graph(x_k, att1_k, relation_adjacency(batch.relation_index, batch.phrase_valid))
        if self.relational is not None:
            roles = relation_roles(batch.relation_index, batch.relation_labels, batch.phrase_valid)
            x_k = self.relational(x_k, boxes_k, att1_k, roles)
        return x_k

    def _fine_stage(self, batch: GroundingBatch, x_q: Tensor, x_k: Tensor, topk: TopK) -> FineStage:
        """alpha^f = softmax_{s_a > 0}(F_cls(x_q, x'_k) * s_a) (Eq. 9-10), z^f and delta^f."""
        heads = self.fine_heads
        logits = heads.logits(x_q, x_k)  # [B, P, K]
        prior_k = gather_topk(batch.category_prior, topk.index, per_phrase=True) * topk.valid  # [B, P, K]
        _, att2, _ = prior_attention(
            logits, prior_k, topk.valid, self.cfg.score_fusion, self.cfg.softmax_epsilon, self.cfg.empty_prior
        )  # alpha^f [B, P, K]
        fused = topk.attention * att2  # s = s^c * s^f as probabilities (never sign-flipped), not renormalised
        pooling = self.stage2_pooling(att2, fused)
        pooled = torch.einsum("bpk,bpkd->bpd", pooling, x_k)  # z^f [B, P, d]
        # The authors' F_reg reads the graph-refined x'_k (or the pooled/grid feature with regression_input).
        deltas = self._deltas(heads, x_q, x_k if topk.pooled is None else topk.pooled)  # [B, P, K, 4] | None
        return FineStage(x_k, att2, fused, pooling, pooled, deltas)

    def _predict_stage2(self, out: ReIROutput, sizes: Tensor, topk: TopK, fine: FineStage) -> None:
        """Argmax of the fused score (and of alpha^f alone), both stages' deltas applied to the refined boxes."""

        def predict(choice: Tensor) -> Tensor:  # [B, P] slot -> [B, P, 4]
            box = pick(topk.refined, choice)
            clip = sizes if self.clip_predictions else None
            return box if fine.deltas is None else self.box_decoder(pick(fine.deltas, choice), box, clip)

        best = fine.fused.argmax(-1)  # [B, P]
        out.boxes, out.scores = predict(best), pick(fine.fused[..., None], best)[..., 0]
        out.boxes_stage2 = predict(fine.attention.argmax(-1))
        out.topk_index, out.attention_stage2 = topk.index, fine.attention

    # --- losses (Eq. 12-17) ---------------------------------------------------------------------------------

    def _losses(
        self,
        batch: GroundingBatch,
        regress: bool,
        image_ids: Optional[list[str]],
        sentence: Tensor,
        coarse: CoarseStage,
        topk: Optional[TopK],
        fine: Optional[FineStage],
    ) -> dict[str, Tensor]:
        """The active loss terms, unweighted, in a fixed order (rec, rank, reg, rel).

        Inside a process group every term is made independent of the number of processes (docs/distributed.md):
        the ranking terms are built over the global batch (``loss.ranking_negatives: global``), and the means
        over data-dependent counts (reconstructed tokens, selected boxes, labelled relation pairs) are divided by
        the global count, obtained with one all-reduce per forward pass. Each value is scaled so that its mean
        over processes is the loss of the global batch, and so is the gradient DDP averages.
        """
        loss_cfg, phrase_valid = self.cfg.loss, batch.phrase_valid
        losses: dict[str, Tensor] = {}
        distributed = dist.is_available() and dist.is_initialized()
        # loss.normalization image (the authors'): per-item means (rec, reg, rel) as [B] vectors, scaled at the end
        per_image = loss_cfg.normalization == "image"
        counts: dict[str, Tensor] = {}  # term -> this process's denominator (distributed, batch normalisation)
        pooled = {1: coarse.pooled, 2: None if fine is None else fine.pooled}  # z^c, z^f [B, P, d]
        words = self._decoder_words(batch) if self.cfg.decoder_input == "tied" and self.decoder is not None else None
        for stage in loss_cfg.reconstruction_stages:
            decoder = self.decoder_stage2 if stage == 2 and self.decoder_stage2 is not None else self.decoder
            if self.static_shapes:
                losses[f"rec_s{stage}"] = reconstruction_loss_static(
                    decoder, pooled[stage], batch.phrase_targets, phrase_valid
                )
            else:
                extra = {} if words is None else {"words": words}  # the tied decoder's inputs
                extra.update({"per_item": True} if per_image else {})
                losses[f"rec_s{stage}"] = reconstruction_loss(
                    decoder, pooled[stage], batch.phrase_targets, phrase_valid, **extra
                )
            if distributed and not per_image:
                counts[f"rec_s{stage}"] = reconstructed_tokens(batch.phrase_targets, phrase_valid)
        if self.ranking is not None:
            stages = loss_cfg.ranking_stages if fine is not None else (1,)
            if distributed and loss_cfg.ranking_negatives == "global":
                if self.static_shapes:
                    keys = batch.image_keys
                else:
                    keys = None if image_ids is None else image_keys(image_ids, coarse.pooled.device)
                for stage in stages:
                    image, text = self.ranking.embed(pooled[stage], phrase_valid, sentence)  # [B, D] each
                    losses[f"rank_s{stage}"] = global_ranking_loss(
                        image, text, self.ranking.scale, keys, form=loss_cfg.ranking_form
                    )
            else:
                negatives = None
                if self.static_shapes and batch.image_keys is not None:  # built on the host by the collate
                    negatives = batch.image_keys[:, None] != batch.image_keys[None, :]  # [B, B]
                elif image_ids is not None and not self.static_shapes:  # other captions of one image: no negatives
                    codes = {image_id: n for n, image_id in enumerate(dict.fromkeys(image_ids))}
                    ids = torch.tensor([codes[i] for i in image_ids], device=coarse.pooled.device)
                    negatives = ids[:, None] != ids[None, :]  # [B, B]
                # local negatives under a process group: the hinge form's sum over this process's pairs x world
                # size, so that DDP's average keeps the term's weight (only the negatives differ from ``global``);
                # the contrastive form is a mean over pairs already
                scaled = distributed and loss_cfg.ranking_form == "hinge"
                for stage in stages:
                    similarity = self.ranking(pooled[stage], phrase_valid, sentence)  # [B, B]
                    loss = self.ranking_loss(similarity, negative_mask=negatives)
                    losses[f"rank_s{stage}"] = loss * dist.get_world_size() if scaled else loss
        if loss_cfg.regression and regress:
            kwargs = dict(iou_threshold=loss_cfg.iou_threshold, score_gap=loss_cfg.score_gap, weights=BOX_CODER_WEIGHTS)
            targets_fn = self.ops.self_taught_targets
            selected: list[Tensor] = []  # the boxes each regression loss averages over (distributed only)
            if distributed and not per_image:
                targets_fn = recording_selected(targets_fn, selected)
            reg1 = self_taught_regression_loss(
                coarse.deltas,
                batch.proposals,
                coarse.attention,
                batch.proposal_valid,
                targets_fn,
                phrase_valid=phrase_valid,
                per_item=per_image,
                **kwargs,
            )
            losses["reg_s1"] = reg1[0] / reg1[1].clamp(min=1) if per_image else reg1  # per item [B] | mean
            if distributed and not per_image:
                counts["reg_s1"] = (selected.pop() & phrase_valid[..., None]).sum()
            if fine is not None:
                # Each phrase has its own K boxes: treat every (item, phrase) as an "image" with one phrase.
                B, P, K = topk.index.shape
                reg2 = self_taught_regression_loss(
                    fine.deltas.reshape(B * P, 1, K, 4),
                    topk.boxes.reshape(B * P, K, 4),
                    fine.attention.reshape(B * P, 1, K),
                    topk.valid.reshape(B * P, K),
                    targets_fn,
                    per_item=per_image,
                    target_gradient=topk.boxes.requires_grad,  # detach_refined_boxes: false, after the refinement
                    **kwargs,
                )
                if per_image:  # the image's K-box sets of all its phrases together, as the authors
                    reg2 = reg2[0].reshape(B, P).sum(1) / reg2[1].reshape(B, P).sum(1).clamp(min=1)
                losses["reg_s2"] = reg2
                if distributed and not per_image:
                    counts["reg_s2"] = selected.pop().sum()
        if self.relation is not None and batch.relation_index.shape[0] > 0:
            logits = self._relation_logits(batch, topk, fine)  # [R, C_r]
            rel = relation_loss_static if self.static_shapes else relation_loss
            if per_image:
                losses["rel"] = per_item_relation_loss(
                    logits, batch.relation_index, batch.relation_labels, self.relation_weights, loss_cfg.relation_form,
                    phrase_valid.shape[0],
                )
            else:
                losses["rel"] = rel(logits, batch.relation_labels, self.relation_weights, loss_cfg.relation_form)
        elif self.relation is not None and (distributed or per_image):
            # every process reports (and reduces) the same terms
            losses["rel"] = coarse.pooled.sum((1, 2)) * 0.0 if per_image else coarse.pooled.sum() * 0.0
        if distributed and self.relation is not None and not per_image:
            counts["rel"] = (batch.relation_labels.sum(1) > 0).sum() if batch.relation_index.shape[0] > 0 else 0
        if counts:
            losses.update(global_means(losses, counts))
        if per_image:
            losses = per_image_terms(losses, phrase_valid.shape[0], loss_cfg.reference_images, distributed)
        return losses

    def _decoder_words(self, batch: GroundingBatch) -> Tensor:
        """The tied decoder's inputs [B, P, L - 1, w]: the caption encoder's embedding of each phrase's words (the
        caption's ids over its span), zeros past them (``model.decoder_input: tied``, the authors')."""
        L = batch.phrase_targets.shape[-1]
        start = batch.phrase_spans[..., 0]  # [B, P]
        lengths = (batch.phrase_spans[..., 1] - start).clamp(min=0)  # [B, P]
        steps = torch.arange(L - 1, device=start.device)  # [L - 1]
        positions = (start[..., None] + steps).clamp(max=batch.words.shape[1] - 1)  # [B, P, L - 1]
        ids = torch.gather(batch.words[:, None, :].expand(-1, start.shape[1], -1), 2, positions)
        ids = torch.where(steps < lengths[..., None], ids, torch.zeros_like(ids))  # 0 = padding: a zero vector
        return self.phrase_encoder.embedding(ids)

    def _relation_logits(self, batch: GroundingBatch, topk: TopK, fine: FineStage) -> Tensor:
        """F_rel on the stage-2 vectors of each related pair (Eq. 16); with ``relation_geometry`` also the
        mixture over the pairs' candidate box pairs."""
        # Typed messages carry the relation's categories: F_rel must not read them back, it reads the boxes
        # from before the graph.
        features = fine.features if self.relational is None else topk.features
        if self.relation.pair_dim == 0:  # the paper: F_rel(z^f_s, z^f_o)
            z = fine.pooled if features is fine.features else torch.einsum("bpk,bpkd->bpd", fine.pooling, features)
            return self.relation(z, batch.relation_index)
        # relation_geometry: the box choice learns from the pairs' geometry, not from appearance.
        z = torch.einsum("bpk,bpkd->bpd", fine.pooling.detach(), features)  # [B, P, d]
        pairs, weights = candidate_pair_geometry(topk.boxes, fine.pooling, batch.relation_index)  # [R, K K, 4|]
        return self.relation(z, batch.relation_index, pairs, weights)

    def _total_loss(self, losses: dict[str, Tensor], like: Tensor) -> Tensor:
        """sum_term lambda_term * loss_term (float32, 0-dim)."""
        loss_cfg = self.cfg.loss
        weight = {
            "rec": loss_cfg.lambda_rec,
            "rank": loss_cfg.lambda_rank,
            "reg": loss_cfg.lambda_reg,
            "rel": loss_cfg.lambda_rel,
        }
        return sum((weight[name.split("_")[0]] * value for name, value in losses.items()), like.new_zeros(()).float())



def image_keys(image_ids: Sequence[str], device: torch.device) -> Tensor:
    """int64 key of each image id, the same on every process (a stable hash, not Python's salted ``hash``)."""
    keys = [image_key(i) for i in image_ids]
    return torch.tensor(keys, dtype=torch.int64, device=device)


def reconstructed_tokens(targets: Tensor, valid: Tensor) -> Tensor:
    """The number of tokens :func:`reconstruction_loss` averages over (words + end token of each valid phrase)."""
    lengths = phrase_target_lengths(targets)  # [B, P]; masked, not selected: no data-dependent shape
    return ((lengths + 1).clamp(max=targets.shape[-1]) * valid).sum()


def recording_selected(targets_fn: Callable, store: list[Tensor]) -> Callable:
    """``targets_fn`` that also appends its ``selected`` mask to ``store`` (the regression loss's denominator)."""

    def wrapped(*args, **kwargs):
        out = targets_fn(*args, **kwargs)
        store.append(out[1])
        return out

    return wrapped


def per_item_relation_loss(
    logits: Tensor, relation_index: Tensor, labels: Tensor, weights: Optional[Tensor], form: str, items: int
) -> Tensor:
    """[items]: each item's own :func:`relation_loss` over its relation pairs (0 without a labelled one)."""
    item = relation_index[:, 0]
    dtype = torch.promote_types(torch.float32, logits.dtype)
    zero = (logits.sum() * 0.0).to(dtype)  # connected, so that every item's term has a gradient path
    values = []
    for b in range(items):
        rows = item == b
        values.append(relation_loss(logits[rows], labels[rows], weights, form).to(dtype) if bool(rows.any()) else zero)
    return torch.stack(values)


def per_image_terms(losses: dict[str, Tensor], items: int, reference: int, distributed: bool) -> dict[str, Tensor]:
    """``loss.normalization: image`` (the authors', docs/fidelity.md D1): every term as ``reference`` x its mean
    over the global batch's items: per-item vectors [B] (reconstruction, regression, relation) summed, the ranking
    sums over captions as they are, then x ``reference`` / (global number of items). Inside a process group the
    value is also x world size, so that DDP's gradient average is that of the global batch's term: the objective
    does not depend on the number of processes (the authors': their sum over a GPU's 10 images, averaged over 4
    GPUs, is this with ``reference`` 10)."""
    summed = {name: value.sum() if value.dim() else value for name, value in losses.items()}
    like = next(iter(summed.values()), None)
    if like is None:
        return summed
    total = torch.tensor(float(items), dtype=torch.float64, device=like.device)
    world = 1
    if distributed:
        dist.all_reduce(total)
        world = dist.get_world_size()
    factor = reference * world / total.clamp(min=1)
    # the ranking terms come as the global batch's sum already (x world size inside a process group, see _losses)
    ranking_factor = reference / total.clamp(min=1)
    return {
        name: value * (ranking_factor if name.startswith("rank") else factor).to(value.dtype)
        for name, value in summed.items()
    }


def global_means(losses: dict[str, Tensor], counts: dict[str, Tensor | int]) -> dict[str, Tensor]:
    """Each mean ``losses[t]`` over this process's ``counts[t]`` items turned into world size x its share of the
    mean over every process's items (one all-reduce of all the counts). DDP averages the gradients over the
    processes, so the gradient is that of the global mean; so is the mean of the values over processes."""
    names = list(counts)
    like = next(iter(losses.values()))
    local = torch.stack([torch.as_tensor(counts[n], device=like.device).to(torch.float64) for n in names])
    total = local.clone()
    dist.all_reduce(total)
    factor = local * dist.get_world_size() / total.clamp(min=1)  # stays on the device: no host sync
    return {n: losses[n] * factor[i].to(losses[n].dtype) for i, n in enumerate(names)}
