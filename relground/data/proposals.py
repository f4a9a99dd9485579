"""Detector proposals on disk: one HDF5 file per dataset, read lazily per process.

Layout (``format_version = 1``)::

    /                      attrs: format_version = 1, class_names = JSON list of detector class names
    /images/<image_id>/    attrs: width, height (original image pixels)
        boxes   [M, 4] float32   xyxy, 0-based original-image pixels, width = x2 - x1
        scores  [M]    float32   detector confidence
        labels  [M]    int64     index into class_names

Writers (``write_proposals``, ``convert_bottom_up``, ``detect_proposals``) validate every box and write
atomically (temporary file + rename), so a crashed conversion never leaves a half-written store behind.
Without a detector, :func:`sliding_windows` gives a fixed multi-scale window set (``relground ground``).

Over 400 lines because the one on-disk format keeps its reader, its validation and its three writers together
(a check added to one is seen by all).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import h5py
import numpy as np

from relground.utils.env import resolve_device
from relground.utils.errors import MissingEntryError
from relground.utils.io import current_umask
from relground.utils.paths import expect_file

FORMAT_VERSION = 1
# Detectors (and the bottom-up pickles) emit boxes a fraction of a pixel past the border after
# regression/rounding; anything beyond this many pixels is a real error (wrong image size, bad ids).
BOX_TOLERANCE = 1.0


@dataclass
class ProposalSet:
    """The proposals of one image.

    Args:
        boxes (np.ndarray[M, 4] float32): xyxy, 0-based original-image pixels.
        scores (np.ndarray[M] float32): detector confidence.
        labels (np.ndarray[M] int64): detector class ids (index into the store's ``class_names``).
        width (int): image width in pixels.
        height (int): image height in pixels.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.width = int(self.width)
        self.height = int(self.height)

    def __len__(self) -> int:
        return self.boxes.shape[0]


def validate_proposals(proposals: ProposalSet, image_id: str, source: str, num_classes: Optional[int] = None) -> None:
    """Raise ``ValueError`` naming ``source``, the image id and the first bad row.

    Checks: equal lengths, finite boxes, x1 <= x2 and y1 <= y2, boxes inside the image within
    ``BOX_TOLERANCE`` pixels, labels in ``[0, num_classes)`` when given, positive image size.
    """
    where = f"{source}: image {image_id!r}"
    if proposals.width <= 0 or proposals.height <= 0:
        raise ValueError(f"{where}: image size must be positive, got width={proposals.width} height={proposals.height}")
    m = len(proposals)
    if proposals.scores.shape[0] != m or proposals.labels.shape[0] != m:
        raise ValueError(
            f"{where}: boxes ({m}), scores ({proposals.scores.shape[0]}) and labels "
            f"({proposals.labels.shape[0]}) must have the same length"
        )
    b = proposals.boxes
    checks = [
        (~np.isfinite(b).all(axis=1), "non-finite box"),
        ((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1]), "x2 < x1 or y2 < y1"),
        (
            (b[:, 0] < -BOX_TOLERANCE)
            | (b[:, 1] < -BOX_TOLERANCE)
            | (b[:, 2] > proposals.width + BOX_TOLERANCE)
            | (b[:, 3] > proposals.height + BOX_TOLERANCE),
            f"box outside the {proposals.width}x{proposals.height} image",
        ),
        (~np.isfinite(proposals.scores), "non-finite score"),
    ]
    if num_classes is not None:
        checks.append(((proposals.labels < 0) | (proposals.labels >= num_classes), f"label outside [0, {num_classes})"))
    for bad, what in checks:
        rows = np.flatnonzero(bad)
        if rows.size:
            row = int(rows[0])
            raise ValueError(f"{where}, row {row}: {what}: box={b[row].tolist()} label={int(proposals.labels[row])}")


def proposals_for_image(
    proposals: ProposalSet, width: int, height: int, image: str, source: str, num_classes: Optional[int] = None
) -> ProposalSet:
    """``proposals`` checked against the image they are used with: made for its size (``width`` x ``height``
    pixels), every row valid (:func:`validate_proposals`, labels below ``num_classes`` when given). Boxes made for
    another image size would land in the wrong place without a word.

    Raises:
        ValueError: naming ``source``, ``image`` and both sizes (or the bad row).
    """
    if (proposals.width, proposals.height) != (width, height):
        raise ValueError(f"{source}: the proposals are for a {proposals.width}x{proposals.height} image but {image} is "
                         f"{width}x{height} pixels; use proposals made for this image (or --image-id of its entry)")
    validate_proposals(proposals, image, source, num_classes)
    return proposals


