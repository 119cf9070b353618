"""The packed dataset's manifest.json: which shards exist at which resolution, with counts and checksums.

A packed dataset is exactly what its manifest lists; shards are published before the manifest names them.
"""

from __future__ import annotations

import json
import posixpath

from pydantic import BaseModel, ConfigDict, ValidationError

from gand.errors import ConfigError, DataError
from gand.storage import Store, redact

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "gand.packed/v1"


class ShardInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str  # relative to the dataset root, e.g. "64/shard-000000.tar"
    samples: int
    bytes: int
    sha256: str


class PackedManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str = MANIFEST_FORMAT
    gand_version: str
    created_at: str
    source: str
    resolutions: list[int]
    class_names: list[str] | None  # None: unlabelled; else label i is class_names[i]
    num_samples: int
    shards: dict[str, list[ShardInfo]]  # str(resolution) -> shards, same keys and order at every resolution
    files_seen: int  # every file under the source: num_samples + sum(skipped)
    skipped: dict[str, int]  # reason -> count
    options: dict[str, object]

    def shards_at(self, resolution: int) -> list[ShardInfo]:
        return self.shards[str(resolution)]


def dataset_root(path: str) -> str:
    """`data.path` may name the directory or its manifest.json; return the directory."""
    return posixpath.dirname(path) if path.endswith(".json") else path.rstrip("/")


def read_manifest(path: str) -> tuple[PackedManifest, Store]:
    """Load the manifest at `path` (directory or manifest URL); return it with a Store at the dataset root."""
    root = dataset_root(path)
    store = Store(root)
    name = posixpath.basename(path) if path.endswith(".json") else MANIFEST_NAME
    try:
        raw = store.read_bytes(name)
    except FileNotFoundError:
        raise DataError(
            f"no packed dataset at {redact(path)}: {name} not found; pack images first with "
            f"`gand pack SRC {redact(root)} --resolutions 32,64`"
        ) from None
    try:
        manifest = PackedManifest.model_validate(json.loads(raw))
    except (json.JSONDecodeError, ValidationError) as err:
        raise DataError(f"{redact(store.url(name))} is not a gand manifest: {err}") from None
    return manifest, store


def check_dataset(manifest: PackedManifest, cfg) -> int:
    """That the config can train on this dataset; returns the number of classes the model should use."""
    path = cfg.data.path
    if str(cfg.data.resolution) not in manifest.shards:
        have = ", ".join(str(r) for r in manifest.resolutions)
        raise ConfigError(
            f"data.resolution: {cfg.data.resolution} px is not in the dataset at {redact(path)} (packed at {have}); "
            f"choose one of those or re-pack with --resolutions including {cfg.data.resolution}"
        )
    if manifest.num_samples == 0:
        raise DataError(f"the dataset at {redact(path)} holds no images (skipped: {manifest.skipped})")
    if cfg.loss.class_mode == "none":
        return 0
    if not manifest.class_names or len(manifest.class_names) < 2:
        raise ConfigError(
            f"loss.class_mode: {cfg.loss.class_mode} needs a labelled dataset with at least 2 classes, but the "
            f"dataset at {redact(path)} has {len(manifest.class_names or [])}; pack a folder with one sub-folder "
            "per class (or a labelled list)"
        )
    return len(manifest.class_names)
