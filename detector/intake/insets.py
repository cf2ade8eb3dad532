"""Insets: pictures shown inside a query, found by cutting its layout apart.

A catalog picture is often copied small into something bigger: a web page (a feed, a product
grid, an article), a collage, a phone screenshot. Searched as a whole, such a query looks like
the page, not like the picture. The layout of those pages is made of rectangles separated by
flat gutters (page background between cards, white lines between collage cells) or by straight
seams (two photos pasted edge to edge). A recursive XY cut (the classic layout-analysis cut of
a page along its empty rows and columns) splits the query along both until no gutter or seam
crosses a block; the blocks left that look like pictures (textured, not thin like a line of
text, not tiny, not the whole image) are the query's insets. Each is searched as a query of its
own (:mod:`detector.scan.chain`).

Natural photos have neither gutters across them nor straight seams, so most queries get no
inset at all and cost nothing more.
"""

from __future__ import annotations

import cv2
import numpy as np

from detector.intake.framing import Box

WORK_SIDE = 512  # the layout is cut on a copy this size
FINE_SIDE = 1024  # or this size, on an image decoded whole
_BUSY = 10  # grey levels (per channel, to a neighbour) above which a pixel is not flat
_FLAT_LINE = 0.01  # a row (column) of a block is a gutter line when at most this share is busy
_MIN_GUTTER = 2  # gutter lines in a row, at the work size
_EVEN = 6  # a gutter is one colour: this many grey levels at most from its median
_EVEN_SHARE = 0.97  # over this share of its pixels
_SEAM_STEP = 28  # grey levels of a step across a seam
_SEAM_SHARE = 0.8  # share of a block's width (height) a straight step must cross to be a seam
_SEAM_LIFT = 3.0  # a seam's step share is at least this many times the block's median
_CALM = 14  # grey levels: a step this small or smaller beside a seam is a picture's calm inside
_CALM_SEEN = 0.55  # a seam beside a busy texture is judged where over this share of its line has a calm side
_MIN_PIECE = 12  # pieces thinner than this (work pixels) are gutters' fringes, not content
_MAX_DEPTH = 8
MIN_SIDE = 64  # an inset's shorter side in the file's pixels
_MIN_AREA = 0.004  # and its share of the image
_MAX_AREA = 0.8  # a block this big is the query itself, searched already
_MAX_ASPECT = 3.5  # thinner blocks are text lines, bars and banners
_MIN_BUSY = 0.12  # pictures are textured: this share of their pixels at least is busy
_LEAF_BUSY = 0.02  # a block the layout cut out needs only this
_MAX_PLAIN = 0.6  # a block mostly in one colour is text or an icon on its background
_MOAT = 4  # work pixels around an island that must be mostly the page's background
_MOAT_BUSY = 0.3  # (at most this share not in the page's colour)
SAME = 0.7  # boxes overlapping this much (intersection over union) are one inset
_RULE_EVEN = 10  # a rule line: its grey levels spread (std) at most this much
_RULE_BUSY = 30  # and the lines this far on both sides at least this much
_RULE_OFF = 3
_RULE_FLAT = 2  # a line this even (grey levels' std)
_RULE_SOFT = 8  # is a rule between lines this busy on both sides
_FRAMED = 0.9  # an uncut image is in flat margins when its block is at most this share of it


def find_insets(
    rgb: np.ndarray,
    limit: int,
    work_sides: tuple[int, ...] = (WORK_SIDE,),
    min_side: int = MIN_SIDE,
    framed_side: int | None = None,
) -> list[Box]:
    """At most ``limit`` boxes (pixels of ``rgb``) of pictures inside an (h, w, 3) uint8 image:
    per work size (the layout is cut on a copy at most that long; a finer one sees thinner
    gutters), the layout's blocks, biggest first, then islands, then blocks that were cut
    further; none for a plain photo. An inset is at least ``min_side`` pixels on a side.
    ``framed_side``: where the work sizes found none but left the image one block in flat
    margins (a page whose gutters were too thin for them to see, or a photo in a border), the
    layout is cut once more on a copy this size."""
    found: list[Box] = []
    framed = False
    for side in work_sides:
        boxes, one_block = _cut(rgb, limit, side, min_side)
        framed = framed or one_block
        for box in boxes:
            if len(found) < limit and all(overlap(box, other) < SAME for other in found):
                found.append(box)
    # (a copy no finer than those already cut would only cut the same again)
    if not found and framed and framed_side is not None and max(rgb.shape[:2]) > max(work_sides):
        found = _cut(rgb, limit, framed_side, min_side)[0]
    return found


