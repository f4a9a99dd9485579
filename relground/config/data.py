"""``DataConfig``: everything the data layer needs to build a loader, as plain typed values."""
from __future__ import annotations

from dataclasses import dataclass

from relground.config.templates import DATA_PLACEHOLDERS, check_path_template

DATASETS = ("flickr30k", "referit", "synthetic")
PIXEL_FORMATS = ("caffe_bgr", "torchvision")
LOADERS = ("auto", "pil", "dali", "torchvision")
IMAGE_BUCKET = 128  # pixels: the default of data.image_bucket


@dataclass(frozen=True)
class DataConfig:
    """Data settings (the ``data:`` section of a config file).

    Attributes:
        dataset (str): ``flickr30k``, ``referit`` or ``synthetic`` (Flickr30K Entities layout).
        root (str): dataset root (Flickr layout, or the ReferIt ``text_objseg`` folder).
        train_split / val_split / test_split (str): split names. Defaults ``train`` / ``val`` / ``test``.
        proposals (str): proposals HDF5 path pattern; ``{root}``, ``{split}`` and ``{dataset}`` are filled in.
            Default ``"{root}/proposals_{split}.h5"``.
        relations (str): relations JSON pattern (``relground data relations``); empty = no relations.
        images (str): folder of the images; empty = the reader's ``image_path`` (``ROOT/Images``).
        max_proposals (int): proposals per image M (first M of the detector's order). Default 50.
        min_size (int): shorter image side after resizing, pixels. Default 600.
        max_size (int): cap on the longer side after resizing, pixels. Default 1000.
        pixel_format (str): ``caffe_bgr`` (BGR, minus the Caffe mean, 0..255, std 1: the authors'
            backbone) or ``torchvision`` (RGB, 0..1, ImageNet mean/std). Default ``caffe_bgr``.
        batch_size (int): (image, sentence) pairs per batch and process. Default 10.
        captions_per_image (int): c; training batches group up to c captions of each image (about
            ``batch_size / c`` images a batch, the backbone run once per image; keep ``batch_size`` a multiple of
            c). 1 = independent pairs, the authors' batches. Every loader. Default 1.
        num_workers (int): DataLoader worker processes. Default 2.
        loader (str): ``pil`` (PIL + torchvision transforms v2 in the workers), ``dali`` (NVIDIA DALI; ``mixed``
            decoding on a GPU), ``torchvision`` (JPEG bytes handed over and decoded by nvJPEG, resized and normalised
            on the GPU; on CPU libjpeg-turbo, resize and normalisation in the workers) or ``auto`` (DALI when it is
            installed and a GPU is present, else ``torchvision`` on a GPU, else ``pil``:
            :func:`relground.data.loader_choice.choose_loader`; the choice is printed at start). Every loader
            decodes each distinct image of a batch once. Default ``pil``.
        aspect_grouping (bool): training batches hold images of one orientation (landscape, or portrait and square),
            as detectron2's ``AspectRatioGroupedDataset``, so a batch pads to its own orientation (a 600x900 and a
            900x600 image pad to 900x900 together): :class:`relground.data.aspect_grouping.AspectRatioGroupedBatchSampler`.
            Default False.
        vocab_min_freq (int): keep words seen at least this often in the train split. Default 1.
        num_relation_classes (int): width of ``relation_labels`` (the paper: 88). Default 88.
        skip_invalid (bool): leave malformed annotation files out (reported) instead of failing. Default False.
        shape_buckets (bool): pad every batch dimension that varies from batch to batch up to a bucket, so that a
            run sees few distinct shapes (what ``train.cuda_graph`` captures once per shape): phrases per caption,
            words per caption, words per reconstruction target and relations per batch to the next power of two,
            distinct images per batch to the next power of two (at most the batch size), image sides to a multiple
            of ``image_bucket``. M is fixed already (``max_proposals``). The padding is masked: same losses and
            gradients with ``model.static_shapes`` (except the image sides: see ``image_bucket``).
            ``relground.data.collate.pad_to_buckets``. Default False (the batch maxima).
        image_bucket (int): with ``shape_buckets``, image sides round up to a multiple of this many pixels (Flickr30K
            at 600-1000 px: four sizes per side); 0 = the batch's largest image, as without buckets. Padded image
            borders change the frozen backbone's features near the bottom and right edges, as the padding to the
            batch's largest image already does. Default 128.
    """

    dataset: str = "flickr30k"
    root: str = ""
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    proposals: str = "{root}/proposals_{split}.h5"
    relations: str = ""
    images: str = ""
    max_proposals: int = 50
    min_size: int = 600
    max_size: int = 1000
    pixel_format: str = "caffe_bgr"
    batch_size: int = 10
    captions_per_image: int = 1
    num_workers: int = 2
    loader: str = "pil"
    aspect_grouping: bool = False
    vocab_min_freq: int = 1
    num_relation_classes: int = 88
    skip_invalid: bool = False
    shape_buckets: bool = False
    image_bucket: int = IMAGE_BUCKET

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("dataset", self.dataset, DATASETS),
            ("pixel_format", self.pixel_format, PIXEL_FORMATS),
            ("loader", self.loader, LOADERS),
        ):
            if value not in allowed:
                raise ValueError(f"data.{name}: {value!r} is not one of {allowed}")
        for name in ("max_proposals", "min_size", "max_size", "batch_size", "captions_per_image"):
            if getattr(self, name) <= 0:
                raise ValueError(f"data.{name}: must be positive, got {getattr(self, name)}")
        if self.max_size < self.min_size:
            raise ValueError(f"data.max_size ({self.max_size}) must be >= data.min_size ({self.min_size})")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers: must be >= 0, got {self.num_workers}")
        if self.image_bucket < 0:
            raise ValueError(f"data.image_bucket: must be >= 0 (0 = no image padding), got {self.image_bucket}")
        for name in ("proposals", "relations"):  # filled in only when a file is opened: checked now
            check_path_template(f"data.{name}", getattr(self, name), DATA_PLACEHOLDERS)

    def proposals_path(self, split: str) -> str:
        return self.proposals.format(root=self.root, split=split, dataset=self.dataset)

    def relations_path(self, split: str) -> str:
        return self.relations.format(root=self.root, split=split, dataset=self.dataset) if self.relations else ""
