"""``scan`` and ``check``: stage-1 candidates from the Hamming index, stage-2 rerank by CNN
cosine, verdicts, and the scan history written per batch.

Modes:
- ``fast``: the CNN runs only on query images that have stage-1 candidates;
- ``thorough``: the CNN runs on every query, and its ``neighbours`` nearest catalog
  descriptors join the stage-1 candidates (catches copies whose codes moved too far).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence

import numpy as np

from .config import Settings
from .embedding import from_blobs
from .hashing import dihedral_image, to_sqlite
from .index import Candidate, HammingIndex, ProbeDistances
from .matching import Match, ScanResult, rerank
from .pipeline import Models, Prepared, batched, prepare_batch
from .store import RecordedItem, Store

FAST = "fast"
THOROUGH = "thorough"
MODES = (FAST, THOROUGH)


class Scanner:
    """Scans query images against the catalog held in ``store``. The index (and, in thorough
    mode, every catalog descriptor) is loaded once, in bulk, when the scanner is built."""

    def __init__(
        self,
        store: Store,
        models: Models,
        settings: Settings,
        mode: str = FAST,
        exclude: Collection[int] = (),
    ) -> None:
        """``exclude``: catalog ids hidden from this scanner (held-out images in evaluations)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.store = store
        self.models = models
        self.settings = settings
        self.mode = mode
        self._matrix: np.ndarray | None = None
        self._matrix_ids = np.zeros(0, dtype=np.int64)
        hidden = np.array(sorted(exclude), dtype=np.int64)
        with store.snapshot():  # codes and descriptors from the same catalog state
            ids, phash, dhash = store.load_codes()
            keep = ~np.isin(ids, hidden)
            self.index = HammingIndex(ids[keep], phash[keep], dhash[keep])
            if mode == THOROUGH:
                ids, blobs = store.all_embedding_blobs()
                keep = ~np.isin(ids, hidden)
                self._matrix_ids = ids[keep]
                self._matrix = from_blobs([b for b, k in zip(blobs, keep, strict=True) if k])

    def scan(self, paths: Sequence[str], run_id: int | None = None) -> Iterator[ScanResult]:
        """One :class:`ScanResult` per path, in order. With ``run_id`` each batch's results
        are stored in the scan history as the batch completes."""
        for batch in batched(paths, self.settings.batch_size):
            results = self.scan_prepared(prepare_batch(batch, self.settings))
            if run_id is not None:
                self.store.record_items(run_id, [_recorded(r) for r in results])
            yield from results

    def scan_prepared(self, prepared: Sequence[Prepared]) -> list[ScanResult]:
        """Stages 1 and 2 for a batch of prepared queries, one result each, in order."""
        s = self.settings
        candidates: dict[int, list[Candidate]] = {}
        distances: dict[int, ProbeDistances] = {}
        for i, p in enumerate(prepared):
            if p.ok:
                d = self.index.probe_distances(p.probes, s.radius_phash, s.radius_dhash)
                distances[i] = d
                candidates[i] = self.index.within(
                    d, p.probes, s.radius_phash, s.radius_dhash, s.max_candidates
                )
        need_cnn = [i for i, c in candidates.items() if c or self.mode == THOROUGH]
        vecs = self._query_vectors(prepared, need_cnn, candidates, {})
        if self._matrix is not None:
            for i in need_cnn:
                vec = vecs[i, "identity"]
                candidates[i] = self._add_neighbours(candidates[i], vec, prepared[i], distances[i])
            vecs = self._query_vectors(prepared, need_cnn, candidates, vecs)
        wanted = sorted({c.catalog_id for i in need_cnn for c in candidates[i]})
        entries = self.store.catalog_entries(wanted)
        catalog_vecs = self._catalog_vectors(wanted)
        results = []
        for i, p in enumerate(prepared):
            if p.codes is None:
                results.append(ScanResult(query=p.path, status="error", error=p.error, sha256=p.sha256))
                continue
            cands = candidates[i]
            matches: tuple[Match, ...] = ()
            if i in need_cnn:
                query_vecs = {c.catalog_id: vecs[i, _dihedral(c.transform)] for c in cands}
                matches = rerank(cands, query_vecs, catalog_vecs, entries, s)
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
            turns = {"identity"} | {_dihedral(c.transform) for c in candidates[i]}
            jobs.extend((i, t) for t in sorted(turns) if (i, t) not in have)
        images = (dihedral_image(prepared[i].cnn_input, t) for i, t in jobs)
        return have | dict(zip(jobs, self.models.embed(images), strict=True))

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
        blobs = self.store.embedding_blobs(ids)
        return dict(zip(blobs, from_blobs(list(blobs.values())), strict=True))

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


def _dihedral(transform: str) -> str:
    """The turn the CNN needs for a probe's transform: its flip or quarter-turn part
    ('rot90+trim' -> 'rot90'), except a left-right mirror, to which the GeM descriptor is
    nearly blind already (cosine >= 0.95 to the original, measured) so it costs no CNN run."""
    turn = transform.split("+", 1)[0]
    return "identity" if turn == "hflip" else turn


def _recorded(r: ScanResult) -> RecordedItem:
    return RecordedItem(
        path=r.query,
        sha256=r.sha256,
        status=r.status,
        error=r.error,
        phash=to_sqlite(r.phash) if r.phash is not None else None,
        dhash=to_sqlite(r.dhash) if r.dhash is not None else None,
        matches=tuple(
            (m.catalog_id, m.catalog_path, m.hamming, m.cosine, m.score, m.verdict) for m in r.matches
        ),
    )
