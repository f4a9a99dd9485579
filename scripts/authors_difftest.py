"""Writes the fixture of ``tests/model/test_authors_difftest.py``: the authors' released ReIR head run in float64 on
fixed tiny inputs, every quantity the test compares, and the weights in relground's names.

    python scripts/authors_difftest.py --authors PATH      # PATH: a checkout, or the bare git repository `fetch` gives
    # -> tests/fixtures/authors_difftest.npz (numbers) + tests/fixtures/authors_difftest.json (what made them)

The authors' side is youngfly11/ReIR-WeaklyGrounding.pytorch (the test's fixture: HEAD 2a962c3): DetProposalVGHead
(weakly_visual_grounding_reg_rel.py), WeaklyVGLossComputeV3Cates (loss.py), PhraseEmbeddingSentCate
(phrase_embedding_weakly_v1.py), detectron2's ROIPooler / Box2BoxTransform / Boxes. Nothing of it is copied into
this repository: the files are extracted into ``--work`` and patched there. PATCHES and STUBS below are the whole
list; each is written into the fixture's .json too.

The relground side (the names and shapes the weights are mapped to, the C4 map both heads pool from) is
``tests/model/authors_difftest_common.py``. Scenarios: ``iter0`` (training, iteration 0: per-image BatchNorm
statistics, unrefined top-K), ``iter8000`` (training after the refinement start: the refined top-K re-pooled and
normalised with their own statistics, the stage-2 targets with gradient) and ``eval`` (inference, boxes). Inputs:
3 image-caption pairs; a one-phrase caption (item 2, whose phrase also has s_a = 0 on every box), a phrase
without relations in an item with relations (item 1, "a tree"), a relation whose VOGN gate is 0 (checked) and a
relation text without a category.
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.model.authors_difftest_common import (  # noqa: E402
    D, FIXTURE, FIXTURE_INFO, HEIGHT, KEY_DIM, NUM_RELATION_CLASSES, WIDTH, build_relground, closed_form_images,
)

K = 5
SHARPEN = 30.0  # F_cls weights x30 (peaked attention, so that top-K and the gap weights are not ties)
DELTA_SCALE = 4.0  # F_reg's output layer x4: predicted boxes cross the image border (D10), refined ones still overlap
FILES = [
    "detectron2/modeling/weaklygrounding/weakly_visual_grounding_reg_rel.py",
    "detectron2/modeling/weaklygrounding/loss.py",
    "detectron2/modeling/weaklygrounding/phrase_embedding_weakly_v1.py",
    "detectron2/modeling/box_regression.py", "detectron2/modeling/poolers.py",
    "detectron2/structures/boxes.py",
    "detectron2/layers/numerical_stability_softmax.py", "detectron2/layers/spatial_coordinate.py",
    "detectron2/layers/generate_union_region.py", "detectron2/layers/move2cpu.py",
    "detectron2/layers/weighted_smooth_l1_loss.py", "detectron2/layers/wrappers.py",
]
HEAD = "detectron2/modeling/weaklygrounding"
# (files, old, new, why): text replacements in the extracted files
PATCHES = [
    (f"{HEAD}/*.py", "torch.device('cuda')", "torch.device('cpu')", "device: CPU"),
    (f"{HEAD}/*.py", ".float()", ".to(torch.get_default_dtype())",
     "dtype: float64 (the default dtype here); the same arithmetic in float32"),
    (f"{HEAD}/weakly_visual_grounding_reg_rel.py", "self.obj_embed_dim = 2048",
     "self.obj_embed_dim = cfg.DIFFTEST.OBJ_DIM", "width: the test backbone's layer4 (ResNet-10: 512)"),
    (f"{HEAD}/weakly_visual_grounding_reg_rel.py", "self.phrase_embed_dim = 1024",
     "self.phrase_embed_dim = cfg.DIFFTEST.D", "width d of the test"),
    (f"{HEAD}/weakly_visual_grounding_reg_rel.py", "self.rnn_hidden_dim = 1024",
     "self.rnn_hidden_dim = cfg.DIFFTEST.D", "width d of the test"),
    (f"{HEAD}/weakly_visual_grounding_reg_rel.py", "nn.BatchNorm1d(num_features=1024)",
     "nn.BatchNorm1d(num_features=cfg.DIFFTEST.D)", "width d of the test"),
    (f"{HEAD}/weakly_visual_grounding_reg_rel.py", "self.phrase_embed_dim, 512)",
     "self.phrase_embed_dim, cfg.DIFFTEST.KEY_DIM)", "width 512 of the ranking projections -> the test's (fixture size)"),
    (f"{HEAD}/weakly_visual_grounding_reg_rel.py", "self.rel_trans = nn.Linear(self.visual_embed_dim, 512)",
     "self.rel_trans = nn.Linear(self.visual_embed_dim, cfg.DIFFTEST.KEY_DIM)", "width 512 of the VOGN keys -> the test's"),
    (f"{HEAD}/weakly_visual_grounding_reg_rel.py", "512**0.5", "cfg.DIFFTEST.KEY_DIM**0.5", "the same width in the gate"),
    (f"{HEAD}/weakly_visual_grounding_reg_rel.py", "512 ** 0.5", "cfg.DIFFTEST.KEY_DIM ** 0.5",
     "the same width in the ranking similarity"),
    ("detectron2/structures/boxes.py", "dtype=torch.float32", "dtype=torch.get_default_dtype()",
     "Boxes keep float64 (precision only)"),
]
STUBS = {
    "detectron2/config/__init__.py": ("global_cfg = None\n", "the config: set by this script (scripts/train.sh values)"),
    "detectron2/utils/__init__.py": ("", "package marker"),
    "detectron2/utils/events.py": (
        "class _Storage:\n    iter = 0\nSTORAGE = _Storage()\ndef get_event_storage():\n    return STORAGE\n",
        "get_event_storage().iter: the head reads only the iteration"),
    "detectron2/layers/__init__.py": (
        "import torchvision\nfrom torch import nn\nfrom .wrappers import cat\nfrom torchvision.ops import nms, batched_nms\n"
        "class ROIAlign(nn.Module):\n"
        "    def __init__(self, output_size, spatial_scale, sampling_ratio, aligned=True):\n"
        "        super().__init__()\n"
        "        self.args = (output_size, spatial_scale, sampling_ratio, aligned)\n"
        "    def forward(self, input, rois):\n"
        "        o, s, r, a = self.args\n"
        "        return torchvision.ops.roi_align(input, rois.to(input.dtype), o, s, r, a)\n"
        "ROIAlignRotated = None\n",
        "detectron2's ROIAlign needs its unbuilt C extension: torchvision's roi_align(aligned=True), the same "
        "algorithm (ported from detectron2); nms imported, unused"),
    "detectron2/structures/__init__.py": ("from .boxes import Boxes, BoxMode, pairwise_iou\n", "package exports"),
    f"{HEAD}/PhraseGraph.py": ("WordPhraseGraphV1 = None\n", "not in the released repository; imported, unused"),
    f"{HEAD}/StructureVisualGraph.py": ("StructureGraphMessagePassing = None\n",
                                        "not in the released repository; imported, unused"),
    "fvcore/nn/__init__.py": ("def sigmoid_focal_loss_jit(*a, **k): raise NotImplementedError\n"
                              "def smooth_l1_loss(*a, **k): raise NotImplementedError\n",
                              "imported by loss.py, unused by WeaklyVGLossComputeV3Cates"),
}
# Not a file: RCNN_top is relground's frozen layer4 (the same module and weights), kept in eval mode as the authors'
# FrozenBatchNorm2d layers; the C4 map both heads pool from is relground's frozen trunk's.
PACKAGE_MARKERS = ["detectron2/__init__.py", "detectron2/modeling/__init__.py", f"{HEAD}/__init__.py",
                   "fvcore/__init__.py"]

# ---- inputs ------------------------------------------------------------------------------------------------------
SENTENCES = [
    dict(sentence="a man in a red shirt holds a small dog", phrases=[("a man", 0), ("a red shirt", 3), ("a small dog", 7)],
         rels=[(0, 1, [5], "in"), (0, 2, [13, 40], "holds"), (2, 1, [0], "near")]),  # category 0: none (ignored)
    dict(sentence="two women sit on a bench near a tree", phrases=[("two women", 0), ("a bench", 4), ("a tree", 7)],
         rels=[(0, 1, [30], "sit on")]),  # "a tree": no relation, in an item with one
    dict(sentence="ghosts float", phrases=[("ghosts", 0)], rels=[]),  # one phrase; s_a = 0 on every box
]
CLASSES = ["man", "shirt", "dog", "woman", "bench", "tree", "hat", "car"]
BOXES_PER_ITEM = [10, 10, 5]
REL_CATEGORIES = 88


def extract(authors: Path, work: Path) -> str:
    """The files of FILES from a checkout or a (bare) git repository into ``work``; returns the commit."""
    git = ["git", f"--git-dir={authors}"] if (authors / "HEAD").is_file() and not (authors / ".git").exists() else [
        "git", "-C", str(authors)]
    commit = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    archive = subprocess.run(git + ["archive", "HEAD", *FILES], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(work)
    return commit


def build_package(authors: Path, work: Path) -> str:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    commit = extract(authors, work)
    for pattern, old, new, _ in PATCHES:
        for path in work.glob(pattern):
            text = path.read_text()
            if old not in text and "*" not in pattern:
                raise SystemExit(f"patch {old!r} not found in {path}")
            path.write_text(text.replace(old, new))
    for name, (text, _) in STUBS.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    for name in PACKAGE_MARKERS:
        (work / name).touch()
    return commit


def write_data(folder: Path, rng: np.random.Generator) -> tuple[list, list, dict]:
    folder.mkdir(parents=True, exist_ok=True)
    cap, phr = [], []
    for s in SENTENCES:
        cap += [w for w in s["sentence"].split(" ") if w not in cap]
        for p, _ in s["phrases"]:
            phr += [w for w in p.split(" ") if w not in phr]
    rel = sorted({w for s in SENTENCES for r in s["rels"] for w in r[3].split(" ")})
    json.dump(cap, open(folder / "vocab.json", "w"))
    json.dump(phr, open(folder / "vocab_phr.json", "w"))
    json.dump(rel, open(folder / "vocab_rel.json", "w"))
    json.dump({"rel cates": ["__none__"] + [f"rel{i}" for i in range(REL_CATEGORIES)]}, open(folder / "rel_cates.json", "w"))
    # 8-d word vectors: labels and words share a positive direction (cosines mostly > 0); "car" points away (s_a 0),
    # "ghosts" away from every label but "car" (absent from item 2's boxes): its s_a is 0 on every box there
    glove = {}
    for w in sorted(set(cap) | set(CLASSES)):
        v = np.ones(8) + 0.7 * rng.standard_normal(8)
        if w in ("car", "ghosts"):
            v = -3 * np.ones(8) + 0.1 * rng.standard_normal(8)
        glove[w] = v
    pickle.dump(glove, open(folder / "glove.pkl", "wb"))
    return cap, phr, glove


def authors_config(data: Path, obj_dim: int):
    """The authors' scripts/train.sh values (what the head and loss read)."""
    return NS(
        MODEL=NS(
            VG=NS(S2_TOPK=K, LSTM_BIDIRECTION=False, SPATIAL_FEAT=False, USING_DET_KNOWLEDGE=True,
                  PHRASE_SELECT_TYPE="Mean", REG_IOU=0.6, REG_GAP_SCORE=0.1, REG_LOSS_FACTOR=0.1,
                  REL_CLS_LOSS_FACTOR=1.0, VOCAB_FILE=f"{data}/vocab.json", VOCAB_PHR_FILE=f"{data}/vocab_phr.json",
                  VOCAB_REL_FILE=f"{data}/vocab_rel.json", GLOVE_DICT_FILE=f"{data}/glove.pkl"),
            RELATION=NS(IS_ON=True, REL_CATE_PATH=f"{data}/rel_cates.json"),
            ROI_BOX_HEAD=NS(BBOX_REG_WEIGHTS=(10.0, 10.0, 5.0, 5.0), POOLER_RESOLUTION=7, POOLER_SAMPLING_RATIO=2,
                            POOLER_TYPE="ROIAlignV2"),
        ),
        SOLVER=NS(REG_START_ITER=7500, INIT_PARA=True),
        DIFFTEST=NS(OBJ_DIM=obj_dim, D=D, KEY_DIM=KEY_DIM),
    )


