"""The frozen ResNet of ReIR: C4 maps of whole images and 2048-d (or 512-d) features of boxes.

Two ways to turn C4 into box features (``ModelConfig.box_head``):

* ``faithful`` (the authors): RoIAlign 7x7 on C4 (stride 16, sampling 2, aligned) -> layer4 with its first
  stride set to 1, run on every box -> spatial mean. Per-box layer4 costs M x the layer4 of a 7x7 map.
* ``fast``: layer4 with stride 1 and dilation 2 (torchvision's ``replace_stride_with_dilation``) on the whole
  C4 map once per image -> :func:`relground.ops.roi_align_avg` (fused RoIAlign + mean). No per-box layer4.

Weights come from a local file in torchvision, detectron2, maskrcnn-benchmark or Detectron/Caffe naming
(:func:`map_resnet_state_dict`). The images are normalised by the data layer (Caffe BGR mean or torchvision
mean/std, matching the weights); the backbone needs to know nothing else.

Over 400 lines because the weight mapping, the feature cache and the RoI pooling of the frozen ResNet are
kept beside it (to be split by the training-step work).
"""

from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

C4_STRIDE = 16  # stem (4) x layer2 (2) x layer3 (2)
# Frozen Caffe BatchNorm is y = x * scale + bias; torchvision's eval BN computes (x - mean) / sqrt(var + eps) * w + b,
# so running_var = 1 - eps reproduces it exactly.
_BN_EPS = 1e-5


def build_resnet(name: str, stride_in_1x1: bool = False) -> ResNet:
    """A randomly initialised torchvision ResNet without its classifier.

    Args:
        name: ``resnet101``, ``resnet50``, ``resnet18`` or ``resnet10`` (BasicBlock x [1, 1, 1, 1]).
        stride_in_1x1: move each stage's stride from the 3x3 to the 1x1 conv (MSRA/Caffe layout); Bottleneck only.

    Raises:
        ValueError: unknown ``name``, or ``stride_in_1x1`` with a BasicBlock ResNet.
    """
    if name == "resnet10":
        model = ResNet(BasicBlock, [1, 1, 1, 1])
    elif name in ("resnet18", "resnet50", "resnet101"):
        model = getattr(torchvision.models, name)(weights=None)
    else:
        raise ValueError(f"model.backbone must be resnet101, resnet50, resnet18 or resnet10, got {name!r}")
    model.fc = nn.Identity()
    if stride_in_1x1:
        if not isinstance(model.layer1[0], Bottleneck):
            raise ValueError(f"model.stride_in_1x1 needs a Bottleneck ResNet, got {name!r}")
        for layer in (model.layer2, model.layer3, model.layer4):
            first = layer[0]
            first.conv1.stride, first.conv2.stride = first.conv2.stride, (1, 1)
    return model


def set_layer4_stride_one(layer4: nn.Sequential, dilation: int) -> None:
    """Make layer4 keep the C4 resolution, in place.

    ``dilation=1``: only the first stride becomes 1 (the authors' per-box head, run on 7x7 crops).
    ``dilation=2``: as torchvision's ``replace_stride_with_dilation`` (first block dilation 1, later blocks 2),
    which keeps the receptive field the weights were trained with when run on the whole map.
    """
    for block_index, block in enumerate(layer4):
        for name, module in block.named_modules():
            if not isinstance(module, nn.Conv2d):
                continue
            module.stride = (1, 1)
            if module.kernel_size == (3, 3) and block_index > 0 and not name.startswith("downsample"):
                module.dilation = (dilation, dilation)
                module.padding = (dilation, dilation)


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
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.backbone_weights: no such file: {path}")
    if path.suffix == ".pkl":
        with path.open("rb") as f:
            data = pickle.load(f, encoding="latin1")  # Detectron (Python 2) pickles
    else:
        data = torch.load(path, map_location="cpu", weights_only=True)
    for container in ("model", "state_dict", "blobs"):
        if isinstance(data, dict) and isinstance(data.get(container), dict):
            data = data[container]
    if not isinstance(data, dict) or not data:
        raise ValueError(f"model.backbone_weights: {path} holds no state dict (got {type(data).__name__})")
    return data


class FeatureCache:
    """Least-recently-used store of per-image maps keyed by image id (CPU copies keep device memory free)."""

    def __init__(self, max_images: int):
        self.max_images = max_images
        self._maps: OrderedDict[str, Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._maps)

    def get(self, image_id: str) -> Optional[Tensor]:
        value = self._maps.get(image_id)
        if value is not None:
            self._maps.move_to_end(image_id)
        return value

    def put(self, image_id: str, value: Tensor) -> None:
        self._maps[image_id] = value
        self._maps.move_to_end(image_id)
        while len(self._maps) > self.max_images:
            self._maps.popitem(last=False)

    def clear(self) -> None:
        self._maps.clear()


