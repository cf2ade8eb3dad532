"""SQLite storage through sqlite-utils: catalog images with their codes and descriptors, scan
runs, scanned items and matches, all in one file any SQLite tool can read.

- WAL journal, a busy timeout, and write transactions begun IMMEDIATE (so two processes never
  deadlock upgrading a read lock);
- the schema is versioned with ``PRAGMA user_version`` and upgraded by migrations, each in the
  transaction that bumps the version;
- the ``meta`` table names the hasher and the embedder; a database built with other ones is
  refused rather than silently mixed;
- 64-bit codes are stored as signed int64 (see :func:`detector.stage1.hashing.to_sqlite`) and loaded
  into numpy in bulk.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils

from detector.errors import IncompatibleDatabase, NotFound, SchemaTooNew, StoreError
from detector.outputs.report import Region, Report, ReportRow, RunInfo
from detector.stage1.hashing import from_sqlite

BUSY_TIMEOUT_MS = 60_000
_LOAD_ROWS = 65_536  # catalog codes fetched from SQLite at a time


def utc_now() -> str:
    """The current time as ISO 8601 UTC with seconds, as stored in every timestamp column."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class CatalogEntry:
    """One catalog image as stored. Codes are unsigned 64-bit ints."""

    id: int
    path: str
    owner: str | None
    sha256: str
    width: int
    height: int
    phash: int
    dhash: int
    added_at: str


@dataclass(frozen=True)
class NewCatalogImage:
    """What :meth:`Store.add_catalog_images` needs to insert one catalog image."""

    path: str
    owner: str | None
    sha256: str
    width: int
    height: int
    phash: int  # signed int64, see hashing.to_sqlite
    dhash: int
    embedding: bytes
    variants: tuple[tuple[str, int, int], ...] = ()  # (name, phash, dhash) extra codes, signed
    external_id: str | None = None  # the caller's own id for it (added over HTTP)


@dataclass(frozen=True)
class CatalogStats:
    """Counts for ``catalog stats``."""

    images: int
    owners: dict[str, int]
    runs: int
    hasher: str
    embedder: str
    schema_version: int
    file_bytes: int


