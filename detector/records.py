"""The records that flow one way from the stages to storage and to every output: a match, the
result for one query image, a recorded run. One type each, from the stage that makes it to
the report that prints it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from detector.intake.inputs import Input

Point = tuple[float, float]  # (x, y) as fractions of the image's width and height, 0..1
Region = tuple[Point, ...]  # a polygon of such points (stage 3's matched region)

COPY = "copy"
NEAR_DUPLICATE = "near-duplicate"
NONE = "none"
VERDICTS = (COPY, NEAR_DUPLICATE, NONE)


@dataclass(frozen=True)
class Match:
    """A catalog image judged against a query. ``hamming`` is bits of 64 (the closer of pHash
    and dHash), ``cosine`` the descriptor similarity in [-1, 1], ``score`` in [0, 1] and
    ``verdict`` one of :data:`VERDICTS`. ``transform`` names how the query was turned or cut
    when stage 1 matched it (see :class:`detector.stage1.hashing.Transform`); ``inliers`` are
    stage 3's RANSAC inliers (None when stage 3 did not run or could not judge) and the
    regions outline what matched in each image, as polygons of fractions of its width and
    height (the query as its file is, before any turn). ``agreement`` is the share of the
    aligned overlap whose content agrees, ``query_coverage`` and ``catalog_coverage`` the
    overlap's share of each image (None where stage 3 found no map), and ``disagreement``
    outlines where the query differs from the catalog image."""

    catalog_id: int | None  # None: a recorded match whose catalog image was removed since
    catalog_path: str
    owner: str | None
    hamming: int
    cosine: float
    score: float
    verdict: str
    transform: str = "identity"
    inliers: int | None = None
    query_region: Region | None = None
    catalog_region: Region | None = None
    agreement: float | None = None
    query_coverage: float | None = None
    catalog_coverage: float | None = None
    disagreement: tuple[Region, ...] = ()


@dataclass(frozen=True)
class ScanResult:
    """The outcome for one query image: ``status`` is 'ok' or 'error'; matches best first.
    Codes are unsigned 64-bit ints (None for an error). ``source``: the input it was read
    from, where that is more than a plain file (a shard member, a manifest record) or came
    with metadata (:attr:`meta`); ``scanned_at``: when a run recorded it (UTC, ISO 8601)."""

    query: str
    status: str
    error: str | None = None
    matches: tuple[Match, ...] = ()
    sha256: str | None = None
    phash: int | None = None
    dhash: int | None = None
    candidates: int = 0
    embedded: bool = False  # the CNN ran on this query
    reused_from: int | None = None  # the stored item whose results these repeat (not rescanned)
    source: Input | None = None
    scanned_at: str | None = None

    @property
    def meta(self) -> dict[str, Any]:
        """What the crawl recorded with this image (``url``, ``page_url``, ...): empty when
        nothing."""
        return json.loads(self.source.meta) if self.source is not None and self.source.meta else {}

    @property
    def flagged(self) -> bool:
        """True when some match is a copy or a near-duplicate."""
        return any(m.verdict != NONE for m in self.matches)

    @property
    def outcome(self) -> str:
        """One word for summaries: 'error', 'copy', 'near-duplicate' or 'no match' (by the
        best match)."""
        if self.status == "error":
            return "error"
        return self.matches[0].verdict if self.flagged else "no match"


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
