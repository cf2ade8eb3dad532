"""The infringement report end to end: index the demo catalog, scan a crawl holding copies,
unrelated pictures, a broken file and a file name built to inject HTML, write the report
with ``copyscan report``, open it in headless Chromium and read the DOM the browser built."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from click.testing import CliRunner

from cli.main import cli

from .browser import dump_dom, needs_chromium, run_page, screenshot
from .conftest import ROOT
from .test_report_html import parse, visible_matches

HOSTILE = '"><img src=x onerror=alert(1)>.jpg'


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output + result.stderr
    return result.stdout


def _crawl(tmp_path: Path, crawl_dir: Path) -> tuple[Path, dict[str, str | None]]:
    """A small crawl: name -> the catalog file it copies (None for unrelated or broken)."""
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    truth: dict[str, str | None] = {}
    for name, copies in [
        ("coffee-crop.jpg", "coffee.jpg"),
        ("rocket-border.jpg", "rocket.jpg"),
        ("astronaut-watermark.jpg", "astronaut.jpg"),
        ("chelsea-bright.jpg", "chelsea.jpg"),
        ("other-horse.jpg", None),
        ("other-coins.jpg", None),
        ("broken-download.jpg", None),
    ]:
        shutil.copy(crawl_dir / name, crawl / name)
        truth[name] = copies
    shutil.copy(crawl_dir / "chelsea-crop.jpg", crawl / HOSTILE)
    truth[HOSTILE] = "chelsea.jpg"
    return crawl, truth


@needs_chromium
def test_html_report_in_a_browser_shows_every_copy_and_nothing_else(tmp_path, catalog_dir, crawl_dir):
    db = str(tmp_path / "r.db")
    run("--db", db, "catalog", "add", str(catalog_dir), "--owner", "Demo <b>Rights</b>")
    crawl, truth = _crawl(tmp_path, crawl_dir)
    run("--db", db, "scan", str(crawl), "--mode", "thorough", code=4)  # the broken download
    out = tmp_path / "report"
    run("--db", db, "report", "--html", str(out), "--csv", str(tmp_path / "r.csv"))

    page = out / "index.html"
    source = page.read_text(encoding="utf-8")
    assert "<img src=x" not in source and "<b>Rights" not in source  # escaped, never markup
    doc = parse(dump_dom(page))
    assert len(doc.find_all("script")) == 1  # nothing injected became a script
    shown = {
        (Path(m.attrs["data-query"] or "").name, Path(m.attrs["data-catalog"] or "").name)
        for m in visible_matches(doc)
    }
    assert shown == {(q, c) for q, c in truth.items() if c is not None}
    for m in visible_matches(doc):
        assert m.attrs["data-verdict"] in ("copy", "near-duplicate")
        assert m.attrs["data-owner"] == "Demo <b>Rights</b>"  # the text itself, intact
        assert m.attrs["data-new"] == "1"
    crop = next(m for m in visible_matches(doc) if m.attrs["data-query"] == str(crawl / "coffee-crop.jpg"))
    assert crop.find_all("polygon"), "the matched region of a crop is outlined"
    assert {p.parent for p in out.rglob("*") if p.is_file()} <= {out, out / "thumbs"}
    console = run_page(page).console
    assert not [line for line in console if "Content Security Policy" in line], console
    png = screenshot(page, ROOT / "test-artifacts" / "report-e2e.png")
    assert png.stat().st_size > 20_000

    rows = list(csv.DictReader((tmp_path / "r.csv").open(encoding="utf-8")))
    assert {Path(r["query"]).name for r in rows} == {q for q, c in truth.items() if c}

    run("--db", db, "scan", str(crawl), "--mode", "thorough", code=4)  # nothing changed since
    again = tmp_path / "again"
    run("--db", db, "report", "--new", "--html", str(again))
    doc = parse(dump_dom(again / "index.html"))
    assert not visible_matches(doc)
    assert "No new matches in run 2 since run 1" in doc.by_id("no-matches").text()
