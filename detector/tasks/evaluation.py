"""``copyscan evaluate``: attack the catalog, scan the attacked copies mixed with distractors,
and measure what a user cares about: micro average precision, recall at 99 % and 95 %
precision (overall and per attack family), and how often the CNN had to run.

The protocol:
- a sample of catalog images is attacked, one copy per family each (the positives; each
  has exactly one true catalog image);
- distractors are never in the searched catalog: files the user gives, and/or held-out
  catalog images, attacked the same way as the positives so that "looks attacked" is no clue;
  held-out images are hidden from the index and from the embedding matrix for the run;
- every reported (query, catalog image, score) pair is a prediction; a pair is correct when
  the catalog image is the one the query was made from. Precision and recall are over pairs
  (recall's denominator is the number of positives), as in the DISC21 copy-detection
  benchmark's micro average precision.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from detector.config import FAST, Settings
from detector.errors import ImageError
from detector.intake.loader import load_image
from detector.intake.workers import prepared_batches
from detector.records import ScanResult
from detector.scan.scanner import Scanner
from detector.stage2.embedding import Models
from detector.storage.catalog import CatalogEntry
from detector.storage.store import Store
from detector.tasks.attacks import AMONG_OTHERS, FAMILIES, attack
from detector.tasks.pages import RenderFailed

QUERY_QUALITY = 90  # attacked copies are written as JPEG, as crawled images mostly are


@dataclass(frozen=True)
class EvalQuery:
    """One query image of an evaluation: ``catalog_id`` is the catalog image it copies (None
    for a distractor); ``family`` and ``attack`` say what was done to it ('' for a distractor
    file used as it is)."""

    path: str
    catalog_id: int | None
    family: str
    attack: str


@dataclass(frozen=True)
class QuerySet:
    """The queries of an evaluation and the catalog ids hidden from the search."""

    queries: tuple[EvalQuery, ...]
    held_out: frozenset[int]
    skipped: tuple[str, ...]  # catalog images (or one page of one) that could not be made, and why


@dataclass(frozen=True)
class FamilyFigures:
    """Recall of one attack family at the overall operating points, and the share of its
    copies whose true catalog image reached stage 2 at all."""

    family: str
    copies: int
    recall_at_99: float
    recall_at_95: float
    candidate_recall: float


@dataclass(frozen=True)
class Evaluation:
    """The figures of one mode. Thresholds are the lowest scores at which the precision is
    still at least 99 % (95 %); None when no threshold reaches it."""

    mode: str
    copies: int
    distractors: int
    errors: int
    micro_ap: float
    recall_at_99: float
    threshold_99: float | None
    recall_at_95: float
    threshold_95: float | None
    candidate_recall: float
    cnn_share_copies: float
    cnn_share_distractors: float
    seconds: float
    families: tuple[FamilyFigures, ...]
    copy_precision: float | None = None  # of the pairs given the default 'copy' verdict
    copy_recall: float = 0.0  # copies whose true catalog image got the 'copy' verdict
    flagged_distractors: float = 0.0  # distractors with some copy or near-duplicate verdict


# --- metrics over predictions ------------------------------------------------------------


def precision_recall(
    scores: np.ndarray, correct: np.ndarray, positives: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score, highest score first.

    ``scores``: (n,) float predictions; ``correct``: (n,) bool; ``positives``: the number of
    true pairs (recall's denominator). Returns ``(thresholds, precision, recall)``, each (m,),
    where row k counts every prediction scoring at least ``thresholds[k]`` (ties together).
    """
    if positives <= 0:
        raise ValueError("positives must be at least 1")
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    tp = np.cumsum(correct[order])
    # the last index of each run of equal scores: ties are accepted or refused together
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True]) if len(s) else np.zeros(0, dtype=np.int64)
    tp_at = tp[last].astype(np.float64)
    n_at = (last + 1).astype(np.float64)
    return s[last], tp_at / n_at, tp_at / positives


def micro_average_precision(scores: np.ndarray, correct: np.ndarray, positives: int) -> float:
    """Area under the precision-recall curve of all predictions pooled: the sum over score
    levels of precision times the recall gained there."""
    _, precision, recall = precision_recall(scores, correct, positives)
    if not len(recall):
        return 0.0
    gained = np.diff(np.r_[0.0, recall])
    return float(np.sum(precision * gained))


