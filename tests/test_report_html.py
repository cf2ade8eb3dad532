"""The infringement report writers: the HTML folder (contents, escaping, CSP, thumbnails,
outlines, and in headless Chromium the DOM, the URL-hash filters and a screenshot), and the
CSV and JSON forms."""

from __future__ import annotations

import base64
import csv
import dataclasses
import hashlib
import io
import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import pytest
from PIL import Image

from detector.config import Settings
from detector.errors import ReportError
from detector.intake.inputs import Input, InputReader, meta_text
from detector.outputs.html import THUMB_SIDE, write_html
from detector.outputs.records import CSV_COLUMNS
from detector.outputs.report import Report, ReportRow, report_csv, report_json
from detector.records import Match, RunInfo
from tests.browser import dump_dom, needs_chromium, run_page, screenshot

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
ARTIFACTS = ROOT / "test-artifacts"
SCRIPT_PAYLOAD = "<script>alert(1)</script>"
ATTR_PAYLOAD = '"><img src=x onerror=alert(1)>'
SQUARE = ((0.1, 0.1), (0.9, 0.1), (0.9, 0.9), (0.1, 0.9))
TILTED = ((0.05, 0.12), (0.93, 0.04), (0.97, 0.9), (0.08, 0.95))
RUN = RunInfo(
    id=7,
    command="scan",
    args={"paths": ["crawl/"], "mode": "fast"},
    started_at="2024-05-01T10:00:00+00:00",
    finished_at="2024-05-01T10:05:00+00:00",
    status="finished",
    mode="fast",
    items=12,
    errors=1,
    matched=6,
)


def pair(
    item_id: int, query: Path | str, catalog: str, catalog_id: int, score: float, **kw: object
) -> ReportRow:
    """A report row with plausible evidence; ``kw`` overrides any field."""
    fields: dict[str, object] = {
        "run_id": RUN.id,
        "item_id": item_id,
        "query_path": str(query),
        "query_sha256": f"{item_id:064x}",
        "scanned_at": f"2024-05-01T10:0{item_id % 10}:00+00:00",
        "catalog_id": catalog_id,
        "catalog_path": str(FIXTURES / "catalog" / catalog),
        "owner": "Acme Pictures",
        "score": score,
        "verdict": "copy" if score >= 0.51 else "near-duplicate",
        "cosine": 0.9,
        "hamming": 6,
        "transform": "identity",
        "inliers": 42,
        "query_region": SQUARE,
        "catalog_region": TILTED,
        "agreement": 0.875,
        "query_coverage": 0.9,
        "catalog_coverage": 0.8125,
        "disagreement": (((0.5, 0.5), (0.75, 0.5), (0.75, 0.75), (0.5, 0.75)),),
        "new": True,
    }
    fields.update(kw)
    keys = ("run_id", "item_id", "query_path", "query_sha256", "scanned_at", "new", "rank")
    outer = {k: fields.pop(k) for k in keys if k in fields}
    meta = fields.pop("meta", None)
    source = Input(str(outer["query_path"]), meta=meta_text(meta)) if meta else None  # type: ignore[arg-type]
    return ReportRow(**outer, match=Match(**fields), source=source)  # type: ignore[arg-type]


def hostile_rows(tmp: Path) -> tuple[ReportRow, ...]:
    """Six pairs over three catalog images: regions, a query missing on disk, and a path
    and an owner holding markup. One real file is named after an attribute payload."""
    hostile_file = tmp / f"{ATTR_PAYLOAD}.jpg"
    shutil.copyfile(FIXTURES / "crawl" / "chelsea-jpeg.jpg", hostile_file)
    crawl = FIXTURES / "crawl"
    return (
        pair(1, crawl / "astronaut-crop.jpg", "astronaut.jpg", 1, 0.93, transform="identity+trim"),
        pair(2, crawl / "astronaut-border.jpg", "astronaut.jpg", 1, 0.47, new=False),
        pair(3, crawl / "coffee-bright.jpg", "coffee.jpg", 2, 0.81, owner=ATTR_PAYLOAD),
        pair(
            4,
            tmp / "gone" / f"{SCRIPT_PAYLOAD}.jpg",
            "coffee.jpg",
            2,
            0.66,
            owner=ATTR_PAYLOAD,
            query_region=None,
            catalog_region=None,
            inliers=None,
        ),
        pair(5, hostile_file, "chelsea.jpg", 3, 0.58, owner=None, transform="hflip", new=False),
        pair(6, crawl / "chelsea-crop.jpg", "chelsea.jpg", 3, 0.41, owner=None, catalog_region=None),
    )


