"""Turning the paths a user names into the images to read: :func:`expand_sources` gives image
files (what ``catalog add`` and ``dedupe`` read), :func:`expand_inputs` the inputs a scan
reads, which also come from crawl shards and manifests with their metadata.

- a file named directly is kept whatever its extension (the loader judges its bytes);
- a folder is walked recursively, in sorted order, for files with an image suffix; symlinked
  folders are not followed, so a symlink loop cannot trap the walk;
- a file ending in ``.txt``, ``.lst`` or ``.list`` is a list file: one path per line, relative
  paths taken from the list file's folder, blank lines and ``#`` comments skipped.
For :func:`expand_inputs`, also:
- a ``.tar`` file is a webdataset shard and a ``.parquet`` file a Parquet shard
  (:mod:`detector.intake.shards`), named directly, in a list file or found in a folder;
- a ``.csv``, ``.jsonl`` or ``.ndjson`` file named directly or in a list file is a manifest
  (:mod:`detector.intake.manifests`);
- an image file found in a folder beside a ``.json`` file of the same name (img2dataset's
  ``files`` layout: ``000012.jpg`` and ``000012.json``) takes that JSON object as metadata.
Paths inside a folder or a list file that cannot be read, and folders that cannot be listed,
are kept, so the run reports them as per-item errors. A path the caller named that does not
exist or cannot be listed is another matter (an unmounted crawl folder): :func:`check_roots`
refuses it before anything runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from detector.errors import MissingInput
from detector.intake.inputs import Input, meta_text
from detector.intake.loader import IMAGE_SUFFIXES
from detector.intake.manifests import MANIFEST_SUFFIXES, manifest_inputs
from detector.intake.shards import (
    COMPRESSED_TAR_SUFFIXES,
    PARQUET_SUFFIX,
    TAR_SUFFIX,
    parquet_inputs,
    tar_inputs,
)

LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
_SIDECAR = ".json"
_MAX_SIDECAR_BYTES = 1 << 20

T = TypeVar("T")


def expand_sources(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Every image path named by ``paths``, each once, in the order given."""
    return list(dict.fromkeys(_expand(paths)))


def expand_inputs(paths: Iterable[str | os.PathLike[str]], skip: frozenset[str] = frozenset()) -> list[Input]:
    """Every input named by ``paths`` (files, folders, list files, shards, manifests), each
    name once, in the order given; inputs whose name is in ``skip`` (those a resumed run
    recorded) are left out."""
    found: dict[str, Input] = {}
    for item in _inputs(paths):
        if item.name not in skip:
            found.setdefault(item.name, item)
    return list(found.values())


def _inputs(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Input]:
    return _each_root(paths, _walk_inputs, _named)


def _each_root(
    paths: Iterable[str | os.PathLike[str]],
    walk: Callable[[Path], Iterator[T]],
    named: Callable[[str], Iterator[T]],
) -> Iterator[T]:
    """What ``walk`` finds in each folder of ``paths`` and ``named`` in each other path, and in
    each entry of a list file."""
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            yield from walk(p)
        elif p.suffix.lower() in LIST_SUFFIXES and p.is_file():
            for entry in _read_list(p):
                yield from named(entry)
        else:
            yield from named(str(p))


def _named(path: str) -> Iterator[Input]:
    """The inputs of a file named directly or in a list file."""
    lower = path.lower()
    suffix = os.path.splitext(lower)[1]
    if lower.endswith(COMPRESSED_TAR_SUFFIXES) or suffix == TAR_SUFFIX:
        yield from tar_inputs(path)
    elif suffix == PARQUET_SUFFIX:
        yield from parquet_inputs(path)
    elif suffix in MANIFEST_SUFFIXES:
        yield from manifest_inputs(path)
    else:
        yield Input(path)


def _walk_inputs(root: Path) -> Iterator[Input]:
    unlisted: list[OSError] = []
    for folder, dirs, files in os.walk(root, onerror=unlisted.append, followlinks=False):
        yield from (Input(p) for p in _drain(unlisted))
        dirs.sort()
        names = set(files)
        for name in sorted(files):
            stem, suffix = os.path.splitext(name)
            path = os.path.join(folder, name)
            suffix = suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                sidecar = stem + _SIDECAR
                yield Input(
                    path, meta=_sidecar_meta(os.path.join(folder, sidecar)) if sidecar in names else None
                )
            elif suffix == TAR_SUFFIX:
                yield from tar_inputs(path)
            elif suffix == PARQUET_SUFFIX:
                yield from parquet_inputs(path, beside_tar=stem + TAR_SUFFIX in names)
    yield from (Input(p) for p in _drain(unlisted))


def _sidecar_meta(path: str) -> str | None:
    """The metadata in an image's ``.json`` sidecar, or None when it holds no JSON object."""
    try:
        if os.path.getsize(path) > _MAX_SIDECAR_BYTES:
            return None
        with open(path, encoding="utf-8", errors="replace") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return meta_text(data) if isinstance(data, dict) else None


def check_roots(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Raise :class:`MissingInput` naming every path of ``paths`` that does not exist, or is a
    folder that cannot be listed."""
    missing = []
    for raw in paths:
        path = os.fspath(raw)
        try:
            if os.path.isdir(path):
                os.listdir(path)
            elif not os.path.exists(path):
                missing.append(f"{path!r} does not exist")
        except (OSError, ValueError) as e:
            missing.append(f"{path!r} cannot be listed ({getattr(e, 'strerror', None) or e})")
    if missing:
        raise MissingInput("input not found: " + "; ".join(missing))


def _expand(paths: Iterable[str | os.PathLike[str]]) -> Iterator[str]:
    return _each_root(paths, _walk, lambda path: iter((path,)))


def _walk(root: Path) -> Iterator[str]:
    # A folder that cannot be listed (permissions, removed mid-walk) is kept as a path of its
    # own, so the run reports it as an item that could not be read instead of losing what it
    # holds without a word. os.walk reports it while it steps to the next folder.
    unlisted: list[OSError] = []
    for folder, dirs, files in os.walk(root, onerror=unlisted.append, followlinks=False):
        yield from _drain(unlisted)
        dirs.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield os.path.join(folder, name)
    yield from _drain(unlisted)


def _drain(errors: list[OSError]) -> Iterator[str]:
    while errors:
        e = errors.pop(0)
        if e.filename is not None:
            yield os.fspath(e.filename)


def _read_list(list_file: Path) -> Iterator[str]:
    base = list_file.parent
    with open(list_file, encoding="utf-8", errors="replace") as f:
        for line in f:
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            p = Path(entry)
            yield str(p if p.is_absolute() else base / p)
