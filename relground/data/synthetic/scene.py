"""One synthetic image's objects: placement (with an identical twin pair or triple) and drawing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from relground.data.synthetic.vocabulary import (
    COLOURS, MIN_GAP, OBJECTS_PER_IMAGE, OPPOSITE, RELATIONS, SHAPES, SIZE_RANGE, TRIPLE_OBJECTS_PER_IMAGE,
    relation_holds,
)

# A condition on an object: (reference object index, relation name), "the object is <relation> of the reference".
Condition = tuple[int, str]


@dataclass
class SceneObject:
    """One drawn object; ``chain`` and ``hard`` are set once the layout is accepted."""

    shape: str
    colour: str
    box: np.ndarray  # [4] int64, 0-based xyxy
    chain: str
    hard: bool = False
    twin_of: Optional[int] = None  # index of an identical copy (its twin, or the next copy of a triple)


def place_objects(rng: np.random.Generator, size: int, copies: int) -> list[SceneObject]:
    """Non-overlapping objects with unique (shape, colour), plus (``copies`` 2 or 3) identical copies of object 0;
    ``copies`` 0: none.

    With copies, objects 1 .. ``copies - 1`` copy object 0 and the layout is resampled by the caller until the
    copies can be told apart: for a pair, some unique reference object has one twin strictly on one side and the
    other twin strictly on the opposite side (:func:`twin_reference`); for a triple (``copies=3``, drawn with
    ``TRIPLE_OBJECTS_PER_IMAGE`` objects), some copy is picked out by two relations together and by neither
    alone (:func:`conjunctions`).
    """
    low, high = TRIPLE_OBJECTS_PER_IMAGE if copies == 3 else OBJECTS_PER_IMAGE
    num = int(rng.integers(low, high + 1))
    kinds = [(s, c) for s in SHAPES for c in COLOURS]
    picks = rng.choice(len(kinds), size=num, replace=False)
    looks = [kinds[i] for i in picks]
    sides = rng.uniform(SIZE_RANGE[0], SIZE_RANGE[1], size=(num, 2)) * size
    sides[:, 1] = sides[:, 0] * rng.uniform(0.85, 1.15, size=num)  # near-square: shapes stay recognisable
    sides = np.clip(np.round(sides), 8, size // 2).astype(np.int64)
    for k in range(1, copies):
        looks[k] = looks[0]
        sides[k] = sides[0]
    while True:
        boxes: list[np.ndarray] = []
        for w, h in sides:
            for _ in range(60):
                x1 = int(rng.integers(1, size - w - 1))
                y1 = int(rng.integers(1, size - h - 1))
                box = np.array([x1, y1, x1 + w, y1 + h], dtype=np.int64)
                apart = (
                    box[0] >= b[2] + MIN_GAP or b[0] >= box[2] + MIN_GAP or box[1] >= b[3] + MIN_GAP
                    or b[1] >= box[3] + MIN_GAP
                    for b in boxes
                )
                if all(apart):
                    boxes.append(box)
                    break
            else:
                break  # no room left: start the layout again
        if len(boxes) == num:
            return [SceneObject(s, c, b, chain="") for (s, c), b in zip(looks, boxes)]


def twin_reference(rng: np.random.Generator, objects: list[SceneObject]) -> Optional[tuple[int, str]]:
    """A (reference object, relation) such that twin 0 is ``relation`` of it and twin 1 the opposite."""
    options = []
    for ref in range(2, len(objects)):
        for rel in RELATIONS:
            if relation_holds(rel, objects[0].box, objects[ref].box) and relation_holds(
                OPPOSITE[rel], objects[1].box, objects[ref].box
            ):
                options.append((ref, rel))
    if not options:
        return None
    return options[int(rng.integers(len(options)))]


def conjunctions(objects: list[SceneObject], copies: int) -> dict[int, list[tuple[Condition, Condition]]]:
    """For each copy of an identical triple, the pairs of conditions that together pick it out and alone do not.

    A pair ``((ref1, rel1), (ref2, rel2))`` for copy ``k``: two different unique references; ``rel1`` holds
    between ``k`` and ``ref1`` and for one other copy ``i``, while the third copy ``j`` is strictly on the
    opposite side of ``ref1``; ``rel2`` holds for ``k`` and ``j`` and ``i`` is strictly opposite. So each
    relation alone leaves two candidates and only their conjunction leaves ``k`` (crisply: the excluded copy is
    on the other side, as for the twins). Copies without such a pair are left out.
    """
    members = range(copies)
    holding: dict[Condition, frozenset[int]] = {}
    for ref in range(copies, len(objects)):
        for rel in RELATIONS:
            yes = frozenset(k for k in members if relation_holds(rel, objects[k].box, objects[ref].box))
            opposite = [k for k in members if relation_holds(OPPOSITE[rel], objects[k].box, objects[ref].box)]
            if len(yes) == copies - 1 and len(opposite) == 1:  # two copies on one side, the third opposite
                holding[(ref, rel)] = yes
    found: dict[int, list[tuple[Condition, Condition]]] = {}
    conditions = sorted(holding)
    for a, first in enumerate(conditions):
        for second in conditions[a + 1:]:
            both = holding[first] & holding[second]
            if first[0] != second[0] and len(both) == 1:
                found.setdefault(next(iter(both)), []).append((first, second))
    return found


def draw_scene(rng: np.random.Generator, objects: list[SceneObject], size: int) -> Image.Image:
    """Render on a 2x canvas and box-filter down (anti-aliasing); twins at integer positions stay pixel-identical."""
    scale = 2
    # A muted grey vertical gradient with a slight tint: every object colour differs from it by >= 50 levels in
    # some channel, and two points of the background by <= 30, so appearance is the objects' alone.
    grey = rng.uniform(95, 165)
    top = grey + rng.uniform(-8, 8, size=3)
    bottom = top + rng.uniform(-15, 15)
    ramp = np.linspace(0.0, 1.0, size * scale)[:, None, None]
    column = np.clip(top[None, None, :] * (1 - ramp) + bottom[None, None, :] * ramp, 0, 255).astype(np.uint8)
    image = Image.fromarray(np.repeat(column, size * scale, axis=1), "RGB")  # [2H, 2W, 3]
    draw = ImageDraw.Draw(image)
    for obj in objects:
        x1, y1, x2, y2 = (int(v) * scale for v in obj.box)
        x2, y2 = x2 - 1, y2 - 1  # PIL's second corner is inclusive; the box's width is x2 - x1 pixels
        colour = COLOURS[obj.colour][0]
        if obj.shape == "circle":
            draw.ellipse((x1, y1, x2, y2), fill=colour)
        elif obj.shape == "square":
            draw.rectangle((x1, y1, x2, y2), fill=colour)
        else:
            unit = _UNIT_POLYGONS[obj.shape]  # [K, 2] in [0, 1]^2, touching all four sides
            pts = unit * np.array([x2 - x1, y2 - y1]) + np.array([x1, y1])
            draw.polygon([tuple(p) for p in pts.tolist()], fill=colour)
    return image.reduce(scale)


def _unit_polygons() -> dict[str, np.ndarray]:
    angles = np.pi / 2 + np.arange(10) * np.pi / 5  # 5-point star: outer/inner radii alternate
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
    star = np.stack([np.cos(angles) * radii, -np.sin(angles) * radii], axis=1)
    star = (star - star.min(0)) / (star.max(0) - star.min(0))
    t = 1 / 3  # arm thickness of the cross
    cross = np.array([(t, 0), (1 - t, 0), (1 - t, t), (1, t), (1, 1 - t), (1 - t, 1 - t), (1 - t, 1), (t, 1),
                      (t, 1 - t), (0, 1 - t), (0, t), (t, t)], dtype=np.float64)
    return {
        "triangle": np.array([(0.0, 1.0), (0.5, 0.0), (1.0, 1.0)]),
        "diamond": np.array([(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)]),
        "star": star,
        "cross": cross,
    }


_UNIT_POLYGONS = _unit_polygons()
