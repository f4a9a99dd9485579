import math

import pytest
import torch

from relground.model.matching import BoxDecoder, MatchingHeads, fuse_prior, gather_topk, prior_attention, select_topk
from relground.ops import _reference


def test_prior_attention_masks_zero_prior_and_guards_all_zero_rows():
    logits = torch.randn(1, 3, 5, dtype=torch.float64)
    prior = torch.tensor([[[0.5, 0.0, 0.2, 0.0, 0.9], [0.0] * 5, [0.3, 0.3, 0.0, 0.0, 0.7]]], dtype=torch.float64)
    valid = torch.tensor([[[True, True, True, True, False]]])
    score, attention, mask = prior_attention(logits, prior, valid)
    # Row 0: softmax of logits * prior over {0, 2} (4 has a prior but is not a valid box).
    kept = [0, 2]
    s = [logits[0, 0, j].item() * prior[0, 0, j].item() for j in kept]
    expected = torch.tensor([math.exp(v) for v in s]) / sum(math.exp(v) for v in s)
    torch.testing.assert_close(attention[0, 0, kept], expected.double())
    assert attention[0, 0, [1, 3, 4]].abs().sum() == 0
    # Row 1: every prior is 0 -> plain softmax of the logits over the 4 valid boxes.
    torch.testing.assert_close(attention[0, 1, :4], torch.softmax(logits[0, 1, :4], 0))
    assert attention[0, 1, 4] == 0 and mask[0, 1].tolist() == [True, True, True, True, False]
    torch.testing.assert_close(attention.sum(-1), torch.ones(1, 3, dtype=torch.float64))
    torch.testing.assert_close(score[0, 2], logits[0, 2] * prior[0, 2])


def test_sigmoid_product_is_monotone_in_the_prior_for_negative_logits():
    logits = torch.tensor([-2.0, -2.0])
    prior = torch.tensor([0.2, 0.9])
    assert fuse_prior(logits, prior, "product")[1] < fuse_prior(logits, prior, "product")[0]  # the sign flip
    assert fuse_prior(logits, prior, "sigmoid_product")[1] > fuse_prior(logits, prior, "sigmoid_product")[0]
    with pytest.raises(ValueError, match="score_fusion"):
        fuse_prior(logits, prior, "sum")


def test_topk_indices_follow_the_scores():
    torch.manual_seed(1)
    attention = torch.rand(2, 3, 7)
    valid = torch.ones(2, 7, dtype=torch.bool)
    valid[1, 5:] = False
    index, slot_valid = select_topk(attention, valid, 4, _reference._topk_select_reference)
    for b in range(2):
        for p in range(3):
            candidates = [m for m in range(7) if valid[b, m]]
            expected = sorted(candidates, key=lambda m: -attention[b, p, m].item())[:4]
            assert index[b, p].tolist() == expected
    assert slot_valid.all()


def test_topk_marks_slots_beyond_the_valid_proposals():
    attention = torch.rand(1, 1, 4)
    valid = torch.tensor([[True, False, True, False]])
    index, slot_valid = select_topk(attention, valid, 3, _reference._topk_select_reference)
    assert sorted(index[0, 0, :2].tolist()) == [0, 2] and index[0, 0, 2] == -1
    assert slot_valid.tolist() == [[[True, True, False]]]


def test_gather_topk_shared_and_per_phrase():
    values = torch.arange(2 * 5).reshape(2, 5).float()
    index = torch.tensor([[[4, 0], [1, -1]], [[2, 3], [0, 0]]])
    out = gather_topk(values, index)
    assert out.tolist() == [[[4.0, 0.0], [1.0, 0.0]], [[7.0, 8.0], [5.0, 5.0]]]
    per_phrase = torch.arange(2 * 2 * 5).reshape(2, 2, 5).float()
    out = gather_topk(per_phrase, index, per_phrase=True)
    assert out[1, 1].tolist() == [15.0, 15.0] and out[0, 1].tolist() == [6.0, 5.0]


def _decode_loop(delta, box, weights, clip):
    wx, wy, ww, wh = weights
    w, h = box[2] - box[0], box[3] - box[1]
    cx, cy = box[0] + 0.5 * w, box[1] + 0.5 * h
    dw, dh = min(delta[2] / ww, clip), min(delta[3] / wh, clip)
    ncx, ncy = delta[0] / wx * w + cx, delta[1] / wy * h + cy
    nw, nh = math.exp(dw) * w, math.exp(dh) * h
    return [ncx - nw / 2, ncy - nh / 2, ncx + nw / 2, ncy + nh / 2]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_decoding_is_torchvisions_bit_for_bit(dtype):
    from torchvision.models.detection._utils import BoxCoder

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=g) * 300
    boxes = torch.cat([xy, xy + 1 + torch.rand(500, 2, generator=g) * 200], 1).to(dtype)
    deltas = (torch.randn(500, 4, generator=g) * 3).to(dtype)
    deltas[:5, 2:] = 40.0  # beyond the clip
    weights, clip = (10.0, 10.0, 5.0, 5.0), math.log(1000.0 / 16)
    expected = BoxCoder(weights, bbox_xform_clip=clip).decode_single(deltas, boxes)
    assert torch.equal(BoxDecoder(weights, clip).decode(deltas, boxes), expected)


