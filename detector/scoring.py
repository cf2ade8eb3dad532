"""Stage-2 rerank and the verdict: records for matches and scan results, and the one place
where stage-1 distance and CNN cosine become a score in [0, 1] and a verdict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from detector.config import Settings
from detector.records import COPY, NEAR_DUPLICATE, NONE, Match, Region
from detector.stage1.index import Candidate
from detector.storage.catalog import CatalogEntry


@dataclass(frozen=True)
class Evidence:
    """Stage 3's word on one pair: RANSAC ``inliers`` (None when either image was too smooth
    to judge), and the region that matched in the query image (as the file is, before any
    turn) and in the catalog image, as polygons of fractions of each one's width and height."""

    inliers: int | None
    query_region: Region | None = None
    catalog_region: Region | None = None
    sift_inliers: int | None = None  # SIFT's count, where it was also asked (thorough mode)

    def confirms(self, settings: Settings) -> bool:
        """Whether the keypoints found more than chance agreement."""
        orb = self.inliers is not None and self.inliers > settings.inliers_floor
        return orb or (self.sift_inliers is not None and self.sift_inliers > settings.sift_floor)

    @property
    def refutes(self) -> bool:
        """Whether ORB and SIFT both judged the pair and neither found a single inlier."""
        return self.inliers == 0 and self.sift_inliers == 0


def score(
    hamming: int,
    cosine: float,
    settings: Settings,
    inliers: int | None = None,
    sift_inliers: int | None = None,
    distinct: float | None = None,
) -> float:
    """Confidence that a pair is a copy, in [0, 1]: a weighted mean of the stage-1 similarity
    (1 at distance 0, 0 at ``hamming_ceiling`` bits) and the CNN similarity (0 at
    ``cosine_floor``, 1 at cosine 1); when stage 3 ran (``inliers`` not None), that mean
    weighs ``1 - geo_weight`` and the stage-3 evidence (0 at ``inliers_floor`` RANSAC
    inliers, 1 at ``inliers_full``; or SIFT's, 0 at ``sift_floor`` and 1 at ``sift_full``,
    whichever says more) the rest. A pair stage 3 did not reach counts 0 inliers. Where stage
    3 confirms the pair (more inliers than its floor), its part is at least that mean: a few
    inliers on a blurred or shrunk copy are still evidence for it, never against. With
    ``distinct`` (the pair's cosine less the query's best cosine with another catalog image;
    thorough mode) ``distinct_weight`` times it is added, within [0, 1]."""
    s1 = min(max(1.0 - hamming / settings.hamming_ceiling, 0.0), 1.0)
    s2 = min(max((cosine - settings.cosine_floor) / (1.0 - settings.cosine_floor), 0.0), 1.0)
    w = settings.cnn_weight
    value = w * s2 + (1.0 - w) * s1
    if inliers is not None:
        span = max(settings.inliers_full - settings.inliers_floor, 1)
        s3 = min(max((inliers - settings.inliers_floor) / span, 0.0), 1.0)
        if sift_inliers is not None:
            span = max(settings.sift_full - settings.sift_floor, 1)
            s3 = max(s3, min(max((sift_inliers - settings.sift_floor) / span, 0.0), 1.0))
        if Evidence(inliers, sift_inliers=sift_inliers).confirms(settings):  # weak evidence is still for it
            s3 = max(s3, value)
        value = (1.0 - settings.geo_weight) * value + settings.geo_weight * s3
    if distinct is not None:
        value = min(max(value + settings.distinct_weight * distinct, 0.0), 1.0)
    return value


def _look_alike(
    c: Candidate, found: Evidence, cos: float, distinct: float | None, settings: Settings
) -> bool:
    """Whether stage 3's word leaves a pair no better than a look-alike, whatever stages 1
    and 2 say: only the embedding found it and stage 3 did not confirm it (the CNN alone is
    easily fooled); ORB and SIFT both found not one point in common; or it is too smooth for
    stage 3 to judge and the CNN neither is sure of it nor singles it out from the query's
    other catalog neighbours (smooth blobs look alike to pHash and to the CNN)."""
    if not c.within_radius and not found.confirms(settings):
        return True
    if found.refutes:
        return True
    alike = distinct is not None and distinct < settings.smooth_distinct and cos < settings.smooth_cosine
    return found.inliers is None and alike


def verdict(value: float, settings: Settings) -> str:
    """'copy', 'near-duplicate' or 'none' for a score, from the configured thresholds."""
    if value >= settings.copy_threshold:
        return COPY
    if value >= settings.near_duplicate_threshold:
        return NEAR_DUPLICATE
    return NONE


def rerank(
    candidates: Sequence[Candidate],
    query_vecs: Mapping[int, np.ndarray],
    catalog_vecs: Mapping[int, np.ndarray],
    entries: Mapping[int, CatalogEntry],
    settings: Settings,
    evidence: Mapping[int, Evidence] | None = None,
    cosines: Mapping[int, float] | None = None,
    rivals: Mapping[int, float] | None = None,
) -> tuple[Match, ...]:
    """Score candidates by cosine between the query's descriptor for each candidate
    (``query_vecs[catalog_id]``, (1280,), the query turned as its probe matched) and the
    candidate's stored descriptor; keep those at or above the reported minimum score, best
    first, at most ``top_k``. Candidates whose catalog entry vanished meanwhile are dropped.
    With ``evidence`` (stage 3 ran on this query) a candidate it did not check counts 0
    inliers, and a pair stage 3 leaves no better than a look-alike (see :func:`_look_alike`)
    scores at most ``unconfirmed_cap``. ``cosines``: another cosine for some candidates
    (their catalog image degraded like a blurred query); the higher of the two counts.
    ``rivals``: for some candidates, the query's best cosine with any other catalog image
    that is not the candidate's twin (thorough mode); the candidate's distinctness is its
    cosine less that."""
    matches = []
    for c in candidates:
        vec = catalog_vecs.get(c.catalog_id)
        entry = entries.get(c.catalog_id)
        if vec is None or entry is None:
            continue
        cos = float(np.dot(query_vecs[c.catalog_id], vec))
        if cosines is not None:
            cos = max(cos, cosines.get(c.catalog_id, cos))
        found = None if evidence is None else evidence.get(c.catalog_id, Evidence(0))
        geo = None if found is None else found.inliers
        rival = None if rivals is None else rivals.get(c.catalog_id)
        distinct = None if rival is None else cos - rival
        value = score(c.hamming, cos, settings, geo, None if found is None else found.sift_inliers, distinct)
        if found is not None and _look_alike(c, found, cos, distinct, settings):
            value = min(value, settings.unconfirmed_cap)
        s = round(value, 4)  # the verdict is taken on the shown score
        if s < settings.reported_min_score:
            continue
        matches.append(
            Match(
                catalog_id=c.catalog_id,
                catalog_path=entry.path,
                owner=entry.owner,
                hamming=c.hamming,
                cosine=round(cos, 4),
                score=s,
                verdict=verdict(s, settings),
                transform=c.transform,
                inliers=geo,
                query_region=None if found is None else found.query_region,
                catalog_region=None if found is None else found.catalog_region,
            )
        )
    matches.sort(key=lambda m: (-m.score, m.catalog_id))
    return tuple(matches[: settings.top_k])
