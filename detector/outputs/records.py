"""Turning scan results into output records: the JSON Lines record of the command-line
contract, CSV rows with formula cells neutralised, and plain-text table lines. Nothing here
prints."""

from __future__ import annotations

import json
from typing import Any

from detector.records import Match, Region, ScanResult

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


def region_text(region: Region | None) -> str | None:
    """A polygon as compact JSON text ``[[x, y], ...]`` (4 decimals), or None."""
    if region is None:
        return None
    return json.dumps([[round(x, 4), round(y, 4)] for x, y in region], separators=(",", ":"))
