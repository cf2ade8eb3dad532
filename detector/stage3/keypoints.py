"""Stage 3: geometric verification of a (query, catalog image) pair with OpenCV.

ORB keypoints on both images (grey, longer side at most ``VERIFY_SIDE`` pixels), nearest-
neighbour matches that pass Lowe's ratio test, at most one per catalog keypoint, then an
affine model fitted with RANSAC, which must be one a copy can show (no mirror, a scale within
``_MAX_SCALE`` either way, a stretch under ``_MAX_STRETCH``). A copy, even cropped, rotated,
stretched or pasted into a frame, keeps many matches that agree on one such map; a different
picture that only looks alike (another face of a sky box, another star field) keeps a
handful at most. The inlier count is the evidence.

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

from detector.records import Region

VERIFY_SIDE = 512  # pixels: keypoints are found on images no longer than this
_MIN_SIDE = 320  # smaller images are enlarged to this first: ORB finds few points in thumbnails
_FEATURES = 1000
MIN_KEYPOINTS = 60  # fewer on either side (smooth or tiny images): stage 3 abstains
_RATIO = 0.8  # Lowe's ratio test on Hamming distances
_SIFT_RATIO = 0.75  # and on SIFT's L2 distances
_SIFT_FEATURES = 500  # half of 1,000 costs a third less and gave the same recall
_REPROJECTION = 6.0  # RANSAC inlier threshold, pixels at VERIFY_SIDE
_REGION_POINTS = 16  # most corners of a matched-region polygon
_MAX_SCALE = 8.0  # a copy's affine map scales each axis by at most this, up or down
_MAX_STRETCH = 3.0  # and one axis at most this many times more than the other


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
    the two images' keypoint counts. Below ``MIN_KEYPOINTS`` stage 3 cannot judge the pair.
    ``query_region`` and ``catalog_region`` outline the inliers in each image (the convex
    hull, as fractions of the width and height of the image given to :func:`features`);
    None with fewer than three inliers or when they lie on a line."""

    matches: int
    inliers: int
    keypoints: int = 0
    query_region: Region | None = None
    catalog_region: Region | None = None

    @property
    def conclusive(self) -> bool:
        """Whether both images had enough texture for the inlier count to mean something."""
        return self.keypoints >= MIN_KEYPOINTS


def verify_grey(rgb: np.ndarray) -> np.ndarray:
    """The grey image stage 3 works on: (h, w) uint8, longer side at most ``VERIFY_SIDE``
    and, for thumbnails, enlarged to ``_MIN_SIDE``."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    longer = max(h, w)
    if longer > VERIFY_SIDE or longer < _MIN_SIDE:
        scale = (VERIFY_SIDE if longer > VERIFY_SIDE else _MIN_SIDE) / longer
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return grey


def features(grey: np.ndarray) -> Features:
    """ORB keypoints and descriptors of an (h, w) uint8 image (see :func:`verify_grey`)."""
    orb = cv2.ORB.create(nfeatures=_FEATURES, fastThreshold=10, edgeThreshold=15, patchSize=15)
    keypoints, descriptors = orb.detectAndCompute(grey, None)
    h, w = grey.shape[:2]
    if descriptors is None or not keypoints:
        return Features(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8), w, h)
    points = np.array([k.pt for k in keypoints], dtype=np.float32)
    return Features(points, descriptors, w, h)


def sift_features(grey: np.ndarray) -> Features:
    """SIFT keypoints and descriptors ((n, 128), held as uint8: OpenCV's values are whole
    numbers under 256) of an (h, w) uint8 image: several times ORB's cost, but far fewer
    chance inliers between unrelated textures (2.5 % of unrelated pairs keep more than 10,
    against 18 % with ORB; benchmarks/verification.py)."""
    sift = cv2.SIFT.create(nfeatures=_SIFT_FEATURES)
    keypoints, descriptors = sift.detectAndCompute(grey, None)
    h, w = grey.shape[:2]
    if descriptors is None or not keypoints:
        return Features(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8), w, h)
    points = np.array([k.pt for k in keypoints], dtype=np.float32)
    return Features(points, np.clip(descriptors, 0, 255).astype(np.uint8), w, h)


def verify(query: Features, catalog: Features) -> Verification:
    """Match two images' keypoints (ORB's or SIFT's, both of one kind) and count the matches
    one affine map explains."""
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
    ratio = _SIFT_RATIO if sift else _RATIO
    good = _one_per_catalog_point(
        [p[0] for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]
    )
    if len(good) < 3:
        return Verification(len(good), 0, keypoints)
    src = query.points[[m.queryIdx for m in good]]
    dst = catalog.points[[m.trainIdx for m in good]]
    model, mask = cv2.estimateAffine2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=_REPROJECTION, maxIters=2000, confidence=0.995
    )
    if model is None or mask is None or not plausible(model):
        return Verification(len(good), 0, keypoints)
    inlier = mask.ravel().astype(bool)
    return Verification(
        len(good),
        int(inlier.sum()),
        keypoints,
        region(src[inlier], query.width, query.height),
        region(dst[inlier], catalog.width, catalog.height),
    )


def plausible(model: np.ndarray) -> bool:
    """Whether a (2, 3) affine map is one a copy can show: finite, not mirrored (the query is
    turned as its probe matched before stage 3), each axis scaled within ``_MAX_SCALE`` either
    way and one at most ``_MAX_STRETCH`` times the other. Chance fits on texture are often
    degenerate: most of the query squashed onto a few catalog points."""
    if not np.isfinite(model).all():
        return False
    linear = model[:, :2].astype(np.float64)
    if np.linalg.det(linear) <= 0:
        return False
    big, small = np.linalg.svd(linear, compute_uv=False)
    return bool(small >= 1.0 / _MAX_SCALE and big <= _MAX_SCALE and big <= _MAX_STRETCH * small)


def _one_per_catalog_point(matches: list[cv2.DMatch]) -> list[cv2.DMatch]:
    """The closest of the matches that share a catalog keypoint, so no one point (a bright
    star, a repeated tile) can vouch for many query points."""
    best: dict[int, cv2.DMatch] = {}
    for m in matches:
        kept = best.get(m.trainIdx)
        if kept is None or m.distance < kept.distance:
            best[m.trainIdx] = m
    return sorted(best.values(), key=lambda m: m.queryIdx)


def region(points: np.ndarray, width: int, height: int) -> Region | None:
    """The convex hull of (n, 2) pixel points, simplified to at most ``_REGION_POINTS``
    corners, as fractions of ``width`` and ``height``; None when it encloses no area."""
    if len(points) < 3:
        return None
    hull = cv2.convexHull(np.ascontiguousarray(points, dtype=np.float32))
    if cv2.contourArea(hull) < 1.0:
        return None
    epsilon = 0.005 * cv2.arcLength(hull, True)
    while len(hull) > _REGION_POINTS:
        hull = cv2.approxPolyDP(hull, epsilon, True)
        epsilon *= 2
    size = np.array([max(width, 1), max(height, 1)], dtype=np.float64)
    corners = np.clip(hull.reshape(-1, 2) / size, 0.0, 1.0)
    return tuple((round(float(x), 4), round(float(y), 4)) for x, y in corners)