def check_integers(values, where: str, what: str, rows: bool = False, tolerance: float = 0.0) -> None:
    """``values`` hold whole numbers (an integer dtype, or floats within ``tolerance`` of one); else a ``ValueError``
    naming ``where``, the first bad row (``rows``) and value: the readers cast them to integers."""
    values = np.asarray(values)
    if values.dtype.kind in "iub":
        return
    if values.dtype.kind != "f":
        raise ValueError(f"{where}: {what}s must be integers, got dtype {values.dtype}")
    bad = np.flatnonzero(~np.isfinite(values) | (np.abs(values - np.round(values)) > tolerance))
    if bad.size:
        row = int(bad[0])
        at = f", row {row}" if rows else ""
        raise ValueError(f"{where}{at}: {what} {values.reshape(-1)[row].item():g} is not a whole number (stored as "
                         f"{values.dtype}; reading would cut it to an integer); store whole numbers")


def _sha256(text) -> str:
    return hashlib.sha256(str(text).encode("utf-8")).hexdigest()


def write_proposals(path, sets: Mapping[str, ProposalSet], class_names: Sequence[str]) -> Path:
    """Validate and write proposals to an HDF5 file atomically.

    Args:
        path (str | Path): output ``.h5`` file; its folder is created.
        sets (Mapping[str, ProposalSet]): proposals per image id.
        class_names (Sequence[str]): detector class names, ``labels`` index into it.

    Returns:
        Path: ``path``.

    Example:
        >>> ps = ProposalSet(np.array([[0, 0, 10, 10]]), np.array([0.9]), np.array([0]), 20, 20)
        >>> write_proposals(tmp / "p.h5", {"1000092795": ps}, ["man"])  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for image_id, proposals in sets.items():
        validate_proposals(proposals, str(image_id), str(path), num_classes=len(class_names))
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["class_names"] = json.dumps(list(class_names))
            f.attrs["class_names_sha256"] = _sha256(f.attrs["class_names"])
            images = f.create_group("images")
            for image_id, proposals in sets.items():
                g = images.create_group(str(image_id))
                # fletcher32: a per-chunk checksum, so a damaged byte in the numbers is an error, not other boxes
                g.create_dataset("boxes", data=proposals.boxes.astype(np.float32), fletcher32=True)
                g.create_dataset("scores", data=proposals.scores.astype(np.float32), fletcher32=True)
                g.create_dataset("labels", data=proposals.labels.astype(np.int64), fletcher32=True)
                g.attrs["width"] = proposals.width
                g.attrs["height"] = proposals.height
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600; the proposals file is shared data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class ProposalStore:
    """Read-only access to a proposals HDF5 file, ``store[image_id] -> ProposalSet``.

    The file is opened lazily on first access in each process and the handle is dropped when pickled,
    so a store can be handed to DataLoader workers (h5py handles must not cross ``fork``).

    Args:
        path (str | Path): a file written by :func:`write_proposals`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a relground proposals file of a known ``format_version``.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "proposals.h5"
        >>> boxes = np.array([[0.0, 0.0, 10.0, 10.0]], dtype=np.float32)                      # [M=1, 4]
        >>> _ = write_proposals(path, {"img1": ProposalSet(boxes, np.array([0.9]), np.array([0]), 20, 20)}, ["man"])
        >>> store = ProposalStore(path)
        >>> store["img1"].boxes.tolist(), store["img1"].labels.tolist(), "img1" in store
        ([[0.0, 0.0, 10.0, 10.0]], [0], True)
    """

    def __init__(self, path) -> None:
        self.path = expect_file(path, "proposals file", "data.proposals / --proposals")
        self._file: Optional[h5py.File] = None
        self._pid: Optional[int] = None
        f = self._handle()
        try:
            version = f.attrs.get("format_version")
            layout_ok = version == FORMAT_VERSION and "images" in f and "class_names" in f.attrs
            class_names = json.loads(f.attrs["class_names"]) if layout_ok else None
        except (OSError, KeyError, ValueError, TypeError) as e:  # damaged metadata (h5py), bad JSON
            raise ValueError(f"{self.path}: damaged proposals file metadata ({type(e).__name__}: {e})") from None
        if not layout_ok:
            raise ValueError(
                f"{self.path}: not a relground proposals file (format_version={version!r}, "
                f"expected {FORMAT_VERSION} with attr 'class_names' and group 'images')"
            )
        if not isinstance(class_names, list) or not class_names or not all(isinstance(n, str) for n in class_names):
            raise ValueError(f"{self.path}: attr 'class_names' must be a non-empty JSON list of names")
        checksum = f.attrs.get("class_names_sha256")  # absent in files written before it was added
        if checksum is not None and str(checksum) != _sha256(f.attrs["class_names"]):
            raise ValueError(f"{self.path}: attr 'class_names' does not match its checksum (damaged file)")
        self.class_names: list[str] = class_names

    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as e:  # h5py: truncated file, not HDF5, ...
                raise ValueError(f"{self.path}: cannot be read as an HDF5 proposals file (truncated or damaged?): "
                                 f"{str(e).splitlines()[0]}") from None
            self._pid = os.getpid()
        return self._file

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state

    @property
    def image_ids(self) -> list[str]:
        return list(self._handle()["images"].keys())

    def __len__(self) -> int:
        return len(self._handle()["images"])

    def __contains__(self, image_id) -> bool:
        return str(image_id) in self._handle()["images"]

    def __getitem__(self, image_id) -> ProposalSet:
        """The image's proposals, validated (:func:`validate_proposals` with the store's classes).

        Raises:
            KeyError: no proposals for ``image_id``.
            ValueError: a damaged entry or a bad row (NaN, inverted or outside box, label outside the classes),
                naming the file, the image id and the row.
        """
        images = self._handle()["images"]
        key = str(image_id)
        if key not in images:
            raise MissingEntryError(f"{self.path}: no proposals for image id {key!r}")
        try:
            g = images[key]
            labels, width, height = g["labels"][()], g.attrs["width"], g.attrs["height"]
            proposals = ProposalSet(g["boxes"][()], g["scores"][()], labels, width, height)
        except (OSError, KeyError, ValueError, TypeError) as e:  # h5py read error, missing dataset/attr, bad shape
            raise ValueError(f"{self.path}: image {key!r}: damaged proposals entry (expected datasets boxes [M, 4], "
                             f"scores [M], labels [M] and attrs width, height): {type(e).__name__}: {e}") from None
        # ProposalSet casts to int64: a label 4.5 (or a width 640.5) would be cut without a word
        check_integers(labels, f"{self.path}: image {key!r}", "label", rows=True)
        check_integers(np.asarray([width, height], dtype=np.float64), f"{self.path}: image {key!r}", "attr width/height")
        validate_proposals(proposals, key, str(self.path), num_classes=len(self.class_names))
        return proposals

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_class_names(path) -> list[str]:
    """Read a class-name file, one name per line (blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-names file not found: {path}")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path}: no class names")
    return names


