"""Content boxes: where the picture lies inside added borders, letterbox bars, caption bands
and screenshot frames.

Copies are often the original pasted onto something flat: a border, a meme band with text,
a browser or phone frame. Those additions are drawn in a few solid colours that reach the
edge of the image. The content box is the bounding box of the largest region that is not one
of those colours. Query and catalog images get the same treatment, so an image that has flat
margins of its own is cut the same way on both sides.

A copy turned a few degrees with its corners filled reaches every edge: no box cuts it. Where
that largest region is a leaning four-sided shape, :func:`content_shapes` also gives it as a
:class:`Tilt`, which a query's probes search set upright (catalog images keep their box).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

_WORK_SIDE = 256  # the box is found on a copy this size: enough for a box within 1 %
_TOLERANCE = 24  # grey levels per channel: JPEG noise on flat colour stays within this
_UNIFORM = 0.9  # an edge line is flat when this share of it is within tolerance of its median
_MIN_AREA = 0.12  # a box smaller than this share of the image is not trusted
_KEEP = 0.97  # a box covering this much of both sides is no trim at all
# A turned or skewed picture on flat margins. Its outline is simplified to four corners
# within this share of its perimeter, and it fills that shape to this share at least. Its
# sides lean this many degrees off the axes: less is a box (a corner rounded by JPEG leans
# a degree), more is a shape of its own (a diamond sign), not a picture turned to evade.
_QUAD_FIT = 0.03
_QUAD_FILL = 0.96
_MIN_TILT = 2.0
_MAX_TILT = 25.0


@dataclass(frozen=True)
class Box:
    """A rectangle in pixels: columns ``left`` to ``right`` and rows ``top`` to ``bottom``,
    end-exclusive."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    def cut(self, a: np.ndarray) -> np.ndarray:
        """The part of an (h, w, ...) array inside the box."""
        return a[self.top : self.bottom, self.left : self.right]


