"""Content boxes: where the picture lies inside added borders, letterbox bars, caption bands
and screenshot frames.

Copies are often the original pasted onto something flat: a border, a meme band with text,
a browser or phone frame. Those additions are drawn in a few solid colours that reach the
edge of the image. The content box is the bounding box of the largest region that is not one
of those colours. Query and catalog images get the same treatment, so an image that has flat
margins of its own is cut the same way on both sides.
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


def content_box(rgb: np.ndarray) -> Box | None:
    """The box of the picture inside flat added margins of an (h, w, 3) uint8 image, or None
    when there is nothing to cut (no flat edge, or the box is nearly the whole image)."""
    h, w = rgb.shape[:2]
    scale = min(1.0, _WORK_SIDE / max(h, w))
    small = rgb
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    colours = _edge_colours(small.astype(np.int16))
    if not colours:
        return None
    flat = np.zeros(small.shape[:2], dtype=bool)
    for c in colours:
        flat |= np.abs(small.astype(np.int16) - c).max(axis=2) <= _TOLERANCE
    content = (~flat).astype(np.uint8)
    # The largest connected region, grown by the regions centred inside its bounding box
    # (parts of the picture cut off by patches of the margin colour), not by its neighbours
    # (text beside a picture in a screenshot).
    count, _, stats, _ = cv2.connectedComponentsWithStats(content, connectivity=8)
    if count < 2:
        return None
    boxes = stats[1:, :4]  # x, y, width, height
    areas = stats[1:, 4]
    x0, y0, bw, bh = boxes[int(np.argmax(areas))]
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
        return None
    if (x1 - x0) * (y1 - y0) < _MIN_AREA * sw * sh:
        return None
    box = Box(
        left=int(np.floor(x0 / scale)),
        top=int(np.floor(y0 / scale)),
        right=min(w, int(np.ceil(x1 / scale))),
        bottom=min(h, int(np.ceil(y1 / scale))),
    )
    if min(box.width, box.height) < 16:
        return None
    return box


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
