import pytest
import torch

from gand.augment import AUGMENTATIONS, AdaptiveAugment, augment
from gand.config import OptimizerConfig
from gand.models import ModelSpec, build_models
from gand.train.optim import GeneratorEMA, build_optimizer


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_each_augmentation_keeps_shape_and_passes_gradients(name):
    torch.manual_seed(0)
    images = (torch.rand(8, 3, 16, 16) * 2 - 1).requires_grad_(True)
    out = augment(images, [name])
    assert out.shape == images.shape
    assert not torch.equal(out, images)
    out.square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_translation_moves_content_and_fills_with_zeros():
    torch.manual_seed(1)
    images = torch.ones(64, 1, 8, 8)
    shifted = augment(images, ["translation"])
    assert set(shifted.unique().tolist()) <= {0.0, 1.0}
    zero_share = (shifted == 0).float().mean().item()
    assert 0 < zero_share < 0.25  # at most 1/8 of each side is uncovered


def test_cutout_zeroes_a_quarter_of_each_image():
    images = torch.ones(5, 3, 16, 16)
    cut = augment(images, ["cutout"])
    assert torch.equal((cut == 0).flatten(1).sum(1), torch.full((5,), 3 * 8 * 8))


def test_empty_policy_is_identity():
    images = torch.randn(2, 3, 8, 8)
    assert augment(images, []) is images


@pytest.mark.parametrize(
    ("cfg", "kind"),
    [
        (OptimizerConfig(name="adam", lr=1e-4, betas=(0.0, 0.9)), torch.optim.Adam),
        (OptimizerConfig(name="rmsprop", lr=5e-5), torch.optim.RMSprop),
        (OptimizerConfig(name="sgd", lr=0.01, momentum=0.9), torch.optim.SGD),
    ],
)
def test_optimizers_from_config(cfg, kind):
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg)
    assert isinstance(optimizer, kind)
    group = optimizer.param_groups[0]
    assert group["lr"] == cfg.lr
    if cfg.name == "adam":
        assert group["betas"] == (0.0, 0.9)
    if cfg.name == "sgd":
        assert group["momentum"] == 0.9


def test_ema_half_life_in_images():
    generator, _ = build_models("dcgan", ModelSpec(32, width=0.125))
    ema = GeneratorEMA(generator, half_life_kimg=1.0)
    first = next(generator.parameters())
    start = first.detach().clone()
    with torch.no_grad():
        first.add_(1.0)
    for _ in range(10):  # 10 updates of 100 images = one half-life
        ema.update(generator, images_per_update=100)
    moved = next(ema.model.parameters()) - start
    torch.testing.assert_close(moved, torch.full_like(moved, 0.5))
    assert not any(p.requires_grad for p in ema.model.parameters())
    for ema_buffer, buffer in zip(ema.model.buffers(), generator.buffers(), strict=True):
        assert torch.equal(ema_buffer, buffer)


def test_adaptive_probability_applies_each_transform_to_a_share_of_the_images():
    torch.manual_seed(0)
    images = torch.ones(400, 3, 8, 8)
    assert torch.equal(augment(images, ["cutout"], torch.tensor(0.0)), images)  # p = 0: untouched
    assert (augment(images, ["cutout"], torch.tensor(1.0)) == 0).any(dim=(1, 2, 3)).all()  # p = 1: every image
    cut = (augment(images, ["cutout"], torch.tensor(0.25)) == 0).any(dim=(1, 2, 3)).float().mean().item()
    assert 0.18 < cut < 0.32  # about a quarter, drawn per image


def test_adaptive_augmentation_moves_p_with_the_overfitting_signal():
    """ADA (Karras et al. 2020): r_t = E[sign D(real)]; p += sign(r_t - target) * images / speed, within [0, 1]."""
    ada = AdaptiveAugment(target=0.6, speed_images=1000)
    ada.observe(torch.tensor([3.0, 2.0, 1.0, -1.0]))  # r_t = (3 - 1) / 4 = 0.5: below target
    ada.adjust(64)
    assert ada.r_t.item() == pytest.approx(0.5) and ada.p.item() == 0.0  # clamped at 0
    for _ in range(3):
        ada.observe(torch.tensor([1.0, 1.0, 1.0, 1.0]))  # r_t = 1: D is sure of every real image
        ada.adjust(100)
    assert ada.p.item() == pytest.approx(0.3)
    saved = ada.state_dict()
    ada.observe(torch.tensor([-1.0, -1.0]))
    ada.adjust(100)
    assert ada.p.item() == pytest.approx(0.2)
    restored = AdaptiveAugment(target=0.6, speed_images=1000)
    restored.load_state_dict(saved)
    assert restored.p.item() == pytest.approx(0.3) and restored.r_t.item() == pytest.approx(1.0)
    ada.adjust(100)  # nothing observed since (no D update in the window): p and r_t stay
    assert ada.p.item() == pytest.approx(0.2) and ada.r_t.item() == pytest.approx(-1.0)
