"""Build a corpus of real, varied, de-duplicated images for the accuracy benchmark.

    python benchmarks/corpus.py DEST [--limit N] [--min-side PX] [--seed S] [--workers W]

Everything is read from image data that packages install; nothing is downloaded at run time.
Install the sources once, beforehand (Debian 12 "bookworm" package names):

    apt-get update && apt-get install -y --no-install-recommends stellarium-data gcompris-qt-data \
        supertuxkart-data extremetuxracer-data scorched3d-data palapeli-data fillets-ng-data

(about 1.5 GB with the fonts they pull in) and, from PyPI, ``scikit-image`` (already in the
project's ``test`` extra). Directories read (see ``SOURCES`` for the exact patterns):

- ``/usr/share/stellarium/{nebulae/default,landscapes,textures,skycultures}`` (stellarium-data)
- ``/usr/share/gcompris-qt/rcc/*.rcc`` (gcompris-qt-data; Qt resource bundles, read by ``read_rcc``)
- ``/usr/share/games/supertuxkart/data/{textures,tracks}`` (supertuxkart-data)
- ``/usr/share/games/etr/{terrains,env,textures,courses}`` (extremetuxracer-data)
- ``/usr/share/games/scorched3d/data/globalmods/*/data/{textures,landscapes}`` (scorched3d-data)
- ``/usr/share/palapeli/{collection,backgrounds}`` (palapeli-data)
- ``/usr/share/games/fillets-ng/images`` (fillets-ng-data)
- ``skimage/data`` inside the installed scikit-image wheel

A source that is not installed is skipped and reported as ``missing`` in the manifest.

Deliberately NOT read, because they are reserved for independent evaluation: any
``wesnoth-*-data``, ``openclipart-*``, ``*-backgrounds`` / ``*-wallpapers`` package, and anything
under ``/usr/share/backgrounds`` or ``/usr/share/wallpapers``.  tuxpaint stamps are also left out
(transparent cut-outs, much of it derived from Open Clip Art).

Each candidate is decoded with Pillow, converted to RGB with alpha composited on white, and
rejected when its shorter side is below ``min_side`` (before or after the size cap), more than
40 % of its pixels are fully transparent, it is near-flat (grey std < 12, one quantised colour
covering > 60 % of it, or a smooth gradient with almost no detail), it is a tangent-space
normal map, a source's ``cap`` is reached, or it duplicates an image already accepted:

- same file sha256, or a pHash (``imagehash.phash``) within Hamming distance 10 of an accepted
  image's pHash under any of the 8 flips / right-angle rotations (one numpy ``bitwise_count``
  over all accepted codes per candidate), or
- a shared region found with SIFT + RANSAC (crops, recoloured or re-lit variants of one
  picture, which pHash misses; games ship many of those): see ``_structural_duplicates``.

Accepted images are downscaled so the longer side is at most 1024 px (Pillow LANCZOS), saved as
JPEG q=95 (4:4:4) named ``{index:05d}.jpg`` in a seeded shuffled order, and listed in
``DEST/manifest.json``: per image the file, source, package, original path, original and saved
size, sha256 and licence note; per source the counts by rejection reason; and every duplicate
dropped, with the image it duplicated.  The output is deterministic for a given seed and set of
installed packages.  A full run takes about two minutes on two cores.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import importlib.util
import io
import json
import os
import random
import struct
import sys
import warnings
import zlib
from collections import Counter
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import imagehash
import numpy as np
from PIL import Image

Image.MAX_IMAGE_PIXELS = None  # planet maps and panoramas are large but trusted package data

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tga", ".webp", ".gif", ".tif", ".tiff", ".ppm")
MAX_SIDE = 1024
JPEG_QUALITY = 95
MIN_GREY_STD = 12.0
MAX_TRANSPARENT = 0.40
MAX_DOMINANT_COLOUR = 0.60
PHASH_MAX_DISTANCE = 10
MIN_DETAIL = 0.75  # mean |grey difference| between neighbours at 256 px; sky gradients are below
SIFT_SIDE = 512
SIFT_FEATURES = 400
SIFT_RATIO = 0.75  # for proposing pairs from the shared index
VERIFY_RATIO = 0.85  # for matching one pair (random pairs stay below 5 inliers at 0.85)
STRUCT_NEIGHBOURS = 12
STRUCT_MIN_VOTES = 4
STRUCT_MIN_INLIERS = 7

# Texture maps that are not pictures (normal / gloss / specular / mask / AO / height maps).
TEXTURE_MAP_NAMES = tuple(
    "*_nm.* *_nm_* *-nm.* *nrm* *normal* *_n.* *gloss* *spec* *mask* *_ao.* *height* *bump* *lightmap*"
    " *_emit*".split()
)


@dataclass(frozen=True)
class Source:
    """One place images are read from.

    ``root`` is an absolute directory, or ``py:<package>/<subdir>`` for a directory inside an
    installed Python package.  ``include`` / ``exclude`` are case-insensitive ``fnmatch``
    patterns on the path relative to ``root`` (``*`` also matches ``/``; ``exclude`` is also
    tried on the bare file name).  With ``archive="qt-rcc"`` the matched files are Qt resource
    bundles and ``members`` / ``exclude`` select the bundle members (by their path inside the
    bundle).  ``cap`` bounds how many images this source may contribute, so no single kind of
    picture dominates.
    """

    name: str
    package: str
    root: str
    include: tuple[str, ...]
    licence: str
    exclude: tuple[str, ...] = ()
    cap: int | None = None
    archive: str | None = None
    members: tuple[str, ...] = ()


GCOMPRIS_ACTIVITIES = (
    "categorization",
    "explore_monuments",
    "erase",
    "explore_world_animals",
    "explore_farm_animals",
    "explore_world_music",
    "louis-braille",
    "solar_system",
    "clickgame",
    "chronos",
    "gravity",
)
SKIMAGE_IMAGES = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "color",
    "clock_motion",
    "grass",
    "gravel",
    "hubble_deep_field",
    "ihc",
    "microaneurysms",
    "moon",
    "motorcycle_left",
    "retina",
    "rocket",
)

SOURCES: tuple[Source, ...] = (
    Source(
        name="skimage",
        package="pip:scikit-image",
        root="py:skimage/data",
        include=tuple(f"{n}.*" for n in SKIMAGE_IMAGES),
        licence="scikit-image sample data: public domain / CC0, credits in skimage/data/README.txt",
    ),
    Source(
        name="gcompris",
        package="apt:gcompris-qt-data",
        root="/usr/share/gcompris-qt/rcc",
        include=(*(f"{a}.rcc" for a in GCOMPRIS_ACTIVITIES), "details.rcc"),
        archive="qt-rcc",
        # "details" ships crops of each "*_background" picture; "paintings" and "babyshapes"
        # are only puzzle pieces / crops, so they are left out entirely.
        members=(
            *(f"*/activities/{a}/*" for a in GCOMPRIS_ACTIVITIES),
            "*/activities/details/*_background.*",
        ),
        licence="GCompris photos: CC-BY-SA / CC-BY / public domain per file, "
        "see /usr/share/doc/gcompris-qt-data/copyright",
    ),
    Source(
        name="palapeli",
        package="apt:palapeli-data",
        root="/usr/share/palapeli",
        include=("collection/*", "backgrounds/*"),
        licence="KDE Palapeli puzzle photos: CC0 / CC-BY-SA, see /usr/share/doc/palapeli-data/copyright",
    ),
    Source(
        name="stellarium-dso",
        package="apt:stellarium-data",
        root="/usr/share/stellarium/nebulae/default",
        include=("*",),
        cap=250,
        licence="Stellarium deep-sky photographs (GPL-2+ package; per-image credits in "
        "nebulae/default/textures.json)",
    ),
    Source(
        name="stellarium-scenery",
        package="apt:stellarium-data",
        root="/usr/share/stellarium",
        include=("landscapes/*", "textures/*"),
        exclude=("landscapes/ocean/*",),  # eight tiles of one synthetic sea
        licence="Stellarium landscapes and planet maps (GPL-2+, /usr/share/doc/stellarium-data/copyright)",
    ),
    Source(
        name="stellarium-art",
        package="apt:stellarium-data",
        root="/usr/share/stellarium/skycultures",
        include=("*",),
        cap=150,
        licence="Stellarium sky-culture illustrations (GPL-2+; per-culture credits in each info file)",
    ),
    Source(
        name="supertuxkart",
        package="apt:supertuxkart-data",
        root="/usr/share/games/supertuxkart/data",
        include=("textures/*", "tracks/*"),
        exclude=TEXTURE_MAP_NAMES,
        cap=400,
        licence="SuperTuxKart textures and track art: CC-BY-SA / CC-BY / CC0, "
        "see /usr/share/doc/supertuxkart-data/copyright",
    ),
    Source(
        name="extremetuxracer",
        package="apt:extremetuxracer-data",
        root="/usr/share/games/etr",
        include=("terrains/*", "env/*", "textures/*", "courses/*"),
        exclude=TEXTURE_MAP_NAMES,
        licence="Extreme Tux Racer textures and skyboxes (GPL-2+ / CC0), "
        "see /usr/share/doc/extremetuxracer-data/copyright",
    ),
    Source(
        name="scorched3d",
        package="apt:scorched3d-data",
        root="/usr/share/games/scorched3d/data/globalmods",
        include=("*/data/textures/*", "*/data/landscapes/*.jpg", "*/data/landscapes/*.png"),
        exclude=TEXTURE_MAP_NAMES,
        licence="Scorched3D landscape textures and skies (GPL-2+ / CC-BY-SA-3), "
        "see /usr/share/doc/scorched3d-data/copyright",
    ),
    Source(
        name="fillets-ng",
        package="apt:fillets-ng-data",
        root="/usr/share/games/fillets-ng/images",
        include=("*",),
        cap=120,
        licence="Fish Fillets NG painted backgrounds (GPL-2+), see /usr/share/doc/fillets-ng-data/copyright",
    ),
)


@dataclass(frozen=True)
class CorpusImage:
    """One accepted image: ``file`` is the name in DEST, ``width``/``height`` the original size."""

    file: str
    source: str
    original: str
    width: int
    height: int


@dataclass(frozen=True)
class _Candidate:
    source: str
    original: str
    path: str | None = None
    data: bytes | None = None


@dataclass
class _Tally:
    status: str = "ok"
    note: str = ""
    found: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


# --------------------------------------------------------------------------- Qt resource bundles


def read_rcc(blob: bytes) -> Iterator[tuple[str, bytes | None]]:
    """Yield ``(path, data)`` for every file in a Qt ``.rcc`` resource bundle.

    ``data`` is ``None`` for zstd-compressed entries (not supported here).  Format: the "qres"
    header gives the offsets of the node tree, the data area and the name table; directory
    nodes list a contiguous child range, file nodes point into the data area, where each entry
    is a 4-byte big-endian length followed by the bytes (zlib with a 4-byte size prefix when the
    node's compressed flag is set).
    """
    magic, version, tree, data, names = struct.unpack_from(">4sIIII", blob, 0)
    if magic != b"qres":
        raise ValueError("not a Qt resource bundle")
    node_size = 14 if version < 2 else 22

    def name_at(offset: int) -> str:
        (length,) = struct.unpack_from(">H", blob, names + offset)
        start = names + offset + 6
        return blob[start : start + 2 * length].decode("utf-16-be")

    stack: list[tuple[int, str]] = [(0, "")]
    while stack:
        index, prefix = stack.pop()
        base = tree + index * node_size
        name_offset, flags = struct.unpack_from(">IH", blob, base)
        path = f"{prefix}/{name_at(name_offset)}" if index else ""
        if flags & 0x02:  # directory
            count, first = struct.unpack_from(">II", blob, base + 6)
            stack.extend((child, path) for child in reversed(range(first, first + count)))
            continue
        (offset,) = struct.unpack_from(">I", blob, base + 10)
        (size,) = struct.unpack_from(">I", blob, data + offset)
        payload = blob[data + offset + 4 : data + offset + 4 + size]
        if flags & 0x04:  # zstd
            yield path, None
        elif flags & 0x01:  # zlib (qCompress: 4-byte uncompressed size, then a zlib stream)
            yield path, zlib.decompress(payload[4:])
        else:
            yield path, payload


# --------------------------------------------------------------------------- scanning


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    rel = rel.lower()
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p.lower()) or fnmatch.fnmatchcase(name, p.lower()) for p in patterns)


def _selected(rel: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    # include patterns match the whole relative path; exclude patterns the path or the file name
    inc = any(fnmatch.fnmatchcase(rel.lower(), p.lower()) for p in include)
    return inc and not _matches(rel, exclude)


def _resolve_root(root: str) -> Path | None:
    if not root.startswith("py:"):
        return Path(root)
    package, _, sub = root[3:].partition("/")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / sub


def _scan(source: Source, tally: _Tally) -> list[_Candidate]:
    """Sorted candidates of one source; marks the tally ``missing`` when nothing is installed."""
    root = _resolve_root(source.root)
    if root is None or not root.is_dir():
        tally.status, tally.note = "missing", f"{source.root} not found (install {source.package})"
        return []
    file_exclude = () if source.archive else source.exclude
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and (source.archive or p.suffix.lower() in IMAGE_EXTS)
        and _selected(p.relative_to(root).as_posix(), source.include, file_exclude)
    )
    out: list[_Candidate] = []
    if source.archive == "qt-rcc":
        for f in files:
            try:
                members = list(read_rcc(f.read_bytes()))
            except (ValueError, struct.error, zlib.error, OSError) as exc:
                tally.rejected["unreadable-archive"] += 1
                tally.note = f"{f}: {exc}"
                continue
            for member, data in sorted(members, key=lambda m: m[0]):
                if not member.lower().endswith(IMAGE_EXTS):
                    continue
                if not _selected(member, source.members, source.exclude):
                    continue
                if data is None:
                    tally.rejected["unsupported-compression"] += 1
                    continue
                out.append(_Candidate(source.name, f"{f}:{member}", data=data))
    else:
        out = [_Candidate(source.name, str(f), path=str(f)) for f in files]
    if not out and tally.status == "ok":
        tally.status, tally.note = "empty", f"no matching images under {root}"
    return out


def _interleave(groups: Sequence[list[_Candidate]]) -> Iterator[_Candidate]:
    """Round-robin over the sources so that any prefix of the corpus mixes all of them."""
    iters = [iter(g) for g in groups if g]
    while iters:
        alive = []
        for it in iters:
            item = next(it, None)
            if item is not None:
                yield item
                alive.append(it)
        iters = alive


# --------------------------------------------------------------------------- per-image analysis


@dataclass(frozen=True)
class _Analysed:
    reject: str | None
    size: tuple[int, int] = (0, 0)
    sha256: str = ""
    codes: tuple[int, ...] = ()  # pHash of the 8 flips/rotations; codes[0] is the image itself
    jpeg: bytes = b""
    saved: tuple[int, int] = (0, 0)
    points: np.ndarray | None = field(default=None, compare=False)  # SIFT keypoints (n, 2)
    descriptors: np.ndarray | None = field(default=None, compare=False)  # SIFT descriptors (n, 128) u8


def _phash_codes(rgb: Image.Image) -> tuple[int, ...]:
    small = rgb.convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    variants = [small, *(small.transpose(t) for t in Image.Transpose)]
    codes = []
    for v in variants:
        bits = imagehash.phash(v).hash.ravel()
        codes.append(int.from_bytes(np.packbits(bits).tobytes(), "big"))
    return tuple(codes)


def _is_normal_map(arr: np.ndarray) -> bool:
    """Tangent-space normal maps: almost every pixel encodes a unit vector pointing mostly +z."""
    vec = arr[::4, ::4].reshape(-1, 3).astype(np.float32) / 127.5 - 1.0
    unit = float((np.abs(np.linalg.norm(vec, axis=1) - 1.0) < 0.12).mean())
    mean = (vec.mean(axis=0) + 1.0) * 127.5
    return unit > 0.85 and abs(mean[0] - 128) < 24 and abs(mean[1] - 128) < 24 and mean[2] > 180


def _detail(grey: np.ndarray) -> float:
    """Mean absolute neighbour difference of the grey image at 256 px: ~0 for smooth gradients."""
    scale = 256 / max(grey.shape)
    g = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else grey
    return float((np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean()) / 2)


def _sift(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = SIFT_SIDE / max(grey.shape)
    g = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else grey
    keypoints, desc = cv2.SIFT.create(nfeatures=SIFT_FEATURES).detectAndCompute(g.astype(np.uint8), None)
    if desc is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8)
    points = np.array([k.pt for k in keypoints], dtype=np.float32).reshape(-1, 2)
    return points, np.clip(np.rint(desc), 0, 255).astype(np.uint8)


def _analyse(cand: _Candidate, min_side: int) -> _Analysed:
    """Decode, filter, encode and fingerprint one candidate (runs in a worker process)."""
    try:
        raw = cand.data if cand.data is not None else Path(cand.path or "").read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im: Image.Image = Image.open(io.BytesIO(raw))
            size = im.size
            if min(size) < min_side:
                return _Analysed("small", size)
            if im.format == "JPEG":
                im.draft("RGB", (MAX_SIDE, MAX_SIDE))
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
            im = im.convert("RGBA" if has_alpha else "RGB")
    except Exception:  # any decoder failure just rejects the candidate
        return _Analysed("unreadable")
    if max(im.size) > MAX_SIDE:
        scale = MAX_SIDE / max(im.size)
        target = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
        im = im.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
        if min(im.size) < min_side:  # a long strip that the size cap shrinks below min_side
            return _Analysed("small", size)
    if has_alpha:
        alpha = np.asarray(im.getchannel("A"))
        if float((alpha == 0).mean()) > MAX_TRANSPARENT:
            return _Analysed("transparent", size)
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        white.alpha_composite(im)
        im = white
    rgb = im.convert("RGB")
    arr = np.asarray(rgb)
    grey = np.asarray(rgb.convert("L"), dtype=np.float32)
    if float(grey.std()) < MIN_GREY_STD:
        return _Analysed("flat", size)
    q = (arr[::2, ::2] >> 4).astype(np.int32)
    keys = (q[..., 0] << 8) | (q[..., 1] << 4) | q[..., 2]
    if np.bincount(keys.ravel(), minlength=4096).max() > MAX_DOMINANT_COLOUR * keys.size:
        return _Analysed("mostly-flat", size)
    if _detail(grey) < MIN_DETAIL:
        return _Analysed("low-detail", size)
    if _is_normal_map(arr):
        return _Analysed("normal-map", size)
    buf = io.BytesIO()
    # 4:4:4 chroma; no optimize=True: with subsampling=0 Pillow 13 fails on noisy images with it
    rgb.save(buf, "JPEG", quality=JPEG_QUALITY, subsampling=0)
    points, descriptors = _sift(grey)
    sha = hashlib.sha256(raw).hexdigest()
    return _Analysed(None, size, sha, _phash_codes(rgb), buf.getvalue(), rgb.size, points, descriptors)


def _analyse_all(
    cands: Sequence[_Candidate], min_side: int, workers: int
) -> Iterator[tuple[_Candidate, _Analysed]]:
    """Analysed candidates in input order, in bounded batches (so ``limit`` can stop early)."""
    if workers <= 1:
        for cand in cands:
            yield cand, _analyse(cand, min_side)
        return
    batch = 16 * workers
    with ProcessPoolExecutor(workers) as pool:
        for start in range(0, len(cands), batch):
            chunk = cands[start : start + batch]
            yield from zip(chunk, pool.map(_analyse, chunk, [min_side] * len(chunk)), strict=True)


# --------------------------------------------------------------------------- duplicate checks


class _NearDuplicates:
    """pHash index of accepted images; a query checks all 8 orientations with one numpy pass."""

    def __init__(self) -> None:
        self._codes = np.zeros(1024, dtype=np.uint64)
        self._n = 0
        self._sha: dict[str, int] = {}

    def seen(self, sha: str, codes: Sequence[int]) -> tuple[str, int, int] | None:
        """``(reason, index of the accepted image, Hamming distance)`` for a duplicate, else None."""
        if sha in self._sha:
            return "duplicate", self._sha[sha], 0
        if self._n:
            query = np.array(codes, dtype=np.uint64)[:, None]
            dist = np.bitwise_count(self._codes[None, : self._n] ^ query).min(axis=0)
            best = int(np.argmin(dist))
            if int(dist[best]) <= PHASH_MAX_DISTANCE:
                return "near-duplicate", best, int(dist[best])
        return None

    def add(self, sha: str, code: int) -> int:
        if self._n == len(self._codes):
            self._codes = np.concatenate([self._codes, np.zeros_like(self._codes)])
        self._codes[self._n] = code
        self._sha.setdefault(sha, self._n)
        self._n += 1
        return self._n - 1


def _shared_region(a: _Analysed, b: _Analysed) -> int:
    """RANSAC inliers of a similarity transform between two images' SIFT matches (0 if none)."""
    if a.descriptors is None or b.descriptors is None or a.points is None or b.points is None:
        return 0
    if len(a.descriptors) < 2 or len(b.descriptors) < 2:
        return 0
    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(
        a.descriptors.astype(np.float32), b.descriptors.astype(np.float32), k=2
    )
    good = [m[0] for m in knn if len(m) == 2 and m[0].distance < VERIFY_RATIO * m[1].distance]
    if len(good) < STRUCT_MIN_INLIERS:
        return 0
    src = a.points[[m.queryIdx for m in good]]
    dst = b.points[[m.trainIdx for m in good]]
    model, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=6.0)
    if model is None or mask is None:
        return 0
    scale = float(np.sqrt(abs(np.linalg.det(model[:, :2]))))
    if not 1 / 6 < scale < 6:  # a collapsed fit maps many points onto one blob: no shared region
        return 0
    keep = mask.ravel().astype(bool)
    # SIFT puts several keypoints on one spot; count distinct positions (2 px grid) on both sides
    distinct_src = len(np.unique(np.rint(src[keep] / 2), axis=0))
    distinct_dst = len(np.unique(np.rint(dst[keep] / 2), axis=0))
    return min(distinct_src, distinct_dst)