def make_proposals(rng: np.random.Generator):
    """Clusters of overlapping boxes (IoU >= 0.6 neighbours) in items 0-1; item 2: 5 disjoint boxes (its phrase's
    attention is 0 everywhere, so its top-K is a tie: no box may overlap another for the tie to be harmless)."""
    B, M = len(SENTENCES), max(BOXES_PER_ITEM)
    boxes, labels = np.zeros((B, M, 4)), np.zeros((B, M), dtype=np.int64)
    for b in range(2):
        centres = [(14 + 10 * b, 14), (56, 40), (34, 50)]  # the first cluster touches the image border
        for m in range(M):
            cx, cy = centres[m % 3]
            cx, cy = cx + rng.uniform(-2, 2), cy + rng.uniform(-2, 2)
            w, h = rng.uniform(18, 28), rng.uniform(18, 28)
            boxes[b, m] = [max(cx - w / 2, 0), max(cy - h / 2, 0), min(cx + w / 2, WIDTH - 1), min(cy + h / 2, HEIGHT - 1)]
        labels[b] = rng.permutation(np.array([0, 1, 2, 3, 4, 5, 6, 7, 0, 7]))  # two "car" boxes: s_a = 0
    for m in range(5):
        x = 2 + 15 * m
        boxes[2, m] = [x, 10 + 5 * m, x + 12, 30 + 5 * m]
    labels[2, :5] = [0, 1, 2, 3, 4]
    return boxes, labels


