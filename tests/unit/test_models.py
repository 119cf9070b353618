import pytest
import torch

from gand.models import MODELS, ModelSpec, build_models
from gand.models.dcgan import stage_channels


@pytest.mark.parametrize("resolution", [32, 64, 128, 256])
@pytest.mark.parametrize("arch", sorted(MODELS))
def test_output_shapes_at_every_resolution(arch, resolution):
    generator, discriminator = build_models(arch, ModelSpec(resolution, latent_dim=16, width=0.125))
    images = generator(torch.randn(3, 16))
    assert images.shape == (3, 3, resolution, resolution)
    assert images.abs().max() <= 1.0  # tanh output, the data's range
    assert discriminator(images).shape == (3,)


def test_dcgan64_is_the_papers_network():
    # Radford et al.'s 64 px generator 100 -> 4x4x512 -> 8x8x256 -> 16x16x128 -> 32x32x64 -> 64x64x3 and its
    # mirror discriminator; these counts are those of the reference PyTorch DCGAN.
    generator, discriminator = build_models("dcgan", ModelSpec(64, latent_dim=100, width=1.0))
    assert sum(p.numel() for p in generator.parameters()) == 3_576_704
    assert sum(p.numel() for p in discriminator.parameters()) == 2_765_568
    assert stage_channels(64, 1.0) == [512, 256, 128, 64]
    assert stage_channels(32, 1.0) == [256, 128, 64]


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
