"""Phrase and sentence features (paper Eq. 1): word embedding -> GRU/LSTM -> mean over words."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from relground.model.layers import masked_batch_norm


def span_mean(outputs: Tensor, spans: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``outputs`` over each [start, end) span.

    Args:
        outputs (Tensor[B, T, D]): per-word features.
        spans (Tensor[B, P, 2]): [start, end) word positions.
        valid (Tensor[B, P]): bool; invalid or empty spans give zeros.

    Returns:
        Tensor[B, P, D]
    """
    T = outputs.shape[1]
    positions = torch.arange(T, device=outputs.device)
    inside = (
        (positions[None, None, :] >= spans[..., :1]) & (positions[None, None, :] < spans[..., 1:]) & valid[..., None]
    )
    weights = inside.to(outputs.dtype)  # [B, P, T]
    counts = weights.sum(-1, keepdim=True).clamp(min=1)
    return torch.bmm(weights, outputs) / counts  # [B, P, D]


class PhraseEncoder(nn.Module):
    """Encodes a caption and pools its phrases.

    Args:
        vocab_size: caption vocabulary size (id 0 = padding).
        word_dim: embedding width. Authors: 1024 (random init); 50 for the shared GloVe vectors.
        hidden_dim: d, the output width (each direction hidden_dim / 2 when bidirectional).
        rnn_type: ``gru`` (authors) or ``lstm``.
        bidirectional: run the RNN both ways.
        batchnorm: BatchNorm1d on phrase features, as the authors.
    """

    def __init__(
        self,
        vocab_size: int,
        word_dim: int = 1024,
        hidden_dim: int = 1024,
        rnn_type: str = "gru",
        bidirectional: bool = False,
        batchnorm: bool = True,
    ):
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"caption_vocab_size must be >= 2 (0 is padding), got {vocab_size}")
        self.embedding = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        rnn_cls = {"gru": nn.GRU, "lstm": nn.LSTM}[rnn_type]
        self.rnn = rnn_cls(
            word_dim, hidden_dim // (2 if bidirectional else 1), batch_first=True, bidirectional=bidirectional
        )
        self.norm = nn.BatchNorm1d(hidden_dim) if batchnorm else None

    @torch.no_grad()
    def load_pretrained_word_vectors(self, matrix: Tensor) -> None:
        """Initialise the embedding from pre-trained vectors (e.g. GloVe) in caption-vocabulary order.

        All-zero rows (words without a vector, and padding) keep their random initialisation, padding
        stays zero.

        Args:
            matrix (Tensor[V, word_dim]): or a numpy array.

        Raises:
            ValueError: ``matrix`` does not have the embedding's shape.
        """
        matrix = torch.as_tensor(matrix, dtype=self.embedding.weight.dtype, device=self.embedding.weight.device)
        if matrix.shape != self.embedding.weight.shape:
            raise ValueError(
                f"matrix must have shape {tuple(self.embedding.weight.shape)} (caption_vocab_size, model.word_dim), "
                f"got {tuple(matrix.shape)}"
            )
        known = matrix.abs().sum(1) > 0
        self.embedding.weight[known] = matrix[known]
        self.embedding.weight[0].zero_()

    def forward(
        self, words: Tensor, word_lengths: Tensor, phrase_spans: Tensor, phrase_valid: Tensor
    ) -> tuple[Tensor, Tensor]:
        """
        Args:
            words (Tensor[B, T]): caption-vocabulary ids, 0 = padding.
            word_lengths (Tensor[B]): caption lengths (>= 1).
            phrase_spans (Tensor[B, P, 2]): [start, end) word positions.
            phrase_valid (Tensor[B, P]): bool.

        Returns:
            phrases (Tensor[B, P, d]): x_q, zero for invalid phrases.
            sentence (Tensor[B, d]): mean of all word outputs.
        """
        B, T = words.shape
        lengths = word_lengths.clamp(min=1, max=T)
        embedded = self.embedding(words)  # [B, T, word_dim]
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=T)  # [B, T, d]
        phrases = span_mean(outputs, phrase_spans, phrase_valid)  # [B, P, d]
        if self.norm is not None:
            phrases = masked_batch_norm(self.norm, phrases, phrase_valid)
        sentence = outputs.sum(1) / lengths[:, None].to(outputs.dtype)  # padding outputs are zero
        return phrases, sentence
