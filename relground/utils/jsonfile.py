"""JSON input files read strictly: a key given twice in one object is an error naming where, not "last one wins".

``json.load`` keeps the last of duplicated keys without a word (``{"box": [..], "box": [..]}``); a hand-edited or
concatenated file then loads as something nobody wrote. :func:`load_json_strict` reads like ``json.load`` (a
leading UTF-8 byte-order mark is accepted) and raises :class:`DuplicateKeyError` naming the first duplicated key
and its place in the document (``images['1000009']['0']``, ``[3]``).
"""
from __future__ import annotations

import json
from typing import Any, Optional


class DuplicateKeyError(ValueError):
    """A key given twice in one JSON object: ``where`` (a path such as ``[3]`` or ``images['1000009']``) and ``key``."""

    def __init__(self, where: str, key: str) -> None:
        self.where, self.key = where, key
        super().__init__(f"{where or 'the top-level object'}: key {key!r} is given twice in one object (JSON keeps only "
                         "the last silently); remove one")


class _Object(dict):
    """A decoded JSON object that remembers its first duplicated key."""

    duplicate: Optional[str] = None


def _pairs(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object()
    for key, value in pairs:
        if key in obj and obj.duplicate is None:
            obj.duplicate = key
        obj[key] = value
    return obj


def _find_duplicate(node: Any, where: str) -> Optional[tuple[str, str]]:
    stack = [(node, where)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, _Object):
            if node.duplicate is not None:
                return where, node.duplicate
            stack.extend((value, f"{where}[{key!r}]") for key, value in reversed(list(node.items())))
        elif isinstance(node, list):
            stack.extend((value, f"{where}[{i}]") for i, value in reversed(list(enumerate(node))))
    return None


def loads_strict(text: str) -> Any:
    """``json.loads`` whose objects are plain ``dict``s, refusing duplicated keys (:class:`DuplicateKeyError`)."""
    data = json.loads(text.removeprefix("\ufeff"), object_pairs_hook=_pairs)
    found = _find_duplicate(data, "")
    if found is not None:
        raise DuplicateKeyError(*found)
    return data


def load_json_strict(f) -> Any:
    """:func:`loads_strict` of an open text file (opened with ``encoding="utf-8"``)."""
    return loads_strict(f.read())
