"""Intake, the front of the pipeline shared by every command: read bytes, content hash, safe
decode, stage-1 codes, the small image stage 2 needs and the grey image stage 3 needs, all
from one decode."""

from __future__ import annotations

from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
from PIL import Image

from detector.config import Settings
from detector.errors import ImageError
from detector.intake.framing import Box, Tilt, content_box, content_shapes
from detector.intake.inputs import FILE, Input, InputReader, as_input
from detector.intake.insets import FINE_SIDE, SAME, WORK_SIDE, find_insets, overlap, ruled
from detector.intake.insets import MIN_SIDE as INSET_MIN_SIDE
from detector.intake.loader import content_hash, decode
from detector.stage1.hashing import DIHEDRAL, Codes, Probe, dihedral_probes, image_codes
from detector.stage2.embedding import resize_for_cnn
from detector.stage3.keypoints import verify_grey

T = TypeVar("T")


@dataclass(frozen=True)
class Prepared:
    """One input after the front of the pipeline. Exactly one of these holds:
    ``error`` is set (unusable input), ``skipped`` is True (content already known), or
    ``codes`` and ``small`` are set. ``codes`` are the whole image's; ``probes`` every code
    the image is searched with; ``box_codes`` the codes of its content box (None when
    nothing was cut); ``small``: (s, s, 3) uint8, the CNN's input (of the box). ``source``:
    the input it was read from, where that is more than a plain file (a shard member, a
    manifest record, metadata)."""

    path: str
    sha256: str | None = None
    error: str | None = None
    skipped: bool = False
    codes: Codes | None = None
    probes: tuple[Probe, ...] = ()
    box_codes: Codes | None = None
    variants: tuple[tuple[str, Codes], ...] = ()  # catalog side: extra codes (content box, centre crops)
    small: np.ndarray | None = None
    grey: np.ndarray | None = None  # (h, w) uint8 for stage 3, longer side <= settings.verify_side
    width: int = 0
    height: int = 0
    source: Input | None = None
    insets: tuple[Inset, ...] = ()  # pictures inside this query, each prepared as a query

    @property
    def ok(self) -> bool:
        return self.codes is not None

    @property
    def cnn_input(self) -> np.ndarray:
        """The CNN-sized image; only for prepared items that are ``ok``."""
        if self.small is None:
            raise ValueError(f"{self.path} has no decoded image")
        return self.small


@dataclass(frozen=True)
class Inset:
    """A picture inside a query (:mod:`detector.intake.insets`): where it lies, as fractions
    of the query's width and height (``left``, ``top``, ``right``, ``bottom``), and the picture
    prepared as a query of its own (codes, probes, CNN input and grey image; no insets)."""

    left: float
    top: float
    right: float
    bottom: float
    query: Prepared

    @property
    def area(self) -> float:
        """The inset's share of the query."""
        return (self.right - self.left) * (self.bottom - self.top)

    def outside(self, x: float, y: float) -> tuple[float, float]:
        """A point given as fractions of the inset, as fractions of the query."""
        return self.left + x * (self.right - self.left), self.top + y * (self.bottom - self.top)


@dataclass(frozen=True)
class RawInput:
    """One input as read: its bytes and their sha256, or the error reading it gave.
    ``source``: as :attr:`Prepared.source`."""

    path: str
    data: bytes | None = None
    sha256: str | None = None
    error: str | None = None
    source: Input | None = None

    def unread(self) -> Prepared:
        """The input as prepared when it could not be read."""
        return Prepared(path=self.path, error=self.error, source=self.source)

    def known(self) -> Prepared:
        """The input as prepared when its content is known already (nothing decoded)."""
        return Prepared(path=self.path, sha256=self.sha256, skipped=True, source=self.source)

    def traced(self, prepared: Prepared) -> Prepared:
        """``prepared`` (decoded from this input's bytes elsewhere) with this input's source."""
        return prepared if self.source is None else replace(prepared, source=self.source)


def read_inputs(
    items: Sequence[str | Input], settings: Settings, reader: InputReader | None = None
) -> list[RawInput]:
    """Read every input (a path, or an :class:`Input` of any kind) and hash its content; an
    unreadable one gives its error. ``reader``: one to share between batches (the shard it
    holds open)."""
    if reader is None:
        with InputReader(settings) as own:
            return read_inputs(items, settings, own)
    raw = []
    for item in items:
        given = as_input(item)
        source = None if given.kind == FILE and given.meta is None else given
        try:
            content = reader.read(given)
            raw.append(RawInput(given.name, content, content_hash(content), source=source))
        except ImageError as e:
            raw.append(RawInput(given.name, error=_describe(e), source=source))
    return raw


