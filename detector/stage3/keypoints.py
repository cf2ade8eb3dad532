"""Stage 3: geometric verification of a (query, catalog image) pair with OpenCV.

ORB keypoints on both images (grey, longer side at most ``verify_side`` pixels), nearest-
neighbour matches that pass Lowe's ratio test, at most one per catalog keypoint, then an
affine model fitted with RANSAC, which must be one a copy can show (no mirror, a scale within
``max_scale`` either way, a stretch under ``max_stretch``); each number is a setting. A copy,
even cropped, rotated, stretched or pasted into a frame, keeps many matches that agree on one
such map; a different picture that only looks alike (another face of a sky box, another star
field) keeps a handful at most. The inlier count is the evidence.

Without the last two rules, unrelated textures kept many chance inliers: a bright star or a
repeated tile took the matches of dozens of query keypoints, and RANSAC fitted a map that
squashed the query onto it. On 7,340 wrong pairs from benchmarks/accuracy.py (seed 0) the
share with more than 10 inliers fell from 19 % to 0.2 %, and of 1,472 true pairs 97.8 % kept
more than 10 (98.2 % before).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from detector.config import Settings
from detector.records import Region

# ORB's detector, fixed with the engine (the engine revision covers them): a low FAST threshold
# and small patches find enough points on small and smooth images.
_FAST_THRESHOLD = 10
_EDGE_THRESHOLD = 15
_PATCH_SIZE = 15


@dataclass(frozen=True, eq=False)
class Features:
    """ORB keypoints of one image: ``points`` (n, 2) float32 pixel coordinates in the image
    as given to :func:`features`; ``descriptors`` (n, 32) uint8; ``width``, ``height`` of it."""

    points: np.ndarray
    descriptors: np.ndarray
    width: int
    height: int


@dataclass(frozen=True, eq=False)
class Verification:
    """The outcome for one pair: ``matches`` passed the ratio test, ``inliers`` of them agree
    on the fitted affine map (0 when none could be fitted); ``keypoints`` is the smaller of
    the two images' keypoint counts. Below ``min_keypoints`` stage 3 cannot judge the pair.
    ``query_region`` and ``catalog_region`` outline the inliers in each image (the convex
    hull, as fractions of the width and height of the image given to :func:`features`);
    None with fewer than three inliers or when they lie on a line."""

    matches: int
    inliers: int
    keypoints: int = 0
    query_region: Region | None = None
    catalog_region: Region | None = None
    src: np.ndarray | None = None  # (k, 2) float32: the inliers in the query...
    dst: np.ndarray | None = None  # ...and the catalog points they matched


def verify_grey(rgb: np.ndarray, settings: Settings) -> np.ndarray:
    """The grey image stage 3 works on: (h, w) uint8, longer side at most ``verify_side``
    and, for thumbnails, enlarged to ``verify_min_side``."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    longer = max(h, w)
    top, bottom = settings.verify_side, min(settings.verify_min_side, settings.verify_side)
    if longer > top or longer < bottom:
        scale = (top if longer > top else bottom) / longer
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return grey


def features(grey: np.ndarray, settings: Settings) -> Features:
    """ORB keypoints and descriptors of an (h, w) uint8 image (see :func:`verify_grey`), at
    most ``orb_features``."""
    orb = cv2.ORB.create(
        nfeatures=settings.orb_features,
        fastThreshold=_FAST_THRESHOLD,
        edgeThreshold=_EDGE_THRESHOLD,
        patchSize=_PATCH_SIZE,
    )
    keypoints, descriptors = orb.detectAndCompute(grey, None)
    h, w = grey.shape[:2]
    if descriptors is None or not keypoints:
        return Features(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8), w, h)
    points = np.array([k.pt for k in keypoints], dtype=np.float32)
    return Features(points, descriptors, w, h)


def sift_features(grey: np.ndarray, settings: Settings) -> Features:
    """SIFT keypoints and descriptors ((n, 128), held as uint8: OpenCV's values are whole
    numbers under 256) of an (h, w) uint8 image: several times ORB's cost, but far fewer
    chance inliers between unrelated textures (2.5 % of unrelated pairs keep more than 10,
    against 18 % with ORB; benchmarks/verification.py)."""
    sift = cv2.SIFT.create(nfeatures=settings.sift_features)
    keypoints, descriptors = sift.detectAndCompute(grey, None)
    h, w = grey.shape[:2]
    if descriptors is None or not keypoints:
        return Features(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8), w, h)
    points = np.array([k.pt for k in keypoints], dtype=np.float32)
    return Features(points, np.clip(descriptors, 0, 255).astype(np.uint8), w, h)


