"""Walking and doing arithmetic in latent space (the DCGAN paper's section 6, redone in the Columbia and Duke
reports): seeded latents, linear and spherical interpolation, and vector arithmetic on averaged seed groups."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from gand.errors import ConfigError


def seeded_latent(seed: int, latent_dim: int) -> torch.Tensor:
    """The latent a seed names: the same vector for the same seed, whatever else was drawn before."""
    return torch.randn(latent_dim, generator=torch.Generator().manual_seed(seed))


def lerp(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` points from a to b (both ends included) on the straight line."""
    t = torch.linspace(0, 1, steps).unsqueeze(1)
    return (1 - t) * a + t * b


def slerp(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` points from a to b on the great circle (White 2016): Gaussian latents keep their typical norm,
    which the straight line's middle does not."""
    cosine = torch.dot(a / a.norm(), b / b.norm()).clamp(-1.0, 1.0)
    angle = torch.arccos(cosine)
    if angle.abs() < 1e-6:
        return lerp(a, b, steps)
    t = torch.linspace(0, 1, steps).unsqueeze(1)
    return (torch.sin((1 - t) * angle) * a + torch.sin(t * angle) * b) / torch.sin(angle)


@dataclass(frozen=True)
class Arithmetic:
    groups: dict[str, list[int]]  # name -> seeds
    terms: list[tuple[int, str]]  # (+1 / -1, group name), in order


def parse_arithmetic(text: str) -> Arithmetic:
    """`"smiling=1,2,3 neutral=4,5,6 man=7,8,9 : smiling - neutral + man"` -> groups and signed terms."""
    definitions, colon, expression = text.partition(":")
    if not colon:
        raise ConfigError("--arithmetic: expected 'name=seed,seed ... : name - name + name' (missing ':')")
    groups: dict[str, list[int]] = {}
    for item in definitions.replace(";", " ").split():
        name, equals, seeds = item.partition("=")
        if not equals or not re.fullmatch(r"[A-Za-z_]\w*", name):
            raise ConfigError(f"--arithmetic: {item!r} is not name=seed,seed,...")
        try:
            groups[name] = [int(seed) for seed in seeds.split(",") if seed]
        except ValueError:
            raise ConfigError(f"--arithmetic: seeds of {name!r} must be integers (got {seeds!r})") from None
        if not groups[name]:
            raise ConfigError(f"--arithmetic: group {name!r} has no seeds")
    tokens = re.findall(r"[+-]|[A-Za-z_]\w*|\S", expression)
    terms: list[tuple[int, str]] = []
    sign = 1
    for token in tokens:
        if token in "+-":
            sign = 1 if token == "+" else -1
        elif token in groups:
            terms.append((sign, token))
            sign = 1
        else:
            raise ConfigError(
                f"--arithmetic: {token!r} in the expression is not a defined group "
                f"({', '.join(groups) or 'none defined'})"
            )
    if not terms:
        raise ConfigError("--arithmetic: the expression after ':' is empty")
    return Arithmetic(groups, terms)


def group_means(arithmetic: Arithmetic, latent_dim: int) -> dict[str, torch.Tensor]:
    """Each group's averaged latent: averaging over a few seeds keeps the shared attribute, not one face."""
    return {
        name: torch.stack([seeded_latent(seed, latent_dim) for seed in seeds]).mean(0)
        for name, seeds in arithmetic.groups.items()
    }


def evaluate_arithmetic(arithmetic: Arithmetic, means: dict[str, torch.Tensor]) -> torch.Tensor:
    start = torch.zeros_like(next(iter(means.values())))
    return sum((sign * means[name] for sign, name in arithmetic.terms), start)