def test_box_refinement_moves_boxes_by_the_decoded_deltas_and_clips():
    weights = (10.0, 10.0, 5.0, 5.0)
    clip = math.log(1000.0 / 16)
    decoder = BoxDecoder(weights, clip)
    boxes = torch.tensor(
        [[[10.0, 10.0, 30.0, 50.0], [40.0, 20.0, 60.0, 30.0], [0.0, 0.0, 10.0, 10.0]]], dtype=torch.float64
    )
    deltas = torch.tensor([[[1.0, -2.0, 0.5, -0.5], [0.0, 0.0, 0.0, 0.0], [3.0, 3.0, 40.0, 40.0]]], dtype=torch.float64)
    image_sizes = torch.tensor([[64, 80]])
    unclipped = decoder(deltas, boxes)
    out = decoder(deltas, boxes, image_sizes)
    for j in range(3):
        expected = _decode_loop(deltas[0, j].tolist(), boxes[0, j].tolist(), weights, clip)
        torch.testing.assert_close(unclipped[0, j], torch.tensor(expected, dtype=torch.float64))
        clipped = [
            min(max(expected[0], 0), 80),
            min(max(expected[1], 0), 64),
            min(max(expected[2], 0), 80),
            min(max(expected[3], 0), 64),
        ]
        torch.testing.assert_close(out[0, j], torch.tensor(clipped, dtype=torch.float64))
    torch.testing.assert_close(out[0, 1], boxes[0, 1])  # zero delta: unchanged
    # dw = 40 / 5 = 8 is clamped at log(1000/16): the box grows 62.5x, then the image clips it.
    torch.testing.assert_close(
        unclipped[0, 2, 2] - unclipped[0, 2, 0], torch.tensor(10.0 * 1000 / 16, dtype=torch.float64)
    )
    assert out[0, 2].tolist() == [0.0, 0.0, 80.0, 64.0]


def test_matching_heads_equal_linear_layers_on_the_concat():
    torch.manual_seed(0)
    d = 6
    heads = MatchingHeads(d, regression=True, regression_hidden=5).double()
    q = torch.randn(2, 3, d, dtype=torch.float64)
    v = torch.randn(2, 4, d, dtype=torch.float64)
    cls_w = torch.cat((heads.cls_phrase.weight, heads.cls_box.weight), 1)  # the Linear(2d -> 1) they implement
    reg_w = torch.cat((heads.reg_phrase.weight, heads.reg_box.weight), 1)
    logits, deltas = heads.logits(q, v), heads.deltas(q, v)
    for b in range(2):
        for p in range(3):
            for m in range(4):
                pair = torch.cat((q[b, p], v[b, m]))
                torch.testing.assert_close(logits[b, p, m], (cls_w @ pair + heads.cls_box.bias)[0])
                hidden = torch.relu(reg_w @ pair + heads.reg_box.bias)
                torch.testing.assert_close(deltas[b, p, m], heads.reg_out(hidden))
    # Per-phrase boxes [B, P, K, d] give per-phrase results.
    v_k = v[:, None, :2].expand(2, 3, 2, d)
    torch.testing.assert_close(heads.logits(q, v_k), logits[:, :, :2])


def test_regression_without_phrase_ignores_the_phrase():
    heads = MatchingHeads(6, regression=True, regression_uses_phrase=False)
    v = torch.randn(1, 4, 6)
    a = heads.deltas(torch.randn(1, 2, 6), v)
    b = heads.deltas(torch.randn(1, 2, 6), v)
    assert a.shape == (1, 2, 4, 4)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[0, 0], a[0, 1])


def test_hidden_layer_f_cls_equals_an_mlp_on_the_concat_and_ranks_boxes_per_phrase():
    torch.manual_seed(0)
    d, h = 6, 5
    heads = MatchingHeads(d, regression=False, cls_hidden=h).double()
    q = torch.randn(2, 3, d, dtype=torch.float64)
    v = torch.randn(2, 4, d, dtype=torch.float64)
    first = torch.cat((heads.cls_phrase.weight, heads.cls_box.weight), 1)  # Linear(2d -> h) on the concat
    logits = heads.logits(q, v)
    for b in range(2):
        for p in range(3):
            for m in range(4):
                hidden = torch.relu(first @ torch.cat((q[b, p], v[b, m])) + heads.cls_box.bias)
                torch.testing.assert_close(logits[b, p, m], (heads.cls_out.weight @ hidden + heads.cls_out.bias)[0])
    # Unlike the single Linear layer, the box order can differ between phrases of one image.
    order = logits.argsort(-1)
    assert any(not torch.equal(order[b, 0], order[b, p]) for b in range(2) for p in range(1, 3))


@pytest.mark.parametrize("cls_hidden", [0, 4])
def test_positive_cls_bias_makes_the_untrained_product_follow_the_prior(cls_hidden):
    torch.manual_seed(0)
    heads = MatchingHeads(8, regression=False, cls_hidden=cls_hidden, cls_bias=5.0)
    with torch.no_grad():  # only the bias speaks: an untrained net whose other weights are small
        for layer in (heads.cls_phrase, heads.cls_box, heads.cls_out):
            if layer is not None:
                layer.weight.mul_(1e-3)
    logits = heads.logits(torch.randn(1, 2, 8), torch.randn(1, 5, 8))
    assert (logits > 0).all()
    prior = torch.tensor([[[0.2, 0.9, 0.5, 0.1, 0.4], [0.7, 0.1, 0.3, 0.6, 0.2]]])
    _, attention, _ = prior_attention(logits, prior, torch.ones(1, 1, 5, dtype=torch.bool))
    assert attention.argmax(-1).tolist() == prior.argmax(-1).tolist()
    with pytest.raises(ValueError, match="cls_hidden"):
        MatchingHeads(8, cls_hidden=-1)
