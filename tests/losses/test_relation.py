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
