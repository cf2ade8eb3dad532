"""The infringement report: one scan run and each (scanned image, catalog image) pair it
flagged, with the stage-3 evidence, and its CSV and JSON forms. Read from the scan history by
:meth:`detector.storage.reports.Reports.load`; :mod:`detector.outputs.html` writes the HTML
folder."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import Any, TextIO

from detector.intake.inputs import Input
from detector.outputs.records import CSV_COLUMNS, match_cells, match_record, query_cells
from detector.records import Match, RunInfo


@dataclass(frozen=True)
class ReportRow:
    """One flagged pair: a scanned image (``query_*``, as the run recorded it) and its
    ``match`` with the catalog image it copies. The match's regions are as the query's file
    is seen after its EXIF orientation. ``new`` says no earlier run flagged the pair.
    ``rank``: the match's place among the query's matches (1: its best); ``source``: where
    the query was read from and what its crawl said of it (:attr:`meta`), if more than a
    plain file."""

    run_id: int
    item_id: int
    query_path: str
    query_sha256: str | None
    scanned_at: str
    new: bool
    match: Match
    rank: int = 1
    source: Input | None = None

    @property
    def meta(self) -> dict[str, Any]:
        """What the crawl recorded with the query (``url``, ``page_url``, ...)."""
        return self.source.metadata if self.source is not None else {}


@dataclass(frozen=True)
class Report:
    """A run and its flagged pairs, best score first. With ``new_only`` the rows are only the
    pairs no earlier run flagged (for a nightly job that mails what changed);
    ``previous_run`` is the finished run before this one, if any."""

    run: RunInfo
    rows: tuple[ReportRow, ...]
    new_only: bool
    previous_run: int | None
    generated_at: str


def report_csv(report: Report, out: TextIO) -> None:
    """Write ``report`` to ``out`` as CSV: a header of
    :data:`~detector.outputs.records.CSV_COLUMNS` (the columns ``scan --format csv`` writes),
    then one row per flagged pair. Text cells go through :func:`safe_cell`; ``new`` is
    ``true``/``false``; regions are compact JSON ``[[x, y], ...]`` (fractions of the image, 4
    decimals) or empty."""
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(report_csv_row(row) for row in report.rows)


def report_csv_row(row: ReportRow) -> list[str]:
    """One pair as cells for :data:`~detector.outputs.records.CSV_COLUMNS`."""
    head = query_cells(row.run_id, row.scanned_at, row.query_path, row.query_sha256, row.meta, "ok", None)
    at = CSV_COLUMNS.index("rank")
    return head[:at] + match_cells(row.match, row.rank, row.new) + head[at:]


def report_json(report: Report) -> dict[str, Any]:
    """``report`` as JSON-ready data: ``{"run": {...RunInfo fields}, "generated_at",
    "new_only", "previous_run", "rows": [...]}``, rows in the report's order."""
    run = report.run
    return {
        "run": {
            "id": run.id,
            "command": run.command,
            "args": run.args,
            "started_at": run.started_at,
            "finished_at": run.finished_at,
            "status": run.status,
            "mode": run.mode,
            "items": run.items,
            "errors": run.errors,
            "matched": run.matched,
        },
        "generated_at": report.generated_at,
        "new_only": report.new_only,
        "previous_run": report.previous_run,
        "rows": [report_row_record(row) for row in report.rows],
    }


def report_row_record(row: ReportRow) -> dict[str, Any]:
    """One flagged pair as a JSON-ready dict: the run and query fields, then the match's
    fields as :func:`~detector.outputs.records.match_record` writes them, then ``new``."""
    return {
        "run_id": row.run_id,
        "item_id": row.item_id,
        "query_path": row.query_path,
        "query_sha256": row.query_sha256,
        "scanned_at": row.scanned_at,
        "meta": row.meta,
        "rank": row.rank,
        **match_record(row.match),
        "new": row.new,
    }
