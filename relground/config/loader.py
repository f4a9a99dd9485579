"""Experiment configuration: typed dataclass sections, YAML files with ``_base_``, ``key=value`` overrides.

A :class:`Config` groups one frozen dataclass per component (``data``, ``model`` with its ``loss``,
``solver``, ``train``) plus run-level values. Files in ``configs/`` list only what differs from the
defaults::

    _base_: flickr30k_reir.yaml        # optional; a path relative to this file (or a list of them)
    data: {dataset: referit, root: ../shared/data/referit}
    solver: {max_iter: 40000}

Loading checks every key and value against the dataclass fields: an unknown key is a ``ValueError`` that
names it and suggests the closest valid keys; a value of the wrong type (``"abc"`` for a float, ``1.5``
for an int) is a ``ValueError`` naming the key and the expected type. Command-line overrides use dotted
keys, matched case-insensitively (``SOLVER.MAX_ITER``), and are parsed against the field's type (``--set
solver.base_lr=1e-3 solver.steps=[100,200] model.backbone_weights=none``). Every number is checked against its
range (:mod:`relground.config.ranges`; ``nan`` and ``inf`` are refused for every key). The result is frozen
(``dataclasses.FrozenInstanceError`` on assignment); :func:`apply_overrides` returns a new config instead.

Example::

    cfg = load_config("configs/synthetic.yaml", ["solver.max_iter=200", "train.device=cpu"])
    save_config(cfg, "outputs/run/config.yaml")   # round-trips through load_config
"""
from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from relground.config.consistency import check_top_k_fits
from relground.config.data import DataConfig
from relground.config.model import LossConfig, ModelConfig
from relground.config.ranges import check_numeric_ranges
from relground.config.schema import coerce, from_dict, is_dataclass_type, to_dict, type_hints, unknown_key_error, valid_keys
from relground.config.solver import SolverConfig
from relground.config.strict_yaml import safe_load_strict
from relground.config.train import TrainConfig
from relground.utils.io import atomic_write

BASE_KEY = "_base_"
_NONE_WORDS = ("none", "null", "~")
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


@dataclass(frozen=True)
class Config:
    """A complete experiment.

    Attributes:
        data: :class:`relground.config.data.DataConfig`.
        model: :class:`relground.config.model.ModelConfig`; its ``loss`` field is the :class:`LossConfig`.
        solver: :class:`relground.config.solver.SolverConfig`.
        train: :class:`relground.config.train.TrainConfig`.
        seed: seed of python/numpy/torch (the authors': 10).
        output_dir: run folder for config.yaml, checkpoints, metrics.csv and TensorBoard events.
        name: free-form run name, for logs.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 10
    output_dir: str = "outputs/run"
    name: str = ""

    def __post_init__(self) -> None:
        check_numeric_ranges(self)  # every number, before anything starts (relground.config.ranges)
        check_top_k_fits(self)  # keys of two sections: relground.config.consistency

    @property
    def loss(self) -> LossConfig:
        """The loss weights and schedules (stored as ``model.loss``, where the model reads them)."""
        return self.model.loss


# ---------------------------------------------------------------------------------------------- overrides
def resolve_key(cls: type, dotted: str) -> tuple[str, Any]:
    """The canonical spelling of ``dotted`` inside ``cls`` and its annotation. Keys match case-insensitively
    (``SOLVER.MAX_ITER`` is ``solver.max_iter``, as a detectron2 user types it); raises the unknown-key error."""
    tp: Any = cls
    parts = dotted.split(".")
    canonical = []
    for depth, part in enumerate(parts):
        hints = type_hints(tp) if is_dataclass_type(tp) else {}
        name = part if part in hints else {h.lower(): h for h in hints}.get(part.lower())
        if name is None or name.startswith("_"):
            raise unknown_key_error(dotted, valid_keys(cls))
        canonical.append(name)
        tp = hints[name]
        if depth < len(parts) - 1 and not is_dataclass_type(tp):
            raise unknown_key_error(dotted, valid_keys(cls))
    return ".".join(canonical), tp


def parse_value(text: str, tp: Any, key: str) -> Any:
    """Parse the text of a ``key=value`` override for a field annotated ``tp``.

    Strings are taken verbatim; ``none``/``null``/``~`` mean None for optional fields; bools accept
    true/false/yes/no/on/off/1/0; everything else is read as YAML (``[1, 2]``, ``1e-3``, ``{a: 1}``) and
    then type-checked.

    Raises:
        ValueError: naming ``key`` when the text does not fit ``tp``.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    optional = origin in (Union, types.UnionType) and type(None) in args
    if optional and text.strip().lower() in _NONE_WORDS:
        return None
    inner = [a for a in args if a is not type(None)] if optional else [tp]
    if len(inner) == 1 and inner[0] is str:
        return text
    if len(inner) == 1 and inner[0] is bool:
        word = text.strip().lower()
        if word in _BOOL_WORDS or word in ("1", "0"):
            return _BOOL_WORDS.get(word, word == "1")
        raise ValueError(f"config key '{key}': expected a bool (true/false), got {text!r}")
    if len(inner) == 1 and typing.get_origin(inner[0]) is Literal and all(isinstance(a, str) for a in typing.get_args(inner[0])):
        return coerce(text, tp, key)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"config key '{key}': cannot parse {text!r}: {exc}") from exc
    return coerce(value, tp, key)


