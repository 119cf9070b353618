"""Checkpoints: snapshot, upload, commit, discover, retain.

Layout under `checkpoint.url` (any fsspec URL):

    ckpt-000000012800/            images seen, zero-padded: names sort by training progress
        generator.safetensors     weights (safetensors: loading runs no code)
        discriminator.safetensors
        trainer.pt                state shared by all ranks: optimizers (DDP), loss scalers, fixed sample noise
        state.json                counters, data position, config snapshot, gand version
        history.pt                logged losses and health statistics over the run (for curves and `gand plot`)
        rank-0.pt ...             each rank's own state: RNG, and its optimizer partitions under ZeRO
        rank-1.done ...           ranks other than 0: "my files are uploaded and verified" (with the save's token)
        MANIFEST.json             written last, by rank 0, listing every file with size and sha256

A checkpoint without a valid MANIFEST.json does not exist. Discovery takes the newest manifest whose files all
verify, falling back to older ones, and every rank agrees on the same one.

Saving has two parts. The synchronous part (the training stall) turns the state into bytes in host memory and
agrees on the save with the other ranks. The upload runs in the background: each rank writes and verifies its
files with retries, ranks other than 0 then write their `.done` marker, and rank 0 writes the manifest once every
marker of this save is there. The background thread never joins a collective, so it cannot deadlock training.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Protocol

import structlog
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from gand import __version__
from gand.checkpoint.lease import LeaseLost, RunLease
from gand.checkpoint.uploader import RetryPolicy, Uploader, UploadResult, with_retries
from gand.errors import StorageError
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
# Other storage errors are not about the checkpoint: they are retried, and then stop the run (never a silent
# fall-back to an older checkpoint because the network hiccuped).
UNUSABLE = (CorruptCheckpoint, FileNotFoundError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError)


@dataclass
class Checkpoint:
    name: str
    weights: dict[str, dict[str, torch.Tensor]]  # network name -> state dict
    trainer: dict[str, Any]  # shared by all ranks
    state: dict[str, Any]
    rank_state: dict[str, Any] | None  # this rank's own; None when written by a different number of ranks
    world_size: int
    sequence: int = 0
    history: dict[str, Any] | None = None  # written by gand >= 0.1 with loss curves; None in older checkpoints


def checkpoint_name(images_seen: int) -> str:
    return f"{PREFIX}{images_seen:012d}"


@dataclass
class Snapshot:
    """One save, in host memory: what the background upload needs, and nothing that training will change."""

    name: str
    images_seen: int
    step: int
    sequence: int  # how many checkpoints this run has saved, counting this one: "keep every M-th" reads it
    token: str  # the same on every rank: ties the ranks' `.done` markers to this save and not an older attempt
    files: dict[str, bytes]  # this rank's files
    stall_seconds: float = 0.0
    scores: dict[str, float] = field(default_factory=dict)  # evaluation at this step (FID, ...), for the manifest


class CheckpointManager:
    def __init__(
        self,
        url: str,
        collective: Collective,
        keep_last: int = 2,
        keep_every: int = 0,
        safe_globals: Sequence[Any] = (),
        retry: RetryPolicy | None = None,
        background: bool = False,
    ):
        self.store = Store(url)
        self.url = url
        self.collective = collective
        self.keep_last = keep_last
        self.keep_every = keep_every  # also keep every M-th checkpoint for good (0: none)
        self.safe_globals: list[Any] = list(safe_globals)  # plain-data classes torch.load(weights_only=True) may build
        self.retry = retry or RetryPolicy()
        self.uploader = Uploader() if background else None
        self.resumed_from: str | None = None  # never deleted by retention
        self.pinned: set[str] = set()  # kept by retention too: the collapse guard's best checkpoint
        self.sequence = 0
        self._last_snapshot: str | None = None
        self._saved_images: dict[str, int] = {}  # checkpoint name -> images seen, until its upload result is handed out
        self._results: list[UploadResult] = []  # synchronous mode's results, handed out by poll()
        self._commits_seen: list[str] = []  # committed checkpoints this process listed, wrote or saw appear
        self.unusable: dict[str, list[str]] = {}  # committed checkpoints discovery could not use, and why
        self.lease: RunLease | None = None  # rank 0's lease on the run: checked before every manifest

    @property
    def known_commit(self) -> str | None:
        """The newest checkpoint of this run that this process knows to be committed (resumed from, listed, written
        or confirmed), without asking the store: what a stop can promise to resume from when storage is down."""
        names = [*self._commits_seen, *([self.resumed_from] if self.resumed_from else [])]
        return max(names) if names else None  # names sort by images seen

    def wait_for_commit(self, name: str, timeout_seconds: float) -> bool:
        """Whether `name`'s manifest is (or within timeout_seconds appears) in the store: on rank 0, once its own
        upload finished; elsewhere, a poll for rank 0's manifest."""
        deadline = time.monotonic() + timeout_seconds
        while name not in self._commits_seen:
            try:
                if self.store.exists(f"{name}/{MANIFEST}"):
                    self._commits_seen.append(name)
                    break
            except (OSError, StorageError):
                pass  # not known to be committed; keep asking until the deadline
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        return True

    # -- save ----------------------------------------------------------------------------------------------
    def save(
        self,
        images_seen: int,
        step: int,
        weights: dict[str, dict[str, torch.Tensor]],
        trainer: dict[str, Any],
        state: dict[str, Any],
        rank_state: dict[str, Any],
        history: dict[str, Any] | None = None,
        scores: dict[str, float] | None = None,
    ) -> Snapshot | None:
        """Collective: every rank calls it with its own rank_state; rank 0's weights, trainer and state are saved.

        Returns once the state is in host memory (with background uploads) or committed (without); None when this
        count was already saved by this process (e.g. the final save right after a periodic one)."""
        name = checkpoint_name(images_seen)
        if name == self._last_snapshot:
            return None
        started = time.perf_counter()
        files = {f"rank-{self.collective.rank}.pt": _torch_bytes(rank_state)}
        if self.collective.rank == 0:
            for network, tensors in weights.items():
                files[f"{network}.safetensors"] = save_safetensors(_contiguous(tensors))
            files["trainer.pt"] = _torch_bytes(trainer)
            files["state.json"] = json.dumps(state, indent=2, sort_keys=True).encode()
            if history is not None:
                files["history.pt"] = _torch_bytes(history)
        token = self.collective.gather_objects(secrets.token_hex(8))[0]  # rank 0's, on every rank
        self.sequence += 1
        self._last_snapshot = name
        self._saved_images[name] = images_seen
        snapshot = Snapshot(name, images_seen, step, self.sequence, token, files, scores=dict(scores or {}))
        snapshot.stall_seconds = time.perf_counter() - started
        if self.uploader is not None:
            self.uploader.submit(name, lambda: self._upload(snapshot))
        else:
            began = time.monotonic()
            self._results.append(UploadResult(name, self._upload(snapshot), time.monotonic() - began))
            self.collective.barrier()  # nobody goes on (or exits) before the manifest exists
            snapshot.stall_seconds = time.perf_counter() - started  # here the upload stalls training too
        return snapshot

    def poll(self) -> list[UploadResult]:
        """Uploads finished since the last call (on rank 0: commits; elsewhere: this rank's files)."""
        if self.uploader is None:
            results, self._results = self._results, []
        else:
            results = self.uploader.poll()
        return [replace(result, images_seen=self._saved_images.pop(result.name, None)) for result in results]

    def wait(self, timeout_seconds: float | None = None) -> bool:
        """Until every snapshot handed over so far is uploaded (or has failed); False on timeout."""
        return self.uploader.wait(timeout_seconds) if self.uploader is not None else True

    @property
    def uploads_pending(self) -> int:
        return self.uploader.busy if self.uploader is not None else 0

    @property
    def failed_attempts(self) -> int:
        return self.uploader.failed_attempts if self.uploader is not None else 0

    def _upload(self, snapshot: Snapshot) -> bool:
        """Upload one snapshot; on failure rank 0 removes what was written of it (never a committed checkpoint), so
        that nothing half-written is left for a later run to trip on."""
        try:
            return self._upload_files(snapshot)
        except LeaseLost:
            raise  # the run is another trainer's now: a folder of this name may be its upload, not ours
        except Exception:
            if self.collective.rank == 0:
                self._remove_uncommitted(snapshot.name)
            raise

    def _remove_uncommitted(self, name: str) -> None:
        try:
            if not self.store.exists(f"{name}/{MANIFEST}"):
                self.store.delete_tree(name)
                log.info("checkpoint_removed_after_failure", checkpoint=name)
        except (OSError, StorageError) as err:
            log.warning("checkpoint_cleanup_failed", checkpoint=name, error=str(err)[:300])

    def _upload_files(self, snapshot: Snapshot) -> bool:
        """Write and verify this rank's files, then the marker (ranks > 0) or the manifest (rank 0).

        Checksums are computed here, off the training thread; ranks > 0 hand theirs to rank 0 in the marker."""
        deadline = time.monotonic() + self.retry.timeout_seconds
        if self.lease is not None:  # before the first file too: a trainer that lost the run writes nothing more
            self._retried(self.lease.confirm, "the run's lease", deadline)
        records = {filename: _record(data) for filename, data in sorted(snapshot.files.items())}
        for filename, data in snapshot.files.items():
            self._retried(
                lambda f=filename, d=data: self._write_verified(f"{snapshot.name}/{f}", d),
                f"{snapshot.name}/{filename}",
                deadline,
            )
        rank = self.collective.rank
        if rank != 0:
            marker = f"{snapshot.name}/rank-{rank}.done"
            content = json.dumps({"token": snapshot.token, "files": records}).encode()
            self._retried(lambda: self.store.write_bytes(marker, content), marker, deadline)
            return True
        for other in range(1, self.collective.world_size):
            records.update(self._wait_for_marker(snapshot, other, deadline))
        manifest = {
            "format": FORMAT,
            "gand_version": __version__,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "images_seen": snapshot.images_seen,
            "step": snapshot.step,
            "sequence": snapshot.sequence,
            "world_size": self.collective.world_size,
            "files": dict(sorted(records.items())),
        }
        if snapshot.scores:
            manifest["eval"] = snapshot.scores
        if self.lease is not None:
            manifest["writer"] = self.lease.owner
        path = f"{snapshot.name}/{MANIFEST}"
        content = json.dumps(manifest, indent=2).encode()

        def publish() -> None:
            # Each attempt first checks that the run is still ours (LeaseLost is not retried: nothing published),
            # so a manifest retried for minutes cannot land after another trainer took over.
            if self.lease is not None:
                self.lease.confirm()
            self.store.write_bytes(path, content)

        self._retried(publish, path, deadline)
        self._commits_seen.append(snapshot.name)
        log.info("checkpoint_committed", checkpoint=snapshot.name, url=redact(self.store.url(snapshot.name)))
        try:
            if self.lease is not None:
                self.lease.confirm()  # another trainer's checkpoints, half-written ones too, are not ours to delete
            self._prune(newest=snapshot.name)
        except Exception as err:  # a failed clean-up loses nothing; the next commit tries again
            log.warning("checkpoint_prune_failed", error=str(err)[:300])
        return True

    def _retried(self, action, what: str, deadline: float):
        count = self.uploader.count_failure if self.uploader is not None else lambda: None
        return with_retries(action, what, self.retry, deadline, on_failure=count)

    def _write_verified(self, relpath: str, data: bytes) -> None:
        self.store.write_bytes(relpath, data)
        written = self.store.size(relpath)
        if written != len(data):
            raise OSError(f"{relpath}: {written} bytes stored, {len(data)} written")

    def _wait_for_marker(self, snapshot: Snapshot, rank: int, deadline: float) -> dict[str, dict[str, Any]]:
        """That rank's file records, once its marker for this save (this token, not an older attempt's) is there."""
        marker = f"{snapshot.name}/rank-{rank}.done"
        while True:
            try:
                content = json.loads(self._retried(lambda: self.store.read_bytes(marker), marker, deadline))
                if content.get("token") == snapshot.token:
                    return content["files"]
            except (FileNotFoundError, ValueError):  # not there yet, or unreadable: wait for this save's
                pass
            if time.monotonic() > deadline:
                raise CorruptCheckpoint(f"{snapshot.name}: rank {rank} did not finish its upload in time")
            time.sleep(0.2)

    def _prune(self, newest: str) -> None:
        """Rank 0, right after committing `newest`: keep the last K, every M-th, the best FID, and the one resumed
        from."""
        summaries = {name: self._summary(name) for name in self.committed()}
        sequences = {name: sequence for name, (sequence, _) in summaries.items()}
        ordered = sorted(sequences)
        keep = set(ordered[-self.keep_last :]) | {newest}
        scored = {name: fid for name, (_, fid) in summaries.items() if fid is not None}
        if scored:
            keep.add(min(scored, key=scored.get))
        if self.resumed_from:
            keep.add(self.resumed_from)
        keep |= self.pinned & set(ordered)
        if self.keep_every:
            keep |= {name for name, sequence in sequences.items() if sequence and sequence % self.keep_every == 0}
        doomed = set(ordered) - keep
        # Directories without a manifest older than the newest commit are leftovers of interrupted saves.
        doomed |= {name for name in self._all_dirs() if name not in sequences and name < newest}
        for name in sorted(doomed):
            self.store.delete_tree(name)
            log.info("checkpoint_deleted", checkpoint=name)

    def _summary(self, name: str) -> tuple[int, float | None]:
        """(sequence number, FID if it was evaluated) from a committed checkpoint's manifest."""
        try:
            manifest = json.loads(self.store.read_bytes(f"{name}/{MANIFEST}"))
        except (FileNotFoundError, ValueError):
            return 0, None
        fid = manifest.get("eval", {}).get("fid")
        return int(manifest.get("sequence", 0)), (float(fid) if isinstance(fid, (int, float)) else None)

    def discard_all(self) -> list[str]:
        """`--fresh`: delete this run's checkpoints (rank 0 only; callers hold the other ranks at a barrier)."""
        names = self._all_dirs()
        for name in names:
            self.store.delete_tree(name)
            log.info("checkpoint_deleted", checkpoint=name, reason="--fresh")
        return names

    # -- discover and load ---------------------------------------------------------------------------------
    def committed(self) -> list[str]:
        """Names with a manifest, oldest first (unverified)."""
        return [name for name in self._all_dirs() if self.store.exists(f"{name}/{MANIFEST}")]

    def all_dirs(self) -> list[str]:
        """Every checkpoint folder, committed or not."""
        return self._all_dirs()

    def _all_dirs(self) -> list[str]:
        return [name for name in self.store.list_dir() if name.startswith(PREFIX)]

    def load_latest(self, timeout_seconds: float | None = None) -> Checkpoint | None:
        """Collective. The newest checkpoint that every rank can read and verify, or None for a fresh run.

        Storage errors are retried for `timeout_seconds` (default: the retry policy's) per request, then raised as
        StorageError."""
        candidates = self._listing(timeout_seconds) if self.collective.rank == 0 else None
        candidates = self.collective.gather_objects(candidates)[0]  # rank 0's listing decides for everyone
        self._commits_seen += candidates[:1]  # listed with a manifest: a commit exists, verified or not
        for name in candidates:
            loaded, problems = self._read_everywhere(name)
            if not problems:
                self.resumed_from = name
                self.sequence = loaded.sequence
                self._last_snapshot = name
                return loaded
            log.warning("checkpoint_unusable", checkpoint=name, reasons=problems)
            self.unusable[name] = problems
        return None

    def load_named(self, name: str) -> Checkpoint:
        """Collective. One committed checkpoint, read and verified on every rank: the collapse guard's way back to the
        best one. Retention keeps it from then on. Raises CorruptCheckpoint naming what any rank found wrong."""
        loaded, problems = self._read_everywhere(name)
        if problems or loaded is None:
            raise CorruptCheckpoint(f"{name} cannot be loaded: {'; '.join(problems)}")
        self.resumed_from = name
        return loaded

    def _read_everywhere(self, name: str) -> tuple[Checkpoint | None, list[str]]:
        """Collective. `name` read and verified on this rank, and what every rank found wrong with it (none: usable)."""
        try:
            loaded: Checkpoint | None = self._read(name)
            problem = None
        except UNUSABLE as err:
            loaded, problem = None, str(err)
        return loaded, [p for p in self.collective.gather_objects(problem) if p]

    def _listing(self, timeout_seconds: float | None = None) -> list[str]:
        deadline = time.monotonic() + (self.retry.timeout_seconds if timeout_seconds is None else timeout_seconds)
        return self._retried(lambda: self.committed()[::-1], "listing checkpoints", deadline)

    def load_weights(self, name: str) -> tuple[str, dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
        """One named checkpoint's consolidated weights and state.json (verified like discovery does)."""
        checkpoint = self._read(name, weights_only=True)
        return checkpoint.name, checkpoint.weights, checkpoint.state

    def load_latest_weights(self) -> tuple[str, dict[str, dict[str, torch.Tensor]], dict[str, Any]] | None:
        """The newest verified checkpoint's consolidated fp32 weights and state.json, without the optimizer
        partitions: what sampling and evaluation need, in one process, with no DeepSpeed installed."""
        for name in self._listing():
            try:
                checkpoint = self._read(name, weights_only=True)
            except UNUSABLE as err:
                log.warning("checkpoint_unusable", checkpoint=name, reasons=[str(err)])
                continue
            return checkpoint.name, checkpoint.weights, checkpoint.state
        return None

    def _read(self, name: str, weights_only: bool = False) -> Checkpoint:
        deadline = time.monotonic() + self.retry.timeout_seconds

        def fetch(filename: str) -> bytes:  # transient errors are retried; a missing file is an answer
            return self._retried(lambda: self.store.read_bytes(f"{name}/{filename}"), f"{name}/{filename}", deadline)

        manifest = json.loads(fetch(MANIFEST))
        if manifest.get("format") != FORMAT:
            raise CorruptCheckpoint(f"{name}: unknown format {manifest.get('format')!r}")
        files: dict[str, dict[str, Any]] = manifest["files"]
        for filename, record in files.items():
            size = self._retried(lambda f=filename: self.store.size(f"{name}/{f}"), f"{name}/{filename}", deadline)
            if size != record["bytes"]:
                raise CorruptCheckpoint(f"{name}/{filename}: size differs from the manifest")

        def read(filename: str) -> bytes:
            data = fetch(filename)
            if hashlib.sha256(data).hexdigest() != files[filename]["sha256"]:
                raise CorruptCheckpoint(f"{name}/{filename}: checksum differs from the manifest")
            return data

        weights = {
            filename.removesuffix(".safetensors"): load_safetensors(read(filename))
            for filename in files
            if filename.endswith(".safetensors")
        }
        state = json.loads(read("state.json"))
        common = {
            "name": name,
            "weights": weights,
            "state": state,
            "world_size": int(manifest.get("world_size", 1)),
            "sequence": int(manifest.get("sequence", 0)),
        }
        if weights_only:
            return Checkpoint(trainer={}, rank_state=None, **common)
        trainer = self._load(read("trainer.pt"))
        rank_file = f"rank-{self.collective.rank}.pt"
        same_ranks = common["world_size"] == self.collective.world_size
        rank_state = self._load(read(rank_file)) if same_ranks else None
        history = self._load(read("history.pt")) if "history.pt" in files else None
        return Checkpoint(trainer=trainer, rank_state=rank_state, history=history, **common)

    def load_history(self, name: str | None = None) -> tuple[str, dict[str, Any] | None] | None:
        """A committed checkpoint's history (the newest verified one unless named), without reading weights or
        optimizer state; (name, None) for a checkpoint written before histories were kept."""
        for candidate in [name] if name else self._listing():
            try:
                data = self._read_one(candidate, "history.pt")
                return candidate, None if data is None else self._load(data)
            except UNUSABLE as err:
                if name:
                    raise
                log.warning("checkpoint_unusable", checkpoint=candidate, reasons=[str(err)])
        return None

    def load_state(self, name: str) -> dict[str, Any]:
        """A committed checkpoint's state.json (`gand.checkpoint.contents.SavedRun`), checked against its manifest."""
        data = self._read_one(name, "state.json")
        if data is None:
            raise CorruptCheckpoint(f"{name}: state.json is not in its manifest")
        return json.loads(data)

    def _read_one(self, name: str, filename: str) -> bytes | None:
        """One file of a committed checkpoint, its checksum checked against the manifest; None when the manifest
        does not list it (written by a version that did not keep it)."""
        deadline = time.monotonic() + self.retry.timeout_seconds

        def fetch(relpath: str) -> bytes:
            return self._retried(lambda: self.store.read_bytes(relpath), relpath, deadline)

        record = json.loads(fetch(f"{name}/{MANIFEST}"))["files"].get(filename)
        if record is None:
            return None
        data = fetch(f"{name}/{filename}")
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            raise CorruptCheckpoint(f"{name}/{filename}: checksum differs from the manifest")
        return data

    def _load(self, data: bytes) -> Any:
        """Tensors, containers and numbers only (plus the plain-data classes named in safe_globals): no code runs."""
        with torch.serialization.safe_globals(self.safe_globals):
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _record(data: bytes) -> dict[str, Any]:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().contiguous().cpu() for key, value in tensors.items()}
