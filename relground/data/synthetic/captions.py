"""Captions of one synthetic image: phrases marked up as Flickr30K Entities does, spatial relations, frames.

Besides each caption's line, the captioner records the relations the caption states as ``(subject phrase,
object phrase, relation name)`` (phrase indices in markup order): the edges the parser is meant to find.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from relground.data.synthetic.scene import Condition, SceneObject
from relground.data.synthetic.vocabulary import (
    BIG_ABOVE, BIG_WORDS, COLOURS, FRAME_RELATIONS, FRAMES, OPPOSITE, RELATIONS, SCENE_PHRASES, SHAPE_WORDS,
    SMALL_BELOW, SMALL_WORDS, relation_holds,
)

_RELATION_OF_PHRASING = {phrasing: rel for rel, phrasings in RELATIONS.items() for phrasing in phrasings}


@dataclass
class MarkedPhrase:
    """A phrase of a caption, written as ``[/EN#<chain>/<phrase_type> <text>]``."""

    chain: str
    phrase_type: str
    text: str


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase_text(rng: np.random.Generator, obj: SceneObject, size: int, det: Optional[str] = None) -> str:
    words = []
    side = float(max(obj.box[2] - obj.box[0], obj.box[3] - obj.box[1])) / size
    if side < SMALL_BELOW and rng.random() < 0.6:
        words.append(SMALL_WORDS[int(rng.integers(len(SMALL_WORDS)))])
    elif side > BIG_ABOVE and rng.random() < 0.6:
        words.append(BIG_WORDS[int(rng.integers(len(BIG_WORDS)))])
    colours = COLOURS[obj.colour][1]
    words.append(colours[int(rng.integers(len(colours)))])
    shapes = SHAPE_WORDS[obj.shape]
    words.append(shapes[int(rng.integers(len(shapes)))][0])
    if det is None:
        det = ("the", "a", "one")[int(rng.choice(3, p=[0.45, 0.45, 0.1]))]
    if det == "a":
        det = _article(words[0])
    return " ".join([det] + words)


def _plural_text(rng: np.random.Generator, obj: SceneObject, copies: int = 2) -> str:
    colours = COLOURS[obj.colour][1]
    shapes = SHAPE_WORDS[obj.shape]
    dets = ("three", "the three", "all three") if copies == 3 else ("two", "the two", "both")
    det = dets[int(rng.integers(3))]
    return f"{det} {colours[int(rng.integers(len(colours)))]} {shapes[int(rng.integers(len(shapes)))][1]}"


def _true_relations(a: np.ndarray, b: np.ndarray) -> list[str]:
    return [rel for rel in RELATIONS if relation_holds(rel, a, b)]


class Captioner:
    """Builds the captions of one image; phrase chains are shared across its captions (coreference).

    ``copies``: how many identical objects lead ``objects`` (0, 2 or 3); ``relations[c]``: the relations stated
    by the ``c``-th rendered caption, ``(subject phrase, object phrase, relation name)``.
    """

    def __init__(self, rng: np.random.Generator, objects: list[SceneObject], size: int, chain_base: int,
                 copies: int = 2) -> None:
        self.rng, self.objects, self.size, self.copies = rng, objects, size, copies
        self.plural_chain = str(chain_base + 7)
        self.scene_chain = str(chain_base + 8)
        self.used_plural = self.used_scene = False
        self.frames_used: set[str] = set()
        self.relations: list[list[tuple[int, int, str]]] = []

    def pick(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def obj_phrase(self, k: int, det: Optional[str] = None) -> MarkedPhrase:
        obj = self.objects[k]
        return MarkedPhrase(obj.chain, obj.shape, _phrase_text(self.rng, obj, self.size, det))

    def scene_phrase(self) -> MarkedPhrase:
        self.used_scene = True
        return MarkedPhrase(self.scene_chain, "scene", self.pick(SCENE_PHRASES))

    def render(self, kind: str, slots: dict) -> str:
        """Fill a random frame of ``kind`` with phrases (marked up) and relation phrasings; returns the line."""
        index = int(self.rng.integers(len(FRAMES[kind])))
        frame = FRAMES[kind][index]
        if "{C}" in frame:
            slots = {**slots, "C": self.scene_phrase()}
        out = []
        phrase_index: dict[str, int] = {}  # slot -> position of its phrase in the caption's markup
        for token in frame.split(" "):
            if token.startswith("{") and token.endswith("}"):
                value = slots[token[1:-1]]
                if isinstance(value, MarkedPhrase):
                    phrase_index[token[1:-1]] = len(phrase_index)
                    out.append(f"[/EN#{value.chain}/{value.phrase_type} {value.text}]")
                else:
                    out.append(value)
            else:
                out.append(token)
        self.frames_used.add(f"{kind}:{index}")
        self.relations.append([(phrase_index[s], phrase_index[o], _RELATION_OF_PHRASING[slots[r]])
                               for s, r, o in FRAME_RELATIONS[kind]])
        return " ".join(out)

    def twin_caption(self, ref: int, rel: str) -> str:
        """One twin (or both) grounded through the relation to the unique reference object."""
        r = self.rng.random()
        if r < 0.35:  # both twins, each with its own side of the reference
            return self.render("double", {
                "S": self.obj_phrase(0), "R": self.pick(RELATIONS[rel]), "O": self.obj_phrase(ref),
                "S2": self.obj_phrase(1, det="another"), "R2": self.pick(RELATIONS[OPPOSITE[rel]]),
                "O2": self.obj_phrase(ref, det="the"),
            })
        twin, rel_t = (0, rel) if self.rng.random() < 0.5 else (1, OPPOSITE[rel])
        if r < 0.65:  # the twin as subject: "the red circle to the left of the blue square"
            return self.render("pair", {"S": self.obj_phrase(twin), "R": self.pick(RELATIONS[rel_t]),
                                        "O": self.obj_phrase(ref)})
        # the twin as object: "a blue square to the right of the red circle" (the reference is the subject)
        return self.render("pair", {"S": self.obj_phrase(ref), "R": self.pick(RELATIONS[OPPOSITE[rel_t]]),
                                    "O": self.obj_phrase(twin, det="the")})

    def unique_pair(self, unique: list[int]) -> Optional[tuple[int, int, str]]:
        pairs = [(i, j) for i in unique for j in unique if i != j]
        self.rng.shuffle(pairs)
        for i, j in pairs:
            rels = _true_relations(self.objects[i].box, self.objects[j].box)
            if rels:
                return int(i), int(j), self.pick(rels)
        return None

    def other_caption(self, unique: list[int], twins: bool) -> str:
        r = self.rng.random()
        if r < 0.45:
            pair = self.unique_pair(unique)
            if pair is not None:
                i, j, rel = pair
                return self.render("pair", {"S": self.obj_phrase(i), "R": self.pick(RELATIONS[rel]),
                                            "O": self.obj_phrase(j)})
        if r < 0.6:
            first, second = self.unique_pair(unique), self.unique_pair(unique)
            if first is not None and second is not None and first[:2] != second[:2]:
                (i, j, rel), (k, m, rel2) = first, second
                return self.render("double", {
                    "S": self.obj_phrase(i), "R": self.pick(RELATIONS[rel]), "O": self.obj_phrase(j),
                    "S2": self.obj_phrase(k), "R2": self.pick(RELATIONS[rel2]), "O2": self.obj_phrase(m),
                })
        return self._list_or_single(r, unique, twins)

    def _list_or_single(self, r: float, unique: list[int], twins: bool) -> str:
        if r < 0.85 and len(unique) + twins >= 3:
            entries: list[MarkedPhrase] = []
            if twins:
                self.used_plural = True
                twin = self.objects[0]
                entries.append(MarkedPhrase(self.plural_chain, twin.shape, _plural_text(self.rng, twin, self.copies)))
            for k in self.rng.permutation(unique)[: 3 - len(entries)]:
                entries.append(self.obj_phrase(int(k), det="a"))
            order = self.rng.permutation(len(entries))
            entries = [entries[i] for i in order]
            return self.render("list", dict(zip(("A", "B", "D"), entries)))
        return self.render("single", {"A": self.obj_phrase(int(self.pick(unique)))})

    # --- multi-relation images (``generate_synthetic(multi_relation=...)``) -----------------------------------

    def _multi(self, subject: int, first: Condition, second: Condition) -> str:
        """``subject`` through two relations: "the red circle above the blue square sits left of the green star"."""
        (ref1, rel1), (ref2, rel2) = (first, second) if self.rng.random() < 0.5 else (second, first)
        return self.render("multi", {
            "S": self.obj_phrase(subject), "R": self.pick(RELATIONS[rel1]), "O": self.obj_phrase(ref1),
            "R2": self.pick(RELATIONS[rel2]), "O2": self.obj_phrase(ref2),
        })

    def conjunction_caption(self, options: dict[int, list[tuple[Condition, Condition]]]) -> str:
        """A copy of the identical triple picked out by two relations together (``scene.conjunctions``)."""
        copy = int(self.pick(sorted(options)))
        first, second = self.pick(options[copy])
        return self._multi(copy, first, second)

    def multi_other_caption(self, unique: list[int], twins: bool) -> str:
        """A unique object through two true relations to two other unique objects; else a list or single frame."""
        r = self.rng.random()
        if r < 0.6:
            subjects = list(unique)
            self.rng.shuffle(subjects)
            for i in subjects:
                options = [(j, rel) for j in unique if j != i
                           for rel in _true_relations(self.objects[i].box, self.objects[j].box)]
                if len({j for j, _ in options}) >= 2:
                    first = options[int(self.rng.integers(len(options)))]
                    rest = [o for o in options if o[0] != first[0]]
                    return self._multi(int(i), first, rest[int(self.rng.integers(len(rest)))])
        return self._list_or_single(r, unique, twins)
