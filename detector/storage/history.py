"""The scan history: runs, the items each one scanned (by content hash) and their matches.

A run is 'running' while a process works on it, then 'finished' or 'interrupted'; a run left
'running' by a process that died is marked 'killed' by the next writer (see
:mod:`detector.runs`). Items are committed a batch at a time, so a killed run keeps every
batch it recorded and nothing of the batch it was in."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from detector.errors import NotFound, StoreError
from detector.intake.inputs import Input
from detector.records import Match, RunInfo, ScanResult
from detector.stage1.hashing import from_sqlite, to_sqlite
from detector.storage.sql import (
    from_db,
    in_chunks,
    parse_region,
    parse_regions,
    region_json,
    regions_json,
    to_db,
    utc_now,
)

if TYPE_CHECKING:
    from detector.storage.store import Store

_RUN_SELECT = (
    "SELECT id, command, args, started_at, finished_at, status, mode, items, errors, matched, state FROM runs"
)
MATCH_COLUMNS = (
    "catalog_id, catalog_path, owner, hamming, cosine, score, verdict, transform, inliers,"
    " query_region, catalog_region, agreement, query_coverage, catalog_coverage, disagreement"
)


def match_row(m: Match) -> tuple[Any, ...]:
    """A match's values in the order of :data:`MATCH_COLUMNS`."""
    return (
        m.catalog_id,
        to_db(m.catalog_path),
        to_db(m.owner),
        m.hamming,
        m.cosine,
        m.score,
        m.verdict,
        m.transform,
        m.inliers,
        region_json(m.query_region),
        region_json(m.catalog_region),
        m.agreement,
        m.query_coverage,
        m.catalog_coverage,
        regions_json(m.disagreement),
    )


def match_from_row(row: Sequence[Any]) -> Match:
    """A match read back in the order of :data:`MATCH_COLUMNS` (columns an older schema left
    empty read as 0 and 'identity')."""
    return Match(
        catalog_id=None if row[0] is None else int(row[0]),
        catalog_path=from_db(row[1]) or "",
        owner=from_db(row[2]),
        hamming=int(row[3] or 0),
        cosine=float(row[4] or 0.0),
        score=float(row[5]),
        verdict=row[6],
        transform=row[7] or "identity",
        inliers=row[8],
        query_region=parse_region(row[9]),
        catalog_region=parse_region(row[10]),
        agreement=row[11],
        query_coverage=row[12],
        catalog_coverage=row[13],
        disagreement=parse_regions(row[14]),
    )


