"""The one way every command that lists records writes them: ``--format table|jsonl|csv|json``
and ``-o/--output FILE`` (:func:`output_options`), and one writer of records in those four
formats (:class:`Listing`).

- table: for people; a header row, then one row a record, columns aligned (numbers right);
- csv: a header row, then one row a record; formula cells neutralised; lists as JSON text;
- jsonl: one JSON object a line;
- json: one JSON document: an array of the records, or the one object a command describes.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import click

from detector.outputs.records import display, json_text, safe_cell

FORMATS = ("table", "jsonl", "csv", "json")
TABLE, JSONL, CSV, JSON = FORMATS
GAP = "  "  # between table columns


@dataclass(frozen=True)
class Column:
    """One field of a listing. ``key``: the record's key (the CSV header and JSON key);
    ``title``: the table's header (the key in capitals by default); ``width``: the least
    width in a table that is written as it goes (a longer value pushes the rest of its row
    over); ``right``: aligned right (numbers); ``text``: the value as table text (CSV writes
    numbers as they are and lists as JSON; JSON keeps the value); ``table``: shown in the
    table (CSV and JSON have every column)."""

    key: str
    title: str = ""
    width: int = 0
    right: bool = False
    text: Callable[[Any], str] | None = None
    table: bool = True

    @property
    def header(self) -> str:
        return self.title or self.key.upper()


def output_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--format`` (passed as ``fmt``) and ``-o/--output`` (passed as ``output``)."""
    f = click.option(
        "-o",
        "--output",
        type=click.Path(dir_okay=False, allow_dash=True),
        default="-",
        show_default=True,
        metavar="FILE",
        help="Write the records to this file instead of stdout ('-': stdout).",
    )(f)
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default=TABLE,
        show_default=True,
        help="table (with a header row), jsonl (an object a line), csv (with a header row) "
        "or json (one document).",
    )(f)


def open_output(path: str | None) -> IO[str]:
    """The stream records go to: stdout for '-' (or None), else the file, opened now so that
    one that cannot be written is a one-line error (exit status 1) before any work."""
    if path is None or path == "-":
        return sys.stdout
    try:
        return open(path, "w", encoding="utf-8", errors="surrogateescape", newline="")
    except OSError as e:
        raise click.ClickException(f"cannot write {path}: {e.strerror or e}") from e


def check_output(path: str | None) -> None:
    """The one-line error :func:`open_output` would give for ``path``, now, without touching
    what the file holds (a run refused later never empties the last run's output)."""
    if path is None or path == "-":
        return
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise click.ClickException(f"cannot write {path}: {e.strerror or e}") from e


@contextmanager
def output_file(path: str | None) -> Iterator[IO[str]]:
    """:func:`open_output` for a block: a file is closed at its end, stdout is left open."""
    out = open_output(path)
    try:
        yield out
    finally:
        if out is not sys.stdout:
            out.close()


@contextmanager
def listing(
    fmt: str,
    output: str | None,
    columns: Sequence[Column],
    *,
    one: bool = False,
    vertical: bool = False,
    stream: bool = False,
) -> Iterator[Listing]:
    """A :class:`Listing` to ``output`` (a path, or '-' for stdout), finished (the table or
    the JSON array completed) when the block ends without an error."""
    with output_file(output) as out:
        writer = Listing(fmt, out, columns, one=one, vertical=vertical, stream=stream)
        yield writer
        writer.close()


