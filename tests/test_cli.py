"""Every command end to end through click's CliRunner (and the installed console script once),
on the shipped demo fixtures."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli.app import EXIT_ERROR, EXIT_MATCH, EXIT_NO_MATCH
from cli.main import cli


def run(*args: str, env: dict[str, str] | None = None, ok: bool = True, code: int = 0):
    """Run a command; with ``ok``, it must exit with ``code`` (4: completed, some inputs
    unusable, as every scan of the shipped crawl is: it holds a truncated and a flat file)."""
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    if ok:
        assert result.exit_code == code, result.output + result.stderr
    return result


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory, catalog_dir) -> Path:
    db = tmp_path_factory.mktemp("db") / "demo.db"
    out = run("--db", str(db), "catalog", "add", str(catalog_dir), "--owner", "Demo Rights")
    assert "added 7, already in catalog 0, errors 0" in out.stdout
    return db


@pytest.fixture
def db_copy(demo_db, tmp_path) -> Path:
    target = tmp_path / "copy.db"
    shutil.copy(demo_db, target)
    return target


def _records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_every_command_has_help():
    def walk(group: click.Group, prefix: list[str]):
        for name, command in group.commands.items():
            assert command.help, f"{' '.join([*prefix, name])} has no help text"
            out = run(*prefix, name, "--help")
            assert "Usage:" in out.stdout
            if isinstance(command, click.Group):
                walk(command, [*prefix, name])

    walk(cli, [])


def test_scan_jsonl_finds_every_attacked_copy_and_nothing_else(demo_db, crawl_dir, crawl_truth):
    out = run("--db", str(demo_db), "scan", str(crawl_dir), "--format", "jsonl", "--mode", "thorough", code=4)
    records = {Path(r["query"]).name: r for r in _records(out.stdout)}
    assert set(records) == set(crawl_truth)
    for name, truth in crawl_truth.items():
        r = records[name]
        assert set(r) == {"query", "sha256", "status", "error", "meta", "matches"}
        if truth == "error":
            assert r["status"] == "error" and r["error"] and r["matches"] == []
        elif truth is None:
            assert r["status"] == "ok" and r["matches"] == [], name
        else:
            best = r["matches"][0]
            assert Path(best["catalog_path"]).name == truth, name
            assert best["verdict"] in ("copy", "near-duplicate")
            assert set(best) == {
                "catalog_id",
                "catalog_path",
                "owner",
                "hamming",
                "cosine",
                "score",
                "verdict",
                "transform",
                "inliers",
                "query_region",
                "catalog_region",
                "agreement",
                "query_coverage",
                "catalog_coverage",
                "disagreement",
            }
            assert best["agreement"] >= 0.5 and 0 < best["query_coverage"] <= 1, name
            assert best["owner"] == "Demo Rights" and 0 <= best["score"] <= 1
    assert "60 images" in out.stderr


def test_fast_mode_runs_and_min_score_zero_lists_every_candidate(demo_db, crawl_dir):
    fast = _records(run("--db", str(demo_db), "scan", str(crawl_dir), "--format", "jsonl", code=4).stdout)
    flagged = sum(1 for r in fast if r["matches"])
    assert flagged >= 45  # stage 1 alone misses only the widest borders here
    everything = _records(
        run(
            "--db",
            str(demo_db),
            "scan",
            str(crawl_dir),
            "--format",
            "jsonl",
            "--min-score",
            "0",
            "--mode",
            "thorough",
            "--top-k",
            "7",
            code=4,
        ).stdout
    )
    ok = [r for r in everything if r["status"] == "ok"]
    assert all(len(r["matches"]) == 7 for r in ok)  # thorough: every catalog image is a neighbour
    assert any(m["verdict"] == "none" for r in ok for m in r["matches"])
    for r in ok:
        scores = [m["score"] for m in r["matches"]]
        assert scores == sorted(scores, reverse=True)


def test_scan_csv_and_table_and_jsonl_side_file(demo_db, crawl_dir, tmp_path):
    side = tmp_path / "out.jsonl"
    out = run(
        "--db",
        str(demo_db),
        "scan",
        str(crawl_dir / "chelsea-jpeg.jpg"),
        str(crawl_dir / "broken-download.jpg"),
        "--format",
        "csv",
        "--jsonl",
        str(side),
        code=4,
    )
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["status"] for r in rows] == ["ok", "error"]
    assert rows[0]["verdict"] == "copy" and rows[0]["catalog_path"].endswith("chelsea.jpg")
    assert len(_records(side.read_text())) == 2
    table = run("--db", str(demo_db), "scan", str(crawl_dir / "chelsea-jpeg.jpg")).stdout
    header, row = table.splitlines()
    assert header.split()[:2] == ["VERDICT", "SCORE"] and row.startswith("copy") and "chelsea.jpg" in row


def test_scan_records_the_run(db_copy, crawl_dir):
    import sqlite3

    run("--db", str(db_copy), "scan", str(crawl_dir), "--quiet", code=4)
    conn = sqlite3.connect(db_copy)
    items, errors, matched = conn.execute("SELECT items, errors, matched FROM runs").fetchone()
    assert (items, errors) == (60, 2) and matched >= 45
    assert conn.execute("SELECT count(*) FROM matches").fetchone()[0] >= matched


def test_check_exit_statuses(demo_db, crawl_dir):
    hit = run("--db", str(demo_db), "check", str(crawl_dir / "coffee-bright.jpg"), ok=False)
    assert hit.exit_code == EXIT_MATCH and "coffee.jpg" in hit.stdout
    miss = run("--db", str(demo_db), "check", str(crawl_dir / "other-coins.jpg"), ok=False)
    assert miss.exit_code == EXIT_NO_MATCH and "no match" in miss.stdout
    bad = run(
        "--db", str(demo_db), "check", str(crawl_dir / "broken-download.jpg"), "--format", "jsonl", ok=False
    )
    assert bad.exit_code == EXIT_ERROR and _records(bad.stdout)[0]["status"] == "error"
    nodb = run("--db", str(demo_db.parent / "none.db"), "check", str(crawl_dir / "other-coins.jpg"), ok=False)
    assert nodb.exit_code == EXIT_ERROR and "no database" in nodb.stderr


def test_catalog_list_stats_remove_and_rerun(db_copy, catalog_dir):
    listing = _records(run("--db", str(db_copy), "catalog", "list", "--format", "jsonl").stdout)
    assert len(listing) == 7 and listing[0]["phash"] == "c2924c5532bddfc8"  # astronaut, golden
    assert json.loads(run("--db", str(db_copy), "catalog", "stats", "--format", "json").stdout)["images"] == 7
    again = run("--db", str(db_copy), "catalog", "add", str(catalog_dir))
    assert "added 0, already in catalog 7" in again.stdout
    removed = run("--db", str(db_copy), "catalog", "remove", str(listing[0]["id"]), listing[1]["path"])
    assert "removed 2" in removed.stdout
    assert "removed 5" in run("--db", str(db_copy), "catalog", "remove", "--owner", "Demo Rights").stdout
    empty = run("--db", str(db_copy), "catalog", "list").stdout
    assert empty.split() == ["ID", "OWNER", "SIZE", "PHASH", "PATH"]  # the header row alone
    assert run("--db", str(db_copy), "catalog", "remove", ok=False).exit_code == 2


def test_catalog_add_reports_bad_files_and_goes_on(tmp_path, make_image):
    good = make_image("a/good.jpg", seed=1)
    (tmp_path / "a" / "bad.jpg").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{good}\na/bad.jpg\nmissing.jpg\n")
    out = run("--db", str(tmp_path / "x.db"), "catalog", "add", str(listing), code=4)
    assert "added 1, already in catalog 0, errors 2" in out.stdout
    assert "bad.jpg" in out.stderr and "missing.jpg" in out.stderr


def test_db_from_environment_and_set_option(tmp_path, make_image):
    db = tmp_path / "env.db"
    make_image("c/one.jpg", seed=5)
    run("catalog", "add", str(tmp_path / "c"), env={"COPYSCAN_DB": str(db)})
    assert db.exists()
    out = run(
        "--set",
        "top_k=1",
        "--set",
        "copy_threshold=0.99",
        "--db",
        str(db),
        "check",
        str(tmp_path / "c" / "one.jpg"),
        "--format",
        "jsonl",
        ok=False,
    )
    (record,) = _records(out.stdout)
    assert record["matches"][0]["verdict"] == "copy"  # identical file: score 1.0
    bad = run("--set", "nonsense=1", "settings", ok=False)
    assert bad.exit_code == 2 and "NAME=VALUE" in bad.stderr


def test_incompatible_database_is_refused_with_a_message(db_copy, crawl_dir):
    out = run("--set", "gem_p=4", "--db", str(db_copy), "scan", str(crawl_dir), ok=False)
    assert out.exit_code == 1 and "cannot be mixed" in out.stderr


def test_dedupe_groups_copies_and_leaves_others_alone(tmp_path, catalog_dir, crawl_dir):
    folder = tmp_path / "pile"
    folder.mkdir()
    for name in [
        "chelsea-jpeg.jpg",
        "chelsea-bright.jpg",
        "coffee-blur.jpg",
        "other-coins.jpg",
        "flat-grey.png",
    ]:
        shutil.copy(crawl_dir / name, folder / name)
    shutil.copy(catalog_dir / "chelsea.jpg", folder / "chelsea.jpg")
    shutil.copy(catalog_dir / "coffee.jpg", folder / "coffee.jpg")
    out = run("dedupe", str(folder), "--format", "jsonl", code=4)
    groups = [sorted(Path(p).name for p in g["paths"]) for g in _records(out.stdout)]
    assert groups == [
        ["chelsea-bright.jpg", "chelsea-jpeg.jpg", "chelsea.jpg"],
        ["coffee-blur.jpg", "coffee.jpg"],
    ]
    assert "flat-grey.png" in out.stderr  # unhashable: reported, never grouped
    # its own line (stages 1 and 2 score the blurred coffee 0.84), not the scan's verdict
    strict = run("--set", "dedupe_score=0.9", "dedupe", str(folder), "--format", "jsonl", code=4)
    assert [sorted(Path(p).name for p in g["paths"]) for g in _records(strict.stdout)] == [
        ["chelsea-bright.jpg", "chelsea.jpg"]
    ]


def test_console_script_runs(tmp_path, catalog_dir):
    exe = Path(sys.executable).parent / "copyscan"
    env = {**os.environ, "COPYSCAN_DB": str(tmp_path / "s.db")}
    subprocess.run([str(exe), "-q", "catalog", "add", str(catalog_dir / "rocket.jpg")], env=env, check=True)
    out = subprocess.run([str(exe), "catalog", "list"], env=env, capture_output=True, text=True, check=True)
    assert "rocket.jpg" in out.stdout


def test_thorough_mode_does_not_flag_unrelated_smooth_pictures(tmp_path, make_image):
    """Smooth colour fields all look alike to the CNN and give stage 3 no keypoints: without a
    stage-1 hit they are not copies (they were, at score ~0.7, before the cap)."""
    for i in range(12):
        make_image(f"catalog/c{i}.jpg", seed=i)
    for i in range(6):
        make_image(f"crawl/q{i}.jpg", seed=100 + i)
    make_image("crawl/copy.jpg", seed=3, quality=60)  # a real copy, re-encoded
    db = str(tmp_path / "s.db")
    run("--db", db, "catalog", "add", str(tmp_path / "catalog"))
    out = run("--db", db, "scan", str(tmp_path / "crawl"), "--mode", "thorough", "--format", "jsonl")
    flagged = {Path(r["query"]).name: r["matches"] for r in _records(out.stdout) if r["matches"]}
    assert list(flagged) == ["copy.jpg"], flagged
    assert Path(flagged["copy.jpg"][0]["catalog_path"]).name == "c3.jpg"


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_progress_bar_is_tqdm_with_a_rate_and_a_smoothed_eta(monkeypatch):
    from tqdm import tqdm

    from cli.app import PROGRESS_SMOOTHING, App

    screen = _Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    app = App(db="x.db", quiet=False, overrides={})
    with app.progress(40, "scanning") as bar:
        assert isinstance(bar, tqdm) and not bar.disable
        assert bar.smoothing == PROGRESS_SMOOTHING < 0.3  # a moving average, steadier than tqdm's
        for _ in range(40):
            bar.update(1)
        bar.refresh()
        app.say("a status line")  # above the bar, which stays
    shown = screen.getvalue()
    assert "scanning" in shown and "40/40" in shown and "a status line\n" in shown
    assert re.search(r"[\d.]+ images/s", shown), shown  # the rate
    for quiet, terminal in ((True, _Terminal()), (False, io.StringIO())):
        monkeypatch.setattr(sys, "stderr", terminal)
        with App(db="x.db", quiet=quiet, overrides={}).progress(3, "scanning") as bar:
            bar.update(3)
        assert terminal.getvalue() == ""  # --quiet, or stderr not a terminal: no bar


def test_a_status_line_while_the_model_loads(demo_db, crawl_dir):
    out = run("--db", str(demo_db), "check", str(crawl_dir / "coffee-bright.jpg"), ok=False)
    assert out.exit_code == EXIT_MATCH
    loading, loaded = out.stderr.splitlines()[:2]
    assert loading.startswith("loading the CNN model (EfficientNet-Lite0")
    assert re.fullmatch(r"model loaded in \d+\.\d s", loaded)
    quiet = run("--db", str(demo_db), "-q", "check", str(crawl_dir / "coffee-bright.jpg"), ok=False)
    assert quiet.stderr == ""


def test_help_and_the_package_describe_three_stages():
    import tomllib

    text = run("--help").stdout
    assert all(f"stage {n}" in text.lower() for n in (1, 2, 3))

    def walk(group: click.Group, prefix: list[str]):
        for name, command in group.commands.items():
            assert "two stages" not in run(*prefix, name, "--help").stdout.lower()
            if isinstance(command, click.Group):
                walk(command, [*prefix, name])

    walk(cli, [])
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    assert "geometric" in project["description"] and "tqdm" in " ".join(project["dependencies"])
