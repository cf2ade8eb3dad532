"""``scan --engine ray``: the same records, the same scan history as the local scan, from
files and from Parquet shards of image bytes, on a local Ray instance of two workers."""

from __future__ import annotations

import json
import pickle
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from detector.config import THOROUGH
from detector.intake.prepare import prepare_batch
from detector.scan.catalog import CatalogSnapshot
from detector.scan.scanner import Scanner
from detector.stage1.hashing import HASHER_ID
from detector.stage2.embedding import embedder_id
from detector.storage.store import Store

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own settings


def run(*args: str, code: int = 0):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output + result.stderr
    return result


def _records(text: str) -> list[dict]:
    return sorted((json.loads(line) for line in text.splitlines() if line.strip()), key=lambda r: r["query"])


def _history(db: Path) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """Runs, items and matches as stored, without ids and clock times."""
    conn = sqlite3.connect(db)
    try:
        runs = conn.execute(
            "SELECT command, status, items, errors, reused, matched, mode, state FROM runs ORDER BY id"
        ).fetchall()
        items = conn.execute(
            "SELECT run_id, path, sha256, status, error, phash, dhash, reused_from IS NOT NULL FROM items"
            " ORDER BY run_id, path"
        ).fetchall()
        matches = conn.execute(
            "SELECT i.run_id, i.path, m.catalog_id, m.catalog_path, m.owner, m.hamming, m.cosine, m.score,"
            " m.verdict, m.transform, m.inliers, m.query_region, m.catalog_region"
            " FROM matches m JOIN items i ON i.id = m.item_id ORDER BY i.run_id, i.path, m.id"
        ).fetchall()
        return runs, items, matches
    finally:
        conn.close()


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module (each scan would otherwise start its own)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, catalog_dir) -> Path:
    db = tmp_path_factory.mktemp("distributed") / "d.db"
    run("--db", str(db), "-q", "catalog", "add", str(catalog_dir), "--owner", "Demo Rights")
    return db


@pytest.fixture(scope="module")
def local_scan(indexed, crawl_dir, tmp_path_factory):
    """The local scan of the crawl folder: its records and its database."""
    db = tmp_path_factory.mktemp("local") / "d.db"
    shutil.copy(indexed, db)
    out = run("--db", str(db), "scan", str(crawl_dir), "--format", "jsonl", code=4)
    return _records(out.stdout), db


def _copy(indexed: Path, tmp_path: Path) -> Path:
    db = tmp_path / "d.db"
    shutil.copy(indexed, db)
    return db


def test_a_scanner_built_from_a_pickled_snapshot_gives_the_stores_results(indexed, crawl_dir, models):
    """What a worker holds: no database, the same results and state (held-out ids included)."""
    store = Store.open(indexed, hasher=HASHER_ID, embedder=embedder_id(models.settings), create=False)
    with store:
        hidden = {2}
        local = Scanner(store, models, models.settings, mode=THOROUGH, exclude=hidden)
        snapshot = pickle.loads(pickle.dumps(CatalogSnapshot.load(store, exclude=hidden)))
        remote = Scanner(snapshot, models, models.settings, mode=THOROUGH)
        assert remote.state == local.state and 2 not in snapshot.by_id
        prepared = prepare_batch([str(p) for p in sorted(crawl_dir.glob("*"))[::4]], models.settings)
        expected = local.scan_prepared(prepared)
    assert remote.scan_prepared(prepared) == expected  # the database is closed now
    with pytest.raises(TypeError):
        _ = remote.store


def test_a_ray_scan_of_a_folder_gives_the_local_scans_records_and_history(
    local_ray, indexed, local_scan, crawl_dir, tmp_path
):
    expected, local_db = local_scan
    db = _copy(indexed, tmp_path)
    out = run(
        "--db", str(db), "scan", str(crawl_dir), "--format", "jsonl", "--engine", "ray", "--workers", "2",
        "--parquet-out", str(tmp_path / "out.parquet"), code=4,
    )  # fmt: skip
    got = _records(out.stdout)
    assert got == expected
    broken = next(r for r in got if r["query"].endswith("broken-download.jpg"))
    assert broken["status"] == "error" and broken["error"].startswith("CorruptImage")
    assert _history(db) == _history(local_db)
    table = pytest.importorskip("pyarrow.parquet").read_table(tmp_path / "out.parquet").to_pylist()
    assert sorted(r["query"] for r in table) == [r["query"] for r in expected]
    by_query = {r["query"]: r for r in table}
    assert all(json.loads(by_query[r["query"]]["matches"]) == r["matches"] for r in expected)


