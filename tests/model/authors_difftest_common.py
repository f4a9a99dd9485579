"""What ``scripts/authors_difftest.py`` (which runs the authors' released head) and
``tests/model/test_authors_difftest.py`` (which runs relground) must build identically: the relground model of
``configs/flickr30k_reir_authors.yaml`` at the fixture's small widths, its backbone weights and the images.

The backbone weights and the images are closed-form (sines of their element index), not stored: a ResNet-10 in
float64 would make the fixture megabytes. The fixture stores a checksum of the C4 map they give, so a change of
either is caught. The trunk (stem to layer3) is outside the authors' head; its layer4 is the authors' RCNN_top.
"""
from __future__ import annotations

import numpy as np
import torch

from relground.config.loader import load_config
from relground.model import ReIR
from relground.structures.batch import GroundingBatch
from tests.utils import REPO

D = 16  # d = word_dim = relation_hidden (the authors: 1024, patched to this width)
KEY_DIM = 32  # the authors' 512 of rel_trans and the ranking projections, patched to this width
NUM_RELATION_CLASSES = 88  # the authors' get_rel_weights holds 88 counts
HEIGHT, WIDTH = 64, 80
FIXTURE = REPO / "tests" / "fixtures" / "authors_difftest.npz"
FIXTURE_INFO = REPO / "tests" / "fixtures" / "authors_difftest.json"


def relground_overrides(images_per_process: int) -> list[str]:
    """``--set`` values on ``configs/flickr30k_reir_authors.yaml``: the small widths of the fixture, and the
    reference images of ``loss.normalization: image`` = the authors' images on their one (CPU) process."""
    return [
        "model.backbone=resnet10", "model.backbone_weights=null", f"model.hidden_dim={D}", f"model.word_dim={D}",
        f"model.relation_hidden={D}", f"model.vogn_dim={KEY_DIM}", f"model.ranking_dim={KEY_DIM}",
        f"model.loss.reference_images={images_per_process}",
    ]


def build_relground(caption_vocab: int, phrase_vocab: int, images_per_process: int, extra=()) -> ReIR:
    """ReIR of ``flickr30k_reir_authors.yaml`` (small widths, float64, closed-form backbone); ``extra``: more
    ``--set`` values (a flipped choice)."""
    cfg = load_config(REPO / "configs" / "flickr30k_reir_authors.yaml",
                      relground_overrides(images_per_process) + list(extra))
    model = ReIR(cfg.model, caption_vocab, phrase_vocab, NUM_RELATION_CLASSES).double()
    closed_form_backbone(model.backbone)
    return model


@torch.no_grad()
def closed_form_backbone(backbone: torch.nn.Module) -> None:
    """Every parameter and buffer of the frozen backbone from sines of its element index (see the module)."""
    for n, (name, tensor) in enumerate(sorted(backbone.state_dict().items())):
        if not tensor.is_floating_point():
            continue
        index = torch.arange(tensor.numel(), dtype=torch.float64).reshape(tensor.shape)
        wave = torch.sin(0.731 * index + 1.37 * n)
        if name.endswith("running_var"):
            value = 1.0 + 0.5 * wave**2
        elif name.endswith("running_mean") or name.endswith("bias"):
            value = 0.1 * wave
        elif tensor.dim() == 1:  # BatchNorm weight
            value = 1.0 + 0.2 * wave
        else:  # conv / linear weight: He-like scale
            fan_in = tensor[0].numel()
            value = wave * (2.0 / fan_in) ** 0.5
        tensor.copy_(value.to(tensor.dtype))


def closed_form_images(batch_size: int) -> torch.Tensor:
    """[B, 3, H, W] float64 images from sines of the pixel index."""
    index = torch.arange(batch_size * 3 * HEIGHT * WIDTH, dtype=torch.float64)
    pixels = torch.sin(0.0113 * index) + 0.5 * torch.sin(0.37 * index + 0.2)
    return pixels.reshape(batch_size, 3, HEIGHT, WIDTH)


def fixture_batch(arrays: dict) -> GroundingBatch:
    """The fixture's inputs as a relground batch (``arrays`` from the .npz)."""
    B = int(arrays["words"].shape[0])
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}
    return GroundingBatch(
        images=closed_form_images(B),
        image_sizes=torch.tensor([[HEIGHT, WIDTH]] * B),
        scales=torch.ones(B, dtype=torch.float64),
        proposals=t["proposals"].double(),
        proposal_valid=t["proposal_valid"].bool(),
        proposal_labels=t["proposal_labels"].long(),
        category_prior=t["category_prior"].double(),
        words=t["words"].long(),
        word_lengths=t["word_lengths"].long(),
        phrase_spans=t["phrase_spans"].long(),
        phrase_valid=t["phrase_valid"].bool(),
        phrase_targets=t["phrase_targets"].long(),
        relation_index=t["relation_index"].long(),
        relation_labels=t["relation_labels"].double(),
        gt_boxes=torch.full((B, t["phrase_valid"].shape[1], 4), float("nan"), dtype=torch.float64),
        meta=[dict(image_id=f"img{b}") for b in range(B)],
    )
