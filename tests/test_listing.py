"""Every command that lists records takes the same ``--format table|jsonl|csv|json`` and
``-o/--output FILE``; scan's ``-o`` is kept with the run and written again on ``--resume``."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli

from .conftest import FIXTURES

CRAWL = FIXTURES / "crawl"
FORMATS = ("table", "jsonl", "csv", "json")
QUICK = ["--set", "jobs=1", "--set", "verify_top=1"]


def run(*args: str, code: int | None = 0):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if code is not None:
        assert result.exit_code == code, result.output + result.stderr
    return result


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """The shipped catalog and one scan run."""
    path = tmp_path_factory.mktemp("listing") / "l.db"
    run("--db", str(path), "-q", *QUICK, "catalog", "add", str(FIXTURES / "catalog"), "--owner", "=Acme")
    run("--db", str(path), "-q", *QUICK, "scan", str(CRAWL / "coffee-jpeg.jpg"))
    return path


# command line -> (exit status, whether json gives one object rather than an array)
COMMANDS: dict[str, tuple[tuple[str, ...], int, bool]] = {
    "scan": (("scan", str(CRAWL / "chelsea-jpeg.jpg"), str(CRAWL / "other-coins.jpg")), 0, False),
    "check": (("check", str(CRAWL / "coffee-bright.jpg")), 0, True),
    "dedupe": (("dedupe", str(FIXTURES / "catalog"), str(CRAWL / "chelsea-jpeg.jpg")), 0, False),
    "catalog list": (("catalog", "list"), 0, False),
    "catalog stats": (("catalog", "stats"), 0, True),
    "runs": (("runs",), 0, False),
    "settings": (("settings",), 0, False),
    "token list": (("token", "list"), 0, False),
    "evaluate": (
        ("evaluate", "--sample", "2", "--held-out", "1", "--families", "flip", "--mode", "fast"),
        0,
        True,
    ),
}


def parse(fmt: str, text: str, one: bool) -> list[dict]:
    """The records of a listing, checking that the format holds."""
    if fmt == "json":
        doc = json.loads(text)
        assert isinstance(doc, dict if one else list)
        return [doc] if one else doc
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines()]
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        rows = list(reader)
        assert reader.fieldnames and all(None not in r for r in rows)  # no row longer than the header
        return rows
    lines = text.splitlines()
    assert len(lines[0].split()) >= 2 and lines[0] == lines[0].upper(), lines[0]  # a header row
    return [{"line": line} for line in lines[1:]]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_listing_command_writes_every_format_to_a_file(db, tmp_path, command, fmt):
    args, code, one = COMMANDS[command]
    db_copy = tmp_path / "c.db"
    shutil.copy(db, db_copy)
    out = tmp_path / f"out.{fmt}"
    result = run("--db", str(db_copy), "-q", *QUICK, *args, "--format", fmt, "-o", str(out), code=code)
    assert result.stdout == ""  # the records went to the file
    records = parse(fmt, out.read_text(encoding="utf-8"), one)
    assert records, f"{command} --format {fmt} wrote no record"


@pytest.mark.parametrize("command", ["catalog list", "runs", "settings"])
def test_dash_is_stdout_and_an_unwritable_output_is_one_line_and_status_1(db, tmp_path, command):
    args = COMMANDS[command][0]
    first = parse("jsonl", run("--db", str(db), *args, "--format", "jsonl", "-o", "-").stdout, False)
    assert first
    bad = run("--db", str(db), *args, "-o", str(tmp_path / "no" / "such" / "file"), code=1)
    assert "cannot write" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_tables_have_a_header_row_and_aligned_columns(db):
    lines = run("--db", str(db), "runs").stdout.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "STARTED", "FINISHED", "MODE", "IMAGES", "FLAGGED", "ERRORS"]
    assert lines[1].index("finished") == lines[0].index("STATUS")
    listed = run("--db", str(db), "catalog", "list").stdout.splitlines()
    assert listed[0].split() == ["ID", "OWNER", "SIZE", "PHASH", "PATH"]
    assert {line.index("/") for line in listed[1:]} == {listed[0].index("PATH")}
    rows = list(
        csv.DictReader(io.StringIO(run("--db", str(db), "catalog", "list", "--format", "csv").stdout))
    )
    assert rows[0]["owner"] == "'=Acme"  # a formula cell neutralised, as in every CSV


def test_evaluate_says_jsonl_like_the_others_and_json_stays_one_document(db):
    base = ["--db", str(db), "-q", "evaluate", "--sample", "2", "--held-out", "1", "--families", "flip,jpeg"]
    rows = [
        json.loads(line) for line in run(*base, "--mode", "fast", "--format", "jsonl").stdout.splitlines()
    ]
    assert [(r["mode"], r["family"]) for r in rows] == [("fast", "all"), ("fast", "flip"), ("fast", "jpeg")]
    assert rows[0]["copies"] == 4 and rows[1]["copies"] == 2
    doc = json.loads(run(*base, "--mode", "fast", "--format", "json").stdout)
    assert doc["evaluations"][0]["mode"] == "fast" and doc["calibration"] is None


def test_a_streamed_json_array_is_closed_and_an_empty_listing_keeps_its_header():
    from cli.listing import FORMATS as formats
    from cli.listing import Column, Listing

    assert formats == FORMATS
    for fmt, expected in (("json", []), ("csv", [])):
        out = io.StringIO()
        listing = Listing(fmt, out, [Column("a"), Column("b")], stream=True)
        listing.close()
        got = (
            json.loads(out.getvalue()) if fmt == "json" else list(csv.DictReader(io.StringIO(out.getvalue())))
        )
        assert got == expected
    out = io.StringIO()
    listing = Listing("json", out, [Column("a")], stream=True)
    listing.write({"a": 1})
    listing.write({"a": [1, 2]})
    listing.close()
    assert json.loads(out.getvalue()) == [{"a": 1}, {"a": [1, 2]}]


def test_scan_output_file_is_kept_with_the_run_and_written_again_on_resume(db, tmp_path, monkeypatch):
    """A scan interrupted after its first batch; the resume, from another folder, writes the
    whole run to the -o file the run named (relative to where it started)."""
    import cli.scan

    db_copy = tmp_path / "c.db"
    shutil.copy(db, db_copy)
    crawl = [
        str(CRAWL / f"{name}-jpeg.jpg") for name in ("coffee", "chelsea", "rocket", "retina", "astronaut")
    ]
    reference = run("--db", str(db_copy), "-q", *QUICK, "scan", *crawl, "--format", "json", "--rescan")
    expected = json.loads(reference.stdout)
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir()
    elsewhere.mkdir()
    written = []
    original = cli.scan._Outputs.write

    def stop_after_four(self, result):
        original(self, result)
        written.append(result.query)
        if len(written) == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli.scan._Outputs, "write", stop_after_four)
    monkeypatch.chdir(start)
    args = ["--db", str(db_copy), "-q", *QUICK, "--set", "batch_size=4", "scan", *crawl, "--rescan"]
    stopped = run(*args, "--format", "jsonl", "-o", "out.jsonl", code=130)
    assert stopped.stdout == "" and "--resume" in stopped.stderr
    monkeypatch.setattr(cli.scan._Outputs, "write", original)
    monkeypatch.chdir(elsewhere)
    refused = run("--db", str(db_copy), "scan", "--resume", "-o", "other.jsonl", code=2)
    assert "drop -o" in refused.stderr
    resumed = run("--db", str(db_copy), "-q", "scan", "--resume")
    assert resumed.stdout == ""  # the records go to the run's file, not to stdout
    assert not (elsewhere / "out.jsonl").exists()
    records = [json.loads(line) for line in (start / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert records == expected  # every image once, in order
