import pytest
import torch
from torch import nn

from gand.models import MODELS, ModelSpec, build_models
from gand.models.dcgan import stage_channels

STANDARD = (28, 32, 64, 128, 256)


def cases():
    for arch, entry in sorted(MODELS.items()):
        for resolution in STANDARD:
            if entry.supports_resolution(resolution):
                yield arch, resolution


@pytest.mark.parametrize(("arch", "resolution"), list(cases()))
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shapes_at_every_supported_resolution(arch, resolution, channels):
    classes = 5 if MODELS[arch].class_head else 0
    generator, discriminator = build_models(arch, ModelSpec(resolution, 16, 0.0625, channels, num_classes=classes))
    labels = torch.tensor([0, 4, 2]) if MODELS[arch].conditional else None
    images = generator(torch.randn(3, 16), labels)
    assert images.shape == (3, channels, resolution, resolution)
    assert images.abs().max() <= 1.0  # tanh
    assert discriminator(images).shape == (3, 1 + classes)


def test_every_standard_resolution_has_a_model():
    assert {res for _, res in cases()} == set(STANDARD)
    assert MODELS["dcgan"].supports_resolution(256) and not MODELS["dcgan"].supports_resolution(48)


def test_dcgan64_is_the_papers_network():
    # Radford et al.'s 64 px generator 100 -> 4x4x512 -> 8x8x256 -> 16x16x128 -> 32x32x64 -> 64x64x3 and its
    # mirror discriminator; these counts are those of the reference PyTorch DCGAN.
    generator, discriminator = build_models("dcgan", ModelSpec(64, latent_dim=100, width=1.0))
    assert sum(p.numel() for p in generator.parameters()) == 3_576_704
    assert sum(p.numel() for p in discriminator.parameters()) == 2_765_568
    assert stage_channels(64, 1.0) == [512, 256, 128, 64]
    assert stage_channels(32, 1.0) == [256, 128, 64]


def test_mlp28_matches_the_vnu_tables():
    # Tables I-II list the layers' parameter counts; these are their sums.
    generator, discriminator = build_models("mlp", ModelSpec(28, 100, 1.0, channels=1, d_dropout=0.3))
    assert sum(p.numel() for p in generator.parameters()) == 25_856 + 131_584 + 525_312 + 803_600
    assert sum(p.numel() for p in discriminator.parameters()) == 803_840 + 524_800 + 131_328 + 257
    assert sum(isinstance(m, nn.Dropout) for m in discriminator.modules()) == 3


def test_can256_layer_plan():
    generator, discriminator = build_models("can", ModelSpec(256, 100, 1.0, num_classes=27))
    transposed = [m for m in generator.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [m.out_channels for m in transposed] == [1024, 1024, 512, 256, 128, 64, 3]
    convs = [m for m in discriminator.blocks.modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == [32, 64, 128, 256, 512, 512]
    assert all(m.kernel_size == (4, 4) and m.stride == (2, 2) for m in convs)
    for head, outputs in ((discriminator.real_fake, 1), (discriminator.style, 27)):
        assert [m.out_features for m in head if isinstance(m, nn.Linear)] == [1024, 512, outputs]
    can128, _ = build_models("can", ModelSpec(128, 100, 1.0, num_classes=27))
    assert [m.out_channels for m in can128.modules() if isinstance(m, nn.ConvTranspose2d)][-1] == 3


def test_desai_layer_plan():
    generator, discriminator = build_models("desai", ModelSpec(32))
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in generator.modules()) == 1  # the report's point
    assert [m.kernel_size for m in generator.modules() if isinstance(m, nn.Conv2d)] == [(5, 5)] * 4
    assert generator.blocks[0][0].out_features == 16 * 16 * 128
    assert discriminator.blocks[-1][-1].in_features == 2048


def test_acgan_is_class_conditional_and_matches_the_duke_table():
    torch.manual_seed(0)
    generator, discriminator = build_models("acgan", ModelSpec(32, 100, 1.0, num_classes=10, d_dropout=0.5))
    assert generator.blocks[0][0].in_features == 110  # the table's 110 x 1 x 1 input
    convs = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.out_channels, m.stride[0]) for m in convs] == [(16, 2), (32, 1), (64, 2), (128, 1), (256, 2), (512, 1)]
    assert discriminator.blocks[-1][-1].out_features == 11  # "Linear 11": source + 10 classes
    z = torch.randn(1, 100).repeat(2, 1)
    images = generator(z, torch.tensor([3, 7]))
    assert not torch.allclose(images[0], images[1])  # same noise, different class, different image
    with pytest.raises(ValueError, match="labels"):
        generator(z)


def test_switches_batch_norm_activation_dropout_output():
    generator, discriminator = build_models(
        "dcgan", ModelSpec(32, g_batch_norm=False, d_batch_norm=False, g_activation="leaky_relu", d_dropout=0.4,
                           g_output="sigmoid")
    )  # fmt: skip
    assert not any(isinstance(m, nn.BatchNorm2d) for m in generator.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in discriminator.modules())
    assert any(isinstance(m, nn.LeakyReLU) for m in generator.modules())
    assert sum(isinstance(m, nn.Dropout) for m in discriminator.modules()) == 3
    images = generator(torch.randn(4, 100))
    assert images.min() >= 0 and images.max() <= 1  # sigmoid output


@pytest.mark.parametrize("where", ["d", "g", "both"])
def test_spectral_norm_is_applied_from_outside_and_bounds_the_norm(where):
    torch.manual_seed(0)
    generator, discriminator = build_models("dcgan", ModelSpec(32, width=0.25, spectral_norm=where))
    for network, wanted in ((generator, where in ("g", "both")), (discriminator, where in ("d", "both"))):
        layers = [m for m in network.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        assert all(hasattr(m, "parametrizations") for m in layers) == wanted
    layer = discriminator.blocks[1][0]
    if where != "g":
        for _ in range(30):  # power iteration converges in training mode
            discriminator(torch.randn(2, 3, 32, 32))
        sigma = torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.05)


def test_weights_follow_dcgan_initialisation():
    torch.manual_seed(0)
    generator, discriminator = build_models("dcgan", ModelSpec(64, latent_dim=100, width=1.0))
    conv = discriminator.blocks[1][0].weight
    batch_norm = discriminator.blocks[1][1].weight
    assert abs(conv.std().item() - 0.02) < 0.002
    assert abs(batch_norm.mean().item() - 1.0) < 0.01
    assert isinstance(generator.blocks, torch.nn.ModuleList)


def test_resolution_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power-of-two"):
        stage_channels(48, 1.0)
