"""Turning results into output records: the JSON Lines record of the command-line contract,
CSV rows with formula cells neutralised, and plain-text table lines; and the infringement
report (:class:`~detector.outputs.report.Report`) as CSV or JSON. Nothing here prints."""

from __future__ import annotations

import csv
import json
from typing import Any, TextIO

from detector.outputs.report import Region, Report, ReportRow
from detector.scoring import Match, ScanResult

CSV_COLUMNS = (
    "query",
    "status",
    "error",
    "rank",
    "catalog_id",
    "catalog_path",
    "owner",
    "hamming",
    "cosine",
    "score",
    "verdict",
)
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def match_record(m: Match) -> dict[str, Any]:
    """One match as in the JSON Lines contract, plus the evidence: ``transform`` (how the
    query was turned or cut when stage 1 matched it), ``inliers`` (stage-3 RANSAC inliers,
    null when stage 3 did not run) and the matched regions, ``query_region`` and
    ``catalog_region`` (polygons ``[[x, y], ...]`` in fractions of each image's width and
    height; null without stage-3 evidence)."""
    return {
        "catalog_id": m.catalog_id,
        "catalog_path": m.catalog_path,
        "owner": m.owner,
        "hamming": m.hamming,
        "cosine": m.cosine,
        "score": m.score,
        "verdict": m.verdict,
        "transform": m.transform,
        "inliers": m.inliers,
        "query_region": None if m.query_region is None else [list(p) for p in m.query_region],
        "catalog_region": None if m.catalog_region is None else [list(p) for p in m.catalog_region],
    }


def scan_record(r: ScanResult) -> dict[str, Any]:
    """One query image as in the JSON Lines contract:
    ``{"query", "status", "error", "matches": [...]}``, matches best first."""
    return {
        "query": r.query,
        "status": r.status,
        "error": r.error,
        "matches": [match_record(m) for m in r.matches],
    }


def safe_cell(value: object) -> str:
    """A CSV cell that a spreadsheet will not run as a formula: text starting with
    = + - @ (or a tab/CR) gets a leading apostrophe. Numbers are written as they are."""
    if value is None:
        return ""
    if isinstance(value, int | float):
        return str(value)
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def csv_rows(r: ScanResult) -> list[list[str]]:
    """Rows for ``CSV_COLUMNS``: one per match, or one with empty match cells."""
    head = [safe_cell(r.query), r.status, safe_cell(r.error)]
    if not r.matches:
        return [head + [""] * (len(CSV_COLUMNS) - len(head))]
    return [
        [
            *head,
            str(rank),
            str(m.catalog_id),
            safe_cell(m.catalog_path),
            safe_cell(m.owner),
            str(m.hamming),
            f"{m.cosine:.4f}",
            f"{m.score:.4f}",
            m.verdict,
        ]
        for rank, m in enumerate(r.matches, 1)
    ]


def table_lines(r: ScanResult) -> list[str]:
    """Human-readable lines for one query: its verdict, then one indented line per match."""
    if r.status == "error":
        return [f"{'ERROR':<14} {r.query}: {r.error}"]
    if not r.matches:
        return [f"{'-':<14} {r.query}: no match"]
    best = r.matches[0]
    lines = [f"{best.verdict.upper():<14} {r.query}"]
    for m in r.matches:
        owner = f" [{m.owner}]" if m.owner else ""
        lines.append(
            f"         {m.verdict:<14} score {m.score:.3f}  cos {m.cosine:.3f}  "
            f"ham {m.hamming:>2}  #{m.catalog_id} {m.catalog_path}{owner}"
        )
    return lines


def outcome(r: ScanResult) -> str:
    """One word for a query's outcome, for summaries: 'error', 'copy', 'near-duplicate' or
    'no match' (by its best match)."""
    if r.status == "error":
        return "error"
    return r.matches[0].verdict if r.flagged else "no match"


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
    return [
        str(row.run_id),
        safe_cell(row.scanned_at),
        safe_cell(row.query_path),
        safe_cell(row.query_sha256),
        str(row.catalog_id),
        safe_cell(row.catalog_path),
        safe_cell(row.owner),
        f"{row.score:.4f}",
        safe_cell(row.verdict),
        "" if row.cosine is None else f"{row.cosine:.4f}",
        "" if row.hamming is None else str(row.hamming),
        safe_cell(row.transform),
        "" if row.inliers is None else str(row.inliers),
        "true" if row.new else "false",
        safe_cell(_region_json(row.query_region)),
        safe_cell(_region_json(row.catalog_region)),
    ]


def _region_json(region: Region | None) -> str | None:
    if region is None:
        return None
    return json.dumps([[round(x, 4), round(y, 4)] for x, y in region], separators=(",", ":"))


def report_json(report: Report) -> dict[str, Any]:
    """``report`` as JSON-ready data: ``{"run": {...RunInfo fields}, "generated_at",
    "new_only", "previous_run", "rows": [{...ReportRow fields}]}``, regions as lists of
    ``[x, y]`` (or null), rows in the report's order."""
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
    """One flagged pair as a JSON-ready dict with every :class:`ReportRow` field."""
    return {
        "run_id": row.run_id,
        "item_id": row.item_id,
        "query_path": row.query_path,
        "query_sha256": row.query_sha256,
        "scanned_at": row.scanned_at,
        "catalog_id": row.catalog_id,
        "catalog_path": row.catalog_path,
        "owner": row.owner,
        "score": row.score,
        "verdict": row.verdict,
        "cosine": row.cosine,
        "hamming": row.hamming,
        "transform": row.transform,
        "inliers": row.inliers,
        "query_region": _region_list(row.query_region),
        "catalog_region": _region_list(row.catalog_region),
        "new": row.new,
    }


def _region_list(region: Region | None) -> list[list[float]] | None:
    return None if region is None else [[x, y] for x, y in region]
