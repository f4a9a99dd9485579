"""The whole synthetic benchmark: images in a process pool, proposals, twins, splits and measured properties."""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from relground.data.catalog import TWINS_FILE
from relground.data.proposals import write_proposals
from relground.data.synthetic.layout import generate_image
from relground.data.synthetic.vocabulary import (
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    MIN_IMAGES,
    RELATIONS,
    SHAPES,
)


def _init_worker() -> None:
    # One intra-op thread: the IoUs are tiny, the cores are the pool's, and a forked child must not enter an
    # OpenMP region its parent may have started.
    torch.set_num_threads(1)


def _check_args(out, num_images: int, seed: int, image_size: int, multi_relation: float) -> Path:
    if not isinstance(num_images, (int, np.integer)) or num_images < MIN_IMAGES:
        raise ValueError(
            f"--images: need at least {MIN_IMAGES} images (train/val/test must be non-empty), got {num_images}"
        )
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"--seed: must be a non-negative integer, got {seed}")
    if not isinstance(image_size, (int, np.integer)) or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(f"--image-size: must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] pixels, got {image_size}")
    if isinstance(multi_relation, bool) or not isinstance(multi_relation, (int, float, np.integer, np.floating)) \
            or not 0.0 <= multi_relation <= 1.0:
        raise ValueError(f"--multi-relation: must be a probability in [0, 1], got {multi_relation!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "synthetic.json").is_file():
        raise ValueError(f"--out: {out} is not empty and holds no earlier synthetic benchmark (synthetic.json)")
    return out


def generate_synthetic(out, num_images: int = 2000, seed: int = 0, image_size: int = 128,
                       workers: Optional[int] = None, progress: bool = False, multi_relation: float = 0.0) -> dict:
    """Generate the synthetic benchmark into ``out`` and return its measured properties.

    Args:
        out (str | Path): output folder: new, empty, or an earlier benchmark (its generated files are replaced).
        num_images (int): number of images, at least 10. Default 2000.
        seed (int): non-negative seed; the written files are byte-identical for a seed. Default 0.
        image_size (int): side of the square images in pixels, 64..1024. Default 128.
        workers (int, optional): worker processes; default all cores. Does not change the output.
        progress (bool): show a tqdm progress bar. Default False.
        multi_relation (float): probability that an image is a *multi-relation image* (opt-in; see the package
            docstring): its identical objects are a triple that only two relations together tell apart, and
            every caption that states relations names its subject through two of them. Default 0: no number is
            drawn for it and the output is byte-identical to the generator's without the option. 1.0 puts about
            a third of the related test phrases in relation with two others (a caption's star of two relations
            has one such phrase among three); see ``multi_related_test_share``.

    Returns:
        dict: the properties measured on the written boxes and captions, over grounded phrase instances:
        ``no_proposal_iou05_share`` (no proposal with IoU >= 0.5 to the phrase's box),
        ``refinable_share_of_those`` (of those, the share with a proposal of IoU in [0.3, 0.5) that overlaps
        another proposal with IoU >= 0.6), ``twin_phrase_share`` (the phrase's single box has an identical
        twin), ``appearance_only_upper_bound`` (expected accuracy of a grounder that knows every object's
        appearance and the true boxes but ignores relations: one minus the expected misses of guessing among
        identical copies, 1/2 per twin and 2/3 per copy of a triple, over the grounded phrases),
        ``label_noise_share`` (object proposals with a wrong class), ``num_templates`` (distinct sentence
        frames used), plus counts, ``splits``, ``class_names``, ``seconds`` and ``workers``. With
        ``multi_relation > 0`` also: ``multi_relation``, ``multi_relation_image_share``, ``triple_image_share``,
        ``related_test_phrases`` (test-split phrases related to at least one other phrase of their caption, from
        the relations the captions state), ``multi_related_test_share`` (of those, the share related to two or
        more), ``multi_related_share`` (the same over all splits) and ``conjunction_phrase_share`` (grounded
        phrases whose object only the conjunction of their relations tells from its identical copies). The
        twin properties then count a triple's copies as twins, and the appearance-only accuracy guesses among
        two or three copies.

    Raises:
        ValueError: a bad argument (the message names the CLI flag).

    Example:
        >>> props = generate_synthetic("/tmp/synth", num_images=100, seed=0)  # doctest: +SKIP
        >>> props["twin_phrase_share"] >= 0.25  # doctest: +SKIP
        True
    """
    out = _check_args(out, num_images, seed, image_size, multi_relation)
    start = time.perf_counter()
    for sub in ("Images", "Annotations", "Sentences"):
        shutil.rmtree(out / sub, ignore_errors=True)  # a rerun must not leave images of a larger earlier run
        (out / sub).mkdir(parents=True)
    workers = max(1, min(workers or os.cpu_count() or 1, num_images))
    tasks = [(i, int(seed), int(image_size), str(out), float(multi_relation)) for i in range(num_images)]
    results = []
    if workers == 1:
        iterator = map(generate_image, tasks)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker)
        iterator = pool.map(generate_image, tasks, chunksize=max(1, num_images // (workers * 8)))
    try:
        if progress:

            iterator = tqdm(iterator, total=num_images, desc="synth", unit="img", file=sys.stderr)
        results = list(iterator)
    finally:
        if pool is not None:
            pool.shutdown()

    image_ids = [r[0] for r in results]
    write_proposals(out / "proposals.h5", {r[0]: r[1] for r in results}, SHAPES)
    twins = {image_id: counts["twin_chains"] for image_id, _, counts in results if counts["twin_chains"]}
    (out / TWINS_FILE).write_text(json.dumps(twins, indent=0, sort_keys=True) + "\n")
    order = np.random.default_rng([seed, num_images, 1]).permutation(num_images)
    n_val = n_test = max(1, int(round(0.1 * num_images)))
    splits = {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}
    for name, idx in splits.items():
        (out / f"{name}.txt").write_text("".join(f"{image_ids[i]}\n" for i in sorted(idx)))

    total = {k: sum(r[2][k] for r in results) for k in (
        "grounded", "no_proposal_05", "refinable", "twin", "captions", "objects", "proposals", "object_proposals",
        "wrong_labels", "twin_image", "triple", "related", "multi_related", "conjunction", "multi_image",
        "triple_image")}
    # Expected misses of guessing among identical copies: 1/2 for a twin, 2/3 for a copy of a triple.
    expected_misses = 0.5 * (total["twin"] - total["triple"]) + (2 / 3) * total["triple"]
    frames = sorted({f for r in results for f in r[2]["frames"]})
    props = {
        "images": num_images,
        "seed": int(seed),
        "image_size": int(image_size),
        "splits": {k: int(len(v)) for k, v in splits.items()},
        "captions": total["captions"],
        "grounded_phrases": total["grounded"],
        "objects": total["objects"],
        "proposals_per_image": total["proposals"] / num_images,
        "no_proposal_iou05_share": total["no_proposal_05"] / max(total["grounded"], 1),
        "refinable_share_of_those": total["refinable"] / max(total["no_proposal_05"], 1),
        "twin_image_share": total["twin_image"] / num_images,
        "twin_phrase_share": total["twin"] / max(total["grounded"], 1),
        "appearance_only_upper_bound": 1.0 - expected_misses / max(total["grounded"], 1),
        "label_noise_share": total["wrong_labels"] / max(total["object_proposals"], 1),
        "num_templates": len(frames),
        "num_relation_phrasings": sum(len(v) for v in RELATIONS.values()),
        "class_names": list(SHAPES),
        "proposals_file": "proposals.h5",
        "seconds": round(time.perf_counter() - start, 2),
        "workers": workers,
    }
    if multi_relation > 0:  # opt-in keys: the default synthetic.json stays byte-identical
        test = [results[i][2] for i in splits["test"]]
        related_test = sum(c["related"] for c in test)
        props.update(
            multi_relation=float(multi_relation),
            multi_relation_image_share=total["multi_image"] / num_images,
            triple_image_share=total["triple_image"] / num_images,
            related_test_phrases=related_test,
            multi_related_test_share=sum(c["multi_related"] for c in test) / max(related_test, 1),
            multi_related_share=total["multi_related"] / max(total["related"], 1),
            conjunction_phrase_share=total["conjunction"] / max(total["grounded"], 1),
        )
    # Timing and worker count vary from run to run; the file keeps only what is byte-identical for a seed.
    stable = {k: v for k, v in props.items() if k not in ("seconds", "workers")}
    (out / "synthetic.json").write_text(json.dumps(stable, indent=2, sort_keys=True) + "\n")
    return props


def format_properties(props: dict) -> str:
    """Human-readable summary of :func:`generate_synthetic`'s properties."""
    p = props
    return "\n".join([
        f"images {p['images']} (train {p['splits']['train']}, val {p['splits']['val']}, test {p['splits']['test']}), "
        f"{p['image_size']}x{p['image_size']} px, seed {p['seed']}",
        f"captions {p['captions']}, grounded phrases {p['grounded_phrases']}, objects {p['objects']}, "
        f"proposals/image {p['proposals_per_image']:.1f}",
        f"localisation noise: {p['no_proposal_iou05_share']:.1%} of grounded phrases have no proposal with IoU >= 0.5; "
        f"{p['refinable_share_of_those']:.1%} of those have one with IoU in [0.3, 0.5) inside a cluster (IoU >= 0.6)",
        f"semantic ambiguity: {p['twin_phrase_share']:.1%} of grounded phrases refer to an object with an identical "
        f"twin ({p['twin_image_share']:.1%} of images); appearance-only accuracy "
        f"{p['appearance_only_upper_bound']:.1%}",
        f"noisy labels: {p['label_noise_share']:.1%} of object proposals carry a wrong class name",
        f"captions: {p['num_templates']} sentence templates used, {p['num_relation_phrasings']} relation phrasings",
        *([
            f"multi-relation images {p['multi_relation_image_share']:.1%} (--multi-relation {p['multi_relation']:g}; "
            f"{p['triple_image_share']:.1%} with an identical triple): {p['multi_related_test_share']:.1%} of the "
            f"{p['related_test_phrases']} related test phrases relate to two or more others "
            f"({p['multi_related_share']:.1%} over all splits); {p['conjunction_phrase_share']:.1%} of grounded "
            f"phrases are told from their identical copies only by two relations together",
        ] if "multi_relation" in p else []),
        f"wrote {p['proposals_file']} and the Flickr30K Entities layout in {p['seconds']:.1f} s "
        f"({p['workers']} workers)",
    ])