def relground_inputs(cap, phr, boxes, labels, prior) -> dict:
    """The batch as arrays (the fixture's inputs); ``prior``: the authors' s_a per item [P_b, M_b]."""
    cap_id = {w: i + 1 for i, w in enumerate(cap + ["relate", "butted"])}  # the authors append these two
    phr_id = {w: i + 1 for i, w in enumerate(phr)}
    B, M = boxes.shape[:2]
    P = max(len(s["phrases"]) for s in SENTENCES)
    T = max(len(s["sentence"].split(" ")) for s in SENTENCES)
    L = max(len(p.split(" ")) for s in SENTENCES for p, _ in s["phrases"]) + 1
    a = dict(words=np.zeros((B, T), np.int64), word_lengths=np.zeros(B, np.int64),
             phrase_spans=np.zeros((B, P, 2), np.int64), phrase_valid=np.zeros((B, P), bool),
             phrase_targets=np.zeros((B, P, L), np.int64), category_prior=np.zeros((B, P, M)),
             proposals=boxes, proposal_labels=labels,
             proposal_valid=np.arange(M)[None, :] < np.array(BOXES_PER_ITEM)[:, None])
    rel_index, rel_labels = [], []
    for b, s in enumerate(SENTENCES):
        ws = s["sentence"].split(" ")
        a["words"][b, : len(ws)] = [cap_id[w] for w in ws]
        a["word_lengths"][b] = len(ws)
        for i, (p, start) in enumerate(s["phrases"]):
            n = len(p.split(" "))
            a["phrase_spans"][b, i] = [start, start + n]
            a["phrase_valid"][b, i] = True
            a["phrase_targets"][b, i, :n] = [phr_id[w] for w in p.split(" ")]
            a["category_prior"][b, i, : BOXES_PER_ITEM[b]] = prior[b][i]
        for i, j, cats, _ in s["rels"]:
            rel_index.append([b, i, j])
            rel_labels.append([1.0 if c + 1 in cats else 0.0 for c in range(NUM_RELATION_CLASSES)])
    a["relation_index"], a["relation_labels"] = np.array(rel_index, np.int64), np.array(rel_labels)
    return a, cap_id, phr_id


