"""One query image to read, wherever its bytes are, and what the crawl said about it.

An :class:`Input` is a file, a member of a webdataset ``.tar`` shard, a row of a Parquet shard
or a record of a CSV or JSON Lines manifest that carries the image's bytes. Its ``name`` is
what every result calls it; its ``meta`` what the crawl recorded with it (``url``,
``page_url``, ``source``, ``seen_at`` and any other field), kept as compact JSON text so that a
crawl of millions of inputs stays small in memory. :class:`InputReader` reads the bytes of any
input, keeping the last shard open (batches read consecutive inputs), and refuses what the
loader's policy refuses for files: a missing source, an oversized item.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import IO, Any

from detector.config import Settings
from detector.errors import MissingInput, UnreadablePath
from detector.intake.loader import read_bytes, within_size_limit

FILE = "file"  # a file of its own: ``name`` is its path (``source`` empty)
TAR = "tar"  # bytes ``size`` at offset ``at`` of the tar shard ``source``
PARQUET = "parquet"  # column ``field`` of row ``at`` of the Parquet shard ``source``
CSV = "csv"  # base64 in column ``field`` of the CSV record starting at byte ``at`` of ``source``
JSONL = "jsonl"  # likewise, in key ``field`` of the JSON Lines record at byte ``at``
UNUSABLE = "unusable"  # an item that cannot be read at all: ``field`` says why
KINDS = (FILE, TAR, PARQUET, CSV, JSONL, UNUSABLE)

# The fields a takedown notice needs, given their own columns in CSV and Parquet outputs.
MAIN_FIELDS = ("url", "page_url", "source", "seen_at")
_MAX_TEXT = 1000  # characters kept of one metadata value (img2dataset's EXIF dumps are long)
_MAX_FIELDS = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Input:
    """One image to read (see the module's docstring); ``meta`` is JSON object text or None."""

    name: str
    kind: str = FILE
    source: str = ""
    at: int = -1
    size: int = -1
    field: str = ""
    meta: str | None = None

    @property
    def metadata(self) -> dict[str, Any]:
        """What the crawl recorded with this input (empty when nothing)."""
        return json.loads(self.meta) if self.meta else {}

    def locator(self) -> dict[str, Any] | None:
        """Where the bytes are, as JSON-ready data (None for a plain file: its name says it)."""
        if self.kind == FILE:
            return None
        return {
            "kind": self.kind,
            "source": self.source,
            "at": self.at,
            "size": self.size,
            "field": self.field,
        }

    def to_json(self) -> str:
        """The input as JSON text (to hand it to another process)."""
        return json.dumps({"name": self.name, "meta": self.meta, "where": self.locator()})

    @classmethod
    def from_json(cls, text: str) -> Input:
        data = json.loads(text)
        return cls.located(data["name"], data.get("where"), data.get("meta"))

    @classmethod
    def located(cls, name: str, where: Mapping[str, Any] | None, meta: str | None = None) -> Input:
        """The input named ``name`` whose bytes :meth:`locator` placed at ``where``."""
        if not where:
            return cls(name, meta=meta)
        return cls(
            name,
            kind=str(where["kind"]),
            source=str(where["source"]),
            at=int(where["at"]),
            size=int(where["size"]),
            field=str(where.get("field") or ""),
            meta=meta,
        )


def as_input(item: str | Input) -> Input:
    """A path given as text is a plain file."""
    return item if isinstance(item, Input) else Input(item)


def meta_text(fields: Mapping[str, Any], leave_out: frozenset[str] = frozenset()) -> str | None:
    """Metadata fields as compact JSON object text: values that JSON holds as they are, dates as
    ISO 8601, other objects as text, long text cut at :data:`_MAX_TEXT` characters, bytes and
    empty values left out; None when nothing is left."""
    kept: dict[str, Any] = {}
    for key, value in fields.items():
        if key in leave_out or value is None or isinstance(value, bytes | bytearray | memoryview):
            continue
        if len(kept) >= _MAX_FIELDS:
            break
        value = _plain(value)
        if value == "":
            continue
        kept[str(key)] = value
    if not kept:
        return None
    text = json.dumps(kept, ensure_ascii=False, separators=(",", ":"), default=str)
    # Text read with surrogate escapes (bytes that are not UTF-8) as \udcXX escapes: the
    # metadata stays valid UTF-8 for SQLite and every output.
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _plain(value: Any) -> Any:
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping | list | tuple):
        text = json.dumps(value, ensure_ascii=False, default=str)
        return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"
    text = str(value)
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


