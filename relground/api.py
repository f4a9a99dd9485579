"""Programmatic use of a trained model: ``Grounder`` for new images and captions, ``TrainedModel`` for splits.

Example::

    from relground.api import Grounder
    grounder = Grounder.from_checkpoint("outputs/demo/full/checkpoints/model_final.pth")
    for phrase in grounder.ground("dog.jpg", "A dog catches a red ball ."):
        print(phrase.text, phrase.box, phrase.score)   # box: x1, y1, x2, y2 in the image's pixels

A checkpoint written by ``relground.engine.trainer.train`` holds everything needed to rebuild the model:
``model`` (state dict), ``config`` (the ``Config`` as a dict) and ``model_args`` (vocabularies, detector
class names and the model's other constructor arguments, see ``relground.engine.build``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image

from relground.data.proposals import ProposalSet
from relground.structures.records import ImageAnnotation, PhraseAnnotation, RelationAnnotation, SentenceAnnotation

ImageInput = Union[str, Path, Image.Image]
MARKUP = "[/EN#"
# Sliding windows: side fractions of the image, each on a half-window stride -> 1 + 4 + 9 + 36 = 50 boxes.
WINDOW_FRACTIONS = (1.0, 0.75, 0.5, 0.3)


@dataclass(frozen=True)
class CaptionPhrase:
    """A phrase of a caption: words ``[first_word_index, first_word_index + num_words)``."""

    first_word_index: int
    num_words: int
    text: str
    phrase_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParsedCaption:
    words: list[str]  # the caption's words; the model reads " ".join(words)
    phrases: list[CaptionPhrase]
    source: str  # "markup" or "noun_chunks"


@dataclass(frozen=True)
class GroundedPhrase:
    """One grounded phrase. Boxes are xyxy in the original image's pixels.

    Attributes:
        text: the phrase's words.
        first_word_index: position of its first word in the caption's words.
        num_words: number of words.
        box: the prediction (fused stages, refined by box regression).
        score: the fused matching score of the chosen proposal (attention, in [0, 1]).
        proposal_box: the chosen proposal before regression (Fig. 5c's dashed box).
        box_stage1: the stage-1 prediction alone.
    """

    text: str
    first_word_index: int
    num_words: int
    box: tuple[float, float, float, float]
    score: float
    proposal_box: tuple[float, float, float, float]
    box_stage1: tuple[float, float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_caption(caption: str, nlp=None) -> ParsedCaption:
    """Phrases of a caption: its Flickr30K Entities markup when present, else spaCy noun chunks.

    Args:
        caption: plain text, or marked up as ``[/EN#<chain>/<type> words ...] ...``.
        nlp: a loaded spaCy pipeline for plain captions (default: the relation parser's pipeline).

    Raises:
        ValueError: broken markup, or an empty caption.
    """
    if not caption.strip():
        raise ValueError("--caption: empty caption")
    if MARKUP in caption:
        from relground.data.flickr30k import parse_sentence_line

        words, phrases = parse_sentence_line(caption, Path("<caption>"), 0)
        return ParsedCaption(
            words, [CaptionPhrase(first, len(text.split(" ")), text, types) for first, text, _, types in phrases], "markup"
        )
    doc = (nlp or _spacy())(" ".join(caption.split()))
    # spaCy tokens become the words (punctuation split off, as in Flickr30K's captions).
    words = [token.text for token in doc if not token.is_space]
    index_of = {}
    for token in doc:
        if not token.is_space:
            index_of[token.i] = len(index_of)
    phrases = []
    for chunk in doc.noun_chunks:
        positions = [index_of[t.i] for t in chunk if t.i in index_of]
        if positions:
            phrases.append(CaptionPhrase(positions[0], len(positions), " ".join(words[p] for p in positions)))
    return ParsedCaption(words, phrases, "noun_chunks")


_SPACY_PARSER = None


def _scene_graph_parser():
    """SceneGraphParser on spaCy, loaded once per process (the same pipeline training used for relations)."""
    global _SPACY_PARSER
    if _SPACY_PARSER is None:
        from relground.language.relations import _load_parser

        _SPACY_PARSER = _load_parser()
    return _SPACY_PARSER


def _spacy():
    return _scene_graph_parser().unwrapped.nlp


def sliding_windows(width: int, height: int, fractions: Sequence[float] = WINDOW_FRACTIONS) -> np.ndarray:
    """A fixed multi-scale window set, used as proposals when no detector output is given.

    For each side fraction ``f`` the windows are ``f * width`` x ``f * height``, placed on an evenly spaced
    grid with at most half a window between neighbours, whole image first. Default: 50 boxes.

    Args:
        width, height: image size in pixels.
        fractions: window sides as fractions of the image side, each in (0, 1].

    Returns:
        np.ndarray[N, 4] float32, xyxy pixels, larger windows first.
    """
    boxes = []
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"fractions: each must be in (0, 1], got {f}")
        n = 1 if f == 1 else math.ceil((1 - f) / (f / 2)) + 1  # positions per axis
        for y in np.linspace(0.0, 1.0 - f, n):
            for x in np.linspace(0.0, 1.0 - f, n):
                boxes.append((x * width, y * height, (x + f) * width, (y + f) * height))
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def _as_tuple(t: torch.Tensor) -> tuple[float, float, float, float]:
    return tuple(float(v) for v in t.tolist())


def _load_rgb(image: ImageInput) -> Image.Image:
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"image file not found: {image}")
        with Image.open(image) as pil:
            return pil.convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    raise ValueError(f"image: expected a path or a PIL image, got {type(image).__name__}")


def resolve_checkpoint(path) -> Path:
    """A checkpoint file, or a training output folder (its newest checkpoint).

    Raises:
        FileNotFoundError: no such file, or a folder without any checkpoint.
    """
    from relground.engine.checkpoint import Checkpointer

    path = Path(path)
    if path.is_file():
        return path
    for folder in (path / "checkpoints", path):
        if folder.is_dir():
            latest = Checkpointer(folder).latest()
            if latest is not None:
                return latest
    raise FileNotFoundError(f"--checkpoint: no checkpoint file at {path}")


class TrainedModel:
    """A model rebuilt from a checkpoint with its config and training vocabularies, evaluated on dataset splits.

    Args:
        model: the ``ReIR`` (weights loaded).
        cfg: its ``relground.config.Config``.
        model_args: vocabularies and class names (``relground.engine.build``).
        device: torch device.
    """

    def __init__(self, model: torch.nn.Module, cfg, model_args: dict[str, Any], device: Union[str, torch.device] = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.cfg = cfg
        self.model_args = model_args
        self._annotations: dict[str, list[ImageAnnotation]] = {}

    @classmethod
    def from_checkpoint(
        cls, checkpoint, *, config=None, overrides: Sequence[str] = (), device: Union[str, torch.device] = "cpu"
    ) -> "TrainedModel":
        """Load ``checkpoint`` (file or training folder); ``config`` (YAML) replaces the stored config.

        Raises:
            FileNotFoundError: no checkpoint there.
            ValueError: not a relground checkpoint, or one without ``config`` / ``model_args``.
        """
        from relground.config import load_config
        from relground.engine.build import build_model, model_from_checkpoint
        from relground.engine.checkpoint import load_checkpoint

        state = load_checkpoint(resolve_checkpoint(checkpoint), map_location="cpu")
        if config is None:
            model, cfg, model_args = model_from_checkpoint(state, overrides)
        else:
            if "model_args" not in state:
                raise ValueError(f"{checkpoint}: checkpoint has no 'model_args' entry (was it written by train?)")
            cfg, model_args = load_config(config, overrides), state["model_args"]
            model = build_model(cfg, model_args)
            model.load_state_dict(state["model"])
        return cls(model, cfg, model_args, device)

    def annotations(self, split: str) -> list[ImageAnnotation]:
        """The split's images (read once; relations attached when the config names a relations file)."""
        if split not in self._annotations:
            from relground.data.dataset import load_annotations

            self._annotations[split] = load_annotations(self.cfg.data, split)
        return self._annotations[split]

    def evaluate(self, split: str = "test", *, return_predictions: bool = False, progress: bool = False):
        """Metrics of the model on ``split`` (``relground.evaluation.evaluator.evaluate_model``).

        Returns:
            the metrics dict, or ``(metrics, ModelPredictions)`` when ``return_predictions`` (boxes per stage,
            ``key -> [x1, y1, x2, y2]`` in original pixels, and the proposals the model saw).
        """
        from relground.engine.build import build_loader
        from relground.evaluation.evaluator import evaluate_model, load_twins

        images = self.annotations(split)
        loader = build_loader(self.cfg, split, self.model_args, train=False)
        return evaluate_model(
            self.model, loader, annotations=images, twins=load_twins(self.cfg.data.root, images),
            progress=progress, return_predictions=return_predictions,
        )


class Grounder:
    """Ground the phrases of a caption in an image with a trained ReIR.

    Args:
        trained: a :class:`TrainedModel`.

    Example:
        >>> grounder = Grounder.from_checkpoint("outputs/demo/full")        # doctest: +SKIP
        >>> [p.text for p in grounder.ground("img.jpg", "A red circle left of a blue square .")]  # doctest: +SKIP
        ['A red circle', 'a blue square']
    """

    def __init__(self, trained: TrainedModel):
        self.trained = trained
        self.cfg = trained.cfg
        self.model = trained.model
        self.num_relation_classes = len(trained.model_args["relation_categories"]) or self.cfg.data.num_relation_classes

    @classmethod
    def from_checkpoint(cls, path, *, device: Union[str, torch.device] = "cpu", overrides: Sequence[str] = ()) -> "Grounder":
        """Rebuild from a checkpoint file (or a training output folder) written by ``relground train``."""
        return cls(TrainedModel.from_checkpoint(path, overrides=overrides, device=device))

    @staticmethod
    def parse_caption(caption: str) -> ParsedCaption:
        """The caption's words and phrases (see :func:`parse_caption`)."""
        return parse_caption(caption)

    @torch.inference_mode()
    def ground(
        self, image: ImageInput, caption: str, proposals: Optional[Union[ProposalSet, np.ndarray]] = None
    ) -> list[GroundedPhrase]:
        """Ground every phrase of ``caption`` in ``image``.

        Args:
            image: path or PIL image.
            caption: plain text (phrases = spaCy noun chunks) or Flickr30K Entities markup.
            proposals: a ``ProposalSet`` of this image (detector boxes + labels, original pixels), or an
                ``np.ndarray[M, 4]`` of unlabeled boxes; None = :func:`sliding_windows`. Unlabeled boxes get a
                category prior of 1 (no class evidence). At most ``data.max_proposals`` are used.

        Returns:
            one :class:`GroundedPhrase` per phrase, in caption order (empty when the caption has none).
        """
        from relground.data.dataset import GroundingDataset, collate_grounding
        from relground.data.transforms import transform_image
        from relground.language.vocab import Vocabulary

        parsed = parse_caption(caption)
        if not parsed.phrases:
            return []
        pil = _load_rgb(image)
        width, height = pil.size
        labelled = isinstance(proposals, ProposalSet)
        if proposals is None:
            proposals = sliding_windows(width, height)
        if not labelled:
            boxes = np.asarray(proposals, dtype=np.float32).reshape(-1, 4)
            proposals = ProposalSet(boxes, np.ones(len(boxes)), np.zeros(len(boxes)), width, height)
        if len(proposals) == 0:
            raise ValueError("proposals: no boxes for this image")

        record = self._record(parsed, width, height)
        data = self.cfg.data
        args = self.trained.model_args
        dataset = GroundingDataset(
            [record], {record.image_id: proposals}, Vocabulary(args["caption_itos"]), Vocabulary(args["phrase_itos"]),
            self._prior_fn(parsed), max_proposals=data.max_proposals, min_size=data.min_size, max_size=data.max_size,
            pixel_format=data.pixel_format, num_relation_classes=self.num_relation_classes, load_images=False,
        )
        pixels, scale = transform_image(pil, data.min_size, data.max_size, data.pixel_format)
        item = dataset.build_item(record, record.sentences[0], pixels, tuple(pixels.shape[-2:]), scale)
        if not labelled:
            item.category_prior = torch.ones_like(item.category_prior)  # no detector label: no class evidence
        batch = collate_grounding([item], self.num_relation_classes).to(self.trained.device)
        cache = getattr(getattr(self.model, "backbone", None), "cache", None)
        if cache is not None:  # the per-image feature cache is keyed by id; a query image has no stable id
            cache.clear()
        out = self.model(batch, None)

        chosen = _chosen_proposals(out)[0]  # [P] proposal index of each phrase's prediction
        boxes = (out.boxes[0] / scale).cpu()
        stage1 = (out.boxes_stage1[0] / scale).cpu()
        props = (batch.proposals[0] / scale).cpu()
        return [
            GroundedPhrase(
                phrase.text, phrase.first_word_index, phrase.num_words, _as_tuple(boxes[p]), float(out.scores[0, p]),
                _as_tuple(props[int(chosen[p])]), _as_tuple(stage1[p]),
            )
            for p, phrase in enumerate(parsed.phrases)
        ]

    def _record(self, parsed: ParsedCaption, width: int, height: int) -> ImageAnnotation:
        """The caption as an annotation record; relations (for the VOGN) from the training parser."""
        # The dataset keeps only phrases with a ground truth; the whole image stands in for the unknown one
        # (it only fills ``gt_boxes``, which the model never reads).
        whole = (0.0, 0.0, float(width), float(height))
        phrases = [
            PhraseAnnotation(p.first_word_index, p.text, str(i + 1), p.phrase_types or ("other",), whole)
            for i, p in enumerate(parsed.phrases)
        ]
        sentence = SentenceAnnotation(0, " ".join(parsed.words), parsed.words, phrases)
        if self.cfg.model.vogn:
            from relground.language.relations import align_relations
            from relground.language.relations import parse_caption as parse_relations

            category = {name: i for i, name in enumerate(self.trained.model_args["relation_categories"])}
            aligned = align_relations(sentence, parse_relations(_scene_graph_parser(), sentence.text))
            sentence.relations = [
                RelationAnnotation(s, o, text, tuple(c for c in [category.get(text)] if c is not None))
                for s, o, text in aligned
            ]
        return ImageAnnotation("query", width, height, [sentence])

    def _prior_fn(self, parsed: ParsedCaption):
        """s_a from GloVe, as in training (``relground.engine.build.build_dataset``)."""
        import functools

        from relground.language.glove import WordVectors, category_prior
        from relground.language.vocab import tokenize

        class_names = self.trained.model_args["class_names"]
        words = {w for p in parsed.phrases for w in tokenize(p.text)} | {w for c in class_names for w in c.split()}
        return functools.partial(category_prior, class_names=class_names, vectors=WordVectors.load(words=sorted(words)))


def _chosen_proposals(out) -> torch.Tensor:
    """Index of the proposal behind each phrase's prediction, Tensor[B, P] (the fused argmax's slot)."""
    if out.topk_index is None or out.attention_stage2 is None:
        return out.attention_stage1.argmax(-1)
    index = out.topk_index  # [B, P, K], -1 = empty slot
    att1_k = torch.gather(out.attention_stage1, 2, index.clamp(min=0)) * (index >= 0)  # [B, P, K]
    best = (att1_k * out.attention_stage2).argmax(-1, keepdim=True)  # [B, P, 1]
    return torch.gather(index, 2, best)[..., 0].clamp(min=0)


# ---------------------------------------------------------------------------------------------------------------
# Synthetic experiments (``relground demo`` / ``relground ablation``)

SYNTHETIC_CONFIG = "synthetic.yaml"  # the shipped one (relground.config.shipped_config), not one in the cwd
SYNTHETIC_RELATION_MIN_FREQ = 5  # relation texts seen more than this often in train become categories


def prepare_synthetic(out, num_images: int, seed: int = 0) -> dict:
    """Generate the synthetic benchmark into ``out`` and its relations files (``relations_<split>.json``).

    Train builds the relation categories (count > ``SYNTHETIC_RELATION_MIN_FREQ``); val and test reuse them.

    Returns:
        the generator's measured properties plus ``relation_categories`` and ``relation_seconds``.
    """
    import json
    import time

    from relground.data.flickr30k import load_flickr30k
    from relground.data.synthetic import generate_synthetic
    from relground.language.relations import build_relations, parse_captions

    props = generate_synthetic(out, num_images=num_images, seed=seed)
    start = time.perf_counter()
    splits = {split: load_flickr30k(out, split) for split in ("train", "val", "test")}
    captions = [s.text for images in splits.values() for im in images for s in im.sentences]
    parses, _ = parse_captions(captions, workers=1)  # one process: spaCy loads once, no pool start-up
    categories = None
    for split, images in splits.items():  # train first: it defines the categories
        relations = build_relations(images, parses, categories=categories, min_freq=SYNTHETIC_RELATION_MIN_FREQ)
        categories = categories or [c["name"] for c in relations["categories"]]
        (Path(out) / f"relations_{split}.json").write_text(json.dumps({**relations, "split": split}))
    props.update(relation_categories=len(categories), relation_seconds=round(time.perf_counter() - start, 2))
    return props


def apply_preset(model_cfg, preset: str, **overrides: Any):
    """``model_cfg`` with the switches of a Table 2 preset (``ModelConfig.preset``) and then ``overrides``.

    The preset's switches are its differences from the default ``ModelConfig``, so the base config's sizes
    (backbone, widths, schedule) are kept while the components are turned on or off.
    """
    from dataclasses import fields

    from relground.config.model import ModelConfig

    default, target = ModelConfig(), ModelConfig.preset(preset)
    changes = {
        f.name: getattr(target, f.name)
        for f in fields(ModelConfig)
        if f.name != "loss" and getattr(target, f.name) != getattr(default, f.name)
    }
    loss_changes = {
        f.name: getattr(target.loss, f.name)
        for f in fields(type(default.loss))
        if getattr(target.loss, f.name) != getattr(default.loss, f.name)
    }
    # A component the preset turns off takes the base config's extensions of it along.
    if not target.vogn:
        changes["vogn_geometry"] = False
    if not target.loss.relation:
        changes["relation_geometry"] = False
    return model_cfg.replace(**changes, **overrides, loss=loss_changes)


def synthetic_config(
    config,
    data_root,
    output_dir,
    *,
    preset: str = "full",
    iterations: Optional[int] = None,
    seed: int = 10,
    overrides: Sequence[str] = (),
    model_overrides: Optional[dict[str, Any]] = None,
):
    """The config of one synthetic run: ``config`` (default ``configs/synthetic.yaml``) for ``preset``.

    Args:
        config: base YAML, None = ``configs/synthetic.yaml``.
        data_root: the benchmark folder (``prepare_synthetic``).
        output_dir: the run's folder.
        preset: ``ModelConfig.preset`` name (Table 2 row).
        iterations: training iterations; the lr steps, warm-up and refine start scale with it.
        seed: training seed.
        overrides: ``key=value`` config overrides, applied after the preset.
        model_overrides: ModelConfig fields that define the run, e.g. ``{"top_k": 3}`` (Table 3); applied last, so
            an ``overrides`` entry for every run (``--set model.top_k=10``) does not change a Table 3 row's K.
    """
    import dataclasses

    from relground.config import apply_overrides, load_config, shipped_config

    try:  # load_config also finds a shipped config by name (relground.config.find_config)
        cfg = load_config(
            config if config is not None else shipped_config(SYNTHETIC_CONFIG),
            [f"data.root={data_root}", f"output_dir={output_dir}", f"seed={seed}"],
        )
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"--config: {exc}") from None
    if iterations is not None:
        if iterations <= 0:
            raise ValueError(f"--iterations: must be positive, got {iterations}")
        factor = iterations / cfg.solver.max_iter

        def scaled(value: int) -> int:
            return max(1, round(value * factor))

        solver = dataclasses.replace(
            cfg.solver, max_iter=iterations, steps=tuple(scaled(s) for s in cfg.solver.steps),
            warmup_iters=min(scaled(cfg.solver.warmup_iters), iterations),
        )
        train_cfg = dataclasses.replace(cfg.train, checkpoint_period=iterations, progress_bar=False)
        model = cfg.model.replace(refine_start_iteration=scaled(cfg.model.refine_start_iteration))
        cfg = dataclasses.replace(cfg, solver=solver, train=train_cfg, model=model)
    cfg = dataclasses.replace(cfg, model=apply_preset(cfg.model, preset))
    cfg = apply_overrides(cfg, overrides) if overrides else cfg
    return dataclasses.replace(cfg, model=cfg.model.replace(**model_overrides)) if model_overrides else cfg


def train_and_evaluate(cfg, split: str = "test") -> dict[str, Any]:
    """Train ``cfg`` (``relground.engine.trainer.train``), reload the final checkpoint and evaluate on ``split``.

    Returns:
        dict with ``metrics`` (``evaluate_model``'s), ``predictions`` (fused boxes per phrase key),
        ``checkpoint`` (path), ``trained`` (the :class:`TrainedModel`) and ``train`` (the trainer's result).
    """
    from relground.engine.trainer import train

    result = train(cfg)
    if not result.get("checkpoint"):
        raise ValueError(f"training of {cfg.output_dir} ended without a checkpoint (status {result.get('status')})")
    trained = TrainedModel.from_checkpoint(result["checkpoint"])
    metrics, predictions = trained.evaluate(split, return_predictions=True)
    return {"metrics": metrics, "predictions": predictions.boxes["fused"], "checkpoint": result["checkpoint"],
            "trained": trained, "train": result}
