"""Figures: groundings drawn on the image (the paper's Fig. 5) and accuracy vs IoU threshold (Fig. 4).

Everything renders with matplotlib's Agg backend (no display needed) and writes a PNG.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional, Union

import matplotlib

matplotlib.use("Agg")  # files only; must precede pyplot so a headless machine never looks for a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.offsetbox import AnchoredOffsetbox, HPacker, TextArea, VPacker  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

ImageLike = Union[str, Path, Image.Image, np.ndarray]
PALETTE = plt.get_cmap("tab10").colors  # 10 distinguishable colours; phrases cycle through them


def phrase_color(index: int) -> tuple[float, float, float]:
    """Colour of the ``index``-th phrase (shared by its box and its words)."""
    return PALETTE[index % len(PALETTE)]


def load_image(image: ImageLike) -> np.ndarray:
    """An RGB uint8 array ``[H, W, 3]`` from a path, PIL image or array.

    Raises:
        FileNotFoundError: ``image`` is a path that does not exist.
    """
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"image file not found: {image}")
        image = Image.open(image)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    return np.asarray(image)


def _caption_box(words: Sequence[str], spans: Sequence[tuple[int, int]], chars_per_line: int) -> VPacker:
    """The caption as wrapped lines of text runs; words inside ``spans[i]`` = [start, end) get colour i, bold."""
    color_of: dict[int, int] = {}
    for i, (start, end) in enumerate(spans):
        for w in range(start, end):
            color_of.setdefault(w, i)
    lines: list[list[TextArea]] = [[]]
    used = 0
    for w, word in enumerate(words):
        if used and used + len(word) + 1 > chars_per_line:
            lines.append([])
            used = 0
        phrase = color_of.get(w)
        props = {"fontsize": 11, "color": "black"}
        if phrase is not None:
            props.update(color=phrase_color(phrase), fontweight="bold")
        lines[-1].append(TextArea(word, textprops=props))
        used += len(word) + 1
    rows = [HPacker(children=line, align="baseline", pad=0, sep=4) for line in lines if line]
    return VPacker(children=rows, align="left", pad=0, sep=3)


def draw_groundings(
    image: ImageLike,
    words: Sequence[str],
    spans: Sequence[tuple[int, int]],
    boxes: Sequence[Sequence[float]],
    out: Union[str, Path],
    *,
    dashed_boxes: Optional[Sequence[Optional[Sequence[float]]]] = None,
    labels: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
) -> Path:
    """Draw one coloured box per phrase and the caption with each phrase in its box's colour (Fig. 5 style).

    Args:
        image: path, PIL image or ``[H, W, 3]`` array; boxes are in its pixels.
        words: the caption's words.
        spans: per phrase, ``(start, end)`` word positions, end exclusive.
        boxes: per phrase, ``[x1, y1, x2, y2]`` (solid line).
        out: PNG path (parent folders are created).
        dashed_boxes: optional per phrase second box drawn dashed in the same colour (e.g. the initial
            proposal before regression, or the ground truth); ``None`` entries are skipped.
        labels: optional per phrase tag written at the box's top-left corner (default: the phrase words).
        title: optional figure title.

    Returns:
        The PNG path.

    Raises:
        ValueError: ``spans`` and ``boxes`` (or ``dashed_boxes`` / ``labels``) differ in length.
    """
    if len(spans) != len(boxes):
        raise ValueError(f"draw_groundings: {len(spans)} spans but {len(boxes)} boxes")
    for name, extra in (("dashed_boxes", dashed_boxes), ("labels", labels)):
        if extra is not None and len(extra) != len(boxes):
            raise ValueError(f"draw_groundings: {name} has {len(extra)} entries for {len(boxes)} boxes")
    pixels = load_image(image)
    height, width = pixels.shape[:2]
    fig_width = 6.4
    fig_height = fig_width * height / max(width, 1) + 1.1 + (0.3 if title else 0.0)  # room for caption (+ title)
    fig = plt.figure(figsize=(fig_width, fig_height), dpi=100)
    top = 0.98 - (0.3 / fig_height if title else 0.0)
    ax = fig.add_axes((0.02, 0.2, 0.96, top - 0.2))
    ax.imshow(pixels)
    ax.set_axis_off()
    for i, box in enumerate(boxes):
        color = phrase_color(i)
        x1, y1, x2, y2 = map(float, box)
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=2.5))
        if dashed_boxes is not None and dashed_boxes[i] is not None:
            d1, e1, d2, e2 = map(float, dashed_boxes[i])
            ax.add_patch(Rectangle((d1, e1), d2 - d1, e2 - e1, fill=False, edgecolor=color, linewidth=1.5, linestyle="--"))
        tag = labels[i] if labels is not None else " ".join(words[spans[i][0] : spans[i][1]])
        ax.text(x1, y1, tag, color="white", fontsize=8, va="bottom", bbox={"facecolor": color, "pad": 1, "lw": 0})
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    text_ax = fig.add_axes((0.02, 0.0, 0.96, 0.18))
    text_ax.set_axis_off()
    caption = AnchoredOffsetbox(loc="upper left", child=_caption_box(words, spans, chars_per_line=70), frameon=False, pad=0.2)
    text_ax.add_artist(caption)
    if title:
        fig.suptitle(title, fontsize=10, y=0.995)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_accuracy_vs_iou(
    curves: Mapping[str, Mapping[str, float]],
    out: Union[str, Path],
    *,
    mean_ious: Optional[Mapping[str, float]] = None,
    title: str = "Grounding accuracy vs IoU threshold",
) -> Path:
    """The paper's Fig. 4: accuracy per IoU threshold (left) and mean IoU (right) of one or more models.

    Args:
        curves: model name -> ``acc_at_iou`` of its metrics (``"0.50" -> fraction``).
        out: PNG path (parent folders are created).
        mean_ious: optional model name -> mean IoU (fraction); adds the bar panel.
        title: figure title.

    Returns:
        The PNG path.

    Raises:
        ValueError: ``curves`` is empty.
    """
    if not curves:
        raise ValueError("plot_accuracy_vs_iou: curves is empty")
    panels = 2 if mean_ious else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8), dpi=100, squeeze=False)
    left = axes[0, 0]
    for name, acc in curves.items():
        thresholds = [float(t) for t in acc]
        left.plot(thresholds, [100 * (v or 0.0) for v in acc.values()], marker="o", label=name)
    left.set_xlabel("IoU threshold")
    left.set_ylabel("accuracy (%)")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    if mean_ious:
        right = axes[0, 1]
        names = list(mean_ious)
        right.bar(names, [100 * mean_ious[n] for n in names], color=[phrase_color(i) for i in range(len(names))])
        right.set_ylabel("mean IoU (%)")
        right.tick_params(axis="x", labelrotation=20)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
