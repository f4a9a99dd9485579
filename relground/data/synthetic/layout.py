"""One synthetic image written in the Flickr30K Entities layout (JPEG, XML, sentences) and its measured counts."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np

from relground.data.proposals import ProposalSet
from relground.data.synthetic.captions import Captioner
from relground.data.synthetic.detector import image_proposals, iou_matrix
from relground.data.synthetic.scene import SceneObject, draw_scene, place_objects, twin_reference
from relground.data.synthetic.vocabulary import (
    CAPTIONS_PER_IMAGE, FIRST_IMAGE_ID, HARD_OBJECT_SHARE, JPEG_QUALITY, TWIN_IMAGE_SHARE,
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


def phrase_stats(lines: list[str], objects: list[SceneObject], proposals: ProposalSet, plural_chain: str) -> dict:
    """Measure, per grounded phrase instance, the properties printed by the generator."""
    boxes_of = {o.chain: [k] for k, o in enumerate(objects)}
    boxes_of[plural_chain] = [0, 1]
    iou_pp = iou_matrix(proposals.boxes, proposals.boxes)  # [M, M]
    np.fill_diagonal(iou_pp, 0.0)
    stats = dict(grounded=0, no_proposal_05=0, refinable=0, twin=0)
    for line in lines:
        for chain in re.findall(r"\[/EN#(\d+)/", line):
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
    return stats


def generate_image(task: tuple[int, int, int, str]) -> tuple[str, ProposalSet, dict]:
    """Draw, caption and write one image; returns (image id, proposals, counters)."""
    index, seed, size, out = task
    rng = np.random.default_rng([seed, index])
    image_id = str(FIRST_IMAGE_ID + index)
    chain_base = 10 * (index + 1)
    with_twins = rng.random() < TWIN_IMAGE_SHARE
    while True:
        objects = place_objects(rng, size, with_twins)
        twin_ref = twin_reference(rng, objects) if with_twins else None
        if not with_twins or twin_ref is not None:
            break
    for k, obj in enumerate(objects):
        obj.chain = str(chain_base + k)
        obj.hard = bool(rng.random() < HARD_OBJECT_SHARE)
    if with_twins:
        objects[0].twin_of, objects[1].twin_of = 1, 0

    captioner = Captioner(rng, objects, size, chain_base)
    unique = list(range(2 if with_twins else 0, len(objects)))
    lines = []
    for c in range(int(rng.integers(CAPTIONS_PER_IMAGE[0], CAPTIONS_PER_IMAGE[1] + 1))):
        if with_twins and (c == 0 or rng.random() < 0.6):
            lines.append(captioner.twin_caption(*twin_ref))
        else:
            lines.append(captioner.other_caption(unique, with_twins))

    proposals, object_proposals, wrong_labels = image_proposals(rng, objects, size)
    image = draw_scene(rng, objects, size)

    out_dir = Path(out)
    # 4:4:4 chroma: colour edges stay crisp, so twins stay pixel-identical up to JPEG ringing.
    image.save(out_dir / "Images" / f"{image_id}.jpg", quality=JPEG_QUALITY, subsampling=0)
    extra = {0: [captioner.plural_chain], 1: [captioner.plural_chain]} if captioner.used_plural else {}
    scene = captioner.scene_chain if captioner.used_scene else None
    (out_dir / "Annotations" / f"{image_id}.xml").write_text(annotation_xml(image_id, size, objects, extra, scene))
    (out_dir / "Sentences" / f"{image_id}.txt").write_text("\n".join(lines) + "\n")

    counts = phrase_stats(lines, objects, proposals, captioner.plural_chain)
    counts.update(
        captions=len(lines), objects=len(objects), proposals=len(proposals), object_proposals=object_proposals,
        wrong_labels=wrong_labels, frames=sorted(captioner.frames_used), twin_image=int(with_twins),
        twin_chains=[objects[0].chain, objects[1].chain] if with_twins else [],
    )
    return image_id, proposals, counts

