"""A packed dataset on disk: parts (shards + their stats) and manifest generations listing them.

    DEST/<res>/shard-000012.tar          part 12's images at one resolution (one tar per resolution)
    DEST/parts/part-000012.json          part 12's record: shards with bytes and sha256, every source it covered
                                         (accepted: key, hashes; skipped: reason), the class names in force
    DEST/manifests/generation-000007.json  an immutable list of parts 0..P-1 and their shards
    DEST/manifest.json                   the current generation (a copy of the newest generation file)

Publication order is tars -> part record -> generation file -> manifest.json, each write atomic. A dataset is
exactly what its manifest lists; a part record exists only for fully published shards, so a restarted packer
adopts complete parts and redoes the rest.
"""

from __future__ import annotations

import json
import posixpath
import re
from datetime import datetime, timezone
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from gand import __version__
from gand.errors import ConfigError, DataError
from gand.storage import Store, redact

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "gand.packed/v1"
PART_FORMAT = "gand.part/v1"
PARTS_DIR = "parts"
GENERATIONS_DIR = "manifests"
_PART_NAME = re.compile(r"^part-(\d{6,})\.json$")
_GENERATION_NAME = re.compile(r"^generation-(\d{6,})\.json$")


class ShardInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str  # relative to the dataset root, e.g. "64/shard-000000.tar"
    samples: int
    bytes: int
    sha256: str


class PartSample(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str
    source: str
    sha256: str  # of the source file's bytes: exact-duplicate detection
    phash: str  # 64-bit perceptual hash, hex: near-duplicate detection
    label: str | None = None


class PartSkip(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str
    reason: str


class PartRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str = PART_FORMAT
    index: int
    created_at: str
    shards: dict[str, ShardInfo]  # str(resolution) -> shard; empty for a part that only records skips
    samples: list[PartSample]
    skipped: list[PartSkip]
    class_names: list[str] | None


class PackedManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str = MANIFEST_FORMAT
    generation: int
    gand_version: str
    created_at: str
    source: str
    resolutions: list[int]
    class_names: list[str] | None  # None: unlabelled; else label i is class_names[i]
    num_samples: int
    shards: dict[str, list[ShardInfo]]  # str(resolution) -> shards, same keys and order at every resolution
    parts: int  # parts 0..parts-1 are in this generation
    files_seen: int  # every source file considered: num_samples + sum(skipped)
    skipped: dict[str, int]  # reason -> count
    options: dict[str, object]

    def shards_at(self, resolution: int) -> list[ShardInfo]:
        return self.shards[str(resolution)]


def part_path(index: int) -> str:
    return f"{PARTS_DIR}/part-{index:06d}.json"


def generation_path(generation: int) -> str:
    return f"{GENERATIONS_DIR}/generation-{generation:06d}.json"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def build_manifest(
    parts: list[PartRecord], generation: int, source: str, resolutions: list[int], options: dict[str, object]
) -> PackedManifest:
    skipped: dict[str, int] = {}
    for part in parts:
        for skip in part.skipped:
            skipped[skip.reason] = skipped.get(skip.reason, 0) + 1
    with_samples = [part for part in parts if part.samples]
    num_samples = sum(len(part.samples) for part in parts)
    return PackedManifest(
        generation=generation,
        gand_version=__version__,
        created_at=now_iso(),
        source=source,
        resolutions=sorted(resolutions),
        class_names=parts[-1].class_names if parts else None,
        num_samples=num_samples,
        shards={str(res): [part.shards[str(res)] for part in with_samples] for res in sorted(resolutions)},
        parts=len(parts),
        files_seen=num_samples + sum(skipped.values()),
        skipped=dict(sorted(skipped.items())),
        options=options,
    )


def publish_generation(store: Store, manifest: PackedManifest) -> None:
    data = manifest.model_dump_json(indent=2).encode()
    store.write_bytes(generation_path(manifest.generation), data)  # immutable: what a training epoch used
    store.write_bytes(MANIFEST_NAME, data)  # the pointer readers follow


RecordT = TypeVar("RecordT", bound=BaseModel)


def read_record(store: Store, relpath: str, model: type[RecordT], remedy: str) -> RecordT:
    """A JSON record of the dataset (a manifest, a part record) parsed as `model`; a damaged one (cut short, edited,
    from another version) is a DataError naming the file and `remedy`. FileNotFoundError passes through."""
    raw = store.read_bytes(relpath)
    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        first = err.errors()[0]
        problem = (
            first["msg"]
            if first["type"] == "json_invalid"
            else (f"field {'.'.join(map(str, first['loc'])) or '(top level)'}: {first['msg']}")
        )
        raise DataError(f"{redact(store.url(relpath))} is damaged ({problem}); {remedy}") from None


def read_parts(store: Store) -> list[PartRecord]:
    """Complete parts, 0..P-1 (a part record is written only after all of its shards are published)."""
    indices = sorted(int(m.group(1)) for name in store.list_dir(PARTS_DIR) if (m := _PART_NAME.match(name)))
    parts = []
    for expected, index in enumerate(indices):
        if index != expected:
            break  # parts are published one after another; a gap would mean someone else wrote here
        remedy = "the images of that part cannot be accounted for: pack again with --overwrite to start over"
        parts.append(read_record(store, part_path(index), PartRecord, remedy))
    return parts


def latest_generation(store: Store) -> int:
    """The newest generation number published under `store` (0 when none)."""
    numbers = [int(m.group(1)) for name in store.list_dir(GENERATIONS_DIR) if (m := _GENERATION_NAME.match(name))]
    return max(numbers, default=0)


def dataset_root(path: str) -> str:
    """`data.path` may name the directory or its manifest.json; return the directory."""
    return posixpath.dirname(path) if path.endswith(".json") else path.rstrip("/")


def read_manifest(path: str, generation: int | None = None) -> tuple[PackedManifest, Store]:
    """The current manifest (or a given generation) of the dataset at `path`, with a Store at its root."""
    root = dataset_root(path)
    store = Store(root)
    name = (
        (posixpath.basename(path) if path.endswith(".json") else MANIFEST_NAME)
        if generation is None
        else (generation_path(generation))
    )
    try:
        raw = store.read_bytes(name)
    except FileNotFoundError:
        if generation is not None:
            raise DataError(f"generation {generation} of the dataset at {redact(root)} is gone ({name})") from None
        raise DataError(
            f"no packed dataset at {redact(path)}: {name} not found; pack images first with "
            f"`gand pack SRC {redact(root)} --resolutions 32,64`"
        ) from None
    try:
        manifest = PackedManifest.model_validate(json.loads(raw))
    except json.JSONDecodeError as err:
        raise DataError(f"{redact(store.url(name))} is not JSON ({err.msg}); is it a gand dataset?") from None
    except ValidationError as err:
        fields = ", ".join(sorted({".".join(map(str, e["loc"])) or "(top level)" for e in err.errors()}))
        raise DataError(
            f"{redact(store.url(name))} is not a manifest this gand can read (problem fields: {fields}); "
            "re-pack the images with this version of gand"
        ) from None
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
