"""The synthetic benchmark's experiments: generate it, configure a run (Table 2 presets), train and evaluate it.

Shared by :mod:`relground.experiments.demo` and :mod:`relground.experiments.ablation` (``relground demo`` /
``relground ablation``)::

    props = prepare_synthetic("outputs/demo/data", num_images=1000, seed=0)
    cfg = synthetic_config(None, "outputs/demo/data", "outputs/demo/full", preset="full", iterations=800)
    result = train_and_evaluate(cfg, split="test")   # metrics, predictions, checkpoint, trained model
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from relground.config import Config, apply_overrides, load_config, shipped_config
from relground.config.method import with_method_of
from relground.config.model import ModelConfig
from relground.data.flickr30k import load_flickr30k
from relground.data.synthetic import generate_synthetic
from relground.engine.defaults import train
from relground.engine.predictor import TrainedModel
from relground.language.relations import build_relations, parse_captions

SYNTHETIC_CONFIG = "synthetic.yaml"  # the shipped one (relground.config.shipped_config), not one in the cwd
SYNTHETIC_RELATION_MIN_FREQ = 5  # relation texts seen more than this often in train become categories


def prepare_synthetic(out, num_images: int, seed: int = 0, multi_relation: float = 0.0) -> dict:
    """Generate the synthetic benchmark into ``out`` and its relations files (``relations_<split>.json``).

    Train builds the relation categories (count > ``SYNTHETIC_RELATION_MIN_FREQ``); val and test reuse them.
    ``multi_relation``: ``generate_synthetic``'s option (multi-relation images; default 0, the benchmark without).

    Returns:
        the generator's measured properties plus ``relation_categories`` and ``relation_seconds``.
    """
    props = generate_synthetic(out, num_images=num_images, seed=seed, multi_relation=multi_relation)
    start = time.perf_counter()
    splits = {split: load_flickr30k(out, split) for split in ("train", "val", "test")}
    captions = [s.text for images in splits.values() for im in images for s in im.sentences]
    parses, _ = parse_captions(captions, workers=1)  # one process: spaCy loads once, no pool start-up
    categories = None
    for split, images in splits.items():  # train first: it defines the categories
        relations = build_relations(images, parses, categories=categories, min_freq=SYNTHETIC_RELATION_MIN_FREQ)
        categories = [c["name"] for c in relations["categories"]] if categories is None else categories
        (Path(out) / f"relations_{split}.json").write_text(json.dumps({**relations, "split": split}))
    props.update(relation_categories=len(categories), relation_seconds=round(time.perf_counter() - start, 2))
    return props


def apply_preset(model_cfg: ModelConfig, preset: str, **overrides: Any) -> ModelConfig:
    """``model_cfg`` with the switches of a Table 2 preset (``ModelConfig.preset``) and then ``overrides``.

    The preset's switches are its differences from the default ``ModelConfig``, so the base config's sizes
    (backbone, widths, schedule) are kept while the components are turned on or off.
    """
    default, target = ModelConfig(), ModelConfig.preset(preset)
    changes = {
        f.name: getattr(target, f.name)
        for f in dataclasses.fields(ModelConfig)
        if f.name != "loss" and getattr(target, f.name) != getattr(default, f.name)
    }
    loss_changes = {
        f.name: getattr(target.loss, f.name)
        for f in dataclasses.fields(type(default.loss))
        if getattr(target.loss, f.name) != getattr(default.loss, f.name)
    }
    # A component the preset turns off takes the base config's extensions of it along.
    if not target.vogn:
        changes["vogn_geometry"] = False
    if not target.loss.relation:
        changes["relation_geometry"] = False
    return model_cfg.replace(**changes, **overrides, loss=loss_changes)


def synthetic_config(
    config,
    data_root,
    output_dir,
    *,
    preset: str = "full",
    iterations: Optional[int] = None,
    seed: int = 10,
    overrides: Sequence[str] = (),
    model_overrides: Optional[dict[str, Any]] = None,
    method_from=None,
) -> Config:
    """The config of one synthetic run: ``config`` (default ``configs/synthetic.yaml``) for ``preset``.

    Args:
        config: base YAML, None = ``configs/synthetic.yaml``.
        data_root: the benchmark folder (``prepare_synthetic``).
        output_dir: the run's folder.
        preset: ``ModelConfig.preset`` name (Table 2 row).
        iterations: training iterations; the lr steps, warm-up and refine start scale with it.
        seed: training seed.
        overrides: ``key=value`` config overrides, applied after the preset.
        model_overrides: ModelConfig fields that define the run, e.g. ``{"top_k": 3}`` (Table 3); applied last, so
            an ``overrides`` entry for every run (``--set model.top_k=10``) does not change a Table 3 row's K.
        method_from: a config (YAML file or shipped name) whose method switches replace the base config's
            (:func:`relground.config.method.with_method_of`), before the preset: e.g. ``flickr30k_reir.yaml`` trains
            the real-data method at the benchmark's scale.
    """
    try:  # load_config also finds a shipped config by name (relground.config.find_config)
        cfg = load_config(
            config if config is not None else shipped_config(SYNTHETIC_CONFIG),
            [f"data.root={data_root}", f"output_dir={output_dir}", f"seed={seed}"],
        )
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"--config: {exc}") from None
    if iterations is not None:
        if iterations <= 0:
            raise ValueError(f"--iterations: must be positive, got {iterations}")
        factor = iterations / cfg.solver.max_iter

        def scaled(value: int) -> int:
            return max(1, round(value * factor))

        solver = dataclasses.replace(
            cfg.solver, max_iter=iterations, steps=tuple(scaled(s) for s in cfg.solver.steps),
            warmup_iters=min(scaled(cfg.solver.warmup_iters), iterations),
        )
        train_cfg = dataclasses.replace(cfg.train, checkpoint_period=iterations, progress_bar=False)
        model = cfg.model.replace(refine_start_iteration=scaled(cfg.model.refine_start_iteration))
        cfg = dataclasses.replace(cfg, solver=solver, train=train_cfg, model=model)
    if method_from is not None:
        try:
            source = load_config(method_from).model
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"--method-from: {exc}") from None
        cfg = dataclasses.replace(cfg, model=with_method_of(cfg.model, source))
    cfg = dataclasses.replace(cfg, model=apply_preset(cfg.model, preset))
    cfg = apply_overrides(cfg, overrides) if overrides else cfg
    return dataclasses.replace(cfg, model=cfg.model.replace(**model_overrides)) if model_overrides else cfg


def train_and_evaluate(cfg: Config, split: str = "test") -> dict[str, Any]:
    """Train ``cfg`` (:func:`relground.engine.defaults.train`), reload the final checkpoint and evaluate on ``split``.

    Returns:
        dict with ``metrics`` (``evaluate_model``'s), ``predictions`` (fused boxes per phrase key),
        ``checkpoint`` (path), ``trained`` (the :class:`TrainedModel`) and ``train`` (the trainer's result).
    """
    result = train(cfg)
    if not result.get("checkpoint"):
        raise ValueError(f"training of {cfg.output_dir} ended without a checkpoint (status {result.get('status')})")
    trained = TrainedModel.from_checkpoint(result["checkpoint"])
    metrics, predictions = trained.evaluate(split, return_predictions=True)
    return {"metrics": metrics, "predictions": predictions.boxes["fused"], "checkpoint": result["checkpoint"],
            "trained": trained, "train": result}
