import pickle
import re

import pytest
import torch
import torchvision

from relground.model.backbone import (
    FeatureCache,
    ResNetBackbone,
    build_resnet,
    load_checkpoint_file,
    map_resnet_state_dict,
)
from relground.ops import _reference

# Independent forward renamings torchvision -> other conventions (the code under test maps the other way).


def _to_detectron2(key: str) -> str:
    key = re.sub(r"^conv1\.", "stem.conv1.", key)
    key = re.sub(r"^bn1\.", "stem.conv1.norm.", key)
    m = re.match(r"layer(\d)\.(\d+)\.(.*)", key)
    if m:
        stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
        rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
        rest = rest.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
        key = f"res{stage}.{block}.{rest}"
        if stage == 5:
            return "roi_heads." + key  # detectron2's Res5ROIHeads holds res5
    return "backbone." + key


def _to_maskrcnn_benchmark(key: str) -> str:
    if key.startswith("layer4."):
        return "roi_heads.box.feature_extractor.head." + key
    return "module.backbone.body." + re.sub(r"^(conv1|bn1)\.", r"stem.\1.", key)


def _to_caffe(key: str) -> str | None:
    suffix = {"weight": "s", "bias": "b"}
    if key == "conv1.weight":
        return "conv1_w"
    m = re.match(r"bn1\.(weight|bias)$", key)
    if m:
        return f"res_conv1_bn_{suffix[m.group(1)]}"
    m = re.match(r"layer(\d)\.(\d+)\.(conv(\d)|bn(\d)|downsample\.(\d))\.(weight|bias)$", key)
    if not m:
        return None  # running statistics: Caffe has none
    stage, block = int(m.group(1)) + 1, m.group(2)
    letter = "abc"
    if m.group(4):
        return f"res{stage}_{block}_branch2{letter[int(m.group(4)) - 1]}_w"
    if m.group(5):
        return f"res{stage}_{block}_branch2{letter[int(m.group(5)) - 1]}_bn_{suffix[m.group(7)]}"
    if m.group(6) == "0":
        return f"res{stage}_{block}_branch1_w"
    return f"res{stage}_{block}_branch1_bn_{suffix[m.group(7)]}"


def _torchvision_state(name: str = "resnet101") -> dict:
    torch.manual_seed(0)
    model = build_resnet(name)
    for module in model.modules():  # non-trivial statistics so that a mix-up shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.fixture(scope="module")
def resnet101_state():
    return _torchvision_state("resnet101")


@pytest.mark.parametrize("rename", [_to_detectron2, _to_maskrcnn_benchmark, lambda k: k])
def test_resnet101_key_mapping_round_trips(rename, resnet101_state):
    state = resnet101_state
    renamed = {rename(k): v for k, v in state.items()}
    renamed["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(3)  # detector parts are ignored
    mapped, ignored = map_resnet_state_dict(renamed)
    assert set(mapped) == set(state)
    assert all(torch.equal(mapped[k], state[k]) for k in state)
    assert ignored == ["roi_heads.box_predictor.cls_score.weight"]


def test_caffe_blobs_map_and_reproduce_scale_and_bias(resnet101_state):
    state = resnet101_state
    blobs = {}
    for k, v in state.items():
        name = _to_caffe(k)
        if name is not None:
            blobs[name] = v.numpy()  # Detectron pickles hold numpy arrays
    mapped, _ = map_resnet_state_dict(blobs)
    assert set(mapped) == set(state)
    assert torch.equal(mapped["layer3.22.conv2.weight"], state["layer3.22.conv2.weight"])
    # A frozen Caffe BN computes x * scale + bias: torchvision's eval BN with the added statistics does too.
    bn = torch.nn.BatchNorm2d(256).eval()
    bn.load_state_dict(
        {k[len("layer1.0.downsample.1.") :]: v for k, v in mapped.items() if k.startswith("layer1.0.downsample.1.")},
        strict=False,
    )
    x = torch.randn(2, 256, 3, 3)
    scale, bias = state["layer1.0.downsample.1.weight"], state["layer1.0.downsample.1.bias"]
    torch.testing.assert_close(bn(x), x * scale[:, None, None] + bias[:, None, None], atol=1e-5, rtol=1e-5)


def test_loading_weights_from_files(tmp_path):
    state = _torchvision_state("resnet10")
    d2_path = tmp_path / "r10_d2.pth"
    torch.save({"model": {_to_detectron2(k): v for k, v in state.items()}}, d2_path)
    backbone = ResNetBackbone("resnet10", weights=str(d2_path))
    assert torch.equal(backbone.body[0].weight, state["conv1.weight"])
    assert torch.equal(backbone.body[6][0].bn2.running_var, state["layer3.0.bn2.running_var"])
    assert torch.equal(backbone.layer4[0].downsample[0].weight, state["layer4.0.downsample.0.weight"])
    pkl_path = tmp_path / "r10_caffe.pkl"
    with pkl_path.open("wb") as f:
        pickle.dump({"blobs": {_to_caffe(k): v.numpy() for k, v in state.items() if _to_caffe(k)}}, f)
    backbone = ResNetBackbone("resnet10", weights=str(pkl_path))
    assert torch.equal(backbone.body[5][0].conv1.weight, state["layer2.0.conv1.weight"])  # body[5] = layer2
    assert torch.equal(backbone.body[1].bias, state["bn1.bias"])


def test_weight_file_errors_name_the_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="backbone_weights"):
        load_checkpoint_file(tmp_path / "missing.pth")
    partial = tmp_path / "partial.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, partial)
    with pytest.raises(ValueError, match="backbone_weights.*lacks"):
        ResNetBackbone("resnet10", weights=str(partial))


