"""SQLite storage through sqlite-utils: one file any SQLite tool can read, split by concern.

:class:`Store` opens the file and holds the connection; each table family has its own small
class, reached from the store: ``store.catalog`` (:mod:`detector.storage.catalog`),
``store.history`` (runs, items, matches: :mod:`detector.storage.history`), ``store.reports``,
``store.checks``, ``store.saved_settings`` and ``store.rehash``.

- WAL journal, a busy timeout, and write transactions begun IMMEDIATE (so two processes never
  deadlock upgrading a read lock);
- the schema is versioned with ``PRAGMA user_version`` and upgraded by the migrations of
  :mod:`detector.storage.schema`, each in the transaction that bumps the version;
- the ``meta`` table names the hasher and the embedder; a database built with other ones is
  refused rather than silently mixed;
- 64-bit codes are stored as signed int64 (see :func:`detector.stage1.hashing.to_sqlite`) and
  loaded into numpy in bulk.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from detector.errors import (
    DamagedDatabase,
    IncompatibleDatabase,
    NotCopyscanDatabase,
    NotFound,
    SchemaTooNew,
    StoreError,
)
from detector.storage.catalog import CatalogTable
from detector.storage.checks import Checks
from detector.storage.history import History
from detector.storage.rehash import RehashTable
from detector.storage.reports import Reports
from detector.storage.saved_settings import SavedSettings
from detector.storage.schema import MIGRATIONS, SCHEMA_VERSION, TABLES

BUSY_TIMEOUT_MS = 60_000


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


class Store:
    """An open copyscan database. Use :meth:`open`; close with :meth:`close` or ``with``."""

    def __init__(self, conn: sqlite3.Connection, path: Path, hasher: str, embedder: str) -> None:
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self.path = path
        self.hasher = hasher
        self.embedder = embedder
        self.catalog = CatalogTable(self)
        self.history = History(self)
        self.reports = Reports(self)
        self.checks = Checks(self)
        self.saved_settings = SavedSettings(self)
        self.rehash = RehashTable(self)

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
        readonly: bool = False,
    ) -> Store:
        """Open (and, with ``create``, make) the database at ``path``, upgrade its schema and
        check that it was built with the same hasher and embedder. ``shared``: the connection
        may be used from several threads, one at a time (the caller serialises them).
        ``rehashing``: another hasher is accepted, for :mod:`detector.tasks.rehashing` to
        replace its codes (``store.rehash.stored_hasher`` names it). ``readonly``: for
        readers; nothing is written, so a database on read-only storage can be read (it must
        be at this copyscan's schema version).

        Raises :class:`StoreError` subclasses: missing file without ``create``, a newer schema,
        other hasher/embedder, a SQLite database of another program (nothing is written into
        it), a damaged one, or a file that is not a SQLite database.
        """
        p = Path(path)
        if (readonly or not create) and not p.exists():
            raise NotFound(f"no database at {p}: index a catalog first (copyscan catalog add)")
        if p.is_dir():
            raise StoreError(f"{p} is a folder, not a database file")
        try:
            conn = _connect(p, readonly, shared)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open database {p}: {e}") from e
        store = cls(conn, p, hasher, embedder)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            store._refuse_foreign()
            if readonly:
                store._check_identity(rehashing)
            else:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                store._upgrade_and_check(rehashing)
            store._check_tables()
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
        the busy timeout) and commits at the end of the block, or rolls back on error. A
        database that cannot be written (full disk, read-only storage) raises
        :class:`StoreError` and keeps what it held."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise StoreError(f"cannot write to {self.path}: {e}") from e
        try:
            yield self.db
        except BaseException:
            _rollback(self.conn)
            raise
        try:
            self.conn.execute("COMMIT")
        except sqlite3.OperationalError as e:
            _rollback(self.conn)
            raise StoreError(f"cannot write to {self.path}: {e}") from e

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read transaction: every query inside sees the same database state."""
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    def stats(self) -> CatalogStats:
        """Counts of the catalog and of the runs."""
        version = int(self.conn.execute("PRAGMA user_version").fetchone()[0])
        size = sum(f.stat().st_size for f in (self.path, Path(f"{self.path}-wal")) if f.exists())
        return CatalogStats(
            self.catalog.count(),
            self.catalog.owners(),
            self.history.count(),
            self.hasher,
            self.embedder,
            version,
            size,
        )

    def _refuse_foreign(self) -> None:
        """Refuse, before anything is written, a SQLite database some other program made: it
        has tables but never had copyscan's schema."""
        version = int(self.conn.execute("PRAGMA user_version").fetchone()[0])
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version == 0 and tables - {"sqlite_sequence"}:
            raise NotCopyscanDatabase(
                f"{self.path} is a SQLite database of another program (tables: "
                f"{', '.join(sorted(tables)[:5])}); copyscan leaves it alone: name another --db"
            )

    def _check_tables(self) -> None:
        found = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = sorted(TABLES - found)
        if missing:
            raise DamagedDatabase(f"{self.path} is damaged: table {', '.join(missing)} missing")

    def _check_identity(self, rehashing: bool) -> None:
        """A read-only database must already be at this schema, of this hasher and embedder."""
        version = int(self.conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{self.path} has schema version {version}; this copyscan knows up to "
                f"{SCHEMA_VERSION}: upgrade copyscan"
            )
        if version < SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version} and needs upgrading to {SCHEMA_VERSION}, "
                "which needs it writable once: run a command that writes (copyscan scan, catalog add) on it"
            )
        self._check_meta(rehashing, write=False)

    def _upgrade_and_check(self, rehashing: bool) -> None:
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
            self._check_meta(rehashing, write=True)

    def _check_meta(self, rehashing: bool, write: bool) -> None:
        for key, ours in (("hasher", self.hasher), ("embedder", self.embedder)):
            row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row is None and write:
                self.conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, ours))
            elif row is None or (row[0] != ours and key == "hasher" and rehashing):
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


def _connect(path: Path, readonly: bool, shared: bool) -> sqlite3.Connection:
    """A connection to ``path``: read-write, or read-only (and, where even SQLite's shared
    memory file cannot be made beside it, as an immutable file)."""
    timeout, same_thread = BUSY_TIMEOUT_MS / 1000, not shared
    if not readonly:
        return sqlite3.connect(path, isolation_level=None, timeout=timeout, check_same_thread=same_thread)
    uri = path.resolve().as_uri()
    conn = sqlite3.connect(
        f"{uri}?mode=ro", uri=True, isolation_level=None, timeout=timeout, check_same_thread=same_thread
    )
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        conn.close()
        conn = sqlite3.connect(
            f"{uri}?immutable=1",
            uri=True,
            isolation_level=None,
            timeout=timeout,
            check_same_thread=same_thread,
        )
    return conn


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.OperationalError:
        pass  # SQLite rolled back by itself (a full disk does that)
