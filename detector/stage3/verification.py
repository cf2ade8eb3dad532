"""Stage 3 as a stage of the chain: the best candidates of each query checked geometrically.

The query's best ``verify_top`` candidates by stages 1 and 2 (those at least
``verify_floor``) are matched with ORB keypoints and an affine RANSAC
(:mod:`detector.stage3.keypoints`), the query turned the way its probe matched, and mirrored
too where that fails, or fits but the aligned images disagree, and the CNN finds the pair close
(``mirror_cosine``). In thorough
mode a candidate the CNN finds close (``inverted_cosine``) but ORB does not confirm is also
matched with the query's grey image inverted (a colour-inverted copy), and where ORB leaves
one of the best ``sift_top`` short of ``inliers_full`` SIFT's inliers are counted too; a
blurred query's SIFT keypoints also meet those of the catalog image degraded alike.

A batch's queries are checked side by side in ``verify_threads`` threads: OpenCV's keypoints,
matching and RANSAC run outside Python's lock, each query's evidence depends only on it and
its candidates, and the shared caches hold values that are the same whichever thread computed
them, so the evidence is the same with any number of threads. (On this project's 2-core
machine stage 3 was most of a thorough scan's time while the intake workers waited on it.)"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import cv2
import numpy as np

from detector.config import THOROUGH, Settings
from detector.intake.catalog_images import CatalogImages
from detector.intake.workers import usable_cpus
from detector.lru import LRU
from detector.records import Region
from detector.stage1.hashing import dihedral_image, mirrored, undo_dihedral_points
from detector.stage2.descriptors import ranked
from detector.stage2.embedding import degraded
from detector.stage3.agreement import Agreement, compare
from detector.stage3.keypoints import Features, Verification, features, sift_features, verify, verify_grey

if TYPE_CHECKING:
    from detector.scan.case import Case

Extract = Callable[[np.ndarray, Settings], Features]  # features or sift_features
_ORB_CACHE = 2048  # catalog images whose ORB keypoints are kept (about 40 kB each)
_SIFT_CACHE = 2048  # and SIFT keypoints of catalog images, some also degraded (about 70 kB each)


@dataclass(frozen=True)
class Evidence:
    """Stage 3's word on one pair: RANSAC ``inliers`` (None when either image was too smooth
    to judge), and the region that matched in the query image (as the file is, before any
    turn) and in the catalog image, as polygons of fractions of each one's width and height."""

    inliers: int | None
    query_region: Region | None = None
    catalog_region: Region | None = None
    sift_inliers: int | None = None  # SIFT's count, where it was also asked (thorough mode)
    agreement: float | None = None  # the aligned overlap's share that agrees (see stage3.agreement)
    query_coverage: float | None = None  # the overlap's share of the query
    catalog_coverage: float | None = None  # and of the catalog image
    disagreement: tuple[Region, ...] = ()  # where the query disagrees (as its file is)
    turn: str | None = None  # the turn the keypoints matched in, where not the candidate's own

    def confirms(self, settings: Settings) -> bool:
        """Whether the keypoints found more than chance agreement."""
        orb = self.inliers is not None and self.inliers > settings.inliers_floor
        return orb or (self.sift_inliers is not None and self.sift_inliers > settings.sift_floor)

    @property
    def refutes(self) -> bool:
        """Whether ORB and SIFT both judged the pair and neither found a single inlier."""
        return self.inliers == 0 and self.sift_inliers == 0

    def disagrees(self, settings: Settings) -> bool:
        """Whether the aligned images differ on too much of their overlap for a copy (a
        look-alike that shares only its template)."""
        return self.agreement is not None and self.agreement < settings.agree_floor


