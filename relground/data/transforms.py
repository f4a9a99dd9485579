"""Image resizing and normalisation shared by the PIL and DALI loaders (one definition, two pipelines)."""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# Caffe-style BGR mean of the bottom-up-attention ResNet-101, 0..255 scale, std 1.
CAFFE_BGR_MEAN = (102.98, 115.95, 122.77)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """Scale that brings the shorter side to ``min_size`` unless the longer side would pass ``max_size``."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height} width={width}")
    return min(min_size / min(height, width), max_size / max(height, width))


def resized_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(height, width)`` after scaling, rounded half up to whole pixels (at least 1).

    Half-up (``floor(x + 0.5)``) rather than Python's half-to-even ``round`` because the DALI pipeline
    computes the same size with ``dali.math.floor`` and both paths must agree.
    """
    return max(1, math.floor(height * scale + 0.5)), max(1, math.floor(width * scale + 0.5))


def normalize(image: Tensor, pixel_format: str) -> Tensor:
    """Normalise an RGB image.

    Args:
        image (Tensor[3, H, W] float32): RGB in 0..255.
        pixel_format (str): ``caffe_bgr`` (BGR, minus ``CAFFE_BGR_MEAN``, 0..255) or ``torchvision``
            (RGB / 255, ImageNet mean/std).

    Returns:
        Tensor[3, H, W] float32.
    """
    if pixel_format == "caffe_bgr":
        return F.normalize(image.flip(0), CAFFE_BGR_MEAN, (1.0, 1.0, 1.0))
    if pixel_format == "torchvision":
        return F.normalize(image / 255.0, IMAGENET_MEAN, IMAGENET_STD)
    raise ValueError(f"pixel_format: {pixel_format!r} is not 'caffe_bgr' or 'torchvision'")


def transform_image(image, min_size: int, max_size: int, pixel_format: str) -> tuple[Tensor, float]:
    """Resize and normalise one image (the PIL path; the DALI pipeline mirrors it).

    Args:
        image (PIL.Image.Image | Tensor[3, H, W] uint8): RGB image.
        min_size (int): target shorter side, pixels.
        max_size (int): cap on the longer side, pixels.
        pixel_format (str): see :func:`normalize`.

    Returns:
        tuple: ``(Tensor[3, h, w] float32, scale)`` with ``h, w = resized_size(H, W, scale)``.

    Example:
        >>> from PIL import Image
        >>> pixels, scale = transform_image(Image.new("RGB", (640, 480)), 600, 1000, "caffe_bgr")
        >>> pixels.shape, pixels.dtype, scale   # shorter side 480 -> 600
        (torch.Size([3, 600, 800]), torch.float32, 1.25)
    """
    image = F.to_image(image)  # uint8 [3, H, W]
    height, width = image.shape[-2:]
    scale = resize_scale(height, width, min_size, max_size)
    # Bilinear with antialiasing: what PIL's and DALI's linear resizes do when shrinking.
    image = F.resize(image, list(resized_size(height, width, scale)), interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
    return normalize(F.to_dtype(image, torch.float32, scale=False).as_subclass(Tensor), pixel_format), scale