class Listing:
    """Writes records (mappings) in one of :data:`FORMATS` to one stream.

    ``one``: the listing is a single record (json writes the object, not an array);
    ``vertical``: a table shows the one record as FIELD / VALUE rows. ``stream``: rows are
    written as they come, tables
    aligned on each column's ``width`` (else a table waits for :meth:`close` to align on
    the widest value). Call :meth:`close` at the end: it writes what the format still owes
    (a table, the closing bracket, a header of an empty listing)."""

    def __init__(
        self,
        fmt: str,
        out: IO[str],
        columns: Sequence[Column],
        *,
        one: bool = False,
        vertical: bool = False,
        stream: bool = False,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        self.fmt = fmt
        self.out = out
        self.columns = tuple(columns)
        self.one = one
        self.vertical = vertical
        self.stream = stream and not (one or vertical)
        self.count = 0
        self._held: list[Mapping[str, Any]] = []
        self._csv = csv.writer(out) if fmt == CSV else None

    @property
    def flat(self) -> bool:
        """Whether this format has one row a record (table, CSV): commands whose JSON records
        nest lists give these formats one row per item of the list."""
        return self.fmt in (TABLE, CSV)

    def write(self, record: Mapping[str, Any]) -> None:
        """Write one record (held back when the format needs them all first; a listing
        written as it goes is flushed by the caller where each record matters at once)."""
        first = self.count == 0
        self.count += 1
        if self.fmt == JSONL:
            self.out.write(json_text(dict(record)) + "\n")
        elif self.fmt == JSON and not self.one:
            self.out.write(("[\n" if first else ",\n") + json_text(dict(record)))
        elif self._csv is not None:
            if first:
                self._csv.writerow([c.key for c in self.columns])
            self._csv.writerow([_csv_cell(record.get(c.key)) for c in self.columns])
        elif self.fmt == TABLE and self.stream:
            if first:
                self._table_lines([])
            self._table_lines([record], header=False)
        else:
            self._held.append(record)

    def close(self) -> None:
        """Finish the listing: the held table or object, or what an empty listing shows."""
        if self.fmt == JSON:
            if self.one:
                self.out.write(json_text(dict(self._held[0]) if self._held else None, indent=2) + "\n")
            else:
                self.out.write("[]\n" if self.count == 0 else "\n]\n")
        elif self._csv is not None and self.count == 0:
            self._csv.writerow([c.key for c in self.columns])
        elif self.fmt == TABLE:
            if self.vertical and self._held:
                self._vertical(self._held[0])
            elif not self.stream or self.count == 0:
                self._table_lines(self._held)
        self._held = []
        self.out.flush()

    def _table_lines(self, records: Sequence[Mapping[str, Any]], header: bool = True) -> None:
        shown = [c for c in self.columns if c.table]
        cells = [[self._table_cell(c, r.get(c.key)) for c in shown] for r in records]
        widths = [max(len(c.header), c.width) for c in shown]
        if not self.stream:
            for row in cells:
                widths = [max(w, len(v)) for w, v in zip(widths, row, strict=True)]
        rows = ([[c.header for c in shown]] if header else []) + cells
        for row in rows:
            self.out.write(_line(row, widths, [c.right for c in shown]) + "\n")

    def _vertical(self, record: Mapping[str, Any]) -> None:
        shown = [c for c in self.columns if c.table]
        width = max([5, *(len(c.key) for c in shown)])
        self.out.write(_line(["FIELD", "VALUE"], [width, 0], [False, False]) + "\n")
        for c in shown:
            self.out.write(_line([c.key, self._table_cell(c, record.get(c.key))], [width, 0], [False, False]))
            self.out.write("\n")

    @staticmethod
    def _table_cell(c: Column, value: Any) -> str:
        if value is None:
            return "-"
        if c.text is not None:
            return display(c.text(value))
        return display(value if isinstance(value, str) else _plain(value))


def _csv_cell(value: Any) -> str:
    """A CSV cell: empty for none, text neutralised against formulas, else plain."""
    if value is None:
        return ""
    if isinstance(value, str):
        return safe_cell(value)
    return _plain(value)


def _plain(value: Any) -> str:
    """A value other than text as a cell: numbers as Python writes them, flags as true and
    false, lists and objects as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple | dict):
        return json_text(list(value) if isinstance(value, tuple) else value)
    return str(value)


def _line(cells: Sequence[str], widths: Sequence[int], right: Sequence[bool]) -> str:
    """Cells padded to their widths; the last one not padded (no trailing spaces)."""
    last = len(cells) - 1
    parts = [
        v if i == last and not r else (v.rjust(w) if r else v.ljust(w))
        for i, (v, w, r) in enumerate(zip(cells, widths, right, strict=True))
    ]
    return GAP.join(parts).rstrip()
