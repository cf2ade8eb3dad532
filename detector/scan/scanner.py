"""``scan`` and ``check``: stage-1 candidates from the Hamming index, stage-2 rerank by CNN
cosine, verdicts, and the scan history written per batch.

Modes:
- ``fast``: the CNN runs only on query images that have stage-1 candidates;
- ``thorough``: the CNN runs on every query, and its ``neighbours`` nearest catalog
  descriptors join the stage-1 candidates (catches copies whose codes moved too far).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections import OrderedDict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from detector import __version__
from detector.config import Settings
from detector.errors import ImageError
from detector.intake.loader import content_hash, load_image, read_bytes
from detector.intake.prepare import Models, Prepared, prepare_bytes
from detector.intake.workers import prepared_batches
from detector.records import Match, ScanResult
from detector.scoring import Evidence, rerank
from detector.stage1.hashing import dihedral_image, undo_dihedral_points
from detector.stage1.index import Candidate, HammingIndex, ProbeDistances
from detector.stage2.embedding import EMBEDDING_DIM, degraded, fine_detail, from_blobs
from detector.stage3.keypoints import Features, features, sift_features, verify, verify_grey
from detector.storage.catalog import CatalogEntry, CatalogTable
from detector.storage.store import Store

FAST = "fast"
THOROUGH = "thorough"
MODES = (FAST, THOROUGH)
T = TypeVar("T")
_FEATURE_CACHE = 2048  # catalog images whose keypoints a scanner keeps (about 40 kB each)
_SIFT_CACHE = 2048  # and SIFT keypoints of catalog images, some also degraded (about 70 kB each)
_GREY_CACHE = 8  # decoded catalog greys kept between their ORB and SIFT keypoints (256 kB each)
_RIVALS = 16  # a candidate's rival is the best of the query's nearest catalog images not its twins
_BLUR_FACTORS = (2, 3)  # a blurred query meets its candidates shrunk by these and enlarged back


@dataclass(frozen=True)
class CatalogSnapshot:
    """Everything a :class:`Scanner` reads from the catalog, in plain picklable arrays, so a
    scanner can run where the database is not (a worker of a distributed scan).

    ``ids``: (n,) int64 catalog ids, an id once per code; ``phash``, ``dhash``: (n,) uint64
    codes; ``by_id``: every catalog entry by id; ``vector_ids``: (m,) int64 ascending and
    ``vectors``: (m, 1280) float16 descriptors as stored (about 2.5 kB per catalog image).
    ``generation``, ``hidden``, ``hasher``, ``embedder``: what the scan state fingerprints.
    Catalog ids in ``hidden`` are left out of every array."""

    generation: int
    hidden: tuple[int, ...]
    hasher: str
    embedder: str
    ids: np.ndarray
    phash: np.ndarray
    dhash: np.ndarray
    by_id: dict[int, CatalogEntry]
    vector_ids: np.ndarray
    vectors: np.ndarray

    @classmethod
    def load(cls, store: Store, exclude: Collection[int] = ()) -> CatalogSnapshot:
        """The catalog of ``store`` as it is now, read in one read transaction."""
        hidden = np.array(sorted(exclude), dtype=np.int64)
        with store.snapshot():
            generation = store.catalog.generation()
            ids, phash, dhash = store.catalog.codes()
            vector_ids, blobs = store.catalog.all_embedding_blobs()
            entries = {e.id: e for e in store.catalog.list()}
        for cid in hidden.tolist():
            entries.pop(cid, None)
        keep = ~np.isin(ids, hidden)
        kept = ~np.isin(vector_ids, hidden)
        raw = b"".join(b for b, k in zip(blobs, kept, strict=True) if k)
        vectors = np.frombuffer(raw, dtype="<f2").reshape(int(kept.sum()), EMBEDDING_DIM)
        return cls(
            generation=generation,
            hidden=tuple(hidden.tolist()),
            hasher=store.hasher,
            embedder=store.embedder,
            ids=ids[keep],
            phash=phash[keep],
            dhash=dhash[keep],
            by_id=entries,
            vector_ids=vector_ids[kept],
            vectors=vectors,
        )

    def entries(self, ids: Sequence[int]) -> dict[int, CatalogEntry]:
        """Catalog entries by id (missing ids are left out), as :meth:`CatalogTable.entries`."""
        return {int(i): self.by_id[int(i)] for i in ids if int(i) in self.by_id}

    def embedding_blobs(self, ids: Sequence[int]) -> dict[int, bytes]:
        """Stored descriptors of the given catalog ids, as :meth:`CatalogTable.embedding_blobs`."""
        rows = np.searchsorted(self.vector_ids, ids)
        return {
            int(cid): self.vectors[r].tobytes()
            for cid, r in zip(ids, rows, strict=True)
            if r < len(self.vector_ids) and self.vector_ids[r] == cid
        }


class Scanner:
    """Scans query images against the catalog held in ``store``. The index (and, in thorough
    mode, every catalog descriptor) is loaded once, in bulk, when the scanner is built.

    ``store`` may also be a :class:`CatalogSnapshot`: the scanner then reads nothing from a
    database; :meth:`scan_prepared` gives the same results, :meth:`scan` needs a Store."""

    def __init__(
        self,
        store: Store | CatalogSnapshot,
        models: Models,
        settings: Settings,
        mode: str = FAST,
        exclude: Collection[int] = (),
    ) -> None:
        """``exclude``: catalog ids hidden from this scanner (held-out images in evaluations;
        a snapshot was built with its own)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.catalog = store
        self._view: CatalogTable | CatalogSnapshot = (
            store if isinstance(store, CatalogSnapshot) else store.catalog
        )
        self.models = models
        self.settings = settings
        self.mode = mode
        self._matrix: np.ndarray | None = None
        self._matrix_ids = np.zeros(0, dtype=np.int64)
        self._features: OrderedDict[int, Features | None] = OrderedDict()
        self._sift: OrderedDict[tuple[int, int], Features | None] = OrderedDict()
        self._degraded: OrderedDict[int, np.ndarray | None] = OrderedDict()
        self._greys: OrderedDict[int, np.ndarray | None] = OrderedDict()
        if isinstance(store, CatalogSnapshot):
            generation, hidden = store.generation, np.array(store.hidden, dtype=np.int64)
            self.index = HammingIndex(store.ids, store.phash, store.dhash)
            if mode == THOROUGH:
                self._matrix_ids = store.vector_ids
                self._matrix = from_blobs([row.tobytes() for row in store.vectors])
        else:
            hidden = np.array(sorted(exclude), dtype=np.int64)
            with store.snapshot():  # codes and descriptors from the same catalog state
                generation = store.catalog.generation()
                ids, phash, dhash = store.catalog.codes()
                keep = ~np.isin(ids, hidden)
                self.index = HammingIndex(ids[keep], phash[keep], dhash[keep])
                if mode == THOROUGH:
                    ids, blobs = store.catalog.all_embedding_blobs()
                    keep = ~np.isin(ids, hidden)
                    self._matrix_ids = ids[keep]
                    self._matrix = from_blobs([b for b, k in zip(blobs, keep, strict=True) if k])
        self.generation = generation  # the catalog generation this scanner loaded
        self.state = scan_state(settings, mode, generation, hidden.tolist(), store.hasher, store.embedder)

    def with_settings(self, settings: Settings) -> Scanner:
        """This scanner, its index and caches shared, with other output settings (top_k,
        min_score) for some calls; the search settings must stay the same."""
        clone = copy.copy(self)
        clone.settings = settings
        return clone

    @property
    def store(self) -> Store:
        """The database this scanner reads (and records scans in); not for a snapshot's."""
        if isinstance(self.catalog, CatalogSnapshot):
            raise TypeError("this scanner was built from a CatalogSnapshot: it has no Store")
        return self.catalog

    def scan(
        self, paths: Sequence[str], run_id: int | None = None, reuse: bool = False
    ) -> Iterator[ScanResult]:
        """One :class:`ScanResult` per path, in order. With ``run_id`` each batch's results
        are stored in the scan history as the batch completes. With ``reuse``, content that
        some run already scanned against the same :attr:`state` is not decoded again: its
        stored results are repeated (``ScanResult.reused_from``)."""
        reusable: dict[str, int] = {}

        def known(digests: Sequence[str]) -> dict[str, int]:
            reusable.update(self.store.history.reusable_items(digests, self.state))
            return reusable

        for prepared in prepared_batches(paths, self.settings, known=known if reuse else None):
            fresh = iter(self.scan_prepared([p for p in prepared if not p.skipped]))
            results = [
                self.repeat(p.path, p.sha256, reusable[p.sha256]) if p.skipped and p.sha256 else next(fresh)
                for p in prepared
            ]
            if run_id is not None:
                self.record(run_id, results)
            yield from results

    def record(self, run_id: int, results: Sequence[ScanResult]) -> None:
        """Store one batch of results in the scan history of run ``run_id``, in one transaction."""
        self.store.history.record(run_id, results)

    def repeat(self, path: str, sha256: str, item_id: int) -> ScanResult:
        """The stored result of an earlier scan of the same content (item ``item_id``),
        under this path."""
        item = self.store.history.item(item_id)
        return dataclasses.replace(item, query=path, sha256=sha256, status="ok", error=None)

    def scan_prepared(self, prepared: Sequence[Prepared]) -> list[ScanResult]:
        """Stages 1 and 2 for a batch of prepared queries, one result each, in order."""
        s = self.settings
        candidates: dict[int, list[Candidate]] = {}
        distances: dict[int, ProbeDistances] = {}
        for i, p in enumerate(prepared):
            if p.ok:
                d = self.index.probe_distances(
                    p.probes, s.radius_phash, s.radius_dhash, s.radius_variant, s.radius_sum
                )
                distances[i] = d
                candidates[i] = self.index.within(d, p.probes, s.max_candidates)
        need_cnn = [i for i, c in candidates.items() if c or self.mode == THOROUGH]
        vecs = self._query_vectors(prepared, need_cnn, candidates, {})
        if self._matrix is not None:
            for i in need_cnn:
                vec = vecs[i, "identity"]
                candidates[i] = self._add_neighbours(candidates[i], vec, prepared[i], distances[i])
            vecs = self._query_vectors(prepared, need_cnn, candidates, vecs)
        wanted = sorted({c.catalog_id for i in need_cnn for c in candidates[i]})
        entries = self._view.entries(wanted)
        catalog_vecs = self._catalog_vectors(wanted)
        ranked_all = s.replace(min_score=0.0, top_k=s.max_candidates + s.neighbours)
        results = []
        for i, p in enumerate(prepared):
            if p.codes is None:
                results.append(ScanResult(query=p.path, status="error", error=p.error, sha256=p.sha256))
                continue
            cands = candidates[i]
            matches: tuple[Match, ...] = ()
            if i in need_cnn:
                query_vecs = {c.catalog_id: vecs[i, self._turn(c)] for c in cands}
                evidence, cosines = None, None
                blurred = self.mode == THOROUGH and s.blur_match and fine_detail(p.cnn_input) < s.blur_detail
                if s.verify or blurred:  # the best candidates by stages 1 and 2, all of them ranked
                    first = rerank(cands, query_vecs, catalog_vecs, entries, ranked_all)
                if blurred:
                    cosines = self._blur_cosines(first[: s.verify_top], query_vecs, entries)
                    first = rerank(cands, query_vecs, catalog_vecs, entries, ranked_all, cosines=cosines)
                if s.verify:  # stage 3 on the best of them
                    evidence = self._verify(p, first, {c.catalog_id: c for c in cands}, entries, blurred)
                rivals = self._rivals(query_vecs, catalog_vecs)
                matches = rerank(cands, query_vecs, catalog_vecs, entries, s, evidence, cosines, rivals)
            results.append(
                ScanResult(
                    query=p.path,
                    status="ok",
                    matches=matches,
                    sha256=p.sha256,
                    phash=p.codes.phash,
                    dhash=p.codes.dhash,
                    candidates=len(cands),
                    embedded=i in need_cnn,
                )
            )
        return results

    def _query_vectors(
        self,
        prepared: Sequence[Prepared],
        need: Sequence[int],
        candidates: dict[int, list[Candidate]],
        have: dict[tuple[int, str], np.ndarray],
    ) -> dict[tuple[int, str], np.ndarray]:
        """Descriptors of the queries that need the CNN, keyed by (query, transform): the query
        as it is, and turned the way its flipped or quarter-turned probes matched, so the CNN
        compares like with like. Those in ``have`` are kept, not computed again."""
        jobs: list[tuple[int, str]] = []
        for i in need:
            turns = {"identity"} | {self._turn(c) for c in candidates[i]}
            jobs.extend((i, t) for t in sorted(turns) if (i, t) not in have)
        images = (dihedral_image(prepared[i].cnn_input, t) for i, t in jobs)
        return have | dict(zip(jobs, self.models.embed(images), strict=True))

    def _verify(
        self,
        p: Prepared,
        ranked: Sequence[Match],
        cands: dict[int, Candidate],
        entries: dict[int, CatalogEntry],
        blurred: bool = False,
    ) -> dict[int, Evidence] | None:
        """Stage 3 on the query's best ``verify_top`` candidates that score at least
        ``verify_floor`` before it: the evidence by catalog id (its inliers None for a pair
        too smooth to judge). None as a whole when no catalog image could be read (stage 3
        then has no say and the score is stages 1 and 2 alone). A ``blurred`` query's SIFT
        keypoints also meet those of the catalog image shrunk 2 and 3 times and enlarged
        back (like with like; the most inliers count). In thorough mode a candidate the CNN
        finds close (``inverted_cosine``) but ORB does not confirm is also matched with the
        query's grey image inverted (a colour-inverted copy); the more inliers count."""
        s = self.settings
        chosen = [m for m in ranked[: s.verify_top] if m.score >= s.verify_floor]
        if p.grey is None:
            return None
        out: dict[int, Evidence] = {}
        query_features: dict[str, Features] = {}
        query_sift: dict[str, Features] = {}
        query_inverted: dict[str, Features] = {}
        for rank, m in enumerate(chosen):
            path = entries[m.catalog_id].path
            catalog = self._catalog_features(m.catalog_id, path)
            if catalog is None:
                continue
            turn = self._turn(cands[m.catalog_id], for_cnn=False)
            if turn not in query_features:
                query_features[turn] = features(dihedral_image(p.grey, turn))
            orb = verify(query_features[turn], catalog)
            if not orb.conclusive:
                out[m.catalog_id] = Evidence(None)
                continue
            if self.mode == THOROUGH and orb.inliers <= s.inliers_floor and m.cosine >= s.inverted_cosine:
                # a colour-inverted copy: its keypoints match the original's only once inverted back
                if turn not in query_inverted:
                    query_inverted[turn] = features(255 - dihedral_image(p.grey, turn))
                inverted = verify(query_inverted[turn], catalog)
                if inverted.conclusive and inverted.inliers > orb.inliers:
                    orb = inverted
            sift = None  # SIFT's word where ORB's is not full (thorough mode)
            if self.mode == THOROUGH and s.sift and rank < s.sift_top and orb.inliers < s.inliers_full:
                factors = (1, *_BLUR_FACTORS) if blurred else (1,)
                for catalog_sift in self._catalog_sift(m.catalog_id, path, factors):
                    if turn not in query_sift:
                        query_sift[turn] = sift_features(dihedral_image(p.grey, turn))
                    v = verify(query_sift[turn], catalog_sift)
                    if sift is None or v.inliers > sift.inliers:
                        sift = v
            sift_inliers = None if sift is None else sift.inliers
            # the matched region: ORB's beyond chance, else SIFT's beyond chance, else none
            shown = orb if orb.inliers > s.inliers_floor else None
            if shown is None and sift is not None and sift.inliers > s.sift_floor:
                shown = sift
            if shown is None or shown.query_region is None:
                out[m.catalog_id] = Evidence(orb.inliers, sift_inliers=sift_inliers)
                continue
            back = undo_dihedral_points(shown.query_region, turn)
            out[m.catalog_id] = Evidence(orb.inliers, back, shown.catalog_region, sift_inliers)
        if chosen and not out:
            return None
        return out

    def _catalog_features(self, catalog_id: int, path: str) -> Features | None:
        """ORB keypoints of a catalog image, read from its file once per scanner (the most
        recently used are kept); None when the file cannot be read any more."""
        if catalog_id in self._features:
            self._features.move_to_end(catalog_id)
            return self._features[catalog_id]
        grey = self._catalog_grey(catalog_id, path)
        found = None if grey is None else features(grey)
        return _remember(self._features, catalog_id, found, _FEATURE_CACHE)

    def _catalog_grey(self, catalog_id: int, path: str) -> np.ndarray | None:
        """The stage-3 grey image of a catalog image, decoded once for its ORB and SIFT
        keypoints (the last few are kept); None when the file cannot be read any more."""
        if catalog_id in self._greys:
            return self._greys[catalog_id]
        try:
            grey = verify_grey(load_image(path, self.settings).rgb)
        except ImageError:
            grey = None
        return _remember(self._greys, catalog_id, grey, _GREY_CACHE)

    def _catalog_sift(self, catalog_id: int, path: str, factors: Sequence[int]) -> list[Features]:
        """SIFT keypoints of a catalog image as it is (factor 1) and shrunk ``factor`` times
        and enlarged back, each computed once per scanner (the most recently used are kept);
        none when the file cannot be read any more."""
        missing = [f for f in factors if (catalog_id, f) not in self._sift]
        if missing:
            grey = self._catalog_grey(catalog_id, path)
            for f in missing:
                image = grey if grey is None or f == 1 else degraded(grey, f)
                found = None if image is None else sift_features(image)
                _remember(self._sift, (catalog_id, f), found, _SIFT_CACHE)
        out = []
        for f in factors:
            kept = self._sift.get((catalog_id, f))
            if kept is not None:
                self._sift.move_to_end((catalog_id, f))
                out.append(kept)
        return out

    def _blur_cosines(
        self, ranked: Sequence[Match], query_vecs: dict[int, np.ndarray], entries: dict[int, CatalogEntry]
    ) -> dict[int, float]:
        """For a blurred query: each ranked candidate's best cosine against its catalog image
        shrunk 2 and 3 times and enlarged back (like with like)."""
        out = {}
        for m in ranked:
            vectors = self._degraded_vectors(m.catalog_id, entries[m.catalog_id].path)
            if vectors is not None:
                out[m.catalog_id] = float(np.max(vectors @ query_vecs[m.catalog_id]))
        return out

    def _degraded_vectors(self, catalog_id: int, path: str) -> np.ndarray | None:
        """(2, 1280) descriptors of a catalog image's CNN input shrunk 2 and 3 times and
        enlarged back, computed once per scanner (the most recently used are kept); None when
        the file cannot be read any more or no longer holds the catalogued content."""
        if catalog_id in self._degraded:
            self._degraded.move_to_end(catalog_id)
            return self._degraded[catalog_id]
        found = None
        try:
            data = read_bytes(path, self.settings)
            prepared = prepare_bytes(path, data, content_hash(data), self.settings)
            if prepared.ok:
                small = prepared.cnn_input
                found = self.models.embed([degraded(small, f) for f in _BLUR_FACTORS])
        except ImageError:
            found = None
        return _remember(self._degraded, catalog_id, found, _FEATURE_CACHE)

    def _turn(self, c: Candidate, for_cnn: bool = True) -> str:
        """How to turn the query before the CNN compares it with candidate ``c``: as its probe
        matched when that was within the stage-1 radius; as it is for a candidate that only
        the embedding found (its closest probe is then chance). Keypoints, unlike the CNN's
        pooled descriptor, see a mirror: ``for_cnn=False`` keeps it."""
        if c.within_radius:
            turn = c.transform.split("+", 1)[0]
            return _dihedral(turn) if for_cnn else turn
        return "identity"

    def _catalog_vectors(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Descriptors of the given catalog ids: from the matrix already held in thorough
        mode, else read from the database."""
        if self._matrix is not None:
            rows = np.searchsorted(self._matrix_ids, ids)
            return {
                cid: self._matrix[r]
                for cid, r in zip(ids, rows, strict=True)
                if r < len(self._matrix_ids) and self._matrix_ids[r] == cid
            }
        blobs = self._view.embedding_blobs(ids)
        return dict(zip(blobs, from_blobs(list(blobs.values())), strict=True))

    def _rivals(
        self, query_vecs: dict[int, np.ndarray], catalog_vecs: dict[int, np.ndarray]
    ) -> dict[int, float] | None:
        """Thorough mode: per candidate, the query's best cosine (turned as for that
        candidate) with any other visible catalog image that is not its twin (cosine with it
        at least ``twin_cosine``: the same picture catalogued twice must not hide a copy of
        it). None in fast mode (no descriptor matrix) or with ``distinct_weight`` 0."""
        s = self.settings
        if self._matrix is None or s.distinct_weight == 0 or len(self._matrix_ids) < 2:
            return None
        k = min(_RIVALS, len(self._matrix_ids))
        ranked: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # by query vector: rows, cosines
        out = {}
        for cid, vec in query_vecs.items():
            own = catalog_vecs.get(cid)
            if own is None:
                continue
            if id(vec) not in ranked:
                sims = self._matrix @ vec
                rows = np.argpartition(-sims, k - 1)[:k]
                rows = rows[np.argsort(-sims[rows], kind="stable")]
                ranked[id(vec)] = rows, sims[rows]
            rows, sims = ranked[id(vec)]
            twins = (self._matrix[rows] @ own >= s.twin_cosine) | (self._matrix_ids[rows] == cid)
            others = sims[~twins]
            if others.size:
                out[cid] = float(others[0])
        return out

    def _add_neighbours(
        self, cands: list[Candidate], vec: np.ndarray, p: Prepared, d: ProbeDistances
    ) -> list[Candidate]:
        """Stage-1 candidates plus the catalog images whose descriptors are nearest to
        ``vec``, each once, with their closest stage-1 distances ``d``."""
        if self._matrix is None:
            return cands
        k = min(self.settings.neighbours, len(self._matrix_ids))
        if k == 0:
            return cands
        sims = self._matrix @ vec
        nearest = np.argpartition(-sims, k - 1)[:k]
        have = {c.catalog_id for c in cands}
        extra = [int(self._matrix_ids[j]) for j in nearest if int(self._matrix_ids[j]) not in have]
        return cands + self.index.best_per_image(d, p.probes, extra)


def _remember(cache: OrderedDict[Any, T], key: object, value: T, limit: int) -> T:
    """Keep ``value`` as the most recent entry of an LRU ``cache`` of at most ``limit``."""
    cache[key] = value
    if len(cache) > limit:
        cache.popitem(last=False)
    return value


def _dihedral(transform: str) -> str:
    """The turn the CNN needs for a probe's transform: its flip or quarter-turn part
    ('rot90+trim' -> 'rot90'), except a left-right mirror, to which the GeM descriptor is
    nearly blind already (cosine >= 0.95 to the original, measured) so it costs no CNN run."""
    turn = transform.split("+", 1)[0]
    return "identity" if turn == "hflip" else turn


def scan_state(
    settings: Settings,
    mode: str,
    generation: int,
    hidden: Sequence[int],
    hasher: str,
    embedder: str,
) -> str:
    """A fingerprint of everything a scan's results depend on besides the image: the
    catalog's generation, the settings (batch size aside), the mode, the hasher, the
    embedder and the copyscan version. Equal fingerprints give equal results."""
    values = dataclasses.asdict(settings)
    values.pop("batch_size")
    values.pop("jobs")
    blob = json.dumps([values, mode, generation, list(hidden), hasher, embedder, __version__], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