def authors_inputs(maps, boxes, glove):
    from detectron2.structures import Boxes

    ids, sentences, sgs, targets, precomp, det = [], [], [], [], [], []
    for b, s in enumerate(SENTENCES):
        n = BOXES_PER_ITEM[b]
        pids = [100 * b + i for i in range(len(s["phrases"]))]
        ids.append(pids)
        sentences.append(dict(sentence=s["sentence"], phrases=[
            dict(phrase_id=pid, phrase_type="x", phrase=p, first_word_index=st) for pid, (p, st) in zip(pids, s["phrases"])]))
        sgs.append([[pids[i], pids[j], cats, txt] for i, j, cats, txt in s["rels"]])
        targets.append(Boxes(torch.zeros(len(pids), 4), (HEIGHT, WIDTH)))
        precomp.append(Boxes(torch.as_tensor(boxes[b, :n]).clone(), (HEIGHT, WIDTH)))
        det.append(torch.tensor(np.stack([glove[CLASSES[l]] for l in LABELS[b, :n].tolist()])))
    return maps, ids, targets, precomp, None, None, None, sgs, sentences, [f"img{b}" for b in range(len(SENTENCES))], det


def mapping(head) -> list[tuple[str, str, str]]:
    """(authors' name, relground name, how): ``[:, :d]`` / ``[:, d:]`` = the phrase / box half of a Linear on
    concat(x_q, x_o) (relground splits it)."""
    m = [("phrase_embed.enc_embedding.weight", "phrase_encoder.embedding.weight", "")]
    m += [(f"phrase_embed.sent_rnn.{n}", f"phrase_encoder.rnn.{n}", "") for n, _ in head.phrase_embed.sent_rnn.named_parameters()]
    for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        m += [(f"phr_batchnorm.{n}", f"phrase_encoder.norm.{n}", ""), (f"vis_batchnorm.{n}", f"box_head.norm.{n}", "")]
    m += [("visual_embedding.0.weight", "box_head.fc.weight", ""), ("visual_embedding.0.bias", "box_head.fc.bias", ""),
          ("similarity_fc.0.weight", "matching.cls_phrase.weight", ":d"), ("similarity_fc.0.weight", "matching.cls_box.weight", "d:"),
          ("similarity_fc.0.bias", "matching.cls_box.bias", ""),
          ("box_reg_fc.0.weight", "matching.reg_phrase.weight", ":d"), ("box_reg_fc.0.weight", "matching.reg_box.weight", "d:"),
          ("box_reg_fc.0.bias", "matching.reg_box.bias", ""),
          ("box_reg_fc.2.weight", "matching.reg_out.weight", ""), ("box_reg_fc.2.bias", "matching.reg_out.bias", ""),
          ("rel_trans.weight", "graph.key.weight", ""), ("rel_trans.bias", "graph.key.bias", ""),
          ("agg_trans.0.weight", "graph.message.weight", ""), ("agg_trans.0.bias", "graph.message.bias", ""),
          ("relation_merge.0.weight", "relation.mlp.0.weight", ""), ("relation_merge.0.bias", "relation.mlp.0.bias", ""),
          ("vis2rel.weight", "relation.mlp.2.weight", ""), ("vis2rel.bias", "relation.mlp.2.bias", ""),
          ("vis2phr.weight", "decoder.classifier.weight", ""), ("vis2phr.bias", "decoder.classifier.bias", ""),
          ("visual_mlp.weight", "ranking.visual.weight", ""), ("visual_mlp.bias", "ranking.visual.bias", ""),
          ("sent_mlp.weight", "ranking.text.weight", ""), ("sent_mlp.bias", "ranking.text.bias", "")]
    m += [(f"dec_phrase_gru.{n}", f"decoder.rnn.{n}", "") for n, _ in head.dec_phrase_gru.named_parameters()]
    return m


