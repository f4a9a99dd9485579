"""FLOP-based device estimate of one ReIR training step (faithful head, ResNet-101, frozen), per configuration.

Counted with ``torch.utils.flop_counter.FlopCounterMode`` on meta tensors (no compute): the C4 trunk (conv1 ..
layer3) per image at the sizes a batch pads to, and layer4 per box (RoIAlign 7x7 on C4 -> layer4 with stride 1 ->
mean, the faithful head). The frozen backbone has no backward; the heads (GRU, matching, graph: < 1% of these FLOPs) are left
out. Box features are pooled per batch *item* today (``ReIR._embed_boxes``): captions of one image pool its
proposals once each, so grouped batches pay layer4 for every pair's M boxes.

    python bench/flop_estimate.py            # prints the Markdown table of bench/RESULTS.md and one JSON line
"""
from __future__ import annotations

import json

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

M, PHRASES, K = 50, 3, 5  # proposals per pair, grounded phrases per caption (Flickr30K ~3), top-K of stage 2
H100_BF16_DENSE = 989e12  # FLOP/s, NVIDIA H100 SXM datasheet (dense bf16)
EFFICIENCY = 0.4  # assumed share of peak the convolutions reach (unmeasured here: no GPU)


def flops(module, *shape) -> float:
    x = torch.empty(*shape, device="meta")
    with FlopCounterMode(display=False) as counter:
        module(x)
    return float(counter.get_total_flops())


def main() -> None:
    with torch.device("meta"):
        net = torchvision.models.resnet101()
    # The faithful head's layer4 runs with its first stride set to 1 (relground.model.resnet.set_layer4_stride_one)
    net.layer4[0].conv2.stride = (1, 1)
    net.layer4[0].downsample[0].stride = (1, 1)
    trunk = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3)
    sizes = {  # (height, width) a batch pads to, from Flickr30K's 500x333 / 500x375 images resized 600 / 1000
        "landscape 600x901": (600, 901), "portrait 901x600": (901, 600), "mixed batch 901x901": (901, 901),
        "600x1000 (old benchmark)": (600, 1000),
    }
    trunk_flops = {name: flops(trunk, 1, 3, h, w) for name, (h, w) in sizes.items()}
    layer4_box = flops(net.layer4, 1, 1024, 7, 7)
    # Aspect grouping: 70% of batches landscape (600x901), 30% portrait (901x600); mixed: every batch 901x901.
    grouped_image = 0.7 * trunk_flops["landscape 600x901"] + 0.3 * trunk_flops["portrait 901x600"]
    mixed_image = trunk_flops["mixed batch 901x901"]
    configs = {  # name: (images per step, pairs per step, steps)
        "per pair, 40 x 1, 80k steps": (40, 40, 80_000),
        "grouped, 8 x 5, 80k steps": (8, 40, 80_000),
        "grouped, 40 x 5, 16k steps": (40, 200, 16_000),
    }
    rows = []
    for name, (images, pairs, steps) in configs.items():
        for aspect, per_image in (("mixed", mixed_image), ("aspect-grouped", grouped_image)):
            before = images * per_image + pairs * M * layer4_box
            after = before + pairs * PHRASES * K * layer4_box  # stage 2 re-pools the refined top-K boxes
            step = 0.09375 * before + 0.90625 * after  # 7.5k of 80k steps before refine
            seconds = step / (H100_BF16_DENSE * EFFICIENCY)
            rows.append(dict(config=name, padding=aspect, tflop_before=before / 1e12, tflop_after=after / 1e12,
                             step_ms=1000 * seconds, pairs_per_s=pairs / seconds, hours=steps * seconds / 3600))
    print("| configuration | padding | TFLOP / step before 7.5k | after | step ms at 40% of H100 bf16 | pairs/s | "
          "schedule hours |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['config']} | {r['padding']} | {r['tflop_before']:.1f} | {r['tflop_after']:.1f} | "
              f"{r['step_ms']:.0f} | {r['pairs_per_s']:.0f} | {r['hours']:.2f} |")
    print(json.dumps({"trunk_gflop": {k: v / 1e9 for k, v in trunk_flops.items()},
                      "layer4_gflop_per_box": layer4_box / 1e9, "rows": rows}))


if __name__ == "__main__":
    main()
