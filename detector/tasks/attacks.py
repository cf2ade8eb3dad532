"""A seeded suite of image attacks for evaluating copy detection: each family draws its
parameters from a ``numpy.random.Generator``, so one seed gives one reproducible attacked copy.

Every function takes and returns (h, w, 3) uint8 RGB; outputs are C-contiguous, never share
memory with the input, and are at least :data:`MIN_SIDE` pixels on a side. The ``name`` of an
:class:`Attacked` records the drawn parameters (including pixel boxes where a test or a report
needs to locate the original inside the copy).
"""

from __future__ import annotations

import colorsys
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "FAMILIES",
    "GEOMETRIC",
    "MIN_SIDE",
    "PHOTOMETRIC",
    "Attacked",
    "aspect",
    "attack",
    "blur",
    "border",
    "caption",
    "collage",
    "colour",
    "combo",
    "crop",
    "downscale",
    "flip",
    "jpeg",
    "mirror_crop",
    "noise",
    "overlay",
    "page",
    "perspective",
    "rotation",
    "screenshot",
]

FAMILIES: tuple[str, ...] = (
    "crop", "flip", "rotation", "border", "caption", "overlay", "screenshot",
    "perspective", "aspect", "colour", "blur", "noise", "jpeg", "downscale", "combo",
    "mirror-crop", "collage", "page",
)  # fmt: skip
# families that place the copy among other pictures (``others`` of :func:`attack`)
AMONG_OTHERS: tuple[str, ...] = ("collage", "page")
# combo draws its parts from these (a family added later stays out, so that the attacks drawn
# for a seed stay what they were)
GEOMETRIC: tuple[str, ...] = (
    "crop", "flip", "rotation", "border", "caption", "screenshot", "perspective", "aspect",
)  # fmt: skip
PHOTOMETRIC: tuple[str, ...] = ("colour", "blur", "noise", "jpeg", "downscale", "overlay")
MIN_SIDE = 32  # smallest input accepted and smallest output side produced, in pixels

_WORDS = (
    "when", "you", "finally", "the", "cat", "monday", "mood", "nobody", "me", "my", "code",
    "works", "friday", "coffee", "first", "time", "every", "weekend", "trust", "plan", "that",
    "feeling", "real", "life", "boss", "level", "happy", "dog", "summer", "again", "really",
    "best", "day", "ever", "sale", "new", "look", "wait", "for", "it", "just", "vibes",
)  # fmt: skip
_GREY = (128, 128, 128)

RGB = tuple[int, int, int]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass(frozen=True, eq=False)
class Attacked:
    """One attacked copy: ``rgb`` (h, w, 3) uint8; ``family`` one of FAMILIES; ``name`` a short
    human description with the drawn parameters, e.g. 'crop 0.72x0.72 at (0.10, 0.05) ...'.

    Compared by identity (``eq=False``): element-wise array equality has no single truth value.
    """

    rgb: np.ndarray
    family: str
    name: str


def attack(
    rgb: np.ndarray, family: str, rng: np.random.Generator, others: Sequence[np.ndarray] = ()
) -> Attacked:
    """A random attack of one family applied to (h, w, 3) uint8 RGB; deterministic for a given
    rng state (and ``others``). ``others``: pictures that are not copies of anything searched,
    for the families that show the copy among other pictures (:data:`AMONG_OTHERS`; drawn
    from the rng where none are given). Unknown family -> ``ValueError``."""
    if family == "collage":
        return collage(rgb, rng, others)
    if family == "page":
        return page(rgb, rng, others)
    if family not in _DISPATCH:
        raise ValueError(f"unknown attack family {family!r}; expected one of {', '.join(FAMILIES)}")
    return _DISPATCH[family](rgb, rng)


# ---------------------------------------------------------------------------- geometric


def crop(rgb: np.ndarray, rng: np.random.Generator) -> Attacked:
    """Keep a window of side fraction in [0.6, 0.9] (same for both sides, or drawn per side
    half the time), centred (30%) or anywhere inside (70%). The name ends with the pixel box
    ``box=(x0, y0, x1, y1)``: the output is ``rgb[y0:y1, x0:x1]``."""
    _check(rgb)
    h, w = rgb.shape[:2]
    sw = float(rng.uniform(0.6, 0.9))
    sh = sw if rng.random() < 0.5 else float(rng.uniform(0.6, 0.9))
    cw, ch = min(w - 1, max(1, round(sw * w))), min(h - 1, max(1, round(sh * h)))
    centred = bool(rng.random() < 0.3)
    if centred:
        x0, y0 = (w - cw) // 2, (h - ch) // 2
    else:
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    where = "centre" if centred else "off-centre"
    name = (
        f"crop {cw / w:.2f}x{ch / h:.2f} {where} at ({x0 / w:.2f}, {y0 / h:.2f}) "
        f"box=({x0}, {y0}, {x0 + cw}, {y0 + ch})"
    )
    return _done(rgb, rgb[y0 : y0 + ch, x0 : x0 + cw], "crop", name)


def flip(rgb: np.ndarray, rng: np.random.Generator) -> Attacked:
    """Horizontal mirror (80%, ``np.fliplr``) or vertical mirror (20%, ``np.flipud``)."""
    _check(rgb)
    if rng.random() < 0.8:
        return _done(rgb, np.fliplr(rgb), "flip", "flip horizontal")
    return _done(rgb, np.flipud(rgb), "flip", "flip vertical")


