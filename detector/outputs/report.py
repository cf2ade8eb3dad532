"""What an infringement report holds: one scan run, and each (scanned image, catalog image)
pair it flagged, with the stage-3 evidence. Built from the scan history by
:meth:`detector.storage.store.Store.load_report`; written out by :mod:`detector.outputs.records` (CSV, JSON)
and :mod:`detector.outputs.html` (a self-contained HTML folder)."""

from __future__ import annotations

from dataclasses import dataclass

Point = tuple[float, float]  # (x, y) as fractions of the image's width and height, 0..1
Region = tuple[Point, ...]  # a polygon of such points (stage 3's matched region)


@dataclass(frozen=True)
class RunInfo:
    """One ``scan`` run as recorded: ``status`` is 'running' (or killed before it finished),
    'finished' or 'interrupted'; counts are None until the run finished."""

    id: int
    command: str
    args: dict[str, object]
    started_at: str
    finished_at: str | None
    status: str
    mode: str | None
    items: int | None
    errors: int | None
    matched: int | None
    state: str | None = None  # fingerprint of the catalog and settings it scanned against


@dataclass(frozen=True)
class ReportRow:
    """One flagged pair: a scanned image (``query_*``) and the catalog image it copies.

    ``query_region`` and ``catalog_region`` outline the part of each picture that stage 3
    found in the other (a polygon of fractions of that image's width and height, as the file
    is seen after its EXIF orientation); None when stage 3 did not run or found nothing.
    ``new`` says the pair was not flagged by any earlier run."""

    run_id: int
    item_id: int
    query_path: str
    query_sha256: str | None
    scanned_at: str
    catalog_id: int
    catalog_path: str
    owner: str | None
    score: float
    verdict: str  # 'copy' or 'near-duplicate'
    cosine: float | None
    hamming: int | None
    transform: str | None
    inliers: int | None
    query_region: tuple[Point, ...] | None
    catalog_region: tuple[Point, ...] | None
    new: bool


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
