"""Small helpers every table module shares: timestamps, ``IN (...)`` chunks, polygons as JSON."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from detector.records import Region


def utc_now() -> str:
    """The current time as ISO 8601 UTC with seconds, as stored in every timestamp column."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def in_chunks(values: Iterable[Any], size: int = 500) -> Iterator[tuple[list[Any], str]]:
    """Distinct values in chunks small enough for one ``IN (...)`` clause, each with its
    ``?,?,...`` placeholders."""
    uniq = list(dict.fromkeys(values))
    for start in range(0, len(uniq), size):
        part = uniq[start : start + size]
        yield part, ",".join("?" * len(part))


def to_db(text: str | None) -> str | bytes | None:
    """Text as stored: itself, or, when it holds file-name bytes that are not UTF-8 (Python's
    surrogate escapes, as os.listdir gives them), those exact bytes as a BLOB, so the name
    round-trips and the file can be opened again."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")
    return text


def from_db(value: str | bytes | None) -> str | None:
    """The inverse of :func:`to_db`: stored bytes back to text with surrogate escapes."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value


def parse_region(text: str | None) -> Region | None:
    """A polygon stored as JSON ``[[x, y], ...]``; None for none or for text that is not one."""
    if not text:
        return None
    try:
        points = json.loads(text)
        return tuple((float(x), float(y)) for x, y in points)
    except (ValueError, TypeError):
        return None


def parse_regions(text: str | None) -> tuple[Region, ...]:
    """Several polygons stored as JSON ``[[[x, y], ...], ...]``; none for none or bad text."""
    if not text:
        return ()
    try:
        return tuple(tuple((float(x), float(y)) for x, y in polygon) for polygon in json.loads(text))
    except (ValueError, TypeError):
        return ()


def regions_json(regions: tuple[Region, ...]) -> str | None:
    """Several polygons as compact JSON text, or None for none."""
    if not regions:
        return None
    return json.dumps([[list(p) for p in r] for r in regions], separators=(",", ":"))


def region_json(region: Region | None) -> str | None:
    """A polygon as compact JSON text for the database."""
    return None if region is None else json.dumps([list(p) for p in region], separators=(",", ":"))