def recall_at_precision(
    scores: np.ndarray, correct: np.ndarray, positives: int, precision: float
) -> tuple[float, float | None]:
    """The highest recall reachable with precision at least ``precision``, and the lowest
    score threshold that gives it (None, and recall 0, when none does)."""
    thresholds, p, r = precision_recall(scores, correct, positives)
    ok = np.flatnonzero(p >= precision)
    if not ok.size:
        return 0.0, None
    best = ok[np.argmax(r[ok])]
    return float(r[best]), float(thresholds[best])


# --- building the queries ----------------------------------------------------------------


def build_queries(
    store: Store,
    settings: Settings,
    dest: Path,
    *,
    sample: int,
    held_out: int,
    distractor_paths: Sequence[str] = (),
    families: Sequence[str] = FAMILIES,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    chosen_ids: Sequence[int] | None = None,
) -> QuerySet:
    """Write attacked copies of ``sample`` catalog images (one per family each) and of
    ``held_out`` other catalog images (the hidden distractors) into ``dest`` as JPEG files;
    the files in ``distractor_paths`` join as they are. Catalog images that cannot be read
    any more are skipped and listed. ``progress`` is called with 1 per catalog image done.
    ``chosen_ids``: the catalog images to attack, the ``sample`` first, then the
    ``held_out`` (default: drawn by the seed), so that families added later attack the same
    images as an earlier query set whatever was catalogued since."""
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown attack families: {', '.join(unknown)}")
    if chosen_ids is None:
        rng = np.random.default_rng(seed)
        entries = list(store.catalog.list())
        order = rng.permutation(len(entries))
        chosen = [entries[i] for i in order[: sample + held_out]]
    else:
        found = store.catalog.entries(list(chosen_ids))
        chosen = [found[cid] for cid in chosen_ids if cid in found]
    hidden = {e.id for e in chosen[sample:]}
    dest.mkdir(parents=True, exist_ok=True)
    queries: list[EvalQuery] = []
    skipped: list[str] = []
    pool = _others(chosen[sample:], settings) if set(families) & set(AMONG_OTHERS) else {}
    for n, entry in enumerate(chosen):
        try:
            # Copies are made from the whole picture, as a copier would, not from the
            # smaller decode the stages work on.
            rgb = load_image(entry.path, settings.replace(decode_side=0)).rgb
        except ImageError as e:
            skipped.append(f"{entry.path}: {type(e).__name__}: {e}")
            hidden.discard(entry.id)
            continue
        others = [picture for cid, picture in pool.items() if cid != entry.id]
        for family in families:
            rng = np.random.default_rng([seed, entry.id, FAMILIES.index(family)])
            try:
                attacked = attack(rgb, family, rng, others)
            except RenderFailed as e:  # this page only: the other families and images go on
                skipped.append(f"{entry.path}: {family}: {e}")
                continue
            path = dest / f"{'copy' if entry.id not in hidden else 'other'}-{n:05d}-{family}.jpg"
            Image.fromarray(attacked.rgb).save(path, quality=QUERY_QUALITY)
            truth = None if entry.id in hidden else entry.id
            queries.append(EvalQuery(str(path), truth, family, attacked.name))
        if progress is not None:
            progress(1)
    queries.extend(EvalQuery(str(p), None, "", "") for p in distractor_paths)
    return QuerySet(tuple(queries), frozenset(hidden), tuple(skipped))


_POOL = 12  # hidden catalog images shown beside the copies in pages and collages
_POOL_SIDE = 640  # at most this many pixels on their longer side


def _others(hidden: Sequence[CatalogEntry], settings: Settings) -> dict[int, np.ndarray]:
    """Pictures to show beside a copy in a page or a collage (:data:`AMONG_OTHERS`): the first
    readable hidden catalog images, which copy nothing searched, by catalog id."""
    out: dict[int, np.ndarray] = {}
    for entry in hidden:
        if len(out) >= _POOL:
            break
        try:
            rgb = load_image(entry.path, settings.replace(decode_side=0)).rgb
        except ImageError:
            continue
        h, w = rgb.shape[:2]
        k = min(1.0, _POOL_SIDE / max(h, w))
        if k < 1.0:
            rgb = cv2.resize(rgb, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)
        out[entry.id] = rgb
    return out