def convert_bottom_up(
    pickle_path,
    class_names: Sequence[str],
    image_sizes: Mapping[str, tuple[int, int]],
    max_proposals: int = 50,
) -> dict[str, ProposalSet]:
    """Convert the authors' bottom-up-attention pickle to :class:`ProposalSet` records.

    Args:
        pickle_path (str | Path): ``{image_id: {'boxes': array[N, 6] = x1, y1, x2, y2, score, label}}``.
        class_names (Sequence[str]): detector class names (labels index into it).
        image_sizes (Mapping[str, tuple[int, int]]): ``(width, height)`` per image id.
        max_proposals (int): keep the first ``M`` boxes (the detector's order). Default 50.

    Returns:
        dict[str, ProposalSet]: validated proposals per image id (pass to :func:`write_proposals`).
    """
    pickle_path = Path(pickle_path)
    if not pickle_path.is_file():
        raise FileNotFoundError(f"proposals pickle not found: {pickle_path}")
    if max_proposals <= 0:
        raise ValueError(f"max_proposals must be positive, got {max_proposals}")
    with open(pickle_path, "rb") as f:
        raw = pickle.load(f)
    if not isinstance(raw, Mapping):
        raise ValueError(f"{pickle_path}: expected a dict {{image_id: {{'boxes': [N, 6]}}}}, got {type(raw).__name__}")
    sets = {}
    for image_id, entry in raw.items():
        key = str(image_id)
        if not isinstance(entry, Mapping) or "boxes" not in entry:
            raise ValueError(f"{pickle_path}: image {key!r}: entry has no 'boxes' field")
        rows = np.asarray(entry["boxes"], dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != 6:
            raise ValueError(f"{pickle_path}: image {key!r}: 'boxes' must be [N, 6], got shape {list(rows.shape)}")
        if key not in image_sizes:
            raise ValueError(f"{pickle_path}: image {key!r}: no image size known (is it in the dataset root?)")
        width, height = image_sizes[key]
        rows = rows[:max_proposals]
        # the pickle's [N, 6] float array holds the labels: float noise is rounded, a fraction is an error
        check_integers(rows[:, 5], f"{pickle_path}: image {key!r}", "label (column 5)", rows=True, tolerance=1e-3)
        proposals = ProposalSet(rows[:, :4], rows[:, 4], rows[:, 5].round().astype(np.int64), width, height)
        validate_proposals(proposals, key, str(pickle_path), num_classes=len(class_names))
        sets[key] = proposals
    return sets


def image_files(folder) -> list[Path]:
    """Image files (``.jpg``, ``.jpeg``, ``.png``, ``.bmp``) directly in ``folder``, sorted by path."""
    folder = Path(folder)
    suffixes = {".jpg", ".jpeg", ".png", ".bmp"}
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)


