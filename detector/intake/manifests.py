"""CSV and JSON Lines manifests: one record per image, naming a local file (``path``) or carrying
its bytes (``bytes``, base64), with what the crawl knew of it (``url``, ``page_url``,
``source``, ``seen_at`` and any other column, kept as the item's metadata).

- CSV needs a header row; JSON Lines one object per line (blank lines skipped).
- ``path`` (also ``file``, ``filepath``, ``image_path``): relative paths are taken from the
  manifest's folder. ``bytes`` (also ``image``, ``image_base64``, ``jpg``, ``png``, ``webp``):
  base64; a record with both is read from its bytes and named by its path.
- A record with bytes and no path is named ``MANIFEST/KEY`` by its ``key`` column, else
  ``MANIFEST#N`` (N: the record's number, from 1).
- A record that cannot be used (bad JSON, neither path nor bytes) is an item whose error says
  why; the run goes on.

A record carrying bytes is not held in memory: its input keeps the record's byte offset, and
:func:`record_at` reads it again when the image is read.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from typing import Any

from detector.intake.inputs import CSV, FILE, JSONL, UNUSABLE, Input, meta_text

MANIFEST_SUFFIXES = {".csv": CSV, ".jsonl": JSONL, ".ndjson": JSONL}
PATH_FIELDS = ("path", "file", "filepath", "image_path")
BYTES_FIELDS = ("bytes", "image", "image_base64", "jpg", "png", "webp")
KEY_FIELD = "key"
_ENCODING = "utf-8"


def manifest_inputs(manifest: str) -> Iterator[Input]:
    """The inputs a CSV or JSON Lines manifest lists, in its order."""
    kind = MANIFEST_SUFFIXES[os.path.splitext(manifest)[1].lower()]
    base = os.path.dirname(manifest)
    try:
        with open(manifest, "rb") as f:
            records = _csv_records(f) if kind == CSV else _jsonl_records(f)
            for number, (offset, record) in enumerate(records, 1):
                yield _input(manifest, kind, base, number, offset, record)
    except OSError as e:
        yield Input(manifest, kind=UNUSABLE, field=f"cannot read manifest {manifest}: {e.strerror or e}")


def record_at(manifest: str, kind: str, offset: int) -> dict[str, Any]:
    """The record starting at byte ``offset`` of a manifest, as :func:`manifest_inputs` read it."""
    with open(manifest, "rb") as f:
        if kind == CSV:
            header = _csv_header(f)
            f.seek(offset)
            return dict(zip(header, _csv_fields(_csv_text(f)), strict=False))
        f.seek(offset)
        record = json.loads(f.readline().decode(_ENCODING, "surrogateescape"))
    if not isinstance(record, dict):
        raise ValueError("the record is not a JSON object")
    return record


def _input(manifest: str, kind: str, base: str, number: int, offset: int, record: Any) -> Input:
    if isinstance(record, Exception):
        return Input(f"{manifest}#{number}", kind=UNUSABLE, field=f"record {number} of {manifest}: {record}")
    path_field = next((k for k in PATH_FIELDS if record.get(k)), None)
    bytes_field = next((k for k in BYTES_FIELDS if record.get(k)), None)
    meta = meta_text(record, frozenset(PATH_FIELDS + BYTES_FIELDS))
    path = None if path_field is None else os.path.join(base, str(record[path_field]))
    if bytes_field is not None:
        key = record.get(KEY_FIELD)
        name = path or (f"{manifest}/{key}" if key not in (None, "") else f"{manifest}#{number}")
        return Input(name, kind=kind, source=manifest, at=offset, field=bytes_field, meta=meta)
    if path is not None:
        return Input(path, kind=FILE, meta=meta)
    return Input(
        f"{manifest}#{number}",
        kind=UNUSABLE,
        field=f"record {number} of {manifest} has neither a path nor bytes "
        f"(fields: {', '.join(map(str, record)) or 'none'})",
        meta=meta,
    )


def _jsonl_records(f: io.BufferedReader) -> Iterator[tuple[int, Any]]:
    while True:
        offset = f.tell()
        line = f.readline()
        if not line:
            return
        text = line.decode(_ENCODING, "surrogateescape").strip()
        if offset == 0:
            text = text.removeprefix("\ufeff")
        if not text:
            continue
        try:
            record = json.loads(text)
        except ValueError as e:
            yield offset, ValueError(f"not JSON ({e})")
            continue
        yield offset, record if isinstance(record, dict) else ValueError("not a JSON object")


def _csv_records(f: io.BufferedReader) -> Iterator[tuple[int, Any]]:
    header = _csv_header(f)
    while True:
        offset = f.tell()
        text = _csv_text(f)
        if not text:
            return
        if not text.strip():
            continue
        yield offset, dict(zip(header, _csv_fields(text), strict=False))


def _csv_header(f: io.BufferedReader) -> list[str]:
    return [h.strip().lower() for h in _csv_fields(_csv_text(f))]


def _csv_text(f: io.BufferedReader) -> str:
    """The text of the CSV record at the file's position: lines up to the one that closes
    every quote (RFC 4180 doubles quotes inside a field, so an odd count means one is open)."""
    text = ""
    while True:
        line = f.readline()
        if not line:
            return text
        piece = line.decode(_ENCODING, "surrogateescape")
        text += piece.removeprefix("\ufeff") if not text and f.tell() == len(line) else piece
        if text.count('"') % 2 == 0:
            return text


def _csv_fields(text: str) -> list[str]:
    return next(csv.reader(io.StringIO(text)), [])
