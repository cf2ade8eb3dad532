"""The infringement report as a self-contained HTML folder: ``index.html`` and ``thumbs/``.

The page is grouped by catalog image; each copy sits beside its catalog image with the
region stage 3 matched outlined on both. Every value is rendered on the server side into
escaped text and ``data-*`` attributes, so the page holds every pair even without
JavaScript; one inline script (allowed by its sha256 in the Content-Security-Policy) only
reorders and hides nodes, from controls or from the URL hash, e.g. ``#sort=date&verdict=copy``
(keys: ``sort`` = score | date | owner | catalog, ``verdict``, ``owner`` (empty: no owner),
``q`` (text in either path), ``new=1``). The page loads nothing from outside the folder.

Thumbnails are decoded with the project's safe loader, named from database ids (never from
file names) and written once per image path; an image that cannot be loaded gets a
placeholder saying why. Nothing here prints.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from detector.config import Settings
from detector.errors import ImageError, ReportError
from detector.intake.inputs import Input, InputReader, as_input
from detector.intake.loader import decode
from detector.outputs.links import web_link
from detector.outputs.records import display
from detector.outputs.report import Report, ReportRow
from detector.records import Match, Region

THUMB_DIR = "thumbs"
THUMB_SIDE = 240  # longer side of a thumbnail, pixels
THUMB_QUALITY = 82  # JPEG quality of thumbnails
SORT_KEYS: tuple[str, ...] = ("score", "date", "owner", "catalog")  # the script's orders, default first
VERDICTS: tuple[str, ...] = ("copy", "near-duplicate")
_THUMB_NAME = re.compile(r"[cq]-r?[0-9]+\.jpg")  # the only names written under thumbs/


@dataclass(frozen=True)
class Thumb:
    """One image as the page shows it: ``name`` is the file under ``thumbs/`` and
    ``width`` x ``height`` its size in pixels; when the image could not be loaded, ``name``
    is None and ``error`` says why."""

    name: str | None
    width: int = 0
    height: int = 0
    error: str | None = None


@dataclass(frozen=True)
class CatalogGroup:
    """A catalog image and the report rows that copy it, best score first; ``catalog_id`` is
    None for an image removed from the catalog since the scan, then ``number`` tells the
    groups of such images apart."""

    catalog_id: int | None
    catalog_path: str
    owner: str | None
    rows: tuple[ReportRow, ...]
    number: int = 0

    @property
    def thumb_name(self) -> str:
        return f"c-{int(self.catalog_id)}.jpg" if self.catalog_id is not None else f"c-r{self.number}.jpg"


class ThumbWriter:
    """Writes thumbnails into one ``thumbs/`` folder, one file per image path (a path seen
    again, under any id, reuses its first thumbnail or its first error). One reader for the
    whole report keeps the shard open and the Parquet row group read between its images;
    :meth:`close` lets them go."""

    def __init__(self, folder: Path, settings: Settings) -> None:
        self.folder = folder.resolve()
        self.settings = settings
        self.by_path: dict[str, Thumb] = {}
        self.written: set[str] = set()
        self.reader = InputReader(settings)

    def close(self) -> None:
        self.reader.close()

    def thumb(self, image: str | Input, name: str) -> Thumb:
        """The thumbnail of ``image`` (a path, or an input read from a shard or a manifest),
        written as ``thumbs/<name>`` on first use."""
        key = image if isinstance(image, str) else image.name
        if key not in self.by_path:
            self.by_path[key] = self._make(image, name)
        return self.by_path[key]

    def _make(self, image: str | Input, name: str) -> Thumb:
        try:
            rgb = decode(self.reader.read(as_input(image)), self.settings).rgb
        except ImageError as e:
            return Thumb(None, error=str(e) or type(e).__name__)
        im = Image.fromarray(rgb, "RGB")
        im.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS, reducing_gap=3.0)
        target = self._target(name)
        try:
            target.unlink(missing_ok=True)
            # "x" refuses to follow anything left at the name (a link planted there included).
            with open(target, "xb") as f:
                im.save(f, "JPEG", quality=THUMB_QUALITY)
        except OSError as e:
            raise ReportError(f"cannot write thumbnail {target}: {e.strerror or e}") from e
        self.written.add(name)
        return Thumb(name, im.width, im.height)

    def _target(self, name: str) -> Path:
        """The file for ``name``, checked to be a plain name directly inside the folder."""
        target = self.folder / name
        if not _THUMB_NAME.fullmatch(name) or target.parent != self.folder:
            raise ReportError(f"refusing thumbnail name {name!r}")
        return target

    def remove_stale(self) -> None:
        """Delete thumbnails an earlier report left in the folder that this one does not use
        (only files named like ours)."""
        for entry in os.scandir(self.folder):
            if _THUMB_NAME.fullmatch(entry.name) and entry.name not in self.written:
                try:
                    os.unlink(entry.path)
                except OSError as e:
                    raise ReportError(f"cannot remove stale thumbnail {entry.path}: {e}") from e


def write_html(report: Report, dest: Path, settings: Settings) -> Path:
    """Write ``report`` as the folder ``dest`` (created if needed): ``dest/index.html`` and
    its thumbnails in ``dest/thumbs/``. Returns the path of ``index.html``.

    Other files already in ``dest`` are left alone, except thumbnails of an earlier report.
    Raises :class:`~detector.errors.ReportError` when the folder cannot be written; images
    that cannot be loaded are shown as placeholders, never raised."""
    dest = Path(dest)
    folder = _prepare(dest)
    writer = ThumbWriter(folder, settings)
    try:
        page = render_page(report, writer)
    finally:
        writer.close()
    index = dest / "index.html"
    _write_text(index, page)
    writer.remove_stale()
    return index


def _prepare(dest: Path) -> Path:
    """Create ``dest/thumbs`` and check it is a real folder inside ``dest``."""
    folder = dest / THUMB_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"cannot create report folder {folder}: {e.strerror or e}") from e
    if folder.is_symlink() or folder.resolve().parent != dest.resolve():
        raise ReportError(f"{folder} is not a folder inside {dest}")
    return folder


def _write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) through a temporary file beside it."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.unlink(missing_ok=True)
        with open(tmp, "x", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        raise ReportError(f"cannot write {path}: {e.strerror or e}") from e


def group_rows(rows: Iterable[ReportRow]) -> list[CatalogGroup]:
    """Rows grouped by catalog image: groups by their best score, then catalog path;
    rows in a group by score, then query path (both best first)."""
    by_catalog: dict[tuple[int | None, str], list[ReportRow]] = {}
    for row in rows:
        by_catalog.setdefault((row.match.catalog_id, row.match.catalog_path), []).append(row)
    groups = []
    for number, ((catalog_id, path), members) in enumerate(by_catalog.items(), 1):
        members.sort(key=lambda r: (-r.match.score, r.query_path, r.item_id))
        groups.append(CatalogGroup(catalog_id, path, members[0].match.owner, tuple(members), number))
    groups.sort(key=lambda g: (-g.rows[0].match.score, g.catalog_path, g.catalog_id or 0))
    return groups


# --- the page ------------------------------------------------------------------------------


def render_page(report: Report, writer: ThumbWriter) -> str:
    """The whole ``index.html`` text; thumbnails are written through ``writer`` on the way."""
    groups = group_rows(report.rows)
    title = f"copyscan report: run {report.run.id}"
    parts = [_header(report, len(groups))]
    if groups:
        parts.append(_controls(report.rows))
        body = "\n".join(_group(g, writer) for g in groups)
        parts.append(
            f'<main id="report" data-sort="score" data-total="{len(report.rows)}"'
            f' data-shown="{len(report.rows)}">\n<div id="groups">\n{body}\n</div>\n'
            '<p id="none-shown" class="empty" hidden>No pair matches these filters.</p>\n</main>'
        )
    else:
        parts.append(f'<main id="report" data-total="0">{_empty(report)}</main>')
    return _document(title, "\n".join(parts))


def _document(title: str, body: str) -> str:
    csp = "; ".join(
        (
            "default-src 'none'",
            "img-src 'self'",
            f"style-src {_csp_hash(_STYLE)}",
            f"script-src {_csp_hash(_SCRIPT)}",
            "base-uri 'none'",
            "form-action 'none'",
        )
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"{body}\n<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )


def _csp_hash(source: str) -> str:
    """A CSP source expression allowing exactly this inline script or style text."""
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def _e(value: object) -> str:
    """Text (or attribute value) escaped for HTML, quotes included (non-UTF-8 file-name bytes
    shown as ``\\xXX``)."""
    return html.escape(display(str(value)), quote=True)


def _attrs(pairs: dict[str, object]) -> str:
    """` name="value"` for each pair, values escaped (names are ours, never data)."""
    return "".join(f' {name}="{_e(value)}"' for name, value in pairs.items())


def _header(report: Report, n_groups: int) -> str:
    run = report.run
    rows = report.rows
    copies = sum(r.match.verdict == "copy" for r in rows)
    facts: list[tuple[str, object]] = [
        ("run", run.id),
        ("command", run.command),
        ("status", run.status),
        ("mode", run.mode or "—"),
        ("started", run.started_at),
        ("finished", run.finished_at or "—"),
        ("images scanned", _count(run.items)),
        ("unusable images", _count(run.errors)),
        ("images matched", _count(run.matched)),
        ("pairs in report", len(rows)),
        ("copies", copies),
        ("near-duplicates", len(rows) - copies),
        ("new pairs", sum(r.new for r in rows)),
        ("catalog images", n_groups),
        ("new only", "yes" if report.new_only else "no"),
        ("previous run", report.previous_run if report.previous_run is not None else "—"),
        ("generated", report.generated_at),
    ]
    items = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in facts)
    scope = "new pairs" if report.new_only else "flagged pairs"
    parts = [
        "<header>",
        f"<h1>copyscan report: run {_e(run.id)} <small>({scope})</small></h1>",
        f'<dl class="run">{items}</dl>',
    ]
    if run.status != "finished":
        parts.append(
            f'<p class="warning">This run did not finish (status: {_e(run.status)}); '
            "the report may be incomplete.</p>"
        )
    parts.append("</header>")
    return "\n".join(parts)


def _count(value: int | None) -> str:
    return "—" if value is None else str(value)


def _empty(report: Report) -> str:
    what = "No new matches" if report.new_only else "No matches"
    since = ""
    if report.new_only and report.previous_run is not None:
        since = f" since run {_e(report.previous_run)}"
    return f'<p class="empty" id="no-matches">{what} in run {_e(report.run.id)}{since}.</p>'


def _controls(rows: tuple[ReportRow, ...]) -> str:
    """The sort and filter controls, hidden until the script shows them (they do nothing
    without it)."""
    labels = {"score": "score", "date": "date scanned", "owner": "owner", "catalog": "catalog path"}
    sort_opts = "".join(f'<option value="{k}">{labels[k]}</option>' for k in SORT_KEYS)
    verdict_opts = '<option value="">all</option>' + "".join(
        f'<option value="{v}">{v}</option>' for v in VERDICTS
    )
    owners = sorted({r.match.owner for r in rows if r.match.owner is not None})
    # Values carry a leading '=' so that an owner named like the 'all' choice stays distinct.
    owner_opts = ['<option value="">all</option>']
    if any(r.match.owner is None for r in rows):
        owner_opts.append('<option value="=">(no owner)</option>')
    owner_opts += [f'<option value="={_e(o)}">{_e(o)}</option>' for o in owners]
    return (
        '<div id="controls" class="controls" hidden>\n'
        f'<label>Sort by <select id="sort">{sort_opts}</select></label>\n'
        f'<label>Verdict <select id="verdict">{verdict_opts}</select></label>\n'
        f'<label>Owner <select id="owner">{"".join(owner_opts)}</select></label>\n'
        '<label>Path contains <input id="q" type="search" autocomplete="off"></label>\n'
        '<label><input id="new" type="checkbox"> new only</label>\n'
        f'<span id="shown" aria-live="polite">{len(rows)} of {len(rows)} pairs shown</span>\n'
        "</div>"
    )


def _group(group: CatalogGroup, writer: ThumbWriter) -> str:
    catalog = writer.thumb(group.catalog_path, group.thumb_name)
    verdicts = [r.match.verdict for r in group.rows]
    n_copy = verdicts.count("copy")
    summary = f"{len(verdicts)} flagged: {n_copy} copy, {len(verdicts) - n_copy} near-duplicate"
    attrs = _attrs(
        {
            "class": "catalog-group",
            "data-catalog-id": "" if group.catalog_id is None else group.catalog_id,
            "data-catalog": group.catalog_path,
            "data-owner": group.owner or "",
        }
    )
    matches = "\n".join(_match(row, catalog, writer) for row in group.rows)
    return (
        f"<section{attrs}>\n"
        '<div class="group-head">\n'
        f"<figure>{_thumb(catalog, None, 'catalog image')}<figcaption>catalog</figcaption></figure>\n"
        f'<div><h2 class="path">{_e(group.catalog_path)}</h2>\n'
        f"<p>owner: {_owner(group.owner)} · {_catalog_number(group.catalog_id)} · {_e(summary)}</p></div>\n"
        "</div>\n"
        f'<ul class="matches">\n{matches}\n</ul>\n</section>'
    )


def _match(row: ReportRow, catalog: Thumb, writer: ThumbWriter) -> str:
    query = writer.thumb(row.source or row.query_path, f"q-{int(row.item_id)}.jpg")
    meta = row.meta
    attrs = _attrs(
        {
            "class": "match",
            "data-catalog-id": "" if row.match.catalog_id is None else row.match.catalog_id,
            "data-catalog": row.match.catalog_path,
            "data-item-id": row.item_id,
            "data-query": " ".join(
                [row.query_path, *(str(meta[k]) for k in ("url", "page_url") if isinstance(meta.get(k), str))]
            ),
            "data-score": repr(float(row.match.score)),
            "data-verdict": row.match.verdict,
            "data-owner": row.match.owner or "",
            "data-scanned-at": row.scanned_at,
            "data-new": "1" if row.new else "0",
        }
    )
    verdict_class = f"verdict-{row.match.verdict}" if row.match.verdict in VERDICTS else "verdict-other"
    badge = ' <span class="badge">new</span>' if row.new else ""
    stage1 = (
        f"cosine {_num(row.match.cosine, '.3f')} · Hamming {_num(row.match.hamming, 'd')}"
        if row.match.cosine is not None or row.match.hamming is not None
        else "—"
    )
    facts = [
        (
            "score",
            f'<span class="score">{row.match.score:.3f}</span> '
            f'<span class="verdict {verdict_class}">{_e(row.match.verdict)}</span>{badge}',
        ),
        *_found_at(row),
        ("scanned", f"<time>{_e(row.scanned_at)}</time>"),
        ("owner", _owner(row.match.owner)),
        ("transform", _e(row.match.transform or "—")),
        ("inliers", _e(_num(row.match.inliers, "d"))),
        ("agreement", _e(_agreement(row.match))),
        ("similarity", _e(stage1)),
    ]
    dl = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in facts)
    return (
        f"<li{attrs}>\n"
        '<div class="pair">'
        f"<figure>{_thumb(query, row.match.query_region, 'copy', row.match.disagreement)}"
        "<figcaption>copy</figcaption></figure>"
        f"<figure>{_thumb(catalog, row.match.catalog_region, 'catalog image')}"
        "<figcaption>catalog</figcaption></figure>"
        "</div>\n"
        f'<dl class="facts">{dl}</dl>\n</li>'
    )


def _found_at(row: ReportRow) -> list[tuple[str, str]]:
    """Where the copy was found: the page that shows it and the image's URL (linked when they
    are web addresses), then the file or shard member it was read from."""
    meta = row.meta
    facts = []
    for label, key in (("page", "page_url"), ("image URL", "url")):
        value = meta.get(key)
        if isinstance(value, str) and value:
            facts.append((label, web_link(value, "path")))
    facts.append(("found at", f'<span class="path query-path">{_e(row.query_path)}</span>'))
    for label, key in (("source", "source"), ("seen", "seen_at")):
        value = meta.get(key)
        if value not in (None, ""):
            facts.append((label, _e(value)))
    return facts


def _catalog_number(catalog_id: int | None) -> str:
    return f"catalog #{_e(catalog_id)}" if catalog_id is not None else "removed from the catalog since"


def _owner(owner: str | None) -> str:
    return _e(owner) if owner is not None else '<span class="none">(no owner)</span>'


def _agreement(m: Match) -> str:
    """How much of the aligned overlap agrees, and how much of each picture it covers."""
    if m.agreement is None:
        return "—"
    covers = ""
    if m.query_coverage is not None and m.catalog_coverage is not None:
        covers = (
            f" (covering {m.query_coverage:.0%} of the copy, {m.catalog_coverage:.0%} of the catalog image)"
        )
    return f"{m.agreement:.0%} of the overlap{covers}"


def _num(value: float | int | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _thumb(thumb: Thumb, region: Region | None, alt: str, disagreement: tuple[Region, ...] = ()) -> str:
    """A thumbnail with ``region`` (fractions of the image) outlined over it, and dashed the
    parts that ``disagreement`` says differ from the other image; or the placeholder of an
    image that could not be loaded."""
    if thumb.name is None:
        return (
            f'<div class="thumb missing" role="img" aria-label="{_e(alt)} not available">'
            f"image not available: {_e(thumb.error)}</div>"
        )
    img = (
        f'<img src="{THUMB_DIR}/{_e(thumb.name)}" width="{thumb.width}" height="{thumb.height}"'
        f' alt="{_e(alt)}" loading="lazy" decoding="async">'
    )
    shapes = []
    points = _points(region, thumb.width, thumb.height)
    if points:
        shapes.append(f'<polygon points="{points}"/>')
    for area in disagreement:
        found = _points(area, thumb.width, thumb.height)
        if found:
            shapes.append(f'<polygon class="disagree" points="{found}"/>')
    outline = ""
    if shapes:
        outline = (
            f'<svg class="region" viewBox="0 0 {thumb.width} {thumb.height}" aria-hidden="true">'
            + "".join(shapes)
            + "</svg>"
        )
    return f'<div class="thumb">{img}{outline}</div>'


def _points(region: Region | None, width: int, height: int) -> str:
    """SVG ``points`` for a polygon of fractions scaled to ``width`` x ``height`` pixels
    (clamped to the image); empty when there is no polygon of at least three points."""
    if not region or len(region) < 3:
        return ""
    out = []
    for x, y in region:
        if not (math.isfinite(x) and math.isfinite(y)):  # a broken record: draw nothing
            return ""
        px = min(max(float(x), 0.0), 1.0) * width
        py = min(max(float(y), 0.0), 1.0) * height
        out.append(f"{px:.1f},{py:.1f}")
    return " ".join(out)


# The page's one style sheet and one script. They hold no data: the CSP allows exactly these
# texts by hash, so any other script or style (injected or not) is refused by the browser.
_STYLE = """
:root{color-scheme:light;font-family:system-ui,-apple-system,"Segoe UI",sans-serif;font-size:15px;
color:#1b1b1b;background:#f5f5f2}
body{margin:0 auto;max-width:1280px;padding:1rem 1.5rem}
h1{font-size:1.4rem;margin:.2rem 0 .6rem}h1 small{font-weight:400;color:#666;font-size:.9rem}
h2{font-size:1rem;margin:0 0 .3rem}
dl.run{display:grid;grid-template-columns:repeat(auto-fill,minmax(15rem,1fr));gap:.15rem 1rem;
margin:0 0 .8rem;font-size:.9rem}
dl.run div{display:flex;gap:.4rem}dl.run dt{color:#666}dl.run dt::after{content:":"}dd{margin:0}
.warning{background:#fff3cd;border:1px solid #e0c46c;padding:.5rem .8rem;border-radius:4px}
.controls{display:flex;flex-wrap:wrap;gap:.5rem 1.2rem;align-items:center;position:sticky;top:0;
z-index:2;background:#f5f5f2;padding:.6rem 0;border-bottom:1px solid #ddd}
#shown{color:#555;font-size:.9rem}
.catalog-group{background:#fff;border:1px solid #ddd;border-radius:6px;margin:1rem 0;padding:.8rem 1rem}
.group-head{display:flex;gap:1rem;align-items:flex-start}.group-head p{margin:0;color:#444}
.path{font-family:ui-monospace,"SFMono-Regular",Menlo,monospace;word-break:break-all;font-size:.9rem}
.matches{list-style:none;margin:.6rem 0 0;padding:0}
.match{display:flex;flex-wrap:wrap;gap:1rem;border-top:1px solid #eee;padding:.8rem 0 .2rem}
.pair{display:flex;gap:.5rem;align-items:flex-start}
figure{margin:0}figcaption{font-size:.75rem;color:#666;text-align:center;margin-top:.15rem}
.thumb{position:relative;display:inline-block;line-height:0;background:#eee}
.thumb img{display:block}
.group-head .thumb img{width:auto;height:120px}
.thumb svg{position:absolute;left:0;top:0;width:100%;height:100%;pointer-events:none}
.thumb polygon{fill:rgba(255,60,30,.12);stroke:#ff2d0a;stroke-width:2.5;stroke-linejoin:round;
vector-effect:non-scaling-stroke}
.thumb polygon.disagree{fill:rgba(30,90,255,.18);stroke:#1d4ed8;stroke-dasharray:4 3;stroke-width:1.5}
.missing{display:flex;align-items:center;justify-content:center;width:240px;height:150px;
box-sizing:border-box;padding:.6rem;line-height:1.3;font-size:.8rem;color:#8a1c1c;text-align:center;
word-break:break-word;background:repeating-linear-gradient(45deg,#f4e9e9 0 8px,#fbf5f5 8px 16px)}
.facts{display:grid;grid-template-columns:auto 1fr;gap:.15rem .8rem;margin:0;font-size:.9rem;
flex:1;min-width:18rem;align-content:start}
.facts dt{color:#666}.score{font-weight:600;font-variant-numeric:tabular-nums}
.verdict{font-weight:600}.verdict-copy{color:#a40000}.verdict-near-duplicate{color:#9a5b00}
.badge{display:inline-block;background:#0b62b8;color:#fff;border-radius:3px;padding:0 .35rem;
font-size:.75rem;font-weight:600;margin-left:.3rem}
.none{color:#888}
.empty{font-size:1.15rem;padding:2rem;text-align:center;background:#fff;border:1px solid #ddd;
border-radius:6px}
[hidden]{display:none!important}
"""

_SCRIPT = """
"use strict";
(() => {
  const report = document.getElementById("report");
  const controls = document.getElementById("controls");
  if (!report || !controls) return;
  const box = document.getElementById("groups");
  const groups = Array.from(box.querySelectorAll(".catalog-group"));
  const ui = {
    sort: document.getElementById("sort"), verdict: document.getElementById("verdict"),
    owner: document.getElementById("owner"), q: document.getElementById("q"),
    fresh: document.getElementById("new"),
  };
  const text = (a, b) => (a < b ? -1 : a > b ? 1 : 0);
  const score = (m) => parseFloat(m.dataset.score) || 0;
  const lastIfEmpty = (s) => (s === "" ? "\\uffff" : s.toLowerCase());
  const orders = {
    score: (a, b) => score(b) - score(a),
    date: (a, b) => text(b.dataset.scannedAt, a.dataset.scannedAt),
    owner: (a, b) => text(lastIfEmpty(a.dataset.owner), lastIfEmpty(b.dataset.owner)),
    catalog: (a, b) => text(a.dataset.catalog, b.dataset.catalog),
  };
  const compare = (key) => (a, b) => orders[key](a, b) || orders.score(a, b)
    || text(a.dataset.catalog, b.dataset.catalog) || text(a.dataset.query, b.dataset.query);
  const state = { sort: "score", verdict: "", owner: null, q: "", fresh: false };

  function fromHash() {
    const p = new URLSearchParams(location.hash.replace(/^#/, ""));
    const sort = p.get("sort");
    state.sort = Object.prototype.hasOwnProperty.call(orders, sort) ? sort : "score";
    state.verdict = p.get("verdict") || "";
    state.owner = p.has("owner") ? p.get("owner") : null;
    state.q = p.get("q") || "";
    state.fresh = p.get("new") === "1";
  }
  function toHash() {
    const p = new URLSearchParams();
    if (state.sort !== "score") p.set("sort", state.sort);
    if (state.verdict) p.set("verdict", state.verdict);
    if (state.owner !== null) p.set("owner", state.owner);
    if (state.q) p.set("q", state.q);
    if (state.fresh) p.set("new", "1");
    const h = p.toString();
    try { history.replaceState(null, "", h ? "#" + h : location.pathname + location.search); }
    catch (e) { /* some file:// settings refuse it; the view still works */ }
  }
  function fromControls() {
    state.sort = ui.sort.value;
    state.verdict = ui.verdict.value;
    state.owner = ui.owner.value ? ui.owner.value.slice(1) : null;
    state.q = ui.q.value;
    state.fresh = ui.fresh.checked;
  }
  function toControls() {
    ui.sort.value = state.sort;
    ui.verdict.value = state.verdict;
    ui.owner.value = state.owner === null ? "" : "=" + state.owner;
    if (ui.q.value !== state.q) ui.q.value = state.q;
    ui.fresh.checked = state.fresh;
  }
  function shows(m, needle) {
    const d = m.dataset;
    if (state.verdict && d.verdict !== state.verdict) return false;
    if (state.owner !== null && d.owner !== state.owner) return false;
    if (state.fresh && d.new !== "1") return false;
    if (needle && (d.query + "\\n" + d.catalog).toLowerCase().indexOf(needle) < 0) return false;
    return true;
  }
  function apply() {
    const cmp = compare(state.sort);
    const needle = state.q.toLowerCase();
    const heads = new Map();
    let shown = 0;
    for (const g of groups) {
      const list = g.querySelector(".matches");
      const matches = Array.from(list.children).sort(cmp);
      let visible = 0;
      for (const m of matches) {
        list.appendChild(m);
        const on = shows(m, needle);
        m.hidden = !on;
        if (on) { visible += 1; if (!heads.has(g)) heads.set(g, m); }
      }
      if (!heads.has(g)) heads.set(g, matches[0]);
      g.hidden = visible === 0;
      shown += visible;
    }
    groups.sort((a, b) => cmp(heads.get(a), heads.get(b)));
    for (const g of groups) box.appendChild(g);
    const total = report.dataset.total;
    report.dataset.sort = state.sort;
    report.dataset.shown = String(shown);
    document.getElementById("shown").textContent = shown + " of " + total + " pairs shown";
    document.getElementById("none-shown").hidden = shown > 0;
  }
  function fromUser() { fromControls(); toHash(); apply(); }
  for (const el of [ui.sort, ui.verdict, ui.owner, ui.fresh]) el.addEventListener("change", fromUser);
  ui.q.addEventListener("input", fromUser);
  window.addEventListener("hashchange", () => { fromHash(); toControls(); apply(); });
  fromHash();
  toControls();
  apply();
  controls.hidden = false;
})();
"""