def verify(query: Features, catalog: Features, settings: Settings) -> Verification:
    """Match two images' keypoints (ORB's or SIFT's, both of one kind) and count the matches
    one affine map explains (``orb_ratio`` / ``sift_ratio``, ``ransac_px``, ``ransac_iters``,
    ``ransac_confidence``, then :func:`plausible`)."""
    keypoints = min(len(query.points), len(catalog.points))
    if keypoints < 3:
        return Verification(0, 0, keypoints)
    sift = query.descriptors.shape[1] == 128  # ORB's are 32 bytes
    if sift:
        pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(
            query.descriptors.astype(np.float32), catalog.descriptors.astype(np.float32), k=2
        )
    else:
        pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(query.descriptors, catalog.descriptors, k=2)
    ratio = settings.sift_ratio if sift else settings.orb_ratio
    good = _one_per_catalog_point(
        [p[0] for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]
    )
    if len(good) < 3:
        return Verification(len(good), 0, keypoints)
    src = query.points[[m.queryIdx for m in good]]
    dst = catalog.points[[m.trainIdx for m in good]]
    model, mask = cv2.estimateAffine2D(
        src,
        dst,
        method=cv2.RANSAC,
        ransacReprojThreshold=settings.ransac_px,
        maxIters=settings.ransac_iters,
        confidence=settings.ransac_confidence,
    )
    if model is None or mask is None or not plausible(model, settings):
        return Verification(len(good), 0, keypoints)
    inlier = mask.ravel().astype(bool)
    return Verification(
        len(good),
        int(inlier.sum()),
        keypoints,
        region(src[inlier], query.width, query.height, settings.region_points),
        region(dst[inlier], catalog.width, catalog.height, settings.region_points),
        src[inlier],
        dst[inlier],
    )


def plausible(model: np.ndarray, settings: Settings) -> bool:
    """Whether a (2, 3) affine map is one a copy can show: finite, not mirrored (the query is
    turned as its probe matched before stage 3), each axis scaled within ``max_scale`` either
    way and one at most ``max_stretch`` times the other. Chance fits on texture are often
    degenerate: most of the query squashed onto a few catalog points."""
    if not np.isfinite(model).all():
        return False
    linear = model[:, :2].astype(np.float64)
    if np.linalg.det(linear) <= 0:
        return False
    big, small = np.linalg.svd(linear, compute_uv=False)
    top, stretch = settings.max_scale, settings.max_stretch
    return bool(small >= 1.0 / top and big <= top and big <= stretch * small)


def _one_per_catalog_point(matches: list[cv2.DMatch]) -> list[cv2.DMatch]:
    """The closest of the matches that share a catalog keypoint, so no one point (a bright
    star, a repeated tile) can vouch for many query points."""
    best: dict[int, cv2.DMatch] = {}
    for m in matches:
        kept = best.get(m.trainIdx)
        if kept is None or m.distance < kept.distance:
            best[m.trainIdx] = m
    return sorted(best.values(), key=lambda m: m.queryIdx)


def region(points: np.ndarray, width: int, height: int, corners: int = 16) -> Region | None:
    """The convex hull of (n, 2) pixel points, simplified to at most ``corners``
    corners, as fractions of ``width`` and ``height``; None when it encloses no area."""
    if len(points) < 3:
        return None
    hull = cv2.convexHull(np.ascontiguousarray(points, dtype=np.float32))
    if cv2.contourArea(hull) < 1.0:
        return None
    epsilon = 0.005 * cv2.arcLength(hull, True)
    while len(hull) > corners:
        hull = cv2.approxPolyDP(hull, epsilon, True)
        epsilon *= 2
    size = np.array([max(width, 1), max(height, 1)], dtype=np.float64)
    fractions = np.clip(hull.reshape(-1, 2) / size, 0.0, 1.0)
    return tuple((round(float(x), 4), round(float(y), 4)) for x, y in fractions)
