"""Checkpoints: save, commit, discover, retain.

Layout under `checkpoint.url` (any fsspec URL):

    ckpt-000000012800/            images seen, zero-padded: names sort by training progress
        generator.safetensors     weights (safetensors: loading runs no code)
        discriminator.safetensors
        trainer.pt                state shared by all ranks: optimizers (DDP), loss scalers, fixed sample noise
        state.json                counters, config snapshot, gand version
        rank-0.pt ...             each rank's own state: RNG, and its optimizer partitions under ZeRO
        MANIFEST.json             written last, by rank 0, listing every file with size and sha256

A checkpoint without a valid MANIFEST.json does not exist. Discovery takes the newest manifest whose files all
verify, falling back to older ones, and every rank agrees on the same one.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

import structlog
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from gand import __version__
from gand.storage import Store, redact

MANIFEST = "MANIFEST.json"
FORMAT = "gand.checkpoint/v1"
PREFIX = "ckpt-"
log = structlog.get_logger("gand.checkpoint")


class Collective(Protocol):
    """What the manager needs from the distributed runtime; the engine provides it."""

    rank: int
    world_size: int

    def gather_objects(self, obj: Any) -> list[Any]: ...

    def barrier(self) -> None: ...


class SingleProcess:
    rank = 0
    world_size = 1

    def gather_objects(self, obj: Any) -> list[Any]:
        return [obj]

    def barrier(self) -> None:
        pass


class CorruptCheckpoint(Exception):
    pass


# What makes a checkpoint unusable (missing or damaged files, refused pickles, wrong layout): try an older one.
UNUSABLE = (CorruptCheckpoint, OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError)


@dataclass
class Checkpoint:
    name: str
    weights: dict[str, dict[str, torch.Tensor]]  # network name -> state dict
    trainer: dict[str, Any]  # shared by all ranks
    state: dict[str, Any]
    rank_state: dict[str, Any] | None  # this rank's own; None when written by a different number of ranks
    world_size: int


def checkpoint_name(images_seen: int) -> str:
    return f"{PREFIX}{images_seen:012d}"


class CheckpointManager:
    def __init__(self, url: str, collective: Collective, keep_last: int = 2, safe_globals: list[type] = ()):
        self.store = Store(url)
        self.collective = collective
        self.keep_last = keep_last
        self.safe_globals = list(safe_globals)  # plain-data classes torch.load(weights_only=True) may build

    # -- save ----------------------------------------------------------------------------------------------
    def save(
        self,
        images_seen: int,
        step: int,
        weights: dict[str, dict[str, torch.Tensor]],
        trainer: dict[str, Any],
        state: dict[str, Any],
        rank_state: dict[str, Any],
    ) -> str:
        """Collective: every rank calls it. Rank 0's weights, trainer and state are saved; each rank's rank_state.

        Returns the committed checkpoint's name."""
        name = checkpoint_name(images_seen)
        if self.store.exists(f"{name}/{MANIFEST}"):
            return name  # already committed at this count (e.g. the final save right after a periodic one)
        files: dict[str, bytes] = {f"rank-{self.collective.rank}.pt": _torch_bytes(rank_state)}
        if self.collective.rank == 0:
            for network, tensors in weights.items():
                files[f"{network}.safetensors"] = save_safetensors(_contiguous(tensors))
            files["trainer.pt"] = _torch_bytes(trainer)
            files["state.json"] = json.dumps(state, indent=2, sort_keys=True).encode()
        records = {}
        for filename, data in files.items():
            self.store.write_bytes(f"{name}/{filename}", data)
            records[filename] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        every_rank = self.collective.gather_objects(records)
        if self.collective.rank == 0:
            manifest = {
                "format": FORMAT,
                "gand_version": __version__,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "images_seen": images_seen,
                "step": step,
                "world_size": self.collective.world_size,
                "files": {k: v for rank_records in every_rank for k, v in sorted(rank_records.items())},
            }
            self.store.write_bytes(f"{name}/{MANIFEST}", json.dumps(manifest, indent=2).encode())
            self._prune(keep=name)
        self.collective.barrier()  # nobody goes on (or exits) before the manifest exists
        log.info("checkpoint_committed", checkpoint=name, url=redact(self.store.url(name)))
        return name

    def _prune(self, keep: str) -> None:
        committed = self.committed()
        doomed = set(committed[: max(0, len(committed) - self.keep_last)])
        # Directories without a manifest older than the newest commit are leftovers of interrupted saves.
        doomed |= {name for name in self._all_dirs() if name not in committed and name < keep}
        for name in sorted(doomed - {keep}):
            self.store.delete_tree(name)
            log.info("checkpoint_deleted", checkpoint=name)

    # -- discover and load ---------------------------------------------------------------------------------
    def committed(self) -> list[str]:
        """Names with a manifest, oldest first (unverified)."""
        return [name for name in self._all_dirs() if self.store.exists(f"{name}/{MANIFEST}")]

    def _all_dirs(self) -> list[str]:
        return [name for name in self.store.list_dir() if name.startswith(PREFIX)]

    def load_latest(self) -> Checkpoint | None:
        """Collective. The newest checkpoint that every rank can read and verify, or None for a fresh run."""
        candidates = self.committed()[::-1] if self.collective.rank == 0 else None
        candidates = self.collective.gather_objects(candidates)[0]  # rank 0's listing decides for everyone
        for name in candidates:
            try:
                loaded: Checkpoint | None = self._read(name)
                problem = None
            except UNUSABLE as err:
                loaded, problem = None, str(err)
            problems = [p for p in self.collective.gather_objects(problem) if p]
            if not problems:
                return loaded
            log.warning("checkpoint_unusable", checkpoint=name, reasons=problems)
        return None

    def load_latest_weights(self) -> tuple[str, dict[str, dict[str, torch.Tensor]], dict[str, Any]] | None:
        """The newest verified checkpoint's consolidated fp32 weights and state.json, without the optimizer
        partitions: what sampling and evaluation need, in one process, with no DeepSpeed installed."""
        for name in self.committed()[::-1]:
            try:
                checkpoint = self._read(name, weights_only=True)
            except UNUSABLE as err:
                log.warning("checkpoint_unusable", checkpoint=name, reasons=[str(err)])
                continue
            return checkpoint.name, checkpoint.weights, checkpoint.state
        return None

    def _read(self, name: str, weights_only: bool = False) -> Checkpoint:
        manifest = json.loads(self.store.read_bytes(f"{name}/{MANIFEST}"))
        if manifest.get("format") != FORMAT:
            raise CorruptCheckpoint(f"{name}: unknown format {manifest.get('format')!r}")
        files: dict[str, dict[str, Any]] = manifest["files"]
        for filename, record in files.items():
            if self.store.size(f"{name}/{filename}") != record["bytes"]:
                raise CorruptCheckpoint(f"{name}/{filename}: size differs from the manifest")

        def read(filename: str) -> bytes:
            data = self.store.read_bytes(f"{name}/{filename}")
            if hashlib.sha256(data).hexdigest() != files[filename]["sha256"]:
                raise CorruptCheckpoint(f"{name}/{filename}: checksum differs from the manifest")
            return data

        weights = {
            filename.removesuffix(".safetensors"): load_safetensors(read(filename))
            for filename in files
            if filename.endswith(".safetensors")
        }
        state = json.loads(read("state.json"))
        world_size = int(manifest.get("world_size", 1))
        if weights_only:
            return Checkpoint(name=name, weights=weights, trainer={}, state=state, rank_state=None,
                              world_size=world_size)  # fmt: skip
        trainer = self._load(read("trainer.pt"))
        rank_file = f"rank-{self.collective.rank}.pt"
        rank_state = self._load(read(rank_file)) if world_size == self.collective.world_size else None
        return Checkpoint(name=name, weights=weights, trainer=trainer, state=state, rank_state=rank_state,
                          world_size=world_size)  # fmt: skip

    def _load(self, data: bytes) -> Any:
        """Tensors, containers and numbers only (plus the plain-data classes named in safe_globals): no code runs."""
        with torch.serialization.safe_globals(self.safe_globals):
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().contiguous().cpu() for key, value in tensors.items()}
