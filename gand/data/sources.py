"""Where images come from: a folder or fsspec prefix (local, s3://, gs://), or a CSV/JSONL list of paths + labels.

Every item has a stable id (its path as listed) from which the sample key is derived, so the same image keeps the
same key across runs, machines and daemon polls.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import json
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gand.errors import ConfigError, DataError
from gand.storage import Store, redact

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
LIST_EXTENSIONS = (".csv", ".jsonl")
LABEL_MODES = ("auto", "folder", "none")


@dataclass(frozen=True)
class SourceItem:
    source_id: str  # the path as listed (relative to the folder, or as written in the list)
    url: str  # where to read the bytes
    label: str | None  # class name
    columns: dict[str, Any] = field(default_factory=dict)  # a list source's other columns, kept in the metadata

    @property
    def key(self) -> str:
        return sample_key(self.source_id)


@dataclass(frozen=True)
class ScanSkip:
    source_id: str
    reason: str  # not_an_image | excluded | no_label


@dataclass
class Scan:
    items: list[SourceItem]
    skips: list[ScanSkip]
    labelled: bool


def sample_key(source_id: str) -> str:
    """Stable across runs and machines, and free of dots (WebDataset splits key from extension at the dot)."""
    return hashlib.sha1(source_id.encode()).hexdigest()[:16]


def is_list_source(src: str) -> bool:
    return src.lower().endswith(LIST_EXTENSIONS)


def scan_source(src: str, labels: str = "auto", label_column: str | None = None, exclude: tuple[str, ...] = ()) -> Scan:
    """Every candidate image under `src`, in a deterministic order, with the reasons others were passed over."""
    if is_list_source(src):
        return _scan_list(src, label_column, exclude)
    if label_column:
        raise ConfigError("--label-column applies to CSV/JSONL list sources; a folder's labels are its sub-folders")
    return _scan_folder(src, labels, exclude)


def _excluded(source_id: str, patterns: tuple[str, ...]) -> bool:
    name = posixpath.basename(source_id)
    return any(fnmatch.fnmatchcase(source_id, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def _scan_folder(src: str, labels: str, exclude: tuple[str, ...]) -> Scan:
    store = Store(src)
    if not store.exists(""):
        raise DataError(f"source {redact(src)} does not exist")
    images, skips = [], []
    for relpath in store.walk_files():
        if any(part.startswith(".") for part in relpath.split("/")):
            continue  # hidden files and folders (.DS_Store, stamps, .git) are not part of a collection
        if not relpath.lower().endswith(IMAGE_EXTENSIONS):
            skips.append(ScanSkip(relpath, "not_an_image"))
        elif _excluded(relpath, exclude):
            skips.append(ScanSkip(relpath, "excluded"))
        else:
            images.append(relpath)
    at_top = [path for path in images if "/" not in path]
    labelled = labels == "folder" or (labels == "auto" and images and not at_top)
    items = []
    for path in images:
        if labelled and "/" not in path:
            skips.append(ScanSkip(path, "no_label"))  # beside the class folders, with no class of its own
            continue
        label = path.split("/")[0] if labelled else None
        items.append(SourceItem(path, store.url(path), label))
    return Scan(items, sorted(skips, key=lambda s: s.source_id), bool(labelled))


def _scan_list(src: str, label_column: str | None, exclude: tuple[str, ...]) -> Scan:
    """A CSV (header row) or JSONL list with a `path` column (relative to the list's folder, or a URL)."""
    try:
        text = Store(posixpath.dirname(src) or ".").read_bytes(posixpath.basename(src)).decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"source list {redact(src)} does not exist") from None
    rows = _read_rows(text, src)
    base = posixpath.dirname(src) or "."
    items, skips, seen = [], [], set()
    for number, row in enumerate(rows, start=2 if src.lower().endswith(".csv") else 1):
        path = str(row.get("path") or "").strip()
        if not path:
            raise DataError(f"{redact(src)} row {number}: no 'path' value")
        if label_column is not None and label_column not in row:
            raise ConfigError(f"--label-column {label_column!r} is not a column of {redact(src)}: {', '.join(row)}")
        label = str(row[label_column]).strip() if label_column is not None else None
        if path in seen:
            skips.append(ScanSkip(f"{path}#row{number}", "duplicate"))  # listed twice: one key, one sample
            continue
        seen.add(path)
        if not path.lower().endswith(IMAGE_EXTENSIONS):
            skips.append(ScanSkip(path, "not_an_image"))
        elif _excluded(path, exclude):
            skips.append(ScanSkip(path, "excluded"))
        elif label_column is not None and not label:
            skips.append(ScanSkip(path, "no_label"))
        else:
            url = path if "://" in path or path.startswith("/") else posixpath.join(base, path)
            columns = {k: v for k, v in row.items() if k != "path"}
            items.append(SourceItem(path, url, label, columns))
    return Scan(items, skips, label_column is not None)


def _read_rows(text: str, src: str) -> list[dict[str, Any]]:
    if src.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise DataError(f"{redact(src)} needs a header row with a 'path' column (has: {reader.fieldnames})")
        return list(reader)
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{redact(src)} line {number} is not JSON: {err.msg}") from None
        if not isinstance(row, dict):
            raise DataError(f"{redact(src)} line {number} must be a JSON object with a 'path'")
        rows.append(row)
    return rows


def count_reasons(skips: list[ScanSkip]) -> Counter[str]:
    return Counter(skip.reason for skip in skips)
