import math

import torch
from torch import nn

from relground.model.layers import masked_batch_norm, masked_softmax


def test_masked_softmax_matches_softmax_over_the_kept_entries():
    logits = torch.randn(4, 6, dtype=torch.float64)
    mask = torch.rand(4, 6) > 0.4
    mask[:, 0] = True
    probs = masked_softmax(logits, mask)
    for r in range(4):
        kept = [math.exp(logits[r, j]) if mask[r, j] else 0.0 for j in range(6)]
        expected = torch.tensor(kept, dtype=torch.float64) / sum(kept)
        torch.testing.assert_close(probs[r], expected)


def test_masked_softmax_all_masked_row_is_zero_not_nan():
    logits = torch.randn(3, 5)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    logits.requires_grad_(True)
    probs = masked_softmax(logits, mask)
    assert torch.equal(probs[1], torch.zeros(5))
    torch.testing.assert_close(probs[[0, 2]].sum(1), torch.ones(2))
    probs.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_masked_batch_norm_ignores_padding_rows():
    norm = nn.BatchNorm1d(4).train()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    norm = norm.double()
    valid = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    x_padded = x.clone()
    x_padded[~valid] = 1e6  # padding must not move the statistics
    out = masked_batch_norm(norm, x_padded, valid)
    rows = x[valid]
    expected = (rows - rows.mean(0)) / torch.sqrt(rows.var(0, unbiased=False) + norm.eps)
    torch.testing.assert_close(out[valid], expected)
    assert torch.equal(out[~valid], torch.zeros_like(out[~valid]))


def test_masked_batch_norm_single_row_uses_running_statistics():
    norm = nn.BatchNorm1d(3).train()
    norm.running_mean.fill_(2.0)
    norm.running_var.fill_(4.0)
    x = torch.full((1, 2, 3), 6.0)
    out = masked_batch_norm(norm, x, torch.tensor([[True, False]]))
    torch.testing.assert_close(out[0, 0], torch.full((3,), 4.0 / math.sqrt(4.0 + norm.eps)))


def test_masked_batch_norm_with_running_stats_leaves_them_unchanged_in_training():
    torch.manual_seed(0)
    norm = nn.BatchNorm1d(3).train()
    norm.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
    norm.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
    x = torch.randn(2, 4, 3) * 5 + 3
    valid = torch.tensor([[True, True, False, True], [True, False, True, True]])
    before = (norm.running_mean.clone(), norm.running_var.clone(), int(norm.num_batches_tracked))
    out = masked_batch_norm(norm, x, valid, running_stats=True)
    expected = (x - before[0]) / torch.sqrt(before[1] + norm.eps) * norm.weight + norm.bias  # plain formula
    torch.testing.assert_close(out[valid], expected[valid])
    assert out[~valid].abs().sum() == 0
    torch.testing.assert_close(norm.running_mean, before[0])
    torch.testing.assert_close(norm.running_var, before[1])
    assert int(norm.num_batches_tracked) == before[2]
    masked_batch_norm(norm, x, valid)  # the default path still learns the statistics
    assert not torch.equal(norm.running_mean, before[0])
