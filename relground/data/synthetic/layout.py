"""One synthetic image written in the Flickr30K Entities layout (JPEG, XML, sentences) and its measured counts."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np

from relground.data.proposals import ProposalSet
from relground.data.synthetic.captions import Captioner
from relground.data.synthetic.detector import image_proposals, iou_matrix
from relground.data.synthetic.scene import SceneObject, conjunctions, draw_scene, place_objects, twin_reference
from relground.data.synthetic.vocabulary import (
    CAPTIONS_PER_IMAGE, FIRST_IMAGE_ID, HARD_OBJECT_SHARE, JPEG_QUALITY, MULTI_COPY_CAPTION_SHARE, TWIN_IMAGE_SHARE,
    relation_holds,
)


def annotation_xml(image_id: str, size: int, objects: list[SceneObject], extra_names: dict[int, list[str]],
                   scene_chain: Optional[str]) -> str:
    """PASCAL-VOC-like XML as Flickr30K Entities writes it: tabs, 1-based inclusive raw coords, no final newline."""
    lines = ["<annotation>", f"\t<filename>{image_id}.jpg</filename>", "\t<size>", f"\t\t<width>{size}</width>",
             f"\t\t<height>{size}</height>", "\t\t<depth>3</depth>", "\t</size>"]
    for k, obj in enumerate(objects):
        lines.append("\t<object>")
        for name in [obj.chain] + extra_names.get(k, []):
            lines.append(f"\t\t<name>{name}</name>")
        x1, y1, x2, y2 = (int(v) + 1 for v in obj.box)  # the official parser subtracts 1 again
        lines += ["\t\t<bndbox>", f"\t\t\t<xmin>{x1}</xmin>", f"\t\t\t<ymin>{y1}</ymin>", f"\t\t\t<xmax>{x2}</xmax>",
                  f"\t\t\t<ymax>{y2}</ymax>", "\t\t</bndbox>", "\t</object>"]
    if scene_chain is not None:
        lines += ["\t<object>", f"\t\t<name>{scene_chain}</name>", "\t\t<scene>1</scene>",
                  "\t\t<nobndbox>0</nobndbox>", "\t</object>"]
    lines.append("</annotation>")
    return "\n".join(lines)


def phrase_stats(lines: list[str], objects: list[SceneObject], proposals: ProposalSet, plural_chain: str,
                 copies: int = 2, relations: Optional[list[list[tuple[int, int, str]]]] = None) -> dict:
    """Measure, per grounded phrase instance, the properties printed by the generator.

    ``copies``: identical objects leading ``objects`` (the plural phrase covers them); ``relations``: per line,
    the stated ``(subject phrase, object phrase, relation)`` (``Captioner.relations``), for the graph counts.
    """
    boxes_of = {o.chain: [k] for k, o in enumerate(objects)}
    boxes_of[plural_chain] = list(range(max(copies, 2)))  # the plural phrase covers every identical copy
    iou_pp = iou_matrix(proposals.boxes, proposals.boxes)  # [M, M]
    np.fill_diagonal(iou_pp, 0.0)
    stats = dict(grounded=0, no_proposal_05=0, refinable=0, twin=0, triple=0, related=0, multi_related=0,
                 conjunction=0)
    for c, line in enumerate(lines):
        chains = re.findall(r"\[/EN#(\d+)/", line)
        if relations is not None:
            _graph_stats(stats, relations[c], [boxes_of.get(chain) for chain in chains], objects, copies)
        for chain in chains:
            if chain not in boxes_of:
                continue  # box-less scene phrase: not evaluated
            members = np.stack([objects[k].box for k in boxes_of[chain]]).astype(np.float64)
            union = np.concatenate([members[:, :2].min(0), members[:, 2:].max(0)])
            iou = iou_matrix(union, proposals.boxes)[0]  # [M]
            stats["grounded"] += 1
            if iou.max(initial=0.0) < 0.5:
                stats["no_proposal_05"] += 1
                mid = (iou >= 0.3) & (iou < 0.5)
                if (iou_pp[mid] >= 0.6).any():
                    stats["refinable"] += 1
            if len(boxes_of[chain]) == 1 and objects[boxes_of[chain][0]].twin_of is not None:
                stats["twin"] += 1
                stats["triple"] += copies == 3
    return stats


def _graph_stats(stats: dict, relations: list[tuple[int, int, str]], boxes_of_phrase: list[Optional[list[int]]],
                 objects: list[SceneObject], copies: int) -> None:
    """One caption's graph counts: related phrases, those related to >= 2 others, and the phrases whose object
    only the conjunction of their relations tells from its identical copies (measured on the boxes)."""
    neighbours: dict[int, set[int]] = {}
    for s, o, _ in relations:
        neighbours.setdefault(s, set()).add(o)
        neighbours.setdefault(o, set()).add(s)
    stats["related"] += len(neighbours)
    stats["multi_related"] += sum(len(n) >= 2 for n in neighbours.values())
    for subject in {s for s, _, _ in relations}:
        stated = [(boxes_of_phrase[o][0], rel) for s, o, rel in relations if s == subject]
        target = boxes_of_phrase[subject][0]
        if len(stated) < 2 or target >= copies:  # not a copy of identical objects
            continue
        holding = [{k for k in range(copies) if relation_holds(rel, objects[k].box, objects[ref].box)}
                   for ref, rel in stated]
        stats["conjunction"] += all(len(h) >= 2 for h in holding) and set.intersection(*holding) == {target}


def generate_image(task: tuple[int, int, int, str, float]) -> tuple[str, ProposalSet, dict]:
    """Draw, caption and write one image; returns (image id, proposals, counters).

    ``task``: (index, seed, image size, output folder, ``multi_relation``). With probability ``multi_relation``
    the image is a multi-relation image: its identical objects are a triple, and every caption that states
    relations names its subject through two of them (``generate_synthetic``). At 0 no number is drawn for it,
    so the image is the one the generator has always written for its seed.
    """
    index, seed, size, out, multi_relation = task
    rng = np.random.default_rng([seed, index])
    image_id = str(FIRST_IMAGE_ID + index)
    chain_base = 10 * (index + 1)
    with_twins = rng.random() < TWIN_IMAGE_SHARE
    multi = multi_relation > 0 and bool(rng.random() < multi_relation)
    copies = (3 if multi else 2) if with_twins else 0
    while True:
        objects = place_objects(rng, size, copies)
        if multi and with_twins:
            options = conjunctions(objects, copies)
            if options:
                break
            continue
        twin_ref = twin_reference(rng, objects) if with_twins else None
        if not with_twins or twin_ref is not None:
            break
    for k, obj in enumerate(objects):
        obj.chain = str(chain_base + k)
        obj.hard = bool(rng.random() < HARD_OBJECT_SHARE)
    for k in range(copies):
        objects[k].twin_of = (k + 1) % copies

    captioner = Captioner(rng, objects, size, chain_base, copies=copies)
    unique = list(range(copies, len(objects)))
    lines = []
    # A conjunction caption names one copy among three phrases (a twin pair's "double" names two among four): more
    # of a triple's captions name a copy, so that about as many phrases as without the option have identical copies.
    copy_caption_share = MULTI_COPY_CAPTION_SHARE if multi else 0.6
    for c in range(int(rng.integers(CAPTIONS_PER_IMAGE[0], CAPTIONS_PER_IMAGE[1] + 1))):
        if with_twins and (c == 0 or rng.random() < copy_caption_share):
            lines.append(captioner.conjunction_caption(options) if multi else captioner.twin_caption(*twin_ref))
        elif multi:
            lines.append(captioner.multi_other_caption(unique, with_twins))
        else:
            lines.append(captioner.other_caption(unique, with_twins))

    proposals, object_proposals, wrong_labels = image_proposals(rng, objects, size)
    image = draw_scene(rng, objects, size)

    out_dir = Path(out)
    # 4:4:4 chroma: colour edges stay crisp, so twins stay pixel-identical up to JPEG ringing.
    image.save(out_dir / "Images" / f"{image_id}.jpg", quality=JPEG_QUALITY, subsampling=0)
    extra = {k: [captioner.plural_chain] for k in range(copies)} if captioner.used_plural else {}
    scene = captioner.scene_chain if captioner.used_scene else None
    (out_dir / "Annotations" / f"{image_id}.xml").write_text(annotation_xml(image_id, size, objects, extra, scene))
    (out_dir / "Sentences" / f"{image_id}.txt").write_text("\n".join(lines) + "\n")

    counts = phrase_stats(lines, objects, proposals, captioner.plural_chain, copies, captioner.relations)
    counts.update(
        captions=len(lines), objects=len(objects), proposals=len(proposals), object_proposals=object_proposals,
        wrong_labels=wrong_labels, frames=sorted(captioner.frames_used), twin_image=int(with_twins),
        twin_chains=[objects[k].chain for k in range(copies)], multi_image=int(multi), triple_image=int(copies == 3),
    )
    return image_id, proposals, counts

