"""Each loss on hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gand.losses import (
    Hinge,
    LeCamAnchors,
    Minimax,
    NonSaturating,
    Objective,
    RelativisticPairing,
    Wasserstein,
    class_cross_entropy,
    clip_weights,
    gradient_penalty,
    label_targets,
    style_ambiguity,
    zero_centred_penalty,
)
from gand.models import ModelSpec, build_models

REAL = torch.tensor([2.0, -1.0, 0.5])
FAKE = torch.tensor([-3.0, 1.0, 0.0])
ONES, ZEROS = torch.ones(3), torch.zeros(3)


def test_nonsaturating_equals_bce_on_probabilities():
    expected_d = F.binary_cross_entropy(torch.sigmoid(REAL), ONES) + F.binary_cross_entropy(torch.sigmoid(FAKE), ZEROS)
    torch.testing.assert_close(NonSaturating().discriminator(REAL, FAKE, ONES, ZEROS), expected_d)
    torch.testing.assert_close(NonSaturating().generator(FAKE), -torch.log(torch.sigmoid(FAKE)).mean())


def test_minimax_generator_is_log_one_minus_d():
    torch.testing.assert_close(Minimax().generator(FAKE), torch.log(1 - torch.sigmoid(FAKE)).mean())
    # it saturates: when D is sure a sample is fake, G's gradient vanishes (the non-saturating one's does not)
    confident = torch.tensor([-12.0], requires_grad=True)
    (grad_minimax,) = torch.autograd.grad(Minimax().generator(confident), confident)
    (grad_ns,) = torch.autograd.grad(NonSaturating().generator(confident), confident)
    assert abs(grad_minimax.item()) < 1e-4 < abs(grad_ns.item())


def test_wasserstein_and_hinge_by_hand():
    # mean(FAKE) = -2/3, mean(REAL) = 0.5
    assert Wasserstein().discriminator(REAL, FAKE, ONES, ZEROS).item() == pytest.approx(-2 / 3 - 0.5)
    assert Wasserstein().generator(FAKE).item() == pytest.approx(2 / 3)
    # relu(1 - [2, -1, .5]) = [0, 2, .5] -> 5/6 ; relu(1 + [-3, 1, 0]) = [0, 2, 1] -> 1
    assert Hinge().discriminator(REAL, FAKE, ONES, ZEROS).item() == pytest.approx(5 / 6 + 1)
    assert Hinge().generator(FAKE).item() == pytest.approx(2 / 3)


@pytest.mark.parametrize("classes", [2, 4, 27])
def test_style_ambiguity_is_log_k_at_uniform_and_that_is_its_minimum(classes):
    uniform = torch.zeros(5, classes)
    assert style_ambiguity(uniform).item() == pytest.approx(math.log(classes))
    torch.manual_seed(classes)
    for _ in range(20):
        assert style_ambiguity(torch.randn(5, classes) * 3) > math.log(classes)
    # and its gradient at the uniform posterior is zero
    logits = uniform.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(style_ambiguity(logits), logits)
    assert gradient.abs().max() < 1e-7


def test_class_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
    assert class_cross_entropy(logits, torch.tensor([1])).item() == pytest.approx(-math.log(0.75))


def test_weight_clipping_bounds_every_critic_weight():
    torch.manual_seed(0)
    _, critic = build_models("dcgan", ModelSpec(32, width=0.25))
    for param in critic.parameters():
        param.data.mul_(100)
    clip_weights(critic, 0.01)
    for name, param in critic.named_parameters():
        assert param.abs().max() <= 0.01, name
    assert any(param.abs().max() == 0.01 for param in critic.parameters())


class LinearCritic(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = weight

    def forward(self, images):
        return (images.flatten(1) @ self.weight).unsqueeze(1)


def test_gradient_penalty_is_zero_for_a_1_lipschitz_linear_critic():
    torch.manual_seed(0)
    weight = torch.randn(3 * 4 * 4)
    real, fake = torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4)
    assert gradient_penalty(LinearCritic(weight / weight.norm()), real, fake).item() == pytest.approx(0.0, abs=1e-10)
    # twice as steep: every gradient has norm 2 -> (2 - 1)^2 = 1
    assert gradient_penalty(LinearCritic(2 * weight / weight.norm()), real, fake).item() == pytest.approx(1.0)


def test_gradient_penalty_reaches_the_critics_weights():
    torch.manual_seed(0)
    weight = torch.randn(12, requires_grad=True)
    penalty = gradient_penalty(LinearCritic(weight), torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2))
    penalty.backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_soft_noisy_and_flipped_targets():
    torch.manual_seed(0)
    soft = label_targets(10_000, 0.7, 1.2, 0.0, 0.0, 0.3, "cpu")
    assert soft.min() >= 0.7 and soft.max() <= 1.2 and abs(soft.mean().item() - 0.95) < 0.01
    flipped = label_targets(10_000, 0.9, 1.0, 0.25, 0.0, 0.1, "cpu")
    share_flipped = (flipped <= 0.1).float().mean().item()
    assert abs(share_flipped - 0.25) < 0.02
    assert ((flipped <= 0.1) | (flipped >= 0.9)).all()
    assert torch.equal(label_targets(3, 1.0, 1.0, 0.0, 0.0, 0.0, "cpu"), ONES)


def test_targets_above_one_keep_the_loss_bounded_below():
    objective = Objective(NonSaturating(), real_labels=(1.2, 1.2), fake_labels=(0.0, 0.0))
    huge = torch.full((3, 1), 1e4)
    bounded = objective.discriminator(huge, -huge, torch.zeros(3, dtype=torch.long), None)["adv"]
    assert torch.isfinite(bounded) and bounded.item() > -5  # without the bound: about -2000


def test_objective_auxiliary_and_ambiguity_parts():
    real_out = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.0, 3.0]])
    fake_out = torch.tensor([[-1.0, 0.0, 0.0], [-2.0, 1.0, 1.0]])
    real_classes, fake_classes = torch.tensor([0, 1]), torch.tensor([1, 0])
    auxiliary = Objective(NonSaturating(), class_mode="auxiliary", class_weight=0.5)
    parts = auxiliary.discriminator(real_out, fake_out, real_classes, fake_classes)
    expected = 0.5 * (F.cross_entropy(real_out[:, 1:], real_classes) + F.cross_entropy(fake_out[:, 1:], fake_classes))
    torch.testing.assert_close(parts["class"], expected)
    torch.testing.assert_close(auxiliary.generator(fake_out, fake_classes)["class"],
                               0.5 * F.cross_entropy(fake_out[:, 1:], fake_classes))  # fmt: skip

    ambiguity = Objective(NonSaturating(), class_mode="ambiguity")
    d_parts = ambiguity.discriminator(real_out, fake_out, real_classes, None)
    torch.testing.assert_close(d_parts["style"], F.cross_entropy(real_out[:, 1:], real_classes))  # real art only
    g_parts = ambiguity.generator(fake_out, None)
    torch.testing.assert_close(g_parts["ambiguity"], style_ambiguity(fake_out[:, 1:]))
    assert set(g_parts) == {"adv", "ambiguity"}


def test_relativistic_pairing_by_hand():
    """RpGAN: D minimises softplus(D(fake) - D(real)) over pairs, G softplus(D(real) - D(fake))."""
    loss = RelativisticPairing()
    softplus = lambda t: math.log1p(math.exp(t))  # noqa: E731
    d_expected = sum(softplus(f - r) for r, f in zip(REAL.tolist(), FAKE.tolist(), strict=True)) / 3
    g_expected = sum(softplus(r - f) for r, f in zip(REAL.tolist(), FAKE.tolist(), strict=True)) / 3
    assert loss.discriminator(REAL, FAKE, ONES, ZEROS).item() == pytest.approx(d_expected)
    assert loss.generator(FAKE, REAL).item() == pytest.approx(g_expected)
    # only the gap inside each pair matters: shifting both sets by the same amount changes nothing
    assert loss.discriminator(REAL + 5, FAKE + 5, ONES, ZEROS).item() == pytest.approx(d_expected)
    with pytest.raises(ValueError, match="real images"):
        loss.generator(FAKE)


def test_objective_passes_real_logits_to_a_relativistic_generator_loss_detached():
    objective = Objective(adversarial=RelativisticPairing())
    real_out = torch.tensor([[2.0], [0.0]], requires_grad=True)
    fake_out = torch.tensor([[1.0], [1.0]], requires_grad=True)
    parts = objective.generator(fake_out, None, real_out)
    parts["adv"].backward()
    assert real_out.grad is None  # G cannot move D's judgement of real images
    assert fake_out.grad is not None and fake_out.grad.abs().sum() > 0


class QuadraticCritic(nn.Module):
    """D(x) = sum(x^2) / 2 + w . x: gradient x + w, so E|grad|^2 is known in closed form."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        flat = images.flatten(1)
        return (flat.square().sum(1) / 2 + flat @ self.weight)[:, None]