def test_fast_head_map_is_torchvisions_dilated_layer4():
    state = _torchvision_state("resnet50")
    reference = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, False, True]).eval()
    reference.load_state_dict(state, strict=False)
    backbone = ResNetBackbone("resnet50", box_head="fast", roi_align_avg=_reference._roi_align_avg_reference)
    backbone.load_state_dict(_backbone_keys(state), strict=True)
    images = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        x = reference.layer3(
            reference.layer2(
                reference.layer1(reference.maxpool(reference.relu(reference.bn1(reference.conv1(images)))))
            )
        )
        expected = reference.layer4(x)  # stride 16, dilated
        maps = backbone.image_maps(images, torch.tensor([[64, 80]]))
        torch.testing.assert_close(maps, expected)
        rois = torch.tensor([[0, 4.0, 6.0, 50.0, 40.0], [0, 20.0, 10.0, 70.0, 60.0]])
        feats = backbone.box_features(maps, rois)
        expected_feats = torchvision.ops.roi_align(expected, rois, 7, 1 / 16, 2, aligned=True).mean((2, 3))
        torch.testing.assert_close(feats, expected_feats)
    assert feats.shape == (2, 2048)


def _backbone_keys(state: dict) -> dict:
    """torchvision ResNet keys -> ResNetBackbone keys (body = conv1, bn1, relu, maxpool, layer1..3)."""
    index = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6"}
    out = {}
    for k, v in state.items():
        head, rest = k.split(".", 1)
        out[("layer4." if head == "layer4" else f"body.{index[head]}.") + rest] = v
    return out


