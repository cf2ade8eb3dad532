"""Scoring and verdicts: bounds, monotonicity, thresholds from the one settings table; the
scoring stage on hand-made cases (no model, no image)."""

from __future__ import annotations

import numpy as np
import pytest

from detector.config import Settings, settings_table
from detector.intake.prepare import Prepared
from detector.records import Match
from detector.scan.case import Case
from detector.scoring import ScoringStage, score, verdict
from detector.stage1.index import Candidate
from detector.stage3.verification import Evidence
from detector.storage.catalog import CatalogEntry


def test_score_is_bounded_and_monotonic(settings):
    grid = [(h, c) for h in range(0, 65, 4) for c in np.linspace(-1, 1, 21)]
    values = {(h, c): score(h, c, settings) for h, c in grid}
    assert all(0.0 <= v <= 1.0 for v in values.values())
    assert score(0, 1.0, settings) == 1.0
    assert score(64, 0.0, settings) == 0.0
    for h, c in grid:
        if h + 4 <= 64:
            assert values[(h + 4, c)] <= values[(h, c)]
    assert score(10, 0.9, settings) > score(10, 0.8, settings)


def test_verdict_thresholds(settings):
    assert verdict(settings.copy_threshold, settings) == "copy"
    assert verdict(settings.copy_threshold - 1e-6, settings) == "near-duplicate"
    assert verdict(settings.near_duplicate_threshold, settings) == "near-duplicate"
    assert verdict(settings.near_duplicate_threshold - 1e-6, settings) == "none"
    strict = settings.replace(copy_threshold=0.99)
    assert verdict(0.9, strict) == "near-duplicate"


def test_settings_table_feeds_defaults_and_help():
    table = settings_table()
    names = [n for n, _, _ in table]
    assert "copy_threshold" in names and "radius_phash" in names
    assert all(help_text for _, _, help_text in table)
    assert dict((n, d) for n, d, _ in table)["top_k"] == Settings().top_k


def _entry(i: int) -> CatalogEntry:
    return CatalogEntry(i, f"/c/{i}.jpg", "acme", "0" * 64, 10, 10, 0, 0, "2026-01-01T00:00:00+00:00")


def rerank(cands, query_vecs, vecs, entries, settings, evidence=None, rivals=None) -> tuple[Match, ...]:
    """The scoring stage on a case as stage 2 would leave it: a cosine for each candidate
    whose catalog entry and descriptor exist."""
    cosines = {
        c.catalog_id: float(np.dot(query_vecs[c.catalog_id], vecs[c.catalog_id]))
        for c in cands
        if c.catalog_id in vecs and c.catalog_id in entries
    }
    case = Case(
        Prepared("query.jpg"),
        candidates=tuple(cands),
        embedded=True,
        entries={cid: entries[cid] for cid in cosines},
        cosines=cosines,
        evidence=evidence,
        rivals=rivals,
    )
    ScoringStage(settings).fill([case])
    return case.matches


def test_rerank_orders_filters_and_cuts(settings):
    settings = settings.replace(copy_threshold=0.75, near_duplicate_threshold=0.55)
    q = np.zeros(4, np.float32)
    q[0] = 1
    vecs = {
        i: np.array([c, np.sqrt(1 - c * c), 0, 0], np.float32) for i, c in [(1, 0.99), (2, 0.7), (3, 0.2)]
    }
    cands = [Candidate(3, 0, 0), Candidate(2, 4, 4), Candidate(1, 2, 2), Candidate(9, 0, 0)]
    entries = {i: _entry(i) for i in (1, 2, 3)}
    qv = dict.fromkeys(range(10), q)
    got = rerank(cands, qv, vecs, entries, settings)
    assert [m.catalog_id for m in got] == [1]  # 2 and 3 score under the near-duplicate line
    everything = rerank(cands, qv, vecs, entries, settings.replace(min_score=0.0))
    assert [m.catalog_id for m in everything] == [1, 2, 3]  # 9 vanished from the catalog
    assert [m.score for m in everything] == sorted((m.score for m in everything), reverse=True)
    assert everything[0].verdict == "copy" and everything[-1].verdict == "none"
    assert len(rerank(cands, qv, vecs, entries, settings.replace(min_score=0.0, top_k=2))) == 2