def to_relground(values: dict, head) -> dict:
    out = {}
    for a, r, how in mapping(head):
        if a not in values:
            continue
        v = values[a]
        out[r] = v[:, :D] if how == ":d" else v[:, D:] if how == "d:" else v
    return out


def numpy(t):
    """A copy (``.numpy()`` shares memory with the tensor, and buffers are reloaded in place between scenarios)."""
    t = t.detach().cpu()
    return (t.to(torch.float64) if t.is_floating_point() else t).numpy().copy()


def run_authors(head, A, AL, inputs, iteration: int, train: bool) -> dict:
    """One forward (+ backward in training) of the authors' head; everything compared, per item, padded."""
    from detectron2.utils import events

    events.STORAGE.iter = iteration
    head.train(train)
    head.rcnn_top.eval()  # the authors' RCNN_top has FrozenBatchNorm2d: relground's frozen layer4 stays in eval
    rec = {"phr": [], "vis": [], "dec": [], "reg": [], "loss": {}, "prior": []}
    hooks = [head.phr_batchnorm.register_forward_hook(lambda m, i, o: rec["phr"].append(o)),
             head.vis_batchnorm.register_forward_hook(lambda m, i, o: rec["vis"].append(o))]
    orig_decoder, orig_loss, orig_l1, orig_prior = head.phrase_decoder, head.VGLoss, AL.weighted_smooth_l1_loss, head.cal_det_label_sim_max
    head.phrase_decoder = lambda v, e: (rec["dec"].append(v), orig_decoder(v, e))[1]
    names = ["phrase_mask", "decode_logits", "topk_decoder_logits", "phrase_dec_ids", "ctx_sim", "ctx_sim_s1",
             "pred_similarity", "topk_pred_similarity", "boxes_targets", "precomp_boxes", "pred_targets",
             "topk_pred_targets", "topk_precomp_boxes", "rel_cls_s0", "rel_cls_s1", "rel_cls_gt", "rel_reconst_s0",
             "rel_reconst_s1", "rel_mask", "rel_dec_idx"]
    head.VGLoss = lambda *args: (rec["loss"].update(zip(names, args)), orig_loss(*args))[1]
    AL.weighted_smooth_l1_loss = lambda input, target, beta, weight, reduction="none": (
        rec["reg"].append((target.detach().clone(), weight.detach().clone())), orig_l1(input, target, beta, weight, reduction))[1]
    head.cal_det_label_sim_max = lambda *a: (rec["prior"].append(orig_prior(*a)), rec["prior"][-1])[1]
    try:
        losses, results = head(*inputs)
    finally:
        for h in hooks:
            h.remove()
        head.phrase_decoder, head.VGLoss, AL.weighted_smooth_l1_loss = orig_decoder, orig_loss, orig_l1
        head.cal_det_label_sim_max = orig_prior
    return rec, losses, results


