"""Scan history for unattended runs: content already scanned is not scanned again, a killed or
stopped run resumes where it stopped, one run per database at a time, and the report of what
a run flagged (CSV, JSON, only what is new)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.app import EXIT_LOCKED
from cli.main import cli
from detector.storage.locking import DatabaseLock, Locked

EXE = Path(sys.executable).parent / "copyscan"


def run(*args: str, code: int = 0):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output + result.stderr
    return result


def _records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, catalog_dir) -> Path:
    db = tmp_path_factory.mktemp("history") / "h.db"
    run("--db", str(db), "catalog", "add", str(catalog_dir), "--owner", "Demo Rights")
    return db


@pytest.fixture
def db(indexed, tmp_path) -> Path:
    target = tmp_path / "h.db"
    shutil.copy(indexed, target)
    return target


def _runs(db: Path) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT id, status, items, errors, reused FROM runs ORDER BY id").fetchall()
    finally:
        conn.close()


def test_a_second_scan_repeats_stored_results_unless_asked_or_the_catalog_changed(db, crawl_dir, catalog_dir):
    first = run("--db", str(db), "scan", str(crawl_dir), "--format", "jsonl", code=4)
    again = run("--db", str(db), "scan", str(crawl_dir), "--format", "jsonl", code=4)
    assert _records(again.stdout) == _records(first.stdout)  # the same answers, evidence included
    assert "(58 unchanged since an earlier run)" in again.stderr  # all but the two unreadable files
    fresh = run("--db", str(db), "scan", str(crawl_dir), "--format", "jsonl", "--rescan", code=4)
    assert "unchanged" not in fresh.stderr and _records(fresh.stdout) == _records(first.stdout)
    other_mode = run("--db", str(db), "scan", str(crawl_dir), "--mode", "thorough", code=4)
    assert "unchanged" not in other_mode.stderr  # other settings, other results
    run("--db", str(db), "catalog", "add", str(crawl_dir / "other-horse.jpg"))
    after = run("--db", str(db), "scan", str(crawl_dir), "--format", "jsonl", code=4)
    assert "unchanged" not in after.stderr  # a new catalog image may match anything
    horse = next(r for r in _records(after.stdout) if r["query"].endswith("other-horse.jpg"))
    assert horse["matches"][0]["verdict"] == "copy"
    assert [r[1:] for r in _runs(db)] == [
        ("finished", 60, 2, 0),
        ("finished", 60, 2, 58),
        ("finished", 60, 2, 0),
        ("finished", 60, 2, 0),
        ("finished", 60, 2, 0),
    ]


def test_a_run_holding_the_database_makes_another_exit_3(db, crawl_dir):
    with DatabaseLock(db, "test"):
        out = run("--db", str(db), "scan", str(crawl_dir / "chelsea-jpeg.jpg"), code=EXIT_LOCKED)
        assert "in use by another copyscan run" in out.stderr and f"pid {os.getpid()}" in out.stderr
        out = run("--db", str(db), "catalog", "add", str(crawl_dir / "other-horse.jpg"), code=EXIT_LOCKED)
        with pytest.raises(Locked):
            with DatabaseLock(db, "second", wait=0.3):
                pass
    run("--db", str(db), "scan", str(crawl_dir / "chelsea-jpeg.jpg"))  # released: runs
    assert [r[1] for r in _runs(db)] == ["finished"]


def _many_queries(tmp_path: Path, crawl_dir: Path, copies: int) -> Path:
    """A folder with ``copies`` copies of the crawl (distinct content each: one byte appended)."""
    folder = tmp_path / "many"
    folder.mkdir()
    for n in range(copies):
        for src in sorted(crawl_dir.glob("*.jpg")):
            (folder / f"{n:02d}-{src.name}").write_bytes(src.read_bytes() + bytes([n]))
    return folder


def _wait_for_items(db: Path, at_least: int, proc: subprocess.Popen, limit_s: float = 120) -> int:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the scan ended before it could be stopped"
        try:
            conn = sqlite3.connect(db, timeout=5)
            n = conn.execute("SELECT count(*) FROM items").fetchone()[0]
            conn.close()
        except sqlite3.OperationalError:
            n = 0
        if n >= at_least:
            return int(n)
        time.sleep(0.02)
    raise AssertionError("the scan recorded nothing in time")


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_stopped_scan_resumes_where_it_stopped(db, crawl_dir, tmp_path, how):
    folder = _many_queries(tmp_path, crawl_dir, 4)
    total = len(list(folder.iterdir()))  # 228 images, 4 of them unreadable
    args = [str(EXE), "--db", str(db), "--set", "batch_size=4", "scan", str(folder), "--mode", "thorough"]
    proc = subprocess.Popen([*args, "--format", "jsonl"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    before = _wait_for_items(db, 8, proc)
    proc.send_signal(getattr(signal, how))
    _, err = proc.communicate(timeout=60)
    ((run_id, status, *_),) = _runs(db)
    if how == "SIGTERM":
        assert proc.returncode == 143 and status == "interrupted"
        assert f"copyscan scan --resume {run_id} goes on" in err.decode()
    else:
        assert proc.returncode == -signal.SIGKILL and status == "running"
    conn = sqlite3.connect(db)
    recorded = conn.execute("SELECT count(*) FROM items").fetchone()[0]
    written = conn.execute("SELECT written FROM runs").fetchone()[0]
    conn.close()
    assert before <= recorded < total and recorded % 4 == 0  # whole batches only
    assert recorded - 4 <= written <= recorded  # the last batch may not have reached stdout
    out = subprocess.run([str(EXE), "--db", str(db), "scan", "--resume"], capture_output=True, text=True)
    assert out.returncode == 4, out.stderr  # completed; 4 images were unusable
    assert len(_records(out.stdout)) == total - written  # only what never reached the output
    assert f"run {run_id} (resumed)" in out.stderr
    ((_, status, items, errors, _),) = _runs(db)
    assert (status, items, errors) == ("finished", total, 4)
    conn = sqlite3.connect(db)
    paths = [r[0] for r in conn.execute("SELECT path FROM items")]
    conn.close()
    assert len(paths) == len(set(paths)) == total  # nothing twice, nothing lost


def test_resume_refuses_a_finished_run_and_a_changed_catalog(db, crawl_dir):
    run("--db", str(db), "scan", str(crawl_dir / "chelsea-jpeg.jpg"))
    out = run("--db", str(db), "scan", "--resume", "1", code=1)
    assert "run 1 is finished" in out.stderr
    out = run("--db", str(db), "scan", "--resume", code=1)
    assert "no killed or interrupted scan run" in out.stderr
    conn = sqlite3.connect(db)
    conn.execute("UPDATE runs SET status = 'killed'")
    conn.commit()
    conn.close()
    run("--db", str(db), "catalog", "add", str(crawl_dir / "other-horse.jpg"))
    out = run("--db", str(db), "scan", "--resume", code=1)
    assert "changed since run 1 started" in out.stderr
    assert run("--db", str(db), "scan", str(crawl_dir), "--resume", code=2)


def test_runs_lists_the_history(db, crawl_dir):
    run("--db", str(db), "scan", str(crawl_dir / "chelsea-jpeg.jpg"))
    out = run("--db", str(db), "runs")
    header, row = out.stdout.splitlines()
    assert header.split() == ["ID", "STATUS", "STARTED", "FINISHED", "MODE", "IMAGES", "FLAGGED", "ERRORS"]
    assert row.split()[1] == "finished" and row.split()[-3:] == ["1", "1", "0"]
    (record,) = _records(run("--db", str(db), "runs", "--format", "jsonl").stdout)
    assert record["status"] == "finished" and record["mode"] == "fast" and record["args"]["images"] == 1


def test_report_csv_and_json_and_only_what_is_new(db, crawl_dir, tmp_path):
    run("--db", str(db), "scan", str(crawl_dir / "chelsea-jpeg.jpg"), str(crawl_dir / "coffee-crop.jpg"))
    out = run("--db", str(db), "report", "--csv", "-", "--json", str(tmp_path / "r.json"))
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert {Path(r["catalog_path"]).name for r in rows} == {"chelsea.jpg", "coffee.jpg"}
    assert all(r["verdict"] == "copy" and r["owner"] == "Demo Rights" and r["new"] for r in rows)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["run"]["id"] == 1 and len(report["rows"]) == 2
    crop = next(r for r in report["rows"] if r["query_path"].endswith("coffee-crop.jpg"))
    assert crop["inliers"] > 50 and len(crop["query_region"]) >= 3  # stage 3's evidence
    xs = [x for x, _ in crop["catalog_region"]]
    assert 0 <= min(xs) < max(xs) <= 1
    run("--db", str(db), "scan", str(crawl_dir / "chelsea-jpeg.jpg"), str(crawl_dir / "rocket-blur.jpg"))
    new = json.loads(run("--db", str(db), "report", "--new", "--json", "-").stdout)
    assert new["previous_run"] == 1 and new["new_only"]
    assert [Path(r["query_path"]).name for r in new["rows"]] == ["rocket-blur.jpg"]
    assert "no run 9" in run("--db", str(db), "report", "9", "--csv", "-", code=1).stderr
    assert run("--db", str(db), "report", code=2)  # no output named