def mirror_crop(rgb: np.ndarray, rng: np.random.Generator) -> Attacked:
    """A window keeping a side fraction in [0.6, 0.85] of each side (36 to 72 % of the area)
    anywhere inside, mirrored left to right: the relisted photo cropped and flipped to dodge
    a duplicate check. The name ends with the pixel box before the mirror."""
    _check(rgb)
    h, w = rgb.shape[:2]
    sw, sh = float(rng.uniform(0.6, 0.85)), float(rng.uniform(0.6, 0.85))
    cw, ch = min(w - 1, max(1, round(sw * w))), min(h - 1, max(1, round(sh * h)))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    name = (
        f"mirror-crop {cw / w:.2f}x{ch / h:.2f} at ({x0 / w:.2f}, {y0 / h:.2f}) "
        f"box=({x0}, {y0}, {x0 + cw}, {y0 + ch})"
    )
    return _done(rgb, np.fliplr(rgb[y0 : y0 + ch, x0 : x0 + cw]), "mirror-crop", name)


def rotation(rgb: np.ndarray, rng: np.random.Generator) -> Attacked:
    """A small rotation (60%) of ±[3, 15] degrees about the centre, then either cropped to the
    largest axis-aligned inner rectangle or expanded onto a solid fill (50/50); or a quarter
    turn (40%) ``np.rot90(rgb, k)``, k in {1, 2, 3}, named 'rotation quarter k=K ...'."""
    _check(rgb)
    if rng.random() >= 0.6:
        k = int(rng.integers(1, 4))
        return _done(rgb, np.rot90(rgb, k), "rotation", f"rotation quarter k={k} ({90 * k} deg ccw)")
    h, w = rgb.shape[:2]
    angle = float(rng.uniform(3.0, 15.0)) * (1 if rng.random() < 0.5 else -1)
    centre = ((w - 1) / 2.0, (h - 1) / 2.0)
    m = cv2.getRotationMatrix2D(centre, angle, 1.0)
    if rng.random() < 0.5:
        rotated = cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        iw, ih = _inner_rect(w, h, math.radians(abs(angle)))
        # one pixel in from the exact rectangle, so interpolation never reaches the fill
        cw, ch = max(1, math.floor(iw) - 2), max(1, math.floor(ih) - 2)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        out = rotated[y0 : y0 + ch, x0 : x0 + cw]
        return _done(rgb, out, "rotation", f"rotation {angle:+.1f} deg cropped to {cw}x{ch}")
    fill_name, fill = _fill(rng)
    rad = math.radians(abs(angle))
    nw = math.ceil(w * math.cos(rad) + h * math.sin(rad))
    nh = math.ceil(h * math.cos(rad) + w * math.sin(rad))
    m[0, 2] += (nw - 1) / 2.0 - centre[0]
    m[1, 2] += (nh - 1) / 2.0 - centre[1]
    out = cv2.warpAffine(
        rgb, m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=fill
    )
    return _done(rgb, out, "rotation", f"rotation {angle:+.1f} deg expanded to {nw}x{nh} on {fill_name}")


def border(rgb: np.ndarray, rng: np.random.Generator) -> Attacked:
    """Pad with a solid colour (white, black, grey or random): a uniform border 5-25% of the
    shorter side, a letterbox (bars top+bottom or left+right, each 10-30% of that side), or
    asymmetric padding (each side 0-25% of its axis). The input sits unchanged at offset
    (l, t); the name ends with ``t=.. b=.. l=.. r=..`` in pixels."""
    _check(rgb)
    h, w = rgb.shape[:2]
    fill_name, fill = _fill(rng)
    mode = _pick(rng, ("uniform", "letterbox", "asymmetric"))
    if mode == "uniform":
        p = max(1, round(float(rng.uniform(0.05, 0.25)) * min(h, w)))
        t = b = lf = r = p
    elif mode == "letterbox":
        f = float(rng.uniform(0.10, 0.30))
        if rng.random() < 0.5:
            t = b = max(1, round(f * h))
            lf = r = 0
        else:
            t = b = 0
            lf = r = max(1, round(f * w))
    else:
        t, b = (round(float(rng.uniform(0.0, 0.25)) * h) for _ in range(2))
        lf, r = (round(float(rng.uniform(0.0, 0.25)) * w) for _ in range(2))
        if t + b + lf + r == 0:
            lf = 1
    out = cv2.copyMakeBorder(rgb, t, b, lf, r, cv2.BORDER_CONSTANT, value=fill)
    return _done(rgb, out, "border", f"border {mode} {fill_name} t={t} b={b} l={lf} r={r}")


