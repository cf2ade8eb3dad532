"""Turning the paths a user names into the list of image files to read.

- a file named directly is kept whatever its extension (the loader judges its bytes);
- a folder is walked recursively, in sorted order, for files with an image suffix; symlinked
  folders are not followed, so a symlink loop cannot trap the walk;
- a file ending in ``.txt``, ``.lst`` or ``.list`` is a list file: one path per line, relative
  paths taken from the list file's folder, blank lines and ``#`` comments skipped.
Paths inside a folder or a list file that cannot be read, and folders that cannot be listed,
are kept, so the run reports them as per-item errors. A path the caller named that does not
exist or cannot be listed is another matter (an unmounted crawl folder): :func:`check_roots`
refuses it before anything runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from detector.errors import MissingInput
from detector.intake.loader import IMAGE_SUFFIXES

LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})


def expand_sources(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Every image path named by ``paths``, each once, in the order given."""
    return list(dict.fromkeys(_expand(paths)))


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
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            yield from _walk(p)
        elif p.suffix.lower() in LIST_SUFFIXES and p.is_file():
            yield from _read_list(p)
        else:
            yield str(p)


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
