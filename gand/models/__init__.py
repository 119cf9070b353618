"""Model registry: architecture name -> builder of a (generator, discriminator) pair of pure nn.Modules.

Conventions every architecture keeps, so the trainer needs no special cases:
- G(z, labels=None) -> images in the range of its output activation (tanh: [-1, 1], sigmoid: [0, 1]).
- D(images) -> N x (1 + K) logits: column 0 real/fake, columns 1..K class (AC-GAN) or style (CAN) logits.
- Each network exposes its stages as `.blocks` (an nn.ModuleList), so checkpointing and wrapping can target them.
Models know nothing of devices, precision or distribution; those, and spectral normalisation, come from outside.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from gand.models import acgan, can, dcgan, desai, mlp


@dataclass(frozen=True)
class ModelSpec:
    resolution: int
    latent_dim: int = 100
    width: float = 1.0
    channels: int = 3
    num_classes: int = 0
    g_batch_norm: bool = True
    d_batch_norm: bool = True
    g_activation: str = "relu"
    g_output: str = "tanh"
    d_dropout: float = 0.0
    spectral_norm: str = "none"  # none | d | g | both


@dataclass(frozen=True)
class Architecture:
    build: Callable[[ModelSpec], tuple[nn.Module, nn.Module]]
    summary: str
    supports_resolution: Callable[[int], bool]
    resolutions_text: str
    class_head: bool = False  # D has K class/style logits after the real/fake one
    conditional: bool = False  # G takes class labels


def _power_of_two_from_32(resolution: int) -> bool:
    return resolution >= 32 and resolution & (resolution - 1) == 0


MODELS: dict[str, Architecture] = {
    "mlp": Architecture(
        mlp.build, "original GAN, MLPs (Goodfellow 2014; VNU report)", lambda r: 8 <= r <= 128, "8 to 128"
    ),
    "dcgan": Architecture(dcgan.build, "DCGAN (Radford 2016)", _power_of_two_from_32, "32, 64, 128, 256"),
    "desai": Architecture(
        desai.build,
        "the Rice report's easier G/D (Desai 2018)",
        lambda r: r % 4 == 0 and r <= 128,
        "multiples of 4 up to 128",
    ),
    "can": Architecture(
        can.build, "CAN with a style head (Elgammal 2017)", lambda r: r in can.RESOLUTIONS, "128, 256", class_head=True
    ),
    "acgan": Architecture(
        acgan.build,
        "AC-GAN (Odena 2017), CIFAR-10 network",
        lambda r: r in acgan.RESOLUTIONS,
        "32",
        class_head=True,
        conditional=True,
    ),
}


def spec_from_config(model_cfg, resolution: int, channels: int, num_classes: int) -> ModelSpec:
    """The ModelSpec for a config's `model` section (kept here so models never import the config)."""
    return ModelSpec(
        resolution=resolution,
        latent_dim=model_cfg.latent_dim,
        width=model_cfg.width,
        channels=channels,
        num_classes=num_classes,
        g_batch_norm=model_cfg.g_batch_norm,
        d_batch_norm=model_cfg.d_batch_norm,
        g_activation=model_cfg.g_activation,
        g_output=model_cfg.g_output,
        d_dropout=model_cfg.d_dropout,
        spectral_norm=model_cfg.spectral_norm,
    )


def value_range(g_output: str) -> tuple[float, float]:
    """The pixel range G produces, and so the range real images are given to D in."""
    return (0.0, 1.0) if g_output == "sigmoid" else (-1.0, 1.0)


def from_uint8(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """uint8 pixels (any shape, any device, any memory format) -> float32 in `value_range`, linearly: 0 -> low,
    255 -> high. The one conversion from stored images to what D sees (training, evaluation, features)."""
    low, high = value_range
    return images.float().mul_((high - low) / 255.0).add_(low)


@dataclass(frozen=True)
class Sampling:
    """How to draw from a generator: its latent size, whether and from how many classes it takes labels, and the
    value range of its images. Training's `Recipe` and evaluation both read it, so evaluation needs no trainer."""

    latent_dim: int
    num_classes: int  # classes G is conditioned on (or the class head predicts); 0 = none
    sample_classes: bool  # whether generated images get class labels (AC-GAN, auxiliary class losses)
    value_range: tuple[float, float]

    @classmethod
    def from_config(cls, cfg, num_classes: int) -> Sampling:
        """From a GandConfig (passed in, so models never import the config)."""
        conditional = MODELS[cfg.model.arch].conditional or cfg.loss.class_mode == "auxiliary"
        return cls(cfg.model.latent_dim, num_classes, conditional, value_range(cfg.model.g_output))

    def latent(self, count: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`count` latents N(0, I) (count x latent_dim, float32) and, for a conditional G, uniform class labels
        (count, int64); None otherwise."""
        z = torch.randn(count, self.latent_dim, device=device)
        classes = torch.randint(0, self.num_classes, (count,), device=device) if self.sample_classes else None
        return z, classes


def build_from_config(cfg, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """G and D for a GandConfig's model section at its data resolution and channels."""
    spec = spec_from_config(cfg.model, cfg.data.resolution, cfg.data.channels, num_classes)
    return build_models(cfg.model.arch, spec)


def build_models(arch: str, spec: ModelSpec) -> tuple[nn.Module, nn.Module]:
    generator, discriminator = MODELS[arch].build(spec)
    if spec.spectral_norm in ("g", "both"):
        apply_spectral_norm(generator)
    if spec.spectral_norm in ("d", "both"):
        apply_spectral_norm(discriminator)
    return generator, discriminator


def apply_spectral_norm(network: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) on every conv and linear layer's weight, in place."""
    for module in list(network.modules()):
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            # ConvTranspose2d keeps output channels in dim 1 of its weight.
            spectral_norm(module, dim=1 if isinstance(module, nn.ConvTranspose2d) else 0)
    return network