def caption(rgb: np.ndarray, rng: np.random.Generator) -> Attacked:
    """Meme captions. 70%: a white or black band (12-25% of the height) added above and/or
    below the image, holding 1-2 centred lines of words in the contrasting colour, the text
    block ~60-80% of the band height; the name ends with ``top=.. bottom=..`` band heights in
    pixels. 30%: white words with a black outline drawn over the image's top and/or bottom
    (Impact style), same size as the input."""
    _check(rgb)
    h, w = rgb.shape[:2]
    where = _pick(rng, ("top", "bottom", "both"))
    places = ("top", "bottom") if where == "both" else (where,)
    if rng.random() < 0.3:
        img = Image.fromarray(rgb)
        draw = ImageDraw.Draw(img)
        texts = []
        for place in places:
            text = _words(rng, 2, 5).upper()
            size = float(rng.uniform(0.09, 0.15)) * h
            font, stroke, (lf, t, r, b) = _fit(draw, text, size, 0.94 * w, stroke_frac=1 / 12)
            y = 0.03 * h - t if place == "top" else h - 0.03 * h - b
            draw.text(
                ((w - (r - lf)) / 2 - lf, y), text, font=font, fill=(255, 255, 255),
                stroke_width=stroke, stroke_fill=(0, 0, 0),
            )  # fmt: skip
            texts.append(f"{place} '{text}'")
        return _done(rgb, np.asarray(img), "caption", f"caption overlaid {'; '.join(texts)}")
    band_name, band, ink = ("white", (255, 255, 255), (0, 0, 0))
    if rng.random() < 0.5:
        band_name, band, ink = ("black", (0, 0, 0), (255, 255, 255))
    bh = max(8, round(float(rng.uniform(0.12, 0.25)) * h))
    top = bh if "top" in places else 0
    bottom = bh if "bottom" in places else 0
    img = Image.new("RGB", (w, h + top + bottom), band)
    img.paste(Image.fromarray(rgb), (0, top))
    draw = ImageDraw.Draw(img)
    texts = []
    for place, y0 in (("top", 0), ("bottom", top + h)):
        if place not in places:
            continue
        lines = [_words(rng, 2, 4).upper() for _ in range(int(rng.integers(1, 3)))]
        size = float(rng.uniform(0.6, 0.8)) * bh / len(lines)
        fitted = [_fit(draw, line, size, 0.94 * w) for line in lines]
        heights = [b - t for _, _, (_, t, _, b) in fitted]
        gap = 0.1 * size if len(lines) > 1 else 0.0
        y = y0 + (bh - sum(heights) - gap * (len(lines) - 1)) / 2
        for line, (font, _, (lf, t, r, _)), lh in zip(lines, fitted, heights, strict=True):
            draw.text(((w - (r - lf)) / 2 - lf, y - t), line, font=font, fill=ink)
            y += lh + gap
        texts.append(f"{place} '{' / '.join(lines)}'")
    name = f"caption {band_name} band top={top} bottom={bottom} {'; '.join(texts)}"
    return _done(rgb, np.asarray(img), "caption", name)


