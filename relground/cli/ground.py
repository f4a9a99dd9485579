"""``relground ground``: ground the phrases of one caption in one image with a trained checkpoint.

Phrases come from the caption's Flickr30K Entities markup ([/EN#12/people A man] ...) when present, else from the
entities SceneGraphParser finds in it: the phrases the relations of training join ("the violet cross to the left
of the big blue square" gives "the violet cross" and "the big blue square", not "the left"). A caption with no
phrase is warned about (the picture then has no box). Proposals come from --proposals (a relground HDF5 store
holding this image id, the image file's stem unless --image-id), else from a fixed multi-scale sliding-window set
(50 boxes, no detector; relground.data.proposals.sliding_windows); the source is printed.

Writes a PNG with one coloured box per phrase and the caption with the phrases in the same colours (an existing
PNG is kept unless --overwrite), and prints the phrases and boxes (--json: one JSON object). The model runs on
--device (default: the GPU when CUDA is available, else the CPU).

Example:
    relground ground --checkpoint outputs/demo/full --image photo.jpg --caption "a dog on a red sofa" --out dog.png
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from PIL import Image

from relground.api import Grounder
from relground.cli.common import HELP_FORMATTER, command_description
from relground.data.proposals import ProposalStore
from relground.evaluation.visualize import draw_groundings
from relground.utils.errors import MissingEntryError

JPEG_END_OF_IMAGE = b"\xff\xd9"


def register(subparsers) -> None:
    p = subparsers.add_parser("ground", help="ground a caption's phrases in an image (PNG + JSON)",
                              description=command_description(__doc__), formatter_class=HELP_FORMATTER)
    p.add_argument("--checkpoint", required=True, help="checkpoint file (model_final.pth) or a training output folder")
    p.add_argument("--image", required=True, help="image file (JPEG, PNG, ...)")
    p.add_argument("--caption", required=True, help='caption; Flickr30K markup "[/EN#1/people A man] ..." is honoured')
    p.add_argument("--proposals", help="proposals HDF5 with an entry for this image (default: sliding windows)")
    p.add_argument("--image-id", help="image id in --proposals (default: the image file's stem)")
    p.add_argument("--out", help="PNG to write (default: <image stem>_grounded.png in the working folder)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (default: refuse)")
    p.add_argument("--device", default="auto",
                   help="torch device: auto (default: cuda when available, else cpu), cpu, cuda, cuda:1")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def read_image(path: Path) -> Image.Image:
    """The image as RGB, or a one-line ``ValueError`` naming the file: missing, empty, not an image, truncated."""
    if not path.is_file():
        raise FileNotFoundError(f"--image: file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"--image: {path}: empty file (0 bytes)")
    fmt = None
    try:
        with Image.open(path) as pil:
            fmt = pil.format
            image = pil.convert("RGB")  # decodes every pixel: a damaged file fails here, not in the model
    except Image.UnidentifiedImageError:
        raise ValueError(f"--image: {path}: not an image file (expected JPEG, PNG or another format PIL reads)") \
            from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"--image: {path}: damaged or truncated {fmt or 'image'} ({exc})") from None
    if fmt == "JPEG":  # PIL decodes some truncated JPEGs without a word; the end-of-image marker says
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 1024))
            if JPEG_END_OF_IMAGE not in f.read():
                raise ValueError(f"--image: {path}: truncated JPEG (no end-of-image marker)")
    return image


def ground_device(name: str) -> torch.device:
    """``--device``: ``auto`` is CUDA when available, else the CPU; a device this machine lacks is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: {name!r} is not a torch device (auto, cpu, cuda, cuda:1)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"--device: {name!r}: only cpu and cuda devices are supported")
    return device


def run(args) -> int:
    image_path = Path(args.image)
    image = read_image(image_path)
    device = ground_device(args.device)
    out = Path(args.out) if args.out else Path(f"{image_path.stem}_grounded.png")
    if out.exists() and not args.overwrite:
        raise ValueError(f"--out: {out} exists; pass --overwrite to replace it (or choose another --out)")
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out: {out}: expected a .png file")
    caption = Grounder.split_caption(args.caption)  # before the model loads: a bad caption fails fast
    grounder = Grounder.from_checkpoint(args.checkpoint, device=device)
    proposals, source = None, "sliding windows (no detector; --proposals FILE for a detector's boxes)"
    if args.proposals:
        image_id = args.image_id or image_path.stem
        store = ProposalStore(args.proposals)
        if image_id not in store:
            raise MissingEntryError(
                f"--proposals: {args.proposals} has no entry for image id {image_id!r} (set --image-id)")
        proposals = store[image_id]
        source = f"{args.proposals}, image id {image_id!r}, {len(proposals)} boxes"
    if not caption.phrases:
        print("relground ground: warning: the caption has no phrase to ground (no Flickr30K markup, and no entity "
              f"in {args.caption!r}); the picture shows no box", file=sys.stderr)
        phrases = []
    else:
        phrases = grounder.ground(image_path, args.caption, proposals=proposals)  # the path: errors name the file
    out.parent.mkdir(parents=True, exist_ok=True)
    draw_groundings(
        image, caption.words, [(p.first_word_index, p.first_word_index + p.num_words) for p in phrases],
        [p.box for p in phrases], out,
    )
    result = {
        "image": str(image_path),
        "caption": " ".join(caption.words),
        "device": str(device),
        "proposals": "file" if proposals is not None else "sliding_windows",
        "proposal_source": source,
        "phrases": [p.to_dict() for p in phrases],
        "png": str(out),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"proposals: {source}; device: {device}")
        for p in phrases:
            print(f"{p.text!r:>32}  box {[round(v, 1) for v in p.box]}  score {p.score:.3f}")
        print(f"wrote {out}")
    return 0
