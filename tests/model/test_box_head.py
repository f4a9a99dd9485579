import torch
import torchvision

from relground.model.backbone import ResNetBackbone
from relground.model.box_head import BoxHead, spatial_features


def test_spatial_features_are_normalised_geometry():
    boxes = torch.tensor([[[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 100.0, 80.0]]])
    features = spatial_features(boxes, torch.tensor([[80, 100]]))  # height 80, width 100
    torch.testing.assert_close(features[0, 0], torch.tensor([0.1, 0.25, 0.5, 0.75, 40 * 40 / 8000]))
    torch.testing.assert_close(features[0, 1], torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]))


def test_box_head_embeds_valid_boxes_and_keeps_padding_out_of_batchnorm():
    torch.manual_seed(0)
    backbone = ResNetBackbone("resnet10", box_head="faithful")
    head = BoxHead(backbone.out_channels, 16, spatial_feature=True).train()
    images = torch.randn(2, 3, 64, 96)
    sizes = torch.tensor([[64, 96], [48, 80]])
    boxes = torch.tensor(
        [
            [[4.0, 6.0, 50.0, 40.0], [20.0, 10.0, 90.0, 60.0], [0.0, 0.0, 0.0, 0.0]],
            [[1.0, 2.0, 30.0, 40.0], [10.0, 10.0, 70.0, 45.0], [5.0, 5.0, 20.0, 20.0]],
        ]
    )
    valid = torch.tensor([[True, True, False], [True, True, True]])
    maps = backbone.image_maps(images, sizes)
    out = head(backbone, maps, boxes, valid, sizes)
    assert out.shape == (2, 3, 16) and out[0, 2].abs().sum() == 0
    # Independent path: torchvision RoIAlign -> layer4 -> mean -> concat geometry -> Linear -> ReLU -> batch BN.
    rows = []
    for b, m in valid.nonzero().tolist():
        roi = torch.cat((torch.tensor([float(b)]), boxes[b, m]))[None]
        with torch.no_grad():
            pooled = backbone.layer4(torchvision.ops.roi_align(maps, roi, 7, 1 / 16, 2, aligned=True)).mean((2, 3))[0]
        geometry = spatial_features(boxes[b : b + 1, m : m + 1], sizes[b : b + 1])[0, 0]
        rows.append(torch.relu(head.fc(torch.cat((pooled, geometry)))))
    rows = torch.stack(rows)
    expected = (rows - rows.mean(0)) / torch.sqrt(rows.var(0, unbiased=False) + head.norm.eps)
    torch.testing.assert_close(out[valid], expected * head.norm.weight + head.norm.bias, atol=1e-5, rtol=1e-4)


def test_box_input_norm_standardises_pooled_features_per_channel_before_the_linear_layer():
    torch.manual_seed(0)
    from relground.ops._reference import _roi_align_avg_reference

    backbone = ResNetBackbone("resnet10", box_head="fast", roi_align_avg=_roi_align_avg_reference)
    head = BoxHead(backbone.out_channels, 16, input_norm=True).train()
    images = torch.randn(1, 3, 64, 64)
    sizes = torch.tensor([[64, 64]])
    boxes = torch.tensor([[[4.0, 6.0, 50.0, 40.0], [20.0, 10.0, 60.0, 60.0], [0.0, 0.0, 30.0, 30.0], [1, 1, 2, 2.0]]])
    valid = torch.tensor([[True, True, True, False]])
    maps = backbone.image_maps(images, sizes)
    out = head(backbone, maps, boxes, valid, sizes)
    rois = torch.cat((torch.zeros(3, 1), boxes[0, :3]), dim=1)
    with torch.no_grad():
        pooled = torchvision.ops.roi_align(maps, rois, 7, 1 / 16, 2, aligned=True).mean((2, 3))  # [3, C]
    centred = (pooled - pooled.mean(0)) / torch.sqrt(pooled.var(0, unbiased=False) + head.input_norm.eps)
    rows = torch.relu(head.fc(centred))
    expected = (rows - rows.mean(0)) / torch.sqrt(rows.var(0, unbiased=False) + head.norm.eps)
    torch.testing.assert_close(out[valid], expected * head.norm.weight + head.norm.bias, atol=1e-4, rtol=1e-3)
    # Refined boxes (running_stats=True) use the running estimates and leave them as they are.
    before = head.input_norm.running_mean.clone()
    head(backbone, maps, boxes, valid, sizes, running_stats=True)
    torch.testing.assert_close(head.input_norm.running_mean, before)


