"""The predictions file of ``relground evaluate --predictions``: one box per phrase, keyed like the evaluator.

A JSON list of ``{"image_id", "sentence_index", "first_word_index", "box"}`` with ``box`` = ``[x1, y1, x2, y2]``
in original-image pixels (0-based, no +1), so that any model's output can be scored by the same evaluator.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

from relground.evaluation.evaluator import PhraseKey, phrase_key
from relground.utils.jsonfile import DuplicateKeyError, load_json_strict
from relground.utils.paths import expect_file


def load_predictions(path) -> dict[PhraseKey, list[float]]:
    """Read a predictions JSON file: a list of ``{"image_id", "sentence_index", "first_word_index", "box"}``.

    Args:
        path: the file; ``box`` is ``[x1, y1, x2, y2]`` in original pixels (0-based, no +1).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not JSON, not a list, or an entry with a missing / mistyped field or a repeated key;
            the message names the file, the entry index and the field.
    """
    expect_file(path, "predictions file", "--predictions")
    with open(path, encoding="utf-8") as f:
        try:
            entries = load_json_strict(f)  # a key given twice (`box`) is an error, not "the last one wins"
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        except DuplicateKeyError as exc:
            raise ValueError(f"{path}: entry {exc}") from None  # "entry [3]: key 'box' is given twice ..."
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of predictions, got {type(entries).__name__}")
    predictions: dict[PhraseKey, list[float]] = {}
    for i, entry in enumerate(entries):
        where = f"{path}: entry {i}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
        for field_name, kind in (("image_id", (str, int)), ("sentence_index", int), ("first_word_index", int)):
            if field_name not in entry:
                raise ValueError(f"{where}: missing field '{field_name}'")
            value = entry[field_name]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"{where}: field '{field_name}' has invalid value {value!r}")
        box = entry.get("box")
        if box is None:
            raise ValueError(f"{where}: missing field 'box'")
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
        ):
            raise ValueError(f"{where}: field 'box' must be [x1, y1, x2, y2] finite numbers, got {box!r}")
        if box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"{where}: field 'box' has x2 < x1 or y2 < y1: {box!r}")
        key = phrase_key(entry["image_id"], entry["sentence_index"], entry["first_word_index"])
        if key in predictions:
            raise ValueError(f"{where}: duplicate prediction for {key}")
        predictions[key] = [float(v) for v in box]
    return predictions


def save_predictions(predictions: Mapping[PhraseKey, Sequence[float]], path) -> None:
    """Write predictions in the ``load_predictions`` format.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "predictions.json"
        >>> save_predictions({("1", 0, 0): [0.0, 0.0, 10.0, 5.0]}, path)
        >>> load_predictions(path)
        {('1', 0, 0): [0.0, 0.0, 10.0, 5.0]}
    """
    entries = [
        {"image_id": k[0], "sentence_index": k[1], "first_word_index": k[2], "box": [float(v) for v in box]}
        for k, box in predictions.items()
    ]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(entries, f)
