"""Phrase and sentence features (paper Eq. 1): word embedding -> GRU/LSTM -> mean over words."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from relground.model.layers import masked_batch_norm, masked_batch_norm_static, per_item_batch_norm


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
        static_shapes: run the RNN on the padded words instead of a packed sequence (whose lengths are read on the
            host); see :func:`run_padded`. Default False.
        norm_per_caption: BatchNorm statistics of each caption's phrases alone (``model.phrase_norm: caption``,
            the authors), see :func:`relground.model.layers.per_item_batch_norm`. Default False (the batch's).
    """

    def __init__(
        self,
        vocab_size: int,
        word_dim: int = 1024,
        hidden_dim: int = 1024,
        rnn_type: str = "gru",
        bidirectional: bool = False,
        batchnorm: bool = True,
        static_shapes: bool = False,
        norm_per_caption: bool = False,
    ):
        super().__init__()
        self.static_shapes = static_shapes
        self.norm_per_caption = norm_per_caption
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
        if self.static_shapes:
            outputs = run_padded(self.rnn, embedded, lengths)  # [B, T, d]
        else:
            packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
            outputs, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=T)  # [B, T, d]
        phrases = span_mean(outputs, phrase_spans, phrase_valid)  # [B, P, d]
        if self.norm is not None:
            norm = masked_batch_norm_static if self.static_shapes else masked_batch_norm
            norm = per_item_batch_norm if self.norm_per_caption else norm
            phrases = norm(self.norm, phrases, phrase_valid)
        sentence = outputs.sum(1) / lengths[:, None].to(outputs.dtype)  # padding outputs are zero
        return phrases, sentence


def run_padded(rnn: nn.RNNBase, inputs: Tensor, lengths: Tensor) -> Tensor:
    """A one-layer batch-first RNN over right-padded sequences without packing: the outputs of a packed run.

    The forward direction reads the padding only after each sequence's last word, so its outputs there are the
    packed run's. The backward direction must start at each sequence's last word: it runs on the sequences
    shifted right to end at T - 1 (left-padded), and its outputs are shifted back. Positions past a sequence's
    length are zero, as ``pad_packed_sequence`` leaves them.

    Args:
        rnn: ``nn.GRU`` / ``nn.LSTM`` with ``batch_first``, one layer.
        inputs (Tensor[B, T, D]): right-padded sequences.
        lengths (Tensor[B]): in [1, T], on the inputs' device.

    Returns:
        Tensor[B, T, H * directions].
    """
    B, T, _ = inputs.shape
    positions = torch.arange(T, device=inputs.device)[None, :]  # [1, T]
    inside = (positions < lengths[:, None])[..., None]  # [B, T, 1]
    zero = torch.zeros((), dtype=inputs.dtype, device=inputs.device)
    outputs = rnn(torch.where(inside, inputs, zero))[0]  # [B, T, H * directions]
    if rnn.bidirectional:
        hidden = rnn.hidden_size
        shift = (T - lengths)[:, None]  # [B, 1]: sequence b starts at column shift_b once left-padded
        source = (positions - shift).clamp(min=0)  # left-padded column t reads right-padded column t - shift
        left = torch.where((positions >= shift)[..., None], _take(inputs, source), zero)
        backward = rnn(left)[0][..., hidden:]  # [B, T, H], sequence ending at T - 1
        backward = _take(backward, (positions + shift).clamp(max=T - 1))  # back to right-padded columns
        outputs = torch.cat((outputs[..., :hidden], backward), dim=-1)
    return torch.where(inside, outputs, torch.zeros((), dtype=outputs.dtype, device=outputs.device))


def _take(values: Tensor, columns: Tensor) -> Tensor:
    """values [B, T, D] at columns [B, T] -> [B, T, D]."""
    return torch.gather(values, 1, columns[..., None].expand(-1, -1, values.shape[-1]))
