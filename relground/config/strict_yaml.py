"""YAML config files read strictly: a key given twice in one mapping is an error, not "the last one wins".

PyYAML keeps the last of duplicated keys without a word; in a config that means an edit that seems to take
effect does not (or the reverse). The error is a ``yaml.YAMLError`` with the second key's line and column, so
the loader reports it like any other YAML error (``bad.yaml:7:3: invalid YAML: key 'max_iter' is given twice
...``).
"""
from __future__ import annotations

import yaml
from yaml.constructor import ConstructorError


class StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: merged keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not key_node:
                    raise ConstructorError(
                        None, None,
                        f"key {key!r} is given twice in one mapping (first on line {first.start_mark.line + 1}; YAML "
                        "would keep the last silently); remove one",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def safe_load_strict(text: str):
    """``yaml.safe_load`` refusing duplicated keys (``yaml.YAMLError`` with the place of the second one)."""
    return yaml.load(text, Loader=StrictSafeLoader)  # noqa: S506  (a SafeLoader subclass)