class VerificationStage:
    """Stage 3: sets ``case.evidence`` (by catalog id) of each case the CNN ran on, when
    ``verify`` is on. Evidence stays None as a whole when no checked catalog image could be
    read (stage 3 then has no say); a candidate it did not check counts 0 inliers."""

    def __init__(self, settings: Settings, mode: str, images: CatalogImages) -> None:
        self.settings = settings
        self.thorough = mode == THOROUGH
        self.images = images
        self._orb: LRU[Features | None] = LRU(_ORB_CACHE)
        self._sift: LRU[Features | None] = LRU(_SIFT_CACHE)

    def fill(self, cases: Sequence[Case]) -> None:
        if not self.settings.verify:
            return
        todo = [case for case in cases if case.embedded]
        threads = min(self.settings.verify_threads or usable_cpus(), len(todo))
        if threads <= 1:
            for case in todo:
                case.evidence = self._verify(case)
            return
        pool = ThreadPoolExecutor(threads, thread_name_prefix="stage3")
        try:
            for case, evidence in zip(todo, pool.map(self._verify, todo), strict=True):
                case.evidence = evidence
        finally:  # a failure (or a signal) leaves the queries not yet started unchecked
            pool.shutdown(wait=True, cancel_futures=True)

    def _verify(self, case: Case) -> dict[int, Evidence] | None:
        s = self.settings
        chosen = [c for value, c in ranked(case, s)[: s.verify_top] if value >= s.verify_floor]
        grey = case.query.grey
        if grey is None:
            return None
        query = _QueryKeypoints(grey, s)
        out: dict[int, Evidence] = {}
        for rank, c in enumerate(chosen):
            cid, path = c.catalog_id, case.entries[c.catalog_id].path
            catalog = self.catalog_keypoints(cid, path)
            if catalog is None:
                continue
            orb = verify(query.orb(c.turn), catalog, s)
            if orb.keypoints < s.min_keypoints:
                out[cid] = Evidence(None)
                continue
            cosine = round(case.cosines[cid], 4)
            orb, turn, inverted = self._other_ways(orb, query, c.turn, catalog, cosine)
            sift = None
            if self.thorough and s.sift and rank < s.sift_top and orb.inliers < s.inliers_full:
                sift = self._sift_verification(query, turn, cid, path, case.blurred)
            found = self._evidence(orb, sift, query, turn, inverted, cid, path)
            if found.disagrees(s) and turn == c.turn and cosine >= s.mirror_cosine:
                found, turn = self._mirrored_if_it_agrees(found, query, turn, catalog, cid, path)
            out[cid] = dataclasses.replace(found, turn=turn if turn != c.turn else None)
        if chosen and not out:
            return None
        return out

    def _other_ways(
        self, orb: Verification, query: _QueryKeypoints, turn: str, catalog: Features, cosine: float
    ) -> tuple[Verification, str, bool]:
        """ORB's match in the turn the probe found (``orb``) or, where that fails and the CNN
        finds the pair close, mirrored (``mirror_cosine``: a mirrored copy the CNN found, blind
        to mirrors as it nearly is) and in thorough mode inverted (``inverted_cosine``: a
        colour-inverted copy, whose keypoints match the original's only once inverted back).
        Returns the match kept, its turn and whether the query was inverted."""
        s = self.settings
        if orb.inliers <= s.inliers_floor and cosine >= s.mirror_cosine:
            found = verify(query.orb(mirrored(turn)), catalog, s)
            if found.keypoints >= s.min_keypoints and found.inliers > s.inliers_floor:
                orb, turn = found, mirrored(turn)
        if self.thorough and orb.inliers <= s.inliers_floor and cosine >= s.inverted_cosine:
            found = verify(query.inverted(turn), catalog, s)
            if found.keypoints >= s.min_keypoints and found.inliers > orb.inliers:
                return found, turn, True
        return orb, turn, False

    def _mirrored_if_it_agrees(
        self, found: Evidence, query: _QueryKeypoints, turn: str, catalog: Features, cid: int, path: str
    ) -> tuple[Evidence, str]:
        """A fit whose aligned images disagree may be a mirrored copy's chance fit on mirror-
        symmetric structure: the mirrored match's evidence and turn where it agrees more, else
        ``found`` and ``turn`` as they are."""
        s = self.settings
        other = mirrored(turn)
        orb = verify(query.orb(other), catalog, s)
        if orb.keypoints < s.min_keypoints or orb.inliers <= s.inliers_floor:
            return found, turn
        alt = self._evidence(orb, None, query, other, False, cid, path)
        if alt.agreement is None or (found.agreement is not None and alt.agreement <= found.agreement):
            return found, turn
        return alt, other

    def _sift_verification(
        self, query: _QueryKeypoints, turn: str, cid: int, path: str, blurred: bool
    ) -> Verification | None:
        """SIFT's best match of the query (turned) with the catalog image as it is and, for a
        blurred query, degraded by each blur factor (like with like); None when the file is
        unreadable."""
        best = None
        for factor in (1, *self.settings.blur_factors) if blurred else (1,):
            catalog = self.catalog_keypoints(cid, path, sift=True, factor=factor)
            if catalog is None:
                continue
            v = verify(query.sift(turn), catalog, self.settings)
            if best is None or v.inliers > best.inliers:
                best = v
        return best

    def catalog_keypoints(
        self, catalog_id: int, path: str, sift: bool = False, factor: int = 1
    ) -> Features | None:
        """ORB (or ``sift``) keypoints of a catalog image, degraded ``factor`` times when above
        1, computed once while among the most recently used; None when its file cannot be read
        any more."""
        if sift:
            extract = partial(self._features, catalog_id, path, factor, sift_features)
            return self._sift.get_or((catalog_id, factor), extract)
        return self._orb.get_or(catalog_id, partial(self._features, catalog_id, path, factor, features))

    def _features(self, catalog_id: int, path: str, factor: int, extract: Extract) -> Features | None:
        """Keypoints of a catalog image (degraded ``factor`` times when above 1); None when
        its file cannot be read any more."""
        rgb = self.images.rgb(catalog_id, path)
        if rgb is None:
            return None
        try:
            grey = verify_grey(rgb, self.settings)
            return extract(grey if factor == 1 else degraded(grey, factor), self.settings)
        except (cv2.error, ValueError):  # a catalog image no stage can use: as if unreadable
            return None

    def _evidence(
        self,
        orb: Verification,
        sift: Verification | None,
        query: _QueryKeypoints,
        turn: str,
        inverted: bool,
        catalog_id: int,
        path: str,
    ) -> Evidence:
        """The evidence of a pair, with the region shown and the content compared over the
        overlap: by ORB's map beyond chance, else SIFT's beyond chance, else none (regions in
        the query turned back to the file's frame)."""
        s = self.settings
        sift_inliers = None if sift is None else sift.inliers
        shown = orb if orb.inliers > s.inliers_floor else None
        if shown is None and sift is not None and sift.inliers > s.sift_floor:
            shown, inverted = sift, False
        if shown is None or shown.query_region is None:
            return Evidence(orb.inliers, sift_inliers=sift_inliers)
        back = undo_dihedral_points(shown.query_region, turn)
        found = self._agreement(shown, query.turned(turn, inverted), catalog_id, path)
        if found is None:
            return Evidence(orb.inliers, back, shown.catalog_region, sift_inliers)
        return Evidence(
            orb.inliers,
            back,
            shown.catalog_region,
            sift_inliers,
            found.agreement,
            round(found.query_coverage, 4),
            round(found.catalog_coverage, 4),
            tuple(undo_dihedral_points(r, turn) for r in found.disagreement),
        )

    def _agreement(
        self, shown: Verification, query: np.ndarray, catalog_id: int, path: str
    ) -> Agreement | None:
        """The dense comparison of the pair aligned by ``shown``'s inliers; None when it is
        switched off or the catalog image cannot be read any more."""
        if not self.settings.agree or shown.src is None or shown.dst is None:
            return None
        rgb = self.images.rgb(catalog_id, path)
        if rgb is None:
            return None
        try:
            found = compare(query, verify_grey(rgb, self.settings), shown.src, shown.dst, self.settings)
        except (cv2.error, ValueError):
            return None
        if found.agreement is None:
            return found
        return dataclasses.replace(found, agreement=round(found.agreement, 4))


class _QueryKeypoints:
    """The query's keypoints per turn, each computed on first use: ORB's, ORB's of the image
    inverted, and SIFT's."""

    def __init__(self, grey: np.ndarray, settings: Settings) -> None:
        self.grey = grey
        self.settings = settings
        self._found: dict[tuple[str, str], Features] = {}

    def orb(self, turn: str) -> Features:
        return self._get("orb", turn)

    def inverted(self, turn: str) -> Features:
        return self._get("inverted", turn)

    def sift(self, turn: str) -> Features:
        return self._get("sift", turn)

    def turned(self, turn: str, inverted: bool) -> np.ndarray:
        """The grey image turned (and inverted) as the keypoints saw it."""
        grey = dihedral_image(self.grey, turn)
        return 255 - grey if inverted else grey

    def _get(self, kind: str, turn: str) -> Features:
        key = (kind, turn)
        if key not in self._found:
            grey = dihedral_image(self.grey, turn)
            if kind == "inverted":
                self._found[key] = features(255 - grey, self.settings)
            elif kind == "sift":
                self._found[key] = sift_features(grey, self.settings)
            else:
                self._found[key] = features(grey, self.settings)
        return self._found[key]