@dataclass(frozen=True)
class Tilt:
    """A picture pasted turned or in perspective onto a flat background (a copy rotated a few
    degrees and its corners filled, a photo of a print): its four corners ``(x, y)`` in
    pixels, clockwise from the top left. :meth:`cut` sets it upright."""

    corners: tuple[tuple[float, float], ...]

    @property
    def width(self) -> int:
        (a, b, c, d) = np.asarray(self.corners)
        return max(1, round((np.linalg.norm(b - a) + np.linalg.norm(c - d)) / 2))

    @property
    def height(self) -> int:
        (a, b, c, d) = np.asarray(self.corners)
        return max(1, round((np.linalg.norm(d - a) + np.linalg.norm(c - b)) / 2))

    def cut(self, a: np.ndarray) -> np.ndarray:
        """The picture set upright: (height, width, ...) like ``a``."""
        w, h = self.width, self.height
        upright = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
        warp = cv2.getPerspectiveTransform(np.array(self.corners, dtype=np.float32), upright)
        return cv2.warpPerspective(a, warp, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def content_box(rgb: np.ndarray) -> Box | None:
    """The box of the picture inside flat added margins of an (h, w, 3) uint8 image, or None
    when there is nothing to cut (no flat edge, or the box is nearly the whole image)."""
    return content_shapes(rgb, tilted=False)[0]


def content_shapes(rgb: np.ndarray, tilted: bool = True) -> tuple[Box | None, Tilt | None]:
    """:func:`content_box`, and with ``tilted`` a :class:`Tilt` where the largest region
    inside the flat margins is a four-sided shape turned or skewed at least
    :data:`_MIN_TILT` degrees (a copy turned and its corners filled: its upright cut is
    searched beside the box)."""
    h, w = rgb.shape[:2]
    scale = min(1.0, _WORK_SIDE / max(h, w))
    small = rgb
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    colours = _edge_colours(small.astype(np.int16))
    if not colours:
        return None, None
    flat = np.zeros(small.shape[:2], dtype=bool)
    for c in colours:
        flat |= np.abs(small.astype(np.int16) - c).max(axis=2) <= _TOLERANCE
    content = (~flat).astype(np.uint8)
    # The largest connected region, grown by the regions centred inside its bounding box
    # (parts of the picture cut off by patches of the margin colour), not by its neighbours
    # (text beside a picture in a screenshot).
    count, labels, stats, _ = cv2.connectedComponentsWithStats(content, connectivity=8)
    if count < 2:
        return None, None
    boxes = stats[1:, :4]  # x, y, width, height
    areas = stats[1:, 4]
    largest = int(np.argmax(areas))
    tilt = None
    if tilted:
        quad = _tilted_quad(labels == largest + 1)
        if quad is not None:
            tilt = Tilt(tuple((float(x / scale), float(y / scale)) for x, y in quad))
    x0, y0, bw, bh = boxes[largest]
    x1, y1 = x0 + bw, y0 + bh
    for _ in range(3):
        cx = boxes[:, 0] + boxes[:, 2] / 2
        cy = boxes[:, 1] + boxes[:, 3] / 2
        inside = (cx >= x0) & (cx <= x1) & (cy >= y0) & (cy <= y1)
        nx0, ny0 = boxes[inside, 0].min(), boxes[inside, 1].min()
        nx1, ny1 = (boxes[inside, 0] + boxes[inside, 2]).max(), (boxes[inside, 1] + boxes[inside, 3]).max()
        if (nx0, ny0, nx1, ny1) == (x0, y0, x1, y1):
            break
        x0, y0, x1, y1 = nx0, ny0, nx1, ny1
    sh, sw = small.shape[:2]
    if (x1 - x0) >= _KEEP * sw and (y1 - y0) >= _KEEP * sh:
        return None, tilt
    if (x1 - x0) * (y1 - y0) < _MIN_AREA * sw * sh:
        return None, tilt
    box = Box(
        left=int(np.floor(x0 / scale)),
        top=int(np.floor(y0 / scale)),
        right=min(w, int(np.ceil(x1 / scale))),
        bottom=min(h, int(np.ceil(y1 / scale))),
    )
    if min(box.width, box.height) < 16:
        return None, tilt
    return box, tilt


def _tilted_quad(region: np.ndarray) -> np.ndarray | None:
    """The four corners (4, 2) of a region of the work copy, clockwise from the top left,
    where the region is a filled four-sided shape (its outline simplified to four corners
    within :data:`_QUAD_FIT`, the region filling :data:`_QUAD_FILL` of it) of at least
    :data:`_MIN_AREA` of the image, whose sides lean :data:`_MIN_TILT` to :data:`_MAX_TILT`
    degrees off the axes; else None."""
    h, w = region.shape
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    outline = max(contours, key=cv2.contourArea)  # holes of the margin's colour inside count
    hull = cv2.convexHull(outline)
    hull_area = cv2.contourArea(hull)
    if hull_area < _MIN_AREA * w * h:
        return None
    perimeter = cv2.arcLength(hull, True)
    quad = None
    for fit in (0.01, 0.02, _QUAD_FIT):
        approx = cv2.approxPolyDP(hull, fit * perimeter, True)
        if len(approx) == 4:
            quad = approx.reshape(4, 2).astype(np.float64)
            break
    if quad is None or not cv2.isContourConvex(quad.astype(np.float32)):
        return None
    area = cv2.contourArea(quad.astype(np.float32))
    if cv2.contourArea(outline) < _QUAD_FILL * area or hull_area < _QUAD_FILL * area:
        return None
    centre = quad.mean(axis=0)
    order = np.argsort(np.arctan2(quad[:, 1] - centre[1], quad[:, 0] - centre[0]))
    quad = quad[order]  # clockwise on screen (y grows downwards), from some corner
    start = int(np.argmin(quad[:, 0] + quad[:, 1]))
    quad = np.roll(quad, -start, axis=0)  # from the top left
    leans = []
    for k in range(4):
        dx, dy = quad[(k + 1) % 4] - quad[k]
        angle = np.degrees(np.arctan2(dy, dx)) % 90.0  # each side's lean off its axis
        leans.append(min(angle, 90.0 - angle))
    if max(leans) < _MIN_TILT or max(leans) > _MAX_TILT:
        return None
    return quad


def _edge_colours(a: np.ndarray) -> list[np.ndarray]:
    """The distinct colours of the image's flat outermost lines: (3,) int16 each."""
    found: list[np.ndarray] = []
    for line in (a[0], a[-1], a[:, 0], a[:, -1]):
        median = np.median(line, axis=0).astype(np.int16)
        near = np.abs(line - median).max(axis=1) <= _TOLERANCE
        if near.mean() < _UNIFORM:
            continue
        if all(np.abs(median - c).max() > _TOLERANCE for c in found):
            found.append(median)
    return found
