"""Path templates of a config (``data.proposals: "{root}/proposals_{split}.h5"``), checked when the config loads.

A template is filled with ``str.format`` when a file is opened, maybe hours into a run; a placeholder it
cannot fill (a typo, ``{nosuch}``, ``{0}``, an unclosed ``{``) is found here instead, naming the key, the
placeholder and the valid ones.
"""
from __future__ import annotations

import string
from collections.abc import Iterable

DATA_PLACEHOLDERS = ("root", "split", "dataset")  # what relground.config.data.DataConfig fills in


def check_path_template(key: str, template: str, placeholders: Iterable[str] = DATA_PLACEHOLDERS) -> None:
    """Raise ``ValueError`` naming ``key`` when ``template`` has a placeholder outside ``placeholders``.

    Every placeholder must be a bare name (no ``{root.x}``, ``{split[0]}``, ``{root!r}``, ``{root:>9}``);
    ``{{`` and ``}}`` stand for literal braces, as in ``str.format``.

    Example:
        >>> check_path_template("data.proposals", "{root}/proposals_{split}.h5")
        >>> check_path_template("data.proposals", "{root}/{nosuch}.h5")
        Traceback (most recent call last):
        ...
        ValueError: data.proposals: unknown placeholder {nosuch} in '{root}/{nosuch}.h5'; the valid placeholders are {root}, {split}, {dataset} (write {{ or }} for a literal brace)
    """
    valid = tuple(placeholders)
    listed = ", ".join("{" + name + "}" for name in valid)
    hint = f"the valid placeholders are {listed} (write {{{{ or }}}} for a literal brace)"
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as e:  # "Single '}' encountered", "expected '}' before end of string"
        raise ValueError(f"{key}: malformed path template {template!r} ({e}); {hint}") from None
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if name not in valid or spec or conversion:
            raise ValueError(f"{key}: unknown placeholder {shown} in {template!r}; {hint}")