def test_a_pair_only_the_embedding_found_needs_stage_3_to_be_a_copy(settings):
    """Found by the CNN alone (outside the stage-1 radius) and not confirmed by stage 3 (too
    smooth to judge, not checked, or too few inliers): capped under the near-duplicate line.
    Found by stage 1, or confirmed by stage 3, or with stage 3 switched off: scored as
    before."""
    q = np.array([1, 0, 0, 0], np.float32)
    vecs = {1: q.copy()}
    entries = {1: _entry(1)}
    qv = {1: q}
    everything = settings.replace(min_score=0.0)
    far = Candidate(1, 20, 20, within_radius=False)
    near = Candidate(1, 20, 20, within_radius=True)
    for evidence in ({1: Evidence(None)}, {}, {1: Evidence(settings.inliers_floor)}):
        (capped,) = rerank([far], qv, vecs, entries, everything, evidence)
        assert capped.score <= settings.unconfirmed_cap and capped.verdict == "none"
    (kept,) = rerank([near], qv, vecs, entries, everything, {1: Evidence(None)})
    (confirmed,) = rerank([far], qv, vecs, entries, everything, {1: Evidence(80)})
    (no_stage_3,) = rerank([far], qv, vecs, entries, everything)
    assert min(kept.score, confirmed.score, no_stage_3.score) > 2 * settings.unconfirmed_cap  # not capped


def test_a_picture_inside_the_query_counts_only_where_stage_3_shows_it_whole(settings):
    """An inset (a block of the query's layout) close in stage 1 and to the CNN: too smooth
    for stage 3 to judge, or not confirmed, or aligned onto a corner of the catalog image only
    (a flag's canton, a card's corner): capped under the near-duplicate line. Confirmed and
    covering most of the catalog image, or with stage 3 off: scored as the query would be."""
    from detector.stage1.hashing import Transform

    q = np.array([1, 0, 0, 0], np.float32)
    vecs, entries, qv = {1: q.copy()}, {1: _entry(1)}, {1: q}
    # stage 3 weighing under half, so that a pair it does not confirm stays above the cap
    # unless a rule caps it (at the default weight its score falls under the cap anyway)
    everything = settings.replace(min_score=0.0, geo_weight=0.45)
    inset = Candidate(1, 0, 0, Transform(inset=True))
    whole = Candidate(1, 0, 0)
    part = Evidence(80, agreement=1.0, query_coverage=0.9, catalog_coverage=0.3)
    for evidence in (Evidence(None), Evidence(settings.inliers_floor), part):
        (capped,) = rerank([inset], qv, vecs, entries, everything, {1: evidence})
        assert capped.score <= settings.unconfirmed_cap and capped.verdict == "none", evidence
        (as_query,) = rerank([whole], qv, vecs, entries, everything, {1: evidence})
        assert as_query.score > settings.unconfirmed_cap, evidence  # the rule is the inset's own
    shown = Evidence(80, agreement=1.0, query_coverage=0.9, catalog_coverage=0.8)
    (kept,) = rerank([inset], qv, vecs, entries, everything, {1: shown})
    # found by the embedding alone, in an inset: as it is, and still an inset
    far = Candidate(1, 30, 30, Transform("rot90", inset=True), within_radius=False)
    (embedded,) = rerank([far], qv, vecs, entries, everything, {1: shown})
    assert embedded.transform == "identity+inset"
    (no_stage_3,) = rerank([inset], qv, vecs, entries, everything)
    assert kept.verdict == "copy" and no_stage_3.score > 2 * settings.unconfirmed_cap


def test_a_pair_both_keypoint_checks_refute_is_not_a_copy(settings):
    """Close in stage 1 and to the CNN, but ORB and SIFT both judged the pair and found not
    one inlier: a look-alike (another frame of a series), capped under the near-duplicate
    line. One SIFT inlier, or SIFT not asked, leaves the score as it was."""
    q = np.array([1, 0, 0, 0], np.float32)
    vecs, entries, qv = {1: q.copy()}, {1: _entry(1)}, {1: q}
    # as above: 0 ORB inliers alone leave the pair above the cap at this weight
    everything = settings.replace(min_score=0.0, geo_weight=0.45)
    near = Candidate(1, 4, 4, within_radius=True)
    (refuted,) = rerank([near], qv, vecs, entries, everything, {1: Evidence(0, sift_inliers=0)})
    assert refuted.score <= settings.unconfirmed_cap and refuted.verdict == "none"
    for evidence in (Evidence(0, sift_inliers=1), Evidence(0), Evidence(None, sift_inliers=0)):
        (kept,) = rerank([near], qv, vecs, entries, everything, {1: evidence})
        assert kept.score > settings.unconfirmed_cap, evidence


