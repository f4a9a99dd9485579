"""Box features x_o: pooled ResNet features (+ optional spatial feature) -> Linear -> ReLU -> BatchNorm to d."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from relground.model.backbone import ImageMaps, ResNetBackbone
from relground.model.layers import masked_batch_norm, masked_batch_norm_static, per_item_batch_norm

SPATIAL_DIM = 5  # x1/W, y1/H, x2/W, y2/H, area/(W*H)


def spatial_features(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """Normalised box geometry (paper Sec. 3.2.1; not used in the authors' final code).

    Args:
        boxes (Tensor[B, X, 4]): xyxy, resized-image pixels.
        image_sizes (Tensor[B, 2]): (height, width) of each resized image.

    Returns:
        Tensor[B, X, 5]: (x1/W, y1/H, x2/W, y2/H, area/(W*H)), in [0, 1] for boxes inside the image.
    """
    height = image_sizes[:, 0].to(boxes.dtype)[:, None]  # [B, 1]
    width = image_sizes[:, 1].to(boxes.dtype)[:, None]
    x1, y1, x2, y2 = boxes.unbind(-1)  # [B, X] each
    area = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    return torch.stack((x1 / width, y1 / height, x2 / width, y2 / height, area / (width * height)), dim=-1)


class BoxHead(nn.Module):
    """Embeds boxes of a batch into d-dimensional features (shared by both stages).

    Args:
        in_channels: width of the pooled ResNet feature (``ResNetBackbone.out_channels``).
        hidden_dim: d. Authors: 1024.
        spatial_feature: concatenate :func:`spatial_features` before the Linear layer.
        input_norm: standardise the pooled input per channel (BatchNorm without affine) before the Linear layer.
            Pooled post-ReLU maps are all positive with a large shared component, so each unit of the Linear is
            on or off for nearly every box (median per-unit std / |mean| 0.6 on the synthetic benchmark) and,
            at a high learning rate, most stay off for good (80% of the units were never active after 800
            steps at lr 0.2). Centred inputs make every unit vary from box to box. Authors: no input norm.
        spatial_scale: factor on the spatial columns (after the input norm), so that the geometry is not 5
            equal voices among hundreds of channels. Default 1.
        regression_grid: 0 = the ``return_pooled`` feature is the Linear layer's input; g > 0 = it is the
            box's layer4 features on a g x g grid (:meth:`ResNetBackbone.box_grid_features`) plus the same
            geometry, standardised by its own BatchNorm when ``input_norm``. Default 0.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_dim: int,
        spatial_feature: bool = False,
        input_norm: bool = False,
        spatial_scale: float = 1.0,
        regression_grid: int = 0,
        static_shapes: bool = False,
        norm_per_image: bool = False,
    ):
        super().__init__()
        # norm_per_image: x_o's BatchNorm statistics per image (model.box_norm: image, the authors)
        self.norm_per_image = norm_per_image
        # static_shapes: pool every box of the padded batch and mask, instead of selecting the valid ones
        # (a data-dependent count, read on the host); see ModelConfig.static_shapes
        self.static_shapes = static_shapes
        if regression_grid < 0:
            raise ValueError(f"model.regression_grid must be >= 0, got {regression_grid}")
        self.spatial_feature = spatial_feature
        self.spatial_scale = spatial_scale
        self.regression_grid = regression_grid
        in_features = in_channels + (SPATIAL_DIM if spatial_feature else 0)
        self.input_norm = nn.BatchNorm1d(in_features, affine=False) if input_norm else None
        self.fc = nn.Linear(in_features, hidden_dim)
        self.norm = nn.BatchNorm1d(hidden_dim)
        self.grid_features = in_channels * regression_grid**2 + (SPATIAL_DIM if spatial_feature else 0)
        self.grid_norm = nn.BatchNorm1d(self.grid_features, affine=False) if input_norm and regression_grid else None

    @property
    def pooled_features(self) -> int:
        """Width of the ``return_pooled`` feature."""
        return self.grid_features if self.regression_grid else self.fc.in_features

    def _with_geometry(
        self,
        pooled: Tensor,
        geometry: Optional[Tensor],
        norm: Optional[nn.Module],
        running_stats: bool,
        rows: Optional[Tensor] = None,
    ) -> Tensor:
        """[pooled, geometry] standardised by ``norm`` over ``rows`` (bool [N]; None = every row), the geometry
        columns then scaled by ``spatial_scale``."""
        if geometry is not None:
            pooled = torch.cat((pooled, geometry.to(pooled.dtype)), dim=1)
        if norm is not None and rows is not None:
            pooled = masked_batch_norm_static(norm, pooled, rows, running_stats)
        elif norm is not None:
            every_row = torch.ones(pooled.shape[0], dtype=torch.bool, device=pooled.device)
            pooled = masked_batch_norm(norm, pooled, every_row, running_stats)
        if geometry is not None and self.spatial_scale != 1.0:
            scale = pooled.new_ones(pooled.shape[1])
            scale[-SPATIAL_DIM:] = self.spatial_scale
            pooled = pooled * scale
        return pooled

    def forward(
        self,
        backbone: ResNetBackbone,
        maps: Tensor | ImageMaps,
        boxes: Tensor,
        valid: Tensor,
        image_sizes: Tensor,
        running_stats: bool = False,
        return_pooled: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """
        Args:
            backbone: pools the boxes from ``maps`` (faithful or fast head).
            maps (Tensor[B, C, h, w] or ImageMaps): ``backbone.image_maps(...)``, or
                ``backbone.shared_image_maps(...)`` (items of one image read one map row).
            boxes (Tensor[B, X, 4]): xyxy resized-image pixels (proposals, or refined boxes flattened to X = P*K).
            valid (Tensor[B, X]): bool; invalid boxes are not pooled, get zero features and stay out of BatchNorm.
            image_sizes (Tensor[B, 2]): (height, width).
            running_stats: BatchNorm with the running statistics, which stay unchanged (the refined top-K boxes
                of stage 2: all object-like, so their batch statistics differ from the proposals' and would
                normalise the two stages' inputs of the shared F_cls differently).
            return_pooled: also return the feature F_reg may read: the Linear layer's input (pooled ResNet
                feature, geometry, input norm), or with ``regression_grid`` the grid feature.

        Returns:
            Tensor[B, X, d], and with ``return_pooled`` Tensor[B, X, :attr:`pooled_features`] (zeros for invalid
            boxes).
        """
        if self.static_shapes:
            return self._forward_static(backbone, maps, boxes, valid, image_sizes, running_stats, return_pooled)
        B, X, _ = boxes.shape
        batch_index, box_index = valid.nonzero(as_tuple=True)  # [N] each
        # [N, 5]; detached: RoIAlign has no gradient w.r.t. boxes
        map_index = batch_index
        if isinstance(maps, ImageMaps):
            map_index, maps = maps.index[batch_index], maps.maps
        rois = torch.cat((map_index[:, None].to(boxes.dtype), boxes[batch_index, box_index]), dim=1).detach()
        geometry = spatial_features(boxes, image_sizes)[batch_index, box_index] if self.spatial_feature else None
        hidden, pooled = self._pool_rows(backbone, maps, rois, geometry, running_stats, return_pooled)  # [N, d], [N, *]
        full = hidden.new_zeros((B, X, hidden.shape[1]))
        full[batch_index, box_index] = hidden
        norm = per_item_batch_norm if self.norm_per_image else masked_batch_norm
        features = norm(self.norm, full, valid, running_stats)  # BatchNorm over the real boxes only
        if not return_pooled:
            return features
        pooled_full = pooled.new_zeros((B, X, pooled.shape[1]))
        pooled_full[batch_index, box_index] = pooled
        return features, pooled_full

    def _pool_rows(
        self,
        backbone: ResNetBackbone,
        maps: Tensor,
        rois: Tensor,
        geometry: Optional[Tensor],
        running_stats: bool,
        return_pooled: bool,
        rows: Optional[Tensor] = None,
    ) -> tuple[Tensor, Tensor]:
        """The rows of ``rois`` [N, 5] through RoI pooling, geometry, input norm and F_cls's Linear + ReLU.

        Shared by both forms of :meth:`forward`, which differ only in which rows they pool and how the rows return
        to [B, X]. Returns ``(hidden [N, d], pooled)``: ``pooled`` is the feature F_reg may read (the grid feature
        with ``regression_grid`` and ``return_pooled``, else the Linear layer's input). ``rows`` (bool [N]): the
        real boxes among the rows, for the norms (None = every row).
        """
        grid = None
        if return_pooled and self.regression_grid:
            average, grid = backbone.box_features_with_grid(maps, rois, self.regression_grid)  # [N, C5], [N, C5 g g]
        else:
            average = backbone.box_features(maps, rois)  # [N, C5]
        pooled = self._with_geometry(average, geometry, self.input_norm, running_stats, rows)
        hidden = torch.relu(self.fc(pooled))  # [N, d]
        if grid is not None:
            pooled = self._with_geometry(grid, geometry, self.grid_norm, running_stats, rows)
        return hidden, pooled

    def _forward_static(
        self,
        backbone: ResNetBackbone,
        maps: Tensor | ImageMaps,
        boxes: Tensor,
        valid: Tensor,
        image_sizes: Tensor,
        running_stats: bool,
        return_pooled: bool,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """:meth:`forward` over all B x X boxes (padding pooled too, then zeroed): shapes fixed by the batch's."""
        B, X, _ = boxes.shape
        rows = valid.reshape(B * X)  # [N = B X]
        map_index = torch.arange(B, device=boxes.device)
        if isinstance(maps, ImageMaps):
            map_index, maps = maps.index, maps.maps
        map_index = map_index[:, None].expand(B, X).reshape(B * X, 1).to(boxes.dtype)
        rois = torch.cat((map_index, boxes.reshape(B * X, 4)), dim=1).detach()  # [N, 5]
        geometry = spatial_features(boxes, image_sizes).reshape(B * X, -1) if self.spatial_feature else None
        hidden, pooled = self._pool_rows(backbone, maps, rois, geometry, running_stats, return_pooled, rows)
        hidden = hidden.reshape(B, X, -1)  # [B, X, d]
        zero = torch.zeros((), dtype=hidden.dtype, device=hidden.device)
        hidden = torch.where(valid[..., None], hidden, zero)
        features = masked_batch_norm_static(self.norm, hidden, valid, running_stats)  # over the real boxes only
        if not return_pooled:
            return features
        pooled = pooled.reshape(B, X, -1)
        pooled = torch.where(valid[..., None], pooled, torch.zeros((), dtype=pooled.dtype, device=pooled.device))
        return features, pooled