# --- running ------------------------------------------------------------------------------


def evaluate(
    store: Store,
    models: Models,
    settings: Settings,
    query_set: QuerySet,
    modes: Sequence[str] = (FAST,),
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Evaluation], dict[str, list[tuple[float, bool]]]]:
    """Scan every query in each mode (each batch is decoded once for all modes) and measure.
    Returns the figures per mode and, per mode, every prediction as (score, correct), which
    :func:`calibrate` turns into thresholds."""
    everything = settings.replace(min_score=0.0, top_k=max(settings.top_k, 5))
    scanners = {m: Scanner(store, models, everything, mode=m, exclude=query_set.held_out) for m in modes}
    results: dict[str, list[ScanResult]] = {m: [] for m in modes}
    seconds = dict.fromkeys(modes, 0.0)
    paths = [q.path for q in query_set.queries]
    for prepared in prepared_batches(paths, settings):
        for m, scanner in scanners.items():
            t0 = time.perf_counter()
            results[m].extend(scanner.scan_prepared(prepared))
            seconds[m] += time.perf_counter() - t0
        if progress is not None:
            progress(len(prepared))
    figures = []
    pairs: dict[str, list[tuple[float, bool]]] = {}
    for m in modes:
        fig, pairs[m] = measure(m, query_set.queries, results[m], seconds[m])
        figures.append(fig)
    return figures, pairs


def measure(
    mode: str, queries: Sequence[EvalQuery], results: Sequence[ScanResult], seconds: float
) -> tuple[Evaluation, list[tuple[float, bool]]]:
    """The figures of one mode's results for the queries (in the same order), and every
    prediction as (score, correct)."""
    preds: list[tuple[float, bool]] = []
    hit_score: list[float] = []  # per copy: the score of its true match, -1 if never reported
    found: list[bool] = []  # per copy: its true catalog image reached stage 2
    copy_family: list[str] = []
    cnn_copies = cnn_others = copies = others = errors = 0
    verdict_copy = verdict_copy_right = copies_called = flagged_others = 0
    for q, r in zip(queries, results, strict=True):
        if r.status != "ok":
            errors += 1
            continue
        verdict_copy += sum(m.verdict == "copy" for m in r.matches)
        verdict_copy_right += sum(m.verdict == "copy" and m.catalog_id == q.catalog_id for m in r.matches)
        if q.catalog_id is None:
            others += 1
            cnn_others += r.embedded
            flagged_others += r.flagged
        else:
            copies += 1
            cnn_copies += r.embedded
            copy_family.append(q.family)
            true = [m.score for m in r.matches if m.catalog_id == q.catalog_id]
            copies_called += any(m.verdict == "copy" and m.catalog_id == q.catalog_id for m in r.matches)
            hit_score.append(true[0] if true else -1.0)
            found.append(bool(true))
        preds.extend((m.score, m.catalog_id == q.catalog_id) for m in r.matches)
    scores = np.array([p[0] for p in preds], dtype=np.float64)
    correct = np.array([p[1] for p in preds], dtype=bool)
    positives = max(copies, 1)
    r99, t99 = recall_at_precision(scores, correct, positives, 0.99)
    r95, t95 = recall_at_precision(scores, correct, positives, 0.95)
    hits = np.array(hit_score)
    fams = np.array(copy_family)
    families = []
    for family in dict.fromkeys(copy_family):
        sel = fams == family
        families.append(
            FamilyFigures(
                family=family,
                copies=int(sel.sum()),
                recall_at_99=_share(hits[sel], t99),
                recall_at_95=_share(hits[sel], t95),
                candidate_recall=float(np.mean(np.array(found)[sel])),
            )
        )
    return (
        Evaluation(
            mode=mode,
            copies=copies,
            distractors=others,
            errors=errors,
            micro_ap=micro_average_precision(scores, correct, positives),
            recall_at_99=r99,
            threshold_99=t99,
            recall_at_95=r95,
            threshold_95=t95,
            candidate_recall=float(np.mean(found)) if found else 0.0,
            cnn_share_copies=cnn_copies / copies if copies else 0.0,
            cnn_share_distractors=cnn_others / others if others else 0.0,
            seconds=seconds,
            families=tuple(families),
            copy_precision=verdict_copy_right / verdict_copy if verdict_copy else None,
            copy_recall=copies_called / copies if copies else 0.0,
            flagged_distractors=flagged_others / others if others else 0.0,
        ),
        preds,
    )


