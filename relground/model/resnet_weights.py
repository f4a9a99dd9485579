"""ResNet checkpoints from other frameworks: key renaming to torchvision's names, reading the file, and the
layout a file was trained in.

Kept apart from :mod:`relground.model.backbone` because it is pure bookkeeping (names, containers, Caffe's
frozen BatchNorm) that the forward pass never touches. Understands torchvision, detectron2, maskrcnn-benchmark
and Detectron/Caffe naming (:func:`map_resnet_state_dict`) and ``.pth``/``.pt``/``.pkl`` files
(:func:`load_checkpoint_file`). :func:`detect_layout` tells from the key names which of the two ResNet
conventions a file follows (the stride on the 1x1 or the 3x3 conv, BGR-minus-mean or RGB mean/std pixels):
loading one into the other gives features silently wrong.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

# Frozen Caffe BatchNorm is y = x * scale + bias; torchvision's eval BN computes (x - mean) / sqrt(var + eps) * w + b,
# so running_var = 1 - eps reproduces it exactly.
_BN_EPS = 1e-5

_CAFFE_BRANCH = {"branch2a": "conv1", "branch2b": "conv2", "branch2c": "conv3", "branch1": "downsample.0"}
_CAFFE_BN = {"branch2a": "bn1", "branch2b": "bn2", "branch2c": "bn3", "branch1": "downsample.1"}
_CAFFE_BN_SUFFIX = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}


def _map_key(key: str) -> Optional[str]:
    """torchvision name of one checkpoint key, or None for a key that is not part of the ResNet."""
    # Strip wrappers: DDP "module.", maskrcnn-benchmark "backbone.body." / box-head "…head.", detectron2 "backbone."
    key = re.sub(r"^module\.", "", key)
    key = re.sub(r"^roi_heads\.box\.feature_extractor\.head\.", "", key)  # maskrcnn-benchmark res5 head
    key = re.sub(r"^roi_heads\.", "", key)  # detectron2 Res5ROIHeads: roi_heads.res5.*
    key = re.sub(r"^backbone\.(body\.|bottom_up\.)?", "", key)
    key = re.sub(r"^bottom_up\.", "", key)

    # Detectron / Caffe blob names: conv1_w, res_conv1_bn_s, res2_0_branch2a_w, res2_0_branch2a_bn_s, ...
    if key == "conv1_w":
        return "conv1.weight"
    m = re.fullmatch(r"res_conv1_bn_(s|b|rm|riv)", key)
    if m:
        return "bn1." + _CAFFE_BN_SUFFIX[m.group(1)]
    m = re.fullmatch(r"res(\d)_(\d+)_(branch2[abc]|branch1)_(w|bn_s|bn_b|bn_rm|bn_riv)", key)
    if m:
        stage, block, branch, kind = int(m.group(1)), m.group(2), m.group(3), m.group(4)
        prefix = f"layer{stage - 1}.{block}."
        if kind == "w":
            return prefix + _CAFFE_BRANCH[branch] + ".weight"
        return prefix + _CAFFE_BN[branch] + "." + _CAFFE_BN_SUFFIX[kind[3:]]

    # detectron2: stem.conv1.weight, stem.conv1.norm.*, res2.0.conv1.weight, res2.0.conv1.norm.*, res2.0.shortcut.*
    m = re.fullmatch(r"stem\.conv1\.(norm\.)?(\w+)", key)
    if m:
        return ("bn1." if m.group(1) else "conv1.") + m.group(2)
    m = re.fullmatch(r"stem\.(conv1|bn1)\.(\w+)", key)  # maskrcnn-benchmark stem
    if m:
        return f"{m.group(1)}.{m.group(2)}"
    m = re.fullmatch(r"res(\d)\.(\d+)\.(conv[123]|shortcut)\.(norm\.)?(\w+)", key)
    if m:
        stage, block, conv, norm, param = m.groups()
        prefix = f"layer{int(stage) - 1}.{block}."
        if conv == "shortcut":
            return prefix + ("downsample.1." if norm else "downsample.0.") + param
        return prefix + (f"bn{conv[-1]}." if norm else f"{conv}.") + param

    # torchvision (and maskrcnn-benchmark layers): already the target naming.
    if re.fullmatch(r"(conv1|bn1)\.\w+", key) or re.fullmatch(
        r"layer[1-4]\.\d+\.(conv\d|bn\d|downsample\.[01])\.\w+", key
    ):
        return key
    return None


def map_resnet_state_dict(state_dict: dict) -> tuple[dict[str, Tensor], list[str]]:
    """Rename a ResNet checkpoint's keys to torchvision's.

    Understands torchvision (``layer1.0.conv1.weight``), detectron2 (``backbone.res2.0.conv1.weight``,
    ``…conv1.norm.weight``, ``…shortcut.weight``, ``stem.conv1.norm.*``, ``roi_heads.res5.*``),
    maskrcnn-benchmark (``backbone.body.layer1.0.conv1.weight``, ``backbone.body.stem.bn1.*``,
    ``roi_heads.box.feature_extractor.head.layer4.*``) and Detectron/Caffe blobs (``res2_0_branch2a_w``,
    ``res2_0_branch2a_bn_s``). Frozen Caffe BatchNorms without running statistics get mean 0 and
    var 1 - eps, so torchvision's eval BatchNorm computes exactly ``x * scale + bias``.

    Args:
        state_dict: name -> Tensor or numpy array (Detectron pickles hold arrays).

    Returns:
        (mapped, ignored): the torchvision-named tensors and the source keys that are not ResNet weights
        (classifier, RPN, box predictor, ``num_batches_tracked``...).
    """
    mapped: dict[str, Tensor] = {}
    ignored: list[str] = []
    for key, value in state_dict.items():
        target = _map_key(key)
        if target is None or target.endswith("num_batches_tracked"):
            ignored.append(key)
            continue
        mapped[target] = torch.as_tensor(value)
    # Caffe / FrozenBN checkpoints carry only scale and bias: add the identity statistics.
    for key in [k for k in mapped if re.search(r"(bn\d|downsample\.1)\.weight$", k)]:
        base = key[: -len("weight")]
        if base + "running_mean" not in mapped:
            mapped[base + "running_mean"] = torch.zeros_like(mapped[key])
            mapped[base + "running_var"] = torch.full_like(mapped[key], 1.0 - _BN_EPS)
    return mapped, ignored


def load_checkpoint_file(path: str | Path) -> dict:
    """Read a state dict from ``path`` (``.pth``/``.pt`` via torch.load, ``.pkl`` via pickle).

    Unwraps the usual containers (``{"model": ...}``, ``{"state_dict": ...}``, Detectron's ``{"blobs": ...}``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file holds no mapping of weights.
    """
    return read_weight_file(path)[0]


def read_weight_file(path: str | Path) -> tuple[dict, dict[str, Any]]:
    """:func:`load_checkpoint_file` plus the container's other top-level entries (e.g. detectron2's
    ``__author__``, which its torchvision conversion script sets), for :func:`detect_layout`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.backbone_weights: no such file: {path}")
    if path.suffix == ".pkl":
        with path.open("rb") as f:
            data = pickle.load(f, encoding="latin1")  # Detectron (Python 2) pickles
    else:
        data = torch.load(path, map_location="cpu", weights_only=True)
    meta: dict[str, Any] = {}
    for container in ("model", "state_dict", "blobs"):
        if isinstance(data, dict) and isinstance(data.get(container), dict):
            meta.update({k: v for k, v in data.items() if k != container and isinstance(v, (str, bool, int))})
            data = data[container]
    if not isinstance(data, dict) or not data:
        raise ValueError(f"model.backbone_weights: {path} holds no state dict (got {type(data).__name__})")
    return data, meta


