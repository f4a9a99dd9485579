"""torchvision ResNets for the frozen backbone: construction and the surgery ReIR applies to them (stride-1 layer4,
MSRA stride placement, BatchNorm folded into the convolutions).

Kept apart from :mod:`relground.model.backbone` (which runs the network) because these functions change modules
once at build time and never run in the forward pass.
"""

from __future__ import annotations

import copy

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

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


def _fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One convolution computing ``bn(conv(x))`` of an eval-mode BatchNorm (weights rescaled, bias added)."""
    # In float64 so the fold adds no rounding of its own beyond the final store in the conv's dtype.
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)  # [C_out]
    bias = bn.bias.double() - bn.running_mean.double() * scale
    if conv.bias is not None:
        bias = bias + conv.bias.double() * scale
    # A copy, not a new nn.Conv2d: constructing one draws random numbers for its initial weights, which would shift
    # every later initialisation of the model (the heads are built after the backbone).
    folded = copy.deepcopy(conv)
    dtype, grad = conv.weight.dtype, conv.weight.requires_grad
    folded.weight = nn.Parameter((conv.weight.double() * scale[:, None, None, None]).to(dtype), grad)
    folded.bias = nn.Parameter(bias.to(dtype), grad)
    return folded


def fold_batch_norms(module: nn.Module) -> int:
    """Fold every (Conv2d, BatchNorm2d) pair of a torchvision ResNet (stem, blocks, downsample) in place.

    Pairs are a block's ``convN``/``bnN`` attributes and consecutive entries of an ``nn.Sequential``.

    The BatchNorm becomes ``nn.Identity`` and its conv gains a bias, so a frozen backbone runs one op fewer per
    conv. Only for eval-mode BatchNorm (a frozen backbone). State-dict keys change (no ``bn*`` entries, conv
    biases), so checkpoints of a folded model load into folded models only.

    Returns:
        The number of BatchNorms folded.
    """
    pairs = [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")]
    folded = 0
    for parent in list(module.modules()):
        for conv_name, bn_name in pairs:
            conv, bn = getattr(parent, conv_name, None), getattr(parent, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(parent, conv_name, _fold_conv_bn(conv, bn))
                setattr(parent, bn_name, nn.Identity())
                folded += 1
        if isinstance(parent, nn.Sequential):  # the stem in ``body`` and each ``downsample``: (conv, bn) in a row
            for i in range(len(parent) - 1):
                if isinstance(parent[i], nn.Conv2d) and isinstance(parent[i + 1], nn.BatchNorm2d):
                    parent[i] = _fold_conv_bn(parent[i], parent[i + 1])
                    parent[i + 1] = nn.Identity()
                    folded += 1
    return folded


def out_channels(layer: nn.Sequential) -> int:
    last = layer[-1]
    return (last.bn3 if isinstance(last, Bottleneck) else last.bn2).num_features