class InputReader:
    """Reads the bytes of inputs, keeping the last tar shard open and the last Parquet row
    group read (consecutive inputs share them). Errors are :class:`ImageError`: one item's."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tar: tuple[str, IO[bytes]] | None = None
        self._group: tuple[str, str, int, Any] | None = None  # shard, column, first row, values

    def read(self, item: Input) -> bytes:
        """The input's bytes; :class:`ImageError` when they cannot be had."""
        if item.kind == FILE:
            return read_bytes(item.name, self.settings)
        if item.kind == UNUSABLE:
            raise UnreadablePath(item.field)
        if item.kind == TAR:
            return self._member(item)
        if item.kind == PARQUET:
            return self._checked(item, self._parquet_value(item))
        if item.kind in (CSV, JSONL):
            return self._checked(item, self._manifest_value(item))
        raise UnreadablePath(f"{item.name}: unknown kind of input {item.kind!r}")

    def close(self) -> None:
        if self._tar is not None:
            self._tar[1].close()
            self._tar = None
        self._group = None

    def __enter__(self) -> InputReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _checked(self, item: Input, data: bytes | None) -> bytes:
        if data is None:
            raise UnreadablePath(f"no image bytes for {item.name} in {item.source}")
        within_size_limit(len(data), self.settings)  # as read_bytes refuses a file
        return data

    def _member(self, item: Input) -> bytes:
        within_size_limit(item.size, self.settings)  # before a byte of it is read
        if self._tar is None or self._tar[0] != item.source:
            self.close()
            try:
                self._tar = (item.source, open(item.source, "rb"))
            except OSError as e:
                raise UnreadablePath(f"cannot read {item.source}: {e.strerror or e}") from e
        f = self._tar[1]
        try:
            f.seek(item.at)
            data = f.read(item.size)
        except OSError as e:
            raise UnreadablePath(f"cannot read {item.source}: {e.strerror or e}") from e
        if len(data) != item.size:
            raise UnreadablePath(f"{item.source} ends inside {item.name}: the shard changed or is cut short")
        return data

    def _parquet_value(self, item: Input) -> bytes | None:
        group = self._group
        if (
            group is None
            or group[:2] != (item.source, item.field)
            or not (group[2] <= item.at < group[2] + len(group[3]))
        ):
            group = self._group = _row_group(item)
        value = group[3][item.at - group[2]]
        return value if isinstance(value, bytes) or value is None else bytes(value)

    def _manifest_value(self, item: Input) -> bytes | None:
        from detector.intake.manifests import record_at

        try:
            record = record_at(item.source, item.kind, item.at)
        except (OSError, ValueError) as e:
            raise UnreadablePath(f"cannot read {item.name} from {item.source}: {e}") from e
        text = record.get(item.field)
        if not text:
            return None
        try:
            return base64.b64decode(str(text), validate=True)
        except (binascii.Error, ValueError) as e:
            raise UnreadablePath(f"the {item.field} of {item.name} is not base64: {e}") from e


def _row_group(item: Input) -> tuple[str, str, int, list[Any]]:
    """The values of column ``item.field`` in the row group of ``item.source`` holding row
    ``item.at``."""
    pq = require_pyarrow()
    try:
        f = pq.ParquetFile(item.source)
        start = 0
        for g in range(f.metadata.num_row_groups):
            size = f.metadata.row_group(g).num_rows
            if item.at < start + size:
                column = f.read_row_group(g, columns=[item.field]).column(0)
                return item.source, item.field, start, column.to_pylist()
            start += size
    except (OSError, KeyError, ValueError) as e:  # pyarrow's errors derive from these
        raise UnreadablePath(f"cannot read {item.source}: {e}") from e
    raise UnreadablePath(f"{item.source} has no row {item.at}: the shard changed")


def require_pyarrow() -> Any:
    """pyarrow.parquet, or a clear error saying how to install it."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise MissingInput("reading Parquet needs pyarrow: pip install 'copyscan[parquet]'") from e
    return pq


def read_input(item: str | Input, settings: Settings) -> bytes:
    """The bytes of one input (opening and closing what it needs)."""
    with InputReader(settings) as reader:
        return reader.read(as_input(item))
