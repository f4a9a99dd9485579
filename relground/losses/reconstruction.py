"""Phrase reconstruction loss (paper Eq. 13-14): a GRU decoder, shared by both stages, rebuilds each phrase
from its attention-pooled visual vector with teacher forcing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relground.losses._dtype import upcast


def phrase_target_lengths(targets: Tensor) -> Tensor:
    """Number of words before the first 0 (end / padding) of each target row: [..., L] -> [...] long."""
    is_end = targets == 0
    has_end = is_end.any(-1)
    first_end = is_end.to(torch.int64).argmax(-1)
    return torch.where(has_end, first_end, torch.full_like(first_end, targets.shape[-1]))


class PhraseDecoder(nn.Module):
    """GRU decoder: input sequence [z, emb(y_0), ..., emb(y_{L-2})], output t predicts y_t (0 = end).

    Args:
        phrase_vocab_size: phrase vocabulary size V_p (id 0 = end / padding).
        visual_dim: width of the pooled visual vector z (d).
        word_dim: decoder word-embedding width. Authors: 1024.
        hidden_dim: GRU width. Authors: 1024.
    """

    def __init__(self, phrase_vocab_size: int, visual_dim: int, word_dim: int = 1024, hidden_dim: int = 1024):
        super().__init__()
        if phrase_vocab_size < 2:
            raise ValueError(f"phrase_vocab_size must be >= 2 (0 is the end token), got {phrase_vocab_size}")
        self.embedding = nn.Embedding(phrase_vocab_size, word_dim, padding_idx=0)
        self.visual = nn.Linear(visual_dim, word_dim)  # z enters as the first input "word"
        self.rnn = nn.GRU(word_dim, hidden_dim, batch_first=True)
        self.classifier = nn.Linear(hidden_dim, phrase_vocab_size)

    def forward(self, visual: Tensor, targets: Tensor) -> Tensor:
        """Teacher-forced logits.

        Args:
            visual (Tensor[N, d]): pooled visual vector of each phrase.
            targets (Tensor[N, L]): phrase-vocabulary ids, 0 = end / padding.

        Returns:
            Tensor[N, L, V_p]: logits; step t predicts ``targets[:, t]``.
        """
        inputs = torch.cat((self.visual(visual)[:, None, :], self.embedding(targets[:, :-1])), dim=1)  # [N, L, w]
        return self.classifier(self.rnn(inputs)[0])


def reconstruction_loss(decoder: PhraseDecoder, visual: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
    """Cross-entropy of reconstructing each valid phrase's words and its end token, mean over those tokens.

    Args:
        decoder: the shared :class:`PhraseDecoder`.
        visual (Tensor[B, P, d]): z^c or z^f.
        targets (Tensor[B, P, L]): phrase-vocabulary ids, 0 = end / padding.
        valid (Tensor[B, P]): bool, phrases that count.

    Returns:
        Tensor[]: the loss (0, still connected to ``visual``, when no phrase is valid).
    """
    if targets.dim() != 3 or targets.shape[:2] != visual.shape[:2]:
        raise ValueError(
            f"batch.phrase_targets must be [B, P, L] matching [B, P] = {tuple(visual.shape[:2])}, "
            f"got {tuple(targets.shape)}"
        )
    z, y = visual[valid], targets[valid]  # [N, d], [N, L]
    if z.shape[0] == 0:
        return visual.sum() * 0.0
    logits = decoder(z, y)  # [N, L, V]
    L = y.shape[1]
    # Tokens that count: the words and the first end token (when the row has room for one).
    counted = torch.arange(L, device=y.device)[None, :] <= phrase_target_lengths(y)[:, None]  # [N, L]
    return F.cross_entropy(upcast(logits[counted]), y[counted])
