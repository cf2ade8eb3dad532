"""Cron-safe runs: a failure is never exit 0, a resume never loses work, bad input never aborts
a run. Each case here was a defect found by trying copyscan as a nightly job and as an
attacker would; processes are real where the case is about processes (pipes, folders, disks).
The exit statuses checked are those of the README's table (``cli.app.EXIT_STATUSES``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.app import EXIT_FAILED, EXIT_LOCKED, EXIT_PARTIAL, EXIT_STATUSES, EXIT_USAGE
from cli.main import cli
from detector.config import Settings
from detector.storage.locking import DatabaseLock

from .conftest import FIXTURES, ROOT, textured

QUICK = ["--set", "jobs=1", "--set", "verify_top=1"]


def cli_run(*args: str, code: int | None = None):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if code is not None:
        assert result.exit_code == code, result.output + result.stderr
    return result


def process(*args: str, cwd: Path | None = None, **kw) -> subprocess.CompletedProcess[str]:
    """copyscan as its own process (``python -m cli``), this tree's code."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )


def one_line(stderr: str) -> bool:
    """A failure says what went wrong in a line, never in a traceback."""
    return "Traceback" not in stderr and 0 < len([x for x in stderr.splitlines() if x.strip()]) <= 3


def runs(db: Path) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT id, status, items, errors, written FROM runs ORDER BY id").fetchall()
    finally:
        conn.close()


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def catalog_db(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("cron") / "catalog.db"
    cli_run("--db", str(db), *QUICK, "catalog", "add", str(FIXTURES / "catalog"), code=0)
    return db


@pytest.fixture
def db(catalog_db, tmp_path) -> Path:
    target = tmp_path / "c.db"
    shutil.copy(catalog_db, target)
    return target


@pytest.fixture(scope="module")
def crawl(tmp_path_factory) -> Path:
    """36 good images: copies of the catalog's pictures and unrelated ones (no bad file)."""
    folder = tmp_path_factory.mktemp("crawl") / "crawl"
    folder.mkdir()
    for name in sorted(p.name for p in (FIXTURES / "crawl").iterdir()):
        if name.endswith(".jpg") and "broken" not in name:
            shutil.copy(FIXTURES / "crawl" / name, folder / name)
        if len(list(folder.iterdir())) == 36:
            break
    return folder


# --- the exit-status contract ------------------------------------------------------------------


def test_the_readme_states_the_exit_status_table_the_code_has():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Exit statuses") :]
    for commands, rows in EXIT_STATUSES.items():
        assert f"**{commands}**" in section, commands
        for code, meaning in rows:
            assert f"| {code} | {meaning} |" in section, (commands, code)


def test_a_missing_input_root_is_a_failure_and_records_no_run(db, tmp_path):
    out = cli_run("--db", str(db), "scan", str(tmp_path / "nope" / "crawl"), code=EXIT_FAILED)
    assert "does not exist" in out.stderr and one_line(out.stderr)
    assert runs(db) == []
    fresh = tmp_path / "fresh.db"
    out = cli_run("--db", str(fresh), "catalog", "add", str(tmp_path / "nope"), code=EXIT_FAILED)
    assert "does not exist" in out.stderr and not fresh.exists()
    out = cli_run("dedupe", str(tmp_path / "nope"), code=EXIT_FAILED)


def test_a_run_with_unusable_inputs_completes_with_status_4(db, crawl, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(crawl, folder)
    (folder / "zz-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    out = cli_run("--db", str(db), *QUICK, "scan", str(folder), "--format", "jsonl", code=EXIT_PARTIAL)
    assert "1 images of the run could not be used" in out.stderr
    assert len(records(out.stdout)) == 37 and runs(db)[0][1:4] == ("finished", 37, 1)
    assert cli_run("--db", str(db), *QUICK, "scan", str(crawl), code=0).exit_code == 0


def test_check_never_reports_a_crash_as_no_match(db, crawl, monkeypatch):
    from detector.scan import scanner

    def broken(*_a, **_k):
        raise RuntimeError("a bug")

    monkeypatch.setattr(scanner.Scanner, "scan", broken)
    out = cli_run("--db", str(db), "check", str(crawl / "coffee-jpeg.jpg"))
    assert out.exit_code == 2 and "the check failed: RuntimeError: a bug" in out.stderr


# --- paths and options kept with the run ----------------------------------------------------------


def test_a_run_started_on_a_relative_path_resumes_from_another_folder(db, crawl, tmp_path):
    shutil.copytree(crawl, tmp_path / "crawl")
    piped = subprocess.run(
        f"{sys.executable} -m cli --db {db} --set batch_size=4 --set jobs=1 scan crawl --format jsonl"
        " | head -1",
        shell=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert len(piped.stdout.splitlines()) == 1
    ((_, status, *_),) = runs(db)
    assert status == "interrupted"
    resumed = process("--db", str(db), "scan", "--resume", cwd=Path("/"))
    assert resumed.returncode == 0, resumed.stderr
    ((_, status, items, errors, _),) = runs(db)
    assert (status, items, errors) == ("finished", 36, 0)  # every image, read from its real folder
    got = records(resumed.stdout)
    assert all(r["query"].startswith(str(tmp_path / "crawl")) for r in got)


def test_rescan_is_kept_with_the_run_and_honoured_by_resume(db, crawl):
    cli_run("--db", str(db), *QUICK, "scan", str(crawl), code=0)  # everything is reusable now
    cli_run("--db", str(db), *QUICK, "--set", "batch_size=8", "scan", str(crawl), "--rescan", code=0)
    conn = sqlite3.connect(db)
    with conn:  # the --rescan run as if it had been killed after its first 8 items
        (run_id,) = conn.execute("SELECT max(id) FROM runs").fetchone()
        later = f"SELECT id FROM items WHERE run_id = {run_id} ORDER BY id LIMIT -1 OFFSET 8"
        conn.execute(f"DELETE FROM matches WHERE item_id IN ({later})")
        conn.execute(f"DELETE FROM items WHERE id IN ({later})")
        conn.execute(
            f"UPDATE runs SET status = 'killed', finished_at = NULL, written = 8 WHERE id = {run_id}"
        )
    conn.close()
    # settings that only share out the work may be chosen again on resume
    runtime = ["--set", "verify_threads=1", "--set", "cnn_threads=1", "--set", "jobs=1"]
    cli_run("--db", str(db), *runtime, "scan", "--resume", code=0)
    conn = sqlite3.connect(db)
    reused = conn.execute(
        f"SELECT count(*) FROM items WHERE run_id = {run_id} AND reused_from IS NOT NULL"
    ).fetchone()
    conn.close()
    assert reused == (0,)  # a rescan stays a rescan


def test_resume_refuses_options_that_would_change_the_run(db, crawl):
    out = cli_run("--db", str(db), "scan", "--resume", "--format", "csv", code=EXIT_USAGE)
    assert "--format" in out.stderr
    out = cli_run("--db", str(db), "--set", "top_k=2", "scan", "--resume", code=None)
    assert out.exit_code in (EXIT_USAGE, EXIT_FAILED)


# --- outputs that break ----------------------------------------------------------------------------


def test_a_broken_pipe_is_one_line_an_interrupted_run_and_a_resume_that_loses_nothing(db, crawl):
    command = f"{sys.executable} -m cli --db {db} --set batch_size=4 --set jobs=1 scan {crawl} --format jsonl"
    piped = subprocess.run(
        f"{command} | head -1; echo status=${{PIPESTATUS[0]}} >&2",
        shell=True,
        executable="/bin/bash",
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "status=1" in piped.stderr and "Traceback" not in piped.stderr
    assert "cannot write the output" in piped.stderr and "--resume 1 goes on" in piped.stderr
    ((_, status, items, _, written),) = runs(db)
    assert status == "interrupted" and written < items
    resumed = process("--db", str(db), "scan", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    got = [r["query"] for r in records(resumed.stdout)]
    assert len(got) == 36 - written and len(set(got)) == len(got)  # what never reached the pipe, once


def test_unwritable_outputs_and_databases_fail_in_one_line(db, crawl, tmp_path):
    out = cli_run("--db", str(db), "scan", str(crawl), "--jsonl", str(tmp_path / "missing" / "o.jsonl"))
    assert out.exit_code == EXIT_FAILED and "cannot write" in out.stderr and one_line(out.stderr)
    out = cli_run("--db", str(db), "scan", str(crawl), "--jsonl", str(tmp_path))  # a folder: bad usage
    assert out.exit_code == EXIT_USAGE and "is a directory" in out.stderr
    assert runs(db) == []  # the outputs are opened before the run is recorded
    cli_run("--db", str(db), *QUICK, "scan", str(crawl / "coffee-jpeg.jpg"), code=0)
    out = cli_run("--db", str(db), "report", "--csv", str(tmp_path / "no" / "r.csv"), code=EXIT_FAILED)
    assert one_line(out.stderr)
    out = process("--db", str(tmp_path / "no" / "such" / "x.db"), "scan", str(crawl))
    assert out.returncode == EXIT_FAILED and one_line(out.stderr), out.stderr


def test_a_run_refused_at_its_start_leaves_the_last_runs_output_files_as_they_were(db, crawl, tmp_path):
    outputs = {"-o": tmp_path / "scan.csv", "--jsonl": tmp_path / "scan.jsonl"}
    for path in outputs.values():
        path.write_text("last night's records\n")
    args = [a for flag, path in outputs.items() for a in (flag, str(path))]
    out = cli_run("--db", str(db), "scan", str(tmp_path / "unmounted"), "--format", "csv", *args)
    assert out.exit_code == EXIT_FAILED and "input not found" in out.stderr
    assert all(p.read_text() == "last night's records\n" for p in outputs.values())
    cli_run("--db", str(db), *QUICK, "scan", str(crawl / "coffee-jpeg.jpg"), "--format", "csv", *args, code=0)
    assert outputs["-o"].read_text().startswith("run_id,") and "coffee-jpeg" in outputs["--jsonl"].read_text()


@contextmanager
def small_disk(where: Path, megabytes: int) -> Iterator[Path]:
    """A tmpfs of the given size (root only; skipped elsewhere), unmounted afterwards."""
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(where)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` but ``leave`` bytes."""
    stat = os.statvfs(disk)
    free = stat.f_bavail * stat.f_frsize
    filler = disk / "filler"
    with open(filler, "ab") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def test_a_full_disk_for_the_jsonl_loses_no_record_once_resumed(db, crawl, tmp_path):
    shutil.copy(db, tmp_path / "ref.db")
    expected = records(
        cli_run(
            "--db", str(tmp_path / "ref.db"), *QUICK, "scan", str(crawl), "--format", "jsonl", code=0
        ).stdout
    )
    with small_disk(tmp_path / "disk", 2) as disk:
        filler = fill(disk, 20_000)  # room for about 10 records
        out = process("--db", str(db), *QUICK, "--set", "batch_size=4", "scan", str(crawl), "--jsonl",
                      str(disk / "out.jsonl"))  # fmt: skip
        assert out.returncode == EXIT_FAILED and one_line(out.stderr), out.stderr
        assert "No space left on device" in out.stderr
        assert runs(db)[0][1] == "interrupted"
        filler.unlink()
        resumed = process("--db", str(db), "scan", "--resume")
        assert resumed.returncode == 0, resumed.stderr
        written = records((disk / "out.jsonl").read_text())
    assert written == expected  # every record once, in order


# --- names and list files --------------------------------------------------------------------------


def test_file_names_that_are_not_utf8_are_kept_byte_for_byte(db, crawl, tmp_path):
    folder = tmp_path / "names"
    folder.mkdir()
    odd = os.fsdecode(b"caf\xe9-" + b"coffee.jpg")
    shutil.copy(crawl / "coffee-jpeg.jpg", folder / odd)
    shutil.copy(crawl / "chelsea-jpeg.jpg", folder / "plain.jpg")
    out = process("--db", str(db), *QUICK, "scan", str(folder), "--format", "jsonl")
    assert out.returncode == 0, out.stderr
    got = records(out.stdout)
    assert [os.fsencode(r["query"]).endswith(b"caf\xe9-coffee.jpg") for r in got] == [True, False]
    assert got[0]["matches"][0]["verdict"] == "copy"
    again = process("--db", str(db), *QUICK, "scan", str(folder), "--format", "csv")  # repeated from the db
    assert again.returncode == 0 and "caf\\xe9-coffee.jpg" in again.stdout
    catalog = tmp_path / "cat.db"
    out = process(
        "--db", str(catalog), *QUICK, "catalog", "add", str(folder), "--owner", os.fsdecode(b"Acme\xff")
    )
    assert out.returncode == 0 and "added 2" in out.stdout, out.stderr
    listed = records(process("--db", str(catalog), "catalog", "list", "--format", "jsonl").stdout)
    assert {os.fsencode(e["owner"]) for e in listed} == {b"Acme\xff"}
    assert any(os.fsencode(e["path"]).endswith(b"caf\xe9-coffee.jpg") for e in listed)


def test_a_nul_byte_in_a_list_file_is_one_items_error(db, crawl, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{crawl / 'coffee-jpeg.jpg'}\nbad\0name.jpg\n{crawl / 'chelsea-jpeg.jpg'}\n")
    out = cli_run("--db", str(db), *QUICK, "scan", str(listing), "--format", "jsonl", code=EXIT_PARTIAL)
    got = records(out.stdout)
    assert [r["status"] for r in got] == ["ok", "error", "ok"]
    assert got[1]["error"].startswith("UnreadablePath")


# --- images no stage can handle --------------------------------------------------------------------


def test_a_strip_is_refused_at_intake_and_never_reaches_a_stage(db, crawl, tmp_path):
    folder = tmp_path / "with-strip"
    shutil.copytree(crawl, folder)
    strip = np.tile(textured(3, (400, 5)), (1, 250, 1))  # 100,000 x 5
    Image.fromarray(strip).save(folder / "a-strip.png")
    out = cli_run("--db", str(db), *QUICK, "catalog", "add", str(folder / "a-strip.png"), code=EXIT_PARTIAL)
    assert "a strip" in out.stderr
    out = cli_run("--db", str(db), *QUICK, "scan", str(folder), "--format", "jsonl", code=EXIT_PARTIAL)
    got = records(out.stdout)
    assert got[0]["error"].startswith("UnhashableImage") and "strip" in got[0]["error"]
    assert all(r["status"] == "ok" for r in got[1:])


def test_a_catalog_image_no_stage_can_use_does_not_cost_the_queries_that_meet_it(db, crawl, tmp_path):
    """A strip catalogued by an older copyscan, with the codes of a real picture, so every copy
    of that picture meets it: each query still gets its result."""
    from detector.stage1.hashing import HASHER_ID
    from detector.stage2.embedding import embedder_id
    from detector.storage.catalog import NewCatalogImage
    from detector.storage.store import Store

    strip = tmp_path / "strip.png"
    Image.fromarray(np.tile(textured(3, (400, 5)), (1, 250, 1))).save(strip)
    with Store.open(db, hasher=HASHER_ID, embedder=embedder_id(Settings())) as store:
        coffee = next(e for e in store.catalog.list() if e.path.endswith("coffee.jpg"))
        blob = store.catalog.embedding_blobs([coffee.id])[coffee.id]
        conn = store.conn
        phash, dhash = conn.execute("SELECT phash, dhash FROM catalog WHERE id = ?", (coffee.id,)).fetchone()
        store.catalog.add([NewCatalogImage(str(strip), None, "f" * 64, 100_000, 5, phash, dhash, blob)])
    out = cli_run("--db", str(db), *QUICK, "--set", "verify_top=3", "scan", str(crawl), "--format", "jsonl",
                  "--mode", "thorough", code=0)  # fmt: skip
    got = records(out.stdout)
    assert len(got) == 36 and all(r["status"] == "ok" for r in got)
    assert any(r["query"].endswith("coffee-jpeg.jpg") and r["matches"][0]["verdict"] == "copy" for r in got)


def test_a_stage_that_fails_on_one_image_costs_only_that_image(db, crawl, monkeypatch):
    from detector.stage3 import verification

    real = verification.VerificationStage._verify

    def flaky(self, case):
        if case.query.path.endswith("coffee-jpeg.jpg"):
            raise ValueError("a fault in stage 3")
        return real(self, case)

    monkeypatch.setattr(verification.VerificationStage, "_verify", flaky)
    out = cli_run("--db", str(db), *QUICK, "scan", str(crawl), "--format", "jsonl", code=EXIT_PARTIAL)
    got = {Path(r["query"]).name: r for r in records(out.stdout)}
    assert (
        got["coffee-jpeg.jpg"]["error"] == "StageFailure: VerificationStage: ValueError: a fault in stage 3"
    )
    assert sum(r["status"] == "ok" for r in got.values()) == 35
    assert got["coffee-crop.jpg"]["matches"][0]["verdict"] == "copy"


# --- settings --------------------------------------------------------------------------------------


def test_a_stored_setting_out_of_range_is_ignored_with_a_warning(db, crawl):
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO settings (name, value, set_at) VALUES ('batch_size', '-1', 'then')")
    conn.close()
    out = cli_run("--db", str(db), *QUICK, "scan", str(crawl), code=0)
    assert "ignoring stored setting batch_size='-1'" in out.stderr
    assert runs(db)[0][1:3] == ("finished", 36)


# --- one writer, on the real file ------------------------------------------------------------------


def test_the_lock_is_the_real_files_whatever_name_reaches_it(db, crawl, tmp_path):
    link = tmp_path / "link.db"
    link.symlink_to(db)
    with DatabaseLock(db, "a scan elsewhere"):
        out = cli_run("--db", str(link), "scan", str(crawl), code=EXIT_LOCKED)
        assert "a scan elsewhere" in out.stderr
        cli_run("--db", str(link), "catalog", "remove", "--owner", "nobody", code=EXIT_LOCKED)
    assert not Path(f"{link}.lock").exists()


# --- databases that are not what they claim --------------------------------------------------------


def test_a_sqlite_file_of_another_program_is_refused_before_anything_is_written(crawl, tmp_path):
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    for args in (["scan", str(crawl)], ["catalog", "add", str(crawl)], ["runs"]):
        out = cli_run("--db", str(other), *args, code=EXIT_FAILED)
        assert "another program" in out.stderr
    assert other.read_bytes() == before and not Path(f"{other}.lock").exists()
    image = tmp_path / "img.jpg"
    shutil.copy(crawl / "coffee-jpeg.jpg", image)
    cli_run("--db", str(image), "scan", str(crawl), code=EXIT_FAILED)
    assert not Path(f"{image}.lock").exists()


@pytest.mark.parametrize(
    "damage, needs",
    [
        ("DROP TABLE matches", "table matches missing"),
        ("UPDATE catalog SET phash = 'not a code' WHERE id = 1", "not a number"),
        ("UPDATE catalog SET embedding = x'0000' WHERE id = 1", "descriptor"),
    ],
)
def test_a_damaged_database_is_one_line_not_a_traceback(db, crawl, damage, needs):
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(damage)
    conn.close()
    out = cli_run("--db", str(db), "scan", str(crawl), "--mode", "thorough", code=EXIT_FAILED)
    assert needs in out.stderr and "damaged" in out.stderr and one_line(out.stderr)


def test_a_database_on_read_only_storage_can_still_be_read(db, crawl, tmp_path):
    cli_run("--db", str(db), *QUICK, "scan", str(crawl / "coffee-jpeg.jpg"), code=0)
    with small_disk(tmp_path / "ro", 16) as disk:
        shutil.copy(db, disk / "c.db")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        ro = str(disk / "c.db")
        assert "finished" in cli_run("--db", ro, "runs", code=0).stdout
        assert "1 flagged pairs" in cli_run("--db", ro, "report", "--json", "-", code=0).stderr
        stats = cli_run("--db", ro, "catalog", "stats", "--format", "json", code=0)
        assert json.loads(stats.stdout)["images"] == 7
        out = cli_run("--db", ro, "check", str(crawl / "coffee-jpeg.jpg"))
        assert out.exit_code == 0, out.stderr
        out = cli_run("--db", ro, "scan", str(crawl), code=EXIT_FAILED)
        assert one_line(out.stderr)


@pytest.mark.parametrize(
    "args",
    [
        ["scan", "--resume", str(10**30)],
        ["report", str(10**30), "--json", "-"],
        ["catalog", "remove", str(10**30)],
        ["runs", "--limit", str(10**30)],
    ],
)
def test_huge_numbers_are_bad_usage_not_tracebacks(db, args):
    out = cli_run("--db", str(db), *args)
    assert out.exit_code == EXIT_USAGE and "Traceback" not in out.output


# --- the loader's words ----------------------------------------------------------------------------


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_bomb_errors_quote_copyscans_limit_and_pillow_warnings_stay_quiet(db, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(_png_header(30_000, 30_000))  # 900 MP: over Pillow's own limit too
    exif = Image.Exif()
    exif[0x0112] = 1
    raw = exif.tobytes()
    buggy = raw[:-2] + b"\xff\xff"  # an EXIF block whose last entry runs past its end
    Image.fromarray(textured(9, (200, 150))).save(folder / "exif.jpg", exif=buggy)
    out = process("--db", str(db), *QUICK, "scan", str(folder), "--format", "jsonl")
    got = {Path(r["query"]).name: r for r in records(out.stdout)}
    assert f"over the limit of {Settings().max_pixels}" in got["bomb.png"]["error"]
    assert "900000000 pixels" in got["bomb.png"]["error"]
    assert "Warning" not in out.stderr, out.stderr


# --- a small disk filled and runs killed at random --------------------------------------------------


def test_full_disks_and_kills_at_random_leave_a_whole_database_and_the_same_results(db, crawl, tmp_path):
    """The database and the JSON Lines file on a 3 MB disk; each round fills the disk to a
    random level or kills the scan at a random moment; then room is made and the run resumed.
    The end: an intact database, each image once, and the records of an uninterrupted run."""
    import random

    rng = random.Random(21)
    shutil.copy(db, tmp_path / "ref.db")
    expected = records(
        cli_run(
            "--db", str(tmp_path / "ref.db"), *QUICK, "scan", str(crawl), "--format", "jsonl", code=0
        ).stdout
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with small_disk(tmp_path / "disk", 3) as disk:
        shutil.copy(db, disk / "c.db")
        base = [
            sys.executable,
            "-m",
            "cli",
            "--db",
            str(disk / "c.db"),
            *QUICK,
            "--set",
            "batch_size=4",
            "scan",
        ]
        first = [*base, str(crawl), "--jsonl", str(disk / "out.jsonl")]
        for round_ in range(8):
            started = bool(runs(disk / "c.db"))
            if started and runs(disk / "c.db")[0][1] == "finished":
                break
            args = [*base, "--resume"] if started else first
            filler = fill(disk, rng.randrange(20_000, 400_000)) if round_ % 2 == 0 else None
            proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if filler is None:
                try:
                    proc.wait(timeout=rng.uniform(3.0, 9.0))
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=300)
            assert b"Traceback" not in err, err.decode()[-2000:]
            assert proc.returncode in (0, EXIT_FAILED, -signal.SIGKILL), err.decode()[-2000:]
            if filler is not None:
                filler.unlink()
            conn = sqlite3.connect(disk / "c.db")
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert conn.execute("SELECT path FROM items GROUP BY path HAVING count(*) > 1").fetchall() == []
            conn.close()
        while runs(disk / "c.db")[0][1] != "finished":
            done = subprocess.run([*base, "--resume"], env=env, capture_output=True, timeout=300)
            assert done.returncode == 0, done.stderr.decode()[-2000:]
        written = records((disk / "out.jsonl").read_text())
        ((_, status, items, errors, _),) = runs(disk / "c.db")
    assert (status, items, errors) == ("finished", 36, 0)
    assert written == expected
