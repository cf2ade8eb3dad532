"""Hard stops: ``copyscan catalog add`` and ``copyscan scan`` killed with SIGKILL at random
moments, several times over, leave a consistent database every time, and finishing the job
(running ``catalog add`` again, ``scan --resume``) gives the same catalog and the same scan
results as a run never interrupted, on a fresh database.

The kill moments come from a seeded generator: half are a random time into the run (which
may fall in start-up, schema creation, model loading or a batch), half are a short random
time after the run has written a random number of rows. Three kills of each command by
default; more with ``COPYSCAN_DURABILITY_KILLS=20`` (``COPYSCAN_DURABILITY_SEED`` picks
other moments).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import textured

EXE = Path(sys.executable).parent / "copyscan"
KILLS = int(os.environ.get("COPYSCAN_DURABILITY_KILLS", "3"))
SEED = int(os.environ.get("COPYSCAN_DURABILITY_SEED", "6"))
BATCH = 4
CATALOG_IMAGES = 12
# every copy listed: the cropped ones of these smooth pictures, with no keypoints for stage 3,
# score 0.83-0.87, under the default near-duplicate line (set for look-alike catalogs)
SET = ["--set", f"batch_size={BATCH}", "--set", "min_score=0.5"]


def copyscan(db: Path, *args: str) -> list[str]:
    return [str(EXE), "--db", str(db), *SET, *args]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A catalog folder of 12 generated images and a crawl folder of 18 queries: copies
    (re-encoded, resized, cropped), unrelated images, one piece of content twice under two
    names, and a truncated file."""
    root = tmp_path_factory.mktemp("durability")
    catalog, crawl = root / "catalog", root / "crawl"
    catalog.mkdir()
    crawl.mkdir()
    for k in range(CATALOG_IMAGES):
        Image.fromarray(textured(500 + k)).save(catalog / f"c{k:02d}.png")
    for k in range(6):  # copies of catalog images
        a = textured(500 + k)
        if k % 3 == 1:
            a = np.asarray(Image.fromarray(a).resize((120, 90)))
        elif k % 3 == 2:
            a = np.ascontiguousarray(a[8:-8, 10:-10])
        Image.fromarray(a).save(crawl / f"q{k:02d}-copy.jpg", quality=85)
    for k in range(6, 16):  # unrelated
        Image.fromarray(textured(900 + k)).save(crawl / f"q{k:02d}-other.jpg", quality=85)
    # the two quick items sort first, so every batch after the first takes a while
    (crawl / "a16-same.jpg").write_bytes((crawl / "q00-copy.jpg").read_bytes())
    whole = (crawl / "q07-other.jpg").read_bytes()
    (crawl / "a17-cut.jpg").write_bytes(whole[: len(whole) // 3])
    return catalog, crawl


def _run(args: list[str], cwd: Path) -> float:
    started = time.monotonic()
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode in (0, 4), out.stderr[-3000:]  # 4: the cut file is unusable
    assert "database is locked" not in out.stderr
    return time.monotonic() - started


@pytest.fixture(scope="module")
def reference(images: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Uninterrupted runs on a fresh database: the catalog they build, the scan results they
    record, and how long each command took (to pick kill moments within it)."""
    catalog, crawl = images
    work = tmp_path_factory.mktemp("reference")
    db = work / "ref.db"
    catalog_s = _run(copyscan(db, "catalog", "add", str(catalog), "--owner", "Owner"), work)
    catalog_only = work / "catalog-only.db"
    shutil.copy(db, catalog_only)
    scan_s = _run(copyscan(db, "scan", str(crawl), "--mode", "thorough", "--format", "jsonl"), work)
    snapshot = catalog_snapshot(db)
    assert len(snapshot) == CATALOG_IMAGES
    results = scan_results(db)
    assert len(results) == 18
    flagged = [p for p, (_, _, matches) in results.items() if matches]
    assert {Path(p).name for p in flagged} >= {f"q{k:02d}-copy.jpg" for k in range(6)}
    return {
        "catalog": snapshot,
        "results": results,
        "catalog_db": catalog_only,
        "catalog_s": catalog_s,
        "scan_s": scan_s,
    }


# --------------------------------------------------------------------------- database checks


def _connect(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)


def check_consistent(db: Path) -> None:
    """The invariants a killed run must leave: an intact file, no dangling references, each
    content once in the catalog, each path once per run, each catalog image with all of its
    codes, and each run's items whole batches (or all of them)."""
    if not db.exists():
        return  # killed before the database was created
    conn = _connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "catalog" not in tables:
            return  # killed before the schema was committed: nothing half-made either
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("SELECT sha256 FROM catalog GROUP BY sha256 HAVING count(*) > 1").fetchall() == []
        assert (
            conn.execute(
                "SELECT run_id, path FROM items GROUP BY run_id, path HAVING count(*) > 1"
            ).fetchall()
            == []
        )
        codes = dict(conn.execute("SELECT catalog_id, count(*) FROM codes GROUP BY catalog_id").fetchall())
        for (cid,) in conn.execute("SELECT id FROM catalog"):
            assert codes.get(cid, 0) >= 2, f"catalog image {cid} without its extra codes"
        assert (
            conn.execute(
                "SELECT count(*) FROM codes WHERE catalog_id NOT IN (SELECT id FROM catalog)"
            ).fetchone()[0]
            == 0
        )
        for run_id, n in conn.execute("SELECT run_id, count(*) FROM items GROUP BY run_id"):
            assert n == 18 or n % BATCH == 0, f"run {run_id} holds {n} items: a batch was cut"
    finally:
        conn.close()


def catalog_snapshot(db: Path) -> dict[str, tuple]:
    """sha256 -> (path, owner, size, codes, variant codes, descriptor) of every catalog image."""
    conn = _connect(db)
    try:
        variants: dict[int, list[tuple]] = defaultdict(list)
        for cid, name, ph, dh in conn.execute("SELECT catalog_id, variant, phash, dhash FROM codes"):
            variants[cid].append((name, ph, dh))
        out = {}
        for cid, sha, path, owner, w, h, ph, dh, blob in conn.execute(
            "SELECT id, sha256, path, owner, width, height, phash, dhash, embedding FROM catalog"
        ):
            vec = np.frombuffer(blob, dtype=np.float16).astype(np.float32)
            out[sha] = (path, owner, w, h, ph, dh, tuple(sorted(variants[cid])), vec)
        return out
    finally:
        conn.close()


def assert_same_catalog(got: dict[str, tuple], want: dict[str, tuple]) -> None:
    assert set(got) == set(want)
    for sha, row in got.items():
        assert row[:7] == want[sha][:7], sha
        assert float(row[7] @ want[sha][7]) > 0.999  # the same descriptor (unit vectors)


def scan_results(db: Path, run_id: int | None = None) -> dict[str, tuple]:
    """path -> (status, error kind, matches as (catalog path, verdict, score)) of one run."""
    conn = _connect(db)
    try:
        if run_id is None:
            (run_id,) = conn.execute("SELECT max(id) FROM runs").fetchone()
        out = {}
        for item_id, path, status, error in conn.execute(
            "SELECT id, path, status, error FROM items WHERE run_id = ?", (run_id,)
        ):
            matches = tuple(
                (cpath, verdict, round(score, 4))
                for cpath, verdict, score in conn.execute(
                    "SELECT catalog_path, verdict, score FROM matches WHERE item_id = ?"
                    " ORDER BY score DESC, catalog_path",
                    (item_id,),
                )
            )
            out[path] = (status, error.split(":")[0] if error else None, matches)
        return out
    finally:
        conn.close()


def assert_same_results(got: dict[str, tuple], want: dict[str, tuple]) -> None:
    assert set(got) == set(want)
    for path, (status, error, matches) in got.items():
        w_status, w_error, w_matches = want[path]
        assert (status, error) == (w_status, w_error), path
        assert [m[:2] for m in matches] == [m[:2] for m in w_matches], path
        assert np.allclose([m[2] for m in matches], [m[2] for m in w_matches], atol=2e-3), path


def _count(db: Path, table: str) -> int:
    if not db.exists():
        return 0
    try:
        conn = _connect(db)
        try:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.OperationalError:  # not created yet
        return 0


def kill_at_random(
    args: list[str], cwd: Path, db: Path, table: str, total: int, duration: float, rng: random.Random, k: int
) -> bool:
    """Start ``args`` and SIGKILL it at a moment chosen by ``k % 3``: 0, as soon as ``table``
    has gained a random number of rows (frozen with SIGSTOP the moment the poll sees them,
    so the kill lands between two batches); 1, a random time into a run that takes about
    ``duration`` (start-up, schema, model loading, any batch); 2, a random short time after
    a random number of rows (inside the next batch, its write included). The row-based ones
    leave at least one batch to go, and fall back to 1 when there is none. Returns whether
    the process was killed (it may have finished first)."""
    before = _count(db, table)
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if k % 3 != 1 and total - before > BATCH:
            target = before + rng.randint(1, total - before - BATCH)
            deadline = time.monotonic() + 120
            while _count(db, table) < target and proc.poll() is None:
                assert time.monotonic() < deadline, f"{table} never reached {target} rows"
                time.sleep(0.002)
            if k % 3 == 0:
                proc.send_signal(signal.SIGSTOP)
            else:
                time.sleep(rng.uniform(0.0, 0.3))
        else:
            time.sleep(rng.uniform(0.05, duration))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed = proc.returncode == -signal.SIGKILL
    if not killed:  # it finished just before the kill (4: the cut file is unusable)
        assert proc.returncode in (0, 4), err.decode()[-3000:]
    assert b"database is locked" not in err
    return killed


# --------------------------------------------------------------------------- the tests


def test_catalog_add_killed_again_and_again_then_rerun_builds_the_same_catalog(
    images: tuple[Path, Path], reference: dict[str, Any], tmp_path: Path
) -> None:
    catalog, _ = images
    rng = random.Random(SEED)
    kills = partial = rounds = 0
    while kills < KILLS:  # a round: a fresh database, killed until its catalog is whole
        db = tmp_path / f"round-{rounds}.db"
        rounds += 1
        args = copyscan(db, "catalog", "add", str(catalog), "--owner", "Owner")
        while kills < KILLS and _count(db, "catalog") < CATALOG_IMAGES:
            kill_at_random(args, tmp_path, db, "catalog", CATALOG_IMAGES, reference["catalog_s"], rng, kills)
            kills += 1
            check_consistent(db)
            rows = _count(db, "catalog")
            partial += 0 < rows < CATALOG_IMAGES
            if rows:  # what a killed run stored is complete and final
                for sha, row in catalog_snapshot(db).items():
                    assert row[:7] == reference["catalog"][sha][:7]
        _run(args, tmp_path)  # finish the job
        check_consistent(db)
        assert_same_catalog(catalog_snapshot(db), reference["catalog"])
    assert partial >= 1, "no kill landed between two batches"
    _run(args, tmp_path)  # once more: nothing is added twice
    assert_same_catalog(catalog_snapshot(db), reference["catalog"])


def _resumable(db: Path) -> bool:
    if _count(db, "runs") == 0:
        return False
    conn = _connect(db)
    try:
        return conn.execute("SELECT count(*) FROM runs WHERE status != 'finished'").fetchone()[0] > 0
    finally:
        conn.close()


def _finished(db: Path) -> bool:
    return _count(db, "runs") > 0 and not _resumable(db)


def test_scan_killed_again_and_again_then_resumed_gives_the_same_results(
    images: tuple[Path, Path], reference: dict[str, Any], tmp_path: Path
) -> None:
    _, crawl = images
    rng = random.Random(SEED + 1)
    kills = partial = rounds = 0
    while kills < KILLS:  # a round: the whole catalog, one scan killed until it finishes
        db = tmp_path / f"round-{rounds}.db"
        rounds += 1
        shutil.copy(reference["catalog_db"], db)
        # thorough: the CNN runs on every query, so each batch takes a while, and --resume
        # must bring the mode back
        fresh = copyscan(db, "scan", str(crawl), "--mode", "thorough", "--format", "jsonl")
        resume = copyscan(db, "scan", "--resume")
        while kills < KILLS and not _finished(db):
            args = resume if _resumable(db) else fresh  # no run recorded yet: start it again
            kill_at_random(args, tmp_path, db, "items", 18, reference["scan_s"], rng, kills)
            kills += 1
            check_consistent(db)
            partial += 0 < _count(db, "items") < 18
        if not _finished(db):
            _run(resume if _resumable(db) else fresh, tmp_path)  # finish the job
        check_consistent(db)
        conn = _connect(db)
        runs = conn.execute("SELECT id, status, items, errors FROM runs").fetchall()
        conn.close()
        assert len(runs) == 1  # one run, resumed as often as it was killed
        ((run_id, status, items, errors),) = runs
        assert (status, items, errors) == ("finished", 18, 1)
        assert_same_results(scan_results(db, run_id), reference["results"])
    assert partial >= 1, "no kill landed between two batches"
