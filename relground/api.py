"""The public predictor API: ``Grounder`` grounds the phrases of new captions in new images with a trained ReIR.

Example::

    from relground.api import Grounder        # also relground.Grounder
    grounder = Grounder.from_checkpoint("outputs/demo/full")   # a run folder, or its checkpoints/model_final.pth
    for phrase in grounder.ground("dog.jpg", "A dog catches a red ball ."):
        print(phrase.text, phrase.box, phrase.score)   # box: x1, y1, x2, y2 in the image's pixels
    grounder.ground("dog.jpg", "A dog catches a red ball .", phrases=["a red ball"])   # only this phrase

A checkpoint written by :func:`relground.engine.defaults.train` holds everything needed to rebuild the model
(see :mod:`relground.engine.predictor`, whose ``TrainedModel`` also evaluates a checkpoint on dataset splits).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image

from relground.data.collate import collate_grounding
from relground.data.dataset import GroundingDataset
from relground.data.proposals import ProposalSet, proposals_for_image, sliding_windows
from relground.data.transforms import transform_image
from relground.engine.defaults import num_relation_classes
from relground.engine.predictor import TrainedModel, resolve_checkpoint
from relground.language.captions import CaptionSplit, PhraseSpec, split_caption
from relground.language.glove import WordVectors, category_prior
from relground.language.relations import align_relations, load_parser
from relground.language.relations import parse_caption as parse_relations
from relground.language.vocab import Vocabulary, tokenize
from relground.structures.records import ImageAnnotation, PhraseAnnotation, RelationAnnotation, SentenceAnnotation

ImageInput = Union[str, Path, Image.Image]

__all__ = ["GroundedPhrase", "Grounder"]


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


def _as_tuple(t: torch.Tensor) -> tuple[float, float, float, float]:
    return tuple(float(v) for v in t.tolist())


def _load_rgb(image: ImageInput) -> Image.Image:
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"image: file not found: {image}")
        with Image.open(image) as pil:
            return pil.convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    raise ValueError(f"image: expected a path or a PIL image, got {type(image).__name__}")


class Grounder:
    """Ground the phrases of a caption in an image with a trained ReIR.

    Args:
        trained: a :class:`~relground.engine.predictor.TrainedModel` (usually built by :meth:`from_checkpoint`).

    Example:
        >>> grounder = Grounder.from_checkpoint("outputs/demo/full")        # doctest: +SKIP
        >>> [p.text for p in grounder.ground("img.jpg", "a red circle to the left of a blue square")]  # doctest: +SKIP
        ['a red circle', 'a blue square']
    """

    def __init__(self, trained: TrainedModel):
        self.trained = trained
        self.cfg = trained.cfg
        self.model = trained.model
        self.num_relation_classes = num_relation_classes(self.cfg, trained.model_args)

    @classmethod
    def from_checkpoint(
        cls, path: Union[str, Path], *, device: Union[str, torch.device] = "auto", overrides: Sequence[str] = ()
    ) -> "Grounder":
        """Rebuild a trained ReIR from a run folder or a checkpoint file written by ``relground train`` / ``demo``.

        Args:
            path: a run folder (e.g. ``outputs/demo/full``: its ``checkpoints/model_final.pth``, else its newest
                periodic checkpoint) or a checkpoint file (``.../checkpoints/model_final.pth``).
            device: where the model runs: ``"auto"`` (default: CUDA when available, else the CPU), ``"cpu"``,
                ``"cuda"``, ``"cuda:1"``. bf16 autocast on a GPU. The backbone weight file of the training run is
                not needed (the checkpoint holds every tensor).
            overrides: ``key=value`` config overrides (e.g. ``"data.root=/elsewhere"``).

        Raises:
            FileNotFoundError: ``path`` is neither a checkpoint file nor a folder holding one.
            ValueError: the file is not a checkpoint written by relground's training.
        """
        try:
            checkpoint = resolve_checkpoint(path)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"Grounder.from_checkpoint: path={str(path)!r} is neither a checkpoint file nor a run folder holding "
                "one (expected e.g. outputs/demo/full or outputs/demo/full/checkpoints/model_final.pth)"
            ) from None
        return cls(TrainedModel.from_checkpoint(checkpoint, overrides=overrides, device=device))

    @staticmethod
    def split_caption(caption: str, phrases: Optional[Sequence[PhraseSpec]] = None) -> CaptionSplit:
        """The caption's words and the phrases :meth:`ground` grounds (:func:`relground.language.captions.split_caption`).

        Example:
            >>> [p.text for p in Grounder.split_caption("the violet cross to the left of the big blue square").phrases]
            ['the violet cross', 'the big blue square']
        """
        return split_caption(caption, phrases)

    @torch.inference_mode()
    def ground(
        self,
        image: ImageInput,
        caption: str,
        proposals: Optional[Union[ProposalSet, np.ndarray]] = None,
        phrases: Optional[Sequence[PhraseSpec]] = None,
    ) -> list[GroundedPhrase]:
        """Ground the phrases of ``caption`` in ``image``.

        Args:
            image: path or PIL image.
            caption: plain text or Flickr30K Entities markup (``[/EN#1/people A man] throws ...``, its phrases
                are grounded). Plain text is split into its entity phrases, the ones the relations of training
                join ("the violet cross to the left of the big blue square" -> "the violet cross", "the big
                blue square"), unless ``phrases`` is given.
            phrases: the phrases to ground instead, each a string of the caption's words or a
                ``(first_word_index, num_words)`` span of :meth:`split_caption`'s ``words``.
            proposals: a ``ProposalSet`` of this image (detector boxes + labels, original pixels), or an
                ``np.ndarray[M, 4]`` of unlabeled boxes; None = :func:`sliding_windows`. Unlabeled boxes get a
                category prior of 1 (no class evidence). At most ``data.max_proposals`` are used.

        Returns:
            one :class:`GroundedPhrase` per phrase, in caption order (``phrases``' order when given; empty when
            the caption has none).

        Raises:
            FileNotFoundError: no image file at ``image``.
            ValueError: an empty caption, a phrase not in it, or no proposals.
        """
        parsed = split_caption(caption, phrases)
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
        name = str(image) if isinstance(image, (str, Path)) else "the image"
        classes = len(self.trained.model_args["class_names"]) if labelled else None
        proposals = proposals_for_image(proposals, width, height, name, "proposals", classes)  # size, rows, labels
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
        cache = self.model.backbone.cache
        if cache is not None:  # the per-image feature cache is keyed by id; a query image has no stable id
            cache.clear()
        amp = self.trained.amp_dtype  # bf16 on a GPU
        with torch.autocast(self.trained.device.type, dtype=amp, enabled=amp is not None):
            out = self.model(batch, None)

        chosen = _chosen_proposals(out)[0]  # [P] proposal index of each phrase's prediction
        boxes = (out.boxes[0].float() / scale).cpu()
        stage1 = (out.boxes_stage1[0].float() / scale).cpu()
        props = (batch.proposals[0] / scale).cpu()
        return [
            GroundedPhrase(
                phrase.text, phrase.first_word_index, phrase.num_words, _as_tuple(boxes[p]), float(out.scores[0, p]),
                _as_tuple(props[int(chosen[p])]), _as_tuple(stage1[p]),
            )
            for p, phrase in enumerate(parsed.phrases)
        ]

    def _record(self, parsed: CaptionSplit, width: int, height: int) -> ImageAnnotation:
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
            category = {name: i for i, name in enumerate(self.trained.model_args["relation_categories"])}
            aligned = align_relations(sentence, parse_relations(load_parser(), sentence.text))
            sentence.relations = [
                RelationAnnotation(s, o, text, tuple(c for c in [category.get(text)] if c is not None))
                for s, o, text in aligned
            ]
        return ImageAnnotation("query", width, height, [sentence])

    def _prior_fn(self, parsed: CaptionSplit):
        """s_a from GloVe, as in training (:func:`relground.engine.defaults.build_split_dataset`)."""
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
