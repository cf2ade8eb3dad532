"""Build a corpus of look-alike families: different images that share one template.

    python benchmarks/lookalike_corpus.py DEST [--seed S] [--kinds cards,flags,...] [--force]

A copy detector indexes some members of each family and must NOT flag the other members as
copies: they are cards of one deck (same frame and pips, another rank), flags of one layout,
icons of one theme on the same plate, poses of one game character, mahjong tiles of one set
and suit, chess-like pieces of one set on the same board square, and web pages rendered from
one HTML template with other text and pictures.

Everything comes from Debian 12 "bookworm" packages or is generated here; nothing is
downloaded at run time.  Install the sources once, beforehand:

    apt-get update && apt-get install -y --no-install-recommends librsvg2-bin chromium \\
        gnome-cards-data kdegames-card-data-kf5 iso-flags-svg numix-icon-theme-circle \\
        breeze-icon-theme elementary-icon-theme freedink-data frozen-bubble-data \\
        kdegames-mahjongg-data-kf5 gnome-mahjongg xboard

``rsvg-convert`` (librsvg2-bin) draws the vector art and headless ``chromium`` draws the web
pages (``file://`` pages only, fresh profile, no network).  Kinds and where they come from:

- ``cards``: ``/usr/share/aisleriot/cards/*.svgz`` (gnome-cards-data) and
  ``/usr/share/carddecks/svg-*/*.svgz`` (kdegames-card-data-kf5); per deck one family of the
  pip cards of one suit (ace to ten) and one of the twelve court cards.
- ``flags``: ``/usr/share/iso-flags-svg/country-4x3`` (iso-flags-svg), grouped by layout
  (Nordic cross, ensign with Union Jack canton, hoist triangle, ...; see ``FLAG_FAMILIES``).
- ``icons``: Numix-Circle app icons grouped by the colour of their circle plate
  (numix-icon-theme-circle), Breeze folder and document icons (breeze-icon-theme),
  elementary folder and document icons (elementary-icon-theme).
- ``sprites``: animation frames of one character and action, Dink Smallwood sprites (the
  ``dir.ff`` packs of freedink-data) and the Frozen Bubble penguin (frozen-bubble-data).
- ``tiles``: mahjong tiles of one tileset and suit, KDE tilesets (kdegames-mahjongg-data-kf5,
  face glyph drawn on the tile the way libkmahjongg does) and GNOME Mahjongg theme sheets.
- ``pieces``: XBoard chess, shogi and xiangqi pieces (xboard), white side only, each drawn on
  the same light board square.
- ``web``: pages from ten HTML templates (blog, shop, dashboard, ...) filled with seeded
  text and seeded SVG pictures, screenshot at 800x600.

Deliberately NOT read, because they are reserved for independent evaluation: any
``wesnoth-*-data``, ``openclipart-*``, ``*-backgrounds`` / ``*-wallpapers`` package, anything
under ``/usr/share/backgrounds`` or ``/usr/share/wallpapers``, and AugLy.  Derived variants
that are recolours or re-encodes of another source are not listed either (4-colour decks,
bitmap copies of a deck, recoloured knights, black pieces, right-to-left and template
variants of icons).

Every candidate is drawn (vector art at about 400-600 px; small raster sprites are cropped
to their animation's common bounding box and enlarged by a whole factor, nearest neighbour),
alpha is composited on white, and it is rejected when its shorter side is below 64 px, more
than 75 % of it is fully transparent, it is near-flat (grey std < 10), it is a pixel-exact
duplicate of an accepted image, or its pHash is within Hamming distance 6 of any accepted
image's pHash (whole corpus) under any of the 8 flips / right-angle rotations.  Sprite frames
must moreover differ by at least 12 bits from the accepted frames of their own family, so a
family holds distinct poses rather than neighbouring frames.  A family keeps at most 12
members and is dropped when fewer than 4 survive.

Output: ``DEST/{kind}/{family_id}/{member:02d}.png`` and ``DEST/manifest.json`` with, per
family, its kind, id, package, template, licence note and members (file, original path, size,
pHash hex), plus per-kind counts, rejection counts by reason and the dropped families.
Candidates are read in sorted order and every choice is drawn from ``random.Random`` seeded
with ``--seed`` and the family id, so a run is deterministic for a given seed and set of
installed packages.  A full run takes about three and a half minutes on two cores, most of it
drawing the card decks (rsvg-convert parses a whole deck for every card).
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import hashlib
import html
import io
import itertools
import json
import math
import os
import random
import shutil
import struct
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

MIN_SIDE = 64
MAX_SIDE = 800
MAX_TRANSPARENT = 0.75
MIN_GREY_STD = 10.0
NEAR_DUPLICATE = 6  # pHash Hamming distance at or below which two images count as one
SPRITE_MIN_DISTANCE = 12  # poses, not neighbouring frames
MIN_MEMBERS = 4
MAX_MEMBERS = 12
VECTOR_SIZE = 480
WEB_VIEWPORT = (800, 600)
WHITE = (255, 255, 255)
BOARD_SQUARE = (240, 217, 181)

RSVG = "rsvg-convert"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)

KINDS = ("cards", "flags", "icons", "sprites", "tiles", "pieces", "web")


class RenderError(Exception):
    """A candidate could not be drawn."""


@dataclass(frozen=True)
class Candidate:
    """One would-be family member: where it comes from and how to draw it."""

    source: str
    render: Callable[[], Image.Image]


@dataclass(frozen=True)
class Family:
    """A group of different pictures that share one template."""

    kind: str
    family_id: str
    package: str
    licence: str
    template: str
    candidates: tuple[Candidate, ...]
    min_distance: int = NEAR_DUPLICATE + 1
    max_members: int = MAX_MEMBERS


@dataclass
class KindStats:
    """Counts for one kind, as written to the manifest."""

    families: int = 0
    images: int = 0
    candidates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    families_dropped: int = 0
    missing: list[str] = field(default_factory=list)


def seeded(seed: int, *keys: str) -> random.Random:
    """A generator seeded from ``seed`` and ``keys``, stable across runs and Python versions."""
    digest = hashlib.sha256(":".join((str(seed), *keys)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


# --- drawing -------------------------------------------------------------------------------


def render_svg(
    path: Path,
    *,
    width: int | None = None,
    height: int | None = None,
    zoom: float | None = None,
    element: str | None = None,
) -> Image.Image:
    """Draw an SVG / SVGZ file, or one element of it, with rsvg-convert; returns RGBA."""
    cmd = [RSVG, "--format=png"]
    if element:
        cmd.append(f"--export-id={element}")
    if width:
        cmd += ["-w", str(width)]
    if height:
        cmd += ["-h", str(height)]
    if width and height:
        cmd.append("--keep-aspect-ratio")
    if zoom:
        cmd += ["-z", f"{zoom:g}"]
    cmd.append(str(path))
    try:
        proc = subprocess.run(cmd, capture_output=True, check=True, timeout=120)
        image = Image.open(io.BytesIO(proc.stdout))
        image.load()
    except (OSError, subprocess.SubprocessError, Image.DecompressionBombError) as exc:
        raise RenderError(f"{path}#{element or ''}: {exc}") from exc
    return image.convert("RGBA")


def render_svg_trimmed(path: Path, element: str, width: int, height: int | None = None) -> Image.Image:
    """Draw one element so that what it paints fits ``width`` x ``height`` px, surround trimmed.

    Some files give an element an extent far larger than what it paints (hidden helpers, clip
    paths); then the drawing is redrawn at the scale that makes the painted part fit the box.
    """
    image = render_svg(path, width=width, element=element)
    box = image.getchannel("A").getbbox()
    if box is None:
        raise RenderError(f"{path}#{element}: nothing painted")
    painted_w, painted_h = box[2] - box[0], box[3] - box[1]
    scale = width / painted_w if height is None else min(width / painted_w, height / painted_h)
    if scale > 1.05:
        image = render_svg(path, width=min(8192, math.ceil(image.width * scale)), element=element)
        box = image.getchannel("A").getbbox()
        if box is None:
            raise RenderError(f"{path}#{element}: nothing painted")
    image = image.crop(box)
    scale = width / image.width if height is None else min(width / image.width, height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def enlarge(image: Image.Image, min_side: int = 160, max_factor: int = 4) -> Image.Image:
    """Enlarge a small raster sprite by a whole factor, nearest neighbour (no invented detail)."""
    factor = max(1, min(max_factor, math.ceil(min_side / max(1, min(image.size)))))
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def on_background(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    """Composite an RGBA image on an opaque colour; returns RGB."""
    rgba = image.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (*colour, 255))
    base.alpha_composite(rgba)
    return base.convert("RGB")


def flatten(image: Image.Image) -> tuple[Image.Image, float]:
    """RGB with alpha composited on white, and the fraction of fully transparent pixels."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        transparent = float((np.asarray(rgba.getchannel("A")) == 0).mean())
        return on_background(rgba, WHITE), transparent
    return image.convert("RGB"), 0.0