def _cut(rgb: np.ndarray, limit: int, work_side: int, min_side: int) -> tuple[list[Box], bool]:
    """The insets found on a copy at most ``work_side`` long, and whether the layout was one
    block in flat margins."""
    h, w = rgb.shape[:2]
    if limit <= 0 or min(h, w) < 2 * min_side:
        return [], False
    scale = min(1.0, work_side / max(h, w))
    small = rgb
    if scale < 1.0:
        small = cv2.resize(
            rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
    layout = _Layout(np.ascontiguousarray(small))
    leaves: list[tuple[int, int, int, int]] = []
    layout.cut((0, 0, small.shape[1], small.shape[0]), 0, leaves)
    if len(leaves) < 2:
        # nothing cut the image: a photo, in flat margins maybe; or a page whose gutters are
        # too thin for this copy, which the caller may cut again finer (a photo's margins
        # cut nothing more)
        framed = bool(leaves) and _area(leaves[0]) < _FRAMED * small.shape[0] * small.shape[1]
        return [], framed
    found: list[Box] = []
    # the layout's own blocks first, biggest first; then islands that are none of them; then
    # blocks that were cut further (a picture cut along a seam of its own)
    for group in (leaves, layout.islands(), layout.parents):
        kept: list[Box] = []
        for x0, y0, x1, y1 in sorted(group, key=lambda b: (-(b[2] - b[0]) * (b[3] - b[1]), b[1], b[0])):
            # inward by the blur of the resize (a work pixel), and on the top and left by one
            # more (busy is one-sided: the gutter's last line before the picture is busy): a
            # strip of the gutter inside an inset reads as content the catalog image lacks,
            # where a lost edge of the picture costs nothing
            box = Box(
                left=min(w, int(np.ceil((x0 + 2) / scale))),
                top=min(h, int(np.ceil((y0 + 2) / scale))),
                right=max(0, int(np.floor((x1 - 1) / scale))),
                bottom=max(0, int(np.floor((y1 - 1) / scale))),
            )
            area = (x1 - x0) * (y1 - y0) / (small.shape[0] * small.shape[1])
            if min(box.width, box.height) < min_side or not _MIN_AREA <= area <= _MAX_AREA:
                continue
            if max(box.width, box.height) > _MAX_ASPECT * min(box.width, box.height):
                continue
            if any(overlap(box, other) >= SAME for other in found + kept):
                continue
            if layout.picture_like(x0, y0, x1, y1, strict=group is not leaves):
                kept.append(box)
        found.extend(kept)
        if len(found) >= limit:
            break
    return found[:limit], False


def ruled(rgb: np.ndarray) -> bool:
    """Whether an (h, w, 3) uint8 image is crossed by a thin line of one colour between busy
    ones, away from its edges: the gutter of a collage, a pixel or two wide in a reduced
    decode, which the 512 px copy blurs away. (A photo seldom is: 1 of 300 crawl photos; a
    thicker gutter is cut anyway.) About half a millisecond on a 1 MP photo's reduced decode."""
    green = rgb[..., 1]
    for axis, sample in ((0, green[::4]), (1, green[:, ::4])):
        spread = sample.std(axis=axis, dtype=np.float32)  # per column (axis 0), per row (axis 1)
        n = len(spread)
        k = np.arange(max(_RULE_OFF, n // 10), min(n - _RULE_OFF, n - n // 10))
        near = np.minimum(spread[k - _RULE_OFF], spread[k + _RULE_OFF])
        if k.size and np.any(
            ((spread[k] <= _RULE_EVEN) & (near >= _RULE_BUSY))
            # or a line of one colour exactly, beside a smooth picture on one side
            | ((spread[k] <= _RULE_FLAT) & (near >= _RULE_SOFT))
        ):
            return True
    return False


def _area(b: tuple[int, int, int, int]) -> int:
    return (b[2] - b[0]) * (b[3] - b[1])


def overlap(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    w = min(a.right, b.right) - max(a.left, b.left)
    h = min(a.bottom, b.bottom) - max(a.top, b.top)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / (a.width * a.height + b.width * b.height - inter)


class _Layout:
    """The busy map and step maps of the work-size image, and the recursive cut over them."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = a
        self.parents: list[tuple[int, int, int, int]] = []  # blocks cut further, below the top
        self.page: tuple[np.ndarray, ...] = ()  # the colours of the image's own flat margins
        dx = _step(a[:, 1:], a[:, :-1])
        dy = _step(a[1:], a[:-1])
        # one-sided (a pixel is busy where it steps to its right or lower neighbour), so that a
        # gutter two pixels wide at the work size keeps a flat line
        busy = np.zeros(a.shape[:2], dtype=bool)
        busy[:, :-1] |= dx > _BUSY
        busy[:-1] |= dy > _BUSY
        self.busy: np.ndarray = busy
        # steps across two pixels: a seam between pasted pictures shrunk to the work size may
        # fall between pixels and spread over two rows (columns)
        self.row_step = _step(a[2:], a[:-2])  # (h-2, w): between y and y+2
        self.col_step = _step(a[:, 2:], a[:, :-2]).T  # (w-2, h): between x and x+2

    def cut(
        self,
        block: tuple[int, int, int, int],
        depth: int,
        out: list[tuple[int, int, int, int]],
        backs: tuple[np.ndarray, ...] = (),
    ) -> None:
        """Cut ``block`` along its gutters and seams, recursively; the blocks no gutter or seam
        crosses go to ``out``. ``backs``: the background colours seen so far (of the flat
        margins trimmed off this block and the blocks around it): a gutter is a flat run in
        one of them, so that a picture's own sky or wall, flat as it may be, cuts nothing."""
        (x0, y0, x1, y1), margins = self._trim(block)
        if x1 - x0 < _MIN_PIECE or y1 - y0 < _MIN_PIECE:
            return
        for margin in margins:
            if not any(_near(margin, c) for c in backs):
                backs = (*backs, margin)
        if depth == 0:
            self.page = backs
        if depth >= _MAX_DEPTH:
            out.append((x0, y0, x1, y1))
            return
        for axis in (0, 1):
            spans = self._pieces((x0, y0, x1, y1), axis, backs)
            if len(spans) > 1:
                if depth > 0:
                    self.parents.append((x0, y0, x1, y1))
                for a, b in spans:
                    piece = (x0, y0 + a, x1, y0 + b) if axis == 0 else (x0 + a, y0, x0 + b, y1)
                    self.cut(piece, depth + 1, out, backs)
                return
        out.append((x0, y0, x1, y1))

    def islands(self) -> list[tuple[int, int, int, int]]:
        """Boxes of the busy islands in a flat sea of the page's colour: a picture that text
        flows around (an article's figure) has no gutter across the page, but the page's
        background all round it. None in an image without flat margins (a photo)."""
        if not self.page:
            return []
        joined = cv2.morphologyEx(self.busy.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
        # opened: the thin strokes of text beside the picture fall away, its dense body stays
        dense = cv2.morphologyEx(joined, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
        _, _, stats, _ = cv2.connectedComponentsWithStats(dense, connectivity=8)
        h, w = self.busy.shape
        out = []
        for x, y, bw, bh, _ in stats[1:]:
            if bw * bh < _MIN_AREA * w * h or bw < _MIN_PIECE or bh < _MIN_PIECE:
                continue
            box = (int(x), int(y), int(x + bw), int(y + bh))
            if self._moated(box):
                out.append(box)
        return out

    def _moated(self, box: tuple[int, int, int, int]) -> bool:
        """Whether the band just outside a box is mostly flat: a figure set in a page, not a
        busy patch of a photo among others."""
        x0, y0, x1, y1 = box
        h, w = self.busy.shape
        bx0, by0, bx1, by1 = max(0, x0 - _MOAT), max(0, y0 - _MOAT), min(w, x1 + _MOAT), min(h, y1 + _MOAT)
        page = np.zeros(self.busy.shape, dtype=bool)
        for c in self.page:
            page[by0:by1, bx0:bx1] |= (
                _step(self.a[by0:by1, bx0:bx1], np.broadcast_to(c, (by1 - by0, bx1 - bx0, 3))) <= _BUSY
            )
        outer = page[by0:by1, bx0:bx1]
        ring = outer.size - (x1 - x0) * (y1 - y0)
        if ring <= 0:
            return False
        in_page = int(outer.sum()) - int(page[y0:y1, x0:x1].sum())
        return in_page >= (1 - _MOAT_BUSY) * ring

    def _trim(self, block: tuple[int, int, int, int]) -> tuple[tuple[int, int, int, int], list[np.ndarray]]:
        """The block without its flat outer rows and columns, and the median colour of each
        side that was cut off (a page's header bar and its background differ)."""
        x0, y0, x1, y1 = block
        part = self.busy[y0:y1, x0:x1]
        rows = np.flatnonzero(part.mean(axis=1) > _FLAT_LINE)
        cols = np.flatnonzero(part.mean(axis=0) > _FLAT_LINE)
        if not rows.size or not cols.size:
            return (x0, y0, x0, y0), []
        inner = (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)
        cut_off = [
            self.a[y0 : inner[1], x0:x1],
            self.a[inner[3] : y1, x0:x1],
            self.a[inner[1] : inner[3], x0 : inner[0]],
            self.a[inner[1] : inner[3], inner[2] : x1],
        ]
        return inner, [np.median(p.reshape(-1, 3), axis=0).astype(np.uint8) for p in cut_off if p.size]

    def _pieces(
        self, block: tuple[int, int, int, int], axis: int, backs: tuple[np.ndarray, ...]
    ) -> list[tuple[int, int]]:
        """The spans (offsets along ``axis``: 0 rows, 1 columns) of a block between its
        gutters (flat runs of lines in a background colour) and seams (a straight step
        across most of it)."""
        x0, y0, x1, y1 = block
        a = self.a[y0:y1, x0:x1]
        busy = self.busy[y0:y1, x0:x1]
        if axis == 1:
            a, busy = a.transpose(1, 0, 2), busy.T
            step = self.col_step[x0 : x1 - 2, y0:y1]
        else:
            step = self.row_step[y0 : y1 - 2, x0:x1]
        n = busy.shape[0]
        cut = np.zeros(n, dtype=bool)
        # gutter lines: flat, and all of one colour, one of the backgrounds (a sky shades
        # across a picture, a page's background does not)
        flat = busy.mean(axis=1) <= _FLAT_LINE
        run = 0
        for i in range(n + 1):
            if i < n and flat[i]:
                run += 1
                continue
            if run >= _MIN_GUTTER and backs:
                cut[i - run : i] = _gutter(a[i - run : i, ::2], backs)
            run = 0
        spans = _spans(cut)
        if len(spans) > 1:
            # seams only where no gutter cuts the block: a picture's own straight lines cut it
            # a level down, where the picture is a block of its own (a parent) first
            return spans
        if n > 2 * _MIN_PIECE and step.size:
            share = (step > _SEAM_STEP).mean(axis=1)  # line k: the step between lines k and k + 2
            usual = float(np.median(share))
            strong = (share >= _SEAM_SHARE) & (share >= _SEAM_LIFT * max(usual, 0.02))
            # or sharp over most of the line where a side is calm (beside a busy texture)
            calm = _calm_share(step, share)
            share = np.maximum(share, calm)
            strong |= calm >= _SEAM_SHARE
            for k in np.flatnonzero(strong):
                if (
                    _MIN_PIECE <= k
                    and k + 2 <= n - _MIN_PIECE
                    and share[k] >= share[max(k - 2, 0) : k + 3].max()
                ):
                    cut[k + 1] = True
        spans = _spans(cut)
        return spans if len(spans) > 1 else [(0, n)]

    def picture_like(self, x0: int, y0: int, x1: int, y1: int, strict: bool = True) -> bool:
        """Whether a block looks like a picture: busy enough, and not mostly one colour (text
        or an icon on its background). A block the layout cut out on every side (not
        ``strict``) need only be not nearly empty: a plain drawing or a logo is a picture too."""
        busy = self.busy[y0:y1, x0:x1].mean()
        if not strict:
            return bool(busy >= _LEAF_BUSY)
        if busy < _MIN_BUSY:
            return False
        part = self.a[y0:y1:2, x0:x1:2].reshape(-1, 3)
        median = np.median(part, axis=0).astype(np.uint8)
        plain = (_step(part, np.broadcast_to(median, part.shape)) <= _BUSY).mean()
        return bool(plain <= _MAX_PLAIN)


def _calm_share(step: np.ndarray, share: np.ndarray) -> np.ndarray:
    """Per line k of a block (``step``: (n, m) uint8 steps between lines k and k + 2;
    ``share``: the share of each line stepping over ``_SEAM_STEP``), the share of the pixels
    with a calm side (the step two lines before or after is small) that step sharply there,
    well above that side; 0 where under ``_CALM_SEEN`` of the line has a calm side. A seam
    between a picture and a busy texture (gravel, foliage, noise) steps out of the picture's
    calm side, while the texture steps everywhere and cannot tell: the plain share over a
    block the texture fills would hide it. Only lines that step over enough of their pixels
    to reach ``_SEAM_SHARE`` are looked at."""
    out = np.zeros(len(step), dtype=np.float64)
    k = np.flatnonzero(share >= _SEAM_SHARE * _CALM_SEEN)
    k = k[(k >= 2) & (k < len(step) - 2)]
    if not k.size:
        return out
    here, before, after = (step[k + o].astype(np.int16) for o in (0, -2, 2))
    calm_b, calm_a = before <= _CALM, after <= _CALM
    seen = calm_b | calm_a
    side = np.where(calm_b & calm_a, np.maximum(before, after), np.where(calm_b, before, after))
    sharp = seen & (here > _SEAM_STEP) & (here >= 2 * side + _CALM)
    counted = seen.sum(axis=1)
    out[k] = np.where(counted >= _CALM_SEEN * step.shape[1], sharp.sum(axis=1) / np.maximum(counted, 1), 0.0)
    return out


def _spans(cut: np.ndarray) -> list[tuple[int, int]]:
    """The runs of lines between cut lines ((n,) bool), at least ``_MIN_PIECE`` long."""
    spans = []
    begin = None
    n = len(cut)
    for i in range(n + 1):
        inside = i < n and not cut[i]
        if inside and begin is None:
            begin = i
        elif not inside and begin is not None:
            if i - begin >= _MIN_PIECE:
                spans.append((begin, i))
            begin = None
    return spans


def _gutter(lines: np.ndarray, backs: tuple[np.ndarray, ...]) -> np.ndarray:
    """Which of a run of flat lines ((k, m, 3) uint8) are gutter: lines each of one colour, and
    that one of the backgrounds, at least ``_MIN_GUTTER`` of them in a row. Lines may differ
    (a page's white header padding, then its grey background: one gutter), a line may not (a
    sky shades across a picture, a page's background does not); the dark edge of a picture
    beside a black gutter is flat but not of one colour, and is left out. (k,) bool."""
    colours = np.median(lines, axis=1).astype(np.uint8)  # (k, 3)
    even = (_step(lines, np.broadcast_to(colours[:, None, :], lines.shape)) <= _EVEN).mean(
        axis=1
    ) >= _EVEN_SHARE
    near = np.zeros(len(lines), dtype=bool)
    for c in backs:
        near |= np.abs(colours.astype(np.int16) - c.astype(np.int16)).max(axis=1) <= 2 * _BUSY
    ok = even & near
    # only runs of at least _MIN_GUTTER lines
    out = np.zeros_like(ok)
    start = None
    for k in range(len(ok) + 1):
        if k < len(ok) and ok[k]:
            start = k if start is None else start
        elif start is not None:
            if k - start >= _MIN_GUTTER:
                out[start:k] = True
            start = None
    return out


def _near(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two (3,) uint8 colours are alike (within twice the flat tolerance)."""
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) <= 2 * _BUSY


def _step(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The largest per-channel absolute difference of two (..., 3) uint8 arrays."""
    d = cv2.absdiff(np.ascontiguousarray(a), np.ascontiguousarray(b))
    return np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2])