def _structural_duplicates(items: Sequence[_Analysed]) -> list[tuple[int, int, int]]:
    """``(earlier, later, inliers)`` for images that share a region (crop, recolour, re-render).

    pHash misses crops and heavy colour changes (the same texture in a snowy and a green
    version, a photo cropped differently by two activities, one skybox lit four ways).  All
    SIFT descriptors go into one FLANN index.  Each descriptor votes for every other image
    among its ``STRUCT_NEIGHBOURS`` nearest neighbours that is clearly closer than the farthest
    of them (a ratio test against the background, which still works when several images share
    the region); pairs with enough votes are verified exactly (brute-force matching and a
    RANSAC similarity transform), so the approximate index only proposes.
    """
    owner = np.concatenate(
        [np.full(len(r.descriptors), i) for i, r in enumerate(items) if r.descriptors is not None]
    )
    if len(owner) <= STRUCT_NEIGHBOURS:
        return []
    desc = np.concatenate([r.descriptors for r in items if r.descriptors is not None]).astype(np.float32)
    cv2.setRNGSeed(0)
    index = cv2.flann.Index(desc, {"algorithm": 1, "trees": 4})
    idx, dist = index.knnSearch(desc, STRUCT_NEIGHBOURS, params={"checks": 64})
    own = owner[idx]
    query = np.broadcast_to(owner[:, None], own.shape)
    # FLANN returns squared L2 distances, hence the squared ratio
    vote = (own != query) & (dist < (SIFT_RATIO**2) * dist[:, -1:])
    lo = np.minimum(query[vote], own[vote]).astype(np.int64)
    hi = np.maximum(query[vote], own[vote]).astype(np.int64)
    pairs, votes = np.unique(lo * len(items) + hi, return_counts=True)
    found = []
    for key in pairs[votes >= STRUCT_MIN_VOTES]:
        i, j = divmod(int(key), len(items))
        # the ratio test is asymmetric (repetitive texture on one side defeats it): try both ways
        inliers = max(_shared_region(items[i], items[j]), _shared_region(items[j], items[i]))
        if inliers >= STRUCT_MIN_INLIERS:
            found.append((i, j, inliers))
    return sorted(found, key=lambda t: (t[1], t[0]))


