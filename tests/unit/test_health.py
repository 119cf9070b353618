import pytest
import torch
from torch import nn

from gand.observability.health import (
    DominanceWindow,
    discriminator_outputs,
    gradient_stats,
    layer_group,
    sample_diversity,
)


def test_discriminator_outputs_for_logits_and_for_a_critic():
    real, fake = torch.tensor([[3.0], [2.0], [-1.0], [4.0]]), torch.tensor([[-2.0], [-3.0], [1.0], [-1.0]])
    stats = discriminator_outputs(real, fake, critic=False)
    assert stats.accuracy_real == 0.75 and stats.accuracy_fake == 0.75
    assert 0.5 < stats.real < 1 and 0 < stats.fake < 0.5
    # A critic's scores have no zero point: all positive, yet real above fake everywhere.
    shifted = discriminator_outputs(real + 10, fake + 10, critic=True)
    assert shifted.accuracy_real == 0.75 and shifted.accuracy_fake == 0.75


def test_gradient_stats_groups_blocks_and_counts_vanishing_entries():
    net = nn.Module()
    net.blocks = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
    net.head = nn.Linear(2, 1)
    for param in net.parameters():
        param.grad = torch.full_like(param, 1.0)
    net.blocks[0].weight.grad.zero_()  # 4 of blocks.0's 6 entries vanish
    norm, vanishing = gradient_stats(net)
    assert set(vanishing) == {"blocks.0", "blocks.1", "head"}
    assert vanishing["blocks.0"].item() == pytest.approx(4 / 6) and vanishing["blocks.1"].item() == 0
    assert norm.item() == pytest.approx(11**0.5)  # 11 entries of 1
    assert layer_group("blocks.3.conv.weight") == "blocks.3" and layer_group("fc.bias") == "fc"


def test_sample_diversity_is_zero_for_identical_samples_and_near_one_for_data_like_ones():
    torch.manual_seed(0)
    real = torch.rand(16, 3, 32, 32) * 2 - 1
    assert sample_diversity(real[:1].expand(16, -1, -1, -1), real) == 0
    assert 0.8 < sample_diversity(torch.rand(16, 3, 32, 32) * 2 - 1, real) < 1.2


def test_dominance_needs_a_whole_window():
    window = DominanceWindow(points=3)
    assert not window.update(0.99, 0.99) and not window.update(0.99, 0.99)
    assert window.update(0.97, 0.96)
    assert not window.update(0.99, 0.5)  # one point where G fooled D breaks the streak
