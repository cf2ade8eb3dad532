"""The database as Datasette shows it: codes in the hex ``catalog list`` prints, matches linked
to their catalog image by a declared foreign key, every table and column described; and the
upgrade to schema 9 that brings an older database there without losing its history."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import sqlite_utils
from click.testing import CliRunner

from cli.main import cli
from detector.storage.schema import MIGRATIONS, SCHEMA_VERSION

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def run(*args: str, code: int = 0):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output + result.stderr
    return result


@pytest.fixture(scope="module")
def scanned(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("datasette") / "copyscan.db"
    run("--db", str(db), "-q", "catalog", "add", str(FIXTURES / "catalog"), "--owner", "Demo")
    run("--db", str(db), "-q", "scan", *map(str, sorted((FIXTURES / "crawl").glob("coffee-*.jpg"))))
    return db


def test_the_hex_views_show_the_codes_catalog_list_prints(scanned: Path) -> None:
    listed = [
        json.loads(line)
        for line in run("--db", str(scanned), "catalog", "list", "--format", "jsonl").stdout.splitlines()
    ]
    conn = sqlite3.connect(scanned)
    hexed = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT id, phash, dhash FROM catalog_hex")}
    items = conn.execute("SELECT phash, dhash FROM items_hex").fetchall()
    stored = conn.execute("SELECT phash FROM catalog").fetchall()
    conn.close()
    assert {e["id"]: (e["phash"], e["dhash"]) for e in listed} == hexed
    assert any(int(p) < 0 for (p,) in stored)  # a code with its top bit set: hex, not "-44..."
    assert all(len(p) == 16 and len(d) == 16 for p, d in items)


def test_a_removed_catalog_image_leaves_its_matches_with_no_id_and_its_path(
    scanned: Path, tmp_path: Path
) -> None:
    db = tmp_path / "copyscan.db"
    shutil.copy(scanned, db)
    conn = sqlite3.connect(db)
    fks = conn.execute("PRAGMA foreign_key_list(matches)").fetchall()
    coffee = conn.execute("SELECT id FROM catalog WHERE path LIKE '%coffee.jpg'").fetchone()[0]
    conn.close()
    assert ("catalog", "catalog_id", "id") in {(f[2], f[3], f[4]) for f in fks}
    run("--db", str(db), "catalog", "remove", str(coffee))
    report = json.loads(run("--db", str(db), "report", "--json", "-").stdout)
    assert report["rows"] and all(r["catalog_id"] is None for r in report["rows"])
    assert all(r["catalog_path"].endswith("coffee.jpg") and r["owner"] == "Demo" for r in report["rows"])
    run("--db", str(db), "report", "--html", str(tmp_path / "html"))
    assert "removed from the catalog since" in (tmp_path / "html" / "index.html").read_text()


def test_an_older_database_upgrades_with_its_history_and_a_match_of_a_removed_image(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db, isolation_level=None)
    database = sqlite_utils.Database(conn)
    for migrate in MIGRATIONS[:8]:
        migrate(database)
    conn.execute("PRAGMA user_version = 8")
    conn.executescript(
        "INSERT INTO meta VALUES ('hasher', 'h'), ('embedder', 'e');"
        "INSERT INTO catalog (id, sha256, path, width, height, phash, dhash, embedding, added_at)"
        " VALUES (1, 'c1', '/kept.jpg', 9, 9, -5, 5, x'00', 't');"
        "INSERT INTO runs (id, command, args, started_at) VALUES (1, 'scan', '{}', 't');"
        "INSERT INTO items (id, run_id, path, status) VALUES (1, 1, '/q.jpg', 'ok');"
        "INSERT INTO matches (item_id, catalog_id, catalog_path, score, verdict, agreement)"
        " VALUES (1, 1, '/kept.jpg', 0.9, 'copy', 0.95), (1, 7, '/removed.jpg', 0.8, 'near-duplicate', NULL);"
    )
    conn.close()
    from detector.storage.store import Store

    with Store.open(db, hasher="h", embedder="e", create=False) as store:
        version = store.conn.execute("PRAGMA user_version").fetchone()[0]
        rows = store.conn.execute(
            "SELECT catalog_id, catalog_path, score, agreement FROM matches ORDER BY id"
        ).fetchall()
        hexed = store.conn.execute("SELECT phash FROM catalog_hex").fetchone()[0]
    assert version == SCHEMA_VERSION == 9
    assert rows == [(1, "/kept.jpg", 0.9, 0.95), (None, "/removed.jpg", 0.8, None)]
    assert hexed == "fffffffffffffffb"


def test_the_metadata_describes_every_table_view_and_column(scanned: Path, tmp_path: Path) -> None:
    out = tmp_path / "metadata.json"
    run("--db", str(scanned), "datasette-metadata", "-o", str(out))
    tables = json.loads(out.read_text())["databases"]["copyscan"]["tables"]
    conn = sqlite3.connect(scanned)
    schema = {
        name: [c[1] for c in conn.execute(f"PRAGMA table_info({name})")]
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
    }
    conn.close()
    assert set(tables) == set(schema)
    for name, columns in schema.items():
        assert tables[name]["description"]
        assert list(tables[name]["columns"]) == columns or set(tables[name]["columns"]) == set(columns), name


def test_datasette_serves_the_hex_view_and_links_matches_to_the_catalog(
    scanned: Path, tmp_path: Path
) -> None:
    datasette_app = pytest.importorskip("datasette.app")
    metadata = json.loads(run("--db", str(scanned), "datasette-metadata").stdout)

    async def fetch() -> tuple[dict, dict]:
        ds = datasette_app.Datasette([str(scanned)], metadata=metadata)
        hexed = await ds.client.get("/copyscan/catalog_hex.json?_shape=array")
        matches = await ds.client.get("/copyscan/matches.json?_labels=on&_shape=array&_size=1")
        return hexed.json()[0], matches.json()[0]

    first, match = asyncio.run(fetch())
    assert len(first["phash"]) == 16 and int(first["phash"], 16) >= 0
    assert match["catalog_id"]["label"].endswith(".jpg")  # the label column of the catalog
