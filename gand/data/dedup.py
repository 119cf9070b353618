"""Duplicate detection across everything a dataset has ever accepted: exact (bytes) and near (perceptual hash)."""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise

HASH_BITS = 64


class NearDuplicateIndex:
    """Finds a stored 64-bit hash within `max_distance` bits of a query without comparing against all of them.

    Pigeonhole: split the bits into max_distance + 1 chunks; two hashes within max_distance bits agree exactly on
    at least one chunk, so only hashes sharing a chunk value are compared.
    """

    def __init__(self, max_distance: int):
        if not 0 <= max_distance < 32:
            raise ValueError(f"max_distance must be in 0..31, got {max_distance}")
        self.max_distance = max_distance
        chunks = max_distance + 1
        edges = [round(i * HASH_BITS / chunks) for i in range(chunks + 1)]
        self._spans = [(lo, hi - lo) for lo, hi in pairwise(edges)]
        self._buckets: list[dict[int, list[int]]] = [defaultdict(list) for _ in self._spans]
        self.size = 0

    def _chunks(self, value: int) -> list[int]:
        return [(value >> lo) & ((1 << width) - 1) for lo, width in self._spans]

    def find(self, value: int) -> int | None:
        """A stored hash within max_distance of `value`, or None."""
        for bucket, chunk in zip(self._buckets, self._chunks(value), strict=True):
            for candidate in bucket.get(chunk, ()):
                if (candidate ^ value).bit_count() <= self.max_distance:
                    return candidate
        return None

    def add(self, value: int) -> None:
        for bucket, chunk in zip(self._buckets, self._chunks(value), strict=True):
            bucket[chunk].append(value)
        self.size += 1


class DuplicateFilter:
    """First seen wins: later copies are 'duplicate' (same bytes) or 'near_duplicate' (hash within distance)."""

    def __init__(self, exact: bool = True, near_distance: int | None = None):
        self.exact = exact
        self.sha256s: set[str] = set()
        self.near = NearDuplicateIndex(near_distance) if near_distance is not None else None

    def check(self, sha256: str, phash: int) -> str | None:
        """The skip reason for this image, or None if it is new (and then it is remembered)."""
        if self.exact and sha256 in self.sha256s:
            return "duplicate"
        if self.near is not None and self.near.find(phash) is not None:
            return "near_duplicate"
        self.remember(sha256, phash)
        return None

    def remember(self, sha256: str, phash: int) -> None:
        self.sha256s.add(sha256)
        if self.near is not None:
            self.near.add(phash)
