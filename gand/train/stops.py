"""How a training run starts and stops with respect to its checkpoints: the run's lease, never starting over when
there is evidence of earlier training, and the exit code of every stop (issues 18 and 19). Exit 75 promises a
committed checkpoint to resume from: a stop whose own save did not commit, or that knows of no commit, exits 1.
The training loop calls these; they own no state of their own."""

from __future__ import annotations

import time
from typing import NoReturn

import structlog

from gand.checkpoint.lease import LeaseHeld, LeaseLost, RunLease
from gand.checkpoint.manager import CheckpointManager, checkpoint_name
from gand.checkpoint.uploader import UploadResult
from gand.config import GandConfig
from gand.errors import ConfigError, DataError, GandError, PeerLost, Preempted, StorageError
from gand.observability.metrics import TrainingMetrics
from gand.storage import redact
from gand.train.control import RunControl
from gand.train.engine import Engine
from gand.train.state import TrainState


def commit_to_resume_from(checkpoints: CheckpointManager) -> str | None:
    """The newest commit of the run this process knows of, else the newest one the store lists (one request)."""
    known = checkpoints.known_commit
    if known is None:
        listed = listed_commits(checkpoints)
        known = listed[-1] if listed else None
    return known


def exit_without_the_lease(checkpoints: CheckpointManager, why: str, log) -> NoReturn:
    """Another trainer took over this run's lease: nothing more is published. Exit 75 when a commit of the run
    exists to resume from (the new holder's or ours), else 1."""
    known = commit_to_resume_from(checkpoints)
    exit_code = LeaseLost.exit_code if known else StorageError.exit_code
    holder = checkpoints.lease.describe_holder() if checkpoints.lease is not None else "unknown"
    log.error("stopped_lease_lost", holder=holder, last_commit=known, exit_code=exit_code)
    message = f"another trainer took over the checkpoints at {redact(checkpoints.url)} ({holder}): {why}; this one "
    if known is None:
        raise StorageError(message + "stops, and no commit of the run was found")
    raise LeaseLost(message + f"stops without publishing anything more (the run resumes from {known} or newer)")


def report_uploads(checkpoints: CheckpointManager, metrics: TrainingMetrics, log) -> list[UploadResult]:
    """Finished uploads into the log and the metrics; training goes on either way."""
    results = checkpoints.poll()
    for result in results:
        if result.permanent:  # no space, no permission: waiting cannot help, and every later save would fail too
            log.error("checkpoint_upload_failed", checkpoint=result.name, error=result.error, permanent=True)
            metrics.close()
            raise StorageError(
                f"checkpoint {result.name} cannot be written to {redact(checkpoints.url)}: "
                f"{result.error}. Fix that, then run the same command: it resumes from the last "
                "commit"
            )
        if result.committed:
            metrics.record_commit(result)
        else:
            log.error(
                "checkpoint_upload_failed",
                checkpoint=result.name,
                error=result.error,
                effect="training goes on; the next checkpoint tries again",
            )
    abandoned = sum(not result.committed for result in results)
    metrics.record_uploads(checkpoints.uploads_pending, checkpoints.failed_attempts, abandoned)
    return results


def stop_without_saving(
    checkpoints: CheckpointManager, control: RunControl, metrics: TrainingMetrics, state: TrainState, log
) -> NoReturn:
    """A stop that cannot save (blocked mid-step, or ranks that may be inside a collective): wait for uploads
    already under way within the grace period, then exit 75 when the run has a commit to resume from, else 1."""
    checkpoints.wait(control.grace_left_seconds())
    report_uploads(checkpoints, metrics, log)
    metrics.close()
    committed = commit_to_resume_from(checkpoints)
    if committed:
        log.warning(
            "stopped_by_signal",
            signal=control.stop_signal,
            step=state.step,
            checkpoint=committed,
            saved=False,
            exit_code=Preempted.exit_code,
        )
        raise Preempted(
            f"stopped by {control.stop_signal} while waiting for data at step {state.step}; the same "
            f"command resumes from {committed}"
        )
    raise DataError(
        f"stopped by {control.stop_signal} while waiting for data at step {state.step}, before any "
        "checkpoint was committed: nothing to resume from"
    )


