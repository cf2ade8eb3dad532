"""The schema: migrations that bring any older copyscan database to :data:`SCHEMA_VERSION`,
each in the transaction that bumps ``PRAGMA user_version``. Append, never edit."""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils


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


def _migrate_7(db: sqlite_utils.Database) -> None:
    # How many of a run's recorded items reached every output: a run stopped by a broken pipe
    # or a full disk is resumed by writing again what its outputs missed.
    db.execute("ALTER TABLE runs ADD COLUMN written INTEGER NOT NULL DEFAULT 0")


def _migrate_8(db: sqlite_utils.Database) -> None:
    # Stage 3's dense comparison of each pair: how much of the aligned overlap agrees, how much
    # of each image the overlap covers, and where the two disagree (polygons as JSON).
    for sql in (
        "ALTER TABLE matches ADD COLUMN agreement REAL",
        "ALTER TABLE matches ADD COLUMN query_coverage REAL",
        "ALTER TABLE matches ADD COLUMN catalog_coverage REAL",
        "ALTER TABLE matches ADD COLUMN disagreement TEXT",
    ):
        db.execute(sql)


_MATCH_COLUMNS = (
    "id, item_id, catalog_id, catalog_path, hamming, cosine, score, verdict, owner, transform, inliers,"
    " query_region, catalog_region, agreement, query_coverage, catalog_coverage, disagreement"
)
# The ids of catalog images removed since (which the foreign key cannot hold) become NULL.
_KEPT_MATCH_COLUMNS = _MATCH_COLUMNS.replace(
    "catalog_id,", "(SELECT catalog.id FROM catalog WHERE catalog.id = matches.catalog_id),", 1
)


def _migrate_9(db: sqlite_utils.Database) -> None:
    # Where a copy was found: each scanned item's metadata from its crawl (url, page_url, ...)
    # and, for an item read from a shard or a manifest, where its bytes are; a check's caller
    # details (uploader, listing, urls). For Datasette: matches.catalog_id becomes a declared
    # foreign key (set to NULL when the catalog image is removed: its id may be given to
    # another image later, the match keeps the path and owner it had), and views show the
    # codes in the hex that `catalog list` prints.
    for sql in (
        "ALTER TABLE items ADD COLUMN metadata TEXT",
        "ALTER TABLE items ADD COLUMN locator TEXT",
        "ALTER TABLE checks ADD COLUMN metadata TEXT",
        "CREATE TABLE matches_v9 ("
        " id INTEGER PRIMARY KEY,"
        " item_id INTEGER NOT NULL REFERENCES items(id),"
        " catalog_id INTEGER REFERENCES catalog(id) ON DELETE SET NULL,"
        " catalog_path TEXT, hamming INTEGER, cosine REAL, score REAL NOT NULL, verdict TEXT NOT NULL,"
        " owner TEXT, transform TEXT, inliers INTEGER, query_region TEXT, catalog_region TEXT,"
        " agreement REAL, query_coverage REAL, catalog_coverage REAL, disagreement TEXT)",
        f"INSERT INTO matches_v9 ({_MATCH_COLUMNS}) SELECT {_KEPT_MATCH_COLUMNS} FROM matches",
        "DROP TABLE matches",
        "ALTER TABLE matches_v9 RENAME TO matches",
        "CREATE INDEX idx_matches_item_id ON matches (item_id)",
        "CREATE INDEX idx_matches_catalog_id ON matches (catalog_id)",
        "CREATE VIEW catalog_hex AS SELECT id, path, owner, external_id, sha256, width, height,"
        " printf('%016x', phash) AS phash, printf('%016x', dhash) AS dhash, added_at FROM catalog",
        "CREATE VIEW codes_hex AS SELECT id, catalog_id, variant,"
        " printf('%016x', phash) AS phash, printf('%016x', dhash) AS dhash FROM codes",
        "CREATE VIEW items_hex AS SELECT id, run_id, path, json_extract(metadata, '$.url') AS url,"
        " json_extract(metadata, '$.page_url') AS page_url, sha256, status, error,"
        " printf('%016x', phash) AS phash, printf('%016x', dhash) AS dhash, scanned_at, reused_from,"
        " metadata FROM items",
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
    _migrate_7,
    _migrate_8,
    _migrate_9,
)
# Every table the migrations make: a database at the current version that lacks one is damaged.
TABLES = frozenset(
    {"meta", "catalog", "codes", "settings", "runs", "items", "matches", "checks", "rehash_codes"}
)
VIEWS = frozenset({"catalog_hex", "codes_hex", "items_hex"})
SCHEMA_VERSION = len(MIGRATIONS)
