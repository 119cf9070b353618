"""Errors meant for people: each carries the exit code the command line returns for it.

Exit codes (the Kubernetes Job's podFailurePolicy and the README rely on these):
    0   finished (or already complete)
    1   failed at run time (data missing, storage unreachable after retries, a rank died, ...): retrying may help
    2   bad input from the user: config field, command-line argument, dataset or checkpoint that does not match
        the config: retrying cannot help
    3   diverged: losses stayed NaN/Inf after `checkpoint.max_rollbacks` roll-backs: retrying cannot help
    75  stopped by SIGTERM/SIGINT and this step's checkpoint committed, or stopped while waiting (for data, for
        storage, for a rank that vanished) with a commit of this run to resume from: run the same command again to
        resume (EX_TEMPFAIL). Never without a committed checkpoint: a stop whose save did not commit exits 1.
"""

from __future__ import annotations


class GandError(Exception):
    """An error with a message written for the person running gand; printed without a traceback."""

    exit_code = 1


class ConfigError(GandError):
    """The configuration or the command line is wrong; the message names the field and what is allowed."""

    exit_code = 2


class DataError(GandError):
    """A dataset, image or shard cannot be used; the message names it and the reason."""

    exit_code = 1


class StorageError(GandError):
    """Reading or writing a checkpoint, shard or manifest failed."""

    exit_code = 1


class Diverged(GandError):
    """Losses kept turning NaN/Inf: rolled back to the last checkpoint too many times."""

    exit_code = 3


class Preempted(GandError):
    """Stopped by a signal after saving a checkpoint; the same command resumes (EX_TEMPFAIL)."""

    exit_code = 75


class StoppedAtOnce(GandError):
    """A second SIGTERM/SIGINT: stopped without waiting for the save or its upload; the last commit stays."""

    exit_code = 1


class PeerLost(GandError):
    """Another rank vanished in the middle of a collective (its node was preempted or killed): nothing is wrong
    here, so this rank stops without saving and the same command resumes from the last commit (EX_TEMPFAIL)."""

    exit_code = 75