def stop_after_signal(
    checkpoints: CheckpointManager, control: RunControl, metrics: TrainingMetrics, state: TrainState, log
) -> NoReturn:
    """The save of this step is handed over: wait for its commit within the grace period, then exit 75; 1 when it
    did not commit in time (exit 75 promises a committed checkpoint of this step)."""
    uploaded = checkpoints.wait(control.grace_left_seconds())
    results = report_uploads(checkpoints, metrics, log)
    name = checkpoint_name(state.images_seen)
    committed = uploaded and all(r.committed for r in results if r.name == name)
    # Ranks > 0 upload their part; the checkpoint is committed when rank 0's manifest is there.
    committed = committed and checkpoints.wait_for_commit(name, control.grace_left_seconds())
    exit_code = Preempted.exit_code if committed else StorageError.exit_code
    log.warning(
        "stopped_by_signal",
        signal=control.stop_signal,
        step=state.step,
        checkpoint=name,
        uploaded=committed,
        exit_code=exit_code,
    )
    metrics.close()
    if not committed:
        raise StorageError(
            f"stopped by {control.stop_signal} at step {state.step}, but {name} did not commit within "
            f"checkpoint.grace_seconds; the same command resumes from the last commit"
        )
    raise Preempted(
        f"stopped by {control.stop_signal} at step {state.step}: saved {name}; run the same command to resume"
    )


def take_lease(cfg: GandConfig, engine: Engine, checkpoints: CheckpointManager, control: RunControl) -> None:
    """Collective. Rank 0 takes the run's lease (waiting for another trainer's, if live); every rank learns the
    outcome, so that all of them stop when it fails (exit 2 when held, 1 when storage failed)."""
    section = cfg.checkpoint
    if section.lease_seconds is None:
        return
    lease, failure = None, None
    if engine.is_main:
        lease = control.lease = RunLease(checkpoints.store, cfg.run.name, section.lease_seconds)
        try:
            lease.acquire(section.lease_wait_seconds, checkpoints.retry, section.startup_timeout_seconds)
            checkpoints.lease = lease  # released in train()'s clean-up whatever happens next
        except GandError as err:
            failure = err
    outcome = engine.from_rank_zero(failure.exit_code if failure is not None else 0)
    if outcome != 0:
        if failure is not None:
            raise failure
        if outcome == LeaseHeld.exit_code:
            raise LeaseHeld("rank 0 found the run's lease held by another trainer (its log says which)")
        raise StorageError("rank 0 could not take the run's lease (its log says why)")
    if lease is not None:
        lease.start_renewing()


def refuse_to_start_over(checkpoints: CheckpointManager, progress_note: dict | None, engine: Engine) -> None:
    """Collective. No checkpoint can be resumed: start from step 0 only when nothing says this run ever committed
    one. Otherwise (committed checkpoints that failed verification, or a progress note naming a commit) exit 2 and
    say what was found: starting over would write new checkpoints over them and let retention delete the rest."""
    evidence = evidence_of_training(checkpoints, progress_note) if engine.is_main else ""
    if engine.from_rank_zero(1 if evidence else 0):
        raise ConfigError(
            evidence or "rank 0 found an earlier run's checkpoints but none it can resume (its log says which)"
        )
    if engine.is_main and progress_note and progress_note.get("step"):
        structlog.get_logger("gand.train").warning(
            "starting_over",
            previous_step=progress_note["step"],
            reason="the previous process never committed a checkpoint",
            effect="training starts from step 0",
        )


def evidence_of_training(checkpoints: CheckpointManager, progress_note: dict | None) -> str:
    found = []
    if checkpoints.unusable:
        name, reasons = next(reversed(checkpoints.unusable.items()))
        found.append(
            f"{len(checkpoints.unusable)} committed checkpoint(s) that fail verification (newest: {name}: "
            f"{reasons[0][:200]})"
        )
    if progress_note:
        last = progress_note.get("last_commit")
        old_note = "last_commit" not in progress_note  # written before notes named commits: trust the folders
        try:
            folders = checkpoints.all_dirs() if old_note else []
        except (OSError, StorageError):
            folders = []  # listing worked moments ago (discovery); a failure now is no evidence either way
        if last or folders:
            found.append(
                f"PROGRESS.json says the run reached step {progress_note.get('step')}"
                + (f" and committed {last}" if last else f" and {len(folders)} checkpoint folder(s) are there")
            )
    if not found:
        return ""
    return (
        f"{redact(checkpoints.url)} shows earlier training ({'; '.join(found)}), but no checkpoint can be resumed. "
        "Nothing was changed. Restore the checkpoints or fix the storage, or run the same command with --fresh to "
        "delete them and start from step 0"
    )


