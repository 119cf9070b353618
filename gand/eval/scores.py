"""FID, KID and IS from Inception features and logits, as plain NumPy functions (float64 throughout).

The definitions follow the papers and the reference implementations the UCSD and VNU reports' numbers come from:
- FID (Heusel et al. 2017): ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)) over pool3 features.
- KID (Binkowski et al. 2018): the unbiased MMD^2 estimate with the cubic polynomial kernel
  k(x, y) = (x.y / d + 1)^3, averaged over random subsets; mean and standard deviation.
- IS (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))) over splits of the samples; mean and standard deviation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance of a set of feature vectors: all FID needs from the reference set."""

    mean: np.ndarray  # (d,)
    covariance: np.ndarray  # (d, d)
    count: int

    @classmethod
    def of(cls, features: np.ndarray) -> FeatureStats:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"need at least 2 feature vectors of one size (got shape {features.shape})")
        return cls(features.mean(axis=0), np.cov(features, rowvar=False), features.shape[0])


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """FID between two Gaussians. tr((S_a S_b)^(1/2)) is computed as the sum of square roots of the eigenvalues
    of S_a^(1/2) S_b S_a^(1/2), which is symmetric positive semi-definite, so no complex square roots appear."""
    root_a = _psd_sqrt(a.covariance)
    middle = root_a @ b.covariance @ root_a
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_root = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    difference = a.mean - b.mean
    return float(difference @ difference + np.trace(a.covariance) + np.trace(b.covariance) - 2 * trace_root)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigenvalues, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ vectors.T


def kernel_inception_distance(
    real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID: mean and standard deviation over `subsets` random subsets (without replacement within a subset) of
    min(subset_size, len(real), len(fake)) vectors from each set."""
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    rng = np.random.default_rng(seed)
    estimates = [
        mmd2_unbiased(
            real[rng.choice(len(real), size, replace=False)], fake[rng.choice(len(fake), size, replace=False)]
        )
        for _ in range(subsets)
    ]
    return float(np.mean(estimates)), float(np.std(estimates))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2: the within-set kernel means leave out the diagonal (k(x_i, x_i))."""
    m, n = len(x), len(y)
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """IS from classifier logits: mean and standard deviation of exp(mean KL(p(y|x) || p(y))) over splits."""
    logits = np.asarray(logits, dtype=np.float64)
    if len(logits) < splits:
        raise ValueError(f"IS with {splits} splits needs at least {splits} samples (got {len(logits)})")
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    scores = []
    for part in np.array_split(log_probs, splits):
        log_marginal = np.log(np.exp(part).mean(axis=0))
        kl = (np.exp(part) * (part - log_marginal)).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))
