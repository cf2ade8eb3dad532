"""The ``page`` attack: a copy shown small inside a real web page, rendered by headless
Chromium and captured as a screenshot, as a crawler or a moderator sees it.

Four layouts, each a page written here in plain HTML and CSS: a social feed (navigation and
trending columns, posts with avatars, names, text and buttons), a product listing (a grid of
product cards under a search bar), an image-search grid (rows of thumbnails of one height)
and an article (a headline, paragraphs and a figure with a caption floated into the text).
The copy is one picture among others (``others``, or pictures drawn from the rng), shown at
10-40 % of the page's width, always inside the captured viewport. Nothing is fetched: the
page and its pictures are local files, and Chromium runs with no network access.
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from detector.errors import CopyscanError
from detector.tasks.attacks import Attacked, _check, _done, _filler, _pick, _words

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
LAYOUTS = ("feed", "products", "search", "article")
_TIMEOUT_S = 60.0
HEADLESS = (  # every run: no window, no sandbox (containers), a fresh profile's first run skipped
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-extensions",
    "--mute-audio",
)
_FLAGS = (
    *HEADLESS,
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--allow-file-access-from-files",
    "--proxy-server=127.0.0.1:9",  # nothing may be fetched: every address is refused
    "--virtual-time-budget=3000",
)


class RendererMissing(CopyscanError):
    """No headless Chromium to render pages with."""


class RenderFailed(CopyscanError):
    """Chromium ran but gave no usable page: it timed out, wrote no screenshot, or the copy is
    not visible in it. One image's failure: the others are rendered as usual."""


def find_browser() -> str | None:
    """The Chromium (or Chrome) executable: ``COPYSCAN_CHROMIUM`` when set, else the first of
    :data:`BROWSERS` on PATH; None when there is none."""
    given = os.environ.get("COPYSCAN_CHROMIUM")
    if given:
        return given if shutil.which(given) else None
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def page(rgb: np.ndarray, rng: np.random.Generator, others: Sequence[np.ndarray] = ()) -> Attacked:
    """The image inside a rendered web page of a layout drawn from :data:`LAYOUTS`, at a
    width of 10-40 % of the page (1,200-1,440 px wide). The name holds the layout, the
    width share and ``box=(x0, y0, x1, y1)``: where the copy lies in the screenshot.
    Raises :class:`RendererMissing` without a browser."""
    _check(rgb)
    browser = find_browser()
    if browser is None:
        raise RendererMissing(
            "the page attack renders web pages in headless Chromium: install it (Debian: "
            "apt-get install chromium) or set COPYSCAN_CHROMIUM to its path"
        )
    layout = _pick(rng, LAYOUTS)
    share = float(rng.uniform(0.10, 0.40))
    width = int(rng.integers(1200, 1441))
    h, w = rgb.shape[:2]
    shown_w = max(48, round(share * width))
    shown_h = max(32, round(shown_w * h / w))
    n_others = {"feed": 4, "products": 11, "search": 17, "article": 3}[layout]
    pictures = [others[int(rng.integers(len(others)))] if others else _filler(rng) for _ in range(n_others)]
    with tempfile.TemporaryDirectory(prefix="copyscan-page-") as tmp:
        folder = Path(tmp)
        Image.fromarray(rgb).save(folder / "copy.png")
        for k, picture in enumerate(pictures):
            small = _at_most(picture, 640)
            Image.fromarray(small).save(folder / f"other{k}.jpg", quality=92)
        body, height = _LAYOUT_HTML[layout](rng, shown_w, shown_h, width, len(pictures))
        (folder / "index.html").write_text(_document(body), encoding="utf-8")
        shot = _render(browser, folder, width, min(max(height, 700), 2600))
    box = _locate(shot, rgb, shown_w, shown_h)
    x0, y0, x1, y1 = box
    name = (
        f"page {layout} {shot.shape[1]}x{shot.shape[0]} image {x1 - x0}x{y1 - y0} "
        f"({(x1 - x0) / shot.shape[1]:.0%} of the width) box=({x0}, {y0}, {x1}, {y1})"
    )
    return _done(rgb, shot, "page", name)


