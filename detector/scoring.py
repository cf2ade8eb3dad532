"""The verdict: the one place where what the stages found becomes a score in [0, 1] and a
verdict, once per candidate, at the end of the chain."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from detector.config import Settings
from detector.records import COPY, NEAR_DUPLICATE, NONE, Match, Region
from detector.stage1.hashing import Transform
from detector.stage1.index import Candidate
from detector.stage2.descriptors import similarity
from detector.stage3.verification import Evidence
from detector.storage.catalog import CatalogEntry

if TYPE_CHECKING:
    from detector.scan.case import Case


def score(
    hamming: int,
    cosine: float,
    settings: Settings,
    inliers: int | None = None,
    sift_inliers: int | None = None,
    distinct: float | None = None,
) -> float:
    """Confidence that a pair is a copy, in [0, 1]: the stages-1-2 :func:`similarity`; when
    stage 3 ran (``inliers`` not None), that weighs ``1 - geo_weight`` and the stage-3
    evidence (0 at ``inliers_floor`` RANSAC inliers, 1 at ``inliers_full``; or SIFT's, 0 at
    ``sift_floor`` and 1 at ``sift_full``, whichever says more) the rest. A pair stage 3 did
    not reach counts 0 inliers. Where stage 3 confirms the pair (more inliers than its floor),
    its part is at least that similarity: a few inliers on a blurred or shrunk copy are still
    evidence for it, never against. With ``distinct`` (the pair's cosine less the query's best
    cosine with another catalog image; thorough mode) ``distinct_weight`` times it is added,
    within [0, 1]."""
    value = similarity(hamming, cosine, settings)
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


def look_alike(
    c: Candidate, found: Evidence, cosine: float, distinct: float | None, settings: Settings
) -> bool:
    """Whether stage 3's word leaves a pair no better than a look-alike, whatever stages 1
    and 2 say: only the embedding found it and stage 3 did not confirm it (the CNN alone is
    easily fooled); it was found inside the query (an inset) and stage 3 does not show it
    whole (:func:`_inset_shown`); ORB and SIFT both found not one point in common; the images aligned by
    stage 3's map disagree on too much of their overlap (they share a template, not a
    picture); or it is too smooth for
    stage 3 to judge and the CNN neither is sure of it nor singles it out from the query's
    other catalog neighbours (smooth blobs look alike to pHash and to the CNN)."""
    if not c.within_radius and not found.confirms(settings):
        return True
    if c.transform.inset and not _inset_shown(found, settings):
        return True
    if found.refutes or found.disagrees(settings):
        return True
    alike = distinct is not None and distinct < settings.smooth_distinct and cosine < settings.smooth_cosine
    return found.inliers is None and alike


def _inset_shown(found: Evidence, settings: Settings) -> bool:
    """Whether stage 3 shows a picture found inside the query to be the catalog image: it
    confirms the pair, and where it aligned them, the overlap covers ``inset_coverage`` of the
    catalog image. An inset is a guess at the query's layout: codes and the CNN alone, on a
    small or plain block, meet look-alikes by chance."""
    if not found.confirms(settings):
        return False
    return found.catalog_coverage is None or found.catalog_coverage >= settings.inset_coverage


def verdict(value: float, settings: Settings) -> str:
    """'copy', 'near-duplicate' or 'none' for a score, from the configured thresholds."""
    if value >= settings.copy_threshold:
        return COPY
    if value >= settings.near_duplicate_threshold:
        return NEAR_DUPLICATE
    return NONE


def judge(
    c: Candidate,
    cosine: float,
    entry: CatalogEntry,
    settings: Settings,
    evidence: Evidence | None = None,
    rival: float | None = None,
) -> Match:
    """One candidate's match: its score from the stages' evidence (``evidence`` None when stage
    3 did not run on the query; ``rival`` the query's best cosine with another catalog image
    that is not the candidate's twin, thorough mode), multiplied by the share of the aligned
    overlap that agrees to the power ``agree_power`` where stage 3 compared it, capped at
    ``unconfirmed_cap`` for a :func:`look_alike`, and the verdict taken on the score as shown
    (4 decimals)."""
    distinct = None if rival is None else cosine - rival
    inliers = None if evidence is None else evidence.inliers
    sift = None if evidence is None else evidence.sift_inliers
    value = score(c.hamming, cosine, settings, inliers, sift, distinct)
    if evidence is not None and evidence.agreement is not None:
        value *= evidence.agreement**settings.agree_power  # what does not agree is not copied
    if evidence is not None and look_alike(c, evidence, cosine, distinct, settings):
        value = min(value, settings.unconfirmed_cap)
    shown = round(value, 4)
    return Match(
        catalog_id=c.catalog_id,
        catalog_path=entry.path,
        owner=entry.owner,
        hamming=c.hamming,
        cosine=round(cosine, 4),
        score=shown,
        verdict=verdict(shown, settings),
        transform=str(_transform(c, evidence)),
        inliers=inliers,
        query_region=None if evidence is None else evidence.query_region,
        catalog_region=None if evidence is None else evidence.catalog_region,
        agreement=None if evidence is None else evidence.agreement,
        query_coverage=None if evidence is None else evidence.query_coverage,
        catalog_coverage=None if evidence is None else evidence.catalog_coverage,
        disagreement=() if evidence is None else evidence.disagreement,
    )


def _transform(c: Candidate, evidence: Evidence | None) -> Transform:
    """How the query was turned to match ``c``: as its probe matched (a candidate only the
    embedding found: as it is, its closest probe being chance, though still an inset where it
    was found in one), or as stage 3 matched it."""
    found = c.transform if c.within_radius else Transform(inset=c.transform.inset)
    if evidence is not None and evidence.turn is not None:
        return found.turned(evidence.turn)
    return found


class ScoringStage:
    """The end of the chain: sets ``case.matches``, every candidate with a cosine judged once,
    those at or above the reported minimum score kept, best first, at most ``top_k``. With
    evidence, a candidate stage 3 did not check counts 0 inliers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def fill(self, cases: Sequence[Case]) -> None:
        for case in cases:
            if case.embedded:
                case.matches = self.matches(case)

    def matches(self, case: Case) -> tuple[Match, ...]:
        s = self.settings
        found = []
        for c in case.candidates:
            cosine = case.cosines.get(c.catalog_id)
            if cosine is None:
                continue
            evidence = None if case.evidence is None else case.evidence.get(c.catalog_id, Evidence(0))
            rival = None if case.rivals is None else case.rivals.get(c.catalog_id)
            found.append(judge(c, cosine, case.entries[c.catalog_id], s, evidence, rival))
        kept = [m for m in outranked(found, s) if m.score >= s.reported_min_score]
        kept.sort(key=lambda m: (-m.score, m.catalog_id))
        return tuple(kept[: s.top_k])


def outranked(matches: Sequence[Match], settings: Settings) -> list[Match]:
    """A query's matches, each scoring at most ``unconfirmed_cap`` (verdict retaken) where a
    better-scoring match that stage 3 aligned shows the same part of the query (their query
    regions' bounding boxes overlap by at least half their union), agrees on 98 % of its
    overlap at least and on at least ``outranked_agreement`` more than it. A copy of one card
    of a deck aligns with the deck's other cards on their shared frame and pips, and agrees
    with them everywhere but the card's own face: that part of the query copies the one it
    agrees with best. Matches in other parts of the query (a collage's other cells) and
    catalog duplicates (which agree alike, or where the better one does not agree whole: a
    blurred copy's agreement varies by a few hundredths) keep their scores; a match already
    outranked outranks nothing."""
    order = sorted(range(len(matches)), key=lambda i: -matches[i].score)
    out = list(matches)
    standing: list[Match] = []
    for i in order:
        m = matches[i]
        if any(_outranks(b, m, settings) for b in standing):
            if m.score > settings.unconfirmed_cap:
                shown = round(settings.unconfirmed_cap, 4)
                out[i] = dataclasses.replace(m, score=shown, verdict=verdict(shown, settings))
        else:
            standing.append(m)
    return out


def _outranks(better: Match, m: Match, settings: Settings) -> bool:
    if better.score <= m.score or better.agreement is None or m.agreement is None:
        return False
    if better.agreement < _WHOLE:  # agreement measured on a blurred copy varies by a few hundredths
        return False
    if better.agreement - m.agreement < settings.outranked_agreement:
        return False
    return _box_overlap(better.query_region, m.query_region) >= _SAME_PART


_SAME_PART = 0.5  # query regions' bounding boxes overlapping by this share of their union
_WHOLE = 0.98  # the better match agrees on this share of its overlap at least: it shows it whole


def _box_overlap(a: Region | None, b: Region | None) -> float:
    """Intersection over union of two regions' bounding boxes (0 where either is missing)."""
    if not a or not b:
        return 0.0
    (ax0, ay0), (ax1, ay1) = _box(a)
    (bx0, by0), (bx1, by1) = _box(b)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def _box(region: Region) -> tuple[tuple[float, float], tuple[float, float]]:
    xs, ys = [p[0] for p in region], [p[1] for p in region]
    return (min(xs), min(ys)), (max(xs), max(ys))
