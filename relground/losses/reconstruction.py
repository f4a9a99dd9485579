"""Phrase reconstruction loss (paper Eq. 13-14): a GRU decoder, shared by both stages, rebuilds each phrase
from its attention-pooled visual vector with teacher forcing."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from torch import Tensor, nn

from relground.losses._dtype import upcast


def phrase_target_lengths(targets: Tensor) -> Tensor:
    """Number of words before the first 0 (end / padding) of each target row: [..., L] -> [...] long.

    Example:
        >>> phrase_target_lengths(torch.tensor([[5, 7, 0, 0], [3, 0, 0, 0]]))
        tensor([2, 1])
    """
    is_end = targets == 0
    has_end = is_end.any(-1)
    first_end = is_end.to(torch.int64).argmax(-1)
    return torch.where(has_end, first_end, torch.full_like(first_end, targets.shape[-1]))


DECODER_RNNS = {"gru": nn.GRU, "lstm": nn.LSTM}


class PhraseDecoder(nn.Module):
    """GRU (or LSTM) decoder: input sequence [z, emb(y_0), ..., emb(y_{L-2})], output t predicts y_t (0 = end).

    Args:
        phrase_vocab_size: phrase vocabulary size V_p (id 0 = end / padding).
        visual_dim: width of the pooled visual vector z (d).
        word_dim: decoder word-embedding width. Authors: 1024.
        hidden_dim: recurrent width. Authors: 1024.
        rnn_type: ``gru`` (authors' code) or ``lstm`` (the paper's text, Sec. 3.4).
        tied: the authors' inputs (``model.decoder_input: tied``): z itself, then word embeddings the caller hands
            in (the caption encoder's, of the phrase's words); no Linear on z, no embedding of its own
            (``visual_dim`` must equal ``word_dim``).

    Example:
        >>> decoder = PhraseDecoder(phrase_vocab_size=10, visual_dim=8, word_dim=16, hidden_dim=16)
        >>> decoder(torch.randn(2, 8), torch.tensor([[4, 5, 0], [6, 0, 0]])).shape  # logits [N, L, V_p]
        torch.Size([2, 3, 10])
    """

    def __init__(
        self, phrase_vocab_size: int, visual_dim: int, word_dim: int = 1024, hidden_dim: int = 1024,
        rnn_type: str = "gru",
        tied: bool = False,
    ):
        super().__init__()
        if phrase_vocab_size < 2:
            raise ValueError(f"phrase_vocab_size must be >= 2 (0 is the end token), got {phrase_vocab_size}")
        if rnn_type not in DECODER_RNNS:
            raise ValueError(f"rnn_type must be one of {tuple(DECODER_RNNS)}, got {rnn_type!r}")
        if tied and visual_dim != word_dim:
            raise ValueError(f"a tied PhraseDecoder needs visual_dim == word_dim, got {visual_dim} and {word_dim}")
        self.tied = tied
        self.embedding = None if tied else nn.Embedding(phrase_vocab_size, word_dim, padding_idx=0)
        self.visual = None if tied else nn.Linear(visual_dim, word_dim)  # z enters as the first input "word"
        self.rnn = DECODER_RNNS[rnn_type](word_dim, hidden_dim, batch_first=True)
        self.classifier = nn.Linear(hidden_dim, phrase_vocab_size)

    def forward(self, visual: Tensor, targets: Tensor, words: Optional[Tensor] = None) -> Tensor:
        """Teacher-forced logits.

        Args:
            visual (Tensor[N, d]): pooled visual vector of each phrase.
            targets (Tensor[N, L]): phrase-vocabulary ids, 0 = end / padding.
            words (Tensor[N, L - 1, w]): the input word embeddings of a ``tied`` decoder (zeros past a phrase's
                words); None otherwise.

        Returns:
            Tensor[N, L, V_p]: logits; step t predicts ``targets[:, t]``.
        """
        if self.tied:
            inputs = torch.cat((visual[:, None, :], words.to(visual.dtype)), dim=1)  # [N, L, d]
        else:
            inputs = torch.cat((self.visual(visual)[:, None, :], self.embedding(targets[:, :-1])), dim=1)  # [N, L, w]
        return self.classifier(self.rnn(inputs)[0])


def reconstruction_loss(
    decoder: PhraseDecoder,
    visual: Tensor,
    targets: Tensor,
    valid: Tensor,
    words: Optional[Tensor] = None,
    per_item: bool = False,
) -> Tensor:
    """Cross-entropy of reconstructing each valid phrase's words and its end token, mean over those tokens.

    Args:
        decoder: the shared :class:`PhraseDecoder`.
        visual (Tensor[B, P, d]): z^c or z^f.
        targets (Tensor[B, P, L]): phrase-vocabulary ids, 0 = end / padding.
        valid (Tensor[B, P]): bool, phrases that count.
        words (Tensor[B, P, L - 1, w]): a tied decoder's input word embeddings; None otherwise.
        per_item: return each batch item's own mean over its tokens (``loss.normalization: image``).

    Returns:
        Tensor[]: the loss (0, still connected to ``visual``, when no phrase is valid); with ``per_item``
        Tensor[B] (0 for an item without a valid phrase).

    Example:
        >>> decoder = PhraseDecoder(phrase_vocab_size=10, visual_dim=8, word_dim=16, hidden_dim=16)
        >>> visual = torch.randn(1, 2, 8, requires_grad=True)          # [B=1, P=2, d]
        >>> targets = torch.tensor([[[4, 5, 0], [6, 0, 0]]])           # [B, P, L] int64, "w4 w5 <end>", "w6 <end>"
        >>> loss = reconstruction_loss(decoder, visual, targets, torch.tensor([[True, True]]))
        >>> loss.shape, loss.item() > 0
        (torch.Size([]), True)
    """
    if targets.dim() != 3 or targets.shape[:2] != visual.shape[:2]:
        raise ValueError(
            f"batch.phrase_targets must be [B, P, L] matching [B, P] = {tuple(visual.shape[:2])}, "
            f"got {tuple(targets.shape)}"
        )
    z, y = visual[valid], targets[valid]  # [N, d], [N, L]
    if z.shape[0] == 0:
        return visual.sum(tuple(range(1, visual.dim()))) * 0.0 if per_item else visual.sum() * 0.0
    logits = decoder(z, y, None if words is None else words[valid])  # [N, L, V]
    L = y.shape[1]
    # Tokens that count: the words and the first end token (when the row has room for one).
    counted = torch.arange(L, device=y.device)[None, :] <= phrase_target_lengths(y)[:, None]  # [N, L]
    if not per_item:
        return F.cross_entropy(upcast(logits[counted]), y[counted])
    per_token = F.cross_entropy(upcast(logits[counted]), y[counted], reduction="none")  # [T]
    item = valid.nonzero()[:, 0][:, None].expand_as(counted)[counted]  # [T] batch item of each token
    sums = per_token.new_zeros(valid.shape[0]).index_add(0, item, per_token)
    counts = per_token.new_zeros(valid.shape[0]).index_add(0, item, torch.ones_like(per_token))
    return sums / counts.clamp(min=1)


def reconstruction_loss_static(decoder: PhraseDecoder, visual: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
    """:func:`reconstruction_loss` without data-dependent shapes (``model.static_shapes``): every phrase row of the
    padded batch is decoded and the tokens that count are masked, so nothing is read on the host. The same mean
    over the same tokens (other summation order); 0 when no phrase is valid.

    Args / Returns: as :func:`reconstruction_loss`.
    """
    if targets.dim() != 3 or targets.shape[:2] != visual.shape[:2]:
        raise ValueError(
            f"batch.phrase_targets must be [B, P, L] matching [B, P] = {tuple(visual.shape[:2])}, "
            f"got {tuple(targets.shape)}"
        )
    B, P, L = targets.shape
    z, y = visual.reshape(B * P, -1), targets.reshape(B * P, L)  # [N, d], [N, L]
    logits = decoder(z, y)  # [N, L, V]
    counted = torch.arange(L, device=y.device)[None, :] <= phrase_target_lengths(y)[:, None]  # [N, L]
    counted = counted & valid.reshape(B * P, 1)
    per_token = F.cross_entropy(upcast(logits).reshape(B * P * L, -1), y.reshape(-1), reduction="none")
    weights = counted.reshape(-1).to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp(min=1)
