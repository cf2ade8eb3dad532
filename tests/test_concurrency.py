"""Several copyscan processes on one database at once: a writer that finds the database held
exits 3 at once, or with ``--wait`` runs when the holder is done; ``check`` (which does not
take the lock) runs beside a scan; two scans started together never interleave. None of them
ever fails with SQLite's "database is locked"."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from cli.app import EXIT_LOCKED, EXIT_MATCH, EXIT_NO_MATCH
from tests.conftest import textured

EXE = Path(sys.executable).parent / "copyscan"


def copyscan(db: Path, *args: str, batch: int = 4) -> list[str]:
    return [str(EXE), "--db", str(db), "--set", f"batch_size={batch}", *args]


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert "database is locked" not in err, err
    return proc.returncode, out, err


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A database with 12 catalog images; a crawl of 24 queries (12 copies, 12 unrelated);
    8 more catalog images not yet added, and a copy of the last of them."""
    root = tmp_path_factory.mktemp("concurrency")
    catalog, crawl, extra, later = root / "catalog", root / "crawl", root / "extra", root / "later"
    for folder in (catalog, crawl, extra, later):
        folder.mkdir()
    for k in range(12):
        Image.fromarray(textured(300 + k)).save(catalog / f"c{k:02d}.png")
        Image.fromarray(textured(300 + k)).save(crawl / f"q{k:02d}-copy.jpg", quality=85)
        Image.fromarray(textured(1300 + k)).save(crawl / f"q{k + 12:02d}-other.jpg", quality=85)
    for k in range(8):
        Image.fromarray(textured(700 + k)).save(extra / f"e{k:02d}.png")
    Image.fromarray(textured(707)).save(later / "copy-of-e07.jpg", quality=85)
    db = root / "base.db"
    out = subprocess.run(
        copyscan(db, "catalog", "add", str(catalog)), cwd=root, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return {"db": db, "catalog": catalog, "crawl": crawl, "extra": extra, "later": later}


@pytest.fixture
def db(setup: dict[str, Path], tmp_path: Path) -> Path:
    target = tmp_path / "c.db"
    shutil.copy(setup["db"], target)
    return target


def _wait_for_lock(db: Path, command: str, proc: subprocess.Popen) -> None:
    lock = Path(f"{db}.lock")
    deadline = time.monotonic() + 120
    while not (lock.exists() and command in lock.read_text(errors="replace")):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the lock was never taken"
        time.sleep(0.01)


def _runs(db: Path) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT id, status, items, errors FROM runs ORDER BY id").fetchall()
    finally:
        conn.close()


def _items_per_run(db: Path) -> dict[int, list[str]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        out: dict[int, list[str]] = {}
        for run_id, path in conn.execute("SELECT run_id, path FROM items ORDER BY id"):
            out.setdefault(run_id, []).append(path)
        return out
    finally:
        conn.close()


def test_scan_while_catalog_add_runs_exits_3_or_waits_its_turn(setup: dict[str, Path], db: Path) -> None:
    cwd = db.parent
    adder = start(copyscan(db, "catalog", "add", str(setup["extra"])), cwd)
    _wait_for_lock(db, "catalog add", adder)
    # Freeze the holder: it keeps the lock for as long as this test needs, however fast the
    # machine.
    adder.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        refused = subprocess.run(
            copyscan(db, "scan", str(setup["crawl"])), cwd=cwd, capture_output=True, text=True, timeout=120
        )
        refused_s = time.monotonic() - started
        assert refused.returncode == EXIT_LOCKED, refused.stderr
        assert "is in use by another copyscan run" in refused.stderr
        assert f"pid {adder.pid}, catalog add since" in refused.stderr
        assert "--wait" in refused.stderr
        assert "database is locked" not in refused.stderr
        assert _runs(db) == []  # the refused scan recorded nothing
        waiter = start(copyscan(db, "scan", str(setup["later"]), "--wait", "60", "--format", "jsonl"), cwd)
        # It would have exited 3 as quickly as the first; it is still there, waiting.
        time.sleep(max(3.0, 2 * refused_s))
        assert waiter.poll() is None, waiter.communicate()
    finally:
        adder.send_signal(signal.SIGCONT)
    code, out, _ = finish(adder)
    assert code == 0 and "added 8" in out
    code, out, err = finish(waiter)
    assert code == 0, err
    # It scanned after the whole catalog add: the image added in its last batch is found.
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert record["matches"] and record["matches"][0]["catalog_path"].endswith("e07.png")
    assert record["matches"][0]["verdict"] == "copy"
    assert [r[1:] for r in _runs(db)] == [("finished", 1, 0)]


def test_checks_run_beside_a_scan(setup: dict[str, Path], db: Path) -> None:
    cwd = db.parent
    crawl = setup["crawl"]
    # One item a batch: the scan writes as often as it can while the checks read.
    scan = start(copyscan(db, "scan", str(crawl), "--mode", "thorough", "--format", "jsonl", batch=1), cwd)
    _wait_for_lock(db, "scan", scan)
    deadline = time.monotonic() + 120
    while sum(len(v) for v in _items_per_run(db).values()) < 2:
        assert scan.poll() is None, scan.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    queries = {
        crawl / "q01-copy.jpg": EXIT_MATCH,
        crawl / "q05-copy.jpg": EXIT_MATCH,
        crawl / "q13-other.jpg": EXIT_NO_MATCH,
        crawl / "q20-other.jpg": EXIT_NO_MATCH,
    }
    checks = {q: start(copyscan(db, "check", str(q), "--format", "jsonl"), cwd) for q in queries}
    beside = 0  # checks that ended while the scan was still running
    pending = dict(checks)
    deadline = time.monotonic() + 300
    while pending:
        assert time.monotonic() < deadline, "the checks did not end"
        for query, proc in list(pending.items()):
            if proc.poll() is not None:
                beside += scan.poll() is None
                del pending[query]
        time.sleep(0.01)
    for query, proc in checks.items():
        code, out, err = finish(proc)
        assert code == queries[query], (query, err)
        (record,) = [json.loads(line) for line in out.splitlines()]
        assert record["query"] == str(query) and record["status"] == "ok"
        if code == EXIT_MATCH:
            assert record["matches"][0]["catalog_path"].endswith(f"c{query.name[1:3]}.png")
    assert beside >= 1, "the scan ended before any check did: nothing ran beside it"
    code, out, err = finish(scan)
    assert code == 0, err
    assert len(out.splitlines()) == 24
    assert [r[1:] for r in _runs(db)] == [("finished", 24, 0)]


def test_two_scans_at_once(setup: dict[str, Path], db: Path) -> None:
    cwd = db.parent
    args = copyscan(db, "scan", str(setup["crawl"]), "--mode", "thorough")
    first, second = start(args, cwd), start(args, cwd)
    outcomes = sorted([finish(first)[0], finish(second)[0]])
    assert outcomes == [0, EXIT_LOCKED]  # exactly one ran
    assert [r[1:] for r in _runs(db)] == [("finished", 24, 0)]
    # With --wait, both run, one after the other, and both runs are whole.
    waiting = [*args, "--wait", "120", "--format", "jsonl"]
    first, second = start(waiting, cwd), start(waiting, cwd)
    results = [finish(first), finish(second)]
    assert [code for code, _, _ in results] == [0, 0]
    assert all(len(out.splitlines()) == 24 for _, out, _ in results)
    runs = _runs(db)
    assert [r[1:] for r in runs] == [("finished", 24, 0)] * 3
    items = _items_per_run(db)
    for run_id, *_ in runs:
        assert len(items[run_id]) == len(set(items[run_id])) == 24
    # the later of the two repeated the stored results of the earlier ones
    assert any("(24 unchanged since an earlier run)" in err for _, _, err in results)