def _share(hits: np.ndarray, threshold: float | None) -> float:
    """The share of copies whose true match scored at least ``threshold``."""
    if threshold is None or not hits.size:
        return 0.0
    return float(np.mean(hits >= threshold))


# --- calibration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """Thresholds measured to give the asked precisions on an evaluation. ``copy_pairs`` and
    ``near_duplicate_pairs``: the predictions at or above each threshold; ``wrong_pairs``: the
    predictions of a wrong catalog image, all scores; ``warnings``: why the thresholds should
    not be trusted (empty when the evaluation was large enough to show the precisions)."""

    copy_threshold: float
    near_duplicate_threshold: float
    copy_precision: float
    near_duplicate_precision: float
    recall_copy: float
    recall_near_duplicate: float
    copy_pairs: int = 0
    near_duplicate_pairs: int = 0
    wrong_pairs: int = 0
    warnings: tuple[str, ...] = ()


def least_pairs(precision: float) -> int:
    """The fewest pairs that can show a precision, by the rule of three: when none of n pairs
    is wrong, the wrong share is below 3/n at 95 % confidence, so showing ``precision`` takes
    n >= 3 / (1 - precision): 300 pairs for 99 %, 60 for 95 % (3,000 at most, for 99.9 % and
    above, which no evaluation of this size shows)."""
    return math.ceil(round(3 / max(1.0 - precision, 0.001), 6))


def calibrate(
    predictions: Iterable[tuple[float, bool]],
    positives: int,
    copy_precision: float = 0.99,
    near_duplicate_precision: float = 0.95,
) -> Calibration | None:
    """The lowest thresholds whose precision reaches the asked levels; None when the copy
    level cannot be reached on this evaluation. The calibration says why it is unreliable
    (``warnings``) when too few pairs reach a threshold or too few wrong pairs were measured
    to show the asked precision (:func:`least_pairs`), or when the near-duplicate threshold
    collapses onto the copy threshold (no pair would ever be called a near-duplicate)."""
    preds = list(predictions)
    scores = np.array([p[0] for p in preds], dtype=np.float64)
    correct = np.array([p[1] for p in preds], dtype=bool)
    rc, tc = recall_at_precision(scores, correct, positives, copy_precision)
    rn, tn = recall_at_precision(scores, correct, positives, near_duplicate_precision)
    if tc is None:
        return None
    if tn is None or tn > tc:
        tn, rn = tc, rc
    copy_pairs = int(np.sum(scores >= tc))
    near_pairs = int(np.sum(scores >= tn))
    wrong = int(np.sum(~correct))
    warnings = []
    for what, pairs, precision in (
        ("the copy threshold", copy_pairs, copy_precision),
        ("the near-duplicate threshold", near_pairs, near_duplicate_precision),
    ):
        if pairs < least_pairs(precision):
            warnings.append(
                f"only {pairs} pairs score at or above {what}: showing {precision:.0%} precision "
                f"takes at least {least_pairs(precision)}; evaluate more attacked copies"
            )
    if wrong < least_pairs(copy_precision):
        warnings.append(
            f"only {wrong} wrong pairs were measured: where look-alikes start to score is known "
            f"only from at least {least_pairs(copy_precision)}; evaluate more distractors"
        )
    if tn >= tc:
        warnings.append(
            f"the near-duplicate threshold equals the copy threshold ({tc:.4f}): no pair will be "
            f"called a near-duplicate (no lower score found more copies at {near_duplicate_precision:.0%} "
            "precision)"
        )
    return Calibration(
        tc,
        tn,
        copy_precision,
        near_duplicate_precision,
        rc,
        rn,
        copy_pairs,
        near_pairs,
        wrong,
        tuple(warnings),
    )
