"""Judging a generator: Inception features of real and generated images, and FID / KID / IS from them.

Reference statistics of a packed dataset at a resolution are computed once and cached beside its manifest
(`<dataset>/eval/inception-<res>px-<n>.npz`, written atomically, read with allow_pickle=False), keyed by the
dataset generation and the weights, so a dataset that grew or other weights recompute them.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import structlog
import torch
from torch import nn

from gand.errors import StorageError
from gand.eval.inception import FIDInception
from gand.eval.scores import FeatureStats, frechet_distance, inception_score, kernel_inception_distance
from gand.models import from_uint8

log = structlog.get_logger("gand.eval")
METRICS = ("fid", "kid", "is")


@dataclass(frozen=True)
class Reference:
    stats: FeatureStats
    features: np.ndarray  # kept for KID, which needs samples, not moments


@torch.no_grad()
def inception_outputs(
    network: FIDInception, batches: Iterator[torch.Tensor], count: int, device: torch.device, task: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(features N x 2048, logits N x 1008) for the first `count` images of `batches` (each in [-1, 1]); with a
    `task` name, progress on stderr (a bar at a terminal, else log lines)."""
    from gand.observability.progress import TaskProgress

    progress = TaskProgress(task, count) if task else None
    features, logits, seen = [], [], 0
    for images in batches:
        images = images[: count - seen].to(device)
        pool, classes = network(images)
        features.append(pool.double().cpu().numpy())
        logits.append(classes.double().cpu().numpy())
        seen += len(images)
        if progress is not None:
            progress.advance(len(images))
        if seen >= count:
            break
    if progress is not None:
        progress.close()
    if seen < count:
        raise ValueError(f"asked for {count} images, the source gave {seen}")
    return np.concatenate(features), np.concatenate(logits)


@torch.no_grad()
def generated_batches(
    generator: nn.Module, recipe, batch_size: int, device: torch.device, seed: int = 0
) -> Iterator[torch.Tensor]:
    """Endless batches of G's samples in [-1, 1], drawn as in training (a conditional G gets uniform classes),
    from a seeded stream."""
    from gand.eval.samples import generate, sampling_mode

    torch.manual_seed(seed)
    low, high = recipe.value_range
    with sampling_mode(generator, recipe):  # calibrated once for the whole stream
        while True:
            z, classes = recipe.latent(batch_size, device)
            images = generate(generator, z, classes if recipe.sample_classes else None)
            yield (images - low) / (high - low) * 2 - 1


def scores(
    real: Reference, fake_features: np.ndarray, fake_logits: np.ndarray, metrics: tuple[str, ...] = METRICS
) -> dict[str, float]:
    """The asked-for metrics: fid; kid_mean, kid_std; is_mean, is_std."""
    unknown = set(metrics) - set(METRICS)
    if unknown:
        from gand.errors import ConfigError

        raise ConfigError(f"--metrics: {', '.join(sorted(unknown))} not known; use any of {', '.join(METRICS)}")
    result: dict[str, float] = {}
    if "fid" in metrics:
        result["fid"] = frechet_distance(real.stats, FeatureStats.of(fake_features))
    if "kid" in metrics:
        result["kid_mean"], result["kid_std"] = kernel_inception_distance(real.features, fake_features)
    if "is" in metrics:
        result["is_mean"], result["is_std"] = inception_score(fake_logits, splits=min(10, len(fake_logits)))
    return result


def reference(
    network: FIDInception,
    weights_id: str,
    data_path: str,
    resolution: int,
    count: int,
    device: torch.device,
    batch_size: int = 50,
    progress: bool = False,
) -> Reference:
    """The dataset's reference features at `resolution` (the first `count` in key order), cached."""
    from gand.data.manifest import read_manifest
    from gand.storage import Store

    manifest, store = read_manifest(data_path)
    name = f"eval/inception-{resolution}px-{count}.npz"
    key = f"{manifest.generation}:{weights_id}"
    cached = _read_cache(store, name, key)
    if cached is not None:
        return cached
    log.info("reference_statistics", dataset=data_path, resolution=resolution, images=count)
    features, _ = inception_outputs(
        network,
        _real_batches(data_path, resolution, batch_size),
        count,
        device,
        task="reference features (once per dataset)" if progress else None,
    )
    buffer = io.BytesIO()
    np.savez(buffer, features=features, key=np.array(key))
    try:
        Store(store.root_url).write_bytes(name, buffer.getvalue())
    except (OSError, StorageError) as err:  # a read-only dataset: evaluate anyway, recompute next time
        log.warning("reference_not_cached", dataset=data_path, error=str(err)[:300])
    return Reference(FeatureStats.of(features), features)


