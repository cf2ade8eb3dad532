"""Stage 2 as a stage of the chain: CNN descriptors of the queries, compared with the stored
descriptors of their candidates.

For each query that needs the CNN (fast mode: those with stage-1 candidates; thorough mode:
every one) it computes the query's descriptor as it is and turned the way each candidate's
probe matched (the CNN compares like with like), adds in thorough mode the catalog images
with the nearest descriptors as candidates, and gives every candidate a cosine. A blurred
or thumbnail-sized query (thorough mode) is also compared with its best candidates degraded
alike, and the better cosine counts. In thorough mode each candidate also gets its *rival*:
the query's best cosine with another catalog image that is not the candidate's twin."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

import cv2
import numpy as np

from detector.config import THOROUGH, Settings
from detector.intake.catalog_images import CatalogImages
from detector.intake.prepare import cnn_view
from detector.lru import LRU
from detector.stage1.hashing import dihedral_image
from detector.stage1.index import Candidate
from detector.stage2.embedding import Models, degraded, fine_detail, from_blobs

if TYPE_CHECKING:
    from detector.scan.case import Case
    from detector.scan.catalog import LoadedCatalog

_DEGRADED_CACHE = 2048  # catalog images whose degraded descriptors are kept (about 10 kB each)


def similarity(hamming: int, cosine: float, settings: Settings) -> float:
    """What stages 1 and 2 say of a pair, in [0, 1]: the CNN similarity (0 at
    ``cosine_floor``, 1 at cosine 1) weighted ``cnn_weight`` against the stage-1 similarity
    (1 at distance 0, 0 at ``hamming_ceiling`` bits)."""
    s1 = min(max(1.0 - hamming / settings.hamming_ceiling, 0.0), 1.0)
    s2 = min(max((cosine - settings.cosine_floor) / (1.0 - settings.cosine_floor), 0.0), 1.0)
    w = settings.cnn_weight
    return w * s2 + (1.0 - w) * s1


def ranked(case: Case, settings: Settings) -> list[tuple[float, Candidate]]:
    """A case's candidates that have a cosine, best first by :func:`similarity` (as shown, to
    4 decimals; ties by catalog id), each with that value: the order stage 3 checks them in."""
    out = [
        (round(similarity(c.hamming, case.cosines[c.catalog_id], settings), 4), c)
        for c in case.candidates
        if c.catalog_id in case.cosines
    ]
    out.sort(key=lambda pair: (-pair[0], pair[1].catalog_id))
    return out


def cnn_turn(c: Candidate) -> str:
    """How to turn the query before the CNN compares it with ``c``: as its probe matched,
    except a left-right mirror, to which the GeM descriptor is nearly blind already (cosine
    >= 0.95 to the original, measured), so it costs no CNN run."""
    turn = c.turn
    return "identity" if turn == "hflip" else turn


class DescriptorStage:
    """Stage 2: sets ``embedded``, ``candidates`` (thorough mode: plus the ``neighbours``
    nearest catalog descriptors), ``entries``, ``query_vectors``, ``cosines``, ``blurred``
    and ``rivals`` of each case that needs the CNN."""

    def __init__(
        self,
        catalog: LoadedCatalog,
        models: Models,
        settings: Settings,
        mode: str,
        images: CatalogImages,
    ) -> None:
        self.catalog = catalog
        self.models = models
        self.settings = settings
        self.thorough = mode == THOROUGH
        self.images = images
        self._degraded: LRU[np.ndarray | None] = LRU(_DEGRADED_CACHE)

    def fill(self, cases: Sequence[Case]) -> None:
        need = [c for c in cases if c.candidates or self.thorough]
        vecs = self._query_vectors(need, {})
        if self.catalog.matrix is not None:
            for k, case in enumerate(need):
                case.candidates = self._with_neighbours(case, vecs[k, "identity"])
            vecs = self._query_vectors(need, vecs)
        wanted = sorted({c.catalog_id for case in need for c in case.candidates})
        entries = self.catalog.view.entries(wanted)
        catalog_vecs = self._catalog_vectors(wanted)
        for k, case in enumerate(need):
            case.embedded = True
            case.query_vectors = {c.catalog_id: vecs[k, cnn_turn(c)] for c in case.candidates}
            case.entries = {
                c.catalog_id: entries[c.catalog_id] for c in case.candidates if c.catalog_id in entries
            }
            case.cosines = {
                cid: float(np.dot(vec, catalog_vecs[cid]))
                for cid, vec in case.query_vectors.items()
                if cid in catalog_vecs and cid in case.entries
            }
            case.blurred = (
                self.thorough
                and self.settings.blur_match
                and fine_detail(case.query.cnn_input) < self.settings.blur_detail
            )
            if case.blurred:
                self._blur_cosines(case)
            case.rivals = self._rivals(case.query_vectors, catalog_vecs)

    def _query_vectors(
        self, need: Sequence[Case], have: dict[tuple[int, str], np.ndarray]
    ) -> dict[tuple[int, str], np.ndarray]:
        """Descriptors of the cases that need the CNN, keyed by (position in ``need``, turn):
        the query as it is and turned as each candidate needs; those in ``have`` are kept."""
        jobs: list[tuple[int, str]] = []
        for k, case in enumerate(need):
            turns = {"identity"} | {cnn_turn(c) for c in case.candidates}
            jobs.extend((k, t) for t in sorted(turns) if (k, t) not in have)
        images = (dihedral_image(need[k].query.cnn_input, t) for k, t in jobs)
        return have | dict(zip(jobs, self.models.embed(images), strict=True))

    def _with_neighbours(self, case: Case, vec: np.ndarray) -> tuple[Candidate, ...]:
        """Stage-1 candidates plus the catalog images whose descriptors are nearest to ``vec``
        (each once), measured against the query's probes by stage 1's distances."""
        matrix, ids = self.catalog.matrix, self.catalog.matrix_ids
        k = min(self.settings.neighbours, len(ids))
        if matrix is None or k == 0 or case.hits is None:
            return case.candidates
        sims = matrix @ vec
        nearest = np.argpartition(-sims, k - 1)[:k]
        have = {c.catalog_id for c in case.candidates}
        extra = [int(ids[j]) for j in nearest if int(ids[j]) not in have]
        return (*case.candidates, *case.hits.closest(extra))

    def _catalog_vectors(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Descriptors of the given catalog ids: from the matrix held in thorough mode, else
        read from the catalog."""
        matrix, matrix_ids = self.catalog.matrix, self.catalog.matrix_ids
        if matrix is not None:
            rows = np.searchsorted(matrix_ids, ids)
            return {
                cid: matrix[r]
                for cid, r in zip(ids, rows, strict=True)
                if r < len(matrix_ids) and matrix_ids[r] == cid
            }
        blobs = self.catalog.view.embedding_blobs(ids)
        return dict(zip(blobs, from_blobs(list(blobs.values())), strict=True))

    def _blur_cosines(self, case: Case) -> None:
        """A blurred query's best ``verify_top`` candidates: the better of their cosine and
        the best cosine with their catalog image degraded by each of ``blur_factors``."""
        for _, c in ranked(case, self.settings)[: self.settings.verify_top]:
            cid = c.catalog_id
            vectors = self._degraded.get_or(cid, partial(self._degraded_vectors, cid, case.entries[cid].path))
            if vectors is not None:
                case.cosines[cid] = max(case.cosines[cid], float(np.max(vectors @ case.query_vectors[cid])))

    def _degraded_vectors(self, catalog_id: int, path: str) -> np.ndarray | None:
        """(f, 1280) descriptors of a catalog image's CNN view degraded by each blur factor;
        None when its file cannot be read any more."""
        rgb = self.images.rgb(catalog_id, path)
        if rgb is None:
            return None
        try:
            small = cnn_view(rgb, self.settings)
            images = [degraded(small, f) for f in self.settings.blur_factors]
        except (cv2.error, ValueError):  # a catalog image no stage can use: as if unreadable
            return None
        return self.models.embed(images)

    def _rivals(
        self, query_vecs: dict[int, np.ndarray], catalog_vecs: dict[int, np.ndarray]
    ) -> dict[int, float] | None:
        """Thorough mode: per candidate, the query's best cosine (turned as for that
        candidate) with any other visible catalog image that is not its twin (cosine with it
        at least ``twin_cosine``: the same picture catalogued twice must not hide a copy of
        it). None in fast mode (no descriptor matrix) or with ``distinct_weight`` 0."""
        s = self.settings
        matrix, matrix_ids = self.catalog.matrix, self.catalog.matrix_ids
        if matrix is None or s.distinct_weight == 0 or len(matrix_ids) < 2:
            return None
        k = min(s.rivals, len(matrix_ids))
        nearest: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # by query vector: rows, cosines
        out = {}
        for cid, vec in query_vecs.items():
            own = catalog_vecs.get(cid)
            if own is None:
                continue
            if id(vec) not in nearest:
                sims = matrix @ vec
                rows = np.argpartition(-sims, k - 1)[:k]
                rows = rows[np.argsort(-sims[rows], kind="stable")]
                nearest[id(vec)] = rows, sims[rows]
            rows, sims = nearest[id(vec)]
            twins = (matrix[rows] @ own >= s.twin_cosine) | (matrix_ids[rows] == cid)
            others = sims[~twins]
            if others.size:
                out[cid] = float(others[0])
        return out