def _split_override(override: str) -> tuple[str, str]:
    if "=" not in override:
        raise ValueError(f"override {override!r} must look like key=value (e.g. solver.base_lr=1e-3)")
    key, text = override.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"override {override!r} has an empty key")
    return key, text


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {} if child is None else to_dict(child)
        node = child
    node[parts[-1]] = value


def apply_overrides(cfg: Any, overrides: Sequence[str]) -> Any:
    """A new config with ``key=value`` overrides applied (``cfg`` itself is frozen and unchanged).

    Raises:
        ValueError: unknown key (with the closest valid keys) or a value that does not fit the field's type.
    """
    tree = to_dict(cfg)
    cls = type(cfg)
    for override in overrides:
        key, text = _split_override(override)
        key, tp = resolve_key(cls, key)
        _set_dotted(tree, key, to_dict(parse_value(text, tp, key)))
    return from_dict(cls, tree)


# ---------------------------------------------------------------------------------------------- files
def merge_dicts(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge: mappings merge key by key, any other value in ``update`` replaces ``base``'s."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_dicts(merged[key], value)
        else:
            merged[key] = value
    return merged


def shipped_config_dirs() -> list[Path]:
    """Where the configs relground ships live: ``relground/configs`` in an installed wheel, ``configs/`` beside
    the package in a checkout (or an editable install)."""
    package = Path(__file__).resolve().parents[1]  # relground/
    return [d for d in (package / "configs", package.parent / "configs") if d.is_dir()]


def shipped_config(name: str) -> Path:
    """The config relground ships under the file name of ``name`` (``synthetic.yaml``, ...).

    Raises:
        FileNotFoundError: none of that name; the message lists the shipped configs.
    """
    dirs = shipped_config_dirs()
    for directory in dirs:
        candidate = directory / Path(name).name
        if candidate.is_file():
            return candidate
    listed = ", ".join(sorted({p.name for d in dirs for p in d.glob("*.yaml")})) or "none"
    raise FileNotFoundError(f"config file not found: {name} (not a file; shipped configs: {listed})")


def find_config(path: str | os.PathLike) -> Path:
    """``path`` if it is a file, else the shipped config of that file name (``synthetic.yaml``,
    ``configs/flickr30k_reir.yaml`` from any working directory).

    Raises:
        FileNotFoundError: neither exists; the message lists the shipped configs.
    """
    given = Path(path)
    return given if given.is_file() else shipped_config(str(path))


def load_yaml_tree(path: str | os.PathLike, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config file into a mapping, resolving ``_base_`` files (relative to the including file).

    Raises:
        FileNotFoundError: the file (or a base) does not exist.
        ValueError: not a mapping, invalid YAML, or a ``_base_`` cycle.
    """
    path = Path(path).resolve()
    if path in _chain:
        raise ValueError(f"{path}: _base_ cycle: {' -> '.join(str(p) for p in _chain + (path,))}")
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        tree = safe_load_strict(path.read_text(encoding="utf-8")) or {}  # a key given twice is an error
    except UnicodeDecodeError as exc:
        line = path.read_bytes().count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte offset {exc.start}: {exc.reason}); expected a YAML "
                         "config") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = getattr(exc, "context", None)
        raise ValueError(f"{where}: invalid YAML: {problem}" + (f" ({context})" if context else "")) from None
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: a config file must hold a mapping, got {type(tree).__name__}")
    bases = tree.pop(BASE_KEY, None) or []
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = merge_dicts(merged, load_yaml_tree(path.parent / base, _chain + (path,)))
    return merge_dicts(merged, tree)


def load_config(path: Optional[str | os.PathLike] = None, overrides: Sequence[str] = (), cls: type = Config) -> Any:
    """Read a YAML file (or start from defaults when ``path`` is None), apply overrides, return the frozen config.

    Args:
        path: YAML file, or the name of a shipped config (:func:`find_config`); keys not given keep the
            dataclass defaults.
        overrides: ``"key=value"`` strings applied after the file (later ones win).
        cls: the root dataclass (default :class:`Config`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown key, wrong type, or an invalid value (naming the file and the key).
    """
    if path is not None:
        path = find_config(path)
    tree = load_yaml_tree(path) if path is not None else {}
    cfg = from_dict(cls, tree, source=str(path) if path is not None else "")
    return apply_overrides(cfg, overrides) if overrides else cfg


def dump_config(cfg: Any) -> str:
    """``cfg`` as YAML text, every field (defaults included), in the dataclasses' order."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write ``cfg`` as YAML (:func:`dump_config`) so that ``load_config(path)`` rebuilds it."""
    text = dump_config(cfg)
    return atomic_write(path, lambda f: f.write(text.encode()))
