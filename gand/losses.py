"""Adversarial losses and stabilisers as plain functions of discriminator outputs, plus their composition.

Every discriminator returns N x (1 + K) logits: column 0 is real/fake, columns 1..K are class or style logits.
Losses work on logits, not probabilities: `softplus(-x)` is `-log(sigmoid(x))` computed without overflow, so the
BCE losses equal the papers' sigmoid + BCE while staying finite in bf16 and fp16.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

# Keras/TF clip probabilities to [1e-7, 1 - 1e-7]; targets outside [0, 1] (the Columbia report's 0.7-1.2) need
# the same bound, or BCE with a target above 1 has no minimum and D pushes its logits to infinity.
_PROBABILITY_EPS = 1e-7
_LOGIT_BOUND = math.log((1 - _PROBABILITY_EPS) / _PROBABILITY_EPS)


# -- adversarial terms on the real/fake logit -----------------------------------------------------------------
def binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, targets)


class AdversarialLoss(Protocol):
    uses_targets: bool  # whether soft/noisy/flipped label targets apply
    relativistic: bool  # whether G's loss also needs D's logits on real images (the G step runs D on them)

    def discriminator(
        self, real: torch.Tensor, fake: torch.Tensor, real_target: torch.Tensor, fake_target: torch.Tensor
    ) -> torch.Tensor: ...

    def generator(self, fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor: ...


class NonSaturating:
    """Goodfellow et al. 2014 with G maximising log D(G(z)) (the DCGAN paper's choice)."""

    uses_targets = True
    relativistic = False

    def discriminator(self, real, fake, real_target, fake_target):
        return binary_cross_entropy(real, real_target) + binary_cross_entropy(fake, fake_target)

    def generator(self, fake, real=None):
        return F.softplus(-fake).mean()


class Minimax(NonSaturating):
    """The original game: G minimises log(1 - D(G(z))), which saturates when D is sure (the VNU report's start)."""

    def generator(self, fake, real=None):
        return -F.softplus(fake).mean()  # log(1 - sigmoid(x)) = -softplus(x)


class Wasserstein:
    """WGAN (Arjovsky et al. 2017): the critic widens E[D(real)] - E[D(fake)]; G raises E[D(G(z))]."""

    uses_targets = False
    relativistic = False

    def discriminator(self, real, fake, real_target, fake_target):
        return fake.mean() - real.mean()

    def generator(self, fake, real=None):
        return -fake.mean()


class Hinge:
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018's spectral-norm experiments)."""

    uses_targets = False
    relativistic = False

    def discriminator(self, real, fake, real_target, fake_target):
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()

    def generator(self, fake, real=None):
        return -fake.mean()


class RelativisticPairing:
    """RpGAN (Jolicoeur-Martineau 2019; R3GAN, Huang et al. NeurIPS 2024, eq. 2): each real image is paired with a
    generated one and D is asked which of the two is more real. D minimises softplus(D(fake) - D(real)), G minimises
    softplus(D(real) - D(fake)), averaged over the pairs. `real` and `fake`: (N,) logits, paired by position.
    Unlike the non-saturating loss, every pair keeps a gradient however far apart D puts the two sets, which is what
    lets R3GAN cover all modes (with the R1 and R2 penalties; `zero_centred_penalty`)."""

    uses_targets = False
    relativistic = True

    def discriminator(self, real, fake, real_target, fake_target):
        return F.softplus(fake - real).mean()

    def generator(self, fake, real=None):
        if real is None:
            raise ValueError("the relativistic pairing loss needs D's logits on real images in the generator step")
        return F.softplus(real - fake).mean()


ADVERSARIAL_LOSSES: dict[str, type[AdversarialLoss]] = {
    "nonsaturating": NonSaturating,
    "minimax": Minimax,
    "wasserstein": Wasserstein,
    "hinge": Hinge,
    "rpgan": RelativisticPairing,
}


# -- class and style terms -------------------------------------------------------------------------------------
def class_cross_entropy(class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AC-GAN's auxiliary classifier loss (and CAN's style loss on real images)."""
    return F.cross_entropy(class_logits, labels)


def style_ambiguity(class_logits: torch.Tensor) -> torch.Tensor:
    """CAN's generator term: cross-entropy of D's style posterior against the uniform distribution over K styles.

    Equals log K exactly when the posterior is uniform, which is its minimum: G is rewarded for art that D cannot
    attribute to any one style.
    """
    return -F.log_softmax(class_logits, dim=1).mean()


# -- stabilisers -----------------------------------------------------------------------------------------------
def label_targets(
    count: int,
    low: float,
    high: float,
    flip_probability: float,
    flipped_low: float,
    flipped_high: float,
    device: torch.device | str,
) -> torch.Tensor:
    """Soft/noisy targets drawn uniformly from [low, high]; with flip_probability, from the other side's range."""
    targets = torch.empty(count, device=device).uniform_(low, high)
    if flip_probability > 0:
        flipped = torch.rand(count, device=device) < flip_probability
        targets = torch.where(flipped, torch.empty_like(targets).uniform_(flipped_low, flipped_high), targets)
    return targets


def gradient_penalty(critic: Callable[..., torch.Tensor], real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): (||grad_x D(x)||_2 - 1)^2 at random points between real and fake."""
    mix = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    points = (mix * real.detach() + (1 - mix) * fake.detach()).requires_grad_(True)
    scores = critic(points)[:, 0].float()
    (gradients,) = torch.autograd.grad(scores.sum(), points, create_graph=True)
    return ((gradients.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


def zero_centred_penalty(critic: Callable[..., torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """E[||grad_x D(x)||^2] of D's real/fake logit at `images`: R1 on real images (Mescheder et al. 2018), R2 on
    generated ones (R3GAN, Huang et al. 2024, eq. 4); the caller scales it by gamma / 2.

    `images`: (N, C, H, W), any float dtype, detached here. D runs with autocast off, in fp32: the penalty's double
    backward then keeps fp32's range under bf16/fp16 training (per-pixel gradients of a logit are small). Returns a
    float32 scalar. Needs a second derivative, which DeepSpeed's ZeRO optimizers cannot take (the config refuses it).
    """
    points = images.detach().float().requires_grad_(True)
    with torch.autocast(device_type=points.device.type, enabled=False):  # the graph the double backward runs too
        scores = critic(points)[:, 0].float()
        (gradients,) = torch.autograd.grad(scores.sum(), points, create_graph=True)
        return gradients.square().flatten(1).sum(1).mean()


class LeCamAnchors:
    """LeCam regularisation (Tseng et al., CVPR 2021, eq. 3, as in their code): moving averages of D's mean logit on
    real (alpha_R) and generated (alpha_F) images, and the penalty relu(D(x) - alpha_F)^2 + relu(alpha_R - D(G(z)))^2
    that keeps D's outputs from drifting apart when data is scarce.

    The anchors are 0-d float32 tensors on the logits' device (updated without a host sync), None before the first
    update, which sets them to the first batch's means. They belong in the checkpoint (`state_dict`): a resumed run
    continues them exactly.
    """

    decay = 0.99

    def __init__(self) -> None:
        self.real: torch.Tensor | None = None
        self.fake: torch.Tensor | None = None

    def penalty(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """`real`, `fake`: (N,) float32 logits. Updates the anchors with this batch, then returns the penalty."""
        with torch.no_grad():
            real_mean, fake_mean = real.detach().mean(), fake.detach().mean()
            if self.real is None or self.fake is None:
                self.real, self.fake = real_mean.clone(), fake_mean.clone()
            else:
                # out of place: a state_dict taken earlier (a checkpoint being written) must not change under it
                self.real = torch.lerp(self.real.to(real.device), real_mean, 1 - self.decay)
                self.fake = torch.lerp(self.fake.to(fake.device), fake_mean, 1 - self.decay)
        return F.relu(real - self.fake).square().mean() + F.relu(self.real - fake).square().mean()

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.real is None or self.fake is None:
            return {}
        return {"real": self.real.detach().cpu().clone(), "fake": self.fake.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.real, self.fake = state.get("real"), state.get("fake")


@torch.no_grad()
def clip_weights(network: nn.Module, bound: float) -> None:
    """WGAN's Lipschitz constraint: clamp every parameter of the critic into [-bound, bound] after each update."""
    for param in network.parameters():
        param.clamp_(-bound, bound)


# -- composition ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Objective:
    """What D and G minimise, assembled from the config. Returns named parts so each can be logged."""

    adversarial: AdversarialLoss
    class_mode: str = "none"  # none | auxiliary (AC-GAN) | ambiguity (CAN)
    class_weight: float = 1.0
    real_labels: tuple[float, float] = (1.0, 1.0)
    fake_labels: tuple[float, float] = (0.0, 0.0)
    label_flip: float = 0.0
    lecam_weight: float = 0.0
    lecam: LeCamAnchors | None = None  # the anchors' state when lecam_weight > 0 (mutable: it moves every D step)

    @property
    def targets_leave_unit_interval(self) -> bool:
        return min(*self.real_labels, *self.fake_labels) < 0 or max(*self.real_labels, *self.fake_labels) > 1

    def discriminator(
        self,
        real_out: torch.Tensor,
        fake_out: torch.Tensor,
        real_classes: torch.Tensor,
        fake_classes: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        real_out, fake_out = real_out.float(), fake_out.float()  # autocast may hand back 16-bit logits
        count, device = real_out.shape[0], real_out.device
        real_target = label_targets(count, *self.real_labels, self.label_flip, *self.fake_labels, device)
        fake_target = label_targets(count, *self.fake_labels, self.label_flip, *self.real_labels, device)
        real_logit, fake_logit = real_out[:, 0], fake_out[:, 0]
        if self.targets_leave_unit_interval:
            real_logit = real_logit.clamp(-_LOGIT_BOUND, _LOGIT_BOUND)
            fake_logit = fake_logit.clamp(-_LOGIT_BOUND, _LOGIT_BOUND)
        parts = {"adv": self.adversarial.discriminator(real_logit, fake_logit, real_target, fake_target)}
        if self.lecam_weight and self.lecam is not None:
            parts["lecam"] = self.lecam_weight * self.lecam.penalty(real_out[:, 0], fake_out[:, 0])
        if self.class_mode == "auxiliary":
            parts["class"] = self.class_weight * (
                class_cross_entropy(real_out[:, 1:], real_classes) + class_cross_entropy(fake_out[:, 1:], fake_classes)
            )
        elif self.class_mode == "ambiguity":
            parts["style"] = self.class_weight * class_cross_entropy(real_out[:, 1:], real_classes)
        return parts

    def generator(
        self, fake_out: torch.Tensor, fake_classes: torch.Tensor | None, real_out: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """G's terms; `real_out` (D's outputs on real images, paired with `fake_out`) for relativistic losses."""
        fake_out = fake_out.float()
        real_logit = None if real_out is None else real_out.float()[:, 0].detach()  # G cannot move D(real)
        parts = {"adv": self.adversarial.generator(fake_out[:, 0], real_logit)}
        if self.class_mode == "auxiliary":
            parts["class"] = self.class_weight * class_cross_entropy(fake_out[:, 1:], fake_classes)
        elif self.class_mode == "ambiguity":
            parts["ambiguity"] = self.class_weight * style_ambiguity(fake_out[:, 1:])
        return parts
