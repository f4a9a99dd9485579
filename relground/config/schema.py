"""Typed config sections from plain mappings and back: key and value checks with helpful errors."""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union


class NonFiniteError(ValueError):
    """A float key given ``nan`` or ``inf``."""


def type_hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass (string annotations included)."""
    namespace = dict(vars(sys.modules[cls.__module__]))
    return typing.get_type_hints(cls, globalns=namespace)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in canonical form (tuples, floats).

    Raises:
        ValueError: naming ``key``, the expected type and the value.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def fail() -> typing.NoReturn:
        raise ValueError(f"config key '{key}': expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")

    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            fail()
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except NonFiniteError:
                raise  # a float it is, just not a usable one: say so rather than "expected Optional[float]"
            except ValueError:
                continue
        fail()
    if origin is Literal:
        if value in args:
            return value
        raise ValueError(f"config key '{key}': must be one of {list(args)}, got {value!r}")
    if is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            fail()
        return _from_dict(tp, value, prefix=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        fail()
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            fail()
        if not math.isfinite(number):  # nan / inf are never a setting: training would die on them much later
            raise NonFiniteError(f"config key '{key}': must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        fail()
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            fail()
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ValueError(f"config key '{key}': expected {len(args)} values ({_type_name(tp)}), got {value!r}")
            items = [coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_type = args[0] if args else Any
            items = [coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            fail()
        key_type, value_type = args if args else (Any, Any)
        return {coerce(k, key_type, key): coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    fail()


def valid_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a config dataclass, nested sections included (e.g. ``model.loss.lambda_reg``)."""
    keys = []
    for name, tp in type_hints(cls).items():
        if name.startswith("_"):
            continue
        full = f"{prefix}{name}"
        keys.append(full)
        if is_dataclass_type(tp):
            keys.extend(valid_keys(tp, full + "."))
    return keys


def unknown_key_error(key: str, candidates: Sequence[str]) -> ValueError:
    """An error naming ``key`` and up to three close valid keys (same section first, by spelling or substring)."""
    parent, _, leaf = key.lower().rpartition(".")  # keys are lower case: SOLVER.MAX_ITR suggests solver.max_iter
    siblings = {c.rpartition(".")[2]: c for c in candidates if c.rpartition(".")[0] == parent}
    if siblings:
        names = difflib.get_close_matches(leaf, list(siblings), n=3, cutoff=0.6)
        names += [n for n in siblings if (leaf in n or n in leaf) and n not in names]
        close = [siblings[n] for n in names[:3]]
    else:  # the section itself is misspelt
        close = difflib.get_close_matches(key.lower(), candidates, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(f"unknown config key '{key}'{hint}")


def from_dict(cls: type, values: Mapping[str, Any], prefix: str = "", source: str = "") -> Any:
    """Build the dataclass ``cls`` from a (nested) mapping, checking keys and value types.

    Args:
        cls: a config dataclass.
        values: field name -> value; nested sections are mappings; missing fields keep their defaults.
        prefix: dotted path of ``cls`` inside the whole config, for error messages.
        source: where the values came from (a file name), prefixed to error messages.

    Raises:
        ValueError: an unknown key (with suggestions) or a value of the wrong type.
    """
    try:
        return _from_dict(cls, values, prefix)
    except ValueError as exc:
        if source:
            raise ValueError(f"{source}: {exc}") from exc
        raise


def _from_dict(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(values, Mapping):
        raise ValueError(f"config section '{prefix or cls.__name__}' must be a mapping, got {values!r}")
    hints = type_hints(cls)
    init_fields = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        removed = getattr(cls, "REMOVED_FIELDS", {})
        if name not in init_fields and name in removed:
            # A key an older config (e.g. one saved in a checkpoint) still holds: accepted at the one value
            # the code now uses, refused at any other.
            if _as_comparable(value) != _as_comparable(removed[name]):
                raise ValueError(f"{key} was removed; only its former default {removed[name]!r} is supported, got {value!r}")
            continue
        if name not in init_fields:
            raise unknown_key_error(key, valid_keys(cls, f"{prefix}." if prefix else ""))
        kwargs[name] = coerce(value, hints[name], key)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # the section's own __post_init__ checks raise ValueError and pass through
        raise ValueError(f"config section '{prefix or cls.__name__}': {exc}") from exc


def _as_comparable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def to_dict(cfg: Any) -> Any:
    """A config dataclass as plain YAML-safe values (tuples become lists)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.init}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, os.PathLike):
        return os.fspath(cfg)
    return cfg
