import math

import pytest
import torch

from relground.losses import RelationClassifier, relation_class_weights, relation_loss


def test_class_weights_follow_the_authors_formula():
    counts = [100, 4, 25, 0, 1]
    weights = relation_class_weights(counts)
    inverse = [1 / math.sqrt(max(c, 1)) for c in counts]
    lo, hi = min(inverse), max(inverse)
    expected = [1 + 9 * (x - lo) / (hi - lo) for x in inverse]
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert weights.min().item() == pytest.approx(1.0) and weights.max().item() == pytest.approx(10.0)
    assert relation_class_weights([7, 7, 7]).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="relation_class_counts"):
        relation_class_weights([[1, 2]])


def test_relation_loss_ignores_pairs_without_a_category():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, dtype=torch.float64)
    labels = torch.tensor([[0, 1, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.float64)
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    loss = relation_loss(logits, labels, weights)
    expected = 0.0
    for r in (0, 2):
        for c in range(4):
            p = 1 / (1 + math.exp(-logits[r, c].item()))
            y = labels[r, c].item()
            expected -= weights[c].item() * (y * math.log(p) + (1 - y) * math.log(1 - p))
    assert loss.item() == pytest.approx(expected / 8, rel=1e-9)
    changed = logits.clone()
    changed[1] += 100.0  # the unlabelled pair does not count
    assert relation_loss(changed, labels, weights).item() == pytest.approx(loss.item(), rel=1e-12)
    empty = relation_loss(logits, torch.zeros_like(labels))
    assert empty.item() == 0.0


def test_relation_classifier_reads_subject_and_object_vectors():
    head = RelationClassifier(3, 5, inner_dim=7).double()
    pooled = torch.randn(2, 3, 3, dtype=torch.float64)
    index = torch.tensor([[1, 2, 0]])
    logits = head(pooled, index)
    torch.testing.assert_close(logits[0], head.mlp(torch.cat((pooled[1, 2], pooled[1, 0]))))
    with pytest.raises(ValueError, match="relation_labels"):
        relation_loss(logits, torch.zeros(1, 4))


def test_relation_classifier_adds_a_branch_for_pair_features():
    head = RelationClassifier(3, 5, inner_dim=7, pair_dim=4).double()
    pooled = torch.randn(2, 3, 3, dtype=torch.float64)
    index = torch.tensor([[1, 2, 0], [0, 0, 1]])
    pair = torch.randn(2, 4, dtype=torch.float64)
    logits = head(pooled, index, pair)
    expected = head.mlp(torch.cat((pooled[0, 0], pooled[0, 1]))) + head.pair_mlp(pair[1])
    torch.testing.assert_close(logits[1], expected)
    with pytest.raises(ValueError, match="pair_dim=4"):
        head(pooled, index)
    with pytest.raises(ValueError, match="pair_dim=0"):
        RelationClassifier(3, 5, inner_dim=7)(pooled, index, pair)


def test_candidate_pairs_mix_probabilities_like_a_float64_loop():
    torch.manual_seed(1)
    head = RelationClassifier(3, 4, inner_dim=6, pair_dim=2).double()
    pooled = torch.randn(1, 2, 3, dtype=torch.float64)
    index = torch.tensor([[0, 0, 1], [0, 1, 0]])
    pair = torch.randn(2, 3, 2, dtype=torch.float64)  # 3 candidate pairs per relation
    weights = torch.tensor([[0.2, 0.5, 0.3], [0.0, 0.0, 0.0]], dtype=torch.float64)  # row 2: no mass = uniform
    logits = head(pooled, index, pair, weights)
    for r, (b, s, o) in enumerate(index.tolist()):
        w = weights[r] if weights[r].sum() > 0 else torch.full((3,), 1 / 3, dtype=torch.float64)
        base = head.mlp(torch.cat((pooled[b, s], pooled[b, o])))
        for c in range(4):
            p = sum(w[j].item() / (1 + math.exp(-(base[c] + head.pair_mlp(pair[r, j])[c]).item())) for j in range(3))
            assert logits[r, c].item() == pytest.approx(math.log(p / (1 - p)), rel=1e-9, abs=1e-12)
    with pytest.raises(ValueError, match="pair_weights must be"):
        head(pooled, index, pair)


def test_the_mixture_rewards_the_candidate_pair_that_makes_the_relation_true():
    """Two candidate pairs, one of which the classifier already calls class 0: the loss moves weight onto it."""
    head = RelationClassifier(1, 2, inner_dim=2, pair_dim=1).double()
    with torch.no_grad():
        for layer in (head.mlp[0], head.mlp[2]):
            layer.weight.zero_(), layer.bias.zero_()
        head.pair_mlp[0].weight.copy_(torch.tensor([[4.0], [-4.0]])), head.pair_mlp[0].bias.zero_()
        head.pair_mlp[2].weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]])), head.pair_mlp[2].bias.zero_()
    pair = torch.tensor([[[1.0], [-1.0]]], dtype=torch.float64)  # candidate 0 says class 0, candidate 1 class 1
    weights = torch.tensor([[0.5, 0.5]], dtype=torch.float64, requires_grad=True)
    logits = head(torch.zeros(1, 2, 1, dtype=torch.float64), torch.tensor([[0, 0, 1]]), pair, weights)
    relation_loss(logits, torch.tensor([[1.0, 0.0]], dtype=torch.float64)).backward()
    assert weights.grad[0, 0] < weights.grad[0, 1]  # descending the loss raises the consistent pair's weight


def test_cross_entropy_form_matches_a_float64_loop_and_mixes_softmax_probabilities():
    torch.manual_seed(2)
    logits = torch.randn(3, 4, dtype=torch.float64)
    labels = torch.tensor([[0, 1, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.float64)
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    expected = 0.0
    for r in (0, 2):
        norm = sum(math.exp(v) for v in logits[r].tolist())
        hits = [c for c in range(4) if labels[r, c] > 0]
        expected -= sum(weights[c].item() / len(hits) * math.log(math.exp(logits[r, c].item()) / norm) for c in hits)
    assert relation_loss(logits, labels, weights, form="ce").item() == pytest.approx(expected / 2, rel=1e-9)
    with pytest.raises(ValueError, match="relation_form"):
        relation_loss(logits, labels, form="hinge")
    # Candidate pairs: the returned log-probabilities are log sum_j w_j softmax(logit_j).
    head = RelationClassifier(3, 4, inner_dim=6, pair_dim=2, form="ce").double()
    pooled = torch.randn(1, 2, 3, dtype=torch.float64)
    pair = torch.randn(1, 3, 2, dtype=torch.float64)
    w = torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64)
    out = head(pooled, torch.tensor([[0, 0, 1]]), pair, w)
    base = head.mlp(torch.cat((pooled[0, 0], pooled[0, 1])))
    mix = sum(w[0, j] * torch.softmax(base + head.pair_mlp(pair[0, j]), -1) for j in range(3))
    torch.testing.assert_close(out[0], torch.log(mix))
    torch.testing.assert_close(torch.softmax(out[0], -1), mix)  # so the cross entropy reads p directly
