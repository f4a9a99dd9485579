"""relground with ``configs/flickr30k_reir_authors.yaml`` against the authors' released head, in float64.

The fixture (``tests/fixtures/authors_difftest.npz``, written by ``scripts/authors_difftest.py`` from the authors'
repository at the commit in ``authors_difftest.json``) holds the inputs, the weights in relground's names and the
authors' values of every compared quantity: at iteration 0 and 8000 in training (per-image BatchNorm statistics;
after 7500 the refined top-K re-pooled) and in evaluation. relground must agree to ``TOL`` everywhere; with one
of the authors' choices flipped back to relground's it must not (``test_a_flipped_choice_is_caught``).

Not compared: the running statistics after the 8000-iteration step (relground updates them for all proposals,
then all refined boxes; the authors image by image: the same statistics in another order of the running average),
and the stage-2 slot order and the stage-2 / fused prediction of the phrase whose attention is 0 everywhere (a
tie: the authors' ``torch.topk`` breaks it in an implementation-defined order, relground by the lower index; its
K slots hold the same boxes, compared after matching them).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from relground.ops import self_taught_targets
from tests.model.authors_difftest_common import FIXTURE, FIXTURE_INFO, build_relground, fixture_batch

TOL = 1e-10
SCENARIOS = {"iter0": 0, "iter8000": 8000, "eval": None}


@pytest.fixture(scope="module")
def fixture():
    data = np.load(FIXTURE)
    return {k: data[k] for k in data.files}


@pytest.fixture(autouse=True)
def float64_default():
    """float64 as the default dtype, as the script ran the authors' head (constants made in the default dtype)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def _inputs(fx):
    return {k[len("input."):]: v for k, v in fx.items() if k.startswith("input.") and k != "input.c4_checksum"}


def run_relground(fx, scenario, extra=()):
    """relground on the fixture's inputs and weights; returns (captured tensors, output, model)."""
    inputs = _inputs(fx)
    batch = fixture_batch(inputs)
    weights = {k[len("weight."):]: torch.from_numpy(v) for k, v in fx.items() if k.startswith("weight.")}
    caption_vocab = weights["phrase_encoder.embedding.weight"].shape[0]
    phrase_vocab = weights["decoder.classifier.weight"].shape[0]
    torch.manual_seed(0)
    model = build_relground(caption_vocab, phrase_vocab, batch.batch_size, extra)
    model.relation_weights = weights.pop("relation_weights")  # the authors' class weights, float64
    state = model.state_dict()
    for name, value in weights.items():
        state[name] = value.to(state[name].dtype)
    model.load_state_dict(state)
    missing = [n for n, _ in model.named_parameters() if n not in weights and not n.startswith("backbone.")]
    assert not missing, f"parameters without the authors' weights: {missing}"
    captured = {"x_o": []}
    def phrases(module, args, output):  # a hook returning a value would replace the output
        captured["x_q"] = output[0]

    def boxes(module, args, output):
        captured["x_o"].append(output if torch.is_tensor(output) else output[0])

    hooks = [model.phrase_encoder.register_forward_hook(phrases), model.box_head.register_forward_hook(boxes)]
    losses = model._losses

    def keep(batch_, regress, image_ids, sentence, coarse, topk, fine):
        captured.update(sentence=sentence, coarse=coarse, topk=topk, fine=fine)
        return losses(batch_, regress, image_ids, sentence, coarse, topk, fine)

    model._losses = keep
    iteration = SCENARIOS[scenario]
    model.train(iteration is not None)
    with torch.set_grad_enabled(iteration is not None):
        out = model(batch, iteration=iteration, compute_losses=True)
    for h in hooks:
        h.remove()
    if iteration is not None:
        out.total_loss.backward()
    return captured, out, model, batch


def slot_order(ours, theirs):
    """[B, P, K] permutation of the authors' slots onto relground's: the same box index (a tie's order aside)."""
    order = np.tile(np.arange(ours.shape[-1]), ours.shape[:-1] + (1,))
    for b, p in np.ndindex(*ours.shape[:-1]):
        if ours[b, p, 0] < 0:
            continue
        if sorted(ours[b, p]) == sorted(theirs[b, p]):  # else: other boxes, compared as they are (and differ)
            order[b, p] = [list(theirs[b, p]).index(i) for i in ours[b, p]]
    return order


def reorder(values, order):
    return np.take_along_axis(values, order.reshape(order.shape + (1,) * (values.ndim - 3)), axis=2)