def listed_commits(checkpoints: CheckpointManager) -> list[str]:
    """The store's committed checkpoints, asked once (no retries: a stop is under way); [] when storage fails."""
    try:
        return checkpoints.committed()
    except (OSError, StorageError):
        return []


def stop_before_training(checkpoints: CheckpointManager, control: RunControl, log) -> NoReturn:
    """A stop while start-up waited on storage (listing or reading checkpoints): nothing trained, nothing to save;
    exit 75 only when a commit is known to exist for this run."""
    known = checkpoints.known_commit
    exit_code = Preempted.exit_code if known else StorageError.exit_code
    log.warning(
        "stopped_by_signal",
        signal=control.stop_signal,
        step=None,
        waiting_for="storage at start-up",
        last_commit=known,
        exit_code=exit_code,
    )
    on_lease = control.lease is not None and control.lease.waiting_for_holder
    waiting_for = "another trainer's lease on" if on_lease else "storage at"
    message = f"stopped by {control.stop_signal} while waiting for {waiting_for} {redact(checkpoints.url)} at start-up"
    if known is None:
        raise StorageError(message + "; no checkpoint of this run is known to be committed")
    raise Preempted(message + f"; the same command resumes from {known}")


def wait_for_uploads(checkpoints: CheckpointManager, control: RunControl, timeout_seconds: float) -> bool:
    """The final uploads, up to timeout_seconds; after a stop signal only what is left of the grace period."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        if control.stop_signal is not None:
            return checkpoints.wait(control.grace_left_seconds())
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if checkpoints.wait(min(0.5, left)):
            return True


def stop_after_peer_loss(checkpoints: CheckpointManager, error: RuntimeError, log) -> NoReturn:
    """Another node vanished (a spot preemption past its grace, a crash) in the middle of a collective. Its
    checkpoint cannot commit without the lost ranks' parts, so there is nothing to wait for: exit 75 (Kubernetes
    restarts the Job without counting a failure) when this run has a commit to resume from, else 1."""
    first_line = str(error).splitlines()[0][:300]
    known = commit_to_resume_from(checkpoints)
    exit_code = PeerLost.exit_code if known else StorageError.exit_code
    log.warning("peer_lost", error=first_line, last_commit=known, exit_code=exit_code)
    message = f"another rank stopped in the middle of a collective ({first_line}); "
    if known is None:
        raise StorageError(message + "no committed checkpoint of this run was found") from None
    raise PeerLost(message + f"run the same command to resume from {known}") from None


def finish_uploads(
    checkpoints: CheckpointManager,
    control: RunControl,
    metrics: TrainingMetrics,
    state: TrainState,
    cfg: GandConfig,
    log,
) -> None:
    """The end of a run that reached train.max_steps: its final checkpoint commits, or StorageError (exit 1: the
    same command resumes from the last commit)."""
    uploaded = wait_for_uploads(checkpoints, control, cfg.checkpoint.upload_timeout_seconds)
    final = [r for r in report_uploads(checkpoints, metrics, log) if r.name == checkpoint_name(state.images_seen)]
    log.info("train_done", step=state.step, images_seen=state.images_seen, run_dir=redact(cfg.run_dir))
    metrics.close()
    if not uploaded or any(not result.committed for result in final):
        waited = cfg.checkpoint.upload_timeout_seconds if control.stop_signal is None else cfg.checkpoint.grace_seconds
        problem = final[-1].error if final else f"not finished after {waited:g} s"
        raise StorageError(
            f"training reached step {state.step}, but its checkpoint could not be uploaded to "
            f"{redact(cfg.checkpoint_url)} ({problem}); the same command resumes from the last commit"
        )
