"""One synthetic image's objects: placement (with an identical twin pair) and drawing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from relground.data.synthetic.vocabulary import (
    COLOURS, MIN_GAP, OBJECTS_PER_IMAGE, OPPOSITE, RELATIONS, SHAPES, SIZE_RANGE, relation_holds,
)


@dataclass
class SceneObject:
    """One drawn object; ``chain`` and ``hard`` are set once the layout is accepted."""

    shape: str
    colour: str
    box: np.ndarray  # [4] int64, 0-based xyxy
    chain: str
    hard: bool = False
    twin_of: Optional[int] = None  # index of its identical twin


def place_objects(rng: np.random.Generator, size: int, with_twins: bool) -> list[SceneObject]:
    """Non-overlapping objects with unique (shape, colour), plus (optionally) a twin of object 0.

    With twins, object 1 copies object 0 and the layout is resampled until some unique reference object has
    one twin strictly on one side and the other twin strictly on the opposite side (checked by the caller).
    """
    num = int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))
    kinds = [(s, c) for s in SHAPES for c in COLOURS]
    picks = rng.choice(len(kinds), size=num, replace=False)
    looks = [kinds[i] for i in picks]
    sides = rng.uniform(SIZE_RANGE[0], SIZE_RANGE[1], size=(num, 2)) * size
    sides[:, 1] = sides[:, 0] * rng.uniform(0.85, 1.15, size=num)  # near-square: shapes stay recognisable
    sides = np.clip(np.round(sides), 8, size // 2).astype(np.int64)
    if with_twins:
        looks[1] = looks[0]
        sides[1] = sides[0]
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