def screenshot(rgb: np.ndarray, rng: np.random.Generator) -> Attacked:
    """The image pasted, resized, into a synthetic UI frame: a light or dark canvas, 16:10
    desktop or 9:19 phone (50/50), with a top bar (6-12% of the canvas height) holding an
    address bar and buttons, maybe a side column of text lines or grey blocks, a thin frame
    line around the image and a caption line under it. The image covers 35-75% of the canvas
    (less where its shape cannot fill that much, e.g. a wide picture in a phone frame) and
    never overlaps the top bar. The name holds ``image WxH at (x, y)``: the output's
    ``[y:y+H, x:x+W]`` is ``cv2.resize(rgb, (W, H))`` (INTER_AREA shrinking, INTER_LINEAR
    enlarging)."""
    _check(rgb)
    h, w = rgb.shape[:2]
    a = w / h
    phone = bool(rng.random() < 0.5)
    ratio = 9 / 19 if phone else 16 / 10
    bar_frac = float(rng.uniform(0.06, 0.12))
    coverage = float(rng.uniform(0.35, 0.75))
    # in units of the canvas height: the most the content area lets the image cover
    pw_max = min(0.96 * ratio, 0.96 * (1 - bar_frac) * a)
    coverage = min(coverage, pw_max * pw_max / a / ratio)
    zoom = float(rng.uniform(0.5, 1.0))  # pasted side / original side
    ch = math.sqrt(zoom * zoom * h * w / coverage / ratio)
    ch *= min(1.0, 2400 / max(ch, ch * ratio))
    ch *= max(1.0, 64 / min(ch, ch * ratio))
    cw_, ch_ = round(ch * ratio), round(ch)
    bar = max(3, round(bar_frac * ch_))
    mg = max(1, round(0.02 * ch_))
    pw = math.sqrt(coverage * cw_ * ch_ * a)
    pw *= min(1.0, (cw_ - 2 * mg) / pw, (ch_ - bar - 2 * mg) * a / pw)
    pw_, ph_ = max(1, math.floor(pw)), max(1, math.floor(pw / a))

    dark = bool(rng.random() < 0.5)
    tone = int(rng.integers(18, 42)) if dark else int(rng.integers(228, 253))
    step = int(rng.integers(14, 36)) * (1 if dark else -1)
    bg, bar_c, field_c = _rgb(tone), _rgb(tone + step), _rgb(tone + 2 * step if dark else 255)
    ink, faint = (_rgb(215), _rgb(110)) if dark else (_rgb(50), _rgb(170))
    canvas = Image.new("RGB", (cw_, ch_), bg)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, cw_ - 1, bar - 1), fill=bar_c)
    # buttons: 'traffic lights' on the left, a few squares on the right
    r = max(1, round(bar * 0.14))
    cy = bar // 2
    for i, c in enumerate(((237, 106, 94), (245, 191, 79), (98, 197, 84))):
        cx = mg + r + i * 3 * r
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=c)
    n_buttons = int(rng.integers(2, 5))
    for i in range(n_buttons):
        x1 = cw_ - mg - i * 4 * r
        draw.rounded_rectangle((x1 - 2 * r, cy - r, x1, cy + r), radius=max(1, r // 2), fill=faint)
    ax0, ax1 = mg + 10 * r, cw_ - mg - n_buttons * 4 * r - r
    if ax1 - ax0 > 4 * r:
        draw.rounded_rectangle(
            (ax0, round(bar * 0.2), ax1, round(bar * 0.8)), radius=max(1, round(bar * 0.3)), fill=field_c
        )
        url = f"https://www.{_pick(rng, _WORDS)}.com/{_pick(rng, _WORDS)}/{_pick(rng, _WORDS)}"
        font, _, (lf, t, _, b) = _fit(draw, url, bar * 0.4, ax1 - ax0 - 4 * r)
        draw.text((ax0 + 2 * r - lf, cy - (b + t) / 2), url, font=font, fill=ink)

    # image position, leaving room for a side column when there is some
    xlo, xhi = mg, cw_ - pw_ - mg
    ylo, yhi = bar + mg, ch_ - ph_ - mg
    extras = []
    if rng.random() < 0.5:
        colw = round(float(rng.uniform(0.15, 0.25)) * cw_)
        left = bool(rng.random() < 0.5)
        if cw_ - colw - 2 * mg >= pw_:
            extras.append("sidebar")
            if left:
                xlo = colw + mg
            else:
                xhi = cw_ - colw - pw_ - mg
            cx0 = mg if left else cw_ - colw + mg
            blocks = bool(rng.random() < 0.5)
            line_h = max(4, round(0.035 * ch_))
            y = bar + 2 * mg
            while y + line_h < ch_ - mg:
                if blocks:
                    bh = line_h * int(rng.integers(2, 6))
                    draw.rectangle((cx0, y, cx0 + colw - 3 * mg, min(y + bh, ch_ - mg)), fill=faint)
                    y += bh + line_h
                else:
                    text = _words(rng, 1, 4)
                    font, _, (lf, t, _, _) = _fit(draw, text, line_h, colw - 3 * mg)
                    draw.text((cx0 - lf, y - t), text, font=font, fill=ink)
                    y += 2 * line_h
    x = int(rng.integers(xlo, max(xlo, xhi) + 1))
    y = int(rng.integers(ylo, max(ylo, yhi) + 1))
    below = ch_ - (y + ph_)
    cap_h = max(4, round(0.035 * ch_))
    if rng.random() < 0.5 and below >= cap_h + 2 * mg:
        extras.append("caption")
        text = _words(rng, 3, 7).capitalize()
        font, _, (lf, t, _, _) = _fit(draw, text, cap_h, max(cw_ - x - mg, 1))
        draw.text((x - lf, y + ph_ + mg - t), text, font=font, fill=ink)
    if rng.random() < 0.5:
        extras.append("frame")
        th = max(1, round(0.003 * cw_))
        draw.rectangle((x - th, y - th, x + pw_ + th - 1, y + ph_ + th - 1), fill=faint)
    out = np.array(canvas)
    # pasted last, so nothing drawn above can touch the image region
    interp = cv2.INTER_AREA if pw_ < w else cv2.INTER_LINEAR
    out[y : y + ph_, x : x + pw_] = cv2.resize(rgb, (pw_, ph_), interpolation=interp)
    name = (
        f"screenshot {'phone' if phone else 'desktop'} {'dark' if dark else 'light'} {cw_}x{ch_} "
        f"image {pw_}x{ph_} at ({x}, {y}) covers {pw_ * ph_ / (cw_ * ch_):.0%}"
        + "".join(f" +{e}" for e in extras)
    )
    return _done(rgb, out, "screenshot", name)


def perspective(rgb: np.ndarray, rng: np.random.Generator) -> Attacked:
    """``cv2.warpPerspective`` with each corner moved in x and y by up to m of the side
    (m in [0.05, 0.15], offsets uniform in [-m, m] per corner); outside filled with a solid
    colour or reflected (50/50); same size as the input."""
    _check(rgb)
    h, w = rgb.shape[:2]
    m = float(rng.uniform(0.05, 0.15))
    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float32)
    moves = rng.uniform(-m, m, size=(4, 2)) * np.array([w, h])
    dst = (src + moves).astype(np.float32)
    mat = cv2.getPerspectiveTransform(src, dst)
    if rng.random() < 0.5:
        fill_name, fill = _fill(rng)
        out = cv2.warpPerspective(
            rgb, mat, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=fill
        )
    else:
        fill_name = "reflect"
        out = cv2.warpPerspective(rgb, mat, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return _done(rgb, out, "perspective", f"perspective up to {m:.0%} fill {fill_name}")


def aspect(rgb: np.ndarray, rng: np.random.Generator) -> Attacked:
    """Resize one axis (width or height) by a factor in [0.6, 0.85] or [1.2, 1.6], the other
    unchanged; the name ends with ``xFACTOR``."""
    _check(rgb)
    h, w = rgb.shape[:2]
    f = float(rng.uniform(0.6, 0.85) if rng.random() < 0.5 else rng.uniform(1.2, 1.6))
    axis = _pick(rng, ("width", "height"))
    nw, nh = (round(w * f), h) if axis == "width" else (w, round(h * f))
    out = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    return _done(rgb, out, "aspect", f"aspect {axis} x{f:.3f}")


def collage(rgb: np.ndarray, rng: np.random.Generator, others: Sequence[np.ndarray] = ()) -> Attacked:
    """The image as one cell of a collage of 2 to 9 pictures: a grid of 1x2 to 3x3 cells or
    a big cell beside a column of 2 or 3, on a canvas 700-1600 px wide, cells separated by a
    gutter of 2-16 px (white, black or a colour) or by none (70 %: pictures edge to edge).
    Each cell is filled by its picture resized to cover it and cut to its shape (cells are
    shaped like the copy within 15 %, so the copy keeps at least 85 % of each side). The
    other cells hold ``others`` (or pictures drawn from the rng). The name ends with the
    copy's cell ``box=(x0, y0, x1, y1)``."""
    _check(rgb)
    h, w = rgb.shape[:2]
    layout = _pick(rng, ("1x2", "2x1", "2x2", "2x3", "3x2", "3x3", "big+2", "big+3"))
    gutter = 0 if rng.random() < 0.3 else int(rng.integers(2, 17))
    fill_name, fill = ("none", (0, 0, 0)) if gutter == 0 else _fill(rng)
    width = int(rng.integers(700, 1601))
    cells = _collage_cells(layout, width, w / h * float(rng.uniform(0.87, 1.15)), gutter)
    canvas_w = max(x1 for _, _, x1, _ in cells) + gutter
    canvas_h = max(y1 for _, _, _, y1 in cells) + gutter
    out = np.empty((canvas_h, canvas_w, 3), np.uint8)
    out[:] = fill
    target = int(rng.integers(len(cells)))
    for k, (x0, y0, x1, y1) in enumerate(cells):
        if k == target:
            picture = rgb
        elif others:
            picture = others[int(rng.integers(len(others)))]
        else:
            picture = _filler(rng)
        out[y0:y1, x0:x1] = _cover(picture, x1 - x0, y1 - y0, rng)
    x0, y0, x1, y1 = cells[target]
    name = (
        f"collage {layout} {canvas_w}x{canvas_h} gutter {gutter} {fill_name} cell {target + 1} of "
        f"{len(cells)} ({(x1 - x0) / canvas_w:.0%} of the width) box=({x0}, {y0}, {x1}, {y1})"
    )
    return _done(rgb, out, "collage", name)


def page(rgb: np.ndarray, rng: np.random.Generator, others: Sequence[np.ndarray] = ()) -> Attacked:
    """The image inside a web page rendered by headless Chromium, among ``others`` (see
    :func:`detector.tasks.pages.page`)."""
    from detector.tasks.pages import page as rendered  # Chromium: only where it is asked for

    return rendered(rgb, rng, others)


def _collage_cells(layout: str, width: int, aspect: float, gutter: int) -> list[tuple[int, int, int, int]]:
    """Cell boxes (x0, y0, x1, y1) of a collage ``width`` px wide whose cells are ``aspect``
    (width / height) shaped, inside a ``gutter`` on every side."""
    g = gutter
    if layout.startswith("big+"):
        n = int(layout[4:])
        # a big cell of n small cells' height beside a column of n: widths big = n * small
        small_h = (width - 3 * g) / (n + 1) / aspect
        small_w = small_h * aspect
        big_w, big_h = n * small_w + (n - 1) * g, n * small_h + (n - 1) * g
        cells = [(g, g, g + round(big_w), g + round(big_h))]
        x = g + round(big_w) + g
        for i in range(n):
            y = g + round(i * (small_h + g))
            cells.append((x, y, x + round(small_w), y + round(small_h)))
        return cells
    rows, cols = (int(v) for v in layout.split("x"))
    cw = (width - (cols + 1) * g) / cols
    ch = cw / aspect
    return [
        (
            g + round(c * (cw + g)),
            g + round(r * (ch + g)),
            g + round(c * (cw + g) + cw),
            g + round(r * (ch + g) + ch),
        )
        for r in range(rows)
        for c in range(cols)
    ]


def _cover(picture: np.ndarray, cw: int, ch: int, rng: np.random.Generator) -> np.ndarray:
    """``picture`` resized to cover a ``cw`` x ``ch`` cell and cut to it (a random offset)."""
    h, w = picture.shape[:2]
    k = max(cw / w, ch / h)
    size = (max(cw, round(w * k)), max(ch, round(h * k)))
    big = cv2.resize(picture, size, interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
    x = int(rng.integers(0, size[0] - cw + 1))
    y = int(rng.integers(0, size[1] - ch + 1))
    return big[y : y + ch, x : x + cw]


def _filler(rng: np.random.Generator) -> np.ndarray:
    """A picture that copies nothing: smooth random colour fields with a few shapes on them,
    (240-480, 320-640, 3) uint8."""
    h, w = int(rng.integers(240, 481)), int(rng.integers(320, 641))
    coarse = rng.integers(0, 256, size=(int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3)).astype(np.uint8)
    base = Image.fromarray(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC))
    draw = ImageDraw.Draw(base)
    for _ in range(int(rng.integers(3, 12))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        d = int(rng.integers(10, max(11, min(w, h) // 2)))
        box = (x0, y0, x0 + d, y0 + int(d * rng.uniform(0.5, 1.5)))
        if rng.random() < 0.5:
            draw.ellipse(box, fill=_rgb_random(rng))
        else:
            draw.rectangle(box, fill=_rgb_random(rng))
    return np.asarray(base)


# ---------------------------------------------------------------------------- photometric


def colour(rgb: np.ndarray, rng: np.random.Generator) -> Attacked:
    """One or two of: brightness x[0.6, 1.4], contrast x[0.6, 1.5], saturation x[0, 1.8],
    hue shift ±[10, 40] degrees (OpenCV HSV), gamma [0.6, 1.6], grayscale (3 equal channels),
    sepia, and (drawn 10% of the time) a channel swap or inversion. Factors within 0.1 of the
    identity are not drawn. Grayscale is always applied last, so its output is grey."""
    _check(rgb)
    conflicts = {frozenset(("grayscale", o)) for o in ("sepia", "saturation", "hue", "channels")}
    ops: list[str] = []
    for _ in range(1 if rng.random() < 0.5 else 2):
        while True:
            op = "channels" if rng.random() < 0.1 else _pick(rng, _COLOUR_OPS)
            if op not in ops and not any(frozenset((op, o)) in conflicts for o in ops):
                break
        ops.append(op)
    ops.sort(key=lambda o: o == "grayscale")
    out, names = rgb, []
    for op in ops:
        out, desc = _colour_op(out, op, rng)
        names.append(desc)
    return _done(rgb, out, "colour", f"colour {', '.join(names)}")


def blur(rgb: np.ndarray, rng: np.random.Generator) -> Attacked:
    """Gaussian blur (50%, sigma [1.5, 4] px at a 512 px longer side, scaled with the size,
    at least 0.8 px), box blur (25%) or motion blur along a random angle (25%), kernel 5-15."""
    _check(rgb)
    h, w = rgb.shape[:2]
    u = rng.random()
    if u < 0.5:
        s = float(rng.uniform(1.5, 4.0))
        sigma = max(0.8, s * max(h, w) / 512)
        out = cv2.GaussianBlur(rgb, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
        return _done(rgb, out, "blur", f"blur gaussian sigma={s:.2f}@512 ({sigma:.2f} px)")
    k = int(rng.integers(5, 16))
    if u < 0.75:
        return _done(rgb, cv2.blur(rgb, (k, k)), "blur", f"blur box k={k}")
    theta = float(rng.uniform(0.0, 180.0))
    kernel = np.zeros((k, k), np.float32)
    c, d = (k - 1) / 2, (k - 1) / 2
    dx, dy = d * math.cos(math.radians(theta)), d * math.sin(math.radians(theta))
    p0 = (round(c - dx), round(c - dy))
    p1 = (round(c + dx), round(c + dy))
    cv2.line(kernel, p0, p1, 1.0, 1)
    kernel /= kernel.sum()
    out = cv2.filter2D(rgb, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
    return _done(rgb, out, "blur", f"blur motion k={k} angle={theta:.0f}")


def noise(rgb: np.ndarray, rng: np.random.Generator) -> Attacked:
    """Gaussian noise (sigma [8, 25] grey levels), salt-and-pepper (2-6% of pixels, all
    channels, half white half black) or speckle (``x·(1 + n)``, n ~ N(0, [0.08, 0.25]))."""
    _check(rgb)
    h, w = rgb.shape[:2]
    mode = _pick(rng, ("gaussian", "salt-and-pepper", "speckle"))
    if mode == "gaussian":
        s = float(rng.uniform(8.0, 25.0))
        n = _standard_normal(rng, rgb.shape) * np.float32(s)
        desc = f"sigma={s:.1f}"
    elif mode == "speckle":
        s = float(rng.uniform(0.08, 0.25))
        n = _standard_normal(rng, rgb.shape) * np.float32(s) * rgb
        desc = f"sigma={s:.2f}"
    else:
        p = float(rng.uniform(0.02, 0.06))
        u = rng.random((h, w), dtype=np.float32)
        out = rgb.copy()
        out[u < p / 2] = 0
        out[(u >= p / 2) & (u < p)] = 255
        return _done(rgb, out, "noise", f"noise salt-and-pepper {p:.1%}")
    # cv2.add saturates to [0, 255] and rounds, in one pass
    return _done(rgb, cv2.add(rgb, n, dtype=cv2.CV_8U), "noise", f"noise {mode} {desc}")


def jpeg(rgb: np.ndarray, rng: np.random.Generator) -> Attacked:
    """Pillow JPEG round trip at quality [5, 20]; 30% of the time twice, at two different
    qualities in that range."""
    _check(rgb)
    qs = [int(rng.integers(5, 21))]
    if rng.random() < 0.3:
        qs.append(int(rng.choice([q for q in range(5, 21) if q != qs[0]])))
    out = rgb
    for q in qs:
        buf = io.BytesIO()
        Image.fromarray(out).save(buf, format="JPEG", quality=q)
        buf.seek(0)
        with Image.open(buf) as im:
            out = np.asarray(im.convert("RGB"))
    return _done(rgb, out, "jpeg", "jpeg " + " then ".join(f"q={q}" for q in qs))


def downscale(rgb: np.ndarray, rng: np.random.Generator) -> Attacked:
    """Shrink (INTER_AREA) so the longer side is [0.12, 0.35] of the original, but no side
    below 32 px; 50% of the time resize back up to the original size (INTER_LINEAR)."""
    _check(rgb)
    h, w = rgb.shape[:2]
    s = float(rng.uniform(0.12, 0.35))
    scale = min(max(s, MIN_SIDE / min(h, w)), 1.0)
    nw, nh = max(MIN_SIDE, round(w * scale)), max(MIN_SIDE, round(h * scale))
    small = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
    name = f"downscale {s:.2f} to {nw}x{nh}"
    if rng.random() < 0.5:
        back = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        return _done(rgb, back, "downscale", name + " and back")
    return _done(rgb, small, "downscale", name)


def overlay(rgb: np.ndarray, rng: np.random.Generator) -> Attacked:
    """Text and sticker overlays on the image: 1-4 snippets of words (random colour, 5-12% of
    the height, random place) and/or 1-3 emoji-like stickers (a saturated smiley face or
    star, 10-25% of the shorter side), each opaque or with alpha in [0.6, 1.0]; elements
    whose box would take the covered area past 25% of the image are left out. Same size."""
    _check(rgb)
    h, w = rgb.shape[:2]
    mode = _pick(rng, ("text", "stickers", "both"))
    kinds = ["text"] * (int(rng.integers(1, 5)) if mode != "stickers" else 0)
    kinds += ["sticker"] * (int(rng.integers(1, 4)) if mode != "text" else 0)
    order = rng.permutation(len(kinds))
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    budget, used, parts = 0.25 * h * w, 0.0, []
    for kind in (kinds[i] for i in order):
        alpha = 1.0 if rng.random() < 0.5 else float(rng.uniform(0.6, 1.0))
        a = round(255 * alpha)
        if kind == "text":
            text = _words(rng, 1, 3)
            colour_ = (*_rgb_random(rng), a)
            stroke_frac = 1 / 15 if rng.random() < 0.4 else 0.0
            font, stroke, (lf, t, r, b) = _fit(
                draw, text, float(rng.uniform(0.05, 0.12)) * h, 0.95 * w, stroke_frac=stroke_frac
            )
            area = float((r - lf) * (b - t))
            x = float(rng.integers(0, max(0, w - (r - lf)) + 1)) - lf
            y = float(rng.integers(0, max(0, h - (b - t)) + 1)) - t
            if used + area > budget:
                continue
            ink = (255 - colour_[0], 255 - colour_[1], 255 - colour_[2], a)
            draw.text((x, y), text, font=font, fill=colour_, stroke_width=stroke, stroke_fill=ink)
            parts.append(f"text '{text}'")
        else:
            d = max(8, round(float(rng.uniform(0.10, 0.25)) * min(h, w)))
            x0, y0 = int(rng.integers(0, max(0, w - d) + 1)), int(rng.integers(0, max(0, h - d) + 1))
            face = bool(rng.random() < 0.5)
            hue = float(rng.random())
            fill = (*(round(255 * c) for c in colorsys.hsv_to_rgb(hue, 1.0, 1.0)), a)
            rot = float(rng.uniform(0, 2 * math.pi))
            area = float(d * d)
            if used + area > budget:
                continue
            if face:
                _smiley(draw, x0, y0, d, fill, a)
            else:
                _star(draw, x0, y0, d, fill, rot)
            parts.append("face" if face else "star")
        used += area
        if alpha < 1.0:
            parts[-1] += f" alpha {alpha:.2f}"
    base = Image.fromarray(rgb).convert("RGBA")
    out = np.asarray(Image.alpha_composite(base, layer).convert("RGB"))
    return _done(rgb, out, "overlay", f"overlay {'; '.join(parts)} ({used / (h * w):.0%} covered)")


def combo(rgb: np.ndarray, rng: np.random.Generator) -> Attacked:
    """2 or 3 distinct families applied in sequence (random order, downscale always last so
    the result keeps its reduced size): one geometric (:data:`GEOMETRIC`), one photometric or
    compression (:data:`PHOTOMETRIC`) and maybe one more of either; the part names are joined
    with ' + '."""
    _check(rgb)
    chosen = [_pick(rng, GEOMETRIC), _pick(rng, PHOTOMETRIC)]
    if rng.random() < 0.5:
        chosen.append(_pick(rng, tuple(f for f in GEOMETRIC + PHOTOMETRIC if f not in chosen)))
    seq = [chosen[i] for i in rng.permutation(len(chosen))]
    seq.sort(key=lambda f: f == "downscale")
    out, names = rgb, []
    for fam in seq:
        step = _DISPATCH[fam](out, rng)
        out = step.rgb
        names.append(step.name)
    return _done(rgb, out, "combo", " + ".join(names))


# ---------------------------------------------------------------------------- helpers

_COLOUR_OPS = ("brightness", "contrast", "saturation", "hue", "gamma", "grayscale", "sepia")
_SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], np.float32)
_PERMS = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def _colour_op(rgb: np.ndarray, op: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One colour operation on (h, w, 3) uint8; returns the result and its description."""
    levels = np.arange(256, dtype=np.float32)
    if op == "brightness":
        f = _away_from_one(rng, 0.6, 1.4)
        return cv2.LUT(rgb, _lut(levels * f)), f"brightness x{f:.2f}"
    if op == "contrast":
        f = _away_from_one(rng, 0.6, 1.5)
        mean = float(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).mean())
        return cv2.LUT(rgb, _lut((levels - mean) * f + mean)), f"contrast x{f:.2f}"
    if op == "gamma":
        g = _away_from_one(rng, 0.6, 1.6)
        return cv2.LUT(rgb, _lut(255.0 * (levels / 255.0) ** g)), f"gamma {g:.2f}"
    if op == "saturation":
        f = _away_from_one(rng, 0.0, 1.8)
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)[..., None]
        return _to_u8(grey + f * (rgb.astype(np.float32) - grey)), f"saturation x{f:.2f}"
    if op == "hue":
        deg = float(rng.uniform(10.0, 40.0)) * (1 if rng.random() < 0.5 else -1)
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)  # uint8 hue is degrees / 2, in [0, 180)
        shift = np.mod(np.arange(256) + round(deg / 2), 180).astype(np.uint8)
        hsv[..., 0] = shift[hsv[..., 0]]
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), f"hue {deg:+.0f} deg"
    if op == "grayscale":
        return cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB), "grayscale"
    if op == "sepia":
        return cv2.transform(rgb, _SEPIA), "sepia"
    if rng.random() < 0.5:
        return 255 - rgb, "invert"
    perm = _PERMS[int(rng.integers(len(_PERMS)))]
    return rgb[..., list(perm)], f"channels {''.join('RGB'[i] for i in perm)}"


def _smiley(draw: ImageDraw.ImageDraw, x0: int, y0: int, d: int, fill: tuple[int, ...], a: int) -> None:
    """A filled face of diameter ``d`` px at (x0, y0) with two eyes and a smile arc."""
    draw.ellipse((x0, y0, x0 + d - 1, y0 + d - 1), fill=fill)
    er = max(1, round(0.07 * d))
    for ex in (0.35, 0.65):
        cx, cy = x0 + ex * d, y0 + 0.38 * d
        draw.ellipse((cx - er, cy - er, cx + er, cy + er), fill=(20, 20, 20, a))
    box = (x0 + 0.25 * d, y0 + 0.3 * d, x0 + 0.75 * d, y0 + 0.75 * d)
    draw.arc(box, 20, 160, fill=(20, 20, 20, a), width=max(1, round(d / 18)))


def _star(draw: ImageDraw.ImageDraw, x0: int, y0: int, d: int, fill: tuple[int, ...], rot: float) -> None:
    """A filled five-pointed star inscribed in the ``d`` px square at (x0, y0)."""
    cx, cy, r = x0 + d / 2, y0 + d / 2, d / 2
    pts = [
        (cx + rr * math.cos(rot + i * math.pi / 5), cy + rr * math.sin(rot + i * math.pi / 5))
        for i, rr in ((i, r if i % 2 == 0 else 0.45 * r) for i in range(10))
    ]
    draw.polygon(pts, fill=fill)


def _inner_rect(w: int, h: int, angle: float) -> tuple[float, float]:
    """Width and height of the largest axis-aligned rectangle inside a w x h rectangle rotated
    by ``angle`` radians (0 < angle < pi/2) about its centre."""
    long_, short = (w, h) if w >= h else (h, w)
    s, c = abs(math.sin(angle)), abs(math.cos(angle))
    if short <= 2.0 * s * c * long_ or abs(s - c) < 1e-10:
        x = 0.5 * short
        return (x / s, x / c) if w >= h else (x / c, x / s)
    cos2 = c * c - s * s
    return (w * c - h * s) / cos2, (h * c - w * s) / cos2


def _fit(
    draw: ImageDraw.ImageDraw, text: str, size: float, max_w: float, stroke_frac: float = 0.0
) -> tuple[Font, int, tuple[float, float, float, float]]:
    """The default font at ``size`` px, shrunk until ``text`` is at most ``max_w`` px wide:
    (font, stroke width, text bbox (l, t, r, b) when drawn at the origin)."""
    for _ in range(4):
        px = max(4, int(size))
        stroke = round(px * stroke_frac) if stroke_frac else 0
        font = ImageFont.load_default(size=px)
        box = draw.textbbox((0, 0), text, font=font, stroke_width=stroke)
        width = box[2] - box[0]
        if width <= max_w or px == 4:
            break
        size = px * max_w / width * 0.98
    return font, stroke, box


def _words(rng: np.random.Generator, lo: int, hi: int) -> str:
    """``lo``..``hi`` random words joined by spaces."""
    return " ".join(_pick(rng, _WORDS) for _ in range(int(rng.integers(lo, hi + 1))))


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _fill(rng: np.random.Generator) -> tuple[str, RGB]:
    """A solid fill: white, black, grey or a random colour, with its name."""
    kind = _pick(rng, ("white", "black", "grey", "random"))
    if kind == "white":
        return kind, (255, 255, 255)
    if kind == "black":
        return kind, (0, 0, 0)
    if kind == "grey":
        return kind, _GREY
    c = _rgb_random(rng)
    return f"rgb({c[0]},{c[1]},{c[2]})", c


def _rgb(v: int) -> RGB:
    v = min(255, max(0, v))
    return (v, v, v)


def _rgb_random(rng: np.random.Generator) -> RGB:
    r, g, b = (int(v) for v in rng.integers(0, 256, size=3))
    return (r, g, b)


def _away_from_one(rng: np.random.Generator, lo: float, hi: float, gap: float = 0.1) -> float:
    """A factor uniform on [lo, 1 - gap] or [1 + gap, hi]: a near-identity attack is no attack."""
    below, above = (1 - gap) - lo, hi - (1 + gap)
    u = float(rng.uniform(0.0, below + above))
    return lo + u if u < below else 1 + gap + (u - below)


def _standard_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """N(0, 1) float32 noise of ``shape``. Drawn by indexing a sorted 65,536-point normal
    sample with uint16 draws: numpy's normal sampler takes ~10 ms for a 512 px RGB image,
    this ~2 ms, and as image noise the two are indistinguishable."""
    table = np.sort(rng.standard_normal(65536, dtype=np.float32))
    return np.take(table, rng.integers(0, 65536, size=shape, dtype=np.uint16))


def _lut(values: np.ndarray) -> np.ndarray:
    """(256,) float levels -> (256,) uint8 lookup table, rounded and clipped."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _check(rgb: np.ndarray) -> None:
    """Refuse anything but (h, w, 3) uint8 with both sides at least MIN_SIDE: a caller's bug."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        desc = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"expected an (h, w, 3) uint8 RGB array, got {desc}")
    if min(rgb.shape[:2]) < MIN_SIDE:
        raise ValueError(f"image {rgb.shape[1]}x{rgb.shape[0]} is below {MIN_SIDE} px on a side")


def _done(src: np.ndarray, out: np.ndarray, family: str, name: str) -> Attacked:
    """Wrap a result: uint8, C-contiguous, sharing no memory with ``src``, and resized up
    (keeping the aspect) if a chain of attacks left a side below MIN_SIDE."""
    out = np.ascontiguousarray(out, dtype=np.uint8)
    h, w = out.shape[:2]
    if min(h, w) < MIN_SIDE:
        k = MIN_SIDE / min(h, w)
        size = (max(MIN_SIDE, round(w * k)), max(MIN_SIDE, round(h * k)))
        out = np.ascontiguousarray(cv2.resize(out, size, interpolation=cv2.INTER_LINEAR))
    elif np.may_share_memory(out, src):
        out = out.copy()
    return Attacked(rgb=out, family=family, name=name)


_DISPATCH: dict[str, Callable[[np.ndarray, np.random.Generator], Attacked]] = {
    "crop": crop,
    "mirror-crop": mirror_crop,
    "flip": flip,
    "rotation": rotation,
    "border": border,
    "caption": caption,
    "overlay": overlay,
    "screenshot": screenshot,
    "perspective": perspective,
    "aspect": aspect,
    "colour": colour,
    "blur": blur,
    "noise": noise,
    "jpeg": jpeg,
    "downscale": downscale,
    "combo": combo,
}