class ResNetBackbone(nn.Module):
    """ResNet trunk (stem..layer3 = C4) plus a stride-1 layer4 used per box or per image.

    Args:
        name: see :func:`build_resnet`.
        box_head: ``faithful`` or ``fast`` (see the module docstring).
        weights: local checkpoint path or None (random init).
        stride_in_1x1: MSRA/Caffe stride placement.
        frozen: no gradients and BatchNorm always in eval mode. Default True.
        output_size: RoIAlign grid. Default 7.
        sampling_ratio: RoIAlign samples per bin side. Default 2.
        roi_align_avg: the fused RoIAlign+mean to use for the fast head (native or reference).
        channels_last: run convolutions in channels_last.
        cache_max_images: > 0 enables the per-image map cache (needs ``frozen``).
    """

    def __init__(
        self,
        name: str = "resnet101",
        box_head: str = "faithful",
        weights: Optional[str] = None,
        stride_in_1x1: bool = False,
        frozen: bool = True,
        output_size: int = 7,
        sampling_ratio: int = 2,
        roi_align_avg: Optional[Callable[..., Tensor]] = None,
        channels_last: bool = False,
        cache_max_images: int = 0,
    ):
        super().__init__()
        if box_head not in ("faithful", "fast"):
            raise ValueError(f"model.box_head must be 'faithful' or 'fast', got {box_head!r}")
        resnet = build_resnet(name, stride_in_1x1)
        if weights is not None:
            mapped, _ = map_resnet_state_dict(load_checkpoint_file(weights))
            expected = {k for k in resnet.state_dict() if not k.endswith("num_batches_tracked")}
            missing = sorted(expected - set(mapped))
            if missing:
                raise ValueError(
                    f"model.backbone_weights: {weights} lacks {len(missing)} ResNet weights, e.g. {missing[:5]}"
                )
            resnet.load_state_dict({k: v for k, v in mapped.items() if k in expected}, strict=False)
        self.box_head = box_head
        self.body = nn.Sequential(
            resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1, resnet.layer2, resnet.layer3
        )
        self.layer4 = resnet.layer4
        set_layer4_stride_one(self.layer4, dilation=2 if box_head == "fast" else 1)
        self.c4_channels = _out_channels(resnet.layer3)
        self.out_channels = _out_channels(resnet.layer4)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.roi_align_avg = roi_align_avg
        self.channels_last = channels_last
        self.frozen = frozen
        self.cache = FeatureCache(cache_max_images) if cache_max_images > 0 else None
        if self.cache is not None and not frozen:
            raise ValueError("model.cache_features needs a frozen backbone")
        if frozen:
            self.requires_grad_(False)
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.train(self.training)  # a frozen backbone starts (and stays) in eval mode

    def train(self, mode: bool = True) -> "ResNetBackbone":
        # A frozen backbone keeps its BatchNorm statistics: always eval.
        return super().train(mode and not self.frozen)

    def _maps_of(self, images: Tensor) -> Tensor:
        """[N, 3, H, W] -> the map the box head pools from: C4 (faithful) or dilated layer4 (fast)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        maps = self.body(images)  # [N, C4, H/16, W/16]
        if self.box_head == "fast":
            maps = self.layer4(maps)  # [N, C5, H/16, W/16], stride 1 + dilation keeps the resolution
        return maps

    def image_maps(self, images: Tensor, image_sizes: Tensor, image_ids: Optional[Sequence[str]] = None) -> Tensor:
        """Feature maps of a batch of images, from the cache where possible.

        Args:
            images (Tensor[B, 3, H, W]): normalised, zero-padded images.
            image_sizes (Tensor[B, 2]): (height, width) of each image before padding.
            image_ids: one id per image; required when the cache is on.

        Returns:
            Tensor[B, C, ceil(H/16), ceil(W/16)]: C4 (faithful head) or the dilated layer4 map (fast head).
            With the cache on, each image's map is computed from its own unpadded pixels (so it does not
            depend on the batch it first appeared in) and zero-padded.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if self.cache is None:
                return self._maps_of(images)
            if image_ids is None or len(image_ids) != images.shape[0]:
                raise ValueError(
                    "batch.meta[*]['image_id'] is required for every image when model.cache_features is on"
                )
            per_image = []
            for b, image_id in enumerate(image_ids):
                cached = self.cache.get(image_id)
                if cached is None:
                    h, w = (int(s) for s in image_sizes[b])
                    cached = self._maps_of(images[b : b + 1, :, :h, :w])[0].detach().cpu()
                    self.cache.put(image_id, cached)
                per_image.append(cached)
            height = -(-images.shape[2] // C4_STRIDE)
            width = -(-images.shape[3] // C4_STRIDE)
            out = images.new_zeros((len(per_image), per_image[0].shape[0], height, width), dtype=per_image[0].dtype)
            for b, m in enumerate(per_image):
                out[b, :, : m.shape[1], : m.shape[2]] = m.to(images.device, non_blocking=True)
            return out

    def box_features(self, maps: Tensor, rois: Tensor) -> Tensor:
        """Pooled ResNet features of boxes.

        Args:
            maps (Tensor[B, C, h, w]): from :meth:`image_maps`.
            rois (Tensor[N, 5]): (batch index, x1, y1, x2, y2) in resized-image pixels.

        Returns:
            Tensor[N, C5]: spatially averaged layer4 features (2048 for ResNet-50/101, 512 for 10/18).
        """
        scale = 1.0 / C4_STRIDE
        rois = rois.to(maps.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if rois.shape[0] == 0:
                return maps.new_zeros((0, self.out_channels))
            if self.box_head == "fast":
                return self.roi_align_avg(maps, rois, self.output_size, scale, self.sampling_ratio, True)  # [N, C5]
            return self._layer4_crops(maps, rois).mean((2, 3))  # [N, C5, 7, 7] -> [N, C5]

    def _layer4_crops(self, maps: Tensor, rois: Tensor) -> Tensor:
        """Faithful head: RoIAlign P x P on C4, then layer4 per box: [N, C4, P, P] -> [N, C5, P, P]."""
        scale = 1.0 / C4_STRIDE
        crops = torchvision.ops.roi_align(maps, rois, self.output_size, scale, self.sampling_ratio, aligned=True)
        if self.channels_last:
            crops = crops.contiguous(memory_format=torch.channels_last)
        return self.layer4(crops)

    def box_grid_features(self, maps: Tensor, rois: Tensor, grid: int) -> Tensor:
        """Layer4 features of boxes averaged over each cell of a ``grid`` x ``grid`` split of the box, so they
        keep where inside the box the activations sit.

        The fast head pools each cell as a box of its own with the fused RoIAlign+mean op (ceil(P / grid) bins
        per side); the faithful head splits the P x P layer4 output of the box by adaptive average pooling.

        Args:
            maps (Tensor[B, C, h, w]): from :meth:`image_maps`.
            rois (Tensor[N, 5]): (batch index, x1, y1, x2, y2) in resized-image pixels.
            grid: cells per side (1 = :meth:`box_features`).

        Returns:
            Tensor[N, C5 * grid * grid]: channel-major (per channel, cells in row-major order).
        """
        scale = 1.0 / C4_STRIDE
        rois = rois.to(maps.dtype)
        n = rois.shape[0]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if n == 0:
                return maps.new_zeros((0, self.out_channels * grid * grid))
            if self.box_head == "fast":
                bins = -(-self.output_size // grid)
                cells = grid_cells(rois, grid)  # [N * g * g, 5]
                pooled = self.roi_align_avg(maps, cells, bins, scale, self.sampling_ratio, True)  # [N g g, C5]
                return pooled.reshape(n, grid * grid, -1).transpose(1, 2).flatten(1)
            return nn.functional.adaptive_avg_pool2d(self._layer4_crops(maps, rois), grid).flatten(1)  # [N, C5 g g]

    def box_features_with_grid(self, maps: Tensor, rois: Tensor, grid: int) -> tuple[Tensor, Tensor]:
        """:meth:`box_features` and :meth:`box_grid_features` of the same boxes; the faithful head runs its
        per-box layer4 once for both.

        Returns:
            (Tensor[N, C5], Tensor[N, C5 * grid * grid]).
        """
        if self.box_head == "fast" or rois.shape[0] == 0:
            return self.box_features(maps, rois), self.box_grid_features(maps, rois, grid)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            crops = self._layer4_crops(maps, rois.to(maps.dtype))  # [N, C5, P, P]
            return crops.mean((2, 3)), nn.functional.adaptive_avg_pool2d(crops, grid).flatten(1)


def grid_cells(rois: Tensor, grid: int) -> Tensor:
    """The ``grid`` x ``grid`` cells of each box, row-major, as RoIs.

    Args:
        rois (Tensor[N, 5]): (batch index, x1, y1, x2, y2).

    Returns:
        Tensor[N * grid * grid, 5]: cell (r, c) of box i at row ``i * grid * grid + r * grid + c``.
    """
    index, x1, y1, x2, y2 = rois.unbind(1)
    steps = torch.arange(grid + 1, dtype=rois.dtype, device=rois.device) / grid  # [g + 1]
    xs = x1[:, None] + (x2 - x1)[:, None] * steps  # [N, g + 1]
    ys = y1[:, None] + (y2 - y1)[:, None] * steps
    n = rois.shape[0]
    cells = torch.stack(
        (
            index[:, None, None].expand(n, grid, grid),
            xs[:, None, :-1].expand(n, grid, grid),
            ys[:, :-1, None].expand(n, grid, grid),
            xs[:, None, 1:].expand(n, grid, grid),
            ys[:, 1:, None].expand(n, grid, grid),
        ),
        dim=-1,
    )  # [N, g (rows), g (columns), 5]
    return cells.reshape(-1, 5)


def _out_channels(layer: nn.Sequential) -> int:
    last = layer[-1]
    return (last.bn3 if isinstance(last, Bottleneck) else last.bn2).num_features
