"""The synthetic benchmark's words, sentence frames and generation knobs (the documented properties depend on them)."""
from __future__ import annotations

from typing import Sequence

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")  # detector class names, in label order
# (singular, plural) synonyms, all in GloVe 6B; each singular is closer (cosine, 50-d) to its own class name than
# to any other, so the category prior s_a points the right way ("disc", "box", "wedge", "rhombus" do not).
SHAPE_WORDS = {
    "circle": (("circle", "circles"), ("dot", "dots"), ("orb", "orbs")),
    "square": (("square", "squares"), ("block", "blocks"), ("tile", "tiles")),
    "triangle": (("triangle", "triangles"), ("pyramid", "pyramids")),
    "star": (("star", "stars"),),
    "cross": (("cross", "crosses"),),
    "diamond": (("diamond", "diamonds"), ("gem", "gems")),
}
COLOURS = {  # name -> (RGB, synonyms)
    "red": ((215, 38, 38), ("red", "crimson", "scarlet")),
    "green": ((40, 165, 60), ("green", "emerald")),
    "blue": ((38, 78, 220), ("blue", "azure", "cobalt")),
    "yellow": ((238, 212, 40), ("yellow", "golden", "lemon")),
    "purple": ((135, 55, 180), ("purple", "violet")),
    "orange": ((245, 140, 28), ("orange", "amber")),
    "white": ((246, 246, 246), ("white", "ivory")),
    "black": ((22, 22, 22), ("black", "ebony")),
}
SMALL_WORDS = ("small", "tiny", "little")
BIG_WORDS = ("big", "large")
SCENE_PHRASES = ("the picture", "the image", "the frame", "the scene", "the canvas")
# Spatial relations decidable from boxes: ``relation_holds(name, a, b)`` says whether "a <name> b" is true.
RELATIONS = {
    "left": ("to the left of", "on the left of", "on the left side of", "at the left of"),
    "right": ("to the right of", "on the right of", "on the right side of", "at the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath", "underneath"),
}
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
# Sentence frames. {S} {O} {S2} {O2} {A} {B} {D}: object phrases; {R} {R2}: relation phrasings; {C}: scene phrase.
# Every frame with a relation was checked with SceneGraphParser (+ relground.language.relations): the relation
# comes out between the two annotated phrases. ("there is X to the left of Y", "we see X above Y", "a picture of X
# above Y" and "X ; Y" attach it elsewhere, so they are not used.)
FRAMES = {
    "pair": (
        "{S} {R} {O} .",
        "here is {S} {R} {O} .",
        "{S} sits {R} {O} .",
        "{S} lies {R} {O} .",
        "{S} appears {R} {O} .",
        "{S} stands {R} {O} .",
        "{S} placed {R} {O} in {C} .",
        "in {C} , {S} lies {R} {O} .",
    ),
    "double": (
        "{S} sits {R} {O} while {S2} sits {R2} {O2} .",
        "{S} lies {R} {O} , and {S2} lies {R2} {O2} .",
        "{S} {R} {O} , and {S2} {R2} {O2} .",
    ),
    "list": ("{A} , {B} and {D} .", "{A} and {B} in {C} .", "we see {A} , {B} and {D} ."),
    "single": ("there is {A} in {C} .", "{A} in {C} ."),
    # Multi-relation frames (``generate_synthetic(multi_relation=...)`` only): {S} relates to both {O} and {O2}.
    # SceneGraphParser (+ relground.language.relations) attaches both relations to {S} in >= 92% of each frame's
    # captions (~200 per frame in 1000 images, seed 0; 97% over all). Left out: "{S} {R} {O} lies|placed ...
    # {R2} {O2}" (~18% lose one), "{S} lies {R} {O} and {R2} {O2}" (coordinated prepositions: the second is lost),
    # "{S} , which lies ..." (given to "which"), "{S} is {R} {O} , {R2} {O2}" (81% lose one).
    "multi": (
        "{S} sits {R} {O} , {R2} {O2} .",
        "{S} appears {R} {O} , {R2} {O2} .",
        "{S} stands {R} {O} , {R2} {O2} .",
        "in {C} , {S} sits {R} {O} , {R2} {O2} .",
        "{S} sits {R} {O} , {R2} {O2} in {C} .",
        "{S} {R} {O} sits {R2} {O2} .",
        "{S} {R} {O} appears {R2} {O2} .",
        "{S} {R} {O} stands {R2} {O2} .",
    ),
}
# The relations each kind of frame states, as (subject slot, relation slot, object slot): what the VOGN's graph
# gets from a caption (the generator counts the related phrases from these; the parser finds the same edges).
FRAME_RELATIONS = {
    "pair": (("S", "R", "O"),),
    "double": (("S", "R", "O"), ("S2", "R2", "O2")),
    "list": (),
    "single": (),
    "multi": (("S", "R", "O"), ("S", "R2", "O2")),
}

# --- generation knobs (documented properties depend on them) -----------------------------------------------------
HARD_OBJECT_SHARE = 0.42  # objects whose proposals all have IoU < 0.5
TWIN_IMAGE_SHARE = 0.85  # images holding an identical twin pair
LABEL_NOISE = 0.2  # object proposals with a wrong class name
OBJECTS_PER_IMAGE = (3, 6)  # inclusive
TRIPLE_OBJECTS_PER_IMAGE = (5, 6)  # inclusive; a multi-relation image with three identical copies (>= 2 references)
MULTI_COPY_CAPTION_SHARE = 0.8  # a triple's captions after the first that name a copy (twin pairs: 0.6)
CAPTIONS_PER_IMAGE = (1, 3)  # inclusive
SIZE_RANGE = (0.11, 0.27)  # object side as a fraction of the image side
SMALL_BELOW, BIG_ABOVE = 0.145, 0.225  # size-adjective thresholds (fraction of the image side)
MIN_GAP = 3  # pixels between objects, so every pair is separated and relations are crisp
JPEG_QUALITY = 90
FIRST_IMAGE_ID = 1_000_000
MIN_IMAGES = 10  # so that train, val and test are all non-empty
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 64, 1024


def relation_holds(relation: str, a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether box ``a`` is strictly ``relation`` of box ``b`` (xyxy): its projection on the axis is disjoint."""
    if relation == "left":
        return a[2] < b[0]
    if relation == "right":
        return a[0] > b[2]
    if relation == "above":
        return a[3] < b[1]
    if relation == "below":
        return a[1] > b[3]
    raise ValueError(f"relation: unknown spatial relation {relation!r}, expected one of {sorted(RELATIONS)}")

