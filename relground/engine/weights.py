"""Backbone weights a run cannot get wrong: refused before training when missing or in the wrong layout, and never
needed again once a checkpoint holds every backbone tensor."""
from __future__ import annotations

import dataclasses

from relground.config import Config
from relground.model.backbone import RANDOM_WEIGHTS
from relground.model.resnet_weights import detect_layout, layout, read_weight_file


def check_backbone_weights(cfg: Config) -> None:
    """Refuse backbone weights that would train silently wrong, before anything is built or written.

    * A real dataset (Flickr30K, ReferIt) with a frozen backbone needs ``model.backbone_weights``: without it the
      heads train over random features. ``backbone_weights: random`` asks for that on purpose.
    * A weight file's layout (:func:`relground.model.resnet_weights.detect_layout`, or ``model.backbone_layout``)
      must match ``model.stride_in_1x1`` and ``data.pixel_format``.

    Raises:
        ValueError: naming the keys to set. FileNotFoundError: the weight file is missing (named).
    """
    m = cfg.model
    if m.backbone_weights is None:
        if m.freeze_backbone and cfg.data.dataset != "synthetic":
            raise ValueError(
                f"model.backbone_weights is not set: training {cfg.data.dataset} with a frozen backbone "
                "(model.freeze_backbone) would fit the heads to random features. Set model.backbone_weights=/path/"
                "resnet101.pth (docs/model.md, 'Backbone weights'), or model.backbone_weights=random to do so on purpose"
            )
        return
    if m.backbone_weights == RANDOM_WEIGHTS:
        return
    state, meta = read_weight_file(m.backbone_weights)
    if m.backbone_layout == "as_configured":  # a mix said on purpose (the authors' config): the file is only read
        return
    found = detect_layout(state, meta) if m.backbone_layout == "auto" else layout(m.backbone_layout)
    if found is None:
        return  # names that tell nothing (map_resnet_state_dict names what it misses)
    wrong = []
    if m.stride_in_1x1 != found.stride_in_1x1:
        wrong.append(f"model.stride_in_1x1={str(found.stride_in_1x1).lower()} (is {str(m.stride_in_1x1).lower()})")
    if cfg.data.pixel_format != found.pixel_format:
        wrong.append(f"data.pixel_format={found.pixel_format} (is {cfg.data.pixel_format})")
    if wrong:
        other = "msra" if found.name == "torchvision" else "torchvision"
        raise ValueError(
            f"model.backbone_weights: {m.backbone_weights} is a {found.name} ResNet ({found.evidence}); it needs "
            f"{' and '.join(wrong)}. Set them, or model.backbone_layout={other} if the file is a {other} ResNet"
        )


def without_weight_file(cfg: Config) -> Config:
    """``cfg`` with no backbone weight file: for a model whose every tensor comes from a checkpoint (evaluation,
    ``Grounder``, resume), so the file the run started from may have moved or gone."""
    if cfg.model.backbone_weights in (None, RANDOM_WEIGHTS):
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone_weights=None))
