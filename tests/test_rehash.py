"""``catalog rehash``: a catalog made by another hasher (an older copyscan) is refused until its
codes are recomputed from the catalog files; descriptors and history stay; gone or changed
files keep the old hasher unless dropped; a second run picks up what the first staged."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli

OLD = "phash64+dhash64:an-older-copyscan:v3"


def run(*args: str, code: int = 0):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output + result.stderr
    return result


def _codes(db: Path) -> dict[str, tuple[int, int, list[tuple[str, int, int]]]]:
    """Every catalog image's codes by content hash: own pHash and dHash, then its variants."""
    conn = sqlite3.connect(db)
    out = {}
    for cid, sha, p, d in conn.execute("SELECT id, sha256, phash, dhash FROM catalog"):
        variants = conn.execute(
            "SELECT variant, phash, dhash FROM codes WHERE catalog_id = ? ORDER BY id", (cid,)
        ).fetchall()
        out[sha] = (p, d, variants)
    conn.close()
    return out


@pytest.fixture
def old_catalog(tmp_path: Path, catalog_dir: Path) -> tuple[Path, Path]:
    """A catalog of copies of the fixture images whose database says an older hasher made
    its codes (and whose codes are not this copyscan's)."""
    files = tmp_path / "catalog"
    shutil.copytree(catalog_dir, files)
    db = tmp_path / "old.db"
    run("--db", str(db), "catalog", "add", str(files), "--owner", "Acme")
    run("--db", str(db), "scan", str(files / "coffee.jpg"))  # some history to keep
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'hasher'", (OLD,))
    conn.execute("UPDATE catalog SET phash = phash + 1, dhash = 0")  # not this hasher's codes
    conn.execute("DELETE FROM codes WHERE variant = 'centre65'")
    conn.commit()
    conn.close()
    return db, files


def test_a_database_of_another_hasher_is_refused_with_the_way_out(old_catalog, crawl_dir):
    db, _ = old_catalog
    out = run("--db", str(db), "scan", str(crawl_dir / "coffee-crop.jpg"), code=1)
    assert "copyscan catalog rehash" in out.stderr


def test_rehash_recomputes_every_code_and_keeps_the_rest(old_catalog, crawl_dir, tmp_path):
    db, files = old_catalog
    kept = "SELECT id, sha256, owner, embedding FROM catalog ORDER BY id"
    before = sqlite3.connect(db).execute(kept).fetchall()
    out = run("--db", str(db), "catalog", "rehash")
    assert "rehashed 7 (and 0 from an earlier run) of 7 catalog images" in out.stdout
    fresh = tmp_path / "fresh.db"
    run("--db", str(fresh), "catalog", "add", str(files))
    assert _codes(db) == _codes(fresh)  # exactly what indexing afresh gives, variants included
    after = sqlite3.connect(db).execute(kept).fetchall()
    assert after == before  # ids, owners and descriptors untouched
    assert run("--db", str(db), "runs").stdout.count("finished") == 1  # the history stays
    scan = run("--db", str(db), "scan", str(crawl_dir / "coffee-crop.jpg"), "--format", "jsonl")
    assert json.loads(scan.stdout)["matches"][0]["catalog_path"].endswith("coffee.jpg")
    again = run("--db", str(db), "catalog", "rehash")
    assert "nothing to do" in again.stdout


def test_gone_or_changed_files_keep_the_old_hasher_until_dropped(old_catalog, crawl_dir):
    db, files = old_catalog
    (files / "rocket.jpg").unlink()
    (files / "retina.jpg").write_bytes((files / "chelsea.jpg").read_bytes())  # another picture now
    out = run("--db", str(db), "catalog", "rehash", code=1)
    assert "rocket.jpg" in out.stderr and "no longer holds the content" in out.stderr
    assert "the catalog keeps hasher" in out.stderr
    assert "rehashed 5 (and 0 from an earlier run) of 7" in out.stdout
    run("--db", str(db), "scan", str(crawl_dir / "coffee-crop.jpg"), code=1)  # still refused
    out = run("--db", str(db), "catalog", "rehash", "--drop-missing")
    summary = "rehashed 0 (and 5 from an earlier run) of 7 catalog images, 2 unreadable or changed, 2 removed"
    assert summary in out.stdout
    assert "now uses hasher" in out.stdout
    listed = run("--db", str(db), "catalog", "list").stdout
    assert "rocket.jpg" not in listed and "retina.jpg" not in listed
    assert listed.count("\n") == 1 + 5  # a header and 5 images
    run("--db", str(db), "scan", str(crawl_dir / "coffee-crop.jpg"))
