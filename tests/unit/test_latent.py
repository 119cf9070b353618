"""Latent walks and arithmetic: the vectors themselves (the images are checked in tests/integration/test_eval.py)."""

import pytest
import torch

from gand.errors import ConfigError
from gand.eval.latent import evaluate_arithmetic, group_means, lerp, parse_arithmetic, seeded_latent, slerp


def test_a_seed_names_the_same_latent_whatever_was_drawn_before():
    first = seeded_latent(7, 100)
    torch.randn(1000)
    assert torch.equal(first, seeded_latent(7, 100)) and not torch.equal(first, seeded_latent(8, 100))


def test_walks_start_and_end_at_the_seeds_and_slerp_keeps_the_norm():
    a, b = seeded_latent(1, 128), seeded_latent(2, 128)
    for walk in (lerp(a, b, 9), slerp(a, b, 9)):
        assert walk.shape == (9, 128)
        assert torch.allclose(walk[0], a, atol=1e-5) and torch.allclose(walk[-1], b, atol=1e-5)
    # Two random 128-d Gaussians are nearly orthogonal: the straight line's middle is ~1/sqrt(2) as long.
    assert lerp(a, b, 3)[1].norm() < 0.8 * a.norm()
    assert slerp(a, b, 3)[1].norm() == pytest.approx(float((a.norm() + b.norm()) / 2), rel=0.1)


def test_arithmetic_averages_groups_and_applies_signed_terms():
    parsed = parse_arithmetic("smiling=1,2,3 neutral=4,5,6; man=7,8,9 : smiling - neutral + man")
    assert parsed.groups == {"smiling": [1, 2, 3], "neutral": [4, 5, 6], "man": [7, 8, 9]}
    assert parsed.terms == [(1, "smiling"), (-1, "neutral"), (1, "man")]
    means = group_means(parsed, 16)
    assert torch.allclose(means["man"], torch.stack([seeded_latent(s, 16) for s in (7, 8, 9)]).mean(0))
    expected = means["smiling"] - means["neutral"] + means["man"]
    assert torch.allclose(evaluate_arithmetic(parsed, means), expected)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("a=1,2 + a", "missing ':'"),
        ("a=1,x : a", "integers"),
        ("a=1 : a - b", "'b'"),
        ("a= : a", "no seeds"),
        ("a=1 :", "empty"),
    ],
)
def test_arithmetic_errors_name_the_problem(text, problem):
    with pytest.raises(ConfigError, match=problem):
        parse_arithmetic(text)