def _read_cache(store, name: str, key: str) -> Reference | None:
    try:
        with np.load(io.BytesIO(store.read_bytes(name)), allow_pickle=False) as saved:
            if str(saved["key"]) != key:
                return None
            features = saved["features"]
    except (FileNotFoundError, ValueError, KeyError, OSError):
        return None
    return Reference(FeatureStats.of(features), features)


def _real_batches(data_path: str, resolution: int, batch_size: int) -> Iterator[torch.Tensor]:
    """The dataset's images once, in manifest order (the reference is the same set every time)."""
    from gand.data.loader import ordered_samples

    pending: list[np.ndarray] = []
    for _, pixels, _ in ordered_samples(data_path, resolution):
        pending.append(pixels)
        if len(pending) == batch_size:
            yield _to_tensor(pending)
            pending = []
    if pending:
        yield _to_tensor(pending)


def _to_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    return from_uint8(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))


def evaluate_checkpoint(
    location: str,
    count: int | None = None,
    metrics: tuple[str, ...] = METRICS,
    weights: str | None = None,
    batch_size: int = 50,
) -> dict:
    """Scores of a run's newest (or a named) checkpoint against its own dataset at its resolution."""
    from gand.data.manifest import read_manifest
    from gand.eval.inception import load_inception
    from gand.eval.samples import load_generator
    from gand.models import Sampling

    generator, cfg, num_classes, name = load_generator(location)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generator.to(device)
    count = count or cfg.eval.samples
    weights = weights or cfg.eval.inception_weights
    network = load_inception(weights, device)
    manifest, _ = read_manifest(cfg.data.path)
    real_count = min(count, manifest.num_samples)
    real = reference(
        network,
        weights_identity(weights),
        cfg.data.path,
        cfg.data.resolution,
        real_count,
        device,
        batch_size,
        progress=True,
    )
    recipe = Sampling.from_config(cfg, num_classes)
    fake_features, fake_logits = inception_outputs(
        network, generated_batches(generator, recipe, batch_size, device), count, device, task="generated images"
    )
    result = scores(real, fake_features, fake_logits, metrics)
    return {"checkpoint": name, "generated": count, "real": real_count, **{k: round(v, 6) for k, v in result.items()}}


class Evaluator:
    """Periodic evaluation during training, on the main rank: the Inception network and the reference statistics
    are loaded at the first evaluation and kept."""

    def __init__(self, cfg, recipe, device: torch.device, batch_size: int = 50):
        self.cfg, self.recipe, self.device, self.batch_size = cfg, recipe, device, batch_size
        self.network: FIDInception | None = None
        self.real: Reference | None = None

    def __call__(self, generator: nn.Module) -> dict[str, float]:
        from gand.data.manifest import read_manifest
        from gand.eval.inception import load_inception

        count, weights = self.cfg.eval.samples, self.cfg.eval.inception_weights
        if self.network is None:
            self.network = load_inception(weights, self.device)
            manifest, _ = read_manifest(self.cfg.data.path)
            self.real = reference(
                self.network,
                weights_identity(weights),
                self.cfg.data.path,
                self.cfg.data.resolution,
                min(count, manifest.num_samples),
                self.device,
                self.batch_size,
            )
        # The same seeded noise every time (scores comparable across the run), without touching training's RNG.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            batches = generated_batches(generator, self.recipe, self.batch_size, self.device)
            features, logits = inception_outputs(self.network, batches, count, self.device)
        assert self.real is not None  # loaded with the network above
        return scores(self.real, features, logits)


def weights_identity(location: str) -> str:
    """Short id of the weights, part of the reference cache key: the file's hash for a local file (it may be
    replaced in place), the URL's for a remote one (a release does not change)."""
    from pathlib import Path

    if "://" not in location and Path(location).is_file():
        return hashlib.sha256(Path(location).read_bytes()).hexdigest()[:12]
    return hashlib.sha256(location.encode()).hexdigest()[:12]


def random_inception(path: str, seed: int = 0) -> str:
    """Save an InceptionV3 with random weights to `path` (tests and offline smoke runs); returns the path."""
    torch.manual_seed(seed)
    network = FIDInception()
    for module in network.modules():  # He initialisation keeps activations alive through ~100 ReLU layers
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(network.state_dict(), path)
    return path