def _migrate_1(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key", not_null={"value"})
    db.table("catalog").create(
        {
            "id": int,
            "sha256": str,
            "path": str,
            "owner": str,
            "width": int,
            "height": int,
            "phash": int,
            "dhash": int,
            "embedding": bytes,
            "added_at": str,
        },
        pk="id",
        not_null={"sha256", "path", "width", "height", "phash", "dhash", "embedding", "added_at"},
    )
    db.table("catalog").create_index(["sha256"], unique=True)
    db.table("catalog").create_index(["owner"])
    db.table("runs").create(
        {
            "id": int,
            "command": str,
            "args": str,
            "started_at": str,
            "finished_at": str,
            "items": int,
            "errors": int,
            "matched": int,
        },
        pk="id",
        not_null={"command", "args", "started_at"},
    )
    db.table("items").create(
        {
            "id": int,
            "run_id": int,
            "path": str,
            "sha256": str,
            "status": str,
            "error": str,
            "phash": int,
            "dhash": int,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
        not_null={"run_id", "path", "status"},
    )
    db.table("items").create_index(["run_id"])
    db.table("items").create_index(["sha256"])
    db.table("matches").create(
        {
            "id": int,
            "item_id": int,
            "catalog_id": int,
            "catalog_path": str,
            "hamming": int,
            "cosine": float,
            "score": float,
            "verdict": str,
        },
        pk="id",
        foreign_keys=[("item_id", "items", "id")],
        not_null={"item_id", "catalog_id", "score", "verdict"},
    )
    db.table("matches").create_index(["item_id"])
    db.table("matches").create_index(["catalog_id"])


def _migrate_2(db: sqlite_utils.Database) -> None:
    # Extra stage-1 codes of a catalog image (its content box, ...), searched beside its own.
    db.execute(
        "CREATE TABLE codes ("
        " id INTEGER PRIMARY KEY,"
        " catalog_id INTEGER NOT NULL REFERENCES catalog(id) ON DELETE CASCADE,"
        " variant TEXT NOT NULL,"
        " phash INTEGER NOT NULL,"
        " dhash INTEGER NOT NULL)"
    )
    db.execute("CREATE INDEX codes_catalog_id ON codes (catalog_id)")
    db.execute("CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL, set_at TEXT NOT NULL)")


def _migrate_3(db: sqlite_utils.Database) -> None:
    # Scan history that a cron job can resume and report from: the run's status, mode and the
    # catalog-and-settings state it scanned against; when each item was scanned and which
    # earlier item it reused; each match's owner and stage-3 evidence.
    for sql in (
        "ALTER TABLE runs ADD COLUMN status TEXT NOT NULL DEFAULT 'finished'",
        "ALTER TABLE runs ADD COLUMN mode TEXT",
        "ALTER TABLE runs ADD COLUMN state TEXT",
        "ALTER TABLE runs ADD COLUMN reused INTEGER",
        "ALTER TABLE items ADD COLUMN scanned_at TEXT",
        "ALTER TABLE items ADD COLUMN reused_from INTEGER",
        "ALTER TABLE matches ADD COLUMN owner TEXT",
        "ALTER TABLE matches ADD COLUMN transform TEXT",
        "ALTER TABLE matches ADD COLUMN inliers INTEGER",
        "ALTER TABLE matches ADD COLUMN query_region TEXT",
        "ALTER TABLE matches ADD COLUMN catalog_region TEXT",
        "UPDATE runs SET status = 'killed' WHERE finished_at IS NULL",
        "CREATE INDEX runs_state ON runs (state)",
        "CREATE INDEX items_run_path ON items (run_id, path)",
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('catalog_generation', '0')",
    ):
        db.execute(sql)


def _migrate_5(db: sqlite_utils.Database) -> None:
    # Scans load every catalog code at start: a covering index lets SQLite read them without
    # the rows' 2.5 kB descriptors (a million-image catalog: 0.5 s instead of 1.7 s warm, and
    # 70 MB read instead of 2.7 GB cold).
    db.execute("CREATE INDEX catalog_codes ON catalog (phash, dhash)")


def _migrate_6(db: sqlite_utils.Database) -> None:
    # ``catalog rehash``: a new hasher's codes are staged here, batch by batch (a killed run
    # goes on), and swapped in for the old ones in one transaction at the end.
    db.execute(
        "CREATE TABLE rehash_codes ("
        " catalog_id INTEGER PRIMARY KEY REFERENCES catalog(id) ON DELETE CASCADE,"
        " hasher TEXT NOT NULL,"
        " phash INTEGER NOT NULL,"
        " dhash INTEGER NOT NULL,"
        " variants TEXT NOT NULL)"
    )


def _migrate_4(db: sqlite_utils.Database) -> None:
    # Moderation at upload time: catalog images added over HTTP carry the caller's own id, and
    # every flagged check waits in ``checks`` for a moderator's decision.
    for sql in (
        "ALTER TABLE catalog ADD COLUMN external_id TEXT",
        "CREATE INDEX catalog_external_id ON catalog (external_id)",
        "CREATE TABLE checks ("
        " id INTEGER PRIMARY KEY,"
        " checked_at TEXT NOT NULL,"
        " sha256 TEXT,"
        " name TEXT,"
        " upload_path TEXT,"
        " status TEXT NOT NULL,"
        " error TEXT,"
        " verdict TEXT NOT NULL,"
        " result TEXT NOT NULL,"
        " decision TEXT,"
        " decided_at TEXT,"
        " note TEXT)",
        "CREATE INDEX checks_verdict ON checks (verdict, id)",
    ):
        db.execute(sql)


# Migration N upgrades a database at schema version N-1 to version N. Append, never edit.
MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (
    _migrate_1,
    _migrate_2,
    _migrate_3,
    _migrate_4,
    _migrate_5,
    _migrate_6,
)
SCHEMA_VERSION = len(MIGRATIONS)


class Store:
    """An open copyscan database. Use :meth:`open`; close with :meth:`close` or ``with``."""

    def __init__(self, conn: sqlite3.Connection, path: Path, hasher: str, embedder: str) -> None:
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self.path = path
        self.hasher = hasher
        self.embedder = embedder
        self._rehashing = False

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        hasher: str,
        embedder: str,
        create: bool = True,
        shared: bool = False,
        rehashing: bool = False,
    ) -> Store:
        """Open (and, with ``create``, make) the database at ``path``, upgrade its schema and
        check that it was built with the same hasher and embedder. ``shared``: the connection
        may be used from several threads, one at a time (the caller serialises them).
        ``rehashing``: another hasher is accepted, for :mod:`detector.tasks.rehashing` to replace
        its codes (:attr:`stored_hasher` names it).

        Raises :class:`StoreError` subclasses: missing file without ``create``, a newer schema,
        other hasher/embedder, or a file that is not a SQLite database.
        """
        p = Path(path)
        if not create and not p.exists():
            raise NotFound(f"no database at {p}: index a catalog first (copyscan catalog add)")
        try:
            conn = sqlite3.connect(
                p, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=not shared
            )
        except sqlite3.Error as e:
            raise StoreError(f"cannot open database {p}: {e}") from e
        store = cls(conn, p, hasher, embedder)
        store._rehashing = rehashing
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            store._upgrade_and_check()
        except sqlite3.DatabaseError as e:
            conn.close()
            raise StoreError(f"{p} is not a usable copyscan database: {e}") from e
        except StoreError:
            conn.close()
            raise
        return store

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def write(self) -> Iterator[sqlite_utils.Database]:
        """A write transaction begun IMMEDIATE: it takes the write lock up front (waiting up to
        the busy timeout) and commits at the end of the block, or rolls back on error."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read transaction: every query inside sees the same database state."""
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    def _upgrade_and_check(self) -> None:
        with self.write() as db:
            version = int(self.conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"{self.path} has schema version {version}; this copyscan knows up to "
                    f"{SCHEMA_VERSION}: upgrade copyscan"
                )
            for migrate in MIGRATIONS[version:]:
                migrate(db)
            if version < SCHEMA_VERSION:
                self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            for key, ours in (("hasher", self.hasher), ("embedder", self.embedder)):
                row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
                if row is None:
                    self.conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, ours))
                elif row[0] != ours and key == "hasher" and self._rehashing:
                    continue
                elif row[0] != ours:
                    raise IncompatibleDatabase(
                        f"{self.path} was built with {key} '{row[0]}', but this copyscan uses "
                        f"'{ours}'; its codes cannot be mixed: "
                        + (
                            "copyscan catalog rehash recomputes them from the catalog files"
                            if key == "hasher"
                            else "use another --db or rebuild the catalog"
                        )
                    )

    # --- rehashing (a new hasher's codes for every catalog image) -----------------------------

    @property
    def stored_hasher(self) -> str:
        """The hasher the catalog's codes were made with (other than :attr:`hasher` only in a
        store opened ``rehashing``)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'hasher'").fetchone()
        return str(row[0]) if row else self.hasher

    def rehashed_ids(self) -> set[int]:
        """Catalog ids whose new codes are staged already (a killed rehash goes on from here)."""
        rows = self.conn.execute("SELECT catalog_id FROM rehash_codes WHERE hasher = ?", (self.hasher,))
        return {int(r[0]) for r in rows}

    def stage_rehash(self, rows: Sequence[tuple[int, int, int, tuple[tuple[str, int, int], ...]]]) -> None:
        """Stage new codes, ``(catalog_id, phash, dhash, variants)`` signed as stored, in one
        transaction; the catalog is untouched until :meth:`apply_rehash`."""
        with self.write():
            self.conn.executemany(
                "INSERT OR REPLACE INTO rehash_codes (catalog_id, hasher, phash, dhash, variants)"
                " VALUES (?, ?, ?, ?, ?)",
                [(cid, self.hasher, p, d, json.dumps(v)) for cid, p, d, v in rows],
            )

    def apply_rehash(self) -> int:
        """Replace every catalog image's codes by its staged ones and record this hasher, in
        one transaction. Refused while a catalog image has none staged. Returns the images."""
        with self.write():
            missing = self.conn.execute(
                "SELECT count(*) FROM catalog WHERE id NOT IN"
                " (SELECT catalog_id FROM rehash_codes WHERE hasher = ?)",
                (self.hasher,),
            ).fetchone()[0]
            if missing:
                raise StoreError(f"{missing} catalog images have no new codes yet: the hasher stays")
            staged = self.conn.execute(
                "SELECT catalog_id, phash, dhash, variants FROM rehash_codes WHERE hasher = ?"
                " AND catalog_id IN (SELECT id FROM catalog)",
                (self.hasher,),
            ).fetchall()
            self.conn.executemany(
                "UPDATE catalog SET phash = ?, dhash = ? WHERE id = ?",
                [(p, d, cid) for cid, p, d, _ in staged],
            )
            self.conn.execute("DELETE FROM codes")
            self.conn.executemany(
                "INSERT INTO codes (catalog_id, variant, phash, dhash) VALUES (?, ?, ?, ?)",
                [(cid, *v) for cid, _, _, vs in staged for v in json.loads(vs)],
            )
            self.conn.execute("DELETE FROM rehash_codes")
            self.conn.execute("UPDATE meta SET value = ? WHERE key = 'hasher'", (self.hasher,))
            self._bump_generation()
        return len(staged)

    # --- catalog ---------------------------------------------------------------------------

    def known_sha256(self, digests: Iterable[str]) -> dict[str, int]:
        """Catalog ids of the given content hashes that are already stored."""
        found: dict[str, int] = {}
        for part, marks in _chunks(digests):
            for sha, cid in self.conn.execute(
                f"SELECT sha256, id FROM catalog WHERE sha256 IN ({marks})", part
            ):
                found[sha] = int(cid)
        return found

    def add_catalog_images(self, images: Sequence[NewCatalogImage]) -> list[int]:
        """Insert catalog images in one transaction; returns their ids in order. Content
        already present (by sha256) keeps its first entry and returns that id."""
        now = utc_now()
        ids: list[int] = []
        added = False
        with self.write():
            for im in images:
                cur = self.conn.execute(
                    "INSERT INTO catalog (sha256, path, owner, width, height, phash, dhash,"
                    " embedding, added_at, external_id)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(sha256) DO NOTHING",
                    (
                        im.sha256,
                        im.path,
                        im.owner,
                        im.width,
                        im.height,
                        im.phash,
                        im.dhash,
                        im.embedding,
                        now,
                        im.external_id,
                    ),
                )
                if cur.rowcount == 1 and cur.lastrowid is not None:
                    ids.append(int(cur.lastrowid))
                    self.conn.executemany(
                        "INSERT INTO codes (catalog_id, variant, phash, dhash) VALUES (?, ?, ?, ?)",
                        [(cur.lastrowid, *v) for v in im.variants],
                    )
                    added = True
                else:
                    row = self.conn.execute(
                        "SELECT id FROM catalog WHERE sha256 = ?", (im.sha256,)
                    ).fetchone()
                    ids.append(int(row[0]))
            if added:
                self._bump_generation()
        return ids

    def _bump_generation(self) -> None:
        self.conn.execute(
            "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'catalog_generation'"
        )

    def catalog_generation(self) -> int:
        """A number that changes whenever catalog images are added or removed: scan results
        are reused only against the same generation."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'catalog_generation'").fetchone()
        return int(row[0]) if row else 0

    def load_codes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every catalog code in bulk, each image's own and its variants: ids (n,) int64 (an
        id once per code), phash (n,) uint64, dhash (n,) uint64, in id order (an image's own
        code first). Read in chunks (a million images' codes never exist as Python tuples all
        at once) and sorted here, not by SQLite; the catalog's own codes come from a covering
        index, so its descriptors are not read."""
        parts = []
        for sql in ("SELECT id, phash, dhash FROM catalog", "SELECT catalog_id, phash, dhash FROM codes"):
            cursor = self.conn.execute(sql)
            while rows := cursor.fetchmany(_LOAD_ROWS):
                parts.append(np.array(rows, dtype=np.int64))
        arr = np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.int64)
        arr = arr[np.argsort(arr[:, 0], kind="stable")]
        return arr[:, 0].copy(), arr[:, 1].view(np.uint64).copy(), arr[:, 2].view(np.uint64).copy()

    def embedding_blobs(self, ids: Sequence[int]) -> dict[int, bytes]:
        """Stored descriptors of the given catalog ids."""
        out: dict[int, bytes] = {}
        for part, marks in _chunks(int(i) for i in ids):
            for cid, blob in self.conn.execute(
                f"SELECT id, embedding FROM catalog WHERE id IN ({marks})", part
            ):
                out[int(cid)] = bytes(blob)
        return out

    def all_embedding_blobs(self) -> tuple[np.ndarray, list[bytes]]:
        """Every stored descriptor: ids (n,) int64 and their blobs, in id order."""
        rows = self.conn.execute("SELECT id, embedding FROM catalog ORDER BY id").fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64), [bytes(r[1]) for r in rows]

    def catalog_entries(self, ids: Sequence[int]) -> dict[int, CatalogEntry]:
        """Catalog entries by id (missing ids are left out)."""
        out: dict[int, CatalogEntry] = {}
        for part, marks in _chunks(int(i) for i in ids):
            for entry in self._entries(f"WHERE id IN ({marks})", part):
                out[entry.id] = entry
        return out

    def list_catalog(self, owner: str | None = None) -> Iterator[CatalogEntry]:
        """Catalog entries in id order, optionally of one owner."""
        if owner is None:
            yield from self._entries("ORDER BY id", [])
        else:
            yield from self._entries("WHERE owner = ? ORDER BY id", [owner])

    def _entries(self, where: str, params: Sequence[Any]) -> Iterator[CatalogEntry]:
        sql = "SELECT id, path, owner, sha256, width, height, phash, dhash, added_at FROM catalog " + where
        for row in self.conn.execute(sql, list(params)):
            yield CatalogEntry(
                id=int(row[0]),
                path=row[1],
                owner=row[2],
                sha256=row[3],
                width=int(row[4]),
                height=int(row[5]),
                phash=from_sqlite(int(row[6])),
                dhash=from_sqlite(int(row[7])),
                added_at=row[8],
            )

    def remove_catalog(
        self,
        ids: Sequence[int] = (),
        paths: Sequence[str] = (),
        owner: str | None = None,
        external_ids: Sequence[str] = (),
    ) -> int:
        """Delete catalog entries by id, by stored path, by owner or by external id; returns
        how many went.
        Past matches keep the catalog path they recorded."""
        removed = 0
        with self.write():
            for cid in ids:
                removed += self.conn.execute("DELETE FROM catalog WHERE id = ?", (int(cid),)).rowcount
            for path in paths:
                removed += self.conn.execute("DELETE FROM catalog WHERE path = ?", (path,)).rowcount
            if owner is not None:
                removed += self.conn.execute("DELETE FROM catalog WHERE owner = ?", (owner,)).rowcount
            for ext in external_ids:
                removed += self.conn.execute("DELETE FROM catalog WHERE external_id = ?", (ext,)).rowcount
            if removed:
                self._bump_generation()
        return removed

    def stats(self) -> CatalogStats:
        """Counts of the catalog and of the runs."""
        images = int(self.conn.execute("SELECT count(*) FROM catalog").fetchone()[0])
        owners = {
            (o if o is not None else ""): int(n)
            for o, n in self.conn.execute(
                "SELECT owner, count(*) FROM catalog GROUP BY owner ORDER BY count(*) DESC, owner"
            )
        }
        runs = int(self.conn.execute("SELECT count(*) FROM runs").fetchone()[0])
        version = int(self.conn.execute("PRAGMA user_version").fetchone()[0])
        size = sum(f.stat().st_size for f in (self.path, Path(f"{self.path}-wal")) if f.exists())
        return CatalogStats(images, owners, runs, self.hasher, self.embedder, version, size)

    # --- calibrated settings ----------------------------------------------------------------

    def stored_settings(self) -> dict[str, str]:
        """Settings saved in this database (by ``evaluate --calibrate``): name -> value text."""
        return dict(self.conn.execute("SELECT name, value FROM settings ORDER BY name"))

    def save_settings(self, values: dict[str, object]) -> None:
        """Save settings that every later command on this database uses by default."""
        now = utc_now()
        with self.write():
            self.conn.executemany(
                "INSERT INTO settings (name, value, set_at) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET value = excluded.value, set_at = excluded.set_at",
                [(name, str(value), now) for name, value in values.items()],
            )

    # --- checks awaiting review (copyscan serve) --------------------------------------------

    def record_check(self, check: NewCheck) -> int:
        """Store one checked upload with its result; returns its id."""
        with self.write():
            cur = self.conn.execute(
                "INSERT INTO checks (checked_at, sha256, name, upload_path, status, error, verdict, result)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    utc_now(),
                    check.sha256,
                    check.name,
                    check.upload_path,
                    check.status,
                    check.error,
                    check.verdict,
                    json.dumps(check.result, ensure_ascii=False),
                ),
            )
        if cur.lastrowid is None:
            raise StoreError("could not record the check")
        return int(cur.lastrowid)

    def checks(self, limit: int = 50, flagged_only: bool = True) -> list[CheckRecord]:
        """Recent checks, newest first; with ``flagged_only`` those a copy or a near-duplicate
        was found for."""
        where = "WHERE verdict != 'none'" if flagged_only else ""
        return [
            _check(row)
            for row in self.conn.execute(f"{_CHECK_SELECT} {where} ORDER BY id DESC LIMIT ?", (int(limit),))
        ]

    def check(self, check_id: int) -> CheckRecord:
        """One recorded check; :class:`NotFound` if there is none."""
        row = self.conn.execute(f"{_CHECK_SELECT} WHERE id = ?", (int(check_id),)).fetchone()
        if row is None:
            raise NotFound(f"no check {check_id}")
        return _check(row)

    def decide(self, check_id: int, decision: str, note: str | None = None) -> CheckRecord:
        """Store a moderator's decision ('confirmed' or 'dismissed') on a check."""
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}")
        with self.write():
            cur = self.conn.execute(
                "UPDATE checks SET decision = ?, decided_at = ?, note = ? WHERE id = ?",
                (decision, utc_now(), note, int(check_id)),
            )
        if cur.rowcount != 1:
            raise NotFound(f"no check {check_id}")
        return self.check(check_id)

    def external_ids(self, ids: Sequence[int]) -> dict[int, str]:
        """External ids of the given catalog ids (those that have one)."""
        out: dict[int, str] = {}
        for part, marks in _chunks(int(i) for i in ids):
            for cid, ext in self.conn.execute(
                f"SELECT id, external_id FROM catalog WHERE external_id IS NOT NULL AND id IN ({marks})",
                part,
            ):
                out[int(cid)] = ext
        return out

    # --- scan history ----------------------------------------------------------------------

    def start_run(
        self, command: str, args: dict[str, Any], mode: str | None = None, state: str | None = None
    ) -> int:
        """Record the start of a scan; returns the run id. ``state`` fingerprints the catalog
        and settings it scans against (see :attr:`detector.scan.scanner.Scanner.state`)."""
        with self.write():
            cur = self.conn.execute(
                "INSERT INTO runs (command, args, started_at, status, mode, state)"
                " VALUES (?, ?, ?, 'running', ?, ?)",
                (command, json.dumps(args, sort_keys=True), utc_now(), mode, state),
            )
        if cur.lastrowid is None:
            raise StoreError("could not record the run")
        return int(cur.lastrowid)

    def record_items(self, run_id: int, items: Sequence[RecordedItem]) -> None:
        """Store scanned items and their matches in one transaction: a killed run keeps every
        batch it recorded and nothing of the batch it was in."""
        now = utc_now()
        with self.write():
            for item in items:
                cur = self.conn.execute(
                    "INSERT INTO items"
                    " (run_id, path, sha256, status, error, phash, dhash, scanned_at, reused_from)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_id,
                        item.path,
                        item.sha256,
                        item.status,
                        item.error,
                        item.phash,
                        item.dhash,
                        now,
                        item.reused_from,
                    ),
                )
                item_id = cur.lastrowid
                self.conn.executemany(
                    "INSERT INTO matches (item_id, catalog_id, catalog_path, owner, hamming, cosine, score,"
                    " verdict, transform, inliers, query_region, catalog_region)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(item_id, *m.row()) for m in item.matches],
                )

    def finish_run(self, run_id: int, status: str = "finished") -> None:
        """Record the end of a run ('finished', or 'interrupted' when stopped by a signal)
        with its counts."""
        with self.write():
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
        with self.write():
            ids = [int(r[0]) for r in self.conn.execute("SELECT id FROM runs WHERE status = 'running'")]
            self.conn.execute("UPDATE runs SET status = 'killed' WHERE status = 'running'")
        return ids

    def reopen_run(self, run_id: int) -> None:
        """Mark a killed or interrupted run as running again (it is being resumed)."""
        with self.write():
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

    def scanned_paths(self, run_id: int) -> set[str]:
        """Paths a run has recorded already (to resume it)."""
        return {r[0] for r in self.conn.execute("SELECT path FROM items WHERE run_id = ?", (run_id,))}

    def reusable_items(self, digests: Iterable[str], state: str) -> dict[str, int]:
        """For content already scanned successfully by a run against the same ``state``: its
        latest item id, by sha256."""
        found: dict[str, int] = {}
        for part, marks in _chunks(digests):
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

    def recorded_item(self, item_id: int) -> RecordedItem:
        """One stored item with its matches, best first."""
        row = self.conn.execute(
            "SELECT path, sha256, status, error, phash, dhash FROM items WHERE id = ?", (item_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no scanned item {item_id}")
        matches = tuple(
            RecordedMatch(
                catalog_id=int(m[0]),
                catalog_path=m[1],
                owner=m[2],
                hamming=m[3],
                cosine=m[4],
                score=float(m[5]),
                verdict=m[6],
                transform=m[7],
                inliers=m[8],
                query_region=_region(m[9]),
                catalog_region=_region(m[10]),
            )
            for m in self.conn.execute(
                "SELECT catalog_id, catalog_path, owner, hamming, cosine, score, verdict, transform,"
                " inliers, query_region, catalog_region FROM matches WHERE item_id = ?"
                " ORDER BY score DESC, catalog_id",
                (item_id,),
            )
        )
        return RecordedItem(row[0], row[1], row[2], row[3], row[4], row[5], matches, item_id)

    def load_report(self, run_id: int | None = None, new_only: bool = False) -> Report:
        """A run's flagged pairs with their evidence, best first (see :class:`Report`).
        A pair is new when no earlier run flagged the same content against the same catalog
        image."""
        run = self.run(run_id)
        prev = self.conn.execute(
            "SELECT max(id) FROM runs WHERE id < ? AND status = 'finished'", (run.id,)
        ).fetchone()[0]
        rows = []
        for r in self.conn.execute(
            "SELECT items.id, items.path, items.sha256, coalesce(items.scanned_at, runs.started_at),"
            " m.catalog_id, m.catalog_path, coalesce(m.owner, catalog.owner), m.score, m.verdict,"
            " m.cosine, m.hamming, m.transform, m.inliers, m.query_region, m.catalog_region,"
            " NOT EXISTS (SELECT 1 FROM matches m2 JOIN items i2 ON i2.id = m2.item_id"
            "             WHERE i2.run_id < items.run_id AND i2.sha256 = items.sha256"
            "             AND m2.catalog_id = m.catalog_id AND m2.verdict != 'none')"
            " FROM matches m JOIN items ON items.id = m.item_id JOIN runs ON runs.id = items.run_id"
            " LEFT JOIN catalog ON catalog.id = m.catalog_id"
            " WHERE items.run_id = ? AND m.verdict != 'none'"
            " ORDER BY m.score DESC, items.id, m.catalog_id",
            (run.id,),
        ):
            new = bool(r[15])
            if new_only and not new:
                continue
            rows.append(
                ReportRow(
                    run_id=run.id,
                    item_id=int(r[0]),
                    query_path=r[1],
                    query_sha256=r[2],
                    scanned_at=r[3],
                    catalog_id=int(r[4]),
                    catalog_path=r[5] or "",
                    owner=r[6],
                    score=float(r[7]),
                    verdict=r[8],
                    cosine=r[9],
                    hamming=r[10],
                    transform=r[11],
                    inliers=r[12],
                    query_region=_region(r[13]),
                    catalog_region=_region(r[14]),
                    new=new,
                )
            )
        return Report(run, tuple(rows), new_only, prev, utc_now())


def _chunks(values: Iterable[Any], size: int = 500) -> Iterator[tuple[list[Any], str]]:
    """Distinct values in chunks small enough for one ``IN (...)`` clause, each with its
    ``?,?,...`` placeholders."""
    uniq = list(dict.fromkeys(values))
    for start in range(0, len(uniq), size):
        part = uniq[start : start + size]
        yield part, ",".join("?" * len(part))


DECISIONS = ("confirmed", "dismissed")
_CHECK_SELECT = (
    "SELECT id, checked_at, sha256, name, upload_path, status, error, verdict, result,"
    " decision, decided_at, note FROM checks"
)


@dataclass(frozen=True)
class NewCheck:
    """What :meth:`Store.record_check` stores: ``result`` is the JSON record of the check
    (as ``scan`` writes it), ``upload_path`` where the uploaded bytes were kept (if they were)."""

    sha256: str | None
    name: str | None
    upload_path: str | None
    status: str
    error: str | None
    verdict: str
    result: dict[str, Any]


@dataclass(frozen=True)
class CheckRecord:
    """A stored check with the moderator's decision (None until one is taken)."""

    id: int
    checked_at: str
    sha256: str | None
    name: str | None
    upload_path: str | None
    status: str
    error: str | None
    verdict: str
    result: dict[str, Any]
    decision: str | None
    decided_at: str | None
    note: str | None


def _check(row: Sequence[Any]) -> CheckRecord:
    try:
        result = json.loads(row[8])
    except ValueError:
        result = {}
    return CheckRecord(
        int(row[0]),
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        result if isinstance(result, dict) else {},
        row[9],
        row[10],
        row[11],
    )


_RUN_SELECT = (
    "SELECT id, command, args, started_at, finished_at, status, mode, items, errors, matched, state FROM runs"
)


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


def _region(text: str | None) -> Region | None:
    """A polygon stored as JSON ``[[x, y], ...]``; None for none or for text that is not one."""
    if not text:
        return None
    try:
        points = json.loads(text)
        return tuple((float(x), float(y)) for x, y in points)
    except (ValueError, TypeError):
        return None


def region_json(region: Region | None) -> str | None:
    """A polygon as compact JSON text for the database."""
    return None if region is None else json.dumps([list(p) for p in region], separators=(",", ":"))


@dataclass(frozen=True)
class RecordedMatch:
    """One match as stored, with its stage-3 evidence."""

    catalog_id: int
    catalog_path: str
    owner: str | None
    hamming: int | None
    cosine: float | None
    score: float
    verdict: str
    transform: str | None = None
    inliers: int | None = None
    query_region: Region | None = None
    catalog_region: Region | None = None

    def row(self) -> tuple[Any, ...]:
        """Values in the column order of the ``matches`` insert."""
        return (
            self.catalog_id,
            self.catalog_path,
            self.owner,
            self.hamming,
            self.cosine,
            self.score,
            self.verdict,
            self.transform,
            self.inliers,
            region_json(self.query_region),
            region_json(self.catalog_region),
        )


@dataclass(frozen=True)
class RecordedItem:
    """One scanned item as stored: codes are signed int64 or None; ``reused_from`` is the id
    of the earlier item whose results it repeats (same content, same catalog and settings)
    when it was not scanned again; when loaded, ``reused_from`` is the item's own id."""

    path: str
    sha256: str | None
    status: str
    error: str | None
    phash: int | None
    dhash: int | None
    matches: tuple[RecordedMatch, ...]
    reused_from: int | None = None
