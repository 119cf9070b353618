import torch
import torch.nn.functional as F

from gand.losses import NonSaturatingLoss


def test_nonsaturating_equals_bce_on_probabilities():
    torch.manual_seed(0)
    real, fake = torch.randn(64), torch.randn(64)
    loss = NonSaturatingLoss()
    expected_d = F.binary_cross_entropy(torch.sigmoid(real), torch.ones(64)) + F.binary_cross_entropy(
        torch.sigmoid(fake), torch.zeros(64)
    )
    expected_g = F.binary_cross_entropy(torch.sigmoid(fake), torch.ones(64))
    torch.testing.assert_close(loss.discriminator(real, fake), expected_d)
    torch.testing.assert_close(loss.generator(fake), expected_g)


def test_stays_finite_for_confident_logits():
    loss = NonSaturatingLoss()
    logits = torch.tensor([-200.0, 200.0])
    assert torch.isfinite(loss.discriminator(logits, logits))
    assert torch.isfinite(loss.generator(logits))