def test_faithful_head_runs_stride_one_layer4_on_each_7x7_crop():
    torch.manual_seed(0)
    backbone = ResNetBackbone("resnet10", box_head="faithful")
    images = torch.randn(2, 3, 64, 96)
    rois = torch.tensor([[0, 4.0, 6.0, 50.0, 40.0], [1, 20.0, 10.0, 90.0, 60.0], [1, 0.0, 0.0, 96.0, 64.0]])
    with torch.no_grad():
        c4 = backbone.image_maps(images, torch.tensor([[64, 96], [64, 96]]))
        assert c4.shape == (2, 256, 4, 6)  # stride 16
        feats = backbone.box_features(c4, rois)
        for r in range(3):
            crop = torchvision.ops.roi_align(c4, rois[r : r + 1], 7, 1 / 16, 2, aligned=True)
            out = backbone.layer4(crop)
            assert out.shape[-2:] == (7, 7)  # first stride is 1
            torch.testing.assert_close(feats[r], out.mean((2, 3))[0])
        # The grid feature splits the same 7x7 layer4 output into 2x2 cells (adaptive pooling: rows/columns 0-3, 3-6).
        grid = backbone.box_grid_features(c4, rois, 2)
        for r in range(3):
            out = backbone.layer4(torchvision.ops.roi_align(c4, rois[r : r + 1], 7, 1 / 16, 2, aligned=True))[0]
            cells = [out[:, a:b, c:d].mean((1, 2)) for a, b in ((0, 4), (3, 7)) for c, d in ((0, 4), (3, 7))]
            torch.testing.assert_close(grid[r], torch.stack(cells, dim=1).flatten())
        torch.testing.assert_close(backbone.box_grid_features(c4, rois, 1), feats)
        # Both at once: the same values from one pass of the per-box layer4.
        calls = []
        hook = backbone.layer4.register_forward_hook(lambda module, args, out: calls.append(out.shape[0]))
        average, both_grid = backbone.box_features_with_grid(c4, rois, 2)
        hook.remove()
        assert calls == [3]
        torch.testing.assert_close(average, feats)
        torch.testing.assert_close(both_grid, grid)


def test_stride_in_1x1_moves_the_stride_and_keeps_c4_stride():
    model = build_resnet("resnet50", stride_in_1x1=True)
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[0].conv2.stride == (1, 1)
    with pytest.raises(ValueError, match="stride_in_1x1"):
        build_resnet("resnet18", stride_in_1x1=True)


def test_frozen_backbone_stays_in_eval_and_gets_no_gradients():
    backbone = ResNetBackbone("resnet10")
    backbone.train()
    assert not backbone.training and all(not m.training for m in backbone.modules())
    assert all(not p.requires_grad for p in backbone.parameters())
    before = backbone.body[1].running_mean.clone()
    maps = backbone.image_maps(torch.randn(1, 3, 32, 32), torch.tensor([[32, 32]]))
    assert torch.equal(backbone.body[1].running_mean, before) and not maps.requires_grad


def test_feature_cache_serves_each_image_its_own_unpadded_map():
    torch.manual_seed(0)
    backbone = ResNetBackbone("resnet10", cache_max_images=8)
    plain = ResNetBackbone("resnet10")
    plain.load_state_dict(backbone.state_dict())
    images = torch.zeros(2, 3, 64, 96)
    images[0] = torch.randn(3, 64, 96)
    images[1, :, :48, :80] = torch.randn(3, 48, 80)
    sizes = torch.tensor([[64, 96], [48, 80]])
    maps = backbone.image_maps(images, sizes, ["a", "b"])
    with torch.no_grad():
        own = plain.image_maps(images[1:, :, :48, :80], sizes[1:])[0]  # 3 x 5 map
    torch.testing.assert_close(maps[1, :, :3, :5], own)
    assert maps[1, :, 3:].abs().sum() == 0 and len(backbone.cache) == 2
    images[0] += 1.0  # a cached image is not recomputed
    again = backbone.image_maps(images, sizes, ["a", "b"])
    torch.testing.assert_close(again, maps)
    with pytest.raises(ValueError, match="image_id"):
        backbone.image_maps(images, sizes, None)


def test_feature_cache_evicts_the_least_recently_used():
    cache = FeatureCache(2)
    cache.put("a", torch.zeros(1))
    cache.put("b", torch.zeros(1))
    cache.get("a")
    cache.put("c", torch.zeros(1))
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 2


def test_channels_last_gives_the_same_features():
    torch.manual_seed(0)
    a = ResNetBackbone("resnet10", box_head="faithful")
    b = ResNetBackbone("resnet10", box_head="faithful", channels_last=True)
    b.load_state_dict(a.state_dict())
    images = torch.randn(1, 3, 64, 64)
    rois = torch.tensor([[0, 4.0, 6.0, 50.0, 40.0]])
    sizes = torch.tensor([[64, 64]])
    with torch.no_grad():
        torch.testing.assert_close(
            b.box_features(b.image_maps(images, sizes), rois),
            a.box_features(a.image_maps(images, sizes), rois),
            atol=1e-4,
            rtol=1e-4,
        )
