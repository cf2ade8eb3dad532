"""The catalog as the chain reads it: the stage-1 index, entries and descriptors by id, and in
thorough mode every descriptor as one matrix; from a database, or from a picklable snapshot
of it (a worker of a distributed scan, where the database is not)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from detector.config import THOROUGH
from detector.stage1.index import HammingIndex
from detector.stage2.embedding import EMBEDDING_DIM, from_blobs
from detector.storage.catalog import CatalogEntry
from detector.storage.store import Store


class CatalogView(Protocol):
    """Catalog entries and stored descriptors by id (a database's catalog table, or a snapshot)."""

    def entries(self, ids: Sequence[int]) -> dict[int, CatalogEntry]: ...

    def embedding_blobs(self, ids: Sequence[int]) -> dict[int, bytes]: ...


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


@dataclass(frozen=True, eq=False)
class LoadedCatalog:
    """What the chain reads of a catalog, loaded once, in bulk: ``index`` (every code, hidden
    ids left out), ``view`` (entries and descriptors by id) and, in thorough mode, ``matrix``
    ((m, 1280) float32 descriptors of the ids ``matrix_ids``, ascending; None in fast mode).
    ``generation``, ``hidden``, ``hasher`` and ``embedder`` are what the scan state
    fingerprints."""

    index: HammingIndex
    view: CatalogView
    matrix: np.ndarray | None
    matrix_ids: np.ndarray
    generation: int
    hidden: tuple[int, ...]
    hasher: str
    embedder: str

    @classmethod
    def from_store(cls, store: Store, mode: str, exclude: Collection[int] = ()) -> LoadedCatalog:
        r"""The catalog of ``store`` as it is now (codes and descriptors from one read
        transaction), ``exclude``\ d ids hidden (held-out images of an evaluation)."""
        hidden = np.array(sorted(exclude), dtype=np.int64)
        matrix, matrix_ids = None, np.zeros(0, dtype=np.int64)
        with store.snapshot():
            generation = store.catalog.generation()
            ids, phash, dhash = store.catalog.codes()
            keep = ~np.isin(ids, hidden)
            index = HammingIndex(ids[keep], phash[keep], dhash[keep])
            if mode == THOROUGH:
                ids, blobs = store.catalog.all_embedding_blobs()
                keep = ~np.isin(ids, hidden)
                matrix_ids = ids[keep]
                matrix = from_blobs([b for b, k in zip(blobs, keep, strict=True) if k])
        hid = tuple(hidden.tolist())
        return cls(index, store.catalog, matrix, matrix_ids, generation, hid, store.hasher, store.embedder)

    @classmethod
    def from_snapshot(cls, snapshot: CatalogSnapshot, mode: str) -> LoadedCatalog:
        """A snapshot's catalog (its hidden ids were left out when it was taken)."""
        index = HammingIndex(snapshot.ids, snapshot.phash, snapshot.dhash)
        matrix, matrix_ids = None, np.zeros(0, dtype=np.int64)
        if mode == THOROUGH:
            matrix_ids = snapshot.vector_ids
            matrix = from_blobs([row.tobytes() for row in snapshot.vectors])
        return cls(
            index,
            snapshot,
            matrix,
            matrix_ids,
            snapshot.generation,
            snapshot.hidden,
            snapshot.hasher,
            snapshot.embedder,
        )
