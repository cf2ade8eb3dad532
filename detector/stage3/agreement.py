"""Stage 3, after the fit: does the content agree wherever the two images overlap?

Keypoint inliers prove that some parts of two pictures coincide, not that the pictures are the
same: two cards of one deck share their frame and pips, two flags their canton, two icons of a
set their plate. So once a map is fitted, the catalog image is brought onto the query with it
(a homography refitted on the inliers where there are enough, else the affine map) and the two
are compared region by region, on a grid of ``agree_cell``-pixel cells at stage 3's scale:

- outside the catalog image's footprint the query's own pixels stand in for it, and each
  cell is judged on its pixels inside the footprint only, so a picture's edge against a
  border or a page is not disagreement;
- both images are smoothed first (a 3x3 median, then ``agree_sigma``), and the sharper one
  further until their fine detail matches, so blur, JPEG and noise do not count as
  disagreement;
- a cell where neither image has texture counts for nothing either way (texture is judged
  against the pair's own, so a fine grain that smoothing leaves faint still counts); a cell
  textured in both agrees when its normalised correlation reaches ``agree_ncc``; a cell with
  plain texture (grey-level std ``agree_flat``) in the catalog image and none in the query
  disagrees (a face where the other card has a plain field); the reverse, texture in the
  query only, disagrees at weight ``agree_added`` (it may be content added on top, as an
  overlay, a caption or a watermark adds it, or a look-alike's own);
- ``agreement`` is the share of the counted cells that agree (None under ``agree_min_cells``
  counted cells: too little to judge), and the overlap's share of each image is kept too.

A copy agrees almost everywhere it overlaps its original, and an overlay, a caption band or a
watermark takes only the cells it covers; a look-alike agrees on its template only.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from detector.config import Settings
from detector.records import Region

_SHARPER = 1.5  # one image's fine detail this many times the other's: smooth it more
_EXTRA_SIGMAS = (1.0, 2.0, 3.0, 4.5)  # tried in turn on the sharper image
_MIN_VALID = 0.75  # a cell counts when this share of it lies inside both images
_MIN_FLAT = 1.5  # grey-level std under which a smoothed cell never counts as textured
_RELATIVE = 0.5  # a cell is textured from this share of the pair's typical cell texture up
_HOMOGRAPHY_MIN = 8  # inliers needed to refit a homography (perspective) over the affine map


@dataclass(frozen=True)
class Agreement:
    """The dense comparison of an aligned pair. ``agreement``: the share of the overlap's
    textured cells whose content agrees (None when too few cells have texture to judge);
    ``query_coverage`` and ``catalog_coverage``: the share of each image the overlap covers;
    ``cells``: textured cells compared; ``disagreement``: outlines of the cells that disagree,
    as polygons of fractions of the query (in the frame it was given); ``plain``: the share of
    the overlap's cells with no texture on either side."""

    agreement: float | None
    query_coverage: float
    catalog_coverage: float
    cells: int
    disagreement: tuple[Region, ...] = ()
    plain: float = 0.0  # the share of the overlap's cells with no texture on either side


def compare(
    query: np.ndarray, catalog: np.ndarray, src: np.ndarray, dst: np.ndarray, settings: Settings
) -> Agreement:
    """Compare two (h, w) uint8 grey images aligned by the inlier pairs ``src`` (query points)
    and ``dst`` (the catalog points they matched), both (n, 2) float32 pixels. Where the
    homography and the affine map through the inliers differ, the one under which the
    images agree more counts (a few inliers pin a map down loosely)."""
    found = [_compare(query, catalog, h, settings) for h in _alignments(src, dst, settings)]
    judged = [a for a in found if a.agreement is not None]
    if judged:
        return max(judged, key=lambda a: a.agreement or 0.0)
    return max(found, key=lambda a: a.cells, default=Agreement(None, 0.0, 0.0, 0))