def _render(browser: str, folder: Path, width: int, height: int) -> np.ndarray:
    png = folder / "shot.png"
    command = [
        browser,
        *_FLAGS,
        f"--user-data-dir={folder / 'profile'}",
        f"--window-size={width},{height}",
        f"--screenshot={png}",
        (folder / "index.html").as_uri(),
    ]
    try:
        subprocess.run(command, capture_output=True, timeout=_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as e:
        raise RenderFailed(f"headless Chromium took over {_TIMEOUT_S:.0f} s to render a page") from e
    if not png.exists():
        raise RenderFailed(f"headless Chromium ({browser}) wrote no screenshot")
    with Image.open(png) as im:
        return np.asarray(im.convert("RGB")).copy()


def _locate(shot: np.ndarray, rgb: np.ndarray, shown_w: int, shown_h: int) -> tuple[int, int, int, int]:
    """Where the copy, shown ``shown_w`` x ``shown_h``, lies in the screenshot (normalised
    correlation of the grey images)."""
    grey = cv2.cvtColor(shot, cv2.COLOR_RGB2GRAY)
    templ = cv2.cvtColor(
        cv2.resize(rgb, (shown_w, shown_h), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY
    )
    if templ.shape[0] > grey.shape[0] or templ.shape[1] > grey.shape[1]:
        raise RenderFailed("the copy is larger than the rendered page")
    found = cv2.matchTemplate(grey, templ, cv2.TM_CCOEFF_NORMED)
    _, best, _, (x0, y0) = cv2.minMaxLoc(found)
    if best < 0.6:
        raise RenderFailed(f"the copy is not visible in the rendered page (best correlation {best:.2f})")
    return x0, y0, x0 + shown_w, y0 + shown_h


def _at_most(rgb: np.ndarray, side: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    k = side / max(h, w)
    if k >= 1:
        return rgb
    return cv2.resize(rgb, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)


def _text(rng: np.random.Generator, lo: int, hi: int) -> str:
    """:func:`detector.tasks.attacks._words`, escaped for HTML."""
    return html.escape(_words(rng, lo, hi))


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> str:
    r, g, b = (int(v) for v in rng.integers(lo, hi, size=3))
    return f"rgb({r},{g},{b})"


def _document(body: str) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'><style>"
        "body{margin:0;font-family:'DejaVu Sans',sans-serif;font-size:15px;color:#222}"
        "img{display:block} .muted{color:#777;font-size:13px} p{margin:6px 0;line-height:1.4}"
        ".btn{display:inline-block;padding:4px 10px;margin-right:8px;border-radius:12px;background:#eee}"
        "</style></head><body>" + body + "</body></html>"
    )


def _copy_img(w: int, h: int) -> str:
    return f"<img src='copy.png' style='width:{w}px;height:{h}px'>"


def _other_img(k: int, w: int, h: int | None = None, fit: str = "cover") -> str:
    height = f"height:{h}px;" if h else ""
    return f"<img src='other{k}.jpg' style='width:{w}px;{height}object-fit:{fit}'>"


def _feed(rng: np.random.Generator, cw: int, ch: int, width: int, n: int) -> tuple[str, int]:
    nav, side = round(width * rng.uniform(0.16, 0.22)), round(width * rng.uniform(0.2, 0.26))
    bg, card = ("#f0f2f5", "#fff") if rng.random() < 0.7 else ("#18191a", "#242526")
    ink = "#222" if card == "#fff" else "#ddd"
    first = rng.random() < 0.6  # the copy in the first post, else the second
    posts = []
    for k in range(2):
        mine = (k == 0) == first
        picture = _copy_img(cw, ch) if mine else _other_img(k, cw, round(cw * rng.uniform(0.5, 1.0)))
        posts.append(
            f"<div style='background:{card};margin:12px 0;padding:12px;border-radius:8px'>"
            f"<div style='display:flex;align-items:center;gap:8px'><div style='width:36px;height:36px;"
            f"border-radius:18px;background:{_colour(rng)}'></div><b>{_text(rng, 2, 3)}</b>"
            f"<span class='muted'>{int(rng.integers(1, 59))} min</span></div>"
            f"<p>{_text(rng, 6, 16)}</p>{picture}<p>{_text(rng, 3, 10)}</p>"
            "<span class='btn'>Like</span><span class='btn'>Comment</span>"
            "<span class='btn'>Share</span></div>"
        )
    trending = "".join(
        f"<div style='display:flex;gap:8px;margin:10px 0'>{_other_img(2 + k % max(1, n - 2), 56, 56)}"
        f"<div><b>{_text(rng, 1, 3)}</b><div class='muted'>{_text(rng, 2, 5)}</div></div></div>"
        for k in range(2)
    )
    links = "".join(f"<p style='color:{ink}'>{_text(rng, 1, 2)}</p>" for _ in range(9))
    body = (
        f"<div style='background:{bg};color:{ink};min-height:100vh'>"
        f"<div style='height:56px;background:{card};display:flex;align-items:center;padding:0 16px'>"
        f"<b style='font-size:22px;color:#1877f2'>{_text(rng, 1, 1)}</b>"
        "<div style='margin-left:24px;width:240px;height:34px;border-radius:17px;"
        "background:#e4e6eb'></div></div>"
        f"<div style='display:flex;gap:16px;padding:0 16px'><div style='width:{nav}px'>{links}</div>"
        f"<div style='width:{max(cw + 24, width - nav - side - 80)}px'>{''.join(posts)}</div>"
        f"<div style='width:{side}px'><h4>{_text(rng, 1, 2)}</h4>{trending}</div></div></div>"
    )
    return body, 56 + ch + cw + 760


def _products(rng: np.random.Generator, cw: int, ch: int, width: int, n: int) -> tuple[str, int]:
    cols = max(2, min(6, round((width - 64) / (cw + 40))))
    target = int(rng.integers(cols))  # in the first row: always in view
    cards = []
    box_h = ch
    for k in range(2 * cols):
        picture = (
            _copy_img(cw, ch)
            if k == target
            else _other_img(k % n, cw, box_h, "contain" if rng.random() < 0.5 else "cover")
        )
        cards.append(
            f"<div style='width:{cw}px;padding:12px;border:1px solid #ddd;border-radius:6px;background:#fff'>"
            f"{picture}<p>{_text(rng, 2, 5)}</p><b>${int(rng.integers(3, 500))}.99</b>"
            f"<div class='muted'>{'★' * int(rng.integers(1, 6))} ({int(rng.integers(2, 900))})</div></div>"
        )
    body = (
        "<div style='height:64px;background:#131921;display:flex;align-items:center;padding:0 20px'>"
        f"<b style='color:#fff;font-size:22px'>{_text(rng, 1, 1)}</b><div style='margin-left:30px;"
        "flex:1;height:38px;background:#fff;border-radius:4px'></div></div>"
        f"<div style='padding:8px 20px' class='muted'>{_text(rng, 3, 6)}</div>"
        f"<div style='display:flex;flex-wrap:wrap;gap:14px;padding:0 20px'>{''.join(cards)}</div>"
    )
    return body, 64 + 40 + 2 * (ch + 120) + 60


def _search(rng: np.random.Generator, cw: int, ch: int, width: int, n: int) -> tuple[str, int]:
    row_h = ch  # every thumbnail in the copy's row as tall as the copy
    target = int(rng.integers(0, 3))
    items = []
    for k in range(14):
        if k == target:
            items.append(_copy_img(cw, ch))
        else:
            tw = round(row_h * float(rng.uniform(0.6, 1.8)))
            items.append(_other_img(k % n, tw, row_h))
    body = (
        "<div style='height:60px;display:flex;align-items:center;padding:0 20px;"
        "border-bottom:1px solid #ddd'>"
        f"<b style='font-size:22px'>{_text(rng, 1, 1)}</b><div style='margin-left:30px;width:560px;"
        "height:40px;border:1px solid #ccc;border-radius:20px'></div></div>"
        f"<div style='padding:8px 20px' class='muted'>{_text(rng, 2, 4)}</div>"
        f"<div style='display:flex;flex-wrap:wrap;gap:8px;padding:0 20px'>{''.join(items)}</div>"
    )
    return body, 60 + 40 + 3 * (row_h + 8) + 60  # the copy is among the first three: at worst one per row


def _article(rng: np.random.Generator, cw: int, ch: int, width: int, n: int) -> tuple[str, int]:
    side = _pick(rng, ("left", "right"))
    text_w = max(cw + 200, round(width * 0.62))
    paragraphs = "".join(f"<p>{_text(rng, 30, 60)}</p>" for _ in range(4))
    figure = (
        f"<figure style='float:{side};margin:6px 20px;width:{cw}px'>{_copy_img(cw, ch)}"
        f"<figcaption class='muted'>{_text(rng, 4, 9)}</figcaption></figure>"
    )
    ad = _other_img(0, 200, 160)  # beside the text, under the masthead
    body = (
        "<div style='height:70px;border-bottom:3px solid #222;display:flex;align-items:center;"
        "padding:0 30px'>"
        f"<b style='font-family:serif;font-size:30px'>The {_text(rng, 1, 2)}</b></div>"
        f"<div style='display:flex;gap:30px;padding:20px 30px 0'><div style='width:{text_w}px'>"
        f"<h1 style='font-family:serif'>{_text(rng, 4, 8)}</h1><div class='muted'>{_text(rng, 2, 4)}</div>"
        f"{figure}{paragraphs}</div><div>{ad}<p class='muted'>{_text(rng, 3, 6)}</p></div></div>"
    )
    return body, 70 + 160 + ch + 300


_LAYOUT_HTML = {"feed": _feed, "products": _products, "search": _search, "article": _article}
