"""Turning scan results into output records: the JSON Lines record of the command-line
contract, CSV rows with formula cells neutralised, and plain-text table lines. Nothing here
prints.

File names need not be UTF-8 (a crawl keeps what the web served). Python holds such bytes as
surrogate escapes; every output stays valid UTF-8: JSON writes them as ``\\udcXX`` escapes
(``json.loads`` and ``os.fsencode`` give the exact bytes back), text for people as ``\\xXX``."""

from __future__ import annotations

import json
import re
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
    "transform",
    "inliers",
    "agreement",
    "query_coverage",
    "catalog_coverage",
)
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_SURROGATE = re.compile("[\ud800-\udfff]")


def json_text(value: Any, indent: int | None = None) -> str:
    """``value`` as JSON text: other scripts as themselves, the bytes of a non-UTF-8 file name
    as ``\\udcXX`` escapes (see the module's docstring)."""
    text = json.dumps(value, ensure_ascii=False, indent=indent)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def display(text: str) -> str:
    """Text for people (tables, CSV, HTML): a non-UTF-8 file-name byte shown as ``\\xXX``."""
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def match_record(m: Match) -> dict[str, Any]:
    """One match as in the JSON Lines contract, plus the evidence: ``transform`` (how the
    query was turned or cut when stage 1 matched it), ``inliers`` (stage-3 RANSAC inliers,
    null when stage 3 did not run) and the matched regions, ``query_region`` and
    ``catalog_region`` (polygons ``[[x, y], ...]`` in fractions of each image's width and
    height; null without stage-3 evidence), ``agreement`` (the share of the aligned overlap
    whose content agrees), ``query_coverage`` and ``catalog_coverage`` (the overlap's share of
    each image) and ``disagreement`` (polygons where the query differs; empty when it agrees
    everywhere or was not compared)."""
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
        "agreement": m.agreement,
        "query_coverage": m.query_coverage,
        "catalog_coverage": m.catalog_coverage,
        "disagreement": [[list(p) for p in r] for r in m.disagreement],
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
    text = display(str(value))
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
            safe_cell(m.transform),
            optional(m.inliers),
            optional(m.agreement),
            optional(m.query_coverage),
            optional(m.catalog_coverage),
        ]
        for rank, m in enumerate(r.matches, 1)
    ]


def optional(value: float | int | None) -> str:
    """A number for a CSV cell, or empty for none."""
    return "" if value is None else str(value)


def table_lines(r: ScanResult) -> list[str]:
    """Human-readable lines for one query: its verdict, then one indented line per match."""
    query = display(r.query)
    if r.status == "error":
        return [f"{'ERROR':<14} {query}: {display(r.error or '')}"]
    if not r.matches:
        return [f"{'-':<14} {query}: no match"]
    best = r.matches[0]
    lines = [f"{best.verdict.upper():<14} {query}"]
    for m in r.matches:
        owner = f" [{display(m.owner)}]" if m.owner else ""
        lines.append(
            f"         {m.verdict:<14} score {m.score:.3f}  cos {m.cosine:.3f}  "
            f"ham {m.hamming:>2}  #{m.catalog_id} {display(m.catalog_path)}{owner}"
        )
    return lines


def region_text(region: Region | None) -> str | None:
    """A polygon as compact JSON text ``[[x, y], ...]`` (4 decimals), or None."""
    if region is None:
        return None
    return json.dumps([[round(x, 4), round(y, 4)] for x, y in region], separators=(",", ":"))