_DIHEDRAL: tuple[Image.Transpose | None, ...] = (
    None,
    Image.Transpose.FLIP_LEFT_RIGHT,
    Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
)


def dihedral_phashes(image: Image.Image) -> np.ndarray:
    """pHash of ``image`` under the 8 flips / right-angle rotations: (8,) uint64, identity first.

    imagehash.phash first shrinks to 32x32 grey, and shrinking commutes with the flips, so the
    shrunk image is transformed instead of the full one.
    """
    small = image.convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    codes = [int(str(imagehash.phash(small if op is None else small.transpose(op))), 16) for op in _DIHEDRAL]
    return np.array(codes, dtype=np.uint64)


def nearest(codes: np.ndarray, accepted: np.ndarray) -> tuple[int, int]:
    """Smallest Hamming distance from any of ``codes`` (k,) to ``accepted`` (n,), and its index."""
    if accepted.size == 0:
        return 65, -1
    dist = np.bitwise_count(codes[:, None] ^ accepted[None, :]).min(axis=0)
    index = int(dist.argmin())
    return int(dist[index]), index


# --- cards ---------------------------------------------------------------------------------

AISLERIOT_CARDS = Path("/usr/share/aisleriot/cards")
KDE_CARDS = Path("/usr/share/carddecks")
SUITS = ("club", "diamond", "heart", "spade")
COURTS = ("jack", "queen", "king")
# (deck id, path, element naming): decks of visibly different designs.  Left out as derived
# from another deck (bitmap copies, 4-colour recolours, skat subsets, KDE copies of aisleriot
# decks) or as close in style to a listed one (the other French- and German-suited decks).
CARD_DECKS: tuple[tuple[str, Path, str], ...] = (
    ("aisleriot-ancient-french", AISLERIOT_CARDS / "ancient_french.svgz", "aisleriot"),
    ("aisleriot-anglo", AISLERIOT_CARDS / "anglo.svgz", "aisleriot"),
    ("aisleriot-atlasnye", AISLERIOT_CARDS / "atlasnye.svgz", "aisleriot"),
    ("aisleriot-dondorf", AISLERIOT_CARDS / "dondorf.svgz", "aisleriot"),
    ("aisleriot-guyenne-classic", AISLERIOT_CARDS / "guyenne-classic.svgz", "aisleriot"),
    ("aisleriot-neoclassical", AISLERIOT_CARDS / "neoclassical.svgz", "aisleriot"),
    ("aisleriot-ornamental", AISLERIOT_CARDS / "ornamental.svgz", "aisleriot"),
    ("aisleriot-plastic", AISLERIOT_CARDS / "plastic.svgz", "aisleriot"),
    ("aisleriot-slavic-costumes", AISLERIOT_CARDS / "slavic_costumes.svgz", "aisleriot"),
    ("aisleriot-swiss-xvii", AISLERIOT_CARDS / "swiss-xvii.svgz", "aisleriot"),
    ("aisleriot-tarocco", AISLERIOT_CARDS / "tarocco.svgz", "aisleriot"),
    ("kde-ancient-egyptians", KDE_CARDS / "svg-ancient-egyptians/Ancient_Egyptians.svgz", "kde"),
    ("kde-jolly-royal", KDE_CARDS / "svg-jolly-royal/jolly-royal.svgz", "kde"),
    ("kde-oxygen", KDE_CARDS / "svg-oxygen/oxygen.svgz", "kde"),
    ("kde-penguins", KDE_CARDS / "svg-penguins/penguins.svgz", "kde"),
    ("kde-xskat-german", KDE_CARDS / "svg-xskat-german/german.svgz", "kde"),
)
CARD_WIDTH = 400


def _card_element(naming: str, suit: str, rank: str) -> str:
    return f"{suit}_{rank}" if naming == "aisleriot" else f"{rank}_{suit}"


def _card(path: Path, element: str) -> Candidate:
    return Candidate(f"{path}#{element}", functools.partial(render_svg_trimmed, path, element, CARD_WIDTH))


def card_families(seed: int, stats: KindStats) -> list[Family]:
    """Per deck: the pip cards (ace to ten) of one seeded suit, and the twelve court cards."""
    families = []
    for deck, path, naming in CARD_DECKS:
        if not path.is_file():
            stats.missing.append(str(path))
            continue
        package = "gnome-cards-data" if naming == "aisleriot" else "kdegames-card-data-kf5"
        licence = f"see /usr/share/doc/{package}/copyright (GPL / LGPL / free-art decks)"
        suit = seeded(seed, "cards", deck).choice(SUITS)
        pips = tuple(_card(path, _card_element(naming, suit, str(rank))) for rank in range(1, 11))
        courts = tuple(_card(path, _card_element(naming, s, rank)) for s in SUITS for rank in COURTS)
        families.append(
            Family("cards", f"{deck}-{suit}-pips", package, licence, f"{deck} deck, {suit} pip cards", pips)
        )
        families.append(
            Family("cards", f"{deck}-courts", package, licence, f"{deck} deck, court cards", courts)
        )
    return families


# --- flags ---------------------------------------------------------------------------------

FLAGS = Path("/usr/share/iso-flags-svg/country-4x3")
# Layout families, by ISO 3166 code.  Flags that differ only in colour (France / Italy) are left
# for the pHash filter to sort out: it keeps them only when their luminance pattern differs.
# Plain horizontal tribands are not listed: they all share one pHash up to a 90-degree turn
# of the vertical ones.  Territories flying another country's flag (hm, um, sj, bv) are out.
FLAG_FAMILIES: dict[str, tuple[str, ...]] = {
    "nordic-cross": ("dk", "se", "no", "fi", "is", "fo", "ax"),
    "ensign-canton-stars": ("au", "nz", "tv", "ck", "fj", "nu"),
    "ensign-canton-arms": ("ms", "ky", "vg", "tc", "fk", "gs", "sh", "ai", "pn", "bm", "io"),
    "hoist-triangle": ("cz", "ph", "cu", "bs", "tl", "er", "gq", "mz", "km", "st", "zw"),
    "stripes-with-canton": ("us", "lr", "my", "tg", "gr", "uy", "um"),
    "vertical-triband": ("fr", "it", "ie", "be", "ro", "ml", "gn", "ci", "ad", "md", "mx", "pe", "ca", "ng"),
    "triband-with-arms": ("rs", "si", "sk", "hr", "es", "bo", "ec", "ve", "sv", "ni", "hn", "co"),
    "pan-arab": ("eg", "iq", "sy", "ye", "ae", "kw", "sd", "jo", "ps", "eh"),
    "central-disc": ("jp", "bd", "pw", "la", "ne", "gl", "kr"),
    "crescent-and-star": ("tr", "tn", "dz", "pk", "az", "mv", "mr", "ly", "tm", "uz"),
    "diagonal-band": ("cg", "tz", "na", "sb", "kn", "tt", "cd", "bn"),
}