def padded(per_item, shape_tail, P=3, fill=0.0):
    out = np.full((len(per_item), P) + tuple(shape_tail), fill)
    for b, v in enumerate(per_item):
        v = numpy(v)
        out[(b, slice(0, v.shape[0])) + tuple(slice(0, s) for s in v.shape[1:])] = v
    return out


LABELS = None


def main() -> None:
    global LABELS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--authors", required=True, type=Path,
                    help="a checkout (or bare git repository) of youngfly11/ReIR-WeaklyGrounding.pytorch")
    ap.add_argument("--work", type=Path, default=Path("/tmp/relground_authors_difftest"),
                    help="where the authors' files are extracted and patched (default /tmp/relground_authors_difftest)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    commit = build_package(args.authors.resolve(), args.work / "pkg")
    sys.path.insert(0, str(args.work / "pkg"))
    rng = np.random.default_rng(args.seed)
    cap, phr, glove = write_data(args.work / "data", rng)
    boxes, LABELS = make_proposals(rng)
    torch.manual_seed(args.seed)

    rg = build_relground(len(cap) + 3, len(phr) + 1, len(SENTENCES))
    import detectron2.config

    detectron2.config.global_cfg = authors_config(args.work / "data", rg.backbone.out_channels)
    from detectron2.modeling.poolers import ROIPooler
    from detectron2.modeling.weaklygrounding import loss as AL
    from detectron2.modeling.weaklygrounding import weakly_visual_grounding_reg_rel as A

    class StandardPooler(nn.Module):  # = detectron2/modeling/roi_heads/roi_heads.py's box pooler, its whole use
        def __init__(self):
            super().__init__()
            self.box_pooler = ROIPooler(output_size=7, scales=(1.0 / 16,), sampling_ratio=2, pooler_type="ROIAlignV2")

        def forward(self, features, proposals):
            return self.box_pooler(features, [x for x in proposals])

    head = A.DetProposalVGHead(StandardPooler(), nn.Sequential(rg.backbone.layer4)).double()
    assert head.phrase_embed.vocab_to_id == {w: i + 1 for i, w in enumerate(cap + ["relate", "butted"])}
    with torch.no_grad():  # non-trivial BatchNorm state; peaked attention
        for bn in (head.vis_batchnorm, head.phr_batchnorm):
            bn.running_mean.normal_(0, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.2)
        head.similarity_fc[0].weight.mul_(SHARPEN)
        head.box_reg_fc[2].weight.mul_(DELTA_SCALE)  # refined / predicted boxes cross the border
        head.box_reg_fc[2].bias.mul_(DELTA_SCALE)
        for name, p in list(head.named_parameters()) + list(head.named_buffers()):
            if p.is_floating_point() and not name.startswith("rcnn_top."):  # stored as float32: representable
                p.copy_(p.float().double())  # (rcnn_top is the closed-form backbone's layer4, not stored)

    images = closed_form_images(len(SENTENCES))
    maps = rg.backbone.image_maps(images, torch.tensor([[HEIGHT, WIDTH]] * len(SENTENCES)))
    maps = maps if torch.is_tensor(maps) else maps.maps
    inputs = authors_inputs(maps, boxes, glove)

    # s_a: the authors' (the batch's category_prior); VOGN gates: make one relation's gate <= 0 (centred keys)
    before = copy.deepcopy(head.state_dict())
    rec, _, _ = run_authors(head, A, AL, inputs, 0, train=True)
    head.load_state_dict(before)  # the dry run updated the running statistics
    prior = [p.detach() for p in rec["prior"]]
    assert float(prior[2].abs().max()) == 0.0, "the one-phrase caption's phrase must have s_a = 0 on every box"
    nodes = []
    for b, s in enumerate(SENTENCES):
        att = rec["loss"]["pred_similarity"][b]
        top = torch.topk(att, dim=1, k=K)
        feats = rec["vis"][b][top.indices]
        nodes.append((top.values[..., None] * feats).sum(1))
    # item 0's phrases are pairwise related: a bias that makes gate(0, 1) < 0 and gate(0, 2), gate(1, 2) > 0, so
    # that one edge is dropped (D4) and phrase 2 keeps two (a softmax with a gradient into rel_trans)
    with torch.no_grad():
        head.rel_trans.weight.mul_(3.0)
        u = nodes[0].detach() @ head.rel_trans.weight.T  # [3, KEY_DIM]
        m, v = (u[0] + u[1]) / 2, (u[0] - u[1]) / 2
        direction = u[2] - m
        alpha = (float((v @ direction).abs()) / float(direction @ direction) + float(v.norm() / direction.norm())) / 2
        head.rel_trans.bias.copy_(alpha * direction - m)
        for p in head.rel_trans.parameters():
            p.copy_(p.float().double())
    initial = copy.deepcopy(head.state_dict())

    arrays, cap_id, phr_id = relground_inputs(cap, phr, boxes, LABELS, [p.numpy() for p in prior])
    out = {f"input.{k}": v for k, v in arrays.items()}
    out["input.c4_checksum"] = np.array([float(maps.sum()), float((maps * maps).sum())])
    for name, value in to_relground(initial, head).items():
        out[f"weight.{name}"] = numpy(value).astype(np.float32) if value.is_floating_point() else numpy(value)
        assert not value.is_floating_point() or np.array_equal(out[f"weight.{name}"].astype(np.float64), numpy(value)), name
    out["weight.relation_weights"] = numpy(AL.get_rel_weights(10))  # the authors' float64 class weights
    B = len(SENTENCES)
    gates = {}
    for scenario, iteration, train in (("iter0", 0, True), ("iter8000", 8000, True), ("eval", 8000, False)):
        head.load_state_dict(initial)
        head.zero_grad()
        rec, losses, results = run_authors(head, A, AL, inputs, iteration, train)
        L = rec["loss"]
        refine = iteration > 7500
        o = {}
        # a one-phrase caption is normalised as [x, x] in training: its output's first row
        o["x_q"] = padded([rec["phr"][b][: len(SENTENCES[b]["phrases"])] for b in range(B)], (D,))
        calls = 2 if refine else 1
        o["x_o"] = np.zeros((B, 10, D))
        for b in range(B):
            o["x_o"][b, : BOXES_PER_ITEM[b]] = numpy(rec["vis"][b * calls])
        o["attention_stage1"] = padded(L["pred_similarity"], (10,))
        o["deltas_stage1"] = padded(L["pred_targets"], (10, 4))
        top = [torch.topk(L["pred_similarity"][b], dim=1, k=K) for b in range(B)]
        o["topk_index"] = padded([t.indices for t in top], (K,), fill=-1)
        o["topk_attention"] = padded([t.values for t in top], (K,))
        o["topk_boxes"] = padded([L["topk_precomp_boxes"][b].tensor.reshape(-1, K, 4) for b in range(B)], (K, 4))
        if refine:
            o["x_k"] = padded([rec["vis"][b * 2 + 1].reshape(-1, K, D) for b in range(B)], (K, D))
        o["attention_stage2"] = padded(L["topk_pred_similarity"], (K,))
        o["deltas_stage2"] = padded(L["topk_pred_targets"], (K, 4))
        o["pooled_stage2"] = padded(rec["dec"][1::2], (D,))
        o["pooled_stage1"] = padded(rec["dec"][0::2], (D,))
        o["ranking_similarity_stage1"] = numpy(L["ctx_sim_s1"])
        o["ranking_similarity_stage2"] = numpy(L["ctx_sim"])
        o["relation_logits"] = numpy(torch.cat([x for x in L["rel_cls_s1"] if x is not None]))
        # regression targets and weights of the smooth-L1 calls (per image: stage 1, then stage 2, when any)
        o["regression_targets"] = numpy(torch.cat([t for t, _ in rec["reg"]]))
        o["regression_weights"] = numpy(torch.cat([w for _, w in rec["reg"]]))
        o["regression_calls"] = np.array([t.shape[0] for t, _ in rec["reg"]])
        for name_a, name_r in (("noun_topk_reconst_loss", "rec_s2"), ("disc_img_sent_loss_s2", "rank_s1"),
                               ("disc_img_sent_loss_s1", "rank_s2"), ("reg_loss_s1", "reg_s1"),
                               ("reg_loss_s2", "reg_s2"), ("rel_cls_loss_s1", "rel")):
            scale = 10.0 if name_r.startswith("reg") else 1.0  # the authors' terms carry lambda_reg 0.1
            o[f"loss.{name_r}"] = np.array(float(losses[name_a]) * scale)
        total = sum(v for v in losses.values())
        o["loss.total"] = np.array(float(total))
        if train:
            total.backward()
            grads = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in head.named_parameters()}
            for name, g in to_relground(grads, head).items():
                o[f"grad.{name}"] = numpy(g)
            bns = {f"{n}.{b}": getattr(getattr(head, n), b) for n in ("vis_batchnorm", "phr_batchnorm")
                   for b in ("running_mean", "running_var")}
            for name, v in to_relground(bns, head).items():
                o[f"after.{name}"] = numpy(v)
        else:
            (_, _, pred_boxes, _, _, _, _, _, _, topk_pred_boxes, fusion_pred_boxes, _, _, _) = results
            o["boxes_stage1"] = padded([x.tensor for x in pred_boxes], (4,))
            o["boxes_stage2"] = padded([x.tensor for x in topk_pred_boxes], (4,))
            o["boxes"] = padded([x.tensor for x in fusion_pred_boxes], (4,))
        for k, v in o.items():
            out[f"{scenario}.{k}"] = np.asarray(v, dtype=np.float64 if np.asarray(v).dtype.kind == "f" else None)
        if scenario == "iter0":  # the raw VOGN gates of the relations, from the authors' own nodes
            for b in range(2):
                top_b = top[b]
                feats = rec["vis"][b][top_b.indices]
                c = (top_b.values[..., None] * feats).sum(1)
                keys = head.rel_trans(c)
                for i, j, _, _ in SENTENCES[b]["rels"]:
                    gates[f"{b}:{i}-{j}"] = float((keys[i] * keys[j]).sum() / KEY_DIM**0.5)
    assert gates["0:0-1"] <= 0 < min(gates["0:0-2"], gates["0:2-1"]), gates
    assert out["iter8000.loss.reg_s2"] > 0, "stage-2 regression without a weighted entry: D5 would not be exercised"
    outside = (out["eval.boxes"][..., :2] < 0).any() or (out["eval.boxes"][..., 2] > WIDTH).any()
    assert outside, "no prediction crosses the image border: D10 would not be exercised"
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(FIXTURE, **out)
    info = dict(
        authors="youngfly11/ReIR-WeaklyGrounding.pytorch", commit=commit,
        files=FILES, patches=[dict(files=f, old=o_, new=n, why=w) for f, o_, n, w in PATCHES],
        stubs={k: why for k, (_, why) in STUBS.items()},
        config="the authors' scripts/train.sh values: S2_TOPK 5, REG_IOU 0.6, REG_GAP_SCORE 0.1, REG_LOSS_FACTOR 0.1, "
               "REL_CLS_LOSS_FACTOR 1, USING_DET_KNOWLEDGE, PHRASE_SELECT_TYPE Mean, REG_START_ITER 7500, "
               "SPATIAL_FEAT off, forward GRU",
        weights="PyTorch's default initialisation (seed %d), then: BatchNorm running statistics / affine random, "
                "similarity_fc weights x%g, box_reg_fc[2] x4, rel_trans weights x3 and its bias centring the keys "
                "(VOGN gates of both signs, one phrase with two active edges)" % (args.seed, SHARPEN),
        vogn_gates_iter0=gates, sentences=SENTENCES, classes=CLASSES, boxes_per_item=BOXES_PER_ITEM,
        images_and_backbone="closed form, tests/model/authors_difftest_common.py",
        command="python scripts/authors_difftest.py --authors <checkout>",
    )
    FIXTURE_INFO.write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size // 1024} KiB) and {FIXTURE_INFO}; authors' commit {commit}")
    print("VOGN gates at iteration 0:", gates)


if __name__ == "__main__":
    main()
