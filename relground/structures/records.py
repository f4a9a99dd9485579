"""Plain records shared by every dataset reader, the language layer, the batcher and the evaluator.

Coordinates are 0-based xyxy image pixels as in the official Flickr30K Entities parser
(raw XML minus 1), width = x2 - x1 (no +1).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class PhraseAnnotation:
    """One annotated noun phrase of a sentence."""

    first_word_index: int  # index of its first word in SentenceAnnotation.words
    text: str  # the phrase's words joined by single spaces
    phrase_id: str  # coreference chain id; "0" is the not-visual chain
    phrase_types: tuple[str, ...]  # e.g. ("people",); several for "/vehicles/scene"
    union_box: Optional[Box] = None  # union of the chain's boxes; None = not grounded (not evaluated)

    @property
    def num_words(self) -> int:
        return len(self.text.split(" "))

    @property
    def grounded(self) -> bool:
        return self.union_box is not None


@dataclass(frozen=True)
class RelationAnnotation:
    """A parsed relation between two annotated phrases of one sentence (indices into its phrases)."""

    subject: int
    object: int
    text: str  # the relation phrase, e.g. "left of"
    categories: tuple[int, ...] = ()  # relation-category ids (empty when the text is not a kept category)


@dataclass
class SentenceAnnotation:
    sentence_index: int  # line number in Sentences/<id>.txt (0-based); for ReferIt the query index
    text: str  # caption without markup
    words: list[str]  # text.split(" ")
    phrases: list[PhraseAnnotation]
    relations: list[RelationAnnotation] = field(default_factory=list)


@dataclass
class ImageAnnotation:
    image_id: str
    width: int
    height: int
    sentences: list[SentenceAnnotation]
    chain_boxes: dict[str, list[Box]] = field(default_factory=dict)  # every box of every chain, 0-based xyxy
    image_path: Optional[str] = None
