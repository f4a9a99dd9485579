
import pytest
import torch

from relground.losses import PhraseDecoder, phrase_target_lengths, reconstruction_loss


def test_target_lengths_stop_at_the_first_end_token():
    targets = torch.tensor([[3, 4, 0, 0], [5, 0, 0, 0], [1, 2, 3, 4], [0, 0, 0, 0]])
    assert phrase_target_lengths(targets).tolist() == [2, 1, 4, 0]


def test_reconstruction_loss_matches_a_teacher_forced_loop():
    torch.manual_seed(0)
    decoder = PhraseDecoder(9, visual_dim=5, word_dim=4, hidden_dim=6).double()
    visual = torch.randn(1, 3, 5, dtype=torch.float64)
    targets = torch.tensor([[[3, 4, 0, 0], [1, 2, 3, 4], [7, 0, 0, 0]]])
    valid = torch.tensor([[True, True, False]])
    loss = reconstruction_loss(decoder, visual, targets, valid)
    total, count = 0.0, 0
    for p in range(2):
        words = [w for w in targets[0, p].tolist() if w != 0]
        sequence = words + ([0] if len(words) < 4 else [])  # the end token when there is room
        hidden = None
        step_input = decoder.visual(visual[0, p])[None, None]
        for target in sequence:
            out, hidden = decoder.rnn(step_input, hidden)
            log_probs = torch.log_softmax(decoder.classifier(out[0, 0]), -1)
            total -= log_probs[target].item()
            count += 1
            step_input = decoder.embedding(torch.tensor([[target]]))
    assert loss.item() == pytest.approx(total / count, rel=1e-9)


def test_reconstruction_loss_checks_shapes_and_handles_no_phrase():
    decoder = PhraseDecoder(9, visual_dim=5, word_dim=4, hidden_dim=6)
    visual = torch.randn(1, 2, 5, requires_grad=True)
    zero = reconstruction_loss(
        decoder, visual, torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, dtype=torch.bool)
    )
    assert zero.item() == 0.0 and zero.requires_grad
    with pytest.raises(ValueError, match="phrase_targets"):
        reconstruction_loss(decoder, visual, torch.zeros(1, 3, 3, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="phrase_vocab_size"):
        PhraseDecoder(1, visual_dim=5)
