"""Typed, frozen configuration of the ReIR network (:class:`ModelConfig`) and its losses (:class:`LossConfig`).

Defaults follow the authors' final setting (where it differs from the paper's text, ``docs/model.md``, "Choices
where the paper is silent or the code differs", says which is which); the paper's ablations (Tab. 2, Tab. 3)
are named presets::

    cfg = ModelConfig.preset("tsd_str", backbone="resnet10", hidden_dim=64)

Every field is a plain value so the top-level config can read it from YAML and override it with
``--set model.top_k=3``.

Over 400 lines because every switch is documented next to its field and checked in one ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

RELATION_FORMS = ("bce", "ce")  # the loss forms relation_loss computes (``loss.relation_form``)
BACKBONES = ("resnet101", "resnet50", "resnet18", "resnet10")
BOX_HEADS = ("faithful", "fast")
RNN_TYPES = ("gru", "lstm")
SCORE_FUSIONS = ("product", "sigmoid_product")
VOGN_VARIANTS = ("authors", "paper")
VOGN_WEIGHTS = ("attention", "uniform")
STAGE2_POOLINGS = ("fused", "fine")
RANKING_FORMS = ("hinge", "contrastive")
RANKING_NEGATIVES = ("global", "local")
REGRESSION_INPUTS = ("box_feature", "pooled", "grid")
LOSS_NORMALIZATIONS = ("batch", "image")
PHRASE_NORMS = ("batch", "caption")
BOX_NORMS = ("batch", "image")
VOGN_ZERO_GATES = ("keep", "drop")
EMPTY_PRIORS = ("all_boxes", "none")
DECODER_INPUTS = ("projected", "tied")
RANKING_PROJECTIONS = ("mlp", "linear")
HEAD_INITS = ("relground", "pytorch")


def check_relation_form(form: str) -> None:
    """Raises ValueError naming ``loss.relation_form`` unless ``form`` is one of :data:`RELATION_FORMS`."""
    if form not in RELATION_FORMS:
        raise ValueError(f"loss.relation_form must be one of {RELATION_FORMS}, got {form!r}")


@dataclass(frozen=True)
class LossConfig:
    """Weights and schedules of the weakly supervised losses (paper Eq. 12-17).

    ``total = lambda_rec * (rec_s1 + rec_s2) + lambda_reg * (reg_s1 + reg_s2) + lambda_rel * rel
    + lambda_rank * (rank_s1 + rank_s2)``, each term only where active.

    Attributes:
        reconstruction_stages: stages whose pooled vector reconstructs the phrase. Authors' final model: (2,).
        ranking: image-caption ranking loss.
        ranking_stages: stages with a ranking term (a single-stage model has stage 1 only). Authors: (1, 2).
        regression: self-taught regression loss (needs ``ModelConfig.box_regression``).
        relation: relation classification loss on stage-2 vectors (needs ``ModelConfig.two_stage``).
        lambda_rec: weight of the reconstruction terms. Default 1.
        lambda_reg: lambda_1, weight of the regression terms. Default 0.1.
        lambda_rel: lambda_2, weight of the relation term. Default 1.
        lambda_rank: lambda_3, weight of the ranking terms. Default 1.
        regression_start_iteration: first iteration with the regression loss. The authors' code: 0; the paper's
            text says 7,500 (which is where the code starts re-pooling refined boxes).
        iou_threshold: tau, IoU with the anchor box above which a proposal is regressed towards it. Default 0.6.
        score_gap: a neighbour counts (weight 1) only if its attention is at least this far below the anchor's.
        ranking_form: ``hinge`` (hardest negative, margin 0.2 in softmax-probability units, authors) or
            ``contrastive`` (InfoNCE both ways, see :func:`relground.losses.contrastive_ranking_loss`).
        relation_form: ``bce`` (multi-label BCE, mean over pairs and classes, authors) or ``ce`` (softmax cross
            entropy per pair, as the paper's text; several categories share the target mass), see
            :func:`relground.losses.relation_loss`.
        normalization: how the terms are averaged (docs/fidelity.md, D1). ``batch`` (relground): each term is one
            mean over the global batch's tokens / selected boxes / labelled pairs, and the ranking hinge a sum over
            the global batch. ``image`` (the authors' code): each image's own mean (reconstruction, regression,
            relation) or hinge (ranking), averaged over the global batch and multiplied by ``reference_images``:
            the authors' sum over a GPU's images, averaged by DDP, is this at 10 images per GPU, whatever the
            number of processes here.
        reference_images: the images per process the ``image`` normalisation reproduces. Authors: 10 (4 GPUs x
            10 image-caption pairs). No effect with ``batch``.
        ranking_negatives: under data parallelism, where the ranking loss looks for negatives: ``global`` (the
            similarity matrix over the whole global batch, embeddings all-gathered with gradients: the same loss
            whatever the number of processes) or ``local`` (each process's own pairs, as the authors' 4 GPUs x
            10: fewer negatives as processes are added; the term keeps its weight). No effect in a single process
            (docs/distributed.md).
    """

    # Fields that older configs (and the configs stored in older checkpoints) still hold, with the one value the
    # code now always uses: a loader may drop such a key when it holds that value.
    REMOVED_FIELDS: ClassVar[dict[str, Any]] = {"ranking_margin": 0.2, "relation_weight_range": 9.0}

    reconstruction_stages: tuple[int, ...] = (2,)
    ranking: bool = True
    ranking_stages: tuple[int, ...] = (1, 2)
    regression: bool = True
    relation: bool = True
    lambda_rec: float = 1.0
    lambda_reg: float = 0.1
    lambda_rel: float = 1.0
    lambda_rank: float = 1.0
    regression_start_iteration: int = 0
    iou_threshold: float = 0.6
    score_gap: float = 0.1
    ranking_form: str = "hinge"
    relation_form: str = "bce"
    ranking_negatives: str = "global"
    normalization: str = "batch"
    reference_images: int = 10

    def __post_init__(self) -> None:
        for name in ("reconstruction_stages", "ranking_stages"):
            object.__setattr__(self, name, tuple(int(s) for s in getattr(self, name)))
            if not set(getattr(self, name)) <= {1, 2}:
                raise ValueError(f"loss.{name} must hold 1 and/or 2, got {getattr(self, name)}")
        for name in ("lambda_rec", "lambda_reg", "lambda_rel", "lambda_rank", "score_gap"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        check_relation_form(self.relation_form)
        if self.ranking_form not in RANKING_FORMS:
            raise ValueError(f"loss.ranking_form must be one of {RANKING_FORMS}, got {self.ranking_form!r}")
        if self.ranking_negatives not in RANKING_NEGATIVES:
            raise ValueError(
                f"loss.ranking_negatives must be one of {RANKING_NEGATIVES}, got {self.ranking_negatives!r}"
            )
        if self.normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(
                f"loss.normalization must be one of {LOSS_NORMALIZATIONS}, got {self.normalization!r}"
            )
        if self.reference_images < 1:
            raise ValueError(f"loss.reference_images must be >= 1, got {self.reference_images}")
        if self.normalization == "image" and self.ranking_form != "hinge":
            raise ValueError(
                "loss.normalization: image is the authors' per-image sums, with their hinge ranking loss "
                f"(loss.ranking_form: hinge); got ranking_form {self.ranking_form!r}"
            )
        if not 0.0 <= self.iou_threshold <= 1.0:
            raise ValueError(f"loss.iou_threshold must be in [0, 1], got {self.iou_threshold}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture switches of ReIR.

    Attributes:
        backbone: ``resnet101`` (the paper), ``resnet50``, ``resnet18`` or ``resnet10`` (BasicBlock x [1,1,1,1],
            the small CPU option). torchvision constructors, random init unless ``backbone_weights`` is given.
        backbone_weights: local file with ResNet weights (torchvision, detectron2, maskrcnn-benchmark or
            Detectron/Caffe naming; see :func:`relground.model.backbone.map_resnet_state_dict`), or ``random``
            (random init, on purpose). None: training a real dataset with a frozen backbone is refused.
        backbone_layout: ``auto`` (told by the weight file's key names, :func:`relground.model.resnet_weights.
            detect_layout`), ``torchvision`` or ``msra`` (a Caffe ResNet in torchvision's names). Training checks
            ``stride_in_1x1`` and ``data.pixel_format`` against it. ``as_configured``: the two keys are taken as
            written, unchecked (the authors' own mix: MSRA weights in a ResNet that strides the 3x3 conv).
        stride_in_1x1: put the stride of each stage on the 1x1 conv (MSRA/Caffe ResNets, e.g. the
            bottom-up-attention weights) instead of the 3x3 conv (torchvision).
        freeze_backbone: the whole ResNet (stem..layer4) in eval mode without gradients, as the authors.
        box_head: ``faithful`` (RoIAlign 7x7 on C4 -> per-box layer4 -> mean) or ``fast`` (dilated layer4 on the
            whole C4 map once per image -> fused RoIAlign+mean).
        spatial_feature: append (x1/W, y1/H, x2/W, y2/H, area/(WH)) to each box feature (paper Sec. 3.2.1).
        spatial_scale: factor on those 5 columns (after ``box_input_norm``) before the Linear layer. At 1 they
            are 5 of ~517 equally scaled inputs, so x_o keeps little of where the box is. Default 1.
        box_input_norm: standardise the pooled box feature per channel before the box head's Linear layer
            (see :class:`relground.model.box_head.BoxHead`). Authors: off.
        cache_features: keep the frozen backbone's map per ``meta['image_id']`` (needs a frozen backbone and no
            augmentation: the map of an image then never changes).
        cache_max_images: bound of that cache (least recently used images are dropped). Default 4096.
        channels_last: run the backbone in channels_last memory format.
        fold_backbone_bn: fold the frozen backbone's BatchNorms into its convolutions at build time (one op fewer
            per conv; needs ``freeze_backbone``). Exact in real arithmetic, not bit-identical in float32, so off by
            default; checkpoints of a folded model load into folded models only. Default False.
        hidden_dim: d, width of box, phrase and node features. Authors: 1024.
        word_dim: word-embedding width (50 to load the shared GloVe 6B 50-d vectors). Authors: 1024.
        rnn_type: ``gru`` (authors) or ``lstm`` (the paper's text).
        decoder_rnn_type: the phrase reconstruction decoder's recurrent cell: ``gru`` (authors) or ``lstm`` (the
            paper's text). Default ``gru``.
        bidirectional: bidirectional encoder (each direction hidden_dim / 2 wide).
        two_stage: TSD, the second (fine) stage on the top-K proposals.
        top_k: K proposals per phrase kept for stage 2. Default 5.
        box_regression: STR, F_reg heads and box refinement.
        regression_uses_phrase: feed the phrase feature to F_reg (False = "STR w/o x_q" ablation).
        refine_start_iteration: from this iteration stage 2 re-pools the stage-1-refined boxes; before it,
            it reuses the unrefined top-K features. Authors: 7,500. Evaluation (iteration None) always refines.
        vogn: Visual Object Graph Network between stage 1 and stage 2.
        vogn_variant: ``authors`` (gate = ReLU(<Wc_i, Wc_j>/sqrt(512)), x += a * ReLU(Linear(sum gate c_j)))
            or ``paper`` (Eq. 6-8).
        vogn_weights: ``attention`` (learned, Eq. 7) or ``uniform`` (1/degree, the "w/o attention" ablation).
        vogn_dim: width of the VOGN key projection. Authors: 512.
        vogn_geometry: add per-box messages from the typed relation graph (not in the paper; see
            :class:`relground.model.vogn.RelationalGeometryMessages`): box k of phrase i hears, from each related
            phrase j, the relation's categories, i's role in it and where j's expected box lies relative to box k.
            F_rel then reads the box features from before the graph (the categories are in the messages).
        relation_geometry: F_rel also scores the relative geometry of every (subject box, object box) pair of the
            two phrases' top-K, and the relation's probability is the mixture over the pairs weighted by their
            alpha^f (not in the paper), so the relation loss rewards the box choice that makes the parsed relation
            true. F_rel's appearance branch then pools with a detached alpha^f: only geometry moves the choice.
        score_fusion: how the category prior s_a multiplies the logit: ``product`` (s_hat * s_a, authors) or
            ``sigmoid_product`` (sigmoid(s_hat) * s_a, monotone in both; see docs/model.md).
        ranking_dim: width of the image/caption ranking embeddings. Authors: 512.
        relation_hidden: hidden width of F_rel. Authors: 1024.
        regression_hidden: hidden width of F_reg. Authors: 256.
        cls_hidden: hidden width of F_cls; 0 = one Linear(2d -> 1) on concat(x_q, x_o) (authors). The paper calls
            F_cls a fully-connected network; a hidden layer lets the phrase rank boxes of the same label.
        stage2_pooling: the attention that pools the stage-2 vector z^f for the losses: ``fused`` (alpha^c_k *
            alpha^f_k, not renormalised, authors) or ``fine`` (alpha^f alone, the paper's z^f = sum_k alpha^f x'_k).
        share_stage_heads: stage 2 uses the same F_cls / F_reg as stage 1 (authors). False = stage 2 has its own
            heads (same architecture and initialisation), so the fine stage's losses on the K survivors do not
            train the coarse scorer.
        detach_stage2_inputs: stage 2 reads x_q, its box features and alpha^c without gradient (False = authors), so
            its losses train only what belongs to stage 2 (its heads with ``share_stage_heads=False``, the VOGN)
            and the shared decoders, not the encoder and box head that stage 1 scores with.
        separate_stage2_decoder: stage 2 reconstructs with its own phrase decoder (False = one decoder for both
            stages, authors), so rec_s2 cannot retune the decoder that stage 1's attention learns from.
        regression_input: what F_reg reads of a box: ``box_feature`` (x_o, authors), ``pooled`` (the box head's
            input: pooled ResNet feature + geometry, before the d-wide bottleneck that the matching trains) or
            ``grid`` (the layer4 features on a ``regression_grid`` x ``regression_grid`` grid + geometry: where in
            the box the object sits, which a box average loses).
        regression_grid: cells per side for ``regression_input: grid``. Default 2.
        detach_regression_inputs: F_reg reads x_q and the box features without gradient (False = authors), so the
            regression loss trains F_reg only and leaves the features the matching ranks boxes with.
        cls_bias: initial bias of F_cls's output. Authors: 0 (PyTorch default init). A positive start makes the
            untrained s_hat * s_a follow the category prior rather than flip it where s_hat < 0.
        native_ops: use relground.ops (native kernels when built); False = the pure-PyTorch references.
        static_shapes: the training step without host synchronisation (docs/model.md, "Static-shape mode"): every
            box and phrase of the padded batch is computed and masked instead of selected, batch statistics and
            loss means are masked sums, the GRU runs on the padded words, and the losses branch on no value, so
            ``torch.compile(fullgraph=True)`` traces the whole step (``train.compile``). Same model and losses, not
            bit-identical to the default (other summation orders), so off by default. Default False.
        The authors' released code differs from relground's method in the switches below (docs/fidelity.md, rows
        D2-D10 and the F_cls/F_reg initialisation; ``configs/flickr30k_reir_authors.yaml`` sets the authors' value
        of each, ``tests/model/test_authors_difftest.py`` checks them against the authors' head):
        phrase_norm: BatchNorm statistics of x_q in training: ``batch`` (every phrase of the batch, relground) or
            ``caption`` (each caption's phrases alone, a one-phrase caption repeated twice, as the authors: its x_q
            is then exactly the BatchNorm's bias).
        box_norm: BatchNorm statistics of x_o in training: ``batch`` (every box of the batch; the refined top-K of
            stage 2 with the running statistics, relground) or ``image`` (each image's proposals alone, and each
            image's P*K refined boxes alone with training statistics that update the running ones, as the authors).
        vogn_zero_gates: the authors' graph variant: ``keep`` an edge whose gate ReLU(.) is 0 in the softmax (with
            logit 0; a phrase without a relation gets no message, relground) or ``drop`` it (the authors: the
            softmax runs over gates != 0, and every phrase of an item with a relation but no active edge still gets
            ReLU(b) of the message layer).
        detach_refined_boxes: the refined top-K boxes, from which the stage-2 regression targets are built, carry
            no gradient (relground); False: they do (the authors, likely an accident).
        softmax_epsilon: 0 = exact (masked) softmaxes (relground); > 0 = the authors' numerically "stable" softmax,
            exp(x - max(x * mask)) / (sum + epsilon), in the attention, graph and ranking softmaxes (authors: 1e-6).
        empty_prior: a phrase whose s_a is 0 on every box: ``all_boxes`` (its prior is taken as 1, the learned score
            decides, relground) or ``none`` (all-zero attention, the authors).
        decoder_input: the reconstruction GRU's inputs: ``projected`` (Linear(d -> word_dim) on z, then its own
            phrase-vocabulary embedding, relground) or ``tied`` (z itself, then the caption encoder's embedding of the
            phrase's words, the authors; needs word_dim == hidden_dim).
        ranking_projection: MLP_v / MLP_s of the ranking loss: ``mlp`` (Linear-ReLU-Linear, relground) or
            ``linear`` (one Linear each, the authors).
        clip_predictions: clip the predicted boxes to the image (relground); the authors do not.
        head_init: ``relground`` (F_reg's last layer N(0, 1e-3), the split Linears of F_cls / F_reg PyTorch's
            default for their width d) or ``pytorch`` (PyTorch's default for Linear(2d -> .), as the authors, who
            never call their ``init_weights``).
        loss: the :class:`LossConfig`.
    """

    # See LossConfig.REMOVED_FIELDS.
    REMOVED_FIELDS: ClassVar[dict[str, Any]] = {
        "roi_output_size": 7,
        "roi_sampling_ratio": 2,
        "phrase_batchnorm": True,
        "box_coder_weights": (10.0, 10.0, 5.0, 5.0),
    }

    backbone: str = "resnet101"
    backbone_weights: Optional[str] = None
    backbone_layout: str = "auto"
    stride_in_1x1: bool = False
    freeze_backbone: bool = True
    box_head: str = "faithful"
    spatial_feature: bool = False
    spatial_scale: float = 1.0
    box_input_norm: bool = False
    cache_features: bool = False
    cache_max_images: int = 4096
    channels_last: bool = False
    fold_backbone_bn: bool = False
    hidden_dim: int = 1024
    word_dim: int = 1024
    rnn_type: str = "gru"
    bidirectional: bool = False
    two_stage: bool = True
    top_k: int = 5
    box_regression: bool = True
    regression_uses_phrase: bool = True
    refine_start_iteration: int = 7500
    vogn: bool = True
    vogn_variant: str = "authors"
    vogn_weights: str = "attention"
    vogn_dim: int = 512
    vogn_geometry: bool = False
    relation_geometry: bool = False
    score_fusion: str = "product"
    ranking_dim: int = 512
    relation_hidden: int = 1024
    regression_hidden: int = 256
    cls_hidden: int = 0
    cls_bias: float = 0.0
    stage2_pooling: str = "fused"
    share_stage_heads: bool = True
    detach_stage2_inputs: bool = False
    separate_stage2_decoder: bool = False
    detach_regression_inputs: bool = False
    regression_input: str = "box_feature"
    regression_grid: int = 2
    native_ops: bool = True
    static_shapes: bool = False
    decoder_rnn_type: str = "gru"
    phrase_norm: str = "batch"
    box_norm: str = "batch"
    vogn_zero_gates: str = "keep"
    detach_refined_boxes: bool = True
    softmax_epsilon: float = 0.0
    empty_prior: str = "all_boxes"
    decoder_input: str = "projected"
    ranking_projection: str = "mlp"
    clip_predictions: bool = True
    head_init: str = "relground"
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        if isinstance(self.loss, dict):  # YAML / --set hands a plain mapping
            object.__setattr__(self, "loss", LossConfig(**self.loss))
        choices = {
            "backbone": BACKBONES,
            "box_head": BOX_HEADS,
            "rnn_type": RNN_TYPES,
            "decoder_rnn_type": RNN_TYPES,
            "score_fusion": SCORE_FUSIONS,
            "vogn_variant": VOGN_VARIANTS,
            "vogn_weights": VOGN_WEIGHTS,
            "stage2_pooling": STAGE2_POOLINGS,
            "regression_input": REGRESSION_INPUTS,
            "phrase_norm": PHRASE_NORMS,
            "box_norm": BOX_NORMS,
            "vogn_zero_gates": VOGN_ZERO_GATES,
            "empty_prior": EMPTY_PRIORS,
            "decoder_input": DECODER_INPUTS,
            "ranking_projection": RANKING_PROJECTIONS,
            "head_init": HEAD_INITS,
        }
        choices["backbone_layout"] = ("auto", "torchvision", "msra", "as_configured")
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"model.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("hidden_dim", "word_dim", "top_k", "vogn_dim", "ranking_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.regression_grid < 1:
            raise ValueError(f"model.regression_grid must be >= 1, got {self.regression_grid}")
        if not self.spatial_scale > 0:
            raise ValueError(f"model.spatial_scale must be > 0, got {self.spatial_scale}")
        if not self.softmax_epsilon >= 0:
            raise ValueError(f"model.softmax_epsilon must be >= 0, got {self.softmax_epsilon}")
        if self.decoder_input == "tied" and self.word_dim != self.hidden_dim:
            raise ValueError(
                "model.decoder_input: tied feeds z (hidden_dim) and the caption's word embeddings (word_dim) to one "
                f"GRU: they need model.word_dim == model.hidden_dim, got {self.word_dim} and {self.hidden_dim}"
            )
        static = (self.phrase_norm, self.box_norm, self.loss.normalization, self.decoder_input)
        if self.static_shapes and static != ("batch", "batch", "batch", "projected"):
            raise ValueError(
                "model.static_shapes supports model.phrase_norm, model.box_norm and loss.normalization 'batch' and "
                f"model.decoder_input 'projected' only, got {static}"
            )
        if self.cls_hidden < 0:
            raise ValueError(f"model.cls_hidden must be >= 0, got {self.cls_hidden}")
        if self.bidirectional and self.hidden_dim % 2:
            raise ValueError(f"model.hidden_dim must be even with model.bidirectional, got {self.hidden_dim}")
        if self.cache_features and not self.freeze_backbone:
            raise ValueError("model.cache_features needs model.freeze_backbone (a trained map changes every step)")
        if self.fold_backbone_bn and not self.freeze_backbone:
            raise ValueError(
                "model.fold_backbone_bn needs model.freeze_backbone (a training BatchNorm cannot be folded)"
            )
        if self.vogn and not self.two_stage:
            raise ValueError("model.vogn needs model.two_stage (the graph feeds the fine stage)")
        if self.vogn_geometry and not self.vogn:
            raise ValueError(
                "model.vogn_geometry needs model.vogn (it extends the graph's messages); "
                "turning the graph off, set model.vogn_geometry=false as well"
            )
        if self.relation_geometry and not self.loss.relation:
            raise ValueError(
                "model.relation_geometry needs loss.relation (it is an input of the relation classifier); "
                "turning the relation loss off, set model.relation_geometry=false as well"
            )
        if self.loss.relation and not self.two_stage:
            raise ValueError("loss.relation needs model.two_stage (it classifies stage-2 vectors)")
        if self.loss.regression and not self.box_regression:
            raise ValueError("loss.regression needs model.box_regression (there are no deltas to train)")
        if 2 in self.loss.reconstruction_stages and not self.two_stage:
            raise ValueError("loss.reconstruction_stages has 2 but model.two_stage is False")

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with ``changes``; ``loss=`` takes a LossConfig or a dict of LossConfig fields to change."""
        loss = changes.pop("loss", None)
        if isinstance(loss, dict):
            loss = dataclasses.replace(self.loss, **loss)
        if loss is not None:
            changes["loss"] = loss
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        """The paper's ablations (Tab. 2) by name, then ``overrides`` (e.g. ``top_k=3`` for Tab. 3).

        Args:
            name: ``baseline`` (coarse matching, rec + rank), ``tsd`` (+ two stages), ``tsd_str`` (+ self-taught
                regression), ``tsd_str_noq`` (regression without the phrase feature), ``tsd_vogn_rc`` (two stages +
                VOGN + relation loss, no regression), ``full`` (everything) or ``full_uniform`` (uniform VOGN weights).
            **overrides: any ModelConfig field; ``loss`` may be a dict of LossConfig fields.

        Raises:
            ValueError: unknown ``name``.
        """
        no_graph = dict(vogn=False)
        presets: dict[str, dict[str, Any]] = {
            "baseline": dict(
                two_stage=False,
                box_regression=False,
                **no_graph,
                loss=dict(reconstruction_stages=(1,), regression=False, relation=False),
            ),
            "tsd": dict(
                box_regression=False,
                **no_graph,
                loss=dict(reconstruction_stages=(1, 2), regression=False, relation=False),
            ),
            "tsd_str": dict(**no_graph, loss=dict(reconstruction_stages=(1, 2), relation=False)),
            "tsd_str_noq": dict(
                regression_uses_phrase=False, **no_graph, loss=dict(reconstruction_stages=(1, 2), relation=False)
            ),
            "tsd_vogn_rc": dict(box_regression=False, loss=dict(regression=False)),
            "full": dict(),
            "full_uniform": dict(vogn_weights="uniform"),
        }
        if name not in presets:
            raise ValueError(f"ModelConfig.preset name must be one of {sorted(presets)}, got {name!r}")
        changes = presets[name]
        loss_changes = dict(changes.pop("loss", {}))
        loss_changes.update(overrides.pop("loss", {}) if isinstance(overrides.get("loss"), dict) else {})
        loss = overrides.pop("loss", None) or dataclasses.replace(LossConfig(), **loss_changes)
        return cls(**{**changes, **overrides, "loss": loss})