def test_stage_3_that_confirms_a_pair_never_lowers_its_score(settings):
    """A blurred copy keeps a few inliers, more than chance: stage 3 then lifts the score or
    leaves it, where before it pulled a strong stage-1 match down. At or under the floor it
    still weighs against the pair; many inliers lift it."""
    base = score(2, 0.65, settings)
    floor = settings.inliers_floor
    assert score(2, 0.65, settings, floor + 1) == pytest.approx(base)
    assert score(2, 0.65, settings, 0, sift_inliers=settings.sift_floor + 1) == pytest.approx(base)
    assert score(2, 0.65, settings, floor) < base
    assert score(2, 0.65, settings, 0, sift_inliers=settings.sift_floor) < base
    assert score(2, 0.65, settings, settings.inliers_full) > base
    few, many = (score(30, 0.6, settings, n) for n in (floor + 6, settings.inliers_full))
    assert score(30, 0.6, settings) < few < many  # a weak pair gains from more evidence


def test_a_pair_too_smooth_to_judge_must_stand_out_from_its_rivals(settings):
    """Stage 3 abstained (too few keypoints): a smooth blob that the CNN finds only fairly
    close (cosine 0.75), barely above the best other catalog image, is capped under the
    near-duplicate line; one that stands ``smooth_distinct`` above it, that the CNN is sure
    of (cosine 0.85), or with no rival measured (fast mode) is not."""
    q = np.array([1, 0, 0, 0], np.float32)
    entries = {1: _entry(1)}
    everything = settings.replace(min_score=0.0)
    near = Candidate(1, 2, 2, within_radius=True)
    smooth = {1: Evidence(None)}

    def scored(cos: float, evidence: dict, rivals: dict | None) -> Match:
        vecs = {1: np.array([cos, np.sqrt(1 - cos * cos), 0, 0], np.float32)}
        (m,) = rerank([near], {1: q}, vecs, entries, everything, evidence, rivals=rivals)
        return m

    alike = scored(0.75, smooth, {1: 0.7})
    assert alike.score == settings.unconfirmed_cap and alike.verdict == "none"
    kept = [
        scored(0.75, smooth, {1: 0.75 - settings.smooth_distinct - 0.01}),  # stands out
        scored(0.85, smooth, {1: 0.84}),  # the CNN is sure
        scored(0.75, smooth, None),  # fast mode
        scored(0.75, {1: Evidence(40)}, {1: 0.7}),  # stage 3 judged it
    ]
    assert all(m.score > 1.5 * settings.unconfirmed_cap for m in kept), kept  # not capped


def _judged(cid: int, score: float, agreement: float | None, region, settings) -> Match:
    return Match(
        cid,
        f"/c/{cid}.jpg",
        None,
        2,
        0.9,
        score,
        verdict(score, settings),
        "identity",
        None if agreement is None else 200,
        region,
        region,
        agreement,
        1.0,
        1.0,
    )


def test_a_part_of_the_query_copies_the_catalog_picture_it_agrees_with_best(settings):
    """A look-alike of a deck (aligned on the shared frame, agreeing everywhere but the face)
    scores at most unconfirmed_cap where a better match agrees clearly more over the same part
    of the query; a catalog duplicate (agreeing alike), a match elsewhere in the query (a
    collage's other cell), one stage 3 did not align and one already outranked keep theirs."""
    from detector.scoring import outranked

    whole = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))
    most = ((0.05, 0.0), (1.0, 0.05), (0.95, 1.0), (0.0, 0.9))
    left = ((0.0, 0.0), (0.45, 0.0), (0.45, 1.0), (0.0, 1.0))
    found = [
        _judged(1, 0.96, 1.0, whole, settings),  # the original
        _judged(2, 0.95, 0.99, most, settings),  # its duplicate in the catalog
        _judged(3, 0.90, 0.94, most, settings),  # another card of the deck
        _judged(4, 0.88, 0.90, left, settings),  # another picture, in the left cell
        _judged(5, 0.86, None, None, settings),  # not aligned by stage 3
    ]
    got = {m.catalog_id: m for m in outranked(found, settings)}
    assert got[3].score == settings.unconfirmed_cap and got[3].verdict == "none"
    assert [got[i] for i in (1, 2, 4, 5)] == [found[0], found[1], found[3], found[4]]
    assert outranked(found, settings.replace(outranked_agreement=2.0)) == found
    # a better match agreeing on less than 98 % (a blurred copy's agreement varies by a few
    # hundredths from one catalogued version of a picture to another) outranks nothing
    loose = [_judged(1, 0.96, 0.96, whole, settings), _judged(2, 0.9, 0.9, whole, settings)]
    assert outranked(loose, settings) == loose
    # a match outranked itself does not outrank the next one down
    chain = [
        _judged(1, 0.96, 1.0, whole, settings),
        _judged(2, 0.9, 0.95, whole, settings),
        _judged(3, 0.85, 0.99, whole, settings),
        _judged(4, 0.84, 0.9, whole, settings),
    ]
    got = outranked(chain, settings)
    assert [m.score for m in got] == [0.96, settings.unconfirmed_cap, 0.85, settings.unconfirmed_cap]