def differences(fx, scenario, extra=()):
    """{quantity: max |relground - authors|} for every compared quantity of ``scenario``."""
    c, out, model, batch = run_relground(fx, scenario, extra)
    a = {k[len(scenario) + 1:]: v for k, v in fx.items() if k.startswith(scenario + ".")}
    phrase, box = batch.phrase_valid.numpy(), batch.proposal_valid.numpy()
    coarse, topk, fine = c["coarse"], c["topk"], c["fine"]
    d = {}

    def put(name, ours, theirs, mask=None):
        ours = ours.detach().double().numpy() if torch.is_tensor(ours) else np.asarray(ours, dtype=np.float64)
        theirs = np.asarray(theirs, dtype=np.float64)
        assert ours.shape == theirs.shape, f"{name}: shape {ours.shape} vs the authors' {theirs.shape}"
        diff = np.abs(ours - theirs)
        if mask is not None:
            diff = diff[np.broadcast_to(mask.reshape(mask.shape + (1,) * (diff.ndim - mask.ndim)), diff.shape)]
        d[name] = float(diff.max()) if diff.size else 0.0

    pair = phrase[:, :, None] & box[:, None, :]
    put("x_q (phrase features)", c["x_q"], a["x_q"], phrase)
    put("x_o (box features)", c["x_o"][0], a["x_o"], box)
    put("stage-1 attention", coarse.attention, a["attention_stage1"], pair)
    put("stage-1 deltas", coarse.deltas, a["deltas_stage1"], pair)
    put("z^c (stage-1 pooled)", coarse.pooled, a["pooled_stage1"], phrase)
    ours_index = np.where(phrase[..., None], topk.index.numpy(), -1)
    order = slot_order(ours_index, a["topk_index"].astype(np.int64))
    put("top-K indices", ours_index, reorder(a["topk_index"], order), phrase)
    put("top-K stage-1 attention", topk.attention, reorder(a["topk_attention"], order), phrase)
    put("top-K boxes", topk.boxes, reorder(a["topk_boxes"], order), phrase)
    if "x_k" in a:
        x_k = c["x_o"][1].reshape(topk.index.shape + (-1,))
        put("x_k (refined top-K re-pooled)", x_k, reorder(a["x_k"], order), phrase)
    put("stage-2 attention", fine.attention, reorder(a["attention_stage2"], order), phrase)
    put("stage-2 deltas", fine.deltas, reorder(a["deltas_stage2"], order), phrase)
    put("z^f (stage-2 pooled)", fine.pooled, a["pooled_stage2"], phrase)
    with torch.no_grad():
        put("ranking similarity, stage 1", model.ranking(coarse.pooled, batch.phrase_valid, c["sentence"]),
            a["ranking_similarity_stage1"])
        put("ranking similarity, stage 2", model.ranking(fine.pooled, batch.phrase_valid, c["sentence"]),
            a["ranking_similarity_stage2"])
        put("relation logits", model.relation(fine.pooled, batch.relation_index), a["relation_logits"])
    # regression targets and weights, in the authors' order: per image, stage 1 then stage 2, when any selected
    weights = (10.0, 10.0, 5.0, 5.0)
    t1, s1, w1, _ = self_taught_targets(batch.proposals, coarse.attention.detach(), 0.6, 0.1, weights,
                                        batch.proposal_valid)
    B, P, K = topk.index.shape
    t2, s2, w2, _ = self_taught_targets(topk.boxes.detach().reshape(B * P, K, 4),
                                        fine.attention.detach().reshape(B * P, 1, K), 0.6, 0.1, weights,
                                        topk.valid.reshape(B * P, K))
    t2, s2, w2 = t2.reshape(B, P, K, 4), s2.reshape(B, P, K), w2.reshape(B, P, K)
    targets, weight, calls = [], [], []
    for b in range(B):
        for t, s, w in ((t1, s1, w1), (t2, s2, w2)):
            sel = s[b] & batch.phrase_valid[b][:, None]
            if sel.any():
                targets.append(t[b][sel]), weight.append(w[b][sel]), calls.append(int(sel.sum()))
    if calls == a["regression_calls"].tolist():
        put("regression targets", torch.cat(targets), a["regression_targets"])
        put("regression weights", torch.cat(weight), a["regression_weights"])
    else:  # other boxes selected
        d["regression targets"] = d["regression weights"] = float("inf")
    for name in ("rec_s2", "rank_s1", "rank_s2", "reg_s1", "reg_s2", "rel"):
        put(f"loss {name}", out.losses[name], a[f"loss.{name}"])
    put("total loss", out.total_loss, a["loss.total"])
    if SCENARIOS[scenario] is not None:
        params = dict(model.named_parameters())
        for key in (k for k in a if k.startswith("grad.")):
            grad = params[key[5:]].grad
            put(f"gradient {key[5:]}", torch.zeros_like(params[key[5:]]) if grad is None else grad, a[key])
        if scenario == "iter0":
            buffers = dict(model.named_buffers())
            for key in (k for k in a if k.startswith("after.")):
                put(f"running statistics {key[6:]}", buffers[key[6:]], a[key])
    else:
        tie = (coarse.attention.detach() == 0).all(-1).numpy()  # attention 0 everywhere: a tie, see the docstring
        put("prediction, stage 1", out.boxes_stage1, a["boxes_stage1"], phrase)
        put("prediction, stage 2", out.boxes_stage2, a["boxes_stage2"], phrase & ~tie)
        put("prediction, fused", out.boxes, a["boxes"], phrase & ~tie)
    return d


def test_fixture_records_its_origin():
    info = json.loads(FIXTURE_INFO.read_text())
    assert info["commit"].startswith("2a962c3") and info["patches"] and info["stubs"]
    assert any(g <= 0 for g in info["vogn_gates_iter0"].values())  # a relation whose gate is 0


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_relground_is_the_authors_code(fixture, scenario):
    d = differences(fixture, scenario)
    worst = {k: v for k, v in d.items() if not v <= TOL}
    assert not worst, f"{scenario}: above {TOL}: {worst}"
    assert len(d) >= 25


@pytest.mark.parametrize(
    "flip, scenario, caught",
    [
        ("model.loss.normalization=batch", "iter0", "loss rec_s2"),  # D1
        ("model.phrase_norm=batch", "iter0", "x_q (phrase features)"),  # D2
        ("model.vogn_zero_gates=keep", "iter0", "stage-2 attention"),  # D4
    ],
)
def test_a_flipped_choice_is_caught(fixture, flip, scenario, caught):
    d = differences(fixture, scenario, [flip])
    assert d[caught] > 1e-6, f"{flip}: {caught} differs by {d[caught]}"
    assert len([v for v in d.values() if not v <= TOL]) > 1  # and more than that one quantity