def test_a_ray_scan_of_parquet_shards_gives_the_local_scans_records_then_reuses_them(
    local_ray, indexed, local_scan, tmp_path
):
    expected, local_db = local_scan
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    shards = tmp_path / "crawl-shards"
    shards.mkdir()
    rows = [{"path": r["query"], "bytes": Path(r["query"]).read_bytes()} for r in expected]
    schema = pa.schema([("path", pa.string()), ("bytes", pa.binary())])
    for n, part in enumerate((rows[:25], rows[25:])):  # two shards, several row groups each
        table = pa.Table.from_pylist(part, schema=schema)
        pq.write_table(table, shards / f"part-{n}.parquet", row_group_size=7)
    db = _copy(indexed, tmp_path)
    ray_scan = ("--db", str(db), "scan", str(shards), "--format", "jsonl", "--engine=ray", "--workers=2")
    first = run(*ray_scan, code=4)
    assert _records(first.stdout) == expected
    assert _history(db) == _history(local_db)
    again = run(*ray_scan, code=4)
    assert _records(again.stdout) == expected
    assert "(58 unchanged since an earlier run)" in again.stderr  # all but the two unusable images


def test_ray_options_need_the_ray_engine(indexed, crawl_dir, tmp_path):
    db = _copy(indexed, tmp_path)
    result = CliRunner().invoke(cli, ["--db", str(db), "scan", str(crawl_dir), "--workers", "2"])
    assert result.exit_code == 2 and "--engine ray" in result.output


def test_a_ray_scan_of_img2dataset_shards_gives_the_local_records_with_their_urls(
    local_ray, indexed, tmp_path
):
    """webdataset tar and Parquet shards as img2dataset writes them: the workers read each
    image at its place in the shard; every record carries its URL, as the local scan's."""
    from tests.test_crawl_inputs import CRAWL, parquet_shard, url, webdataset_shard

    tar = webdataset_shard(tmp_path / "00000.tar", CRAWL[:5])
    shard = parquet_shard(tmp_path / "00001.parquet", CRAWL[5:], row_group_size=2)
    scan = ("scan", str(tar), str(shard), "--format", "jsonl")
    local_db, ray_db = _copy(indexed, tmp_path), tmp_path / "r.db"
    shutil.copy(indexed, ray_db)
    local = run("--db", str(local_db), *scan)
    out = tmp_path / "out.parquet"
    distributed = run(
        "--db", str(ray_db), *scan, "--engine", "ray", "--workers", "2", "--parquet-out", str(out)
    )
    records = [json.loads(line) for line in distributed.stdout.splitlines()]
    assert records == [json.loads(line) for line in local.stdout.splitlines()]
    assert [r["meta"]["url"] for r in records] == [url(p) for p in CRAWL]
    assert [r["url"] for r in pytest.importorskip("pyarrow.parquet").read_table(out).to_pylist()] == [
        url(p) for p in CRAWL
    ]
    assert _history(ray_db) == _history(local_db)


def test_a_thorough_ray_scan_gives_the_local_scans_records(local_ray, indexed, crawl_dir, tmp_path):
    """Thorough mode: the workers hold every catalog descriptor and add embedding neighbours."""
    listed = tmp_path / "some.txt"
    listed.write_text("\n".join(str(p) for p in sorted(crawl_dir.glob("*"))[::5]))
    local_db, ray_db = _copy(indexed, tmp_path), tmp_path / "r.db"
    shutil.copy(indexed, ray_db)
    scan = ("scan", str(listed), "--format", "jsonl", "--mode", "thorough", "--min-score", "0")
    local = run("--db", str(local_db), *scan)
    distributed = run("--db", str(ray_db), *scan, "--engine", "ray", "--workers", "2")
    assert _records(distributed.stdout) == _records(local.stdout)
    assert _history(ray_db) == _history(local_db)


def test_a_ray_scan_resumes_a_killed_run(local_ray, local_scan, tmp_path):
    expected, local_db = local_scan
    db = _copy(local_db, tmp_path)
    conn = sqlite3.connect(db)
    with conn:  # the run was killed half-way: its later items were never recorded
        later = "SELECT id FROM items WHERE path > ?"
        middle = expected[len(expected) // 2]["query"]
        conn.execute(f"DELETE FROM matches WHERE item_id IN ({later})", (middle,))
        conn.execute("DELETE FROM items WHERE path > ?", (middle,))
        conn.execute("UPDATE runs SET status = 'killed', finished_at = NULL")
    conn.close()
    out = run("--db", str(db), "scan", "--resume", "--engine", "ray", "--workers", "2", code=4)
    assert _records(out.stdout) == [r for r in expected if r["query"] > middle]
    assert _history(db) == _history(local_db)
