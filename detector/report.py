"""Turning results into output records: the JSON Lines record of the command-line contract,
CSV rows with formula cells neutralised, and plain-text table lines. Nothing here prints."""

from __future__ import annotations

from typing import Any

from .matching import Match, ScanResult

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
    """One match as in the JSON Lines contract, plus two evidence fields: ``transform``
    (how the query was turned or cut when stage 1 matched it) and ``inliers`` (stage-3
    RANSAC inliers, null when stage 3 did not run)."""
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
