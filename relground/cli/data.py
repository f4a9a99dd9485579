"""``relground data ...``: dataset statistics, relation parsing, synthetic benchmark, proposals.

The parsers and the printing live here; the work is done by plain functions in ``relground.data`` and
``relground.language``.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from relground.config import load_config
from relground.config.data import DataConfig
from relground.data.catalog import CATALOG, dataset_entry, image_sizes_from_root, load_split
from relground.data.flickr30k import load_flickr30k
from relground.data.proposals import (
    convert_bottom_up, detect_proposals, detector_class_names, image_files, read_class_names, write_proposals,
)
from relground.data.stand_in import STAND_IN_DATASETS, write_stand_in
from relground.data.synthetic import format_properties, generate_synthetic
from relground.language.relations import (
    PARSE_FORMAT_VERSION, PARSER_MODEL, build_relations, empty_vocabulary_message, load_categories, parse_captions,
)

DATASETS = tuple(CATALOG)


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="prepare and inspect datasets", description="Prepare and inspect datasets: "
                              "`relground data DATA_COMMAND --help` describes each command.")
    sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    stats = sub.add_parser("stats", help="count images, sentences, phrases, grounded phrases and boxes of a split")
    stats.add_argument("--dataset", choices=DATASETS, required=True)
    stats.add_argument("--root", required=True, help="dataset root (Flickr30K Entities layout, or text_objseg folder)")
    stats.add_argument("--split", default="test", help="train, val or test")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(func=run_stats)

    rel = sub.add_parser("relations", help="parse captions into relations and build the relation-category vocabulary")
    rel.add_argument("--root", required=True, help="dataset root in the Flickr30K Entities layout")
    rel.add_argument("--split", default="train")
    rel.add_argument("--min-freq", type=int, default=100, help="keep relation texts seen more than this often")
    rel.add_argument("--out", required=True, help="output JSON file (relations per sentence + categories)")
    rel.add_argument("--workers", type=int, default=0, help="parser processes (0 = all cores)")
    rel.add_argument("--cache-dir", default=None, help="parse cache folder (default: next to --out)")
    rel.add_argument(
        "--categories",
        default=None,
        help="reuse the relation categories of this relations JSON (the train split's) instead of building them; "
        "required for val / test so that category ids match training",
    )
    rel.add_argument("--json", action="store_true", help="print the summary as JSON")
    rel.set_defaults(func=run_relations)

    synth = sub.add_parser("synth", help="generate the synthetic grounding benchmark (Flickr30K Entities layout)")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--images", type=int, default=2000)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-size", type=int, default=128, help="side of the square images in pixels")
    synth.add_argument(
        "--multi-relation", type=float, default=0.0, metavar="P",
        help="probability that an image is a multi-relation image (identical triple told apart only by two "
        "relations together; every relational caption relates its subject to two phrases); 1 puts about a third "
        "of the related phrases in relation with two others. Default 0: the benchmark without the option",
    )
    synth.add_argument("--json", action="store_true", help="print the measured properties as JSON")
    synth.set_defaults(func=run_synth)

    stand = sub.add_parser(
        "stand-in",
        help="stand-in JPEGs (noise, each image's annotated size) and proposals for real annotations: "
        "check an installation before the images arrive",
    )
    stand.add_argument("--dataset", choices=STAND_IN_DATASETS, required=True)
    stand.add_argument("--root", required=True, help="real annotations (Flickr30K Entities layout, or text_objseg)")
    stand.add_argument("--out", required=True, help="output root: annotations linked, split files, images, proposals")
    stand.add_argument("--images", type=int, default=None, help="first N images of each split (default: all)")
    stand.add_argument("--split", dest="splits", action="append", default=None, metavar="SPLIT",
                       help="a split to write (repeatable; default: train, val, test)")
    stand.add_argument("--max-proposals", type=int, default=50, help="proposals per image (M)")
    stand.add_argument("--seed", type=int, default=0)
    stand.add_argument("--json", action="store_true", help="print the summary as JSON")
    stand.set_defaults(func=run_stand_in)

    conv = sub.add_parser(
        "convert-proposals", help="convert a bottom-up-attention style pickle to relground HDF5",
        description="Convert a bottom-up-attention pickle to the HDF5 a config reads. With --split, only that split's "
        "images are kept and the file goes where the config reads it (data.proposals of --config, default "
        "{root}/proposals_{split}.h5), e.g.: relground data convert-proposals --pickle vg_test.pkl --class-names "
        "vg_1600_classes.txt --config flickr30k_reir.yaml --root data/flickr30k_entities --split test",
    )
    conv.add_argument("--pickle", required=True, help="{image_id: {'boxes': [N, 6] x1,y1,x2,y2,score,label}}")
    conv.add_argument("--class-names", required=True, help="text file, one detector class name per line")
    add_split_arguments(conv)
    conv.add_argument("--max-proposals", type=int, default=50)
    conv.set_defaults(func=run_convert)

    det = sub.add_parser(
        "detect-proposals", help="run a torchvision detector (local weights file) over images",
        description="Run a torchvision detector whose weights are a local file over a folder of images. With --split "
        "(and --root or --config), only that split's images (<images>/<image_id>.jpg), written where the config "
        "reads them (data.proposals of --config, default {root}/proposals_{split}.h5).",
    )
    det.add_argument("--images", default=None,
                     help="folder of images (default with --split: data.images of --config, else the dataset's "
                     "image folder under --root)")
    det.add_argument("--weights", required=True, help="local torchvision detection state dict (.pth)")
    det.add_argument("--arch", default="fasterrcnn_resnet50_fpn", help="torchvision.models.detection builder name")
    add_split_arguments(det)
    det.add_argument("--max-proposals", type=int, default=50)
    det.add_argument("--score-threshold", type=float, default=0.0)
    det.add_argument("--device", default="cpu")
    det.set_defaults(func=run_detect)
    for choice in sub._choices_actions:  # --help of a data command without its own description: its one-line help
        parser = sub.choices[choice.dest]
        parser.description = parser.description or choice.help


def add_split_arguments(parser) -> None:
    """``--config``, ``--root``, ``--split``, ``--out``: which images, and where the proposals file goes."""
    parser.add_argument("--config", default=None,
                        help="the config that will read the file: its data.proposals, data.root and data.dataset")
    parser.add_argument("--root", default=None, help="dataset root (default: data.root of --config); image sizes "
                        "and the split's image ids come from its annotations")
    parser.add_argument("--split", default=None,
                        help="keep only this split's images and write them where the config reads that split")
    parser.add_argument("--out", default=None,
                        help="output .h5 file (default with --split: data.proposals of --config for the split)")


def run_stats(args) -> int:
    """``relground data stats``: print the counts of ``args.split`` of ``args.dataset`` under ``args.root``."""
    entry = dataset_entry(args.dataset)
    images = load_split(args.dataset, args.root, args.split)
    stats = {"dataset": args.dataset, "split": args.split, **entry.stats(images)}
    if args.json:
        print(json.dumps(stats))
    else:
        for key, value in stats.items():
            print(f"{key:>18}: {value}")
    return 0


def run_relations(args) -> int:
    """``relground data relations``: parse a split, build (or reuse) categories, write the JSON."""
    out = Path(args.out)
    categories = None
    if getattr(args, "categories", None):  # checked first: a wrong path should fail before the slow load
        categories = [c["name"] for c in load_categories(args.categories)]
    images = load_flickr30k(args.root, args.split)
    cache_dir = args.cache_dir if args.cache_dir is not None else out.parent / ".relground-parse-cache"
    captions = [s.text for image in images for s in image.sentences]
    parses, parse_info = parse_captions(captions, workers=args.workers, cache_dir=cache_dir, progress=True)
    result = build_relations(images, parses, categories=categories, min_freq=args.min_freq)
    empty = empty_vocabulary_message(result, args.min_freq) if categories is None else None
    if empty:  # refused before anything is written: training on it would learn no relation class, silently
        raise ValueError(empty)
    result["split"] = args.split
    result["parse"] = {"model": PARSER_MODEL, "format": PARSE_FORMAT_VERSION, **parse_info}
    if categories is not None:
        result["categories_from"] = str(args.categories)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f)

    summary = {"split": args.split, "min_freq": result["min_freq"], "num_categories": len(result["categories"]),
               **result["stats"], "parse": result["parse"], "out": str(out)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        stats = result["stats"]
        print(f"{len(result['categories'])} relation categories"
              + (f" (count > {args.min_freq})" if categories is None else f" (from {args.categories})"))
        print(f"{stats['relations']} relations in {stats['sentences']} sentences; "
              f"{stats['fraction_grounded_in_relation']:.1%} of grounded phrases in at least one relation")
        if parse_info["cache_hit"]:
            print(f"parses read from {parse_info['cache_file']}")
        else:
            print(f"parsed {parse_info['captions']} captions in {parse_info['seconds']:.0f} s "
                  f"({parse_info['captions_per_second']:.1f} captions/s, {parse_info['workers']} workers)")
        print(f"wrote {out}")
    return 0


def run_synth(args) -> int:
    """``relground data synth``: generate, then print the properties (``--json``: one JSON object)."""
    props = generate_synthetic(args.out, args.images, args.seed, args.image_size, progress=not args.json,
                               multi_relation=getattr(args, "multi_relation", 0.0))
    print(json.dumps(props, sort_keys=True) if args.json else format_properties(props))
    return 0


def run_stand_in(args) -> int:
    """``relground data stand-in``: write the stand-in root, print what it holds."""
    splits = tuple(args.splits or ("train", "val", "test"))
    summary = write_stand_in(args.dataset, args.root, args.out, splits, args.images, args.max_proposals, args.seed)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
        return 0
    for split, counts in summary["splits"].items():
        print(f"{split:>6}: {counts['images']} images, {counts['sentences']} sentences, {counts['phrases']} phrases, "
              f"{counts['proposals']} stand-in proposals")
    print(f"wrote {summary['out']} ({summary['bytes'] / 2**20:.1f} MiB); the pixels are noise: a dry run, not a result")
    return 0


@dataclass(frozen=True)
class ProposalsTarget:
    """Where ``convert-proposals`` / ``detect-proposals`` write, and which images they keep (None = all)."""

    out: Path
    root: Optional[Path]
    image_ids: Optional[list[str]]
    data: DataConfig


def proposals_target(args) -> ProposalsTarget:
    """Resolve ``--config``, ``--root``, ``--split`` and ``--out``: the split's image ids and the file the config
    reads for it (``data.proposals`` with ``{root}``, ``{split}``, ``{dataset}`` filled in)."""
    data = load_config(args.config).data if args.config else DataConfig()
    root = args.root or data.root or None
    if root is not None:
        data = dataclasses.replace(data, root=str(root))
        if not args.config:  # no config to name the dataset: the layout of the root says it
            data = dataclasses.replace(data, dataset=layout_of(root))
    image_ids = None
    if args.split is not None:
        if root is None:
            raise ValueError("--split: needs --root (or a --config with data.root) to read the split's image ids")
        image_ids = [image.image_id for image in load_split(data.dataset, root, args.split)]
    if args.out is not None:
        out = Path(args.out)
    elif args.split is not None:
        out = Path(data.proposals_path(args.split))
    else:
        raise ValueError("--out: required without --split (with --split the file goes where the config reads that "
                         f"split: data.proposals = {data.proposals!r})")
    return ProposalsTarget(out, Path(root) if root is not None else None, image_ids, data)


def layout_of(root) -> str:
    """``flickr30k`` for a root with ``Annotations/`` (Flickr30K Entities, synthetic), else ``referit``."""
    return "flickr30k" if (Path(root) / "Annotations").is_dir() else "referit"


def report_written(args, target: ProposalsTarget, count: int) -> None:
    print(f"wrote {count} images to {target.out}")
    if args.split is None:
        return
    reads = Path(target.data.proposals_path(args.split))
    if reads.resolve() == target.out.resolve():
        print(f"the {args.split} split's proposals, where data.proposals = {target.data.proposals!r} reads them")
    else:
        print(f"note: the config reads the {args.split} split's proposals from {reads} (data.proposals = "
              f"{target.data.proposals!r}), not from {target.out}")


def run_convert(args) -> int:
    """``relground data convert-proposals``: bottom-up pickle -> HDF5. Image sizes from ``--root`` annotations."""
    class_names = read_class_names(args.class_names)
    target = proposals_target(args)
    if target.root is None:
        raise ValueError("--root: needed to read image sizes from the dataset annotations")
    image_sizes = image_sizes_from_root(target.root)
    sets = convert_bottom_up(args.pickle, class_names, image_sizes, args.max_proposals)
    if target.image_ids is not None:
        missing = [i for i in target.image_ids if i not in sets]
        if missing:
            print(f"warning: {len(missing)} of the {args.split} split's {len(target.image_ids)} images have no "
                  f"proposals in {args.pickle} (first: {missing[0]!r}); training or evaluating that split will "
                  "stop on them", file=sys.stderr)
        sets = {i: sets[i] for i in target.image_ids if i in sets}
    target.out.parent.mkdir(parents=True, exist_ok=True)
    write_proposals(target.out, sets, class_names)
    report_written(args, target, len(sets))
    return 0


def run_detect(args) -> int:
    """``relground data detect-proposals``: torchvision detector (local weights) over a folder -> HDF5."""
    target = proposals_target(args)
    if args.images is not None:
        folder = Path(args.images)
    elif target.root is not None:
        default = target.root / dataset_entry(target.data.dataset).images  # ROOT/Images, ROOT/images
        folder = Path(target.data.images) if target.data.images else default
    else:
        raise ValueError("--images: required without --root or a --config with data.root")
    if not folder.is_dir():
        raise FileNotFoundError(f"--images: folder not found: {folder}")
    if target.image_ids is not None:
        paths = [folder / f"{image_id}.jpg" for image_id in target.image_ids]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"--images: {len(missing)} of the {args.split} split's {len(paths)} images are "
                                    f"not in {folder} (first: {missing[0].name})")
    else:
        paths = image_files(folder)
    if not paths:
        raise ValueError(f"--images: no .jpg/.jpeg/.png/.bmp files in {folder}")
    sets = detect_proposals(paths, args.weights, args.arch, args.max_proposals, args.score_threshold, args.device)
    write_proposals(target.out, sets, detector_class_names(args.arch, sets))
    report_written(args, target, len(sets))
    return 0
