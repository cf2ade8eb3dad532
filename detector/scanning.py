"""``scan`` and ``check``: stage-1 candidates from the Hamming index, stage-2 rerank by CNN
cosine, verdicts, and the scan history written per batch.

Modes:
- ``fast``: the CNN runs only on query images that have stage-1 candidates;
- ``thorough``: the CNN runs on every query, and its ``neighbours`` nearest catalog
  descriptors join the stage-1 candidates (catches copies whose codes moved too far).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from .config import Settings
from .embedding import from_blobs
from .hashing import to_sqlite
from .index import Candidate, HammingIndex
from .matching import ScanResult, rerank
from .pipeline import Models, Prepared, batched, prepare_batch
from .store import RecordedItem, Store

FAST = "fast"
THOROUGH = "thorough"
MODES = (FAST, THOROUGH)


class Scanner:
    """Scans query images against the catalog held in ``store``. The index (and, in thorough
    mode, every catalog descriptor) is loaded once, in bulk, when the scanner is built."""

    def __init__(self, store: Store, models: Models, settings: Settings, mode: str = FAST) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.store = store
        self.models = models
        self.settings = settings
        self.mode = mode
        self._matrix: np.ndarray | None = None
        with store.snapshot():  # codes and descriptors from the same catalog state
            self.index = HammingIndex(*store.load_codes())
            if mode == THOROUGH:
                _, blobs = store.all_embedding_blobs()
                self._matrix = from_blobs(blobs)

    def scan(self, paths: Sequence[str], run_id: int | None = None) -> Iterator[ScanResult]:
        """One :class:`ScanResult` per path, in order. With ``run_id`` each batch's results
        are stored in the scan history as the batch completes."""
        for batch in batched(paths, self.settings.batch_size):
            results = self._scan_batch(prepare_batch(batch, self.settings))
            if run_id is not None:
                self.store.record_items(run_id, [_recorded(r) for r in results])
            yield from results

    def _scan_batch(self, prepared: Sequence[Prepared]) -> list[ScanResult]:
        s = self.settings
        distances: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        candidates: dict[int, list[Candidate]] = {}
        for i, p in enumerate(prepared):
            if p.codes is not None:
                distances[i] = self.index.distances(p.codes.phash, p.codes.dhash)
                candidates[i] = self.index.within(
                    *distances[i], s.radius_phash, s.radius_dhash, s.max_candidates
                )
        need_cnn = [i for i, c in candidates.items() if c or self.mode == THOROUGH]
        vecs = dict(zip(need_cnn, self.models.embed(prepared[i].cnn_input for i in need_cnn), strict=True))
        if self._matrix is not None:
            for i in need_cnn:
                candidates[i] = self._with_neighbours(candidates[i], vecs[i], self._matrix, *distances[i])
        wanted = sorted({c.catalog_id for i in need_cnn for c in candidates[i]})
        entries = self.store.catalog_entries(wanted)
        results = []
        catalog_vecs = self._catalog_vectors(wanted)
        for i, p in enumerate(prepared):
            if p.codes is None:
                results.append(ScanResult(query=p.path, status="error", error=p.error, sha256=p.sha256))
                continue
            cands = candidates[i]
            matches = rerank(cands, vecs[i], catalog_vecs, entries, s) if i in vecs else ()
            results.append(
                ScanResult(
                    query=p.path,
                    status="ok",
                    matches=matches,
                    sha256=p.sha256,
                    phash=p.codes.phash,
                    dhash=p.codes.dhash,
                    candidates=len(cands),
                )
            )
        return results

    def _catalog_vectors(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Descriptors of the given catalog ids: from the matrix already held in thorough
        mode, else read from the database."""
        if self._matrix is not None:
            rows = np.searchsorted(self.index.ids, ids)  # index ids are in id order
            return {cid: self._matrix[r] for cid, r in zip(ids, rows, strict=True)}
        blobs = self.store.embedding_blobs(ids)
        return dict(zip(blobs, from_blobs(list(blobs.values())), strict=True))

    def _with_neighbours(
        self, cands: list[Candidate], vec: np.ndarray, matrix: np.ndarray, dp: np.ndarray, dd: np.ndarray
    ) -> list[Candidate]:
        """Stage-1 candidates plus the catalog images whose descriptors (rows of ``matrix``,
        in index order) are nearest to ``vec``, each once; ``dp``, ``dd`` are the query's
        Hamming distances to every indexed code."""
        k = min(self.settings.neighbours, len(self.index))
        if k == 0:
            return cands
        sims = matrix @ vec
        nearest = np.argpartition(-sims, k - 1)[:k]
        have = {c.catalog_id for c in cands}
        extra = [
            Candidate(int(self.index.ids[j]), int(dp[j]), int(dd[j]))
            for j in nearest
            if int(self.index.ids[j]) not in have
        ]
        return cands + extra


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