def test_zero_centred_penalty_by_hand_and_in_fp32_under_autocast():
    torch.manual_seed(0)
    weight = torch.randn(3 * 4 * 4)
    images = torch.randn(5, 3, 4, 4)
    expected = (images.flatten(1) + weight).square().sum(1).mean().item()
    critic = QuadraticCritic(weight.clone())
    assert zero_centred_penalty(critic, images).item() == pytest.approx(expected, rel=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as inside a bf16 update: the penalty still runs in fp32
        penalty = zero_centred_penalty(critic, images.bfloat16())
    assert penalty.dtype == torch.float32
    assert penalty.item() == pytest.approx(
        (images.bfloat16().float().flatten(1) + weight).square().sum(1).mean().item()
    )
    penalty.backward()  # the double backward reaches D's weights: d/dw mean|x + w|^2 = 2 mean(x + w)
    expected_grad = 2 * (images.bfloat16().float().flatten(1) + weight).mean(0)
    torch.testing.assert_close(critic.weight.grad, expected_grad, rtol=1e-5, atol=1e-6)


def test_lecam_anchors_and_penalty_by_hand():
    """Tseng et al. 2021 (their code): relu(D(x) - alpha_F)^2 + relu(alpha_R - D(G(z)))^2, anchors moving averages
    (decay 0.99) of D's mean logits, set by the first batch; the state round-trips through state_dict."""
    anchors = LeCamAnchors()
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-1.0, 1.0])
    first = anchors.penalty(real, fake)  # anchors: alpha_R = 1.0, alpha_F = 0.0
    expected = (torch.relu(real - 0.0).square().mean() + torch.relu(1.0 - fake).square().mean()).item()
    assert first.item() == pytest.approx(expected)  # (4 + 0) / 2 + (4 + 0) / 2
    second = anchors.penalty(torch.tensor([4.0, 4.0]), torch.tensor([0.0, 0.0]))
    alpha_real, alpha_fake = 0.99 * 1.0 + 0.01 * 4.0, 0.99 * 0.0 + 0.01 * 0.0
    assert anchors.real.item() == pytest.approx(alpha_real) and anchors.fake.item() == pytest.approx(alpha_fake)
    assert second.item() == pytest.approx((4.0 - alpha_fake) ** 2 + alpha_real**2)
    restored = LeCamAnchors()
    restored.load_state_dict(anchors.state_dict())
    assert restored.penalty(real, fake).item() == pytest.approx(anchors.penalty(real, fake).item())
    assert LeCamAnchors().state_dict() == {}  # nothing to save before the first update


def test_objective_adds_lecam_to_the_discriminator_only_when_weighted():
    outputs = torch.tensor([[2.0], [0.0]]), torch.tensor([[-1.0], [1.0]])
    plain = Objective(adversarial=NonSaturating()).discriminator(*outputs, None, None)
    weighted = Objective(adversarial=NonSaturating(), lecam_weight=0.5, lecam=LeCamAnchors())
    parts = weighted.discriminator(*outputs, None, None)
    assert "lecam" not in plain and parts["lecam"].item() == pytest.approx(0.5 * 4.0)