def test_spatial_scale_multiplies_only_the_geometry_columns_of_the_linear_input():
    torch.manual_seed(0)
    from relground.ops._reference import _roi_align_avg_reference

    backbone = ResNetBackbone("resnet10", box_head="fast", roi_align_avg=_roi_align_avg_reference)
    head = BoxHead(backbone.out_channels, 16, spatial_feature=True, spatial_scale=10.0).eval()
    images = torch.randn(1, 3, 64, 64)
    sizes = torch.tensor([[64, 64]])
    boxes = torch.tensor([[[4.0, 6.0, 50.0, 40.0], [20.0, 10.0, 60.0, 60.0]]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    maps = backbone.image_maps(images, sizes)
    _, pooled = head(backbone, maps, boxes, valid, sizes, return_pooled=True)
    rois = torch.cat((torch.zeros(2, 1), boxes[0]), dim=1)
    with torch.no_grad():
        conv = torchvision.ops.roi_align(maps, rois, 7, 1 / 16, 2, aligned=True).mean((2, 3))
    torch.testing.assert_close(pooled[0, :, :-5], conv, atol=1e-5, rtol=1e-4)  # appearance columns untouched
    torch.testing.assert_close(pooled[0, :, -5:], 10.0 * spatial_features(boxes, sizes)[0])


def test_regression_grid_returns_layer4_features_per_grid_cell_with_geometry():
    torch.manual_seed(0)
    from relground.ops._reference import _roi_align_avg_reference

    backbone = ResNetBackbone("resnet10", box_head="fast", roi_align_avg=_roi_align_avg_reference)
    head = BoxHead(backbone.out_channels, 16, spatial_feature=True, regression_grid=2).eval()
    assert head.pooled_features == backbone.out_channels * 4 + 5
    images = torch.randn(1, 3, 64, 64)
    sizes = torch.tensor([[64, 64]])
    boxes = torch.tensor([[[4.0, 6.0, 50.0, 40.0], [20.0, 10.0, 60.0, 60.0], [0, 0, 1, 1.0]]])
    valid = torch.tensor([[True, True, False]])
    maps = backbone.image_maps(images, sizes)
    features, pooled = head(backbone, maps, boxes, valid, sizes, return_pooled=True)
    cells = []  # each quadrant pooled as a box of its own (4 x 4 bins = ceil(7 / 2)), row-major
    for x1, y1, x2, y2 in boxes[0, :2].tolist():
        xm, ym = (x1 + x2) / 2, (y1 + y2) / 2
        quads = [[y1, ym, x1, xm], [y1, ym, xm, x2], [ym, y2, x1, xm], [ym, y2, xm, x2]]
        rois = torch.tensor([[0.0, a, b, c, d] for b, d, a, c in quads])  # (index, x1, y1, x2, y2)
        with torch.no_grad():
            cells.append(torchvision.ops.roi_align(maps, rois, 4, 1 / 16, 2, aligned=True).mean((2, 3)).T.flatten())
    cells = torch.stack(cells)  # [2, C * 4], channel-major
    torch.testing.assert_close(pooled[0, :2, :-5], cells, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pooled[0, :2, -5:], spatial_features(boxes, sizes)[0, :2])
    assert pooled[0, 2].abs().sum() == 0 and features.shape == (1, 3, 16)  # padding stays zero
    # The matching feature is unchanged by the option.
    plain = BoxHead(backbone.out_channels, 16, spatial_feature=True).eval()
    plain.load_state_dict(head.state_dict(), strict=False)
    torch.testing.assert_close(plain(backbone, maps, boxes, valid, sizes), features)