def prepare_batch(
    items: Sequence[str | Input],
    settings: Settings,
    known: Callable[[Sequence[str]], Container[str]] | None = None,
    catalog: bool = False,
    *,
    prepare: Callable[[str, bytes, str, Settings, bool], Prepared] | None = None,
    reader: InputReader | None = None,
) -> list[Prepared]:
    """Read every input, hash its content, then decode and compute codes for each one whose
    sha256 is not reported by ``known`` (content already stored is not decoded at all).
    Bad input gives a Prepared with ``error``, never an exception. ``prepare``: what each
    image is decoded with (default :func:`prepare_bytes`)."""
    raw = read_inputs(items, settings, reader)
    seen: Container[str] = known([r.sha256 for r in raw if r.sha256 is not None]) if known else ()
    decode_one = prepare or prepare_bytes
    out = []
    for r in raw:
        if r.data is None or r.sha256 is None:
            out.append(r.unread())
        elif r.sha256 in seen:
            out.append(r.known())
        else:
            out.append(r.traced(decode_one(r.path, r.data, r.sha256, settings, catalog)))
    return out


def prepare_bytes(path: str, data: bytes, sha: str, settings: Settings, catalog: bool = False) -> Prepared:
    """Decode one image's bytes and compute its codes, probes and CNN-sized copy; with
    ``catalog``, also the extra codes a catalog image is stored with (:data:`CENTRE_CROPS`);
    a query also gets the pictures inside it (:attr:`Prepared.insets`)."""
    try:
        image = decode(data, settings, sha256=sha)
    except ImageError as e:
        return Prepared(path=path, sha256=sha, error=_describe(e))
    rgb = image.rgb
    turns = tuple(DIHEDRAL) if settings.dihedral else ("identity",)
    # A query's picture turned or skewed on flat margins is also searched set upright.
    box, tilt = content_shapes(rgb, tilted=not catalog) if settings.trim else (None, None)
    prepared = _prepare_rgb(path, sha, rgb, box, settings, turns, catalog, tilt=tilt)
    whole = (image.width, image.height) == (rgb.shape[1], rgb.shape[0])
    insets = () if catalog else _insets(path, None if whole else data, sha, rgb, image.width, box, settings)
    return replace(prepared, width=image.width, height=image.height, insets=insets)


def _prepare_rgb(
    path: str,
    sha: str,
    rgb: np.ndarray,
    box: Box | None,
    settings: Settings,
    turns: tuple[str, ...],
    catalog: bool = False,
    inset: bool = False,
    tilt: Tilt | None = None,
) -> Prepared:
    """Codes, probes (in ``turns``, of the image, of its content ``box`` and of its ``tilt``
    set upright), CNN input and stage-3 grey of a decoded image; ``inset``: it is a picture
    inside a query."""
    grey = verify_grey(rgb, settings) if settings.verify else None
    probes = dihedral_probes(_grey(rgb), turns)
    codes = Codes(probes[0].phash, probes[0].dhash or 0)
    if tilt is not None:  # searched as a content box is: trimmed
        probes += dihedral_probes(_grey(tilt.cut(rgb)), turns, trimmed=True)
    box_codes = None
    if box is not None:
        rgb = box.cut(rgb)
        box_probes = dihedral_probes(_grey(rgb), turns, trimmed=True)
        box_codes = Codes(box_probes[0].phash, box_probes[0].dhash or 0)
        probes += box_probes
    if inset:
        probes = [replace(p, transform=replace(p.transform, inset=True)) for p in probes]
    variants: list[tuple[str, Codes]] = []
    if catalog:
        if box_codes is not None:
            variants.append(("trim", box_codes))
        variants.extend((f"centre{round(f * 100)}", image_codes(_centre(rgb, f))) for f in CENTRE_CROPS)
    # The full-size pixels are dropped here: batches hold only the CNN-sized copy.
    small = resize_for_cnn(rgb, settings.image_size)  # of the content box: see cnn_view
    return Prepared(
        path=path,
        sha256=sha,
        codes=codes,
        probes=tuple(probes),
        box_codes=box_codes,
        variants=tuple(variants),
        small=small,
        grey=grey,
        width=rgb.shape[1],
        height=rgb.shape[0],
    )


# An inset is searched as it is and mirrored: pictures in pages and collages are rarely turned.
INSET_TURNS = ("identity", "hflip")


