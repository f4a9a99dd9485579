"""``relground data ...``: dataset statistics, relation parsing, synthetic benchmark, proposals.

The parsers live here; the work is done by functions in ``relground.data`` / ``relground.language``.
"""
from __future__ import annotations

DATASETS = ("flickr30k", "referit", "synthetic")


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="prepare and inspect datasets")
    sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    stats = sub.add_parser("stats", help="count images, sentences, phrases, grounded phrases and boxes of a split")
    stats.add_argument("--dataset", choices=DATASETS, required=True)
    stats.add_argument("--root", required=True, help="dataset root (Flickr30K Entities layout, or text_objseg folder)")
    stats.add_argument("--split", default="test", help="train, val or test")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(func=_stats)

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
    rel.set_defaults(func=_relations)

    synth = sub.add_parser("synth", help="generate the synthetic grounding benchmark (Flickr30K Entities layout)")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--images", type=int, default=2000)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-size", type=int, default=128, help="side of the square images in pixels")
    synth.add_argument("--json", action="store_true", help="print the measured properties as JSON")
    synth.set_defaults(func=_synth)

    conv = sub.add_parser("convert-proposals", help="convert a bottom-up-attention style pickle to relground HDF5")
    conv.add_argument("--pickle", required=True, help="{image_id: {'boxes': [N, 6] x1,y1,x2,y2,score,label}}")
    conv.add_argument("--class-names", required=True, help="text file, one detector class name per line")
    conv.add_argument("--root", default=None, help="dataset root, to read image sizes from the annotations")
    conv.add_argument("--max-proposals", type=int, default=50)
    conv.add_argument("--out", required=True, help="output .h5 file")
    conv.set_defaults(func=_convert)

    det = sub.add_parser("detect-proposals", help="run a torchvision detector (local weights file) over images")
    det.add_argument("--images", required=True, help="folder of images")
    det.add_argument("--weights", required=True, help="local torchvision detection state dict (.pth)")
    det.add_argument("--arch", default="fasterrcnn_resnet50_fpn", help="torchvision.models.detection builder name")
    det.add_argument("--max-proposals", type=int, default=50)
    det.add_argument("--score-threshold", type=float, default=0.0)
    det.add_argument("--device", default="cpu")
    det.add_argument("--out", required=True, help="output .h5 file")
    det.set_defaults(func=_detect)


def _stats(args) -> int:
    from relground.data.stats import run_stats

    return run_stats(args)


def _relations(args) -> int:
    from relground.language.relations import run_relations

    return run_relations(args)


def _synth(args) -> int:
    from relground.data.synthetic import run_synth

    return run_synth(args)


def _convert(args) -> int:
    from relground.data.proposals import run_convert

    return run_convert(args)


def _detect(args) -> int:
    from relground.data.proposals import run_detect

    return run_detect(args)
