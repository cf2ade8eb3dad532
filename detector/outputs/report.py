"""The infringement report: one scan run and each (scanned image, catalog image) pair it
flagged, with the stage-3 evidence, and its CSV and JSON forms. Read from the scan history by
:meth:`detector.storage.reports.Reports.load`; :mod:`detector.outputs.html` writes the HTML
folder."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import Any, TextIO

from detector.outputs.records import match_record, optional, region_text, safe_cell
from detector.records import Match, RunInfo


@dataclass(frozen=True)
class ReportRow:
    """One flagged pair: a scanned image (``query_*``, as the run recorded it) and its
    ``match`` with the catalog image it copies. The match's regions are as the query's file
    is seen after its EXIF orientation. ``new`` says no earlier run flagged the pair."""

    run_id: int
    item_id: int
    query_path: str
    query_sha256: str | None
    scanned_at: str
    new: bool
    match: Match


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


REPORT_CSV_COLUMNS = (
    "run_id",
    "scanned_at",
    "query_path",
    "query_sha256",
    "catalog_id",
    "catalog_path",
    "owner",
    "score",
    "verdict",
    "cosine",
    "hamming",
    "transform",
    "inliers",
    "agreement",
    "query_coverage",
    "catalog_coverage",
    "new",
    "query_region",
    "catalog_region",
)


def report_csv(report: Report, out: TextIO) -> None:
    """Write ``report`` to ``out`` as CSV: a header of ``REPORT_CSV_COLUMNS``, then one row
    per flagged pair. Text cells go through :func:`safe_cell`; ``new`` is ``true``/``false``;
    regions are compact JSON ``[[x, y], ...]`` (fractions of the image, 4 decimals) or empty."""
    writer = csv.writer(out)
    writer.writerow(REPORT_CSV_COLUMNS)
    writer.writerows(report_csv_row(row) for row in report.rows)


def report_csv_row(row: ReportRow) -> list[str]:
    """One pair as cells for ``REPORT_CSV_COLUMNS``."""
    m = row.match
    return [
        str(row.run_id),
        safe_cell(row.scanned_at),
        safe_cell(row.query_path),
        safe_cell(row.query_sha256),
        str(m.catalog_id),
        safe_cell(m.catalog_path),
        safe_cell(m.owner),
        f"{m.score:.4f}",
        safe_cell(m.verdict),
        f"{m.cosine:.4f}",
        str(m.hamming),
        safe_cell(m.transform),
        optional(m.inliers),
        optional(m.agreement),
        optional(m.query_coverage),
        optional(m.catalog_coverage),
        "true" if row.new else "false",
        safe_cell(region_text(m.query_region)),
        safe_cell(region_text(m.catalog_region)),
    ]


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
        **match_record(row.match),
        "new": row.new,
    }
