"""Errors meant for people: each carries the exit code the command line returns for it.

Exit codes (the Kubernetes and Colab docs rely on these):
    0   finished
    1   failed at run time (data missing, storage unreachable after retries, ...)
    2   bad input from the user: config field, command-line argument, dataset that does not match the config
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
