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

# One column set for every CSV of flagged or scanned images: ``scan --format csv`` and the
# report's CSV. A row is one match (or one query without matches, its match cells empty);
# ``run_id``, ``scanned_at`` and ``new`` are the run's, ``url`` to ``seen_at`` the crawl's
# metadata of the query and ``meta`` all of it as JSON.
CSV_COLUMNS = (
    "run_id",
    "scanned_at",
    "query",
    "sha256",
    "url",
    "page_url",
    "source",
    "seen_at",
    "status",
    "error",
    "rank",
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
    "meta",
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
    query was turned or cut to match: as its stage-1 probe matched, or as stage 3 matched it),
    ``inliers`` (stage-3 RANSAC inliers,
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
    ``{"query", "status", "error", "matches": [...]}``, matches best first, plus its
    ``sha256`` and ``meta`` (what the crawl recorded with it: ``url``, ``page_url``, ...;
    empty for a plain file)."""
    return {
        "query": r.query,
        "status": r.status,
        "error": r.error,
        "sha256": r.sha256,
        "meta": r.meta,
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


def csv_rows(r: ScanResult, run_id: int | None = None) -> list[list[str]]:
    """Rows for ``CSV_COLUMNS``: one per match, or one with empty match cells."""
    head = query_cells(run_id, r.scanned_at, r.query, r.sha256, r.meta, r.status, r.error)
    if not r.matches:
        return [head[:_MATCH_AT] + [""] * (len(CSV_COLUMNS) - _MATCH_AT - 1) + head[_MATCH_AT:]]
    return [
        head[:_MATCH_AT] + match_cells(m, rank, None) + head[_MATCH_AT:]
        for rank, m in enumerate(r.matches, 1)
    ]


_MATCH_AT = CSV_COLUMNS.index("rank")  # the query's cells come before, its ``meta`` after


def query_cells(
    run_id: int | None,
    scanned_at: str | None,
    query: str,
    sha256: str | None,
    meta: dict[str, Any],
    status: str,
    error: str | None,
) -> list[str]:
    """The query's cells of a ``CSV_COLUMNS`` row: those before ``rank``, then ``meta``."""
    return [
        optional(run_id),
        safe_cell(scanned_at),
        safe_cell(query),
        safe_cell(sha256),
        *(safe_cell(_text(meta.get(name))) for name in ("url", "page_url", "source", "seen_at")),
        status,
        safe_cell(error),
        safe_cell(json_text(meta) if meta else None),
    ]


def match_cells(m: Match, rank: int, new: bool | None) -> list[str]:
    """A match's cells of a ``CSV_COLUMNS`` row, ``rank`` to ``catalog_region``."""
    return [
        str(rank),
        optional(m.catalog_id),
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
        "" if new is None else ("true" if new else "false"),
        safe_cell(region_text(m.query_region)),
        safe_cell(region_text(m.catalog_region)),
    ]


def _text(value: Any) -> str | None:
    return None if value is None else value if isinstance(value, str) else json_text(value)


def optional(value: float | int | None) -> str:
    """A number for a CSV cell, or empty for none."""
    return "" if value is None else str(value)


def region_text(region: Region | None) -> str | None:
    """A polygon as compact JSON text ``[[x, y], ...]`` (4 decimals), or None."""
    if region is None:
        return None
    return json.dumps([[round(x, 4), round(y, 4)] for x, y in region], separators=(",", ":"))