@dataclass(frozen=True)
class WeightLayout:
    """The convention a ResNet weight file was trained in, as the two config keys that must match it."""

    name: str  # "torchvision" or "msra"
    stride_in_1x1: bool  # model.stride_in_1x1
    pixel_format: str  # data.pixel_format
    evidence: str  # why: the key (or entry) that told


LAYOUTS = {
    # torchvision's ImageNet ResNets: stride on the 3x3 conv, RGB in [0, 1] normalised by the ImageNet mean/std.
    "torchvision": dict(stride_in_1x1=False, pixel_format="torchvision"),
    # MSRA's original Caffe ResNets and every detector initialised from them (Detectron, detectron2's
    # ImageNetPretrained/MSRA, maskrcnn-benchmark, bottom-up-attention): stride on the 1x1 conv, BGR minus the mean.
    "msra": dict(stride_in_1x1=True, pixel_format="caffe_bgr"),
}


def layout(name: str, evidence: str = "model.backbone_layout") -> WeightLayout:
    """The :class:`WeightLayout` called ``name`` (``torchvision`` or ``msra``)."""
    if name not in LAYOUTS:
        raise ValueError(f"model.backbone_layout must be 'auto', 'torchvision' or 'msra', got {name!r}")
    return WeightLayout(name, evidence=evidence, **LAYOUTS[name])


def detect_layout(state_dict: dict, meta: Optional[dict[str, Any]] = None) -> Optional[WeightLayout]:
    """The layout a ResNet weight file follows, told by its key names; None when they do not tell.

    * ``__author__: torchvision`` (detectron2's ``convert-torchvision-to-d2.py``): torchvision.
    * Detectron/Caffe2 blobs (``res2_0_branch2a_w``, ``res_conv1_bn_s``; detectron2's
      ``ImageNetPretrained/MSRA/R-101.pkl``): msra.
    * detectron2 names (``res2.0.conv1.weight``, ``res2.0.conv1.norm.*``, ``stem.conv1.*``; bottom-up-attention's
      detectron2 ports, the authors' weights): msra, detectron2's default (``STRIDE_IN_1X1: True``, BGR).
    * maskrcnn-benchmark (``backbone.body.layer1...``, ``…feature_extractor.head.layer4``): msra, its default.
    * bare torchvision names (``layer1.0.conv1.weight``, ``conv1.weight``): torchvision. A Caffe ResNet converted
      into torchvision's names (e.g. ``resnet101_caffe.pth`` of older PyTorch detectors) cannot be told from
      torchvision's own by its names: ``model.backbone_layout: msra`` says so.
    """
    if meta and str(meta.get("__author__", "")).lower() == "torchvision":
        return layout("torchvision", "__author__: torchvision (detectron2's conversion of a torchvision ResNet)")
    keys = [str(k) for k in state_dict]
    checks = (
        ("msra", r"(^|\.)(res\d_\d+_branch(1|2[abc])_w|res_conv1_bn_s|conv1_w)$", "Detectron/Caffe2 blob names"),
        ("msra", r"(^|\.)(res\d\.\d+\.(conv[123]|shortcut)\.|stem\.conv1\.)", "detectron2 names"),
        ("msra", r"^(module\.)?(backbone\.body\.|roi_heads\.box\.feature_extractor\.head\.)", "maskrcnn-benchmark names"),
        ("torchvision", r"^(module\.)?(conv1\.weight|layer[1-4]\.\d+\.conv\d\.weight)$", "torchvision names"),
    )
    for name, pattern, what in checks:
        example = next((k for k in keys if re.search(pattern, k)), None)
        if example is not None:
            return layout(name, f"{what}, e.g. {example!r}")
    return None
