import pytest
import torch

from relground.model.phrase_encoder import PhraseEncoder, span_mean


def test_span_mean_matches_a_loop():
    outputs = torch.randn(2, 6, 4, dtype=torch.float64)
    spans = torch.tensor([[[0, 2], [3, 6]], [[1, 2], [0, 0]]])
    valid = torch.tensor([[True, True], [True, False]])
    pooled = span_mean(outputs, spans, valid)
    torch.testing.assert_close(pooled[0, 0], outputs[0, 0:2].mean(0))
    torch.testing.assert_close(pooled[0, 1], outputs[0, 3:6].mean(0))
    torch.testing.assert_close(pooled[1, 0], outputs[1, 1])
    assert pooled[1, 1].abs().sum() == 0


@pytest.mark.parametrize("rnn_type,bidirectional", [("gru", False), ("lstm", True)])
def test_encoder_pools_rnn_outputs_and_ignores_padding(rnn_type, bidirectional):
    torch.manual_seed(0)
    encoder = PhraseEncoder(
        20, word_dim=6, hidden_dim=8, rnn_type=rnn_type, bidirectional=bidirectional, batchnorm=False
    ).double()
    words = torch.tensor([[3, 4, 5, 6, 0, 0], [7, 8, 9, 0, 0, 0]])
    lengths = torch.tensor([4, 3])
    spans = torch.tensor([[[0, 2], [2, 4]], [[1, 3], [0, 0]]])
    valid = torch.tensor([[True, True], [True, False]])
    phrases, sentence = encoder(words, lengths, spans, valid)
    assert phrases.shape == (2, 2, 8) and sentence.shape == (2, 8)
    for b in range(2):
        n = int(lengths[b])
        alone = encoder.rnn(encoder.embedding(words[b : b + 1, :n]))[0][0]  # unpadded sequence, [n, 8]
        torch.testing.assert_close(sentence[b], alone.mean(0))
        start, end = spans[b, 0].tolist()
        torch.testing.assert_close(phrases[b, 0], alone[start:end].mean(0))
    # More padding changes nothing.
    padded_words = torch.cat((words, torch.zeros(2, 3, dtype=torch.long)), 1)
    phrases2, sentence2 = encoder(padded_words, lengths, spans, valid)
    torch.testing.assert_close(phrases2, phrases)
    torch.testing.assert_close(sentence2, sentence)


def test_pretrained_word_vectors_fill_known_rows_only():
    encoder = PhraseEncoder(5, word_dim=3, hidden_dim=4)
    before = encoder.embedding.weight.detach().clone()
    matrix = torch.zeros(5, 3)
    matrix[2] = torch.tensor([1.0, 2.0, 3.0])
    matrix[0] = 7.0  # padding stays zero regardless
    encoder.load_pretrained_word_vectors(matrix.numpy())
    weight = encoder.embedding.weight.detach()
    assert weight[2].tolist() == [1.0, 2.0, 3.0]
    assert torch.equal(weight[[1, 3, 4]], before[[1, 3, 4]])
    assert weight[0].abs().sum() == 0
    with pytest.raises(ValueError, match="matrix must have shape"):
        encoder.load_pretrained_word_vectors(torch.zeros(5, 50))


def test_phrase_batchnorm_normalises_valid_phrases_only():
    encoder = PhraseEncoder(20, word_dim=6, hidden_dim=8).train()
    words = torch.randint(1, 20, (3, 5))
    spans = torch.tensor([[[0, 2], [2, 5]], [[0, 1], [1, 3]], [[0, 5], [0, 0]]])
    valid = torch.tensor([[True, True], [True, True], [True, False]])
    phrases, _ = encoder(words, torch.tensor([5, 5, 5]), spans, valid)
    torch.testing.assert_close(phrases[valid].mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    assert phrases[2, 1].abs().sum() == 0
