"""The frozen backbone under reduced precision and at inference speed: RoI coordinates stay float32 under bf16,
and BatchNorm folding computes what the unfolded network computes."""
import pytest
import torch
from torch import nn

from relground.model.backbone import ResNetBackbone, fold_batch_norms
from relground.ops import _reference, roi_align_avg

# A box whose x1 = 517.3 rounds to 516 in bf16 (8 significant bits: 4-pixel steps between 512 and 1024 px).
X1 = 517.3


def _ramp_maps(channels: int = 4) -> torch.Tensor:
    """[1, C, 40, 48] maps equal to (column - 32) * (c + 1): small integers, exact in bf16, so any difference
    in the pooled value comes from where the box is, not from rounding the map."""
    columns = torch.arange(48, dtype=torch.float32) - 32
    scale = torch.arange(1, channels + 1, dtype=torch.float32)
    return (scale[:, None, None] * columns[None, None, :]).expand(channels, 40, 48)[None].contiguous()


def _rois(x1: float) -> torch.Tensor:
    return torch.tensor([[0.0, x1, 100.0, x1 + 90.0, 300.0]])  # (batch index, x1, y1, x2, y2), float32


def _backbone(box_head: str, native: bool) -> ResNetBackbone:
    pool = roi_align_avg if native else _reference._roi_align_avg_reference
    backbone = ResNetBackbone("resnet10", box_head=box_head, roi_align_avg=pool)
    if box_head == "faithful":
        backbone.layer4 = nn.Identity()  # the test is about the RoIAlign input, not layer4's bf16 arithmetic
    return backbone


CASES = [("fast", True), ("fast", False), ("faithful", True)]


@pytest.mark.parametrize("box_head, native", CASES)
@pytest.mark.parametrize("method", ["box_features", "box_grid_features", "box_features_with_grid"])
def test_bf16_autocast_keeps_box_coordinates_float32(box_head, native, method):
    backbone = _backbone(box_head, native)
    maps = _ramp_maps()

    def pool(features, x1):
        if method == "box_features":
            return backbone.box_features(features, _rois(x1))
        if method == "box_grid_features":
            return backbone.box_grid_features(features, _rois(x1), 2)
        return torch.cat(backbone.box_features_with_grid(features, _rois(x1), 2), dim=1)

    reference = pool(maps, X1)  # float32 throughout
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # The maps a bf16 backbone hands over are bf16; their values are exact here (small integers).
        mixed = pool(maps.to(torch.bfloat16), X1)
    at_516, at_520 = pool(maps, 516.0), pool(maps, 520.0)
    # The box position matters by far more than the tolerance ...
    assert (reference - at_516).abs().max() > 0.02 and (reference - at_520).abs().max() > 0.02
    # ... and under autocast the box is pooled where it is, not at a bf16-rounded position.
    torch.testing.assert_close(mixed.float(), reference, rtol=0, atol=2e-3)


@pytest.mark.parametrize("box_head, native", CASES)
def test_bf16_maps_outside_autocast_pool_at_the_float32_position(box_head, native):
    backbone = _backbone(box_head, native)
    maps = _ramp_maps()
    reference = backbone.box_features(maps, _rois(X1))
    out = backbone.box_features(maps.to(torch.bfloat16), _rois(X1))
    assert out.dtype == torch.bfloat16  # the caller's dtype, computed from float32 coordinates
    # bf16 output rounding: 2^-8 relative.
    torch.testing.assert_close(out.float(), reference, rtol=2**-7, atol=1e-3)
    assert (backbone.box_features(maps, _rois(516.0)) - reference).abs().max() > 0.02


def _randomise_batch_norms(module: nn.Module, generator: torch.Generator) -> None:
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            c = bn.num_features
            bn.weight.data = torch.rand(c, generator=generator) + 0.5
            bn.bias.data = torch.randn(c, generator=generator) * 0.1
            bn.running_mean = torch.randn(c, generator=generator) * 0.1
            bn.running_var = torch.rand(c, generator=generator) + 0.5


@pytest.mark.parametrize("name, box_head", [("resnet10", "fast"), ("resnet10", "faithful"), ("resnet50", "fast")])
def test_folded_batch_norm_computes_the_unfolded_network(name, box_head):
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    plain = ResNetBackbone(name, box_head=box_head, roi_align_avg=_reference._roi_align_avg_reference)
    _randomise_batch_norms(plain, generator)
    folded = ResNetBackbone(name, box_head=box_head, roi_align_avg=_reference._roi_align_avg_reference)
    folded.load_state_dict(plain.state_dict())
    expected_folds = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert fold_batch_norms(folded) == expected_folds
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())

    images = torch.randn(2, 3, 96, 128, generator=generator)
    rois = torch.tensor([[0.0, 8.0, 8.0, 90.0, 70.0], [1.0, 30.5, 2.0, 127.0, 95.0]])
    # Independent reference: the unfolded network in float64.
    plain64 = plain.double()
    with torch.no_grad():
        expected = plain64.box_features(plain64.image_maps(images.double(), None), rois.double())
        got = folded.box_features(folded.image_maps(images, None), rois)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_fold_bn_option_folds_at_build_time_and_needs_a_frozen_backbone():
    backbone = ResNetBackbone("resnet10", box_head="fast", roi_align_avg=roi_align_avg, fold_bn=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert all(not p.requires_grad for p in backbone.parameters())
    with pytest.raises(ValueError, match="fold_backbone_bn needs a frozen backbone"):
        ResNetBackbone("resnet10", box_head="fast", roi_align_avg=roi_align_avg, frozen=False, fold_bn=True)


def test_frozen_backbone_builds_no_autograd_graph():
    backbone = ResNetBackbone("resnet10", box_head="fast", roi_align_avg=roi_align_avg)
    images = torch.randn(1, 3, 64, 64, requires_grad=True)  # even a grad-requiring input
    maps = backbone.image_maps(images, None)
    assert maps.grad_fn is None and not maps.requires_grad


def test_folding_draws_no_random_numbers():
    """The heads are initialised after the backbone: folding must not shift the global RNG stream."""
    torch.manual_seed(0)
    ResNetBackbone("resnet10", box_head="fast", roi_align_avg=roi_align_avg)
    plain_next = torch.rand(3)
    torch.manual_seed(0)
    ResNetBackbone("resnet10", box_head="fast", roi_align_avg=roi_align_avg, fold_bn=True)
    assert torch.equal(torch.rand(3), plain_next)