# --------------------------------------------------------------------------- collection


@dataclass
class _Kept:
    cand: _Candidate
    res: _Analysed
    tmp: Path


def collect(
    dest: Path,
    limit: int | None = None,
    min_side: int = 160,
    seed: int = 0,
    *,
    workers: int | None = None,
    sources: Sequence[Source] = SOURCES,
) -> list[CorpusImage]:
    """Build the corpus in ``dest`` and return its images in file-name order.

    Candidates are taken round-robin over ``sources`` (each source's files sorted, then shuffled
    with ``seed``), filtered and pHash-de-duplicated in that order until ``limit`` images are
    accepted; images sharing a region with an earlier one (SIFT + RANSAC) are then dropped and,
    under ``limit``, replaced from the remaining candidates.  The result is numbered in an order
    shuffled with ``seed``.  Existing ``*.jpg`` files and the manifest in ``dest`` are replaced.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for old in [*dest.glob("*.jpg"), *dest.glob(".part-*.jpg")]:
        old.unlink()
    workers = workers if workers is not None else min(4, len(os.sched_getaffinity(0)))
    tallies = {s.name: _Tally() for s in sources}
    by_name = {s.name: s for s in sources}
    groups = []
    for s in sources:
        cands = _scan(s, tallies[s.name])
        tallies[s.name].found = len(cands)
        random.Random(f"{seed}:{s.name}").shuffle(cands)
        groups.append(cands)

    index = _NearDuplicates()
    originals: list[str] = []  # by pHash-index slot, for the duplicate log
    duplicates: list[dict[str, object]] = []
    kept: list[_Kept] = []
    stream = _analyse_all(list(_interleave(groups)), min_side, workers)
    parts = 0
    while True:
        exhausted = True
        for cand, res in stream:
            tally, src = tallies[cand.source], by_name[cand.source]
            reason = res.reject
            if reason is None and src.cap is not None and tally.accepted >= src.cap:
                reason = "over-cap"
            if reason is None and (hit := index.seen(res.sha256, res.codes)) is not None:
                reason = hit[0]
                duplicates.append(
                    {
                        "check": reason,
                        "dropped": cand.original,
                        "kept": originals[hit[1]],
                        "phash_distance": hit[2],
                    }
                )
            if reason is not None:
                tally.rejected[reason] += 1
                continue
            index.add(res.sha256, res.codes[0])
            originals.append(cand.original)
            tally.accepted += 1
            tmp = dest / f".part-{parts:05d}.jpg"
            parts += 1
            tmp.write_bytes(res.jpeg)
            kept.append(_Kept(cand, replace(res, codes=(), jpeg=b""), tmp))  # free the JPEG bytes
            if limit is not None and len(kept) >= limit:
                exhausted = False
                break
        pairs = _structural_duplicates([k.res for k in kept])
        dropped: set[int] = set()
        for earlier, later, inliers in pairs:
            if earlier in dropped or later in dropped:
                continue
            dropped.add(later)
            gone = kept[later]
            gone.tmp.unlink()
            tallies[gone.cand.source].accepted -= 1
            tallies[gone.cand.source].rejected["shared-region"] += 1
            duplicates.append(
                {"check": "shared-region", "dropped": gone.cand.original, "kept": kept[earlier].cand.original,
                 "sift_inliers": inliers}
            )  # fmt: skip
        kept = [k for i, k in enumerate(kept) if i not in dropped]
        if exhausted or not dropped:
            break
    if isinstance(stream, Generator):
        stream.close()

    order = list(range(len(kept)))
    random.Random(seed).shuffle(order)
    images: list[CorpusImage] = []
    records: list[dict[str, object]] = []
    for number, slot in enumerate(order):
        k = kept[slot]
        name = f"{number:05d}.jpg"
        k.tmp.rename(dest / name)
        src = by_name[k.cand.source]
        images.append(CorpusImage(name, k.cand.source, k.cand.original, k.res.size[0], k.res.size[1]))
        records.append(
            {
                "file": name,
                "source": k.cand.source,
                "package": src.package,
                "original": k.cand.original,
                "original_size": list(k.res.size),
                "saved_size": list(k.res.saved),
                "sha256": k.res.sha256,
                "licence": src.licence,
            }
        )
    manifest = {
        "params": {
            "limit": limit,
            "min_side": min_side,
            "seed": seed,
            "max_side": MAX_SIDE,
            "jpeg_quality": JPEG_QUALITY,
            "phash_max_distance": PHASH_MAX_DISTANCE,
            "sift_min_inliers": STRUCT_MIN_INLIERS,
        },
        "sources": [
            {
                "name": s.name,
                "package": s.package,
                "root": s.root,
                "status": tallies[s.name].status,
                "note": tallies[s.name].note,
                "found": tallies[s.name].found,
                "accepted": tallies[s.name].accepted,
                "rejected": dict(sorted(tallies[s.name].rejected.items())),
                "licence": s.licence,
            }
            for s in sources
        ],
        "images": records,
        "duplicates": duplicates,
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return images


def _summary(dest: Path) -> str:
    """One line per source (found, accepted, rejections by reason) and a total, from the manifest."""
    manifest = json.loads((dest / "manifest.json").read_text())
    lines = []
    for s in manifest["sources"]:
        rej = ", ".join(f"{k} {v}" for k, v in s["rejected"].items()) or "-"
        extra = f" [{s['status']}: {s['note']}]" if s["status"] != "ok" else ""
        counts = f"found {s['found']:>5}  accepted {s['accepted']:>5}"
        lines.append(f"{s['name']:<20} {counts}  rejected: {rej}{extra}")
    total = len(manifest["images"])
    size_mb = sum(f.stat().st_size for f in dest.glob("*.jpg")) / 2**20
    lines.append(f"{'TOTAL':<20} {total} images, {size_mb:.1f} MiB in {dest}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints one line per source and the total."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("dest", type=Path, help="output directory (created; old *.jpg replaced)")
    ap.add_argument("--limit", type=int, default=None, help="stop after N accepted images")
    ap.add_argument("--min-side", type=int, default=160, help="minimum shorter side in pixels")
    ap.add_argument("--seed", type=int, default=0, help="seed for the candidate and output order")
    ap.add_argument("--workers", type=int, default=None, help="decoder processes (default: cores, max 4)")
    args = ap.parse_args(argv)
    collect(args.dest, args.limit, args.min_side, args.seed, workers=args.workers)
    print(_summary(args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