def flag_families(seed: int, stats: KindStats) -> list[Family]:
    """Country flags of one layout, drawn 480x360."""
    if not FLAGS.is_dir():
        stats.missing.append(str(FLAGS))
        return []
    families = []
    for name, codes in FLAG_FAMILIES.items():
        candidates = []
        for code in codes:
            path = FLAGS / f"{code}.svg"
            if path.is_file():
                render = functools.partial(render_svg, path, width=VECTOR_SIZE, height=VECTOR_SIZE * 3 // 4)
                candidates.append(Candidate(str(path), render))
            else:
                stats.missing.append(str(path))
        families.append(
            Family(
                "flags",
                name,
                "iso-flags-svg",
                "public domain (see /usr/share/doc/iso-flags-svg/copyright)",
                f"country flags, {name.replace('-', ' ')} layout",
                tuple(candidates),
            )
        )
    return families


# --- icons ---------------------------------------------------------------------------------

NUMIX_APPS = Path("/usr/share/icons/Numix-Circle/48/apps")
BREEZE = Path("/usr/share/icons/breeze")
ELEMENTARY = Path("/usr/share/icons/elementary")
ICON_SIZE = 512
NUMIX_SAMPLE = 260
NUMIX_PER_FAMILY = 14
PLAIN_FOLDER_COLOURS = frozenset(
    "black blue brown cyan green grey magenta orange red violet yellow white".split()
)
ICON_VARIANT_MARKERS = ("-rtl", "-template", "macroEnabled", "-open", "-drag-accept", "-symbolic")


def _real_svgs(directory: Path, pattern: str = "*.svg") -> list[Path]:
    """SVG files in ``directory`` (symlinks resolved and collapsed), sorted by name."""
    seen: dict[Path, Path] = {}
    for path in sorted(directory.glob(pattern)):
        if any(marker in path.name for marker in ICON_VARIANT_MARKERS):
            continue
        real = path.resolve()
        if real.is_file() and real.suffix == ".svg":
            seen.setdefault(real, path)
    return sorted(seen.values())


def _icon(path: Path) -> Candidate:
    return Candidate(str(path), functools.partial(render_svg, path, width=ICON_SIZE, height=ICON_SIZE))


def _plate_colour(path: Path) -> str | None:
    """Name of the colour of a Numix-Circle icon's round plate, sampled near its top edge."""
    try:
        image = render_svg(path, width=96, height=96)
    except RenderError:
        return None
    r, g, b, a = image.getpixel((48, 9))
    if a < 250:
        return None
    lo, hi = min(r, g, b), max(r, g, b)
    if hi < 70:
        return "dark"
    if hi - lo < 30:
        return "light" if hi > 200 else "grey"
    hue = _hue(r, g, b)
    names = ("red", "orange", "yellow", "green", "teal", "blue", "purple", "pink")
    edges = (15, 40, 70, 160, 195, 250, 290, 340)
    for name, edge in zip(names, edges, strict=True):
        if hue < edge:
            return name
    return "red"


def _hue(r: int, g: int, b: int) -> float:
    hi, lo = max(r, g, b), min(r, g, b)
    if hi == lo:
        return 0.0
    if hi == r:
        hue = (g - b) / (hi - lo) % 6
    elif hi == g:
        hue = (b - r) / (hi - lo) + 2
    else:
        hue = (r - g) / (hi - lo) + 4
    return 60.0 * hue


def _chunks(
    kind: str, prefix: str, paths: Sequence[Path], size: int, limit: int, seed: int, **meta: str
) -> list[Family]:
    """Split a seeded shuffle of ``paths`` into at most ``limit`` families of ``size`` candidates."""
    shuffled = list(paths)
    seeded(seed, kind, prefix).shuffle(shuffled)
    families = []
    for index in range(min(limit, len(shuffled) // size)):
        part = shuffled[index * size : (index + 1) * size]
        families.append(
            Family(
                kind,
                f"{prefix}-{index + 1}",
                meta["package"],
                meta["licence"],
                meta["template"],
                tuple(_icon(p) for p in sorted(part)),
            )
        )
    return families


def icon_families(seed: int, stats: KindStats) -> list[Family]:
    """Numix-Circle icons by plate colour; Breeze and elementary folder and document icons."""
    families: list[Family] = []
    if NUMIX_APPS.is_dir():
        apps = _real_svgs(NUMIX_APPS)
        sample = sorted(seeded(seed, "icons", "numix").sample(apps, min(NUMIX_SAMPLE, len(apps))))
        buckets: dict[str, list[Path]] = {}
        for path in sample:
            colour = _plate_colour(path)
            if colour is not None:
                buckets.setdefault(colour, []).append(path)
        for colour, paths in sorted(buckets.items()):
            families.append(
                Family(
                    "icons",
                    f"numix-circle-{colour}",
                    "numix-icon-theme-circle",
                    "GPL-3+ (see /usr/share/doc/numix-icon-theme-circle/copyright)",
                    f"Numix-Circle app icons on a {colour} round plate",
                    tuple(_icon(p) for p in paths[:NUMIX_PER_FAMILY]),
                )
            )
    else:
        stats.missing.append(str(NUMIX_APPS))
    breeze_licence = "LGPL-3+ (see /usr/share/doc/breeze-icon-theme/copyright)"
    if BREEZE.is_dir():
        folders = [
            p
            for p in _real_svgs(BREEZE / "places/64", "folder-*.svg")
            if p.stem.removeprefix("folder-") not in PLAIN_FOLDER_COLOURS
        ]
        families += _chunks(
            "icons",
            "breeze-folders",
            folders,
            10,
            3,
            seed,
            package="breeze-icon-theme",
            licence=breeze_licence,
            template="Breeze folder with a glyph",
        )
        mimes = BREEZE / "mimetypes/64"
        families += _chunks(
            "icons",
            "breeze-text-documents",
            _real_svgs(mimes, "text-*.svg"),
            12,
            2,
            seed,
            package="breeze-icon-theme",
            licence=breeze_licence,
            template="Breeze document page, text types",
        )
        families += _chunks(
            "icons",
            "breeze-application-documents",
            _real_svgs(mimes, "application-*.svg"),
            12,
            3,
            seed,
            package="breeze-icon-theme",
            licence=breeze_licence,
            template="Breeze document page, app types",
        )
    else:
        stats.missing.append(str(BREEZE))
    elementary_licence = "GPL-3+ (see /usr/share/doc/elementary-icon-theme/copyright)"
    if ELEMENTARY.is_dir():
        families += _chunks(
            "icons",
            "elementary-folders",
            _real_svgs(ELEMENTARY / "places/128", "folder*.svg"),
            10,
            1,
            seed,
            package="elementary-icon-theme",
            licence=elementary_licence,
            template="elementary folder",
        )
        families += _chunks(
            "icons",
            "elementary-documents",
            _real_svgs(ELEMENTARY / "mimes/128"),
            12,
            3,
            seed,
            package="elementary-icon-theme",
            licence=elementary_licence,
            template="elementary document page",
        )
    else:
        stats.missing.append(str(ELEMENTARY))
    return families


# --- sprites -------------------------------------------------------------------------------

DINK = Path("/usr/share/games/dink/dink/graphics")
# One character and action per family.  Left out as recolours: the red / gold / silver
# knights, the purple and green gnomes, merchants and maidens, the grey and purple boncas.
DINK_ANIMATIONS = (
    "Dink/walk",
    "Dink/sword/hit",
    "Dink/hit/normal",
    "Dink/push",
    "Animals/Pig",
    "People/Girl",
    "People/Gnome/Blue",
    "People/Knight/Blue",
    "foes/Bonca/Walk",
    "foes/Dragon",
    "foes/Slayers/Walk",
    "foes/Stonegnt/walk",
    "foes/goblin/Horns/attack",
)
FROZEN_BUBBLE = Path("/usr/share/games/frozen-bubble/gfx/pinguins")
FROZEN_BUBBLE_ANIMATIONS = ("anime-shooter_p1", "loose_p1", "wait_p1", "win_p1")
SPRITE_MARGIN = 4


def read_fastfile(path: Path) -> list[tuple[str, bytes]]:
    """Members of a Dink Smallwood ``dir.ff`` pack: (name, BMP bytes), in pack order.

    Layout: int32 count, then ``count`` records of (int32 offset, char[13] name); the last
    record only marks where the data ends.
    """
    data = path.read_bytes()
    (count,) = struct.unpack_from("<i", data, 0)
    records = [struct.unpack_from("<i13s", data, 4 + 17 * i) for i in range(count)]
    members = []
    for (offset, name), (end, _) in itertools.pairwise(records):
        members.append((name.split(b"\0", 1)[0].decode("latin-1"), data[offset:end]))
    return members


def _union_box(frames: Iterable[Image.Image], background: tuple[int, int, int] | None) -> tuple[int, ...]:
    """Bounding box of what any frame paints (alpha, or pixels unlike ``background``)."""
    left = top = 1 << 30
    right = bottom = 0
    width = height = 0
    for frame in frames:
        width, height = max(width, frame.width), max(height, frame.height)
        if background is None:
            box = frame.getchannel("A").getbbox()
        else:
            mask = np.any(np.asarray(frame.convert("RGB")) != background, axis=2)
            box = Image.fromarray(mask.astype(np.uint8) * 255).getbbox()
        if box:
            left, top = min(left, box[0]), min(top, box[1])
            right, bottom = max(right, box[2]), max(bottom, box[3])
    if right <= left:
        return (0, 0, width, height)
    m = SPRITE_MARGIN
    return (max(0, left - m), max(0, top - m), min(width, right + m), min(height, bottom + m))


def _place(frame: Image.Image, size: tuple[int, int], background: tuple[int, int, int] | None) -> Image.Image:
    """``frame`` bottom-centred on the animation's common canvas (transparent, or ``background``)."""
    canvas = Image.new("RGBA", size, (*WHITE, 0) if background is None else (*background, 255))
    canvas.paste(frame, ((size[0] - frame.width) // 2, size[1] - frame.height))
    return canvas


def _framed(
    frame: Image.Image, box: tuple[int, ...], size: tuple[int, int], background: tuple[int, int, int] | None
) -> Image.Image:
    """A frame on the common canvas, cropped to the animation's box and enlarged."""
    return enlarge(_place(frame, size, background).crop(box))


def _sprite_family(
    family_id: str,
    package: str,
    licence: str,
    template: str,
    frames: list[tuple[str, Image.Image]],
    background: tuple[int, int, int] | None,
) -> Family:
    size = (max(f.width for _, f in frames), max(f.height for _, f in frames))
    box = _union_box((_place(frame, size, background) for _, frame in frames), background)
    candidates = tuple(
        Candidate(source, functools.partial(_framed, frame, box, size, background))
        for source, frame in frames
    )
    return Family("sprites", family_id, package, licence, template, candidates, SPRITE_MIN_DISTANCE)


def sprite_families(seed: int, stats: KindStats) -> list[Family]:
    """Frames of one character's animation: Dink Smallwood packs and the Frozen Bubble penguin."""
    families = []
    for animation in DINK_ANIMATIONS:
        pack = DINK / animation / "dir.ff"
        if not pack.is_file():
            stats.missing.append(str(pack))
            continue
        frames = []
        for name, blob in read_fastfile(pack):
            try:
                frame = Image.open(io.BytesIO(blob))
                frame.load()
            except OSError:
                stats.rejected["render_error"] += 1
                continue
            frames.append((f"{pack}:{name}", frame.convert("RGBA")))
        if frames:
            families.append(
                _sprite_family(
                    "dink-" + animation.lower().replace("/", "-"),
                    "freedink-data",
                    "zlib-style licence (see /usr/share/doc/freedink-data/copyright)",
                    f"Dink Smallwood sprite, {animation}",
                    frames,
                    WHITE,  # Dink packs use white as the colour key
                )
            )
    for animation in FROZEN_BUBBLE_ANIMATIONS:
        paths = sorted(FROZEN_BUBBLE.glob(f"{animation}_*.png"))
        if not paths:
            stats.missing.append(str(FROZEN_BUBBLE / f"{animation}_*.png"))
            continue
        frames = [(str(p), Image.open(p).convert("RGBA")) for p in paths]
        families.append(
            _sprite_family(
                f"frozen-bubble-{animation.replace('_', '-')}",
                "frozen-bubble-data",
                "GPL-2 (see /usr/share/doc/frozen-bubble-data/copyright)",
                f"Frozen Bubble penguin, {animation}",
                frames,
                None,
            )
        )
    return families


# --- mahjong tiles -------------------------------------------------------------------------

KMAHJONGG = Path("/usr/share/kmahjongglib/tilesets")
GNOME_MAHJONGG = Path("/usr/share/gnome-mahjongg/themes")
TILE_HEIGHT = 440
# Glyph elements of a libkmahjongg tileset, by suit.
KDE_SUITS: dict[str, tuple[str, ...]] = {
    "characters": tuple(f"CHARACTER_{i}" for i in range(1, 10)),
    "circles": tuple(f"ROD_{i}" for i in range(1, 10)),
    "bamboo": tuple(f"BAMBOO_{i}" for i in range(1, 10)),
    "honours": (*(f"WIND_{i}" for i in range(1, 5)), *(f"DRAGON_{i}" for i in range(1, 4))),
    "bonus": (*(f"FLOWER_{i}" for i in range(1, 5)), *(f"SEASON_{i}" for i in range(1, 5))),
}
# Columns of a GNOME Mahjongg theme sheet (43 tiles in a row; second row is highlighted).
GNOME_SUITS: dict[str, tuple[int, ...]] = {
    "circles": tuple(range(0, 9)),
    "honours": tuple(range(9, 15)),
    "characters": tuple(range(15, 24)),
    "bamboo": tuple(range(24, 33)),
    "bonus": (33, 34, 35, 36, 38, 39, 40, 41),
}
GNOME_SHEET_TILES = 43
TILE_SUITS_PER_SET = 2


def _desktop_numbers(path: Path) -> dict[str, float]:
    numbers = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition("=")
        try:
            numbers[key.strip()] = float(value)
        except ValueError:
            continue
    return numbers


@functools.cache
def _blank_tile(svg: Path) -> Image.Image:
    return render_svg_trimmed(svg, "TILE_1", TILE_HEIGHT * 4, TILE_HEIGHT)


def _kde_tile(svg: Path, glyph: str, meta: dict[str, float]) -> Image.Image:
    """A libkmahjongg tile: the blank tile with the glyph fitted to its face.

    The face (``TileFaceWidth`` x ``TileFaceHeight``) is centred on the tile less the level
    offset, the drawn edge on the left and bottom.
    """
    offset_x = meta.get("LevelOffsetX", meta.get("LevelOffset", 10.0))
    offset_y = meta.get("LevelOffsetY", meta.get("LevelOffset", 10.0))
    tile = _blank_tile(svg).copy()
    unit = tile.width / meta.get("TileWidth", tile.width)
    face_w = meta.get("TileFaceWidth", tile.width / unit * 0.7) * unit
    face_h = meta.get("TileFaceHeight", tile.height / unit * 0.7) * unit
    face = render_svg_trimmed(svg, glyph, round(face_w * 0.9), round(face_h * 0.9))
    left, bottom = offset_x * unit, tile.height - offset_y * unit
    x = round(left + (tile.width - left - face.width) / 2)
    y = round((bottom - face.height) / 2)
    tile.alpha_composite(face, (max(0, x), max(0, y)))
    return tile


def _gnome_tile(sheet: Path, column: int) -> Image.Image:
    if sheet.suffix == ".svg":
        image = render_svg(sheet, zoom=TILE_HEIGHT / 88)
    else:
        image = Image.open(sheet).convert("RGBA")
    width = image.width / GNOME_SHEET_TILES
    tile = image.crop((round(column * width), 0, round((column + 1) * width), image.height // 2))
    return enlarge(tile, min_side=TILE_HEIGHT * 2 // 3) if sheet.suffix != ".svg" else tile


def tile_families(seed: int, stats: KindStats) -> list[Family]:
    """Mahjong tiles of one tileset and suit (two seeded suits per tileset)."""
    families = []
    kde_licence = "GPL-2+ / CC-BY-SA-3.0 (see /usr/share/doc/kdegames-mahjongg-data-kf5/copyright)"
    for svg in sorted(KMAHJONGG.glob("*.svgz")) if KMAHJONGG.is_dir() else []:
        meta = _desktop_numbers(svg.with_suffix(".desktop"))
        suits = sorted(seeded(seed, "tiles", svg.stem).sample(sorted(KDE_SUITS), TILE_SUITS_PER_SET))
        for suit in suits:
            candidates = tuple(
                Candidate(f"{svg}#TILE_1+{g}", functools.partial(_kde_tile, svg, g, meta))
                for g in KDE_SUITS[suit]
            )
            families.append(
                Family(
                    "tiles",
                    f"kmahjongg-{svg.stem}-{suit}",
                    "kdegames-mahjongg-data-kf5",
                    kde_licence,
                    f"KDE mahjong tileset {svg.stem}, {suit}",
                    candidates,
                )
            )
    if not KMAHJONGG.is_dir():
        stats.missing.append(str(KMAHJONGG))
    gnome_licence = "GPL-2+ / CC-BY-SA-3.0 (see /usr/share/doc/gnome-mahjongg/copyright)"
    sheets = (
        sorted([*GNOME_MAHJONGG.glob("*.png"), *GNOME_MAHJONGG.glob("*.svg")])
        if GNOME_MAHJONGG.is_dir()
        else []
    )
    for sheet in sheets:
        suits = sorted(seeded(seed, "tiles", sheet.stem).sample(sorted(GNOME_SUITS), TILE_SUITS_PER_SET))
        for suit in suits:
            candidates = tuple(
                Candidate(f"{sheet}@{c}", functools.partial(_gnome_tile, sheet, c)) for c in GNOME_SUITS[suit]
            )
            families.append(
                Family(
                    "tiles",
                    f"gnome-mahjongg-{sheet.stem.replace('_', '-')}-{suit}",
                    "gnome-mahjongg",
                    gnome_licence,
                    f"GNOME Mahjongg theme {sheet.stem}, tiles in the {suit} slots",
                    candidates,
                )
            )
    if not sheets:
        stats.missing.append(str(GNOME_MAHJONGG))
    return families


# --- pieces --------------------------------------------------------------------------------

XBOARD_THEMES = Path("/usr/share/games/xboard/themes")
# Default-theme pieces drawn as a variant of another piece (promoted, crowned, gilded, turned,
# mirrored or grown-up): left out so that no two members are versions of one drawing.
XBOARD_VARIANTS = (
    "WhitePromo*",
    "WhiteCrowned*",
    "WhiteGold?*",
    "WhiteHSword*",
    "WhiteRight*",
    "WhiteRShield*",
    "WhiteCub*",
)
PIECE_SQUARE = 480
PIECE_SIZE = 400


def _piece(path: Path) -> Image.Image:
    piece = render_svg(path, width=PIECE_SIZE, height=PIECE_SIZE)
    square = Image.new("RGBA", (PIECE_SQUARE, PIECE_SQUARE), (*BOARD_SQUARE, 255))
    square.alpha_composite(piece, ((PIECE_SQUARE - piece.width) // 2, (PIECE_SQUARE - piece.height) // 2))
    return square.convert("RGB")


def piece_families(seed: int, stats: KindStats) -> list[Family]:
    """XBoard pieces of one theme, white side, each on the same light board square."""
    if not XBOARD_THEMES.is_dir():
        stats.missing.append(str(XBOARD_THEMES))
        return []
    licence = "GPL-3+ (see /usr/share/doc/xboard/copyright)"
    families = []
    for theme, size, limit in (("default", 10, 4), ("shogi", 7, 2), ("xiangqi", 7, 1)):
        paths = sorted((XBOARD_THEMES / theme).glob("White*.svg"))
        if theme == "default":
            paths = [p for p in paths if not any(fnmatch.fnmatch(p.name, v) for v in XBOARD_VARIANTS)]
        shuffled = list(paths)
        seeded(seed, "pieces", theme).shuffle(shuffled)
        for index in range(min(limit, len(shuffled) // size)):
            part = sorted(shuffled[index * size : (index + 1) * size])
            families.append(
                Family(
                    "pieces",
                    f"xboard-{theme}-{index + 1}",
                    "xboard",
                    licence,
                    f"XBoard {theme} piece set on a board square",
                    tuple(Candidate(str(p), functools.partial(_piece, p)) for p in part),
                )
            )
    return families


# --- web pages -----------------------------------------------------------------------------

WORDS = (
    "river stone garden harbour market silver autumn winter morning window lantern meadow bridge"
    " orchard canyon valley summit island forest coastal urban quiet bright modern classic simple"
    " fresh local daily weekly guide review update report launch season festival workshop studio"
    " kitchen journey travel coffee bakery cycling running design project system network cloud"
    " energy solar battery engine rocket planet ocean desert village city street museum library"
    " theatre concert album track record player team league match final score record fast slow"
    " green blue golden crimson amber violet hidden open secret simple smart tiny giant northern"
    " southern eastern western new old first last best better great small large early late"
).split()
PALETTE = (
    "#e63946 #f1a208 #2a9d8f #264653 #e76f51 #8ab17d #6d597a #457b9d #ffb703 #219ebc #023047"
    " #9b2226 #bb3e03 #0a9396 #94d2bd #3d405b #81b29a #f2cc8f #5f0f40 #0f4c5c"
).split()


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _title(rng: random.Random, n: int = 4) -> str:
    return html.escape(_words(rng, n).title())


def _sentence(rng: random.Random, n: int = 14) -> str:
    return html.escape(_words(rng, n).capitalize() + ".")


def _el(tag: str, **attrs: object) -> str:
    """One SVG element; float attributes are rounded to whole pixels, ``_`` in names becomes ``-``."""
    parts = []
    for key, value in attrs.items():
        text = f"{value:.0f}" if isinstance(value, float) else str(value)
        parts.append(f'{key.rstrip("_").replace("_", "-")}="{text}"')
    return f"<{tag} {' '.join(parts)}/>"


def _svg(width: int, height: int, body: str, style: str = "") -> str:
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" style="{style}">{body}</svg>'
    )


def _scene(rng: random.Random, width: int, height: int) -> str:
    """A landscape: sky, sun and three layers of hills, all seeded."""
    sky = rng.choice(("#8ecae6", "#ffd6a5", "#cdb4db", "#bde0fe", "#fec5bb", "#a8dadc"))
    body = [_el("rect", width=width, height=height, fill=sky)]
    sun = rng.choice(("#fff3b0", "#ffb703", "#ffffff"))
    cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.45) * height
    body.append(_el("circle", cx=cx, cy=cy, r=rng.uniform(0.06, 0.16) * height, fill=sun))
    for layer in range(3):
        base = height * (0.45 + 0.18 * layer)
        points = [(0.0, float(height))]
        points += [(width * step / 8, base - rng.uniform(0, 0.35) * height) for step in range(9)]
        points.append((float(width), float(height)))
        path = " ".join(f"{x:.0f},{y:.0f}" for x, y in points)
        body.append(_el("polygon", points=path, fill=rng.choice(PALETTE)))
    return _svg(width, height, "".join(body))


def _shapes(rng: random.Random, width: int, height: int, count: int = 9) -> str:
    """An abstract composition of seeded rectangles, circles and triangles."""
    body = [_el("rect", width=width, height=height, fill=rng.choice(PALETTE))]
    for _ in range(count):
        colour = rng.choice(PALETTE)
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        s = rng.uniform(0.15, 0.5) * min(width, height)
        shape = rng.randrange(3)
        if shape == 0:
            body.append(_el("rect", x=x - s / 2, y=y - s / 2, width=s, height=s * 0.7, fill=colour))
        elif shape == 1:
            body.append(_el("circle", cx=x, cy=y, r=s / 2, fill=colour))
        else:
            points = f"{x:.0f},{y - s:.0f} {x + s:.0f},{y + s / 2:.0f} {x - s:.0f},{y + s / 2:.0f}"
            body.append(_el("polygon", points=points, fill=colour))
    return _svg(width, height, "".join(body))


def _bars(rng: random.Random, width: int, height: int) -> str:
    """A bar chart and a line of seeded values on a fixed white panel."""
    n = rng.randint(6, 12)
    gap = width / n
    colour = rng.choice(PALETTE)
    body = [_el("rect", width=width, height=height, fill="#ffffff")]
    for i in range(n):
        h = rng.uniform(0.1, 0.9) * (height - 20)
        body.append(_el("rect", x=i * gap + 6, y=height - 10 - h, width=gap - 12, height=h, fill=colour))
    points = " ".join(f"{i * gap + gap / 2:.0f},{rng.uniform(0.1, 0.9) * height:.0f}" for i in range(n))
    body.append(_el("polyline", points=points, fill="none", stroke="#222", stroke_width=4))
    return _svg(width, height, "".join(body))


def _product(rng: random.Random, size: int) -> str:
    """A product shot: one seeded object on the same studio backdrop and floor shadow."""
    colour = rng.choice(PALETTE)
    c, floor = size / 2, size * 0.86
    body = [
        '<defs><linearGradient id="bd" x1="0" y1="0" x2="0" y2="1"><stop offset="0" stop-color="#f4f4f4"/>'
        '<stop offset="1" stop-color="#c9c9c9"/></linearGradient></defs>',
        _el("rect", width=size, height=size, fill="url(#bd)"),
        _el("ellipse", cx=c, cy=floor, rx=size * 0.3, ry=size * 0.05, fill="#999"),
    ]
    w, h = rng.uniform(0.2, 0.45) * size, rng.uniform(0.3, 0.65) * size
    top = floor - h
    shape = rng.randrange(4)
    if shape == 0:  # bottle
        body.append(
            _el("rect", x=c - w / 2, y=top + h * 0.3, width=w, height=h * 0.7, rx=w * 0.2, fill=colour)
        )
        body.append(_el("rect", x=c - w / 6, y=top, width=w / 3, height=h * 0.32, fill=colour))
    elif shape == 1:  # box
        body.append(_el("rect", x=c - w, y=top, width=2 * w, height=h, fill=colour))
        body.append(_el("rect", x=c - w, y=top + h * 0.4, width=2 * w, height=h * 0.15, fill="#fff"))
    elif shape == 2:  # ball
        body.append(_el("circle", cx=c, cy=floor - w, r=w, fill=colour))
        body.append(_el("circle", cx=c - w / 3, cy=floor - w * 1.3, r=w / 4, fill="#fff", opacity=0.5))
    else:  # mug
        body.append(_el("rect", x=c - w / 2, y=top + h / 3, width=w, height=h * 2 / 3, fill=colour))
        handle = {"fill": "none", "stroke": colour, "stroke_width": w / 8}
        body.append(_el("circle", cx=c + w / 2, cy=top + h * 0.62, r=h / 6, **handle))
    return _svg(size, size, "".join(body))


def _avatar(rng: random.Random, size: int) -> str:
    """A seeded head-and-shoulders silhouette on a round plate."""
    c = size / 2
    head = size * rng.uniform(0.15, 0.22)
    shoulders = size * rng.uniform(0.25, 0.4)
    return _svg(
        size,
        size,
        _el("circle", cx=c, cy=c, r=c, fill=rng.choice(PALETTE))
        + _el("circle", cx=c, cy=size * 0.4, r=head, fill=rng.choice(PALETTE))
        + _el("ellipse", cx=c, cy=size * 0.95, rx=shoulders, ry=size * 0.3, fill=rng.choice(PALETTE)),
    )


def _plate(rng: random.Random) -> str:
    """A dish seen from above: seeded food on the same plate and table."""
    food = "".join(
        _el(
            "circle",
            cx=rng.uniform(110, 270),
            cy=rng.uniform(80, 220),
            r=rng.uniform(12, 45),
            fill=rng.choice(PALETTE),
        )
        for _ in range(rng.randint(4, 9))
    )
    table = _el("rect", width=380, height=300, fill="#8d6e63")
    return _svg(380, 300, table + _el("circle", cx=190, cy=150, r=130, fill="#fafafa") + food)


def _list(rng: random.Random, n: int, words: int = 5) -> str:
    return "".join(f"<li>{_sentence(rng, words)}</li>" for _ in range(n))


def _css(*rules: str) -> str:
    return "<style>" + "".join(rules) + "</style>"


BASE_CSS = (
    "*{box-sizing:border-box}html,body{margin:0;width:800px;height:600px;overflow:hidden;"
    "font-family:'DejaVu Sans',sans-serif;font-size:14px;color:#222}svg{display:block}"
    "h1,h2,h3{margin:6px 0}p{margin:6px 0;line-height:1.35}ul{margin:4px 0;padding-left:18px}"
)


def _page_blog(rng: random.Random) -> str:
    return (
        _css(
            "nav{background:#1d3557;color:#fff;padding:10px 24px;font-weight:bold}",
            "main{padding:12px 24px}.by{color:#777;font-size:12px}",
        )
        + f"<nav>The {_title(rng, 2)} Journal</nav><main><h1>{_title(rng, 6)}</h1>"
        + f'<div class="by">by {_title(rng, 2)} - {rng.randint(1, 28)} May</div>{_scene(rng, 752, 300)}'
        + f"<p>{_sentence(rng, 40)}</p><p>{_sentence(rng, 30)}</p></main>"
    )


def _page_shop(rng: random.Random) -> str:
    stars = "&#9733;" * rng.randint(2, 5)
    return (
        _css(
            "header{border-bottom:2px solid #eee;padding:10px 24px;font-size:20px;font-weight:bold}",
            ".row{display:flex;gap:24px;padding:20px 24px}.price{font-size:28px;color:#b5179e;margin:12px 0}",
            ".buy{background:#f77f00;color:#fff;padding:12px 30px;display:inline-block;border-radius:4px}",
        )
        + f'<header>shop/{_words(rng, 1)}</header><div class="row">{_product(rng, 380)}<div>'
        + f"<h2>{_title(rng, 3)}</h2><div>{stars}</div>"
        + f'<div class="price">${rng.randint(5, 499)}.{rng.randint(0, 99):02d}</div>'
        + f'<div class="buy">Add to cart</div><ul>{_list(rng, 5)}</ul></div></div>'
    )


def _page_news(rng: random.Random) -> str:
    cards = "".join(
        f'<div class="c">{_shapes(rng, 240, 130, 6)}<h3>{_title(rng, 5)}</h3></div>' for _ in range(6)
    )
    return (
        _css(
            "header{background:#9b2226;color:#fff;padding:12px 20px;font-size:24px;font-weight:bold}",
            ".g{display:grid;grid-template-columns:repeat(3,240px);gap:16px;padding:14px 20px}",
            ".c h3{font-size:14px}",
        )
        + f'<header>{_title(rng, 2)} News</header><div class="g">{cards}</div>'
    )


def _page_dashboard(rng: random.Random) -> str:
    kpis = "".join(
        f'<div class="k"><div>{_title(rng, 1)}</div><b>{rng.randint(10, 99999):,}</b></div>' for _ in range(4)
    )
    menu = "".join(f"<div>{_title(rng, 1)}</div>" for _ in range(8))
    return (
        _css(
            ".s{position:absolute;left:0;top:0;bottom:0;width:160px;background:#264653;color:#fff;padding:16px}",
            ".s div{padding:8px 0}.ks{display:flex;gap:12px}",
            ".m{position:absolute;left:160px;top:0;right:0;bottom:0;background:#f1f3f5;padding:16px}",
            ".k{background:#fff;flex:1;padding:10px;border-radius:6px}.k b{font-size:22px}",
        )
        + f'<div class="s">{menu}</div><div class="m"><h2>{_title(rng, 2)} overview</h2>'
        + f'<div class="ks">{kpis}</div><div style="margin-top:14px">{_bars(rng, 600, 380)}</div></div>'
    )


def _page_profile(rng: random.Random) -> str:
    posts = "".join(_shapes(rng, 230, 150, 5) for _ in range(3))
    return (
        _css(
            ".av{position:absolute;left:30px;top:120px;border:5px solid #fff;border-radius:50%;",
            "overflow:hidden}",
            ".n{margin:12px 0 0 190px}.st{display:flex;gap:30px;margin:10px 30px 10px 190px}",
            ".ps{display:flex;gap:15px;margin:10px 30px}",
        )
        + f'{_scene(rng, 800, 190)}<div class="av">{_avatar(rng, 140)}</div>'
        + f'<div class="n"><h2>{_title(rng, 2)}</h2><div>{_sentence(rng, 10)}</div></div>'
        + f'<div class="st"><b>{rng.randint(1, 999)} posts</b><b>{rng.randint(1, 99)}k followers</b></div>'
        + f'<div class="ps">{posts}</div>'
    )


def _page_gallery(rng: random.Random) -> str:
    cells = "".join(
        f'<div>{_scene(rng, 250, 150)}<div class="cap">{_title(rng, 3)}</div></div>' for _ in range(9)
    )
    return (
        _css(
            "h1{padding:6px 16px;font-size:20px}.cap{font-size:12px;color:#555}",
            ".g{display:grid;grid-template-columns:repeat(3,250px);gap:8px 16px;padding:0 16px}",
        )
        + f'<h1>Gallery: {_title(rng, 2)}</h1><div class="g">{cells}</div>'
    )


def _page_landing(rng: random.Random) -> str:
    features = "".join(
        f'<div class="f">{_avatar(rng, 60)}<h3>{_title(rng, 2)}</h3><p>{_sentence(rng, 12)}</p></div>'
        for _ in range(3)
    )
    return (
        _css(
            ".h{position:relative}.h .t{position:absolute;left:40px;top:90px;color:#fff;font-size:38px;",
            "font-weight:bold;text-shadow:0 2px 6px #000;width:620px}",
            ".cta{position:absolute;left:40px;top:250px;background:#fff;padding:10px 24px;",
            "border-radius:20px}",
            ".fs{display:flex;gap:20px;padding:10px 30px}",
        )
        + f'<div class="h">{_shapes(rng, 800, 330, 12)}<div class="t">{_title(rng, 5)}</div>'
        + f'<div class="cta">Get started</div></div><div class="fs">{features}</div>'
    )


def _page_recipe(rng: random.Random) -> str:
    return (
        _css(
            ".r{display:flex;gap:20px;padding:20px}h1{padding:14px 20px 0;color:#bc4749}",
            "ol{margin:0 20px}",
        )
        + f'<h1>{_title(rng, 3)}</h1><div class="r">{_plate(rng)}<div><h3>Ingredients</h3>'
        + f"<ul>{_list(rng, 7, 3)}</ul></div></div><ol>{_list(rng, 3, 12)}</ol>"
    )


def _page_album(rng: random.Random) -> str:
    tracks = "".join(
        f"<tr><td>{i}</td><td>{_title(rng, 3)}</td><td>{rng.randint(2, 7)}:{rng.randint(0, 59):02d}</td></tr>"
        for i in range(1, 12)
    )
    return (
        _css(
            "body{background:#121212;color:#eee}.a{display:flex;gap:24px;padding:24px}",
            "td{padding:3px 10px;border-bottom:1px solid #333}",
        )
        + f'<div class="a">{_shapes(rng, 300, 300, 10)}<div><div>ALBUM</div><h1>{_title(rng, 3)}</h1>'
        + f"<div>{_title(rng, 2)} - {rng.randint(1970, 2024)}</div><table>{tracks}</table></div></div>"
    )


def _page_listing(rng: random.Random) -> str:
    house = _el(
        "rect",
        x=rng.randint(60, 260),
        y=170,
        width=rng.randint(120, 200),
        height=110,
        fill=rng.choice(PALETTE),
    )
    roof = _svg(500, 330, house, "position:absolute;left:0;top:0")
    facts = "".join(f"<tr><td>{_title(rng, 1)}</td><td>{rng.randint(1, 900)}</td></tr>" for _ in range(8))
    return (
        _css(
            ".l{display:flex;gap:20px;padding:20px}.p{position:relative}.pr{font-size:30px;color:#2a9d8f}",
            "td{padding:4px 12px;border-bottom:1px solid #ddd}.d{margin:0 20px}",
        )
        + f'<div class="l"><div class="p">{_scene(rng, 500, 330)}{roof}</div>'
        + f'<div><div class="pr">${rng.randint(100, 990)},000</div>'
        + f"<h2>{_title(rng, 3)}</h2><table>{facts}</table></div></div>"
        + f'<p class="d">{_sentence(rng, 40)}</p>'
    )


WEB_TEMPLATES: dict[str, Callable[[random.Random], str]] = {
    "blog-article": _page_blog,
    "shop-product": _page_shop,
    "news-front": _page_news,
    "dashboard": _page_dashboard,
    "profile": _page_profile,
    "gallery": _page_gallery,
    "landing": _page_landing,
    "recipe": _page_recipe,
    "album": _page_album,
    "property-listing": _page_listing,
}
WEB_PAGES_PER_TEMPLATE = 10


def _screenshot_pages(pages: Sequence[Path], workdir: Path) -> list[Image.Image]:
    """Screenshot each page at the web viewport with one headless Chromium run.

    The pages are stacked as borderless iframes in one tall window, so each keeps its own
    viewport, and the screenshot is cut back into pages.
    """
    width, height = WEB_VIEWPORT
    frames = "".join(
        f'<iframe src="{p.as_uri()}" width="{width}" height="{height}" scrolling="no"'
        ' style="border:0;display:block"></iframe>'
        for p in pages
    )
    stack = workdir / "stack.html"
    stack.write_text(f"<html><body style='margin:0'>{frames}</body></html>", encoding="utf-8")
    shot = workdir / "stack.png"
    cmd = [
        CHROMIUM,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={workdir / 'profile'}",
        f"--window-size={width},{height * len(pages)}",
        f"--screenshot={shot}",
        stack.as_uri(),
    ]
    try:
        subprocess.run(cmd, capture_output=True, check=True, timeout=180, cwd=workdir)
        image = Image.open(shot)
        image.load()
    except (OSError, subprocess.SubprocessError) as exc:
        raise RenderError(f"chromium: {exc}") from exc
    image = image.convert("RGB")
    return [image.crop((0, i * height, width, (i + 1) * height)) for i in range(len(pages))]


class _WebBatch:
    """Renders a template's pages on first use, so all of one family shares one Chromium run."""

    def __init__(self, name: str, documents: Sequence[str], workdir: Path) -> None:
        self.name, self.documents, self.workdir = name, documents, workdir

    @functools.cached_property
    def images(self) -> list[Image.Image]:
        folder = self.workdir / self.name
        folder.mkdir(parents=True, exist_ok=True)
        pages = []
        for index, document in enumerate(self.documents):
            page = folder / f"page{index:02d}.html"
            page.write_text(
                f"<!doctype html><html><head><meta charset='utf-8'><style>{BASE_CSS}</style>"
                f"</head><body>{document}</body></html>",
                encoding="utf-8",
            )
            pages.append(page)
        return _screenshot_pages(pages, folder)

    def page(self, index: int) -> Image.Image:
        return self.images[index]


def web_families(seed: int, stats: KindStats, workdir: Path) -> list[Family]:
    """Pages of one HTML template, each with its own seeded text and pictures."""
    if not Path(CHROMIUM).is_file():
        stats.missing.append(CHROMIUM)
        return []
    families = []
    for name, template in WEB_TEMPLATES.items():
        documents = [template(seeded(seed, "web", name, str(i))) for i in range(WEB_PAGES_PER_TEMPLATE)]
        batch = _WebBatch(name, documents, workdir)
        candidates = tuple(
            Candidate(f"generated:{name}/page{i:02d}.html", functools.partial(batch.page, i))
            for i in range(len(documents))
        )
        families.append(
            Family(
                "web",
                name,
                "chromium (renderer only; pages generated here)",
                "generated by this script; no third-party content",
                f"HTML template {name}",
                candidates,
            )
        )
    return families


# --- pipeline ------------------------------------------------------------------------------


@dataclass
class Corpus:
    """Accepted images so far: their pHashes, pixel digests and manifest rows."""

    codes: list[int] = field(default_factory=list)
    digests: set[str] = field(default_factory=set)
    families: list[dict[str, object]] = field(default_factory=list)
    dropped: list[dict[str, object]] = field(default_factory=list)


def _fit(image: Image.Image) -> Image.Image:
    if max(image.size) <= MAX_SIDE:
        return image
    scale = MAX_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def build_family(family: Family, seed: int, corpus: Corpus, stats: KindStats, dest: Path) -> None:
    """Draw, check and de-duplicate a family's candidates; write it when enough survive."""
    order = list(family.candidates)
    seeded(seed, family.kind, family.family_id, "order").shuffle(order)
    accepted: list[tuple[Candidate, Image.Image, np.ndarray, str]] = []
    global_codes = np.array(corpus.codes, dtype=np.uint64)
    for candidate in order:
        if len(accepted) >= family.max_members:
            break
        stats.candidates += 1
        try:
            drawn = candidate.render()
        except RenderError:
            stats.rejected["render_error"] += 1
            continue
        image, transparent = flatten(drawn)
        image = _fit(image)
        if min(image.size) < MIN_SIDE:
            stats.rejected["tiny"] += 1
            continue
        if transparent > MAX_TRANSPARENT:
            stats.rejected["mostly_transparent"] += 1
            continue
        if float(np.asarray(image.convert("L"), dtype=np.float32).std()) < MIN_GREY_STD:
            stats.rejected["near_flat"] += 1
            continue
        digest = hashlib.sha256(image.tobytes() + repr(image.size).encode()).hexdigest()
        if digest in corpus.digests or any(digest == d for *_, d in accepted):
            stats.rejected["exact_duplicate"] += 1
            continue
        codes = dihedral_phashes(image)
        if nearest(codes, global_codes)[0] <= NEAR_DUPLICATE:
            stats.rejected["near_duplicate"] += 1
            continue
        own = np.array([c[0] for _, _, c, _ in accepted], dtype=np.uint64)
        distance = nearest(codes, own)[0]
        if distance <= NEAR_DUPLICATE:
            stats.rejected["near_duplicate"] += 1
            continue
        if distance < family.min_distance:
            stats.rejected["same_pose"] += 1
            continue
        accepted.append((candidate, image, codes, digest))
    if len(accepted) < MIN_MEMBERS:
        stats.families_dropped += 1
        if accepted:
            stats.rejected["in_dropped_family"] += len(accepted)
        corpus.dropped.append({"kind": family.kind, "id": family.family_id, "accepted": len(accepted)})
        return
    folder = dest / family.kind / family.family_id
    folder.mkdir(parents=True, exist_ok=True)
    members = []
    for index, (candidate, image, codes, digest) in enumerate(accepted):
        name = f"{index:02d}.png"
        image.save(folder / name, optimize=False)
        corpus.codes.append(int(codes[0]))
        corpus.digests.add(digest)
        members.append(
            {
                "file": f"{family.kind}/{family.family_id}/{name}",
                "source": candidate.source,
                "size": list(image.size),
                "phash": f"{int(codes[0]):016x}",
            }
        )
    stats.families += 1
    stats.images += len(members)
    corpus.families.append(
        {
            "kind": family.kind,
            "id": family.family_id,
            "package": family.package,
            "template": family.template,
            "licence": family.licence,
            "original_paths": [m["source"] for m in members],
            "members": members,
        }
    )


def collect(kind: str, seed: int, stats: KindStats, workdir: Path) -> list[Family]:
    """The candidate families of one kind, in a fixed order."""
    if kind == "web":
        return web_families(seed, stats, workdir)
    collectors: dict[str, Callable[[int, KindStats], list[Family]]] = {
        "cards": card_families,
        "flags": flag_families,
        "icons": icon_families,
        "sprites": sprite_families,
        "tiles": tile_families,
        "pieces": piece_families,
    }
    return collectors[kind](seed, stats)


def build(dest: Path, seed: int, kinds: Sequence[str]) -> tuple[dict[str, KindStats], float]:
    """Build the corpus and its ``manifest.json`` under ``dest``; returns per-kind counts and seconds."""
    started = time.monotonic()
    corpus = Corpus()
    per_kind: dict[str, KindStats] = {}
    with tempfile.TemporaryDirectory(prefix="lookalikes-") as tmp:
        for kind in kinds:
            stats = per_kind[kind] = KindStats()
            for family in collect(kind, seed, stats, Path(tmp)):
                build_family(family, seed, corpus, stats, dest)
    manifest: dict[str, object] = {
        "generator": "benchmarks/lookalike_corpus.py",
        "seed": seed,
        "rules": {
            "min_side": MIN_SIDE,
            "max_side": MAX_SIDE,
            "max_transparent": MAX_TRANSPARENT,
            "min_grey_std": MIN_GREY_STD,
            "near_duplicate_phash_distance": NEAR_DUPLICATE,
            "sprite_min_distance": SPRITE_MIN_DISTANCE,
            "members": [MIN_MEMBERS, MAX_MEMBERS],
        },
        "totals": {
            "families": sum(s.families for s in per_kind.values()),
            "images": sum(s.images for s in per_kind.values()),
        },
        "kinds": {
            kind: {
                "families": s.families,
                "images": s.images,
                "candidates": s.candidates,
                "families_dropped": s.families_dropped,
                "rejected": dict(sorted(s.rejected.items())),
                "missing": s.missing,
            }
            for kind, s in per_kind.items()
        },
        "dropped_families": corpus.dropped,
        "families": corpus.families,
        "seconds": round(time.monotonic() - started, 1),
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return per_kind, time.monotonic() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path, help="output folder (created; must be empty unless --force)")
    parser.add_argument("--seed", type=int, default=0, help="seed for every random choice (default 0)")
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)} (default all)"
    )
    parser.add_argument("--force", action="store_true", help="replace DEST if it holds an earlier corpus")
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"unknown kinds: {', '.join(unknown)}")
    dest: Path = args.dest
    if dest.exists() and any(dest.iterdir()):
        if not (args.force and (dest / "manifest.json").is_file()):
            parser.error(f"{dest} is not empty (use --force to replace an earlier corpus)")
        shutil.rmtree(dest)
    dest.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LC_ALL", "C.UTF-8")
    stats, seconds = build(dest, args.seed, kinds)
    for kind, row in stats.items():
        rejected = ", ".join(f"{reason} {n}" for reason, n in sorted(row.rejected.items())) or "none"
        print(
            f"{kind:8} {row.families:3} families {row.images:4} images"
            f" ({row.candidates} drawn; rejected: {rejected}; families dropped: {row.families_dropped})"
        )
    families = sum(s.families for s in stats.values())
    images = sum(s.images for s in stats.values())
    print(f"total    {families:3} families {images:4} images in {seconds:.0f} s -> {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
