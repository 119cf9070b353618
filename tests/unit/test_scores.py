"""FID, KID and IS against independent computations on fixed feature sets and hand-computed values."""

import math

import numpy as np
import pytest
from scipy import linalg

from gand.eval.scores import (
    FeatureStats,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    mmd2_unbiased,
)


def scipy_fid(x: np.ndarray, y: np.ndarray) -> float:
    """The textbook formula with scipy's general matrix square root (as the reference implementations do)."""
    mu_x, mu_y = x.mean(axis=0), y.mean(axis=0)
    s_x, s_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = linalg.sqrtm(s_x @ s_y)
    return float(((mu_x - mu_y) ** 2).sum() + np.trace(s_x + s_y - 2 * root.real))


@pytest.mark.parametrize("dims", [4, 64])
def test_fid_matches_scipy_on_fixed_features(dims):
    rng = np.random.default_rng(dims)
    x = rng.normal(size=(500, dims)) @ rng.normal(size=(dims, dims))
    y = rng.normal(loc=0.3, size=(400, dims)) @ rng.normal(size=(dims, dims))
    ours = frechet_distance(FeatureStats.of(x), FeatureStats.of(y))
    assert ours == pytest.approx(scipy_fid(x, y), rel=1e-6, abs=1e-6)


def test_fid_of_a_set_with_itself_is_zero_and_shifts_add_their_square():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8))
    stats = FeatureStats.of(x)
    assert frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-8)
    shifted = FeatureStats.of(x + np.array([3.0] + [0.0] * 7))
    assert frechet_distance(stats, shifted) == pytest.approx(9.0, abs=1e-8)


def test_kid_unbiased_mmd_by_hand():
    x = np.array([[0.0, 0.0], [1.0, 0.0]])
    y = np.array([[0.0, 1.0], [1.0, 1.0]])
    k = lambda a, b: (np.dot(a, b) / 2 + 1) ** 3  # noqa: E731
    within_x = (k(x[0], x[1]) + k(x[1], x[0])) / 2
    within_y = (k(y[0], y[1]) + k(y[1], y[0])) / 2
    between = sum(k(a, b) for a in x for b in y) / 4
    assert mmd2_unbiased(x, y) == pytest.approx(within_x + within_y - 2 * between, abs=1e-12)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(1)
    same_mean, same_std = kernel_inception_distance(rng.normal(size=(400, 16)), rng.normal(size=(400, 16)),
                                                    subsets=20, subset_size=200)  # fmt: skip
    apart_mean, _ = kernel_inception_distance(rng.normal(size=(400, 16)), rng.normal(1.0, size=(400, 16)),
                                              subsets=20, subset_size=200)  # fmt: skip
    assert abs(same_mean) < 3 * same_std + 1e-3 and apart_mean > 10 * abs(same_mean) and apart_mean > 0.1


def test_inception_score_by_hand():
    # Confident, evenly spread predictions over K classes: IS = K. One class for everything: IS = 1.
    k = 4
    confident = np.full((40, k), -1e4)
    confident[np.arange(40), np.arange(40) % k] = 0.0
    assert inception_score(confident, splits=2) == pytest.approx((k, 0.0), abs=1e-9)
    assert inception_score(np.zeros((40, k)), splits=2) == pytest.approx((1.0, 0.0), abs=1e-9)
    # Two samples, p = (0.75, 0.25) and (0.25, 0.75): marginal (0.5, 0.5), KL = 0.75 ln 1.5 + 0.25 ln 0.5.
    logits = np.log(np.array([[0.75, 0.25], [0.25, 0.75]]))
    expected = math.exp(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert inception_score(logits, splits=1)[0] == pytest.approx(expected, abs=1e-12)
