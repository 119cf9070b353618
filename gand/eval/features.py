"""The discriminator as a feature extractor (the DCGAN paper's CIFAR-10 experiment, redone in the Columbia report):
each conv stage's output max-pooled to a 4 x 4 grid, flattened and concatenated, then a linear SVM, against the
same SVM on raw pixels. A D that learned useful features beats the pixels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gand.models import from_uint8

GRID = 4  # each stage pooled to GRID x GRID, as in the DCGAN paper


@torch.no_grad()
def discriminator_features(discriminator: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """N x C x H x W in [-1, 1] -> N x F: every feature-map stage of D's `.blocks`, max-pooled and concatenated.
    Stages that already are vectors (MLP D) are used as they are, except the last (the logit)."""
    outputs, x = [], images
    blocks: list[nn.Module] = list(discriminator.blocks)  # type: ignore[arg-type]  # an nn.ModuleList by convention
    for index, block in enumerate(blocks):
        x = block(x)
        if x.dim() == 4:
            outputs.append(F.adaptive_max_pool2d(x, min(GRID, x.shape[-1])).flatten(1))
        elif index < len(blocks) - 1:
            outputs.append(x.flatten(1))
    return torch.cat(outputs, dim=1)


def svm_accuracy(
    train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray, seed: int = 0
) -> float:
    """Test accuracy of a linear SVM on standardised features (scikit-learn)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    model = make_pipeline(StandardScaler(), LinearSVC(C=0.01, max_iter=5000, random_state=seed))
    model.fit(train, train_labels)
    return float((model.predict(test) == test_labels).mean())


def compare_on_dataset(
    location: str, data_path: str, test_share: float = 0.3, seed: int = 0, batch_size: int = 256
) -> dict:
    """`gand features`: D's features vs raw pixels, each through the same linear SVM on the same split."""
    from sklearn.model_selection import train_test_split

    from gand.data.loader import ordered_samples
    from gand.data.tarindex import UNLABELLED
    from gand.errors import DataError
    from gand.eval.samples import load_networks
    from gand.observability.progress import TaskProgress

    loaded = load_networks(location)
    discriminator, cfg, name = loaded.discriminator, loaded.cfg, loaded.name
    discriminator.eval()
    _, pixels, labels = zip(*ordered_samples(data_path, cfg.data.resolution, cfg.data.channels), strict=True)
    labels = np.array(labels)
    if (labels == UNLABELLED).any() or len(set(labels)) < 2:
        raise DataError(f"{data_path}: gand features needs a labelled dataset with at least 2 classes")
    # D sees what G makes: [-1, 1] or [0, 1]
    images = from_uint8(torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2), _value_range(cfg))
    progress = TaskProgress("D features", len(images))
    parts = []
    for part in images.split(batch_size):
        parts.append(discriminator_features(discriminator, part))
        progress.advance(len(part))
    progress.close()
    features = torch.cat(parts)
    raw = images.flatten(1)
    split = train_test_split(np.arange(len(labels)), test_size=test_share, random_state=seed, stratify=labels)
    train, test = split
    result = {
        "checkpoint": name,
        "images": len(labels),
        "classes": len(set(labels)),
        "test_images": len(test),
        "feature_dims": features.shape[1],
        "pixel_dims": raw.shape[1],
    }
    fits = TaskProgress("linear SVMs fitted", 2, unit="fits")
    for kind, matrix in (("discriminator_features", features.numpy()), ("raw_pixels", raw.numpy())):
        fits.advance(0)  # shows the bar before the first fit, which takes most of the time
        result[f"{kind}_accuracy"] = round(
            svm_accuracy(matrix[train], labels[train], matrix[test], labels[test], seed), 4
        )
        fits.advance()
    fits.close()
    return result


def _value_range(cfg) -> tuple[float, float]:
    from gand.models import value_range

    return value_range(cfg.model.g_output)