def detect_proposals(
    image_paths: Iterable,
    weights,
    arch: str = "fasterrcnn_resnet50_fpn",
    max_proposals: int = 50,
    score_threshold: float = 0.0,
    device: str = "cpu",
    model_kwargs: Optional[dict] = None,
) -> dict[str, ProposalSet]:
    """Run a torchvision detection model over images; weights come from a local state dict only.

    Args:
        image_paths (Iterable[str | Path]): image files; the image id is the file stem.
        weights (str | Path): local ``state_dict`` (``torch.save(model.state_dict(), path)``). Never downloaded.
        arch (str): a builder in ``torchvision.models.detection`` (e.g. ``fasterrcnn_resnet50_fpn``).
        max_proposals (int): keep the ``M`` highest-scoring detections per image. Default 50.
        score_threshold (float): sets the model's ``box_score_thresh`` where it has one. Default 0.0.
        device (str): torch device. Default ``"cpu"``.
        model_kwargs (dict, optional): extra builder arguments (``num_classes``, ``min_size``, ...); they
            must match the state dict.

    Returns:
        dict[str, ProposalSet]: proposals per image id in original-image pixels. ``labels`` are the
        model's class ids (0 is background in torchvision detectors and never returned).
    """
    # local: only `relground data detect-proposals` runs a detector (torchvision.models loads in seconds)
    import torch
    from PIL import Image
    from torchvision.models import detection
    from torchvision.transforms.v2 import functional as F

    device = resolve_device(str(device), "--device")  # a named error before the detector is built
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"detector weights not found: {weights}")
    builder = getattr(detection, arch, None)
    if builder is None or not callable(builder):
        raise ValueError(f"arch: {arch!r} is not a builder in torchvision.models.detection")
    kwargs = {"weights": None, "weights_backbone": None, **(model_kwargs or {})}
    if "box_score_thresh" not in kwargs and arch.startswith(("fasterrcnn", "maskrcnn", "keypointrcnn")):
        kwargs["box_score_thresh"] = score_threshold
        kwargs.setdefault("box_detections_per_img", max_proposals)
    model = builder(**kwargs)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval().to(device)

    sets = {}
    with torch.inference_mode():
        for image_path in image_paths:
            image_path = Path(image_path)
            if not image_path.is_file():
                raise FileNotFoundError(f"image not found: {image_path}")
            with Image.open(image_path) as pil:
                image = F.to_image(pil.convert("RGB"))  # uint8 [3, H, W]
            height, width = image.shape[-2:]
            out = model([F.to_dtype(image, torch.float32, scale=True).as_subclass(torch.Tensor).to(device)])[0]
            keep = out["scores"] >= score_threshold
            order = out["scores"][keep].argsort(descending=True)[:max_proposals]
            boxes = out["boxes"][keep][order].clamp(min=0)
            boxes[:, 0::2] = boxes[:, 0::2].clamp(max=width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(max=height)
            sets[image_path.stem] = ProposalSet(
                boxes.cpu().numpy(), out["scores"][keep][order].cpu().numpy(),
                out["labels"][keep][order].cpu().numpy(), width, height,
            )
    return sets


def detector_class_names(arch: str, sets: Mapping[str, ProposalSet]) -> list[str]:
    """Class names of a torchvision detector: its weight enum's categories (COCO), else the label ids as text."""
    from torchvision.models import get_model_weights  # local: as in detect_proposals

    try:
        names = list(get_model_weights(arch).DEFAULT.meta["categories"])
    except (ValueError, KeyError, AttributeError):
        names = []
    max_label = max((int(s.labels.max()) for s in sets.values() if len(s)), default=-1)
    if max_label < len(names):
        return names
    return [str(i) for i in range(max_label + 1)] or ["0"]


# Sliding windows: side fractions of the image, each on a half-window stride -> 1 + 4 + 9 + 36 = 50 boxes.
WINDOW_FRACTIONS = (1.0, 0.75, 0.5, 0.3)


def sliding_windows(width: int, height: int, fractions: Sequence[float] = WINDOW_FRACTIONS) -> np.ndarray:
    """A fixed multi-scale window set, used as proposals when no detector output is given.

    For each side fraction ``f`` the windows are ``f * width`` x ``f * height``, placed on an evenly spaced
    grid with at most half a window between neighbours, whole image first. Default: 50 boxes.

    Args:
        width, height: image size in pixels.
        fractions: window sides as fractions of the image side, each in (0, 1].

    Returns:
        np.ndarray[N, 4] float32, xyxy pixels, larger windows first.

    Example:
        >>> windows = sliding_windows(640, 480)
        >>> windows.shape, windows.dtype, windows[:2].tolist()  # the whole image, then the 75% windows
        ((50, 4), dtype('float32'), [[0.0, 0.0, 640.0, 480.0], [0.0, 0.0, 480.0, 360.0]])
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