def _compare(query: np.ndarray, catalog: np.ndarray, h: np.ndarray, settings: Settings) -> Agreement:
    qh, qw = query.shape[:2]
    ch, cw = catalog.shape[:2]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpPerspective(catalog, h, (qw, qh), flags=flags, borderValue=0)
    inside = cv2.warpPerspective(
        np.full((ch, cw), 255, np.uint8), h, (qw, qh), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
    )
    valid = inside > 0
    # Outside the catalog image's footprint the query's own pixels stand in, so that smoothing
    # across the footprint's edge blurs alike on both sides (a border, a page around the
    # picture); the cells then weigh only the pixels inside it.
    warped = np.where(valid, warped, query)
    query_coverage = float(valid.mean())
    catalog_coverage = _catalog_coverage(h, qw, qh, cw, ch)
    if query_coverage == 0.0:
        return Agreement(None, 0.0, catalog_coverage, 0)
    q, c = _smoothed_alike(query, warped, valid, settings.agree_sigma)
    grid = _cells(q, c, valid, settings)
    cells = int(grid.counted.sum())
    if cells < settings.agree_min_cells:
        return Agreement(None, query_coverage, catalog_coverage, cells)
    weight = np.ones(grid.counted.shape) if grid.weight is None else grid.weight
    share = float((weight * grid.agree)[grid.counted].sum() / max(float(weight[grid.counted].sum()), 1e-9))
    outlines = _outlines(grid.counted & ~grid.agree, settings.agree_cell, qw, qh, settings.region_points)
    inside = grid.inside.sum()
    plain = float(1.0 - cells / inside) if inside else 0.0
    return Agreement(share, query_coverage, catalog_coverage, cells, outlines, plain)


def _alignments(src: np.ndarray, dst: np.ndarray, settings: Settings) -> list[np.ndarray]:
    """3x3 maps from query to catalog pixels through the inliers: a homography refitted on
    them where there are enough and it is sane, and the affine map."""
    found = []
    if len(src) >= _HOMOGRAPHY_MIN:
        h, _ = cv2.findHomography(src, dst, cv2.RANSAC, settings.ransac_px)
        if h is not None and _sane(h):
            found.append(np.asarray(h, dtype=np.float64))
    if len(src) >= 3:
        affine, _ = cv2.estimateAffine2D(src, dst, method=cv2.LMEDS)
        if affine is not None and np.isfinite(affine).all():
            found.append(np.vstack([affine, [0.0, 0.0, 1.0]]))
    return found


def _sane(h: np.ndarray) -> bool:
    """A homography a copy can show: finite, orientation kept, mild perspective."""
    if not np.isfinite(h).all() or abs(h[2, 2]) < 1e-9:
        return False
    h = h / h[2, 2]
    return bool(np.linalg.det(h[:2, :2]) > 0 and np.abs(h[2, :2]).max() < 0.01)


def _catalog_coverage(h: np.ndarray, qw: int, qh: int, cw: int, ch: int) -> float:
    """The share of the catalog image the query's frame lands on."""
    corners = np.array([[[0, 0]], [[qw, 0]], [[qw, qh]], [[0, qh]]], dtype=np.float32)
    quad = cv2.perspectiveTransform(corners, h).reshape(-1, 2)
    frame = np.array([[0, 0], [cw, 0], [cw, ch], [0, ch]], dtype=np.float32)
    if not cv2.isContourConvex(quad.astype(np.float32)):
        return 0.0
    area, _ = cv2.intersectConvexConvex(quad.astype(np.float32), frame)
    return float(min(max(area / (cw * ch), 0.0), 1.0))


