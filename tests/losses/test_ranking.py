import math

import pytest
import torch

from relground.losses import RankingEmbedding, contrastive_ranking_loss, ranking_loss


def _loop_loss(S, margin, negatives):
    B = len(S)
    total = 0.0
    for direction in ("row", "col"):
        for i in range(B):
            if direction == "row":
                z = sum(math.exp(S[i][j]) for j in range(B))
                p = [math.exp(S[i][j]) / z for j in range(B)]  # image i over captions
                ok = [negatives[i][j] for j in range(B)]
            else:
                z = sum(math.exp(S[j][i]) for j in range(B))
                p = [math.exp(S[j][i]) / z for j in range(B)]  # caption i over images
                ok = [negatives[j][i] for j in range(B)]
            violations = [max(0.0, p[j] - p[i] + margin) for j in range(B) if j != i and ok[j]]
            total += max(violations, default=0.0)
    return total


def test_ranking_loss_zero_when_positives_win_by_the_margin():
    S = torch.full((4, 4), -5.0)
    S.fill_diagonal_(5.0)  # softmax gives the positive ~1 and each negative ~0
    assert ranking_loss(S, 0.2).item() == 0.0


def test_ranking_loss_positive_otherwise_and_matches_a_loop():
    torch.manual_seed(0)
    S = torch.randn(5, 5, dtype=torch.float64)
    negatives = torch.ones(5, 5, dtype=torch.bool)
    loss = ranking_loss(S, 0.2)
    assert loss.item() > 0
    assert loss.item() == pytest.approx(_loop_loss(S.tolist(), 0.2, negatives.tolist()), rel=1e-9)
    # Pairs of the same image (0 and 1) are not negatives of each other.
    negatives[0, 1] = negatives[1, 0] = False
    masked = ranking_loss(S, 0.2, negative_mask=negatives)
    assert masked.item() == pytest.approx(_loop_loss(S.tolist(), 0.2, negatives.tolist()), rel=1e-9)


def test_ranking_loss_without_negatives_is_zero_and_shape_is_checked():
    assert ranking_loss(torch.randn(1, 1)).item() == 0.0
    with pytest.raises(ValueError, match="square"):
        ranking_loss(torch.randn(2, 3))


def test_ranking_embedding_averages_valid_phrases():
    torch.manual_seed(0)
    head = RankingEmbedding(6, 4, embed_dim=8).double()
    pooled = torch.randn(2, 3, 6, dtype=torch.float64)
    valid = torch.tensor([[True, True, False], [True, False, False]])
    sentence = torch.randn(2, 4, dtype=torch.float64)
    S = head(pooled, valid, sentence)
    images = torch.stack((pooled[0, :2].mean(0), pooled[1, 0]))
    expected = head.visual(images) @ head.text(sentence).T / math.sqrt(8)
    torch.testing.assert_close(S, expected)


def _loop_contrastive(S, negatives):
    """Float64 loop: mean over i of -log softmax over the allowed j, rows then columns."""
    B = len(S)
    total = 0.0
    for transpose in (False, True):
        rows = 0.0
        for i in range(B):
            allowed = [j for j in range(B) if j == i or negatives[i][j]]
            value = (lambda a, b: S[b][a]) if transpose else (lambda a, b: S[a][b])
            log_z = math.log(sum(math.exp(value(i, j)) for j in allowed))
            rows += log_z - value(i, i)
        total += rows / B
    return total


def test_contrastive_ranking_loss_matches_a_loop_and_raises_matching_pairs_from_a_flat_start():
    torch.manual_seed(1)
    S = torch.randn(5, 5, dtype=torch.float64)
    everyone = [[True] * 5 for _ in range(5)]
    assert contrastive_ranking_loss(S).item() == pytest.approx(_loop_contrastive(S.tolist(), everyone), rel=1e-12)
    negatives = torch.ones(5, 5, dtype=torch.bool)
    negatives[0, 1] = negatives[1, 0] = False  # two captions of one image
    masked = contrastive_ranking_loss(S, negatives)
    assert masked.item() == pytest.approx(_loop_contrastive(S.tolist(), negatives.tolist()), rel=1e-12)
    # From a flat start (constant S) the gradient raises every matching pair.
    flat = torch.zeros(4, 4, dtype=torch.float64, requires_grad=True)
    contrastive_ranking_loss(flat).backward()
    assert (flat.grad.diagonal() < 0).all()
    with pytest.raises(ValueError, match="square"):
        contrastive_ranking_loss(torch.randn(2, 3))