class History:
    """The scan history of one :class:`~detector.storage.store.Store` (``store.history``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.conn = store.conn

    def start(
        self, command: str, args: dict[str, Any], mode: str | None = None, state: str | None = None
    ) -> int:
        """Record the start of a run; returns its id. ``state`` fingerprints the catalog and
        settings it scans against (see :func:`detector.scan.state.scan_state`)."""
        with self.store.write():
            cur = self.conn.execute(
                "INSERT INTO runs (command, args, started_at, status, mode, state)"
                " VALUES (?, ?, ?, 'running', ?, ?)",
                (command, json.dumps(args, sort_keys=True), utc_now(), mode, state),
            )
        if cur.lastrowid is None:
            raise StoreError("could not record the run")
        return int(cur.lastrowid)

    def record(self, run_id: int, results: Sequence[ScanResult]) -> list[ScanResult]:
        """Store scanned items and their matches in one transaction; returns the results with
        the time they were recorded (``scanned_at``)."""
        now = utc_now()
        with self.store.write():
            for r in results:
                source = r.source
                locator = None if source is None else source.locator()
                cur = self.conn.execute(
                    "INSERT INTO items (run_id, path, sha256, status, error, phash, dhash, scanned_at,"
                    " reused_from, metadata, locator) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_id,
                        to_db(r.query),
                        r.sha256,
                        r.status,
                        to_db(r.error),
                        None if r.phash is None else to_sqlite(r.phash),
                        None if r.dhash is None else to_sqlite(r.dhash),
                        now,
                        r.reused_from,
                        None if source is None else source.meta,
                        None if locator is None else json.dumps(locator),
                    ),
                )
                self.conn.executemany(
                    f"INSERT INTO matches (item_id, {MATCH_COLUMNS}) VALUES ({', '.join('?' * 16)})",
                    [(cur.lastrowid, *match_row(m)) for m in r.matches],
                )
        return [dataclasses.replace(r, scanned_at=now) for r in results]

    def finish(self, run_id: int, status: str = "finished") -> None:
        """Record the end of a run ('finished', or 'interrupted' when it was stopped) with its
        counts."""
        with self.store.write():
            self.conn.execute(
                "UPDATE runs SET finished_at = ?, status = ?,"
                " items = (SELECT count(*) FROM items WHERE run_id = ?),"
                " errors = (SELECT count(*) FROM items WHERE run_id = ? AND status = 'error'),"
                " reused = (SELECT count(*) FROM items WHERE run_id = ? AND reused_from IS NOT NULL),"
                " matched = (SELECT count(DISTINCT items.id) FROM items"
                "            JOIN matches ON matches.item_id = items.id"
                "            WHERE items.run_id = ? AND matches.verdict != 'none')"
                " WHERE id = ?",
                (utc_now(), status, run_id, run_id, run_id, run_id, run_id),
            )

    def mark_killed(self) -> list[int]:
        """Runs still marked 'running' become 'killed'; call only while holding the database
        lock (no live scan can then be running). Returns their ids, for resuming."""
        with self.store.write():
            ids = [int(r[0]) for r in self.conn.execute("SELECT id FROM runs WHERE status = 'running'")]
            self.conn.execute("UPDATE runs SET status = 'killed' WHERE status = 'running'")
        return ids

    def reopen(self, run_id: int) -> None:
        """Mark a killed or interrupted run as running again (it is being resumed)."""
        with self.store.write():
            self.conn.execute(
                "UPDATE runs SET status = 'running', finished_at = NULL WHERE id = ?", (run_id,)
            )

    def runs(self, limit: int | None = None) -> list[RunInfo]:
        """Recorded runs, newest first."""
        sql = _RUN_SELECT + " ORDER BY id DESC" + ("" if limit is None else f" LIMIT {int(limit)}")
        return [_run_info(r) for r in self.conn.execute(sql)]

    def run(self, run_id: int | None = None) -> RunInfo:
        """One run, or the newest when ``run_id`` is None; :class:`NotFound` if there is none."""
        if run_id is None:
            row = self.conn.execute(_RUN_SELECT + " ORDER BY id DESC LIMIT 1").fetchone()
        else:
            row = self.conn.execute(_RUN_SELECT + " WHERE id = ?", (int(run_id),)).fetchone()
        if row is None:
            raise NotFound("no scan run recorded yet" if run_id is None else f"no run {run_id}")
        return _run_info(row)

    def mark_written(self, run_id: int, items: int) -> None:
        """Record that the first ``items`` items of a run reached every output."""
        with self.store.write():
            self.conn.execute("UPDATE runs SET written = ? WHERE id = ?", (int(items), run_id))

    def written(self, run_id: int) -> int:
        """How many of a run's items reached every output (see :meth:`mark_written`)."""
        row = self.conn.execute("SELECT written FROM runs WHERE id = ?", (run_id,)).fetchone()
        return int(row[0]) if row else 0

    def items_of(self, run_id: int, skip: int = 0) -> list[ScanResult]:
        """A run's recorded results in the order it recorded them, after the first ``skip``."""
        ids = self.conn.execute(
            "SELECT id FROM items WHERE run_id = ? ORDER BY id LIMIT -1 OFFSET ?", (run_id, int(skip))
        ).fetchall()
        return [self.item(int(r[0])) for r in ids]

    def count(self) -> int:
        """How many runs are recorded."""
        return int(self.conn.execute("SELECT count(*) FROM runs").fetchone()[0])

    def scanned_paths(self, run_id: int) -> set[str]:
        """Paths a run has recorded already (to resume it)."""
        return {
            from_db(r[0]) or ""
            for r in self.conn.execute("SELECT path FROM items WHERE run_id = ?", (run_id,))
        }

    def reusable_items(self, digests: Iterable[str], state: str) -> dict[str, int]:
        """For content already scanned successfully by a run against the same ``state``: its
        latest item id, by sha256."""
        found: dict[str, int] = {}
        for part, marks in in_chunks(digests):
            for sha, item_id in self.conn.execute(
                "SELECT items.sha256, max(items.id) FROM items JOIN runs ON runs.id = items.run_id"
                f" WHERE runs.state = ? AND items.status = 'ok' AND items.sha256 IN ({marks})"
                " GROUP BY items.sha256",
                [state, *part],
            ):
                found[sha] = int(item_id)
        return found

    def reusable_digests(self, state: str) -> set[str]:
        """The sha256 of all content some run scanned successfully against ``state`` (what
        :meth:`reusable_items` would find), for workers that cannot ask the database."""
        return {
            r[0]
            for r in self.conn.execute(
                "SELECT DISTINCT items.sha256 FROM items JOIN runs ON runs.id = items.run_id"
                " WHERE runs.state = ? AND items.status = 'ok' AND items.sha256 IS NOT NULL",
                (state,),
            )
        }

    def item(self, item_id: int) -> ScanResult:
        """One stored item with its matches, best first; ``reused_from`` is its own id."""
        row = self.conn.execute(
            "SELECT path, sha256, status, error, phash, dhash, metadata, locator, scanned_at"
            " FROM items WHERE id = ?",
            (item_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no scanned item {item_id}")
        matches = tuple(
            match_from_row(m)
            for m in self.conn.execute(
                f"SELECT {MATCH_COLUMNS} FROM matches WHERE item_id = ? ORDER BY score DESC, id",
                (item_id,),
            )
        )
        name = from_db(row[0]) or ""
        return ScanResult(
            query=name,
            status=row[2],
            error=from_db(row[3]),
            matches=matches,
            sha256=row[1],
            phash=None if row[4] is None else from_sqlite(row[4]),
            dhash=None if row[5] is None else from_sqlite(row[5]),
            reused_from=item_id,
            source=item_source(name, row[6], row[7]),
            scanned_at=row[8],
        )


def item_source(name: str, metadata: str | None, locator: str | None) -> Input | None:
    """The input a stored item was read from (None for a plain file with no metadata)."""
    if metadata is None and locator is None:
        return None
    try:
        where = json.loads(locator) if locator else None
    except ValueError:
        where = None
    return Input.located(name, where if isinstance(where, dict) else None, metadata)


def _run_info(row: Sequence[Any]) -> RunInfo:
    try:
        args = json.loads(row[2]) if row[2] else {}
    except ValueError:
        args = {}
    return RunInfo(
        id=int(row[0]),
        command=row[1],
        args=args if isinstance(args, dict) else {},
        started_at=row[3],
        finished_at=row[4],
        status=row[5],
        mode=row[6],
        items=row[7],
        errors=row[8],
        matched=row[9],
        state=row[10],
    )
