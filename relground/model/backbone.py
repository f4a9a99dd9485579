"""The frozen ResNet of ReIR: C4 maps of whole images and 2048-d (or 512-d) features of boxes.

Two ways to turn C4 into box features (``ModelConfig.box_head``):

* ``faithful`` (the authors): RoIAlign 7x7 on C4 (stride 16, sampling 2, aligned) -> layer4 with its first
  stride set to 1, run on every box -> spatial mean. Per-box layer4 costs M x the layer4 of a 7x7 map.
* ``fast``: layer4 with stride 1 and dilation 2 (torchvision's ``replace_stride_with_dilation``) on the whole
  C4 map once per image -> :func:`relground.ops.roi_align_avg` (fused RoIAlign + mean). No per-box layer4.

Weights come from a local file in torchvision, detectron2, maskrcnn-benchmark or Detectron/Caffe naming
(:mod:`relground.model.resnet_weights`). The images are normalised by the data layer (Caffe BGR mean or
torchvision mean/std, matching the weights); the backbone needs to know nothing else.

Precision: under bf16/fp16 autocast the convolutions run in half precision, but box coordinates never do:
every pooling call gets float32 RoIs and float32 maps (:func:`_pool_inputs`), because a bf16 coordinate is
rounded to 2-pixel steps between 256 and 511 px and 4-pixel steps above 512 px.

Speed of a frozen backbone: no autograd graph (``torch.no_grad`` inside), optional channels_last, optional
BatchNorm folded into the preceding convolutions once at build time (``fold_bn``; exact in real arithmetic,
not bit-identical in float32, hence off by default), and one pass per distinct image of a batch
(:meth:`ResNetBackbone.shared_image_maps`). Construction and surgery of the ResNet: :mod:`relground.model.resnet`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torchvision
from torch import Tensor, nn

from relground.model.resnet import build_resnet, fold_batch_norms, out_channels, set_layer4_stride_one
from relground.model.resnet_weights import load_checkpoint_file, map_resnet_state_dict

__all__ = [
    "C4_STRIDE",
    "RANDOM_WEIGHTS",
    "FeatureCache",
    "ImageMaps",
    "ResNetBackbone",
    "build_resnet",  # re-exported from resnet (construction and surgery)
    "fold_batch_norms",
    "grid_cells",
    "load_checkpoint_file",  # re-exported: the weight-file helpers live in resnet_weights
    "map_resnet_state_dict",
    "set_layer4_stride_one",
]

C4_STRIDE = 16  # stem (4) x layer2 (2) x layer3 (2)
RANDOM_WEIGHTS = "random"  # model.backbone_weights: random init on purpose (the synthetic benchmark)


def _pool_inputs(maps: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
    """``(maps, rois)`` for a pooling op, never in less than float32.

    The ops need one dtype for both; rounding the coordinates to a half-precision map's dtype would move boxes
    by up to 4 px (bf16 above 512 px), so a half-precision map is widened instead. Under autocast the ops'
    autocast rules would widen the map anyway (torchvision's ``roi_align`` and ``roi_align_avg`` run in
    float32), so this costs nothing extra there.

    Returns:
        (Tensor[B, C, h, w], Tensor[N, 5]) in float32 (float64 when ``maps`` is float64).
    """
    dtype = torch.float64 if maps.dtype == torch.float64 else torch.float32
    return maps.to(dtype), rois.to(dtype)


def _pooled_dtype(maps: Tensor, pooled: Tensor) -> Tensor:
    """Pooled features back in the map's dtype outside autocast; float32 under it (what the ops' autocast gives)."""
    return pooled if torch.is_autocast_enabled(maps.device.type) else pooled.to(maps.dtype)


@dataclass
class ImageMaps:
    """The maps of a batch's distinct images and, per batch item, which of them it reads.

    Several captions of one image (an image-grouped batch) share one map: the backbone runs once per image.
    """

    maps: Tensor  # [G, C, h, w], G distinct images of the batch
    index: Tensor  # [B] long, batch item -> row of ``maps``


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
        weights: local checkpoint path, or None / ``"random"`` (random init).
        stride_in_1x1: MSRA/Caffe stride placement.
        frozen: no gradients and BatchNorm always in eval mode. Default True.
        output_size: RoIAlign grid. Default 7.
        sampling_ratio: RoIAlign samples per bin side. Default 2.
        roi_align_avg: the fused RoIAlign+mean to use for the fast head (native or reference).
        channels_last: run convolutions in channels_last.
        cache_max_images: > 0 enables the per-image map cache (needs ``frozen``).
        fold_bn: fold every BatchNorm into its convolution at build time (needs ``frozen``). Default False.
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
        fold_bn: bool = False,
    ):
        super().__init__()
        if box_head not in ("faithful", "fast"):
            raise ValueError(f"model.box_head must be 'faithful' or 'fast', got {box_head!r}")
        resnet = build_resnet(name, stride_in_1x1)
        if weights is not None and weights != RANDOM_WEIGHTS:
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
        self.c4_channels = out_channels(resnet.layer3)
        self.out_channels = out_channels(resnet.layer4)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.roi_align_avg = roi_align_avg
        self.channels_last = channels_last
        self.frozen = frozen
        self.share_maps = True  # items of one image share its map (see shared_image_maps); False: one pass per item
        self.cache = FeatureCache(cache_max_images) if cache_max_images > 0 else None
        if self.cache is not None and not frozen:
            raise ValueError("model.cache_features needs a frozen backbone")
        if fold_bn and not frozen:
            raise ValueError("model.fold_backbone_bn needs a frozen backbone (a training BatchNorm cannot be folded)")
        if fold_bn:
            fold_batch_norms(self)
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

    def shared_image_maps(
        self,
        images: Tensor,
        image_sizes: Tensor,
        image_ids: Optional[Sequence[str]] = None,
        image_index: Optional[Tensor] = None,
        image_firsts: Optional[Tensor] = None,
    ) -> ImageMaps:
        """:meth:`image_maps` run once per distinct image id of the batch (all items when ids are None).

        Items with the same id hold the same (padded) image, so the first one's map serves them all; the pooling
        ops then read row ``index[b]`` of the maps for item ``b``. With :attr:`share_maps` False every item runs.

        Args:
            images (Tensor[B, 3, H, W]), image_sizes (Tensor[B, 2]), image_ids: as :meth:`image_maps`.
            image_index (Tensor[B]), image_firsts (Tensor[G]): the batch's distinct images as tensors
                (``GroundingBatch.image_index`` / ``image_firsts``); when given, used instead of the ids, so no
                host work happens here (``model.static_shapes``; not with the cache).

        Returns:
            :class:`ImageMaps` with maps [G, C, ceil(H/16), ceil(W/16)], G = number of distinct ids.
        """
        b = images.shape[0]
        if image_index is not None and image_firsts is not None and self.cache is None:
            if not self.share_maps:
                return ImageMaps(self.image_maps(images, image_sizes), torch.arange(b, device=images.device))
            firsts = image_firsts.to(images.device)
            maps = self.image_maps(images.index_select(0, firsts), image_sizes.index_select(0, firsts))
            return ImageMaps(maps, image_index.to(images.device))
        if image_ids is None or not self.share_maps or len(set(image_ids)) == b:
            index = torch.arange(b, device=images.device)
            return ImageMaps(self.image_maps(images, image_sizes, image_ids), index)
        first: dict[str, int] = {}
        for item, image_id in enumerate(image_ids):
            first.setdefault(image_id, item)
        rows = {image_id: row for row, image_id in enumerate(first)}
        # Built on the host from the ids (already host strings) and copied without a sync.
        firsts = torch.tensor(list(first.values())).to(images.device, non_blocking=True)
        index = torch.tensor([rows[i] for i in image_ids]).to(images.device, non_blocking=True)
        sizes = image_sizes.index_select(0, firsts.to(image_sizes.device))
        maps = self.image_maps(images.index_select(0, firsts), sizes, list(first))
        return ImageMaps(maps, index)

    def box_features(self, maps: Tensor, rois: Tensor) -> Tensor:
        """Pooled ResNet features of boxes.

        Args:
            maps (Tensor[B, C, h, w]): from :meth:`image_maps`.
            rois (Tensor[N, 5]): (batch index, x1, y1, x2, y2) in resized-image pixels.

        Returns:
            Tensor[N, C5]: spatially averaged layer4 features (2048 for ResNet-50/101, 512 for 10/18).
        """
        scale = 1.0 / C4_STRIDE
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if rois.shape[0] == 0:
                return maps.new_zeros((0, self.out_channels))
            if self.box_head == "fast":
                maps32, rois32 = _pool_inputs(maps, rois)
                pooled = self.roi_align_avg(maps32, rois32, self.output_size, scale, self.sampling_ratio, True)
                return _pooled_dtype(maps, pooled)  # [N, C5]
            return self._layer4_crops(maps, rois).mean((2, 3))  # [N, C5, 7, 7] -> [N, C5]

    def _layer4_crops(self, maps: Tensor, rois: Tensor) -> Tensor:
        """Faithful head: RoIAlign P x P on C4, then layer4 per box: [N, C4, P, P] -> [N, C5, P, P]."""
        scale = 1.0 / C4_STRIDE
        maps32, rois32 = _pool_inputs(maps, rois)
        crops = torchvision.ops.roi_align(maps32, rois32, self.output_size, scale, self.sampling_ratio, aligned=True)
        crops = _pooled_dtype(maps, crops)  # layer4's weights are in the map's dtype outside autocast
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
        n = rois.shape[0]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if n == 0:
                return maps.new_zeros((0, self.out_channels * grid * grid))
            if self.box_head == "fast":
                bins = -(-self.output_size // grid)
                maps32, rois32 = _pool_inputs(maps, rois)
                cells = grid_cells(rois32, grid)  # [N * g * g, 5]
                pooled = self.roi_align_avg(maps32, cells, bins, scale, self.sampling_ratio, True)  # [N g g, C5]
                pooled = _pooled_dtype(maps, pooled)
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
            crops = self._layer4_crops(maps, rois)  # [N, C5, P, P]
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
