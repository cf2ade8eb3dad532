"""SQLite storage through sqlite-utils: catalog images with their codes and descriptors, scan
runs, scanned items and matches, all in one file any SQLite tool can read.

- WAL journal, a busy timeout, and write transactions begun IMMEDIATE (so two processes never
  deadlock upgrading a read lock);
- the schema is versioned with ``PRAGMA user_version`` and upgraded by migrations, each in the
  transaction that bumps the version;
- the ``meta`` table names the hasher and the embedder; a database built with other ones is
  refused rather than silently mixed;
- 64-bit codes are stored as signed int64 (see :func:`detector.hashing.to_sqlite`) and loaded
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

from .errors import IncompatibleDatabase, NotFound, SchemaTooNew, StoreError
from .hashing import from_sqlite

BUSY_TIMEOUT_MS = 60_000


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


# Migration N upgrades a database at schema version N-1 to version N. Append, never edit.
MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (_migrate_1, _migrate_2)
SCHEMA_VERSION = len(MIGRATIONS)


class Store:
    """An open copyscan database. Use :meth:`open`; close with :meth:`close` or ``with``."""

    def __init__(self, conn: sqlite3.Connection, path: Path, hasher: str, embedder: str) -> None:
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self.path = path
        self.hasher = hasher
        self.embedder = embedder

    @classmethod
    def open(cls, path: str | Path, *, hasher: str, embedder: str, create: bool = True) -> Store:
        """Open (and, with ``create``, make) the database at ``path``, upgrade its schema and
        check that it was built with the same hasher and embedder.

        Raises :class:`StoreError` subclasses: missing file without ``create``, a newer schema,
        other hasher/embedder, or a file that is not a SQLite database.
        """
        p = Path(path)
        if not create and not p.exists():
            raise NotFound(f"no database at {p}: index a catalog first (copyscan catalog add)")
        try:
            conn = sqlite3.connect(p, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open database {p}: {e}") from e
        store = cls(conn, p, hasher, embedder)
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
                elif row[0] != ours:
                    raise IncompatibleDatabase(
                        f"{self.path} was built with {key} '{row[0]}', but this copyscan uses "
                        f"'{ours}'; its codes cannot be mixed: use another --db or rebuild the catalog"
                    )

    # --- catalog ---------------------------------------------------------------------------

    def known_sha256(self, digests: Iterable[str]) -> dict[str, int]:
        """Catalog ids of the given content hashes that are already stored."""
        found: dict[str, int] = {}
        batch = list(dict.fromkeys(digests))
        for start in range(0, len(batch), 500):
            part = batch[start : start + 500]
            marks = ",".join("?" * len(part))
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
        with self.write():
            for im in images:
                cur = self.conn.execute(
                    "INSERT INTO catalog"
                    " (sha256, path, owner, width, height, phash, dhash, embedding, added_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(sha256) DO NOTHING",
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
                    ),
                )
                if cur.rowcount == 1 and cur.lastrowid is not None:
                    ids.append(int(cur.lastrowid))
                    self.conn.executemany(
                        "INSERT INTO codes (catalog_id, variant, phash, dhash) VALUES (?, ?, ?, ?)",
                        [(cur.lastrowid, *v) for v in im.variants],
                    )
                else:
                    row = self.conn.execute(
                        "SELECT id FROM catalog WHERE sha256 = ?", (im.sha256,)
                    ).fetchone()
                    ids.append(int(row[0]))
        return ids

    def load_codes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every catalog code in bulk, each image's own and its variants: ids (n,) int64 (an
        id once per code), phash (n,) uint64, dhash (n,) uint64, in id order."""
        rows = self.conn.execute(
            "SELECT id, phash, dhash FROM catalog"
            " UNION ALL SELECT catalog_id, phash, dhash FROM codes ORDER BY 1"
        ).fetchall()
        arr = np.array(rows, dtype=np.int64).reshape(-1, 3)
        return arr[:, 0].copy(), arr[:, 1].view(np.uint64).copy(), arr[:, 2].view(np.uint64).copy()

    def embedding_blobs(self, ids: Sequence[int]) -> dict[int, bytes]:
        """Stored descriptors of the given catalog ids."""
        out: dict[int, bytes] = {}
        uniq = list(dict.fromkeys(int(i) for i in ids))
        for start in range(0, len(uniq), 500):
            part = uniq[start : start + 500]
            marks = ",".join("?" * len(part))
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
        uniq = list(dict.fromkeys(int(i) for i in ids))
        for start in range(0, len(uniq), 500):
            part = uniq[start : start + 500]
            marks = ",".join("?" * len(part))
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
        self, ids: Sequence[int] = (), paths: Sequence[str] = (), owner: str | None = None
    ) -> int:
        """Delete catalog entries by id, by stored path, or by owner; returns how many went.
        Past matches keep the catalog path they recorded."""
        removed = 0
        with self.write():
            for cid in ids:
                removed += self.conn.execute("DELETE FROM catalog WHERE id = ?", (int(cid),)).rowcount
            for path in paths:
                removed += self.conn.execute("DELETE FROM catalog WHERE path = ?", (path,)).rowcount
            if owner is not None:
                removed += self.conn.execute("DELETE FROM catalog WHERE owner = ?", (owner,)).rowcount
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

    # --- scan history ----------------------------------------------------------------------

    def start_run(self, command: str, args: dict[str, Any]) -> int:
        """Record the start of a scan; returns the run id."""
        with self.write():
            cur = self.conn.execute(
                "INSERT INTO runs (command, args, started_at) VALUES (?, ?, ?)",
                (command, json.dumps(args, sort_keys=True), utc_now()),
            )
        if cur.lastrowid is None:
            raise StoreError("could not record the run")
        return int(cur.lastrowid)

    def record_items(self, run_id: int, items: Sequence[RecordedItem]) -> None:
        """Store scanned items and their matches in one transaction."""
        with self.write():
            for item in items:
                cur = self.conn.execute(
                    "INSERT INTO items (run_id, path, sha256, status, error, phash, dhash)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (run_id, item.path, item.sha256, item.status, item.error, item.phash, item.dhash),
                )
                item_id = cur.lastrowid
                self.conn.executemany(
                    "INSERT INTO matches (item_id, catalog_id, catalog_path, hamming, cosine, score, verdict)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(item_id, *m) for m in item.matches],
                )

    def finish_run(self, run_id: int) -> None:
        """Record the end of a run with its counts."""
        with self.write():
            self.conn.execute(
                "UPDATE runs SET finished_at = ?,"
                " items = (SELECT count(*) FROM items WHERE run_id = ?),"
                " errors = (SELECT count(*) FROM items WHERE run_id = ? AND status = 'error'),"
                " matched = (SELECT count(DISTINCT items.id) FROM items"
                "            JOIN matches ON matches.item_id = items.id"
                "            WHERE items.run_id = ? AND matches.verdict != 'none')"
                " WHERE id = ?",
                (utc_now(), run_id, run_id, run_id, run_id),
            )


@dataclass(frozen=True)
class RecordedItem:
    """One scanned item as stored: codes are signed int64 or None; each match is
    ``(catalog_id, catalog_path, hamming, cosine, score, verdict)``."""

    path: str
    sha256: str | None
    status: str
    error: str | None
    phash: int | None
    dhash: int | None
    matches: tuple[tuple[int, str, int | None, float | None, float, str], ...]
