"""The infringement report of a run, read from the scan history: every pair it flagged, best
first, with whether an earlier run flagged the same content against the same catalog image."""

from __future__ import annotations

from typing import TYPE_CHECKING

from detector.outputs.report import Report, ReportRow
from detector.storage.history import item_source, match_from_row
from detector.storage.sql import from_db, utc_now

if TYPE_CHECKING:
    from detector.storage.store import Store

_MATCH = (
    "m.catalog_id, m.catalog_path, coalesce(m.owner, catalog.owner), m.hamming, m.cosine, m.score,"
    " m.verdict, m.transform, m.inliers, m.query_region, m.catalog_region, m.agreement,"
    " m.query_coverage, m.catalog_coverage, m.disagreement"
)


class Reports:
    """Reports of one :class:`~detector.storage.store.Store` (``store.reports``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.conn = store.conn

    def load(self, run_id: int | None = None, new_only: bool = False) -> Report:
        """A run's flagged pairs (the newest run without ``run_id``) with their evidence, best
        first. A pair is new when no earlier run flagged the same content against the same
        catalog image; ``new_only`` keeps only those."""
        run = self.store.history.run(run_id)
        prev = self.conn.execute(
            "SELECT max(id) FROM runs WHERE id < ? AND status = 'finished'", (run.id,)
        ).fetchone()[0]
        rows = []
        for r in self.conn.execute(
            "SELECT items.id, items.path, items.sha256, coalesce(items.scanned_at, runs.started_at),"
            " NOT EXISTS (SELECT 1 FROM matches m2 JOIN items i2 ON i2.id = m2.item_id"
            "             WHERE i2.run_id < items.run_id AND i2.sha256 = items.sha256"
            "             AND m2.catalog_id = m.catalog_id AND m2.verdict != 'none'),"
            " (SELECT count(*) FROM matches m3 WHERE m3.item_id = m.item_id"
            "  AND (m3.score > m.score OR (m3.score = m.score AND m3.id < m.id))) + 1,"
            " items.metadata, items.locator,"
            f" {_MATCH}"
            " FROM matches m JOIN items ON items.id = m.item_id JOIN runs ON runs.id = items.run_id"
            " LEFT JOIN catalog ON catalog.id = m.catalog_id"
            " WHERE items.run_id = ? AND m.verdict != 'none'"
            " ORDER BY m.score DESC, items.id, m.catalog_id",
            (run.id,),
        ):
            new = bool(r[4])
            if new_only and not new:
                continue
            path = from_db(r[1]) or ""
            rows.append(
                ReportRow(
                    run_id=run.id,
                    item_id=int(r[0]),
                    query_path=path,
                    query_sha256=r[2],
                    scanned_at=r[3],
                    new=new,
                    match=match_from_row(r[8:]),
                    rank=int(r[5]),
                    source=item_source(path, r[6], r[7]),
                )
            )
        return Report(run, tuple(rows), new_only, prev, utc_now())