def make_report(rows: tuple[ReportRow, ...], new_only: bool = False) -> Report:
    return Report(RUN, rows, new_only, previous_run=6, generated_at="2024-05-02T00:00:00+00:00")


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Report, Path]:
    """The hostile report written once for the module: (report, path of index.html)."""
    tmp = tmp_path_factory.mktemp("report")
    report = make_report(hostile_rows(tmp))
    return report, write_html(report, tmp / "out", Settings())


# --- a small DOM for html.parser ----------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


@dataclass
class Node:
    """An element: tag, attributes (None for a bare attribute) and children."""

    tag: str
    attrs: dict[str, str | None]
    children: list[Node | str] = field(default_factory=list)

    def iter(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        return [
            n
            for n in self.iter()
            if (tag is None or n.tag == tag) and (cls is None or cls in (n.attrs.get("class") or "").split())
        ]

    def find(self, tag: str | None = None, cls: str | None = None) -> Node:
        found = self.find_all(tag, cls)
        assert found, f"no <{tag or '*'} class={cls}>"
        return found[0]

    def by_id(self, id_: str) -> Node:
        return next(n for n in self.iter() if n.attrs.get("id") == id_)

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    @property
    def hidden(self) -> bool:
        return "hidden" in self.attrs


class TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(text: str) -> Node:
    builder = TreeBuilder()
    builder.feed(text)
    builder.close()
    return builder.root


def visible_matches(doc: Node) -> list[Node]:
    """The .match elements neither hidden themselves nor inside a hidden group, in order."""
    return [
        m
        for g in doc.find_all(cls="catalog-group")
        if not g.hidden
        for m in g.find_all(cls="match")
        if not m.hidden
    ]


def match_key(m: Node) -> tuple[str | None, ...]:
    a = m.attrs
    return (a["data-catalog-id"], a["data-query"], a["data-score"], a["data-verdict"], a["data-owner"])


def row_key(r: ReportRow) -> tuple[str | None, ...]:
    return (str(r.match.catalog_id), r.query_path, repr(r.match.score), r.match.verdict, r.match.owner or "")


def csp_of(doc: Node) -> dict[str, list[str]]:
    meta = next(m for m in doc.find_all("meta") if m.attrs.get("http-equiv") == "Content-Security-Policy")
    policy = meta.attrs["content"] or ""
    return {d.split()[0]: d.split()[1:] for d in (p.strip() for p in policy.split(";")) if d}


def sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# --- the folder -----------------------------------------------------------------------------


def test_folder_holds_index_and_id_named_thumbnails_only(written: tuple[Report, Path]) -> None:
    _, index = written
    dest = index.parent
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files[0] == "index.html"
    thumbs = files[1:]
    assert all(re.fullmatch(r"thumbs/[cq]-\d+\.jpg", f) for f in thumbs), thumbs
    # 3 catalog images + 5 queries on disk; the missing query has no thumbnail.
    assert len(thumbs) == 8
    assert {p.name for p in (dest / "thumbs").iterdir()} == {f.split("/")[1] for f in thumbs}
    doc = parse(index.read_text())
    srcs = {img.attrs["src"] for img in doc.find_all("img")}
    assert srcs == set(thumbs)


def test_thumbnails_decode_and_fit_the_bound(written: tuple[Report, Path]) -> None:
    _, index = written
    doc = parse(index.read_text())
    for img in doc.find_all("img"):
        src = img.attrs["src"] or ""
        with Image.open(index.parent / src) as im:
            im.load()
            assert im.format == "JPEG"
            assert max(im.size) == THUMB_SIDE  # every fixture is larger than the bound
            assert (str(im.width), str(im.height)) == (img.attrs["width"], img.attrs["height"])


def test_payloads_stay_inert_text(written: tuple[Report, Path]) -> None:
    _, index = written
    text = index.read_text()
    assert SCRIPT_PAYLOAD not in text
    assert ATTR_PAYLOAD not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in text
    assert text.count("<script") == 1
    doc = parse(text)
    assert len(doc.find_all("script")) == 1
    assert all(not name.startswith("on") for n in doc.iter() for name in n.attrs)
    assert all((img.attrs["src"] or "").startswith("thumbs/") for img in doc.find_all("img"))
    # The payloads are there as the text a reader sees.
    assert any(SCRIPT_PAYLOAD in n.text() for n in doc.find_all(cls="query-path"))
    assert any(ATTR_PAYLOAD in m.text() for m in doc.find_all(cls="match"))


def test_csp_allows_only_the_page_itself(written: tuple[Report, Path]) -> None:
    _, index = written
    text = index.read_text()
    doc = parse(text)
    csp = csp_of(doc)
    script = doc.find("script").text()
    style = doc.find("style").text()
    assert csp["default-src"] == ["'none'"]
    assert csp["img-src"] == ["'self'"]
    assert csp["script-src"] == [sha256_source(script)]
    assert csp["style-src"] == [sha256_source(style)]
    assert csp["base-uri"] == ["'none'"]
    assert "unsafe-inline" not in text and "http://" not in text and "https://" not in text
    assert not re.search(r"\sstyle=", text)  # inline style attributes would be refused by the CSP


def test_matches_are_grouped_by_catalog_image(written: tuple[Report, Path]) -> None:
    report, index = written
    doc = parse(index.read_text())
    groups = doc.find_all(cls="catalog-group")
    assert [g.attrs["data-catalog-id"] for g in groups] == ["1", "2", "3"]  # by best score
    for g in groups:
        ids = {m.attrs["data-catalog-id"] for m in g.find_all(cls="match")}
        assert ids == {g.attrs["data-catalog-id"]}
    matches = doc.find_all(cls="match")
    assert sorted(map(match_key, matches)) == sorted(map(row_key, report.rows))
    assert [m.attrs["data-new"] for m in matches] == ["1", "0", "1", "1", "0", "1"]
    assert sum(len(m.find_all(cls="badge")) for m in matches) == 4
    first = matches[0].text()
    assert "0.930" in first and "identity+trim" in first and "2024-05-01T10:01:00+00:00" in first


def test_regions_are_outlined_as_svg_polygons(written: tuple[Report, Path]) -> None:
    report, index = written
    doc = parse(index.read_text())
    by_item = {m.attrs["data-item-id"]: m for m in doc.find_all(cls="match")}
    for row in report.rows:
        match = by_item[str(row.item_id)]
        thumbs = match.find_all(cls="thumb")
        assert len(thumbs) == 2  # the copy, then the catalog image
        for thumb, region in zip(thumbs, (row.match.query_region, row.match.catalog_region), strict=True):
            polygons = thumb.find_all("polygon")
            if region is None or "missing" in (thumb.attrs["class"] or ""):
                assert polygons == []
                continue
            img = thumb.find("img")
            w, h = int(img.attrs["width"] or 0), int(img.attrs["height"] or 0)
            assert thumb.find("svg").attrs["viewbox"] == f"0 0 {w} {h}"
            points = [float(v) for p in (polygons[0].attrs["points"] or "").split() for v in p.split(",")]
            assert points == pytest.approx([v for x, y in region for v in (x * w, y * h)], abs=0.06)


def test_missing_image_gets_a_placeholder(written: tuple[Report, Path]) -> None:
    _, index = written
    doc = parse(index.read_text())
    match = next(m for m in doc.find_all(cls="match") if m.attrs["data-item-id"] == "4")
    missing = match.find(cls="missing")
    assert missing.text().startswith("image not available: ")
    assert "No such file" in missing.text()
    assert len(match.find_all("img")) == 1  # the catalog image still shows


def test_header_tells_the_run(written: tuple[Report, Path]) -> None:
    _, index = written
    header = parse(index.read_text()).find("header")
    facts = {div.find("dt").text(): div.find("dd").text() for div in header.find("dl").find_all("div")}
    assert header.find("h1").text() == "copyscan report: run 7 (flagged pairs)"
    expected = {
        "run": "7",
        "status": "finished",
        "started": RUN.started_at,
        "finished": RUN.finished_at,
        "images scanned": "12",
        "pairs in report": "6",
        "copies": "4",
        "near-duplicates": "2",
        "new pairs": "4",
        "catalog images": "3",
        "new only": "no",
        "previous run": "6",
    }
    assert {k: facts[k] for k in expected} == expected
    assert header.find_all(cls="warning") == []


def test_unfinished_run_is_flagged(tmp_path: Path, settings: Settings) -> None:
    report = dataclasses.replace(make_report(()), run=dataclasses.replace(RUN, status="running"))
    text = write_html(report, tmp_path / "out", settings).read_text()
    assert "did not finish (status: running)" in text


@pytest.mark.parametrize(
    ("new_only", "message"),
    [(False, "No matches in run 7."), (True, "No new matches in run 7 since run 6.")],
)
def test_empty_report_says_so(tmp_path: Path, settings: Settings, new_only: bool, message: str) -> None:
    index = write_html(make_report((), new_only=new_only), tmp_path / "out", settings)
    doc = parse(index.read_text())
    assert doc.by_id("no-matches").text() == message
    assert doc.find_all(cls="match") == []
    assert list((tmp_path / "out" / "thumbs").iterdir()) == []


def test_rewrite_drops_stale_thumbnails_only(tmp_path: Path, settings: Settings) -> None:
    dest = tmp_path / "out"
    rows = hostile_rows(tmp_path)
    write_html(make_report(rows), dest, settings)
    (dest / "notes.txt").write_text("mine")
    (dest / "thumbs" / "keep.png").write_bytes(b"x")
    write_html(make_report(rows[:1]), dest, settings)
    assert sorted(p.name for p in (dest / "thumbs").iterdir()) == ["c-1.jpg", "keep.png", "q-1.jpg"]
    assert (dest / "notes.txt").read_text() == "mine"


def test_thumbs_folder_must_be_inside_dest(tmp_path: Path, settings: Settings) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (dest / "thumbs").symlink_to(elsewhere)
    with pytest.raises(ReportError, match="not a folder inside"):
        write_html(make_report(hostile_rows(tmp_path)), dest, settings)
    assert list(elsewhere.iterdir()) == []


def test_thumbnail_links_are_replaced_not_followed(tmp_path: Path, settings: Settings) -> None:
    dest = tmp_path / "out"
    (dest / "thumbs").mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (dest / "thumbs" / "c-1.jpg").symlink_to(victim)
    write_html(make_report(hostile_rows(tmp_path)[:1]), dest, settings)
    assert victim.read_text() == "precious"
    assert not (dest / "thumbs" / "c-1.jpg").is_symlink()


def test_dest_that_is_a_file_raises(tmp_path: Path, settings: Settings) -> None:
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(ReportError, match="cannot create report folder"):
        write_html(make_report(()), tmp_path / "out", settings)


def test_thousand_rows_decode_each_image_once(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = ["astronaut.jpg", "chelsea.jpg", "coffee.jpg"]
    crawl = sorted((FIXTURES / "crawl").glob("[acr]*-[bcdj]*.jpg"))[:6]
    rows = tuple(
        pair(i, crawl[i % len(crawl)], catalog[i % 3], 1 + i % 3, 0.4 + (i % 500) / 1000) for i in range(1000)
    )
    loads: list[str] = []
    real_read = InputReader.read

    def counting_read(reader: InputReader, image: Input) -> bytes:
        loads.append(image.name)
        return real_read(reader, image)

    monkeypatch.setattr(InputReader, "read", counting_read)
    start = time.perf_counter()
    index = write_html(make_report(rows), tmp_path / "out", settings)
    elapsed = time.perf_counter() - start
    assert sorted(loads) == sorted({*map(str, crawl), *(str(FIXTURES / "catalog" / c) for c in catalog)})
    assert len(list((tmp_path / "out" / "thumbs").iterdir())) == len(loads)
    assert len(parse(index.read_text()).find_all(cls="match")) == 1000
    assert elapsed < 30, f"1,000 rows took {elapsed:.1f} s"


# --- CSV and JSON ---------------------------------------------------------------------------


def test_report_csv_neutralises_formulas(tmp_path: Path) -> None:
    rows = (
        *hostile_rows(tmp_path),
        pair(8, '=HYPERLINK("http://evil.example/","click")', "coffee.jpg", 2, 0.7, owner="@cmd"),
        pair(9, "+1-1", "coffee.jpg", 2, 0.4, owner="-2", transform="\tx", query_region=None),
    )
    out = io.StringIO()
    report_csv(make_report(rows), out)
    read = list(csv.reader(io.StringIO(out.getvalue())))
    assert tuple(read[0]) == CSV_COLUMNS
    records = [dict(zip(CSV_COLUMNS, r, strict=True)) for r in read[1:]]
    assert len(records) == len(rows)
    evil, plus = records[-2], records[-1]
    assert evil["query"] == "'" + rows[-2].query_path
    assert evil["owner"] == "'@cmd"
    assert plus["query"] == "'+1-1" and plus["owner"] == "'-2" and plus["transform"] == "'\tx"
    assert plus["query_region"] == ""
    assert all(not c.startswith(("=", "+", "-", "@", "\t", "\r")) for r in read for c in r)
    first = records[0]
    assert first["run_id"] == "7" and first["catalog_id"] == "1" and first["score"] == "0.9300"
    assert first["new"] == "true" and records[1]["new"] == "false"
    assert json.loads(first["query_region"]) == [list(p) for p in SQUARE]
    assert " " not in first["query_region"]
    assert records[3]["owner"] == ATTR_PAYLOAD and records[3]["inliers"] == ""


def test_report_json_round_trips(tmp_path: Path) -> None:
    report = make_report(hostile_rows(tmp_path))
    data = json.loads(json.dumps(report_json(report)))
    assert data == report_json(report)
    rows = tuple(
        pair(
            r.pop("item_id"),
            r.pop("query_path"),
            "",
            r.pop("catalog_id"),
            r.pop("score"),
            **{
                **r,
                "query_region": tuple(map(tuple, r["query_region"])) if r["query_region"] else None,
                "catalog_region": tuple(map(tuple, r["catalog_region"])) if r["catalog_region"] else None,
                "disagreement": tuple(tuple(map(tuple, d)) for d in r["disagreement"]),
            },
        )
        for r in data["rows"]
    )
    rebuilt = Report(
        RunInfo(**data["run"]), rows, data["new_only"], data["previous_run"], data["generated_at"]
    )
    assert rebuilt == report
    assert data["rows"][0]["query_region"] == [[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9]]


# --- in headless Chromium ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser_run(written: tuple[Report, Path]) -> tuple[Node, tuple[str, ...]]:
    """The written page after its script ran: (parsed DOM, console messages)."""
    _, index = written
    page = run_page(index, "--dump-dom")
    return parse(page.stdout), page.console


@needs_chromium
def test_browser_dom_holds_every_match(
    written: tuple[Report, Path], browser_run: tuple[Node, tuple[str, ...]]
) -> None:
    report, _ = written
    doc, console = browser_run
    assert not doc.by_id("controls").hidden  # the script ran under the CSP
    assert not [line for line in console if "Content Security Policy" in line]
    matches = visible_matches(doc)
    assert sorted(map(match_key, matches)) == sorted(map(row_key, report.rows))
    assert doc.by_id("report").attrs["data-shown"] == "6"
    assert len(doc.find_all("script")) == 1
    assert all((img.attrs["src"] or "").startswith("thumbs/") for img in doc.find_all("img"))
    assert all(not name.startswith("on") for n in doc.iter() for name in n.attrs)
    assert any(SCRIPT_PAYLOAD in n.text() for n in doc.find_all(cls="query-path"))
    assert [m.attrs["data-score"] for m in matches] == ["0.93", "0.47", "0.81", "0.66", "0.58", "0.41"]


@needs_chromium
@pytest.mark.parametrize(
    ("fragment", "expected_items"),
    [
        ("verdict=copy", ["1", "3", "4", "5"]),
        ("verdict=near-duplicate", ["2", "6"]),
        ("owner=" + quote(ATTR_PAYLOAD), ["3", "4"]),
        ("owner=", ["5", "6"]),  # pairs with no owner
        ("new=1&verdict=copy", ["1", "3", "4"]),
        ("q=CROP", ["1", "6"]),  # either path, any case
        ("sort=date", ["6", "5", "4", "3", "2", "1"]),  # groups by their newest pair
        ("sort=catalog&q=crawl", ["1", "2", "6", "3"]),  # astronaut, chelsea, coffee
        ("sort=owner", ["3", "4", "1", "2", "5", "6"]),  # '"><img' < Acme < no owner (last)
    ],
)
def test_browser_url_hash_sorts_and_filters(
    written: tuple[Report, Path], fragment: str, expected_items: list[str]
) -> None:
    _, index = written
    doc = parse(dump_dom(index, fragment=fragment))
    shown = [m.attrs["data-item-id"] for m in visible_matches(doc)]
    assert shown == expected_items
    assert doc.by_id("report").attrs["data-shown"] == str(len(expected_items))
    assert len(doc.find_all(cls="match")) == 6  # hidden, never removed


@needs_chromium
def test_browser_refuses_an_injected_script(written: tuple[Report, Path]) -> None:
    _, index = written
    evil = index.with_name("evil.html")
    evil.write_text(
        index.read_text().replace("</body>", '<script>document.body.dataset.pwned = "1"</script></body>')
    )
    try:
        page = run_page(evil, "--dump-dom")
    finally:
        evil.unlink()
    assert "data-pwned" not in page.stdout
    assert any("Content Security Policy" in line for line in page.console)


@needs_chromium
def test_browser_screenshot(written: tuple[Report, Path]) -> None:
    _, index = written
    png = screenshot(index, ARTIFACTS / "report.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        assert im.size == (1280, 1000)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 5000, "the thumbnails did not render"
