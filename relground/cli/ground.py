"""``relground ground``: ground the phrases of one caption in one image with a trained checkpoint.

Phrases come from the caption's Flickr30K Entities markup (``[/EN#12/people A man] ...``) when present,
else from spaCy noun chunks. Proposals come from ``--proposals`` (a relground HDF5 store holding this image
id, i.e. the image file's stem), else from a fixed multi-scale sliding-window set (no detector; see
``relground.data.proposals.sliding_windows``). Writes a PNG with one coloured box per phrase and the caption with the
phrases in the same colours, and prints the phrases and boxes (``--json``: one JSON object).
"""
from __future__ import annotations

import json
from pathlib import Path

from relground.api import Grounder
from relground.data.proposals import ProposalStore
from relground.evaluation.visualize import draw_groundings
from relground.utils.errors import MissingEntryError


def register(subparsers) -> None:
    p = subparsers.add_parser("ground", help="ground a caption's phrases in an image (PNG + JSON)",
                              description=__doc__.split("\n\n")[1])
    p.add_argument("--checkpoint", required=True, help="checkpoint file (model_final.pth) or a training output folder")
    p.add_argument("--image", required=True, help="image file (jpg / png)")
    p.add_argument("--caption", required=True, help='caption; Flickr30K markup "[/EN#1/people A man] ..." is honoured')
    p.add_argument("--proposals", help="proposals HDF5 with an entry for this image (default: sliding windows)")
    p.add_argument("--image-id", help="image id in --proposals (default: the image file's stem)")
    p.add_argument("--out", help="PNG to write (default: <image stem>_grounded.png next to the working folder)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    image = Path(args.image)
    if not image.is_file():
        raise FileNotFoundError(f"--image: file not found: {image}")
    grounder = Grounder.from_checkpoint(args.checkpoint, device=args.device)
    proposals = None
    if args.proposals:
        image_id = args.image_id or image.stem
        store = ProposalStore(args.proposals)
        if image_id not in store:
            raise MissingEntryError(f"--proposals: {args.proposals} has no entry for image id {image_id!r} (set --image-id)")
        proposals = store[image_id]
    phrases = grounder.ground(image, args.caption, proposals=proposals)
    words = grounder.split_caption(args.caption).words
    out = Path(args.out) if args.out else Path(f"{image.stem}_grounded.png")
    draw_groundings(
        image, words, [(p.first_word_index, p.first_word_index + p.num_words) for p in phrases],
        [p.box for p in phrases], out,
    )
    result = {
        "image": str(image),
        "caption": " ".join(words),
        "proposals": "file" if proposals is not None else "sliding_windows",
        "phrases": [p.to_dict() for p in phrases],
        "png": str(out),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for p in phrases:
            print(f"{p.text!r:>32}  box {[round(v, 1) for v in p.box]}  score {p.score:.3f}")
        print(f"wrote {out}")
    return 0