def _smoothed_alike(
    query: np.ndarray, warped: np.ndarray, valid: np.ndarray, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Both images smoothed by ``sigma``, and the sharper one further until its fine detail
    (mean gradient over the overlap) is within ``_SHARPER`` of the other's: a blurred or
    shrunk copy is compared with its original degraded alike."""
    # a 3x3 median first: impulse noise (salt and pepper) is not texture
    query, warped = cv2.medianBlur(query, 3), cv2.medianBlur(warped, 3)
    q = cv2.GaussianBlur(query.astype(np.float32), (0, 0), sigma)
    c = cv2.GaussianBlur(warped.astype(np.float32), (0, 0), sigma)
    inner = cv2.erode(valid.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    dq, dc = _detail(q, inner), _detail(c, inner)
    for extra in _EXTRA_SIGMAS:
        if dq > _SHARPER * dc:
            q = cv2.GaussianBlur(query.astype(np.float32), (0, 0), float(np.hypot(sigma, extra)))
            dq = _detail(q, inner)
        elif dc > _SHARPER * dq:
            c = cv2.GaussianBlur(warped.astype(np.float32), (0, 0), float(np.hypot(sigma, extra)))
            dc = _detail(c, inner)
        else:
            break
    return q, c


def _detail(image: np.ndarray, where: np.ndarray) -> float:
    if not where.any():
        return 0.0
    gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3)
    return float(np.abs(gx)[where].mean() + np.abs(gy)[where].mean())


@dataclass(frozen=True, eq=False)
class _Grid:
    """The cells of an aligned pair: ``agree`` and ``counted`` (inside both images, with
    texture to judge), ``qstd`` and ``cstd`` each image's texture, ``flat`` the level under
    which a cell has none. (gh, gw) arrays."""

    agree: np.ndarray
    counted: np.ndarray
    inside: np.ndarray
    qstd: np.ndarray
    cstd: np.ndarray
    flat: float
    weight: np.ndarray | None = None


def _cells(q: np.ndarray, c: np.ndarray, valid: np.ndarray, settings: Settings) -> _Grid:
    """Each cell of the grid judged."""
    size = settings.agree_cell
    gh, gw = q.shape[0] // size, q.shape[1] // size
    if gh == 0 or gw == 0:
        empty = np.zeros((0, 0), bool)
        return _Grid(empty, empty, empty, np.zeros((0, 0)), np.zeros((0, 0)), 0.0)

    def grid(a: np.ndarray) -> np.ndarray:
        return a[: gh * size, : gw * size].reshape(gh, size, gw, size).swapaxes(1, 2).reshape(gh, gw, -1)

    qs, cs, vs = grid(q), grid(c), grid(valid.astype(np.float32))
    inside = vs.mean(axis=2) >= _MIN_VALID
    # each cell's statistics over its pixels inside the footprint only (an edge cell's outside
    # is the query's own on both sides: it would count as agreeing)
    n = np.maximum(vs.sum(axis=2), 1.0)
    qm, cm = (qs * vs).sum(axis=2) / n, (cs * vs).sum(axis=2) / n
    qd, cd = (qs - qm[..., None]) * vs, (cs - cm[..., None]) * vs
    qstd, cstd = np.sqrt((qd * qd).sum(axis=2) / n), np.sqrt((cd * cd).sum(axis=2) / n)
    ncc = (qd * cd).sum(axis=2) / n / np.maximum(qstd * cstd, 1e-6)
    # Texture is judged against the pair's own: a fine grain that smoothing leaves faint is
    # still texture where the whole picture is made of it.
    stronger = np.maximum(qstd, cstd)[inside]
    typical = float(np.median(stronger)) if stronger.size else 0.0
    flat = min(settings.agree_flat, max(_MIN_FLAT, _RELATIVE * typical))
    strong, weak = np.maximum(qstd, cstd), np.minimum(qstd, cstd)
    both = (strong >= flat) & (weak >= flat / 2)  # texture on both sides: compare it
    # plain texture in the catalog image and none at all in the query: content the query lacks
    # (a face where the other card has a plain field). The reverse, texture only the query
    # has, may be content added on top (an overlay, a caption, a watermark) as much as a
    # look-alike's own: it weighs ``agree_added``.
    missing = (cstd >= settings.agree_flat) & (qstd < flat / 2)
    added = (qstd >= settings.agree_flat) & (cstd < flat / 2)
    counted = inside & (both | missing | added)
    agree = inside & both & (ncc >= settings.agree_ncc)
    weight = np.where(added, settings.agree_added, 1.0)
    return _Grid(agree, counted, inside, qstd, cstd, flat, weight)


def _outlines(cells: np.ndarray, size: int, width: int, height: int, corners: int) -> tuple[Region, ...]:
    """The outlines of groups of cells, as polygons of fractions of the image (largest first,
    at most eight)."""
    if not cells.any():
        return ()
    mask = np.kron(cells.astype(np.uint8), np.ones((size, size), np.uint8)) * 255
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    found = []
    for contour in sorted(contours, key=cv2.contourArea, reverse=True)[:8]:
        approx = cv2.approxPolyDP(contour, 0.01 * cv2.arcLength(contour, True), True)
        if len(approx) > corners:
            approx = cv2.convexHull(approx)
        points = approx.reshape(-1, 2).astype(np.float64) / np.array([max(width, 1), max(height, 1)])
        found.append(tuple((round(float(x), 4), round(float(y), 4)) for x, y in np.clip(points, 0.0, 1.0)))
    return tuple(found)