def _insets(
    path: str,
    data: bytes | None,
    sha: str,
    rgb: np.ndarray,
    file_width: int,
    box: Box | None,
    settings: Settings,
) -> tuple[Inset, ...]:
    """The pictures inside a query (at most ``settings.insets``), each prepared as a query of
    its own. ``data``: the file's bytes where the first decode was reduced; where that decode
    shows a layout (insets, or a small picture in flat margins: a page's background, a
    collage's gutter) the file is decoded again whole and cut on a finer copy (a gutter of a
    few pixels, or a picture at a tenth of a page's width, needs them all). None that is the
    content box where that is most of the image (a letterboxed photo: searched already; a
    box that is not most of it, such as one cell of a collage, is better compared as an inset,
    at its own resolution)."""
    limit = settings.insets
    if limit <= 0:
        return ()
    full = rgb
    min_side = max(2, round(INSET_MIN_SIDE * rgb.shape[1] / file_width))
    found = find_insets(rgb, limit, min_side=min_side, framed_side=FINE_SIDE)
    h, w = rgb.shape[:2]
    small_box = box is not None and box.width * box.height < _BOX_SEARCHED * w * h
    thin = not found and ruled(rgb)  # a collage whose gutters this decode shows a pixel wide
    if thin and data is None:  # decoded whole already, and cut at WORK_SIDE: cut it finer
        found = find_insets(rgb, limit, work_sides=(FINE_SIDE,), min_side=min_side)
    elif data is not None and (found or small_box or thin):
        try:
            full = decode(data, settings.replace(decode_side=0), sha256=sha).rgb
        except ImageError:  # decoded once already: keep that decode
            full = rgb
        else:
            kx, ky = full.shape[1] / w, full.shape[0] / h
            first = [_scaled(b, kx, ky) for b in found]
            found = find_insets(full, limit, work_sides=(WORK_SIDE, FINE_SIDE))
            # the reduced decode's blocks too: its coarser copy sees some blocks whole that the
            # finer ones cut apart (a picture in a feed's card, beside the card's text)
            found += [b for b in first if all(overlap(b, other) < SAME for other in found)]
            found = found[:limit]
            box = None if box is None else _scaled(box, kx, ky)
    h, w = full.shape[:2]
    if box is not None and box.width * box.height >= _BOX_IS_QUERY * w * h:
        found = [b for b in found if overlap(b, box) < _SAME_AS_BOX]
    out = []
    for b in found:
        part = np.ascontiguousarray(b.cut(full))
        inner = content_box(part) if settings.trim else None
        query = _prepare_rgb(path, sha, part, inner, settings, INSET_TURNS, inset=True)
        out.append(Inset(b.left / w, b.top / h, b.right / w, b.bottom / h, query))
    return tuple(out)


def _scaled(box: Box, kx: float, ky: float) -> Box:
    """A box of the reduced decode in the pixels of the whole one."""
    return Box(round(box.left * kx), round(box.top * ky), round(box.right * kx), round(box.bottom * ky))


_SAME_AS_BOX = 0.8  # an inset overlapping the content box this much is that box
_BOX_SEARCHED = 0.4  # a content box covering this share of the query is searched well as it is
# an inset that is the content box is left out only where that box is most of the query (a
# letterboxed photo); a collage's cell the box picked out is compared better as an inset
_BOX_IS_QUERY = 0.7


def cnn_view(rgb: np.ndarray, settings: Settings) -> np.ndarray:
    """What the CNN sees of a decoded image, as :func:`prepare_bytes` makes it: its content
    box (with ``trim``) squashed to ``image_size``, (s, s, 3) uint8."""
    box = content_box(rgb) if settings.trim else None
    return resize_for_cnn(box.cut(rgb) if box is not None else rgb, settings.image_size)


# Catalog images also store the codes of these centre crops (side fractions): a copy cut to
# 60-90 % of the picture then lands near one of them. Measured on 300 corpus images with the
# attack suite's crops: stage-1 recall 0.10 -> 0.46, queries with a chance candidate 7 -> 8 %.
CENTRE_CROPS = (0.8, 0.65)


def _centre(rgb: np.ndarray, fraction: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top, left = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(rgb[top : top + ch, left : left + cw])


def _grey(rgb: np.ndarray) -> Image.Image:
    """Pillow's ITU-R 601 luma of an RGB array, as imagehash computes it."""
    return Image.fromarray(np.ascontiguousarray(rgb), mode="RGB").convert("L")


def _describe(e: ImageError) -> str:
    return f"{type(e).__name__}: {e}"


def batched(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
